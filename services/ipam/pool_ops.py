"""Compare-and-set writes of a node's pool: the domain decides on a fresh copy, the store writes it only if nobody
wrote in between (else it re-reads and the domain decides again). This replica's attempts on one node are
serialised by the node's lock; other replicas are kept honest by the compare-and-set."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from ipaddress import IPv4Address

from chassis.kv import KEEP, _Keep
from schemas.base import utcnow
from schemas.records import CceEndpoint, NetResourceSet, NodePool, NodeSpec, PoolSettings
from services.ipam import domain
from services.ipam.exclusive import claim_eni
from services.ipam.settings import IpamSettings
from services.ipam.state import IpamState, node_key

Clock = Callable[[], datetime]


class PoolOps:
    def __init__(self, state: IpamState, settings: IpamSettings, clock: Clock = utcnow) -> None:
        self.state = state
        self.settings = settings
        self.clock = clock

    async def _mutate(self, node: str, change: Callable[[NodePool | None], NodePool | _Keep | None]) -> None:
        async with self.state.lock(node):
            await self.state.stores.pools.mutate(node_key(node), change)

    async def claim(self, nrs: NetResourceSet, key: str, wait: bool, resume: bool = False,
                    exclusive: bool = False) -> domain.Claim:
        """One attempt to give `key` an IP (or, `exclusive`, a whole ENI) on the node, or find the one it holds."""
        node, outcome = nrs.name, list[domain.Claim]()
        claim_fn = claim_eni if exclusive else domain.claim_ip

        def change(pool: NodePool | None) -> NodePool | _Keep:
            claim = claim_fn(pool or NodePool(node=node), self.state.facts(node, nrs.spec), key, self.clock(), wait,
                             resume)
            outcome[:] = [claim]
            return claim.pool if claim.changed or pool is None else KEEP

        await self._mutate(node, change)
        return outcome[-1]

    async def stop_waiting(self, nrs: NetResourceSet, key: str) -> None:
        def change(pool: NodePool | None) -> NodePool | _Keep:
            if pool is None or (key not in pool.waiting and key not in pool.exclusive_waiting):
                return KEEP
            return domain.drop_waiting(pool, self.state.facts(nrs.name, nrs.spec), key, self.clock())

        await self._mutate(nrs.name, change)

    async def release(self, node: str, spec: NodeSpec | None, key: str, cooldown_s: float) -> list[IPv4Address]:
        """Free what `key` holds on the node; its IPs (and exclusive ENIs) cool down. Idempotent."""
        freed: list[IPv4Address] = []
        eni_cooldown_s = (spec.pool if spec is not None else PoolSettings()).eni_cooldown_s

        def change(pool: NodePool | None) -> NodePool | _Keep:
            if pool is None:
                return KEEP
            now = self.clock()
            new, ips = domain.release_ip(pool, key, cooldown_s, now, eni_cooldown_s)
            freed[:] = ips
            if new is pool:
                return KEEP
            return domain.refresh_demand(new, self.state.facts(node, spec), now) if spec else new

        await self._mutate(node, change)
        return freed

    async def upkeep(self, nrs: NetResourceSet, removing: bool = False) -> domain.Upkeep | None:
        """One maintenance pass over the pool (the pool is created if it went missing, unless removing)."""
        node, outcome = nrs.name, list[domain.Upkeep]()
        cached = self.state.pool(node)
        if cached is not None:  # most passes change nothing: decide on the cached pool, write only if needed
            settled = domain.maintain_pool(cached, self.state.facts(node, nrs.spec), self.clock(),
                                           self.settings.waiting_ttl_s, removing)
            if not settled.changed:
                return settled

        def change(pool: NodePool | None) -> NodePool | _Keep:
            if pool is None and removing:
                outcome.clear()
                return KEEP
            up = domain.maintain_pool(pool or NodePool(node=node), self.state.facts(node, nrs.spec), self.clock(),
                                      self.settings.waiting_ttl_s, removing)
            outcome[:] = [up]
            return up.pool if up.changed or pool is None else KEEP

        await self._mutate(node, change)
        return outcome[-1] if outcome else None


def endpoint_ips(endpoint: CceEndpoint | None) -> list[IPv4Address]:
    return [a.ip for a in endpoint.addresses] if endpoint else []

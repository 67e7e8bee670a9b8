"""Compare-and-set writes of a node's pool: the domain decides on a fresh copy, the store writes it only if nobody
wrote in between (else it re-reads and the domain decides again). This replica's attempts on one node are
serialised by the node's lock; other replicas are kept honest by the compare-and-set."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from ipaddress import IPv4Address

from chassis import tracing
from chassis.kv import KEEP, _Keep
from schemas.base import utcnow
from schemas.records import CceEndpoint, FixedIp, NetResourceSet, NodePool, NodeSpec, PoolSettings
from schemas.subjects import fixed_ip_key
from services.ipam import domain, fixed
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
        def pruned(pool: NodePool | None) -> NodePool | _Keep | None:
            new = change(pool)
            if isinstance(new, NodePool) and new.waiting_traces:  # a trace is kept only while its key waits
                new.waiting_traces = {k: v for k, v in new.waiting_traces.items()
                                      if k in new.waiting or k in new.exclusive_waiting}
            return new

        async with self.state.lock(node):
            await self.state.stores.pools.mutate(node_key(node), pruned)

    async def mutate_pool(self, node: str, change: Callable[[NodePool], NodePool | _Keep | None]) -> None:
        """Change an existing pool (`change` returns the new pool, or KEEP/None for no change)."""
        def guarded(pool: NodePool | None) -> NodePool | _Keep:
            new = change(pool) if pool is not None else None
            return KEEP if new is None or isinstance(new, _Keep) else new

        await self._mutate(node, guarded)

    async def claim(self, nrs: NetResourceSet, key: str, wait: bool, resume: bool = False,
                    exclusive: bool = False) -> domain.Claim:
        """One attempt to give `key` an IP (or, `exclusive`, a whole ENI) on the node, or find the one it holds."""
        node, outcome = nrs.name, list[domain.Claim]()
        claim_fn = claim_eni if exclusive else domain.claim_ip
        parent = tracing.traceparent() if wait else None

        def change(pool: NodePool | None) -> NodePool | _Keep:
            claim = claim_fn(pool or NodePool(node=node), self.state.facts(node, nrs.spec), key, self.clock(), wait,
                             resume)
            outcome[:] = [claim]
            if parent and claim.changed and (key in claim.pool.waiting or key in claim.pool.exclusive_waiting):
                claim.pool.waiting_traces[key] = parent  # eni_manager's refill for it joins the trace
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
        """Free what `key` holds on the node; its IPs (and exclusive ENIs) cool down, except a fixed IP, which its
        reservation keeps (idle from now on) for the pod's return. Idempotent."""
        freed: list[IPv4Address] = []
        eni_cooldown_s = (spec.pool if spec is not None else PoolSettings()).eni_cooldown_s
        reserved = {ip: fixed.marker_of(r) for ip, r in self.state.reserved_on(node).items() if r.endpoint == key}

        def change(pool: NodePool | None) -> NodePool | _Keep:
            if pool is None:
                return KEEP
            now = self.clock()
            new, ips = domain.release_ip(fixed.park(pool, key, reserved), key, cooldown_s, now, eni_cooldown_s)
            freed[:] = ips
            if new is pool:
                return KEEP
            return domain.refresh_demand(new, self.state.facts(node, spec), now) if spec else new

        await self._mutate(node, change)
        for ip in reserved:
            await self._idle(self.state.reserved_on(node).get(ip), key)
        return freed

    async def _idle(self, reservation: FixedIp | None, key: str) -> None:
        if reservation is None:
            return
        now = self.clock()
        await self.state.stores.fixed.mutate(
            fixed_ip_key(reservation.namespace, reservation.name),
            lambda cur: fixed.idle(cur, now) if cur is not None and cur.endpoint == key else KEEP)

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

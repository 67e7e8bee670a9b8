"""Pool maintenance, run by the one replica holding the "ipam-maintenance" lease: on a period and whenever a node's
pool, ENIs or provisioning change (coalesced per node), it recomputes the demand, expires unconfirmed endpoints,
prunes cooldowns, drives the release handshake, publishes readiness and capacity, collects orphans after a grace
period, and removes nodes in two phases (endpoints and pool first, the node record last)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chassis.events import EventPublisher
from chassis.grace import Grace
from chassis.kv import KEEP, _Keep
from chassis.leader import LeaderElector
from chassis.logs import get_logger
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import ExpandReply, ExpandRequest
from schemas.records import NetResourceSet, NodeStatus
from services.ipam import domain, instances, route_mode
from services.ipam.fixed_ops import FixedIps
from services.ipam.pool_ops import PoolOps, endpoint_ips
from services.ipam.state import node_key, wait_event

log = get_logger("ipam.maintenance")

Expand = Callable[[ExpandRequest], Awaitable[ExpandReply]]
FULL_PASS_REST = 2.0  # a full maintenance pass is followed by at least this many times its length before the next
# route_manager not reachable or not leading right now: asked again on the next pass, nothing recorded
TRANSIENT = frozenset({ErrorReason.NOT_LEADER, ErrorReason.SERVICE_UNAVAILABLE, ErrorReason.TIMEOUT,
                       ErrorReason.CONFLICT})


class Maintenance:
    def __init__(self, ops: PoolOps, events: EventPublisher, elector: LeaderElector,
                 expand: Expand | None = None) -> None:
        self.ops = ops
        self.expand = expand
        self._expanding: dict[str, asyncio.Task[Any]] = {}
        self.state = ops.state
        self.settings = ops.settings
        self.events = events
        self.elector = elector
        self.grace = Grace()
        self.fixed: FixedIps | None = None  # fixed IPs' reservations: TTLs and stray claims (wired by main)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.state.listeners.append(self.poke)

    def poke(self, node: str) -> None:
        self._dirty.add(node)
        self._wake.set()

    async def run(self) -> None:
        """Changed nodes as they change (a burst coalesced), every node on the period. On a large cluster a full
        pass takes a while: nodes that change meanwhile go first, between its nodes, and the next full pass waits
        at least twice as long as this one took (a full pass takes at most about a third of the leader's time, so
        the allocations it serves and the joins it answers never queue behind it)."""
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while True:
            await wait_event(self._wake, next_full - loop.time())
            if self._wake.is_set() and self.settings.maintenance_coalesce_s > 0:
                await asyncio.sleep(self.settings.maintenance_coalesce_s)  # a burst of changes: one pass
            self._wake.clear()
            full = loop.time() >= next_full
            if not self.elector.is_leader:
                self._dirty.clear()
                if full:
                    next_full = loop.time() + self.settings.maintenance_period_s
                continue
            await self._reconcile_dirty()
            if full:
                started = loop.time()
                for node in sorted(self.state.known_nodes()):
                    if not self.elector.is_leader:
                        break
                    await self.reconcile_safely(node)
                    if self._dirty:
                        await self._reconcile_dirty()
                took = loop.time() - started
                next_full = loop.time() + max(self.settings.maintenance_period_s, FULL_PASS_REST * took)

    async def _reconcile_dirty(self) -> None:
        nodes, self._dirty = self._dirty, set()
        for node in sorted(nodes):
            await self.reconcile_safely(node)

    async def reconcile_safely(self, node: str) -> None:
        try:
            await self.reconcile(node)
        except Exception as err:  # one node's trouble must not stop the others; the next pass retries
            log.warning("node maintenance failed", node=node, error=repr(err))

    async def reconcile(self, node: str) -> None:
        nrs = self.state.nrs(node)
        if nrs is None:
            return
        if nrs.status.removing:
            await self.remove_step(nrs)
            return
        if await self.adopt_detected_mode(nrs):
            return  # the node record changed: its watch brings the node back with the new mode
        await self.expire(nrs)
        await self.collect(nrs)
        if self.fixed is not None:
            await self.fixed.upkeep(nrs)
        upkeep = await self.ops.upkeep(nrs)
        if upkeep is not None:
            await self.announce(nrs.name, upkeep)
            await self.publish_status(nrs, upkeep)
            self.ask_for_cidr(nrs, upkeep)

    # ---- endpoints ---------------------------------------------------------------------------------------------

    async def expire(self, nrs: NetResourceSet) -> None:
        now = self.ops.clock()
        for key in domain.expired_endpoints(self.state.endpoints.of(nrs.name), now):
            item = await self.state.stores.endpoints.get(key)
            if item is None or not domain.expired_endpoints({key: item.value}, now):
                continue  # confirmed or released meanwhile
            if await self._drop_endpoint(nrs, key, item.revision):
                await self.events.publish(EventKind.ENDPOINT, "expired", node=nrs.name, object=key,
                                          ip=",".join(map(str, endpoint_ips(item.value))),
                                          message=f"unconfirmed allocation {key} expired")

    async def _drop_endpoint(self, nrs: NetResourceSet, key: str, revision: int | None) -> bool:
        """Delete an endpoint (only if unchanged since `revision`) and free what its key holds."""
        try:
            await self.state.stores.endpoints.delete(key, revision)
        except CceError as err:
            if err.reason is ErrorReason.CONFLICT:
                return False
            raise
        await self.ops.release(nrs.name, nrs.spec, key, nrs.spec.pool.cooldown_s)
        return True

    async def collect(self, nrs: NetResourceSet) -> None:
        """Claims without an endpoint and endpoints without a claim, once they stayed so for the grace period."""
        node, now, grace_s = nrs.name, self.ops.clock(), self.settings.orphan_grace_s
        pool = self.state.pool(node)
        if pool is None:
            return
        endpoints = self.state.endpoints.of(node)
        orphans = set(domain.orphan_claims(pool, endpoints.keys()).values())
        for key in self.grace.due((node, "claim"), orphans, now, grace_s):
            if await self.state.stores.endpoints.get(key) is None:
                ips = await self.ops.release(node, nrs.spec, key, nrs.spec.pool.cooldown_s)
                await self.events.publish(EventKind.ENDPOINT, "orphan-released", node=node, object=key,
                                          ip=",".join(map(str, ips)))
        strays = set(domain.stray_endpoints(endpoints, pool))
        for key in self.grace.due((node, "endpoint"), strays, now, grace_s):
            await self._collect_stray(nrs, key)

    async def _collect_stray(self, nrs: NetResourceSet, key: str) -> None:
        item = await self.state.stores.endpoints.get(key)
        pool = await self.state.stores.pools.get(node_key(nrs.name))
        if item is None or pool is None or not domain.stray_endpoints({key: item.value}, pool.value):
            return
        if await self._drop_endpoint(nrs, key, item.revision):
            await self.events.publish(EventKind.ENDPOINT, "stray-removed", node=nrs.name, object=key)

    async def adopt_detected_mode(self, nrs: NetResourceSet) -> bool:
        """eni_manager found the instance ENI-less: a vpc-eni node switches to vpc-eni-primary (before any pod, or
        its pods keep their endpoints; new ones come from the primary NIC)."""
        provision = self.state.provision(nrs.name)
        detected = provision.detected_mode if provision is not None else None
        if detected is None or nrs.spec.mode is not NetworkMode.VPC_ENI or detected is nrs.spec.mode:
            return False

        def change(current: NetResourceSet | None) -> NetResourceSet | _Keep:
            if current is None or current.spec.mode is not NetworkMode.VPC_ENI:
                return KEEP
            current.spec.mode = detected
            return current

        await self.state.stores.nodes.mutate(node_key(nrs.name), change)
        await self.events.publish(EventKind.NODE, "mode-detected", node=nrs.name, object=nrs.name, mode=detected.value,
                                  message=f"{nrs.spec.instance_id} has no ENI quota: node {nrs.name} runs "
                                  f"{detected.value}")
        return True

    # ---- pool and status ---------------------------------------------------------------------------------------

    async def announce(self, node: str, upkeep: domain.Upkeep) -> None:
        plan = upkeep.release
        for what, ips in (("release-marked", list(plan.mark)), ("release-cancelled", plan.unmark),
                          ("release-confirmed", plan.confirm), ("released-from-eni", plan.drop)):
            if ips:
                await self.events.publish(EventKind.IP, what, node=node, object=node, ips=ips, count=len(ips))
        for eni_id in upkeep.surplus_enis:
            await self.events.publish(EventKind.ENI, "surplus-marked", node=node, object=eni_id,
                                      message=f"{eni_id} is more than {node} needs: no pod gets it, it is deleted")

    async def publish_status(self, nrs: NetResourceSet, upkeep: domain.Upkeep) -> None:
        view = domain.PoolView(upkeep.pool, self.state.facts(nrs.name, nrs.spec), self.ops.clock())
        status_of = route_mode.node_status if view.facts.is_route_mode else domain.node_status
        cached = self.state.nrs(nrs.name)
        if cached is not None and status_of(cached.status, view) is None:
            return
        await self._put_status(nrs.name, lambda status: status_of(status, view))

    async def _put_status(self, node: str, new_status: Callable[[NodeStatus], NodeStatus | None]) -> None:
        def change(current: NetResourceSet | None) -> NetResourceSet | _Keep:
            if current is None or current.status.removing:
                return KEEP
            status = new_status(current.status)
            if status is None:
                return KEEP
            current.status = status
            return current

        await self.state.stores.nodes.mutate(node_key(node), change)

    # ---- vpc-route: more CIDR before the node runs dry ---------------------------------------------------------

    def ask_for_cidr(self, nrs: NetResourceSet, upkeep: domain.Upkeep) -> None:
        """Ask route_manager for another CIDR when the node runs low (one ask in flight per node)."""
        if self.expand is None or nrs.name in self._expanding:
            return
        facts = self.state.facts(nrs.name, nrs.spec)
        if not facts.is_route_mode:
            return  # only vpc-route nodes grow by CIDRs: no pool view to build for the others on every pass
        ask = route_mode.needs_cidr(domain.PoolView(upkeep.pool, facts, self.ops.clock()))
        if ask is None:
            return
        task = asyncio.create_task(self._expand(nrs.name, ask), name=f"ipam-expand-{nrs.name}")
        self._expanding[nrs.name] = task
        task.add_done_callback(lambda _t: self._expanding.pop(nrs.name, None))

    async def _expand(self, node: str, ask: route_mode.Expand) -> None:
        assert self.expand is not None
        req = ExpandRequest(node=node, request_id=ask.request_id, free_ips=ask.free)
        try:
            reply = await self.expand(req)
        except CceError as err:
            if err.reason in TRANSIENT:
                log.info("expand not served now; asked again later", node=node, reason=err.reason.value)
                return
            reason, message = err.reason, err.message
            log.warning("node cannot get another CIDR", node=node, reason=reason.value, error=message)
            await self._put_status(node, lambda s: route_mode.with_condition(s, reason, message))
            await self.events.publish(EventKind.NODE, "cidr-unavailable", node=node, object=node,
                                      reason=reason, message=message, request_id=ask.request_id)
            return
        except Exception as err:  # the bus itself: the next pass asks again
            log.warning("expand request failed", node=node, error=repr(err))
            return
        log.info("node CIDR requested", node=node, request_id=ask.request_id, free=ask.free,
                 added=str(reply.added), cidrs=[str(c) for c in reply.cidrs])
        await self._put_status(node, lambda s: route_mode.with_condition(s, None, ""))

    # ---- node removal ------------------------------------------------------------------------------------------

    async def remove_step(self, nrs: NetResourceSet) -> None:
        """Phase one: release the node's endpoints and zero its demand. Phase two, once eni_manager has removed the
        node's ENIs and provisioning record: delete the pool, then the node record."""
        node = nrs.name
        endpoints = self.state.endpoints.of(node)
        for key in sorted(endpoints):
            await self.state.stores.endpoints.delete(key)
            await self.events.publish(EventKind.ENDPOINT, "released", node=node, object=key,
                                      ip=",".join(map(str, endpoint_ips(endpoints[key]))), message="node removed")
        await self.ops.upkeep(nrs, removing=True)
        if endpoints or self.state.enis.of(node) or self.state.provision(node) is not None \
                or self.state.node_cidrs.of(node):  # vpc-route: route_manager gives CIDRs back after their rules
            return
        await self.state.stores.pools.delete(node_key(node))
        # the instance is free once the node holds nothing of it: given back before the record goes, so the record's
        # deletion is the moment another node may register on it (the record stays `removing` until deleted)
        await instances.give_back(self.state.stores, node, str(nrs.spec.instance_id))
        deleted = False

        def change(current: NetResourceSet | None) -> NetResourceSet | _Keep | None:
            nonlocal deleted
            deleted = current is not None and current.status.removing
            return None if deleted else KEEP

        await self.state.stores.nodes.mutate(node_key(node), change)
        if deleted:
            self.grace.forget(node)
            self.state.forget(node)
            await self.events.publish(EventKind.NODE, "removed", node=node, object=node,
                                      message=f"node {node} removed")

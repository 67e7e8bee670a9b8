"""Fixed IPs on the bus: a StatefulSet pod that comes back gets its reserved IP again, on its old node (the pool
claim passes from the reservation's marker to the new endpoint) or on another node of the subnet (the IP is claimed
there first, eni_manager moves it between the ENIs, then the old node's claim goes); reservations follow their
pods, go idle when the pod goes and are released once idle for their TTL (the decisions are fixed.py's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from ipaddress import IPv4Address

from chassis.events import EventPublisher
from chassis.kv import KEEP, _Keep
from chassis.logs import get_logger
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import AllocateRequest, AssignIpReply, AssignIpRequest
from schemas.records import CceEndpoint, FixedIp, NetResourceSet, NodePool, ReleaseStrategy
from schemas.subjects import endpoint_key, fixed_ip_key
from services.ipam import fixed
from services.ipam.facts import IpSlot
from services.ipam.pool_ops import PoolOps
from services.ipam.state import node_key, wait_event

log = get_logger("ipam.fixed")

Assign = Callable[[AssignIpRequest], Awaitable[AssignIpReply]]
ARRIVAL_WAIT_S = 15.0  # how long a moved IP may take to show on the new node's ENI record
# a claim names its endpoint before the endpoint record exists (the IP may be moving meanwhile): that long, the
# missing record is a claim in progress, not a lost write
CLAIM_GRACE = timedelta(seconds=120)


class FixedIps:
    def __init__(self, ops: PoolOps, events: EventPublisher, assign: Assign | None, default_ttl_s: float) -> None:
        self.ops = ops
        self.state = ops.state
        self.events = events
        self.assign = assign
        self.default_ttl_s = default_ttl_s

    # ---- allocation ----------------------------------------------------------------------------------------------

    def resolve(self, req: AllocateRequest, nrs: NetResourceSet) -> AllocateRequest:
        """The request with the default TTL filled in; InvalidRequest where fixed IPs cannot be had."""
        assert req.fixed_ip is not None
        if nrs.spec.mode is not NetworkMode.VPC_ENI:
            raise CceError(ErrorReason.INVALID_REQUEST, f"fixed IPs need vpc-eni mode (node {req.node} runs "
                           f"{nrs.spec.mode.value}): the IP must be able to follow the pod to another node",
                           fields=["fixed_ip"], node=req.node)
        if req.fixed_ip.release_strategy is ReleaseStrategy.TTL and req.fixed_ip.ttl_s is None:
            return req.model_copy(update={"fixed_ip": req.fixed_ip.model_copy(update={"ttl_s": self.default_ttl_s})})
        return req

    async def claim(self, req: AllocateRequest, nrs: NetResourceSet, key: str) -> IpSlot | None:
        """The pod's reserved IP claimed for `key` on this node (moved here first when it is on another node); None
        when the pod has no reservation yet (it gets an IP like any pod, which then becomes its reservation)."""
        # taken first, with compare-and-set: a TTL release racing this claim (its delete is compare-and-set too)
        # either lands before (no reservation: a new IP) or fails; it cannot free the IP while it moves
        now = self.ops.clock()
        item = await self.state.stores.fixed.mutate(fixed_ip_key(req.pod.namespace, req.pod.name),
                                                    lambda cur: KEEP if cur is None else fixed.taken(cur, key, now))
        if item is None:
            return None
        r = item.value
        same = fixed.same_pod({**self.state.endpoints.of(r.node), **self.state.endpoints.of(req.node)},
                              r.namespace, r.name) - {key}
        mark = fixed.marker_of(r)
        if r.node != req.node:
            await self._check_free_there(r, mark, same)
        slot = await self._claim_here(req, nrs, key, r.ip, mark, same)
        if slot is None:  # on another node (or lost by this one): the IP comes here
            slot = await self._move_here(req, nrs, key, r)
        if r.node != req.node:
            await self.ops.mutate_pool(r.node, lambda pool: fixed.unclaim(pool, r.ip, {mark, *same}))
        return slot

    async def _check_free_there(self, r: FixedIp, mark: str, same: set[str]) -> None:
        pool = await self.state.stores.pools.get(node_key(r.node))
        holder = pool.value.allocated.get(str(r.ip)) if pool else None
        if holder is not None and holder != mark and holder not in same:
            raise self._in_use(r, holder, r.node)

    def _in_use(self, r: FixedIp, holder: str, node: str) -> CceError:
        return CceError(ErrorReason.IP_IN_USE, f"the fixed IP {r.ip} of {r.namespace}/{r.name} is held by "
                        f"{holder} on node {node}; the reservation is kept", node=node, ip=str(r.ip), holder=holder)

    async def _claim_here(self, req: AllocateRequest, nrs: NetResourceSet, key: str, ip: IPv4Address, mark: str,
                          same: set[str]) -> IpSlot | None:
        outcome: list[fixed.FixedClaim] = []

        def change(pool: NodePool | None) -> NodePool | _Keep:
            claim = fixed.claim_fixed(pool or NodePool(node=req.node), self.state.facts(req.node, nrs.spec), key, ip,
                                      mark, same)
            outcome[:] = [claim]
            return claim.pool if claim.changed else KEEP

        await self.ops.mutate_pool(req.node, change)
        claim = outcome[-1]
        if claim.held_by:
            r_ns, r_name = req.pod.namespace, req.pod.name
            raise CceError(ErrorReason.IP_IN_USE, f"the fixed IP {ip} of {r_ns}/{r_name} is held by {claim.held_by} "
                           f"on node {req.node}; the reservation is kept", node=req.node, ip=str(ip),
                           holder=claim.held_by)
        return claim.slot

    async def _move_here(self, req: AllocateRequest, nrs: NetResourceSet, key: str, r: FixedIp) -> IpSlot:
        """eni_manager puts the IP on an ENI of this node (the claim on it is already ours here)."""
        if self.assign is None:
            raise CceError(ErrorReason.SERVICE_UNAVAILABLE, "no ENI service to move the fixed IP with")
        try:
            reply = await self.assign(AssignIpRequest(node=req.node, ip=r.ip, subnet_id=r.subnet_id,
                                                      request_id=f"{fixed_ip_key(r.namespace, r.name)}.{key}"))
        except CceError:
            await self.ops.mutate_pool(req.node, lambda pool: fixed.unclaim(pool, r.ip, {key}))
            raise
        slot = await self._arrival(req.node, nrs, r.ip)
        log.info("fixed IP moved to the pod's new node", ip=str(r.ip), pod=f"{r.namespace}/{r.name}",
                 from_node=r.node, to_node=req.node, eni_id=reply.eni_id, from_eni=reply.moved_from)
        await self.events.publish(EventKind.IP, "fixed-moved", node=req.node, object=str(r.ip), ip=str(r.ip),
                                  pod=f"{r.namespace}/{r.name}", from_node=r.node, eni_id=reply.eni_id,
                                  message=f"fixed IP {r.ip} of {r.namespace}/{r.name} moved from {r.node} to "
                                          f"{req.node}")
        return slot

    async def _arrival(self, node: str, nrs: NetResourceSet, ip: IPv4Address) -> IpSlot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ARRIVAL_WAIT_S
        while True:
            changed = self.state.signals.current(node)
            slot = self.state.facts(node, nrs.spec).slot_of(str(ip))
            if slot is not None:
                return slot
            if loop.time() >= deadline:
                raise CceError(ErrorReason.TIMEOUT, f"fixed IP {ip} was assigned to node {node} but its ENI record "
                               f"does not show it after {ARRIVAL_WAIT_S:g}s", node=node, ip=str(ip))
            await wait_event(changed, 0.5)

    # ---- the reservation -----------------------------------------------------------------------------------------

    async def hold(self, req: AllocateRequest, endpoint: CceEndpoint) -> None:
        """The reservation now names this endpoint (made on the pod's first allocation)."""
        assert req.fixed_ip is not None
        address = endpoint.addresses[0]
        assert address.eni_id is not None and address.subnet_id is not None and address.subnet_cidr is not None
        key = fixed_ip_key(req.pod.namespace, req.pod.name)
        now = self.ops.clock()
        ask = req.fixed_ip
        created = False

        def change(current: FixedIp | None) -> FixedIp:
            nonlocal created
            created = current is None
            base = current or FixedIp(namespace=req.pod.namespace, name=req.pod.name, ip=address.ip,
                                      subnet_id=address.subnet_id or "", subnet_cidr=address.subnet_cidr,
                                      node=req.node, eni_id=address.eni_id or "", created_at=now)
            return base.model_copy(update={
                "ip": address.ip, "subnet_id": address.subnet_id, "subnet_cidr": address.subnet_cidr,
                "node": req.node, "eni_id": address.eni_id, "endpoint": endpoint_key_of(endpoint),
                "pod_uid": req.pod.uid, "owner": ask.owner or base.owner, "release_strategy": ask.release_strategy,
                "ttl_s": ask.ttl_s if ask.release_strategy is ReleaseStrategy.TTL else None, "idle_since": None,
                "updated_at": now})

        await self.state.stores.fixed.mutate(key, change)
        if created:
            await self.events.publish(EventKind.IP, "fixed-reserved", node=req.node, object=str(address.ip),
                                      ip=str(address.ip), pod=f"{req.pod.namespace}/{req.pod.name}",
                                      message=f"{address.ip} is now the fixed IP of {req.pod.namespace}/"
                                              f"{req.pod.name} ({ask.release_strategy.value})")

    async def _idle(self, key: str, holder: str) -> None:
        """The endpoint holding a reservation is gone (a write lost): the reservation waits for its pod."""
        now = self.ops.clock()
        await self.state.stores.fixed.mutate(
            key, lambda cur: fixed.idle(cur, now) if cur is not None and cur.endpoint == holder else KEEP)

    async def upkeep(self, nrs: NetResourceSet) -> None:
        """One pass over the node's reservations: release those whose pod has been gone for their TTL, drop claims
        no reservation keeps (leader only, from maintenance)."""
        now = self.ops.clock()
        node = nrs.name
        endpoints = self.state.endpoints.of(node)
        for key, r in self.state.fixed_ips().items():
            if r.node != node and self.state.knows(r.node):
                continue  # its own node's pass looks after it (a gone node's: any pass)
            if r.endpoint and r.endpoint not in endpoints and now - r.updated_at > CLAIM_GRACE \
                    and await self.state.stores.endpoints.get(r.endpoint) is None:
                await self._idle(key, r.endpoint)
            elif fixed.is_due(r, now):
                await self._release(nrs, key, r)
        pool = self.state.pool(node)
        if pool is None:
            return
        stray = fixed.stray_markers(pool, self.state.facts(node, nrs.spec), self.state.fixed_ips())
        if stray:
            def drop(p: NodePool) -> NodePool | None:
                for ip, mark in stray.items():
                    p = fixed.release_marker(p, ip, mark, nrs.spec.pool.cooldown_s, self.ops.clock()) or p
                return p

            await self.ops.mutate_pool(node, drop)
            log.info("pool claims of fixed IPs no reservation keeps released", node=node, ips=sorted(stray))

    async def _release(self, nrs: NetResourceSet, key: str, r: FixedIp) -> None:
        item = await self.state.stores.fixed.get(key)
        if item is None or not fixed.is_due(item.value, self.ops.clock()):
            return
        await self.state.stores.fixed.delete(key, item.revision)
        await self.ops.mutate_pool(r.node, lambda pool: fixed.release_marker(
            pool, str(r.ip), fixed.marker_of(r), nrs.spec.pool.cooldown_s, self.ops.clock()))
        log.info("fixed IP released: its pod was gone for its TTL", ip=str(r.ip), pod=f"{r.namespace}/{r.name}",
                 ttl_s=r.ttl_s)
        await self.events.publish(EventKind.IP, "fixed-released", node=nrs.name, object=str(r.ip), ip=str(r.ip),
                                  pod=f"{r.namespace}/{r.name}", message=f"fixed IP {r.ip} of {r.namespace}/{r.name}"
                                  f" released: the pod was gone for {r.ttl_s:g}s")

def endpoint_key_of(ep: CceEndpoint) -> str:
    return endpoint_key(ep.node, ep.container_id, ep.ifname)

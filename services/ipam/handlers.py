"""Bus requests of ipam: node register/remove and pod IP allocate/confirm/release, mapped onto domain calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from chassis import tracing
from chassis.events import EventPublisher
from chassis.kv import KEEP, _Keep
from chassis.logs import get_logger
from chassis.rpc import RpcServer
from schemas.base import InstanceType, NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import (
    AllocateReply,
    AllocateRequest,
    ConfirmReply,
    ConfirmRequest,
    NodeRegisterReply,
    NodeRegisterRequest,
    NodeRemoveReply,
    NodeRemoveRequest,
    ReleaseReply,
    ReleaseRequest,
)
from schemas.records import CceEndpoint, NetResourceSet, NodePool, NodeSpec, PoolSettings
from schemas.subjects import IPAM_ALLOCATE, IPAM_CONFIRM, IPAM_RELEASE, NODE_REGISTER, NODE_REMOVE, endpoint_key
from services.ipam import domain, instances, route_mode
from services.ipam.exclusive import failure as exclusive_failure
from services.ipam.exclusive_pool import allows_exclusive, is_exclusive
from services.ipam.fixed_ops import FixedIps
from services.ipam.metrics import REFILL_WAIT
from services.ipam.pool_ops import PoolOps, endpoint_ips
from services.ipam.spread_ops import Spreads
from services.ipam.state import node_key, wait_event
from services.ipam.watermarks import max_allocate

log = get_logger("ipam.handlers")

RECHECK_S = 1.0  # a waiting allocation looks again at least this often, changes or not


def spec_from(req: NodeRegisterRequest, pool: PoolSettings | None, current: NodeSpec | None = None) -> NodeSpec:
    """The node's spec from its registration; pool settings the request leaves out are kept. The mode is the
    registered one, except that a node which cannot run vpc-eni (a BBC, or an instance found ENI-less before) runs
    vpc-eni-primary when it registers with the default vpc-eni."""
    facts = req.model_dump(exclude={"node", "pool", "schema_version"})
    facts["mode"] = registered_mode(req, current)
    return NodeSpec(**facts, pool=req.pool or pool or PoolSettings())


def registered_mode(req: NodeRegisterRequest, current: NodeSpec | None) -> NetworkMode:
    if req.mode is not NetworkMode.VPC_ENI:
        return req.mode
    if req.instance_type is InstanceType.BBC:
        return NetworkMode.VPC_ENI_PRIMARY
    if current is not None and current.mode is NetworkMode.VPC_ENI_PRIMARY and current.instance_id == req.instance_id:
        return NetworkMode.VPC_ENI_PRIMARY
    return req.mode


class Waited:
    """An allocation's wait for a refill: its time (metric) and its span in the request's trace."""

    def __init__(self, clock: Callable[[], float], node: str) -> None:
        self.clock, self.node = clock, node
        self.since: float | None = None
        self.served = False
        self.span: Any = None

    def start(self) -> None:
        if self.since is None:
            self.since = self.clock()
            self.span = tracing.start_child("ipam.wait_for_refill", {tracing.NODE: self.node})

    def end(self) -> None:
        if self.since is None:
            return
        REFILL_WAIT.labels("served" if self.served else "not_served").observe(self.clock() - self.since)
        if self.span is not None:
            self.span.set_attribute("cce.served", self.served)
            if not self.served:
                tracing.fail(self.span, "NotServed")
            self.span.end()
        self.since = None


class IpamHandlers:
    def __init__(self, ops: PoolOps, events: EventPublisher, fixed: FixedIps | None = None) -> None:
        self.ops = ops
        self.state = ops.state
        self.settings = ops.settings
        self.events = events
        self.fixed = fixed or FixedIps(ops, events, None, self.settings.fixed_ip_ttl_s)
        self.spreads = Spreads(ops, events)  # pods a PodSubnetTopologySpread selects (spread_ops.py)

    async def serve(self, rpc: RpcServer) -> None:
        await rpc.add(NODE_REGISTER, self.register)
        await rpc.add(NODE_REMOVE, self.remove)
        await rpc.add(IPAM_ALLOCATE, self.allocate)
        await rpc.add(IPAM_CONFIRM, self.confirm)
        await rpc.add(IPAM_RELEASE, self.release)

    # ---- nodes -------------------------------------------------------------------------------------------------

    async def register(self, req: NodeRegisterRequest) -> NodeRegisterReply:
        # one instance is one node (retryable: the node holding it may be on its way out, as when one is renamed);
        # the claim decides, the records seen so far also count (nodes registered before claims were kept)
        holder = self.state.instance_holder(req.instance_id, req.node)
        if holder is not None:
            raise instances.held_by(holder, str(req.instance_id), req.node)
        await instances.claim(self.state.stores, req.node, str(req.instance_id))
        created = False
        previous = ""

        def change(current: NetResourceSet | None) -> NetResourceSet | _Keep:
            nonlocal created
            nonlocal previous
            created = current is None
            if current is None:
                return NetResourceSet(name=req.node, spec=spec_from(req, None))
            previous = str(current.spec.instance_id)
            if current.status.removing:
                raise CceError(ErrorReason.CONFLICT, f"node {req.node} is being removed; register once it is gone",
                               node=req.node)
            spec = spec_from(req, current.spec.pool, current.spec)
            if spec == current.spec:
                return KEEP
            current.spec = spec
            return current

        item = await self.state.stores.nodes.mutate(node_key(req.node), change)
        assert item is not None
        if previous and previous != str(item.value.spec.instance_id):  # the node moved to another instance
            await instances.give_back(self.state.stores, req.node, previous)
        await self.state.stores.pools.mutate(node_key(req.node),
                                             lambda pool: NodePool(node=req.node) if pool is None else KEEP)
        await self.events.publish(EventKind.NODE, "registered", node=req.node, object=req.node, created=created,
                                  message=f"node {req.node} registered" + ("" if created else " again"))
        return NodeRegisterReply(nrs=item.value, created=created)

    async def remove(self, req: NodeRemoveRequest) -> NodeRemoveReply:
        started = False

        def change(current: NetResourceSet | None) -> NetResourceSet | _Keep:
            nonlocal started
            started = current is not None and not current.status.removing
            if not started:
                return KEEP
            assert current is not None
            current.status.removing = True
            return current

        item = await self.state.stores.nodes.mutate(node_key(req.node), change)
        if started:
            await self.events.publish(EventKind.NODE, "removing", node=req.node, object=req.node,
                                      message=f"node {req.node} is being removed")
        return NodeRemoveReply(node=req.node, removing=item is not None and item.value.status.removing)

    async def _node(self, node: str) -> NetResourceSet | None:
        nrs = self.state.nrs(node)
        if nrs is None:  # the cache may not have seen a registration another replica just served
            item = await self.state.stores.nodes.get(node_key(node))
            nrs = item.value if item else None
        return nrs

    async def _registered(self, node: str) -> NetResourceSet:
        nrs = await self._node(node)
        if nrs is None or nrs.status.removing:
            why = "has not registered" if nrs is None else "is being removed"
            raise CceError(ErrorReason.NODE_NOT_REGISTERED, f"node {node} {why}", node=node)
        return nrs

    # ---- endpoints ---------------------------------------------------------------------------------------------

    async def allocate(self, req: AllocateRequest) -> AllocateReply:
        nrs = await self._registered(req.node)
        if req.exclusive and not allows_exclusive(nrs.spec):
            raise CceError(ErrorReason.INVALID_REQUEST, f"node {req.node} ({nrs.spec.mode.value}) does not allow "
                           "exclusive ENIs", fields=["exclusive"], node=req.node)
        exclusive = is_exclusive(nrs.spec, req.exclusive)
        if req.fixed_ip is not None:
            req = self.fixed.resolve(req, nrs)
        key = endpoint_key(req.node, req.container_id, req.ifname)
        existing = await self.state.stores.endpoints.get(key)
        if existing is not None:
            return AllocateReply(endpoint=existing.value, reused=True)
        if req.fixed_ip is not None:
            slot = await self.fixed.claim(req, nrs, key)
            if slot is not None:  # the pod's own IP again (here, or moved here)
                return await self._fixed_reply(req, nrs, key, slot)
        wait_s = req.wait_s if "wait_s" in req.model_fields_set else self.settings.default_wait_s
        wait_s = min(wait_s, self.settings.max_wait_s)
        chosen = await self.spreads.select(req) if not exclusive and req.fixed_ip is None else None
        if chosen is not None:
            return await self.spreads.allocate(req, nrs, key, chosen, wait_s)
        claim = await self._claim(nrs, key, wait_s, exclusive)
        if claim.slot is None:
            if exclusive:
                raise exclusive_failure(self.state.facts(req.node, nrs.spec), claim, wait_s, self.ops.clock())
            if nrs.spec.mode is NetworkMode.VPC_ROUTE:
                current = await self._node(req.node) or nrs
                raise route_mode.failure(self.state.facts(req.node, nrs.spec), current.status,
                                         len(claim.pool.allocated), wait_s)
            raise domain.failure(req.node, self.state.provision(req.node), len(claim.pool.allocated),
                                 max_allocate(nrs.spec), wait_s)
        mode = NetworkMode.VPC_ENI_EXCLUSIVE if exclusive else nrs.spec.mode
        endpoint, reused = await self._record(req, nrs, mode, key, claim.slot, claim.reused)
        if req.fixed_ip is not None:
            await self.fixed.hold(req, endpoint)  # its first IP becomes the pod's for good
        if not reused:
            origin: dict[str, Any] = {"eni_id": claim.slot.eni.eni_id} if claim.slot.eni else {
                "cidr": str(claim.slot.cidr)}
            await self.events.publish(EventKind.ENDPOINT, "allocated", node=req.node, object=key,
                                      ip=str(claim.slot.ip), pod=f"{req.pod.namespace}/{req.pod.name}", **origin)
        return AllocateReply(endpoint=endpoint, reused=reused)

    async def _fixed_reply(self, req: AllocateRequest, nrs: NetResourceSet, key: str,
                           slot: domain.IpSlot) -> AllocateReply:
        endpoint, reused = await self._record(req, nrs, nrs.spec.mode, key, slot, False)
        await self.fixed.hold(req, endpoint)
        if not reused:
            await self.events.publish(EventKind.ENDPOINT, "allocated", node=req.node, object=key, ip=str(slot.ip),
                                      pod=f"{req.pod.namespace}/{req.pod.name}", fixed=True,
                                      eni_id=slot.eni.eni_id if slot.eni else None)
        return AllocateReply(endpoint=endpoint, reused=reused)

    async def _claim(self, nrs: NetResourceSet, key: str, wait_s: float, exclusive: bool = False) -> domain.Claim:
        """Claim an IP, waiting up to `wait_s` for the pool to refill; the waiting entry goes in every outcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiting = False
        wait = Waited(loop.time, nrs.name)
        try:
            while True:
                changed = self.state.signals.current(nrs.name)
                claim = await self.ops.claim(nrs, key, wait=wait_s > 0, resume=waiting, exclusive=exclusive)
                if claim.cancelled:
                    waiting = False
                    raise CceError(ErrorReason.CONFLICT, f"{key} was released while its allocation waited",
                                   node=nrs.name, key=key)
                done = claim.slot is not None or claim.at_max or claim.at_capacity
                waiting = wait_s > 0 and not done
                wait.served = claim.slot is not None
                remaining = deadline - loop.time()
                if done or remaining <= 0:
                    return claim
                wait.start()
                await wait_event(changed, min(remaining, RECHECK_S, self._until(claim)))
        finally:
            wait.end()
            if waiting:
                await self.ops.stop_waiting(nrs, key)

    def _until(self, claim: domain.Claim) -> float:
        if claim.next_cooldown_end is None:
            return RECHECK_S
        return max(0.0, (claim.next_cooldown_end - self.ops.clock()).total_seconds())

    async def _record(self, req: AllocateRequest, nrs: NetResourceSet, mode: NetworkMode, key: str,
                      slot: domain.IpSlot, reused: bool) -> tuple[CceEndpoint, bool]:
        """Write the endpoint of a claim; a concurrent request with the same key may have written it first."""
        router = self.state.facts(req.node, nrs.spec).router_ip if slot.eni is None else None
        endpoint = domain.new_endpoint(req, mode, slot, self.ops.clock(), self.settings.allocation_ttl_s,
                                       router_ip=router)
        written, raced = await self.state.create_endpoint(key, endpoint)
        if raced:
            return written, True
        if reused:
            log.info("endpoint rebuilt from its claim", node=req.node, key=key, ip=str(slot.ip))
        return endpoint, reused

    async def confirm(self, req: ConfirmRequest) -> ConfirmReply:
        key = endpoint_key(req.node, req.container_id, req.ifname)

        def change(current: CceEndpoint | None) -> CceEndpoint | _Keep:
            if current is None:
                raise CceError(ErrorReason.ENDPOINT_NOT_FOUND, f"no endpoint {key}", node=req.node, key=key)
            if current.expires_at is None and current.host_veth == (req.host_veth or current.host_veth):
                return KEEP
            return domain.confirm_endpoint(current, req.host_veth, self.ops.clock())

        item = await self.state.stores.endpoints.mutate(key, change)
        assert item is not None
        return ConfirmReply(endpoint=item.value)

    async def release(self, req: ReleaseRequest) -> ReleaseReply:
        """Never fails for lack of state: an unknown key (or node) is released=False."""
        key = endpoint_key(req.node, req.container_id, req.ifname)
        nrs = await self._node(req.node)
        existing = await self.state.stores.endpoints.get(key)
        if existing is not None:
            await self.state.stores.endpoints.delete(key)
        cooldown = (nrs.spec.pool if nrs else PoolSettings()).cooldown_s
        ips = await self.ops.release(req.node, nrs.spec if nrs else None, key, cooldown)
        released = existing is not None or bool(ips)
        ips = ips or endpoint_ips(existing.value if existing else None)
        if released:
            await self.events.publish(EventKind.ENDPOINT, "released", node=req.node, object=key,
                                      ip=",".join(map(str, ips)), cooldown_s=cooldown)
        return ReleaseReply(released=released, ips=ips)

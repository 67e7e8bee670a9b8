"""Allocation for pods a PodSubnetTopologySpread selects: which spread (from the pod's facts in `cce_pods`), the
claim within its subnets by compare-and-set on the node's pool, the wait for eni_manager to bring IPs there, and the
coded failure when the node cannot serve the pod (`SubnetNotInZone` at once; `PSTSSubnetExhausted` when it cannot
grow in the subnets, or the wait ran out). The rules are in `spread.py`; the pure claim in `spread_claim.py`."""

from __future__ import annotations

import asyncio

from chassis.events import EventPublisher
from chassis.kv import KEEP, _Keep
from chassis.logs import get_logger
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import AllocateReply, AllocateRequest
from schemas.records import CceEndpoint, NetResourceSet, NodePool, PodInfo, SubnetSpread
from schemas.subjects import pod_key
from services.ipam import domain, spread
from services.ipam.pool_ops import PoolOps
from services.ipam.spread_claim import claim_in_spread, drop_subnet_wait, exhausted, unsatisfiable
from services.ipam.state import wait_event

log = get_logger("ipam.spreads")

RECHECK_S = 1.0
POD_POLL_S = 0.05


class Spreads:
    def __init__(self, ops: PoolOps, events: EventPublisher, pod_wait_s: float = 2.0) -> None:
        self.ops = ops
        self.state = ops.state
        self.events = events
        self.pod_wait_s = pod_wait_s  # how long an ADD waits for its pod's record while spreads exist

    async def select(self, req: AllocateRequest) -> SubnetSpread | None:
        """The spread that selects the pod; None when there is none (or the pod's facts never came)."""
        spreads = self.state.spreads()
        if not spreads:
            return None
        info = await self._pod(req)
        return spread.select_spread(spreads, info) if info is not None else None

    async def _pod(self, req: AllocateRequest) -> PodInfo | None:
        store = self.state.pods
        if store is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pod_wait_s
        key = pod_key(req.node, req.pod.namespace, req.pod.name)
        while True:
            try:
                item = await store.get(key)
            except (CceError, ValueError) as err:  # a name no key can carry, or the bus away: not selected
                log.warning("pod facts unreadable", key=key, error=str(err))
                return None
            if item is not None and (not req.pod.uid or not item.value.uid or item.value.uid == req.pod.uid):
                return item.value
            if loop.time() >= deadline:
                return item.value if item is not None else None
            await asyncio.sleep(POD_POLL_S)

    async def allocate(self, req: AllocateRequest, nrs: NetResourceSet, key: str, chosen: SubnetSpread,
                       wait_s: float) -> AllocateReply:
        psts = spread.spread_key(chosen)
        if nrs.spec.mode is not NetworkMode.VPC_ENI:
            raise CceError(ErrorReason.INVALID_REQUEST, f"pod {req.pod.namespace}/{req.pod.name} is selected by "
                           f"PodSubnetTopologySpread {psts}, which needs a vpc-eni node; {nrs.name} runs "
                           f"{nrs.spec.mode.value}", node=nrs.name, psts=psts)
        facts = self.state.facts(nrs.name, nrs.spec)
        cannot = unsatisfiable(chosen, facts)
        if cannot is not None:
            raise cannot
        claim = await self._claim(nrs, key, chosen, wait_s)
        if claim.slot is None:
            facts = self.state.facts(nrs.name, nrs.spec)
            if claim.at_max:
                raise domain.failure(nrs.name, self.state.provision(nrs.name), len(claim.pool.allocated),
                                     facts.max_allocate, wait_s)
            raise exhausted(chosen, facts, 0.0 if claim.at_capacity else wait_s)
        endpoint, reused = await self._record(req, nrs, key, claim.slot, psts)
        if not reused:
            eni = claim.slot.eni
            await self.events.publish(EventKind.ENDPOINT, "allocated", node=req.node, object=key,
                                      ip=str(claim.slot.ip), pod=f"{req.pod.namespace}/{req.pod.name}", psts=psts,
                                      eni_id=eni.eni_id if eni else None, subnet_id=eni.subnet_id if eni else None)
        return AllocateReply(endpoint=endpoint, reused=reused)

    async def _claim(self, nrs: NetResourceSet, key: str, chosen: SubnetSpread, wait_s: float) -> domain.Claim:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiting = False
        try:
            while True:
                changed = self.state.signals.current(nrs.name)
                claim = await self._attempt(nrs, key, chosen, wait_s > 0, waiting)
                if claim.cancelled:
                    waiting = False
                    raise CceError(ErrorReason.CONFLICT, f"{key} was released while its allocation waited",
                                   node=nrs.name, key=key)
                done = claim.slot is not None or claim.at_max or claim.at_capacity
                waiting = wait_s > 0 and not done
                remaining = deadline - loop.time()
                if done or remaining <= 0:
                    return claim
                await wait_event(changed, min(remaining, RECHECK_S))
        finally:
            if waiting:
                await self._stop_waiting(nrs, key)

    async def _attempt(self, nrs: NetResourceSet, key: str, chosen: SubnetSpread, wait: bool,
                       resume: bool) -> domain.Claim:
        outcome: list[domain.Claim] = []

        def change(pool: NodePool) -> NodePool | _Keep:
            facts = self.state.facts(nrs.name, nrs.spec)
            own = set(spread.reserved_ranges([chosen]))
            others = [r for r in facts.reserved if r not in own]
            claim = claim_in_spread(pool, facts, chosen, others, self.state.subnets(), key, self.ops.clock(), wait,
                                    resume)
            outcome[:] = [claim]
            return claim.pool if claim.changed else KEEP

        await self.ops.mutate_pool(nrs.name, change)
        if not outcome:
            raise CceError(ErrorReason.NODE_NOT_REGISTERED, f"node {nrs.name} has no pool", node=nrs.name)
        return outcome[-1]

    async def _stop_waiting(self, nrs: NetResourceSet, key: str) -> None:
        def change(pool: NodePool) -> NodePool | _Keep:
            new = drop_subnet_wait(pool, self.state.facts(nrs.name, nrs.spec), key, self.ops.clock())
            return KEEP if new is pool else new

        await self.ops.mutate_pool(nrs.name, change)

    async def _record(self, req: AllocateRequest, nrs: NetResourceSet, key: str, slot: domain.IpSlot,
                      psts: str) -> tuple[CceEndpoint, bool]:
        """Write the endpoint (with its spread); a concurrent request with the same key may have written it."""
        endpoint = domain.new_endpoint(req, nrs.spec.mode, slot, self.ops.clock(),
                                       self.ops.settings.allocation_ttl_s).model_copy(update={"psts": psts})
        return await self.state.create_endpoint(key, endpoint)

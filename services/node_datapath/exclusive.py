"""Exclusive ENIs (vpc-eni-exclusive): a pod gets a whole ENI. Setup moves the ENI's link from the node into the pod
netns under the pod's ifname (ENI MAC, its primary IP with the subnet prefix, default route via the subnet
gateway); teardown moves it back under the name it had on the node; resync keeps free ENIs down, unaddressed and
under their original name, reports each ENI's place in its EniOnNode record, and (two-phase) reclaims an ENI left
in the netns of a pod whose endpoint is gone. Plans come from domain.py, netlink from netlink.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from chassis.logs import get_logger
from chassis.netns import NetnsError
from schemas.errors import CceError, ErrorReason
from schemas.messages import (
    CheckReply,
    CheckRequest,
    InterfaceResult,
    IpResult,
    RouteResult,
    SetupReply,
    SetupRequest,
    TeardownReply,
    TeardownRequest,
)
from schemas.records import CceEndpoint, Eni, EniLinkState, EniOnNode
from schemas.subjects import endpoint_key
from services.node_datapath.domain import (
    ExclusivePlan,
    ExclusiveWant,
    LinkMissing,
    NetState,
    PlanError,
    Stale,
    check_exclusive,
    eni_recent_key,
    exclusive_enis_on_node,
    exclusive_want,
    find_orphan_enis,
    idle_record,
    live_endpoints,
    plan_exclusive_return,
    plan_exclusive_setup,
    plan_idle_exclusive,
)

if TYPE_CHECKING:
    from services.node_datapath.datapath import NodeDatapath

log = get_logger("node_datapath")

LINK_POLL_S = 0.1


class ExclusiveEnis:
    """The exclusive-ENI half of a node's datapath (it shares the node datapath's kernel, records, reports and
    locks)."""

    def __init__(self, dp: NodeDatapath) -> None:
        self.dp = dp

    # -- requests -----------------------------------------------------------------------------------------------

    def want(self, endpoint: CceEndpoint) -> ExclusiveWant:
        try:
            return exclusive_want(endpoint, self.dp.records.enis())
        except PlanError as exc:
            raise CceError(ErrorReason.INVALID_REQUEST, str(exc), fields=["endpoint"]) from None

    async def setup(self, req: SetupRequest) -> SetupReply:
        dp = self.dp
        want = self.want(req.endpoint)
        async with dp.named_lock(eni_recent_key(want.eni_id)):
            before = dp.reported.get(want.eni_id)
            if before is not None and before.state is EniLinkState.IN_POD and before.endpoint not in ("", want.key):
                holder = dp.records.endpoint(before.endpoint)
                if holder is not None and holder in live_endpoints([holder], dp.node):
                    raise CceError(ErrorReason.DATAPATH_FAILED, f"ENI {want.eni_id} is held by {before.endpoint}",
                                   node=dp.node, eni_id=want.eni_id, container_id=req.container_id)
            try:
                plan = await self._plan_setup(want, req.netns, before.original_name if before else "")
                changes = await dp.kernel.setup_exclusive(plan, req.netns)
            except PlanError as exc:
                raise CceError(ErrorReason.DATAPATH_FAILED, str(exc), node=dp.node, eni_id=want.eni_id,
                               container_id=req.container_id) from None
            except NetnsError as exc:
                raise CceError(ErrorReason.DATAPATH_FAILED, str(exc), node=dp.node, eni_id=want.eni_id,
                               container_id=req.container_id) from None
            dp.recent[eni_recent_key(want.eni_id)] = dp.clock()
            await dp.put_record(EniOnNode(eni_id=want.eni_id, node=dp.node, state=EniLinkState.IN_POD,
                                          link_name=want.ifname, original_name=plan.original_name,
                                          netns=req.netns, endpoint=want.key))
        log.info("exclusive pod set up", container_id=req.container_id, eni_id=want.eni_id, ip=want.ip,
                 original=plan.original_name, changes=changes)
        return SetupReply(
            interfaces=[InterfaceResult(name=want.ifname, mac=want.mac, sandbox=req.netns)],
            ips=[IpResult(address=f"{want.ip}/{want.prefixlen}", gateway=want.gateway, interface=0)],
            routes=[RouteResult(dst="0.0.0.0/0", gw=want.gateway)],
            host_veth="",
        )

    async def _plan_setup(self, want: ExclusiveWant, pod_ns: str, original: str) -> ExclusivePlan:
        """The setup plan, waiting up to eni_wait_s for the ENI's link to show up on the node."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.dp.timing.eni_wait_s
        while True:
            node, pod = await self.dp.kernel.exclusive_view(pod_ns)
            try:
                return plan_exclusive_setup(want, node, pod, original)
            except LinkMissing as exc:
                if loop.time() >= deadline:
                    raise PlanError(f"{exc} after {self.dp.timing.eni_wait_s}s") from None
            await asyncio.sleep(LINK_POLL_S)

    async def check(self, req: CheckRequest) -> CheckReply:
        want = self.want(req.endpoint)
        try:
            pod = await self.dp.kernel.pod_state(req.netns)
        except NetnsError as exc:
            raise CceError(ErrorReason.DATAPATH_FAILED, str(exc), node=self.dp.node,
                           container_id=req.container_id) from None
        problems = check_exclusive(want, pod)
        return CheckReply(ok=not problems, problems=problems)

    def held_by(self, key: str) -> EniOnNode | None:
        """The ENI our records say the endpoint `key` holds."""
        return next((r for r in self.dp.reported.values() if r.endpoint == key and r.state is EniLinkState.IN_POD),
                    None)

    async def teardown(self, req: TeardownRequest, endpoint: CceEndpoint | None) -> TeardownReply:
        """Move the ENI back to the node (when the pod netns still holds it); succeeds when there is nothing to do."""
        dp = self.dp
        key = endpoint_key(dp.node, req.container_id, req.ifname)
        record = self.held_by(key)
        eni_id = record.eni_id if record else None
        if eni_id is None and endpoint is not None and endpoint.addresses:
            eni_id = endpoint.addresses[0].eni_id
        if eni_id is None:
            return TeardownReply(removed=[])
        eni = dp.records.enis().get(eni_id)
        mac = (endpoint.addresses[0].mac if endpoint is not None and endpoint.addresses else None) or (
            eni.mac if eni is not None else "")
        netns_path = req.netns or (record.netns if record else "")
        removed: list[str] = []
        async with dp.named_lock(eni_recent_key(eni_id)):
            before = dp.reported.get(eni_id)
            if before is not None and before.endpoint not in ("", key) and before.state is EniLinkState.IN_POD:
                return TeardownReply(removed=[])  # another pod holds it now: not ours to move
            try:
                removed = await self._bring_back(eni_id, mac, netns_path, before)
            except NetnsError as exc:
                raise CceError(ErrorReason.DATAPATH_FAILED, str(exc), node=dp.node, eni_id=eni_id,
                               container_id=req.container_id) from None
            dp.recent.pop(eni_recent_key(eni_id), None)
        log.info("exclusive pod torn down", container_id=req.container_id, eni_id=eni_id, removed=removed)
        return TeardownReply(removed=removed)

    async def _bring_back(self, eni_id: str, mac: str, pod_ns: str, before: EniOnNode | None) -> list[str]:
        """Move the link home from `pod_ns` if it is there, then report where it is. Called under the ENI's lock."""
        dp = self.dp
        original = before.original_name if before else ""
        pod = await dp.kernel.pod_state(pod_ns, links_only=True) if pod_ns and mac else None
        if pod is None or pod.link_by_mac(mac) is None:  # not in the pod (gone with it, or home already)
            await self._report_idle(eni_id, mac, await dp.kernel.links(), before)
            return []
        # whether its original name is free on the node: one link looked up, not all of them
        named = await dp.kernel.link(original) if original else None
        plan = plan_exclusive_return(eni_id, mac, pod, NetState(links=(named,) if named else ()), original)
        assert plan is not None
        changes = await dp.kernel.return_exclusive(plan, pod_ns)
        if changes:  # moved: the link is on the node under the plan's name (no second look at every link)
            await dp.put_record(idle_record(eni_id, dp.node, plan.name, before))
        else:  # gone from the pod meanwhile: wherever it went
            await self._report_idle(eni_id, mac, await dp.kernel.links(), before)
        return changes

    async def _report_idle(self, eni_id: str, mac: str, node: NetState, before: EniOnNode | None) -> None:
        link = node.link_by_mac(mac) if mac else None
        await self.dp.put_record(idle_record(eni_id, self.dp.node, link.name if link else None, before))

    # -- resync -------------------------------------------------------------------------------------------------

    async def sync(self, state: NetState) -> tuple[list[str], list[Stale]]:
        """Free ENIs tidied and reported; returns what changed and the orphans (ENIs in gone pods' netns) for GC."""
        dp = self.dp
        enis = exclusive_enis_on_node(dp.records.enis().values(), dp.node)
        held = self.held_enis()
        changes: list[str] = []
        for eni in enis:
            if eni.eni_id in held or eni_recent_key(eni.eni_id) in dp.recent:
                continue
            before = dp.reported.get(eni.eni_id)
            if before is not None and before.state is EniLinkState.IN_POD and state.link_by_mac(eni.mac) is None:
                continue  # in a pod netns: the orphan GC decides
            changes += await self._tidy(eni, before)
        return changes, find_orphan_enis(enis, held, dp.reported, state)

    def held_enis(self) -> set[str]:
        """ENIs a live exclusive endpoint of this node holds (or is about to)."""
        enis = self.dp.records.enis()
        out: set[str] = set()
        for ep in live_endpoints(self.dp.records.endpoints(), self.dp.node):
            with contextlib.suppress(PlanError):
                out.add(exclusive_want(ep, enis).eni_id)
        return out

    async def _tidy(self, eni: Eni, before: EniOnNode | None) -> list[str]:
        dp = self.dp
        async with dp.named_lock(eni_recent_key(eni.eni_id)):
            node = await dp.kernel.links()
            plan = plan_idle_exclusive(eni.eni_id, eni.mac, node, before.original_name if before else "")
            changes: list[str] = []
            if plan is not None and not plan.empty:
                try:
                    changes = await dp.kernel.idle_exclusive(plan)
                except NetnsError as exc:
                    log.warning("could not tidy a free exclusive ENI", eni_id=eni.eni_id, error=str(exc))
                node = await dp.kernel.links()
            await self._report_idle(eni.eni_id, eni.mac, node, before)
            return changes

    async def reclaim(self, item: Stale) -> str | None:
        """GC: move an orphan ENI back from the netns of its gone pod; what was done, or None when nothing was."""
        record = item.eni
        if record is None:
            return None
        dp = self.dp
        eni = dp.records.enis().get(record.eni_id)
        if eni is None:
            return None
        async with dp.named_lock(eni_recent_key(record.eni_id)):
            current = dp.reported.get(record.eni_id)
            if current is None or current.state is not EniLinkState.IN_POD or current.netns != record.netns:
                return None  # set up again, or returned, meanwhile
            if record.eni_id in self.held_enis():
                return None
            changes = await self._bring_back(record.eni_id, eni.mac, record.netns, current)
        return f"{item.what}: " + ("; ".join(changes) if changes else "its netns no longer holds it")

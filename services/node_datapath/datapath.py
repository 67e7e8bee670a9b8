"""The node datapath service: pod setup/teardown/check, ENI configuration and the resync loop. It decides (with
the pure planning in domain.py) and has the kernel adapter (netlink.py) act; records come in through `Records`
and go out through `Reporter`, so it runs the same in-process, in tests and as `python -m services.node_datapath`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter

from chassis import netns
from chassis.logs import get_logger
from chassis.netns import Link, NetnsError
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
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
from schemas.records import CceEndpoint, Eni, EniLinkState, EniOnNode, EniUse, NetResourceSet
from schemas.subjects import endpoint_key
from services.node_datapath.domain import (
    MAIN_TABLE,
    SCOPE_LINK,
    NetState,
    PlanError,
    PodWant,
    Stale,
    check_pod,
    eni_table,
    eni_want,
    enis_on_node,
    find_stale,
    live_endpoints,
    node_want,
    plan_eni,
    plan_gc,
    plan_host,
    plan_node,
    pod_want,
    veth_alias,
)
from services.node_datapath.exclusive import ExclusiveEnis
from services.node_datapath.netlink import Kernel
from services.node_datapath.shaping import (
    ShapingWant,
    ifb_alias,
    ifb_name,
    plan_shaping,
    shaped_wants,
    shaping_want,
    stale_ifbs,
)

R = TypeVar("R", SetupRequest, CheckRequest)
RESYNCS = Counter("cce_datapath_resyncs_total", "resync passes over the node (on a period and after record changes)")
RESYNC_REPAIRS = Counter("cce_datapath_resync_repairs_total", "what resync passes changed on the node: ENI links and "
                         "tables configured, pods' host side repaired, stale links, rules and routes removed")

log = get_logger("node_datapath")

ENI_POLL_S = 0.1
TORN_DOWN_MEMORY_S = 300.0  # how long a teardown is remembered, so its endpoint's deletion triggers no resync


class Records(Protocol):
    """What the datapath reads: endpoints and ENIs (every node's; the datapath filters by its own)."""

    def endpoints(self) -> list[CceEndpoint]: ...

    def endpoint(self, key: str) -> CceEndpoint | None: ...

    async def fetch_endpoint(self, key: str) -> CceEndpoint | None:
        """The endpoint as ipam recorded it, read afresh when the view has not seen it yet (it is ms old)."""
        ...

    def enis(self) -> dict[str, Eni]: ...

    def node_record(self, node: str) -> NetResourceSet | None: ...


class Reporter(Protocol):
    """What the datapath writes: its EniOnNode records and events."""

    async def eni_state(self, record: EniOnNode) -> None: ...

    async def eni_gone(self, eni_id: str) -> None: ...

    async def event(self, kind: EventKind, what: str, *, message: str, object: str = "",
                    reason: ErrorReason | None = None, **data: Any) -> None: ...


@dataclass(frozen=True)
class Timing:
    resync_period_s: float = 30.0
    gc_grace_s: float = 10.0
    eni_wait_s: float = 10.0
    debounce_s: float = 0.5


def datapath_error(exc: NetnsError, **details: Any) -> CceError:
    return CceError(ErrorReason.DATAPATH_FAILED, str(exc), **details)


class NodeDatapath:
    def __init__(self, node: str, kernel: Kernel, records: Records, reporter: Reporter, timing: Timing,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.kernel = kernel
        self.records = records
        self.reporter = reporter
        self.timing = timing
        self.clock = clock
        self.marks: dict[str, float] = {}  # stale thing id -> when first seen stale
        self.recent: dict[str, float] = {}  # host veth -> when it was last set up
        self.ready_enis: set[str] = set()
        self.node_ready = False  # router address / primary NIC / sysctls done once (resync keeps them)
        self.resyncs = 0
        self.reported: dict[str, EniOnNode] = {}
        self.exclusive = ExclusiveEnis(self)
        self._kick = asyncio.Event()
        self._eni_lock = asyncio.Lock()
        self._resync_lock = asyncio.Lock()
        self._veth_locks: dict[str, asyncio.Lock] = {}
        self._torn_down: dict[str, float] = {}  # endpoint key -> when this datapath tore it down
        self._reaping: dict[str, asyncio.Task[None]] = {}  # host veth -> its deletion after a teardown
        self._reaping_in: dict[str, str] = {}  # host veth -> the pod netns its peer is in ("" unknown)
        self.reap_waits = 0  # setups that waited for the deletion of their veth's previous link
        self.eni_changes = 0  # kernel changes made configuring ENIs (resync re-reads the node after any)

    # -- requests -----------------------------------------------------------------------------------------------

    async def setup(self, req: SetupRequest) -> SetupReply:
        req = await self._trusted(req)
        if req.endpoint.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
            return await self.exclusive.setup(req)
        want = self._want(req.endpoint, req.container_id, req.ifname)
        if want.eni_id and req.endpoint.mode is NetworkMode.VPC_ENI:
            await self.ensure_eni(want.eni_id)
            want = self._want(req.endpoint, req.container_id, req.ifname)
        elif not self.node_ready:
            await self.configure_node()
        await self._reaped(want.veth, req.netns)  # a DEL just now of this attachment or in this pod: it goes first
        async with self.named_lock(want.veth):
            try:
                changes = await self.kernel.setup_pod(want, req.netns)
                if req.endpoint.bandwidth is not None:
                    changes += await self.shape(shaping_want(want.key, want.veth, req.endpoint.bandwidth))
            except NetnsError as exc:
                raise datapath_error(exc, node=self.node, container_id=req.container_id) from None
            self.recent[want.veth] = self.clock()
        log.info("pod set up", container_id=req.container_id, ifname=req.ifname, veth=want.veth, ip=want.ip,
                 changes=len(changes))
        return SetupReply(
            interfaces=[InterfaceResult(name=want.veth, mac=want.host_mac),
                        InterfaceResult(name=want.ifname, mac=want.pod_mac, sandbox=req.netns)],
            ips=[IpResult(address=f"{want.ip}/32", gateway=want.gateway, interface=1)],
            routes=[RouteResult(dst="0.0.0.0/0", gw=want.gateway)],
            host_veth=want.veth,
        )

    async def check(self, req: CheckRequest) -> CheckReply:
        req = await self._trusted(req, missing_ok=True)
        if req.endpoint.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
            return await self.exclusive.check(req)
        want = self._want(req.endpoint, req.container_id, req.ifname)
        try:
            node = await self.kernel.snapshot()
            pod = await self.kernel.pod_state(req.netns)
        except NetnsError as exc:
            raise datapath_error(exc, node=self.node, container_id=req.container_id) from None
        problems = check_pod(want, node, pod)
        if req.endpoint.bandwidth is not None:
            shaping = shaping_want(want.key, want.veth, req.endpoint.bandwidth)
            state = await self.kernel.tc_state(shaping.veth, shaping.ifb)
            problems += plan_shaping(shaping, state).problems() if state.veth is not None else []
        return CheckReply(ok=not problems, problems=problems)

    async def shape(self, want: ShapingWant) -> list[str]:
        """Bring the pod's bandwidth limits (tc on its host veth and ifb) to what its endpoint says."""
        state = await self.kernel.tc_state(want.veth, want.ifb)
        if state.veth is None:
            return []
        plan = plan_shaping(want, state)
        return [] if plan.empty else await self.kernel.apply_shaping(plan, state.veth.index)

    async def teardown(self, req: TeardownRequest) -> TeardownReply:
        """Remove what is left of a pod interface; succeeds when nothing is (netns gone, endpoint unknown)."""
        key = endpoint_key(self.node, req.container_id, req.ifname)
        # what ipam recorded, when it still has it; the request's copy only for an endpoint already released
        endpoint = await self.records.fetch_endpoint(key) or req.endpoint
        if (endpoint is not None and endpoint.mode is NetworkMode.VPC_ENI_EXCLUSIVE) or (
                endpoint is None and self.exclusive.held_by(key) is not None):
            return await self.exclusive.teardown(req, endpoint)
        want: PodWant | None = None
        if endpoint is not None:
            with contextlib.suppress(PlanError, CceError):
                want = self._want(endpoint, req.container_id, req.ifname)
        alias = veth_alias(key)
        try:
            if want is not None:  # the names are known: no dump
                veth = await self.kernel.link(want.veth)
                veth = veth if veth is not None and veth.alias == alias else None  # else another container's
                ip: str | None = want.ip
                rules = list(want.rules())
            else:  # no record: find the veth by its alias and the IP by its host route
                state = await self.kernel.snapshot()
                veth = state.link_by_alias(alias)
                ip = None if veth is None else next(
                    (r.dst[:-3] for r in state.routes if r.table == MAIN_TABLE and r.oif == veth.index
                     and r.scope == SCOPE_LINK and r.dst.endswith("/32")), None)
                rules = [r for r in state.rules if ip is not None and r.pod_ip == ip]
            held = {str(a.ip) for e in live_endpoints(self.records.endpoints(), self.node)
                    if endpoint_key(e.node, e.container_id, e.ifname) != key for a in e.addresses}
            removed = [r.describe() for r in await self.kernel.delete_rules(rules)] if ip not in held else []
            # the egress limit's ifb: only a shaped pod has one (the resync collects any other), so others save the
            # lookup
            veth_name = want.veth if want is not None else veth.name if veth is not None else None
            shaped = endpoint is None or endpoint.bandwidth is not None
            if shaped and veth_name is not None and await self.kernel.delete_ifb(ifb_name(veth_name),
                                                                                 ifb_alias(key)):
                removed.append(f"ifb {ifb_name(veth_name)} (its egress limit)")
            if veth is not None:
                async with self.named_lock(veth.name):
                    # down now (its routes and neighbours go with it), deleted right after the reply: a link's
                    # deletion waits for the kernel's RCU grace periods, most of what a DEL would cost
                    if veth.name not in self._reaping and await self.kernel.set_down(veth):
                        removed.append(f"host veth {veth.name} (with its routes and neighbours)")
                        self._reap(veth, req.netns)
                self.recent.pop(veth.name, None)
        except NetnsError as exc:
            raise datapath_error(exc, node=self.node, container_id=req.container_id) from None
        self._torn_down[key] = self.clock()
        log.info("pod torn down", container_id=req.container_id, ifname=req.ifname, ip=ip, removed=removed)
        return TeardownReply(removed=removed)

    async def _trusted(self, req: R, missing_ok: bool = False) -> R:
        """The request with what it may not decide taken from the endpoint record ipam wrote: the addresses, ENI,
        gateway and netns. A request naming no recorded endpoint of this node, or a netns that is not a pod's (the
        node's own, the host's), is refused and changes nothing."""
        key = endpoint_key(self.node, req.container_id, req.ifname)
        record = await self.records.fetch_endpoint(key)
        if record is None:
            raise CceError(ErrorReason.ENDPOINT_NOT_FOUND, f"no endpoint {key} is recorded: the datapath programs "
                           "only what ipam allocated", node=self.node, key=key)
        self._match(record, req.container_id, req.ifname)
        netns_path = record.netns or req.netns
        if record.netns and req.netns and req.netns != record.netns:
            log.warning("request's netns differs from the endpoint's; using the endpoint's", key=key,
                        requested=req.netns, recorded=record.netns)
        self._check_netns(netns_path, missing_ok=missing_ok)
        return req.model_copy(update={"endpoint": record, "netns": netns_path})

    def _match(self, endpoint: CceEndpoint, container_id: str, ifname: str) -> None:
        if (endpoint.node, endpoint.container_id, endpoint.ifname) != (self.node, container_id, ifname):
            raise CceError(ErrorReason.INVALID_REQUEST,
                           f"endpoint {endpoint.node}/{endpoint.container_id}/{endpoint.ifname} does not match the "
                           f"request {self.node}/{container_id}/{ifname}", fields=["endpoint"])

    def _want(self, endpoint: CceEndpoint, container_id: str, ifname: str) -> PodWant:
        self._match(endpoint, container_id, ifname)
        try:
            return pod_want(endpoint, self.records.enis())
        except PlanError as exc:
            raise CceError(ErrorReason.INVALID_REQUEST, str(exc), fields=["endpoint"]) from None

    def _check_netns(self, path: str, missing_ok: bool = False) -> None:
        try:
            if netns.same_namespace(path, self.kernel.node_ns or netns.SELF) or netns.same_namespace(path, netns.HOST):
                raise NetnsError(f"{path} is the node's own network namespace, not a pod's", code=errno.EPERM)
            netns.check_namespace(path)
        except NetnsError as exc:
            if missing_ok and exc.errno == errno.ENOENT:
                return
            raise CceError(ErrorReason.INVALID_REQUEST, f"netns {path!r}: {exc}", fields=["netns"],
                           netns=path) from None

    def _reap(self, veth: Link, pod_netns: str) -> None:
        """Delete a torn-down pod's host veth (its pod side goes with it) in the background. A setup of the same
        name or in the same pod namespace waits for it; should the process stop first, the link is left down and
        the resync collects it."""

        async def delete() -> None:
            try:
                await self.kernel.delete_link_aside(veth)  # by index: this link, not a later one of the same name
            except NetnsError as exc:
                log.warning("a torn-down veth could not be deleted; the resync collects it", veth=veth.name,
                            error=str(exc))
            finally:
                self._reaping.pop(veth.name, None)
                self._reaping_in.pop(veth.name, None)

        self._reaping_in[veth.name] = pod_netns
        self._reaping[veth.name] = asyncio.create_task(delete(), name=f"delete {veth.name}")

    async def _reaped(self, name: str, pod_netns: str) -> None:
        """Wait for the deletions whose links could be in the way of a setup: one of the same host veth name, or
        one whose pod side may still hold the interface name in this pod namespace."""
        tasks = [task for veth, task in self._reaping.items()
                 if veth == name or self._reaping_in.get(veth, "") in ("", pod_netns)]
        if tasks:
            self.reap_waits += 1
            await asyncio.wait(tasks)  # not cancelled with a waiting caller

    async def reaped(self) -> None:
        """Every host veth of a teardown so far is deleted (tests wait on it; a process that stops before leaves
        the down links to its successor's resync)."""
        while self._reaping:
            await asyncio.wait(list(self._reaping.values()))

    @contextlib.asynccontextmanager
    async def named_lock(self, name: str) -> AsyncIterator[None]:
        """One operation at a time per veth name (or per exclusive ENI)."""
        lock = self._veth_locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._veth_locks.get(name) is lock:
                del self._veth_locks[name]

    # -- ENIs ---------------------------------------------------------------------------------------------------

    async def ensure_eni(self, eni_id: str) -> None:
        """Wait (up to eni_wait_s) until the ENI's link is configured on the node."""
        if eni_id in self.ready_enis:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timing.eni_wait_s
        while True:
            eni = self.records.enis().get(eni_id)
            if eni is None or eni.node != self.node:
                why = f"ENI {eni_id} is not attached to node {self.node}"
            else:
                failure = await self.configure_eni(eni)
                if failure is None:
                    return
                why = failure
            if loop.time() >= deadline:
                raise CceError(ErrorReason.DATAPATH_FAILED,
                               f"ENI {eni_id} not ready after {self.timing.eni_wait_s}s: {why}",
                               node=self.node, eni_id=eni_id)
            await asyncio.sleep(ENI_POLL_S)

    async def configure_eni(self, eni: Eni, seen: NetState | None = None) -> str | None:
        """Configure one ENI's link; None when it is ready, else why not (also in its EniOnNode record).
        `seen`: a snapshot of the node taken by the caller (resync configures every ENI from one snapshot: an ENI's
        plan depends only on its own link, address and table)."""
        async with self._eni_lock:
            state, link_name, original, message = EniLinkState.READY, "", "", ""
            try:
                want = eni_want(eni)
                link_name = want.link
                plan = plan_eni(want, seen or await self.kernel.snapshot())
                original = plan.link.name if plan.rename else ""
                changes = await self.kernel.apply_eni(plan)
                self.eni_changes += len(changes)
                if changes:
                    log.info("ENI configured", eni_id=eni.eni_id, link=want.link, changes=changes)
            except PlanError as exc:
                state, message = EniLinkState.PENDING, str(exc)
            except NetnsError as exc:
                state, message = EniLinkState.ERROR, str(exc)
            if state is EniLinkState.READY:
                self.ready_enis.add(eni.eni_id)
            else:
                self.ready_enis.discard(eni.eni_id)
            await self._report(eni, state, link_name, original, message)
            return None if state is EniLinkState.READY else message

    async def put_record(self, record: EniOnNode) -> bool:
        """Write an EniOnNode record unless it says what the last one said; True when written."""
        before = self.reported.get(record.eni_id)
        if before is not None and before.model_dump(exclude={"updated_at"}) == record.model_dump(
                exclude={"updated_at"}):
            return False
        await self.reporter.eni_state(record)
        self.reported[record.eni_id] = record
        return True

    async def _report(self, eni: Eni, state: EniLinkState, link: str, original: str, message: str) -> None:
        before = self.reported.get(eni.eni_id)
        record = EniOnNode(eni_id=eni.eni_id, node=self.node, state=state, link_name=link,
                           original_name=original or (before.original_name if before else ""),
                           route_table=eni_table(eni.index), message=message)
        if not await self.put_record(record):
            return
        if state is EniLinkState.READY:
            await self.reporter.event(EventKind.ENI, "ready", message=f"{eni.eni_id} is {link} with table "
                                      f"{record.route_table}", object=eni.eni_id, link=link, table=record.route_table)
        elif state is EniLinkState.ERROR:
            await self.reporter.event(EventKind.ENI, "link-error", message=message, object=eni.eni_id,
                                      reason=ErrorReason.DATAPATH_FAILED)

    def adopt_reported(self, records: list[EniOnNode]) -> None:
        """What an earlier run of this service reported (so a restart does not rewrite every record)."""
        self.reported = {r.eni_id: r for r in records if r.node == self.node}

    # -- the node -----------------------------------------------------------------------------------------------

    async def configure_node(self) -> list[str]:
        """Router address (vpc-route), primary NIC proxy ARP (vpc-eni-primary), forwarding; reports the primary
        NIC's EniOnNode. Failures are logged and retried by the next resync, never fatal to a pod setup."""
        want = node_want(self.node, self.records.node_record(self.node), self.records.enis().values(),
                         self.records.endpoints())
        try:
            plan = plan_node(want, await self.kernel.links())
            changes = await self.kernel.apply_node(plan)
        except NetnsError as exc:
            log.warning("node configuration failed", error=str(exc))
            return []
        self.node_ready = not plan.problem
        if want.primary_eni is not None:
            link = plan.primary_link
            await self.put_record(EniOnNode(
                eni_id=want.primary_eni, node=self.node,
                state=EniLinkState.READY if link is not None else EniLinkState.PENDING,
                link_name=link.name if link is not None else "", original_name=link.name if link is not None else "",
                message=plan.problem))
        if changes:
            log.info("node configured", changes=changes, router_ip=want.router_ip)
        return changes

    # -- resync -------------------------------------------------------------------------------------------------

    def tore_down(self, key: str) -> bool:
        """Whether this datapath tore the endpoint's pod down lately (so its record going away is expected)."""
        now = self.clock()
        self._torn_down = {k: t for k, t in self._torn_down.items() if now - t < TORN_DOWN_MEMORY_S}
        return key in self._torn_down

    def kick(self) -> None:
        """A record changed: resync soon (bursts coalesce into one pass)."""
        self._kick.set()

    async def run(self) -> None:
        """Resync on a period and (debounced) after record changes; the composition root ran the first pass.
        Failures are logged, never fatal."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.resync_period_s):
                    await self._kick.wait()
            await asyncio.sleep(self.timing.debounce_s)
            self._kick.clear()
            try:
                await self.resync()
            except Exception:
                log.exception("resync failed")

    async def resync(self) -> list[str]:
        """Configure ENIs, repair live pods' host side, remove stale things (two-phase). Returns what changed."""
        async with self._resync_lock:
            changes: list[str] = []
            enis = enis_on_node(self.records.enis().values(), self.node)
            ready: set[str] = set()
            before = self.eni_changes
            seen = await self.kernel.snapshot()
            for eni in enis:
                if await self.configure_eni(eni, seen) is None:
                    ready.add(eni.eni_id)
            self.ready_enis = ready
            changes += await self.configure_node()
            mine = {e.eni_id for e in enis} | {e.eni_id for e in self.records.enis().values()
                                               if e.node == self.node and e.use is not EniUse.SECONDARY_IPS}
            for eni_id in [i for i in self.reported if i not in mine]:
                await self.reporter.eni_gone(eni_id)
                del self.reported[eni_id]
            node_changed = bool(changes)
            state = seen if self.eni_changes == before and not node_changed else await self.kernel.snapshot()
            tidied, orphans = await self.exclusive.sync(state)
            changes += tidied
            live: dict[str, PodWant] = {}
            shaped: dict[str, ShapingWant] = {}
            for ep in live_endpoints(self.records.endpoints(), self.node):
                with contextlib.suppress(PlanError):
                    want = pod_want(ep, self.records.enis())
                    live[want.key] = want
                    if ep.bandwidth is not None:
                        shaped[want.key] = shaping_want(want.key, want.veth, ep.bandwidth)
            for want in live.values():
                veth = state.link(want.veth)
                if veth is not None and veth.alias == want.alias and want.veth not in self._reaping:
                    changes += await self.kernel.repair_host(plan_host(want, veth, state))
                    if want.key in shaped:
                        async with self.named_lock(want.veth):
                            changes += await self.shape(shaped[want.key])
            orphans += stale_ifbs(state, shaped_wants(shaped.values()))
            changes += await self._collect(state, live, {eni_table(e.index) for e in enis}, orphans)
            self.resyncs += 1
            RESYNCS.inc()
            RESYNC_REPAIRS.inc(len(changes))
            if changes:
                log.info("resync changed the node", changes=changes)
            return changes

    async def _collect(self, state: Any, live: dict[str, PodWant], tables: set[int],
                       orphans: list[Stale]) -> list[str]:
        now = self.clock()
        self.recent = {k: t for k, t in self.recent.items() if now - t < self.timing.gc_grace_s}
        gc = plan_gc([*find_stale(state, live, tables), *orphans], self.marks, now, self.timing.gc_grace_s,
                     self.recent)
        self.marks = gc.marks
        removed: list[str] = []
        for item in gc.remove:
            if item.eni is not None:
                done = await self.exclusive.reclaim(item)
                if done is None:
                    continue
                removed.append(done)
                continue
            if item.link is not None:
                async with self.named_lock(item.link.name):
                    current = (await self.kernel.snapshot()).link(item.link.name)
                    if (current is None or current.alias != item.link.alias or item.link.name in self.recent
                            or item.link.name in self._reaping):
                        continue  # replaced meanwhile by a setup, or a teardown's deletion is on its way
                    await self.kernel.delete_link(current)
            elif item.rule is not None:
                await self.kernel.delete_rule(item.rule)
            elif item.route is not None:
                await self.kernel.delete_route(item.route)
            removed.append(item.what)
        if removed:
            await self.reporter.event(EventKind.DATAPATH, "stale-cleaned", message=f"removed {len(removed)} stale "
                                      f"item(s) from {self.node}", removed=removed,
                                      endpoints=[i.key for i in gc.remove if i.key])
        return removed

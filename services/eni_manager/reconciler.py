"""The leader's reconcile loop: per-node workers running plan -> execute -> record, a periodic resync from the
cloud, the subnet mirror, and the GC of ENIs of ours nobody owns.

Only the leader acts. When elected it reloads the records it owns; every node's first round then resyncs the node
from the cloud (after one VPC-wide scan that finds ENIs of ours no record knows, such as one a dead predecessor
created but never recorded) before planning anything, so a takeover never creates a second ENI for one need. A node
whose record was written after the term began (a revision of the nodes bucket above its last one at election) is
one no predecessor ever acted on: it joins without waiting for a scan (scans list the whole VPC, so one per join
would bound how fast nodes can join a large cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chassis import tracing
from chassis.events import EventPublisher
from chassis.kv import KvCache, Versioned
from chassis.logs import get_logger
from cloud.port import CloudEni, CloudInstance, VpcApi
from schemas.base import NetworkMode, from_subject_token, subject_token, utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.records import Eni, NetResourceSet, NodePool
from services.eni_manager.domain import (
    Action,
    DeleteEni,
    DropProvision,
    NodePlan,
    PlanError,
    Quota,
    node_quota,
    plan_removal,
)
from services.eni_manager.executor import Executor, NodeContext
from services.eni_manager.ledger import Ledger
from services.eni_manager.mirror import differs, provision_record, with_error
from services.eni_manager.modes import ENI_MODES, LIFECYCLE, is_eniless, plan_live_node, primary_quota
from services.eni_manager.nodesync import NodeSync
from services.eni_manager.settings import EniManagerSettings
from services.eni_manager.subnets import SubnetMirror
from services.eni_manager.workers import NodeWorker

log = get_logger("eni_manager.reconciler")

MAX_STEPS = 32  # plans one round may carry out before it yields (a guard against a plan that never settles)
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


@dataclass
class Views:
    """What ipam writes and eni_manager reads, kept by watches (the standby's caches stay warm too)."""

    nodes: KvCache[NetResourceSet] | None = None
    pools: KvCache[NodePool] | None = None

    def nrs(self, node: str) -> NetResourceSet | None:
        return self.nodes.get(subject_token(node)) if self.nodes else None

    # the nodes whose pool holds each IP for a pod (allocated; a releasing IP is no pod's): kept by `note_pool` from
    # every pool change, so the executor never records an IP a pod on another node still has onto an ENI of this
    # one, and puts back one of this node's pods that the cloud lost
    pod_ips: dict[str, set[str]] = field(default_factory=dict)
    _pod_ips_of: dict[str, set[str]] = field(default_factory=dict)

    def pool(self, node: str) -> NodePool | None:
        return self.pools.get(subject_token(node)) if self.pools else None

    def note_pool(self, node: str, pool: NodePool | None) -> None:
        for ip in self._pod_ips_of.pop(node, set()):
            holders = self.pod_ips.get(ip)
            if holders is not None:
                holders.discard(node)
                if not holders:
                    del self.pod_ips[ip]
        if pool is not None:
            ips = set(pool.allocated)
            self._pod_ips_of[node] = ips
            for ip in ips:
                self.pod_ips.setdefault(ip, set()).add(node)

    def note_pools(self) -> None:
        for pool in self.pools.values() if self.pools else []:
            self.note_pool(pool.node, pool)

    def pod_nodes(self, ip: str) -> set[str]:
        """The nodes whose pool holds the IP for a pod (two while a fixed IP moves between them)."""
        return self.pod_ips.get(ip, set())

    def eni_nodes(self) -> list[NetResourceSet]:
        """Nodes in an ENI-family mode (vpc-eni, vpc-eni-primary, vpc-eni-exclusive)."""
        return [n for n in (self.nodes.values() if self.nodes else []) if n.spec.mode in ENI_MODES]


class Reconciler:
    def __init__(self, settings: EniManagerSettings, api: VpcApi, ledger: Ledger, subnets: SubnetMirror,
                 executor: Executor, nodesync: NodeSync, events: EventPublisher, spawn: Spawn,
                 views: Views, vpc_id: str = "") -> None:
        self.settings = settings
        self.api = api
        self.ledger = ledger
        self.subnets = subnets
        self.executor = executor
        self.nodesync = nodesync
        self.events = events
        self.views = views
        self.vpc_id = vpc_id
        self.leading = False
        self._spawn = spawn
        self._lead_task: asyncio.Task[Any] | None = None
        self._workers: dict[str, NodeWorker] = {}
        self._scan_lock = asyncio.Lock()
        self._scanned_at: float | None = None  # loop time the last VPC scan started, None: not this term
        self._node_seen_at: dict[str, float] = {}
        self._term_revision: int | None = None  # the nodes bucket's last revision when this term began
        self._term_nodes: set[str] = set()  # the nodes known when it began
        self._first_revision: dict[str, int] = {}  # node -> the revision its record had when the views first saw it
        self._hints: dict[str, list[CloudEni]] = {}
        self._listed: dict[str, list[CloudEni]] = {}  # node -> its attached ENIs from the last scan, if still true
        self._round_marks: dict[str, int] = {}  # node -> rounds started + rounds ended: odd while one runs
        self._instances: dict[str, CloudInstance] = {}
        self._other_enis: dict[str, int] = {}
        self._removal_marks: dict[str, datetime] = {}
        self._orphans_seen: dict[str, datetime] = {}
        self._waiting_traces: dict[str, list[str]] = {}  # node -> traceparents of allocations waiting for it

    # --- leadership -------------------------------------------------------------------------------------------

    async def on_elected(self) -> None:
        self._lead_task = self._spawn(self._lead(), "eni-manager-lead")

    async def on_lost(self) -> None:
        task, self._lead_task = self._lead_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _lead(self) -> None:
        try:
            await self.ledger.load()
            self._scanned_at, self._hints, self._removal_marks, self._listed = None, {}, {}, {}
            self._term_revision = await self.views.nodes.store.last_revision() if self.views.nodes else None
            self._term_nodes = self.known_nodes()
            self.leading = True
            log.info("leading: resyncing every node before acting", nodes=len(self.known_nodes()))
            for node in self.known_nodes():
                self.kick(node, resync=True)
            await asyncio.gather(self._every(self.settings.subnet_sync_period_s, self._sync_subnets),
                                 self._every(self.settings.resync_period_s, self._resync_all))
        finally:
            self.leading = False
            workers, self._workers = self._workers, {}
            for worker in workers.values():
                await worker.stop()

    async def _every(self, period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await job()
            except Exception as err:  # a periodic job failing must not stop the leader
                log.warning("periodic job failed", job=job.__name__, error=repr(err))

    # --- kicks ------------------------------------------------------------------------------------------------

    def kick(self, node: str, resync: bool = False) -> None:
        if not self.leading:
            return
        worker = self._workers.get(node)
        if worker is None:
            worker = NodeWorker(node, self._round, self.settings.retry_backoff_s, self.settings.resync_period_s)
            self._workers[node] = worker
            self._node_seen_at[node] = asyncio.get_running_loop().time()
            worker.start()
            resync = True  # a node's first round always reads it from the cloud
        worker.kick(resync)

    def on_node_change(self, key: str, item: Versioned[NetResourceSet] | None) -> None:
        node = item.value.name if item else from_subject_token(key)
        if item is None:
            self._first_revision.pop(node, None)
        else:
            self._first_revision.setdefault(node, item.revision)
        self.kick(node)

    def on_pool_change(self, key: str, item: Versioned[NodePool] | None) -> None:
        node = item.value.node if item else from_subject_token(key)
        self.views.note_pool(node, item.value if item else None)
        for ip, there in list(self.executor.held_back.items()):  # a pod let go: the ENI the cloud put it on has it
            if not self.views.pod_nodes(ip) - {there}:
                del self.executor.held_back[ip]
                self.kick(there, resync=True)
        # allocations waiting for this node's refill: the rounds that refill it join their traces
        traces = list(dict.fromkeys(item.value.waiting_traces.values())) if item else []
        if traces:
            self._waiting_traces[node] = traces
        else:
            self._waiting_traces.pop(node, None)
        self.kick(node)

    def on_eni_change(self, key: str, item: Versioned[Eni] | None) -> None:
        if item is not None:
            self.kick(item.value.node)

    def rounds_done(self, node: str) -> int:
        """How many rounds of the node have ended (for an operator's or a test's "has it looked again")."""
        return self._round_marks.get(node, 0) // 2

    def known_nodes(self) -> set[str]:
        return {n.name for n in self.views.eni_nodes()} | self.ledger.nodes()

    def live_nodes(self) -> set[str]:
        return {n.name for n in self.views.eni_nodes() if not n.status.removing}

    # --- periodic jobs ----------------------------------------------------------------------------------------

    async def _sync_subnets(self) -> None:
        if self.vpc_id:
            await self.subnets.sync(self.vpc_id)

    async def _resync_all(self) -> None:
        if self.vpc_id and self._scanned_at is not None:
            async with self._scan_lock:
                orphans = await self._scan()
            await self._collect_orphans(orphans)
        for node in self.known_nodes():
            self.kick(node, resync=True)

    async def _scan(self) -> list[CloudEni]:
        """List the VPC for ENIs of ours no record knows: hints for live nodes; returns the orphans. A node that no
        round touched while the listing ran gets its attached ENIs from it for its next resync."""
        started = asyncio.get_running_loop().time()
        marks = dict(self._round_marks)
        scan = await self.nodesync.scan(self.vpc_id, self.live_nodes())
        self._hints = scan.hints
        self._scanned_at = started
        self._listed = {}
        for node in self.known_nodes():
            instance_id = self._instance_id(node, self.views.nrs(node))
            untouched = self._round_marks.get(node, 0) == marks.get(node, 0) and marks.get(node, 0) % 2 == 0
            if instance_id and untouched:
                self._listed[node] = scan.attached.get(instance_id, [])
        return scan.orphans

    def _scanned_for(self, node: str) -> bool:
        if self._scanned_at is None:
            return False
        return self._scanned_at >= self._node_seen_at.get(node, 0.0) or self._new_this_term(node)

    def _new_this_term(self, node: str) -> bool:
        """The node's record was first written after this term began and nothing of it was known then: no
        predecessor (which stepped down before this term) can have created an ENI for it."""
        first = self._first_revision.get(node)
        return (node not in self._term_nodes and first is not None and self._term_revision is not None
                and first > self._term_revision)

    async def _ensure_scanned(self, node: str, instance_id: str) -> None:
        """Before a node first acts in a term: the VPC is known, its subnets mirrored, and it was scanned for
        ENIs of ours after the node was first seen (so one its predecessor created unrecorded is adopted)."""
        if self._scanned_for(node):
            return
        async with self._scan_lock:
            if self._scanned_for(node):
                return
            if not self.vpc_id:
                self.vpc_id = (await self._instance(instance_id)).vpc_id
                log.info("VPC learnt from an instance", vpc_id=self.vpc_id, instance_id=instance_id)
            if self._scanned_at is None:
                await self.subnets.sync(self.vpc_id)
            await self._scan()

    async def _collect_orphans(self, orphans: list[CloudEni]) -> None:
        """Unattached ENIs of ours with no record and no live node: deleted once seen for `stuck_after_s`."""
        now = utcnow()
        seen: dict[str, datetime] = {}
        ctx = NodeContext("-", "", self.vpc_id, Quota(0, 0))
        for cloud in orphans:
            first = self._orphans_seen.get(cloud.eni_id, now)
            seen[cloud.eni_id] = first
            if (now - first).total_seconds() <= self.settings.stuck_after_s:
                continue
            try:
                await self.executor.delete(ctx, DeleteEni(cloud.eni_id, "orphan"))
                seen.pop(cloud.eni_id)
            except CceError as err:
                log.warning("orphan ENI not deleted", eni_id=cloud.eni_id, error=str(err))
        self._orphans_seen = seen

    # --- one round for one node -------------------------------------------------------------------------------

    async def _round(self, node: str, resync: bool) -> bool:
        self._round_marks[node] = self._round_marks.get(node, 0) + 1
        try:
            with tracing.joined_span("eni_manager.refill", self._waiting_traces.get(node, ()),
                                     {tracing.NODE: node, "cce.resync": resync}):
                return await self._round_once(node, resync, self._listed.pop(node, None))
        finally:
            self._round_marks[node] += 1

    async def _round_once(self, node: str, resync: bool, listed: list[CloudEni] | None) -> bool:
        nrs = self.views.nrs(node)
        if nrs is not None and nrs.spec.mode not in ENI_MODES:
            return True
        instance_id = self._instance_id(node, nrs)
        if not instance_id:
            return True
        try:
            await self._ensure_scanned(node, instance_id)
            ctx = await self._context(node, nrs, instance_id)
            if nrs is not None and not nrs.status.removing:
                if await self._detected_eniless(ctx, nrs):
                    return True  # ipam switches the node to vpc-eni-primary; the change brings us back
                await self._put_provision(ctx)
            if resync:
                self._other_enis[node] = await self.nodesync.resync(ctx, self._hints.pop(node, []), listed)
                if nrs is not None and nrs.spec.mode is NetworkMode.VPC_ENI_PRIMARY and not nrs.status.removing:
                    await self.executor.sync_primary(ctx)
            if nrs is not None and nrs.spec.mode is NetworkMode.VPC_ENI and not nrs.status.removing:
                await self.executor.restore_strays(ctx, self.views.pool(node))
            await self._converge(ctx)
        except CceError as err:
            await self._failed(node, err.reason, err.message)
            return False
        return True

    async def _converge(self, ctx: NodeContext) -> None:
        for _ in range(MAX_STEPS):
            plan = self._plan(ctx, self.views.nrs(ctx.node))  # read afresh: the node may be leaving meanwhile
            await self._outcome(ctx.node, plan)
            if plan.is_idle:
                return
            log.info("executing plan", node=ctx.node, actions=[repr(a) for a in plan.actions],
                     error=plan.error.reason.value if plan.error else None)
            # the steps that wait on the cloud for an ENI run side by side, after the plan's other steps
            flights = [a for a in plan.actions if isinstance(a, LIFECYCLE)]
            for action in plan.actions:
                if not isinstance(action, LIFECYCLE):
                    await self._act(ctx, action)
            # every one runs to its end; the first error counts
            outcomes = await asyncio.gather(*(self._act(ctx, a) for a in flights), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            if any(isinstance(a, DropProvision) for a in plan.actions):
                return
        log.warning("node did not settle within a round", node=ctx.node, steps=MAX_STEPS)

    async def _act(self, ctx: NodeContext, action: Action) -> None:
        with tracing.child_span(f"eni_manager.{type(action).__name__}", {"cce.action": repr(action)[:200]}):
            await self.executor.run(ctx, action)

    def _plan(self, ctx: NodeContext, nrs: NetResourceSet | None) -> NodePlan:
        now = utcnow()
        enis = self.ledger.enis_of(ctx.node)
        if nrs is None or nrs.status.removing:
            marked = self._removal_marks.setdefault(ctx.node, now)
            plan = plan_removal(ctx.node, enis, marked, self.settings.plan, now,
                                has_provision=self.ledger.provision_of(ctx.node) is not None)
            if plan.is_idle and plan.waiting:  # come back when the grace period is over
                grace_left = self.settings.removal_grace_s - (now - marked).total_seconds()
                self._workers[ctx.node].kick_later(max(grace_left, 0.0))
            return plan
        self._removal_marks.pop(ctx.node, None)
        pool = self.views.pool(ctx.node)
        return plan_live_node(nrs, enis, pool, ctx.quota, self.ledger.subnets.items, self.settings.plan, now,
                              other_enis=self._other_enis.get(ctx.node, 0), taken=self._taken(pool))

    def _taken(self, pool: NodePool | None) -> set[str]:
        """IPs not to ask for by name: on an ENI we know, or in use elsewhere (only a spread's ranges need it)."""
        if pool is None or not any(d.ranges for d in pool.demand.subnets.values()):
            return set()
        return {str(p.ip) for e in self.ledger.enis.values() for p in e.private_ips} | self.executor.unavailable

    # --- node facts -------------------------------------------------------------------------------------------

    def _instance_id(self, node: str, nrs: NetResourceSet | None) -> str:
        if nrs is not None:
            return nrs.spec.instance_id
        provision = self.ledger.provision_of(node)
        if provision is not None:
            return provision.instance_id
        return next((e.instance_id for e in self.ledger.enis_of(node)), "")

    async def _instance(self, instance_id: str) -> CloudInstance:
        cached = self._instances.get(instance_id)
        if cached is None:
            cached = self._instances[instance_id] = await self.api.get_instance(instance_id)
        return cached

    async def _context(self, node: str, nrs: NetResourceSet | None, instance_id: str) -> NodeContext:
        if nrs is not None and nrs.spec.mode is NetworkMode.VPC_ENI_PRIMARY:
            quota = primary_quota(nrs.spec)
        elif nrs is not None:
            quota = node_quota(nrs.spec, await self._eni_quota(instance_id))
        else:
            provision = self.ledger.provision_of(node)
            quota = Quota(provision.max_enis, provision.ips_per_eni) if provision else Quota(0, 0)
        return NodeContext(node, instance_id, self.vpc_id, quota)

    async def _eni_quota(self, instance_id: str) -> int | None:
        try:
            return (await self._instance(instance_id)).eni_quota
        except CceError as err:  # fall back to min(cpus, 8) this time; asked again next round
            log.warning("instance quota unknown", instance_id=instance_id, error=str(err))
            return None

    async def _detected_eniless(self, ctx: NodeContext, nrs: NetResourceSet) -> bool:
        """A vpc-eni node whose instance has no ENI quota (an ENI-less EBC) can only run vpc-eni-primary: say so
        in its provision record (ipam, the node record's owner, switches the mode) and plan nothing for it."""
        if not is_eniless(await self._eni_quota(ctx.instance_id), nrs.spec):
            return False
        previous = self.ledger.provision_of(ctx.node)
        if previous is not None and previous.detected_mode is NetworkMode.VPC_ENI_PRIMARY:
            return True
        record = provision_record(ctx.node, ctx.instance_id, ctx.quota, previous, utcnow())
        await self.ledger.put_provision(record.model_copy(update={"detected_mode": NetworkMode.VPC_ENI_PRIMARY}))
        log.info("instance has no ENI quota: the node can only run vpc-eni-primary", node=ctx.node,
                 instance_id=ctx.instance_id)
        await self.events.publish(EventKind.ENI, "eniless-instance", node=ctx.node, object=ctx.instance_id,
                                  message=f"{ctx.instance_id} has no ENI quota; vpc-eni-primary detected")
        return True

    # --- provision records ------------------------------------------------------------------------------------

    async def _put_provision(self, ctx: NodeContext) -> None:
        previous = self.ledger.provision_of(ctx.node)
        record = provision_record(ctx.node, ctx.instance_id, ctx.quota, previous, utcnow())
        if differs(previous, record):
            await self.ledger.put_provision(record)

    async def _outcome(self, node: str, plan: NodePlan) -> None:
        """A plan's error is recorded (once per change); a settled plan without one clears the last error."""
        previous = self.ledger.provision_of(node)
        if previous is None:
            return
        if plan.error is not None:
            await self._record_error(node, plan.error)
        elif plan.is_idle and previous.last_error is not None:
            await self.ledger.put_provision(with_error(previous, None, "", utcnow()))

    async def _record_error(self, node: str, error: PlanError) -> None:
        previous = self.ledger.provision_of(node)
        if previous is None or (previous.last_error, previous.message) == (error.reason, error.message):
            return
        log.warning("provisioning failed", node=node, reason=error.reason.value, message=error.message)
        await self.ledger.put_provision(with_error(previous, error.reason, error.message, utcnow()))
        await self.events.publish(EventKind.ENI, "provision-failed", node=node, reason=error.reason,
                                  message=error.message)

    async def _failed(self, node: str, reason: ErrorReason, message: str) -> None:
        """A cloud step failed: always a warning event; the provision record says why until a later success."""
        log.warning("provisioning step failed", node=node, reason=reason.value, message=message)
        await self.events.publish(EventKind.ENI, "step-failed", node=node, reason=reason, message=message)
        previous = self.ledger.provision_of(node)
        if previous is not None and (previous.last_error, previous.message) != (reason, message):
            await self.ledger.put_provision(with_error(previous, reason, message, utcnow()))

"""The leader's loop: node CIDRs toward the nodes' needs and the VPC route table toward the records.

Only the leader acts. When elected it reloads the records it owns, learns and checks the VPC (the cluster blocks
must not overlap the VPC or its subnets: the process stops rather than route over them), then runs rounds on
events (a node registered or is leaving, an expand request) and on a period:

1. every live vpc-route node without a CIDR gets its first one (its registration's request id);
2. idle extra CIDRs are marked releasing after a delay; a marked one goes (rule first, then its record) once it
   stayed unclaimed for the confirmation delay, and goes back to active if a pod took an address in it;
3. route sync (`routes.RouteSync`): create missing, delete stale ones of ours, report conflicts;
4. CIDRs of removed nodes (and retired ones) are given back once no rule of ours holds their destination, so
   ipam, which drops a node's record only when it has no CIDR left, never loses a node with routes behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from chassis.events import EventPublisher
from chassis.kv import KvCache, Store
from chassis.logs import get_logger
from cloud.port import VpcApi
from schemas.base import NetworkMode, subject_token, utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.records import ClusterCidrPool, NetResourceSet, NodeCidr, NodeCidrState, NodePool
from schemas.subjects import expand_request_id
from services.route_manager.allocator import CidrAllocator
from services.route_manager.domain import (
    CidrUse,
    ConfigError,
    DesiredRule,
    check_against_vpc,
    description_for,
    idle_cidrs,
    is_due,
)
from services.route_manager.routes import RouteSync, SyncResult
from services.route_manager.settings import RouteManagerSettings

log = get_logger("route_manager.reconciler")

ROUND_SECONDS = Histogram("cce_route_round_seconds", "one route_manager round: CIDRs, releases, route sync",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
SYNC_ROUNDS = Counter("cce_route_sync_rounds_total", "route_manager rounds (CIDRs, releases, route sync) by outcome: "
                      "ok or failed (retried after a back-off)", ["outcome"])
REPAIRED = Counter("cce_route_rules_repaired_total", "VPC route rules changed to match the records: created (missing) "
                   "or deleted (stale rules of ours)", ["action"])
RULE_FAILURES = Counter("cce_route_rule_failures_total", "route rules a sync could not create or delete")
CONFLICTS = Gauge("cce_route_conflicts", "destinations of ours held by a rule with another next hop or owner, as "
                  "the leader's last sync found them (0 on a standby)")
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
POOL_KEY = "config"


@dataclass
class Views:
    """What ipam writes and route_manager reads (kept warm on the standby too)."""

    nodes: KvCache[NetResourceSet] | None = None
    pools: KvCache[NodePool] | None = None

    def nrs(self, node: str) -> NetResourceSet | None:
        return self.nodes.get(subject_token(node)) if self.nodes else None

    def pool(self, node: str) -> NodePool | None:
        return self.pools.get(subject_token(node)) if self.pools else None

    def route_nodes(self) -> list[NetResourceSet]:
        """Live vpc-route nodes (registered, not leaving)."""
        nodes = self.nodes.values() if self.nodes else []
        return [n for n in nodes if n.spec.mode is NetworkMode.VPC_ROUTE and not n.status.removing]


def ips_in(ips: Iterable[str], cidr: IPv4Network) -> int:
    return sum(1 for ip in ips if IPv4Address(ip) in cidr)


def cidr_uses(cidrs: list[NodeCidr], pool: NodePool | None, now: datetime) -> list[CidrUse]:
    allocated = list(pool.allocated) if pool else []
    cooling = [ip for ip, until in pool.cooldown.items() if until > now] if pool else []
    return [CidrUse(c, ips_in(allocated, c.cidr), ips_in(cooling, c.cidr)) for c in cidrs]


class RouteManager:
    def __init__(self, settings: RouteManagerSettings, api: VpcApi, allocator: CidrAllocator, routes: RouteSync,
                 pools: Store[NodePool], config: Store[ClusterCidrPool], events: EventPublisher, spawn: Spawn,
                 views: Views, vpc_id: str = "") -> None:
        self.settings = settings
        self.api = api
        self.allocator = allocator
        self.routes = routes
        self.pool_store = pools
        self.config = config
        self.events = events
        self.views = views
        self.vpc_id = vpc_id
        self.leading = False
        self.validated = False
        self.rounds = 0
        self._spawn = spawn
        self._lead_task: asyncio.Task[Any] | None = None
        self._kick = asyncio.Event()
        self._round_done = asyncio.Event()
        self._alloc_lock = asyncio.Lock()
        self._idle_since: dict[IPv4Network, datetime] = {}
        self._retiring: set[IPv4Network] = set()

    # --- leadership -------------------------------------------------------------------------------------------

    async def on_elected(self) -> None:
        self._lead_task = self._spawn(self._lead(), "route-manager-lead")

    async def on_lost(self) -> None:
        task, self._lead_task = self._lead_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _lead(self) -> None:
        try:
            await self.allocator.load()
            await self.routes.load()
            self._idle_since, self._retiring = {}, set()
            self.leading = True
            log.info("leading", cidrs=len(self.allocator.items), routes=len(self.routes.items))
            await self._loop()
        finally:
            self.leading = False
            CONFLICTS.set(0)

    async def _loop(self) -> None:
        failures = 0
        self._kick.set()
        while True:
            try:
                async with asyncio.timeout(self.settings.resync_period_s):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.round()
                failures = 0
            except ConfigError as err:
                log.error("refusing to run: the cluster CIDR blocks collide with the VPC", error=str(err))
                await self.events.publish(EventKind.CIDR, "config-refused", reason=ErrorReason.INVALID_REQUEST,
                                          message=str(err))
                raise
            except Exception as err:  # a failed round is retried after a back-off; the leader keeps leading
                SYNC_ROUNDS.labels("failed").inc()
                delay = min(self.settings.retry_backoff_s * 2 ** failures, self.settings.resync_period_s)
                failures += 1
                log.warning("route round failed", error=repr(err), retry_in=delay)
                asyncio.get_running_loop().call_later(delay, self._kick.set)
            finally:
                self._round_done.set()
                self._round_done = asyncio.Event()

    def kick(self) -> None:
        if self.leading:
            self._kick.set()

    def on_node_change(self, _key: str, _item: object) -> None:
        self.kick()

    # --- one round --------------------------------------------------------------------------------------------

    async def round(self) -> SyncResult | None:
        if not await self.ensure_ready():
            return None
        started = asyncio.get_running_loop().time()
        await self._first_cidrs()
        await self._releases()
        result = await self.routes.sync(self.desired())
        await self._give_back(result)
        took = asyncio.get_running_loop().time() - started
        ROUND_SECONDS.observe(took)
        SYNC_ROUNDS.labels("ok").inc()
        REPAIRED.labels("created").inc(len(result.created))
        REPAIRED.labels("deleted").inc(len(result.deleted))
        RULE_FAILURES.inc(len(result.failed))
        CONFLICTS.set(len(result.diff.conflicts))
        self.rounds += 1
        if result.created or result.deleted or result.failed:
            log.info("route round", took_ms=round(took * 1000, 1), rules=len(result.listing),
                     created=len(result.created), deleted=len(result.deleted), failed=len(result.failed),
                     conflicts=len(result.diff.conflicts))
        return result

    async def ensure_ready(self) -> bool:
        """The VPC is known and checked, the route table found and the pool's config record written."""
        if self.validated:
            return True
        if not self.vpc_id:
            self.vpc_id = await self._learn_vpc()
            if not self.vpc_id:
                return False
        table = await validate_vpc(self.api, self.settings, self.vpc_id)
        self.routes.route_table_id = table
        await self._write_config()
        self.validated = True
        log.info("VPC checked", vpc_id=self.vpc_id, route_table_id=table,
                 blocks=[str(b) for b in self.settings.cluster_cidrs])
        return True

    async def _learn_vpc(self) -> str:
        for nrs in self.views.route_nodes():
            instance = await self.api.get_instance(nrs.spec.instance_id)
            log.info("VPC learnt from an instance", vpc_id=instance.vpc_id, instance_id=instance.instance_id)
            return instance.vpc_id
        return ""

    async def _write_config(self) -> None:
        s = self.settings
        record = ClusterCidrPool(blocks=s.cluster_cidrs, node_mask=s.node_cidr_mask,
                                 low_free_threshold=s.low_free_threshold, max_cidrs_per_node=s.max_cidrs_per_node,
                                 cluster_id=s.cluster_id, vpc_id=self.vpc_id,
                                 route_table_id=self.routes.route_table_id)

        def change(current: ClusterCidrPool | None) -> ClusterCidrPool:
            if current is not None and current.model_dump(exclude={"updated_at"}) == record.model_dump(
                    exclude={"updated_at"}):
                return current
            return record

        await self.config.mutate(POOL_KEY, change)

    def desired(self) -> list[DesiredRule]:
        out = []
        for cidr in self.allocator.all():
            nrs = self.views.nrs(cidr.node)
            if nrs is None or nrs.status.removing or nrs.spec.mode is not NetworkMode.VPC_ROUTE:
                continue
            if cidr.cidr in self._retiring:
                continue
            out.append(DesiredRule(cidr.cidr, cidr.node, nrs.spec.instance_id,
                                   description_for(self.settings.cluster_id, cidr.node)))
        return out

    # --- allocation -------------------------------------------------------------------------------------------

    async def _first_cidrs(self) -> None:
        for nrs in self.views.route_nodes():
            if not self.allocator.of(nrs.name):
                try:
                    await self.allocate(nrs.name, expand_request_id(nrs.name, 1))
                except CceError as err:
                    await self._allocation_failed(nrs.name, err)

    async def allocate(self, node: str, request_id: str) -> tuple[NodeCidr, bool]:
        """The CIDR allocated for `request_id` (an existing one when repeated), and whether it is new."""
        async with self._alloc_lock:
            mine = self.allocator.of(node)
            same = next((c for c in mine if c.request_id == request_id), None)
            if same is not None:
                return same, False
            revived = await self._revive(mine)
            if revived is not None:
                return revived, False
            active = [c for c in mine if c.state is NodeCidrState.ACTIVE]
            if len(active) >= self.settings.max_cidrs_per_node:
                raise CceError(ErrorReason.CIDR_POOL_EXHAUSTED,
                               f"node {node} holds {len(active)} CIDRs, its maximum", node=node)
            record = await self.allocator.allocate(node, request_id, utcnow(), avoid=self.routes.foreign)
        log.info("node CIDR allocated", node=node, cidr=str(record.cidr), request_id=request_id)
        await self.events.publish(EventKind.CIDR, "allocated", node=node, object=str(record.cidr),
                                  request_id=request_id, free_cidrs=self.allocator.free_count())
        self.kick()
        return record, True

    async def _revive(self, mine: list[NodeCidr]) -> NodeCidr | None:
        """A CIDR of the node on its way out is taken back rather than allocating a new one."""
        for cidr in reversed(mine):
            if cidr.state is NodeCidrState.RELEASING:
                revived = await self.allocator.set_state(cidr.cidr, NodeCidrState.ACTIVE, utcnow())
                if revived is not None:
                    self._retiring.discard(cidr.cidr)
                    await self.events.publish(EventKind.CIDR, "release-cancelled", node=cidr.node,
                                              object=str(cidr.cidr), message="the node needs it again")
                    return revived
        return None

    async def _allocation_failed(self, node: str, err: CceError) -> None:
        log.warning("no CIDR for node", node=node, reason=err.reason.value, error=err.message)
        await self.events.publish(EventKind.CIDR, "allocation-failed", node=node, reason=err.reason,
                                  message=err.message)

    # --- giving CIDRs back ------------------------------------------------------------------------------------

    async def _releases(self) -> None:
        now = utcnow()
        live = {n.name for n in self.views.route_nodes()}
        idle_now: set[IPv4Network] = set()
        for node in sorted(live):
            uses = cidr_uses(self.allocator.of(node), self.views.pool(node), now)
            for use in uses:
                if use.cidr.state is NodeCidrState.RELEASING:
                    await self._drive_release(use, now)
            if not self.settings.release_idle_cidrs:
                continue
            for cidr in idle_cidrs(uses, self.settings.release_free_threshold):
                idle_now.add(cidr.cidr)
                since = self._idle_since.setdefault(cidr.cidr, now)
                if is_due(since, now, self.settings.release_delay_s):
                    await self._mark(cidr, now)
        self._idle_since = {c: t for c, t in self._idle_since.items() if c in idle_now}

    async def _mark(self, cidr: NodeCidr, now: datetime) -> None:
        if await self.allocator.set_state(cidr.cidr, NodeCidrState.RELEASING, now) is not None:
            self._idle_since.pop(cidr.cidr, None)
            log.info("idle node CIDR marked for release", node=cidr.node, cidr=str(cidr.cidr))
            await self.events.publish(EventKind.CIDR, "release-marked", node=cidr.node, object=str(cidr.cidr))

    async def _drive_release(self, use: CidrUse, now: datetime) -> None:
        cidr = use.cidr
        if cidr.cidr in self._retiring:
            return
        claimed = use.used > 0
        if not claimed and is_due(cidr.state_since, now, self.settings.release_confirm_s):
            fresh = await self.pool_store.get(subject_token(cidr.node))  # not the cache: a claim may be ms old
            claimed = bool(fresh and ips_in(list(fresh.value.allocated), cidr.cidr))
            if not claimed:
                self._retiring.add(cidr.cidr)  # its rule goes in this round's sync, its record after that
                return
        if claimed and await self.allocator.set_state(cidr.cidr, NodeCidrState.ACTIVE, now) is not None:
            await self.events.publish(EventKind.CIDR, "release-cancelled", node=cidr.node, object=str(cidr.cidr),
                                      message="a pod took an address in it")

    async def _give_back(self, result: SyncResult) -> None:
        """CIDRs nobody should route to any more (node gone or leaving, or retired) go back to the pool once no
        rule of ours holds their destination."""
        wanted = {d.destination for d in result.diff.create} | set(result.diff.programmed) | {
            c.destination for c in result.diff.conflicts}
        for cidr in self.allocator.all():
            if cidr.cidr in wanted or result.ours_on(cidr.cidr, self.settings.cluster_id):
                continue
            if cidr.cidr in result.failed or self._is_live(cidr):
                continue
            if await self.allocator.release(cidr.cidr):
                self._retiring.discard(cidr.cidr)
                why = "retired: idle" if cidr.state is NodeCidrState.RELEASING else "node removed"
                log.info("node CIDR given back", node=cidr.node, cidr=str(cidr.cidr), why=why)
                await self.events.publish(EventKind.CIDR, "released", node=cidr.node, object=str(cidr.cidr),
                                          message=why)

    def _is_live(self, cidr: NodeCidr) -> bool:
        """Still wanted although not in this round's diff (allocated after the sync listed its desired rules)."""
        nrs = self.views.nrs(cidr.node)
        live = nrs is not None and not nrs.status.removing and nrs.spec.mode is NetworkMode.VPC_ROUTE
        return live and cidr.cidr not in self._retiring

    async def wait_round(self, timeout: float) -> None:
        """Until the next round ends (tests and benchmarks)."""
        done = self._round_done
        async with asyncio.timeout(timeout):
            await done.wait()


async def validate_vpc(api: VpcApi, settings: RouteManagerSettings, vpc_id: str) -> str:
    """Check the cluster blocks against the VPC and its subnets (ConfigError); returns the route table id."""
    vpc = await api.get_vpc(vpc_id)
    subnets = await api.list_subnets(vpc_id=vpc_id)
    check_against_vpc(settings.cluster_cidrs, IPv4Network(vpc.cidr, strict=False),
                      {s.subnet_id: IPv4Network(s.cidr, strict=False) for s in subnets})
    return settings.route_table_id or await api.get_route_table(vpc_id=vpc_id)

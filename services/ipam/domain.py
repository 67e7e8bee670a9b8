"""A node's pool of pod IPs in ENI secondary-IP mode, as plain data and functions (no I/O, no clock reads).

The IPs ipam may hand out on a node are the secondary IPs of the node's in-use secondary-IP ENIs (vpc-route: the
host addresses of the node's active CIDRs whose VPC route rule is programmed, less the router address), less those
claimed (`pool.allocated`), cooling down (`pool.cooldown`, until their time) or being released
(`pool.releasing`). Every change returns a new `NodePool`; the service writes it by compare-and-set, so two
replicas never give one IP to two pods. Decisions that touch more than one IP come back as plans.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address

from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import AllocateRequest
from schemas.records import (
    AllocationType,
    CceEndpoint,
    EndpointAddress,
    EndpointState,
    EniProvision,
    EniState,
    EniUse,
    NodeCapacity,
    NodePool,
    NodeStatus,
    PoolDemand,
    ReleaseMark,
    ReleaseState,
    ReleaseStrategy,
)
from services.ipam import exclusive_pool as xp
from services.ipam import spread
from services.ipam import watermarks as wm
from services.ipam.facts import LIVE_ENI_STATES as LIVE_ENI_STATES  # re-exported: callers know them from here
from services.ipam.facts import PROVISION_REASONS as PROVISION_REASONS
from services.ipam.facts import ROUTE_TABLE_BASE as ROUTE_TABLE_BASE
from services.ipam.facts import IpSlot as IpSlot
from services.ipam.facts import NodeFacts as NodeFacts

FIXED_MARKER_PREFIX = "fixed/"  # a pool claim held by a fixed IP's reservation while its pod is gone (fixed.py)


def _ip_order(ip: IPv4Address | str) -> int:
    return int(IPv4Address(str(ip)))


class PoolView:
    """The pool of a node at `now`: every usable IP sorted by ENI index then address, and its category."""

    def __init__(self, pool: NodePool, facts: NodeFacts, now: datetime) -> None:
        self.pool = pool
        self.facts = facts
        self.now = now
        if facts.is_route_mode:
            self.slots = facts.route_slots()
        else:
            self.slots = [IpSlot(ip, eni) for eni in facts.usable_enis for ip in sorted(eni.secondary_ips, key=int)
                          if spread.is_general_slot(facts, eni, ip)]  # not a spread's dedicated ENI or range
        self.free_slots: list[IpSlot] = []
        self.cooling = 0
        self.releasing_usable = 0
        for slot in self.slots:
            ip = str(slot.ip)
            if ip in pool.allocated:
                continue
            if ip in pool.releasing:
                self.releasing_usable += 1
            elif self.is_in_cooldown(ip):
                self.cooling += 1
            else:
                self.free_slots.append(slot)

    def is_in_cooldown(self, ip: str) -> bool:
        until = self.pool.cooldown.get(ip)
        return until is not None and until > self.now

    @property
    def used(self) -> int:
        """Claims on the ordinary pool (not those of spread-selected pods on dedicated ENIs or in ranges)."""
        facts = self.facts
        if facts.is_route_mode or not (facts.reserved or facts.spec.subnet_ids):
            return len(self.pool.allocated)
        return sum(1 for ip in self.pool.allocated
                   if spread.is_general_slot(facts, facts.eni_holding(ip), IPv4Address(ip)))

    @property
    def free(self) -> int:
        return len(self.free_slots)

    @property
    def pending(self) -> int:
        holders = set(self.pool.allocated.values())
        return wm.pending_surge(len(self.pool.waiting), sum(1 for key in self.pool.waiting if key in holders))

    @property
    def available(self) -> int:
        """Usable IPs that are not on their way out."""
        return len(self.slots) - self.releasing_usable

    def refill_batch(self) -> int:
        """Refills come in whole batches when the pool looks ahead (burstable pools fill whole ENIs anyway)."""
        settings = self.facts.settings
        return wm.LOOKAHEAD_BATCH if settings.lookahead_s > 0 and not settings.burstable else 0

    @property
    def ahead(self) -> int:
        """The look-ahead: about as many IPs as pods took in the last `lookahead_s`."""
        settings = self.facts.settings
        return wm.lookahead(recent_allocations(self.pool, self.now, settings.lookahead_s), settings)

    def next_cooldown_end(self) -> datetime | None:
        ends = [until for ip, until in self.pool.cooldown.items() if until > self.now and ip not in self.pool.allocated]
        return min(ends, default=None)

    def target(self) -> int:
        settings, upper = self.facts.settings, self.facts.max_allocate
        if self.facts.spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
            return 0  # pods take whole ENIs: no secondary IPs
        target = wm.target_ips(self.used, self.pending, settings, upper, cooling=self.cooling, ahead=self.ahead)
        if not settings.burstable:
            return target
        quota = self.facts.quota
        capacities = [max(0, (e.ip_quota or quota.ips_per_eni) - 1)
                      for e in self.facts.secondary_enis if e.state in LIVE_ENI_STATES]
        return min(upper, wm.burstable_target(target, capacities, quota.secondaries_per_eni))

    def excess(self) -> int:
        settings = self.facts.settings
        keep = wm.keep_ips(self.target(), self.used, self.cooling, self.pending, settings)
        return wm.excess_ips(self.available, self.free, keep, settings)

    @property
    def enis(self) -> xp.EniView:
        """The node's exclusive ENIs."""
        return xp.EniView(self.pool, self.facts, self.now)

    def demand(self, removing: bool = False) -> PoolDemand:
        enis = self.enis
        return PoolDemand(target_ips=0 if removing else self.target(), used=self.used, pending=self.pending,
                          free=self.free, cooling=self.cooling, releasing=len(self.pool.releasing),
                          computed_at=self.now, target_enis=0 if removing else enis.target(), enis_used=enis.used,
                          enis_pending=enis.pending, enis_free=len(enis.free), refill_batch=self.refill_batch(),
                          subnets={} if removing or self.facts.is_route_mode else spread.subnet_demand(self.pool,
                                                                                                        self.facts))


# ---- claims -----------------------------------------------------------------------------------------------------


def same_pool(a: NodePool, b: NodePool) -> bool:
    """Equal but for the times a write stamps on it (b compared with a's stamps: shallow copies, field by field,
    no dump of either)."""
    if a is b:
        return True
    stamped = b.model_copy(update={"updated_at": a.updated_at,
                                   "demand": b.demand.model_copy(update={"computed_at": a.demand.computed_at})})
    return a == stamped


def refresh_demand(pool: NodePool, facts: NodeFacts, now: datetime, removing: bool = False, *,
                   owned: bool = False) -> NodePool:
    """The pool with its demand computed as of `now`; `owned`: the caller's private copy, updated in place."""
    new = pool if owned else pool.model_copy(deep=True)
    new.demand = PoolView(new, facts, now).demand(removing)
    new.updated_at = now
    return new


def recent_allocations(pool: NodePool, now: datetime, window_s: float) -> float:
    """The pool's decaying count of allocations (those of about the last `window_s`), as of `now`."""
    if pool.recent_at is None:
        return 0.0
    return wm.decayed(pool.recent_allocations, (now - pool.recent_at).total_seconds(), window_s)


def pick_ip(view: PoolView) -> IpSlot | None:
    """The first free IP: lowest ENI index, then lowest address."""
    return view.free_slots[0] if view.free_slots else None


def held_slot(pool: NodePool, facts: NodeFacts, key: str) -> IpSlot | None:
    """The IP `key` already holds, if it is still on one of the node's ENIs."""
    for ip, holder in sorted(pool.allocated.items(), key=lambda kv: _ip_order(kv[0])):
        slot = facts.slot_of(ip) if holder == key else None
        if slot is not None:
            return slot
    return None


def allocate_ip(pool: NodePool, facts: NodeFacts, key: str, now: datetime) -> tuple[NodePool, IpSlot] | None:
    """Give `key` a free IP (or the one it holds). None when the pool has none free."""
    held = held_slot(pool, facts, key)
    if held is not None:
        return pool, held
    slot = pick_ip(PoolView(pool, facts, now))
    if slot is None:
        return None
    new = pool.model_copy(deep=True)
    for stale in [ip for ip, holder in new.allocated.items() if holder == key]:  # its IP left the node
        del new.allocated[stale]
    new.allocated[str(slot.ip)] = key
    new.cooldown.pop(str(slot.ip), None)
    new.waiting.pop(key, None)
    new.recent_allocations = recent_allocations(pool, now, facts.settings.lookahead_s) + 1
    new.recent_at = now
    return refresh_demand(new, facts, now, owned=True), slot


@dataclass(frozen=True)
class Claim:
    """The outcome of one attempt to claim an IP for `key`: the pool to write and the IP, if any."""

    pool: NodePool
    changed: bool
    slot: IpSlot | None = None
    reused: bool = False
    at_max: bool = False
    cancelled: bool = False
    next_cooldown_end: datetime | None = None
    at_capacity: bool = False  # exclusive: every ENI the quota allows is held; waiting would not help


def is_at_max_pods(used: int, upper: int) -> bool:
    return used >= upper


def claim_ip(pool: NodePool, facts: NodeFacts, key: str, now: datetime, wait: bool, resume: bool = False) -> Claim:
    """Allocate for `key`; when nothing is free and the caller will wait, record it in `waiting` so the demand
    counts it (the pending surge). A caller resuming a wait whose entry is gone while its key holds nothing was
    overtaken by a release of that key: it is cancelled rather than claiming an IP nobody will free."""
    held = held_slot(pool, facts, key)
    if held is not None:
        new = drop_waiting(pool, facts, key, now)
        return Claim(new, not same_pool(pool, new), held, reused=True)
    if resume and key not in pool.waiting:
        return Claim(pool, False, cancelled=True)
    if is_at_max_pods(len(pool.allocated), facts.max_allocate):
        new = drop_waiting(pool, facts, key, now)
        return Claim(new, not same_pool(pool, new), at_max=True)
    allocated = allocate_ip(pool, facts, key, now)
    if allocated is not None:
        return Claim(allocated[0], True, allocated[1])
    new = pool.model_copy(deep=True)
    if wait:
        new.waiting.setdefault(key, now)
    new = refresh_demand(new, facts, now, owned=True)
    return Claim(new, not same_pool(pool, new), next_cooldown_end=PoolView(new, facts, now).next_cooldown_end())


def drop_waiting(pool: NodePool, facts: NodeFacts, key: str, now: datetime) -> NodePool:
    """`key` waits no more, for an IP or for an exclusive ENI."""
    if key not in pool.waiting and key not in pool.exclusive_waiting:
        return pool
    new = pool.model_copy(deep=True)
    new.waiting.pop(key, None)
    new.exclusive_waiting.pop(key, None)
    return refresh_demand(new, facts, now, owned=True)


def release_ip(pool: NodePool, key: str, cooldown_s: float, now: datetime,
               eni_cooldown_s: float = 0.0) -> tuple[NodePool, list[IPv4Address]]:
    """Free every IP `key` holds (each cools down before anyone gets it again) and every exclusive ENI it holds
    (cooling down for `eni_cooldown_s`). Idempotent; returns the freed IPs."""
    pool, _enis = xp.release_enis(pool, key, eni_cooldown_s, now)
    ips = sorted((ip for ip, holder in pool.allocated.items() if holder == key), key=_ip_order)
    if not ips and key not in pool.waiting:
        return pool, []
    new = pool.model_copy(deep=True)
    until = now + timedelta(seconds=cooldown_s)
    for ip in ips:
        del new.allocated[ip]
        new.cooldown[ip] = until
    new.waiting.pop(key, None)
    new.updated_at = now
    return new, [IPv4Address(ip) for ip in ips]


# ---- endpoints -------------------------------------------------------------------------------------------------


def new_endpoint(req: AllocateRequest, mode: NetworkMode, slot: IpSlot, now: datetime, ttl_s: float,
                 router_ip: IPv4Address | None = None) -> CceEndpoint:
    eni = slot.eni
    if eni is not None and eni.use is EniUse.EXCLUSIVE:  # the whole ENI: its primary IP with the subnet's mask
        address = EndpointAddress(ip=slot.ip, prefix_len=eni.subnet_cidr.prefixlen, gateway=eni.gateway,
                                  subnet_cidr=eni.subnet_cidr, eni_id=eni.eni_id, subnet_id=eni.subnet_id,
                                  mac=eni.mac)
    elif eni is None:  # vpc-route: the node's router address is the gateway; no ENI, no per-ENI table
        assert router_ip is not None and slot.cidr is not None
        address = EndpointAddress(ip=slot.ip, prefix_len=32, gateway=router_ip, subnet_cidr=slot.cidr)
    else:
        table = ROUTE_TABLE_BASE + eni.index if eni.use is EniUse.SECONDARY_IPS else None  # primary NIC: main
        address = EndpointAddress(ip=slot.ip, prefix_len=32, gateway=eni.gateway, subnet_cidr=eni.subnet_cidr,
                                  eni_id=eni.eni_id, subnet_id=eni.subnet_id, route_table=table)
    return CceEndpoint(node=req.node, container_id=req.container_id, ifname=req.ifname, namespace=req.pod.namespace,
                       pod=req.pod.name, pod_uid=req.pod.uid, mode=mode, state=EndpointState.ALLOCATED,
                       addresses=[address], netns=req.netns, created_at=now,
                       expires_at=now + timedelta(seconds=ttl_s), updated_at=now, bandwidth=req.bandwidth,
                       **fixed_fields(req))


def fixed_fields(req: AllocateRequest) -> dict[str, object]:
    """An endpoint's allocation type and release strategy (Fixed: from the pod's fixed IP request)."""
    ask = req.fixed_ip
    if ask is None:
        return {}
    ttl = ask.ttl_s if ask.release_strategy is ReleaseStrategy.TTL else None
    return {"allocation_type": AllocationType.FIXED, "release_strategy": ask.release_strategy, "release_ttl_s": ttl}


def confirm_endpoint(endpoint: CceEndpoint, host_veth: str, now: datetime) -> CceEndpoint:
    new = endpoint.model_copy(deep=True)
    new.state = EndpointState.READY
    new.expires_at = None
    new.host_veth = host_veth or endpoint.host_veth
    new.updated_at = now
    return new


def expired_endpoints(endpoints: Mapping[str, CceEndpoint], now: datetime) -> list[str]:
    """Unconfirmed allocations past their deadline."""
    return sorted(key for key, ep in endpoints.items()
                  if ep.state is EndpointState.ALLOCATED and ep.expires_at is not None and ep.expires_at <= now)


def orphan_claims(pool: NodePool, endpoint_keys: Collection[str]) -> dict[str, str]:
    """Claims (IP or exclusive ENI id -> key) whose endpoint does not exist: a write lost between the claim and the
    endpoint, or an endpoint that vanished while its pod held the claim."""
    claims = {**pool.allocated, **pool.exclusive}
    return {held: key for held, key in claims.items()
            if key not in endpoint_keys and not key.startswith(FIXED_MARKER_PREFIX)}  # a fixed IP's pod is away


def holds(pool: NodePool, key: str, endpoint: CceEndpoint) -> bool:
    """Whether `key` holds one of the endpoint's addresses (its IP, or its whole ENI)."""
    return any(pool.allocated.get(str(a.ip)) == key or (a.eni_id is not None and pool.exclusive.get(a.eni_id) == key)
               for a in endpoint.addresses)


def stray_endpoints(endpoints: Mapping[str, CceEndpoint], pool: NodePool) -> list[str]:
    """Endpoints whose IP (or ENI) their key does not hold in the pool (a release that lost its last write)."""
    return sorted(key for key, ep in endpoints.items() if not holds(pool, key, ep))


# ---- failures and status ---------------------------------------------------------------------------------------


def failure(node: str, provision: EniProvision | None, used: int, upper: int, waited_s: float) -> CceError:
    """Why an allocation got no IP, with the coded reason a user can look up."""
    if is_at_max_pods(used, upper):
        return CceError(ErrorReason.IP_POOL_EXHAUSTED,
                        f"node {node} is at its max pods ({upper} IPs in use)", node=node, used=used, max_pods=upper)
    if provision is not None and provision.creating_eni:
        return CceError(ErrorReason.WAIT_CREATE_MORE_ENI,
                        f"no free IP on node {node} after {waited_s:g}s; a new ENI is being created", node=node)
    if provision is not None and provision.last_error in PROVISION_REASONS:
        reason = provision.last_error
        assert reason is not None
        detail = f": {provision.message}" if provision.message else ""
        return CceError(reason, f"no free IP on node {node} after {waited_s:g}s; provisioning failed{detail}",
                        node=node)
    return CceError(ErrorReason.IP_POOL_EXHAUSTED, f"no free IP on node {node} after {waited_s:g}s", node=node,
                    used=used)


# A provisioning failure that means the node cannot obtain more addresses or ENIs for now (the subnet is full, the
# quota reached): what it has is all it can hold.
GROWTH_BLOCKERS = frozenset({ErrorReason.SUBNET_NO_MORE_IP, ErrorReason.ENI_CAPACITY_EXCEED,
                             ErrorReason.NO_AVAILABLE_SUBNET})


def can_grow(facts: NodeFacts) -> bool:
    return facts.provision is None or facts.provision.last_error not in GROWTH_BLOCKERS


def pod_enis(view: PoolView) -> int:
    """Exclusive ENIs the node can give pods in all (held ones included): 0 on a node that allows none."""
    if not xp.allows_exclusive(view.facts.spec):
        return 0
    enis = view.enis
    have = enis.used + len(enis.free) + len(enis.cooling) + len(enis.coming)
    creatable = max(0, view.facts.quota.max_enis - enis.node_enis()) if can_grow(view.facts) else 0
    return min(view.facts.max_allocate, have + creatable)


def pod_ips(view: PoolView, attachable: int) -> int:
    """Pods the node can hold by address in all (those running included): what its ENIs carry and not being
    released, plus what it can still obtain; exclusive mode: its exclusive ENIs."""
    if view.facts.spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
        return pod_enis(view)
    growth = attachable if can_grow(view.facts) else 0
    return min(view.facts.max_allocate, view.available + growth)


def node_capacity(view: PoolView) -> NodeCapacity:
    quota = view.facts.quota
    if view.facts.spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
        attachable = 0
    else:
        current = sum(len(e.secondary_ips) for e in view.facts.secondary_enis if e.state in LIVE_ENI_STATES)
        attachable = max(0, quota.max_secondaries - current)
    return NodeCapacity(free_ips=view.free, used_ips=view.used, attachable_ips=attachable,
                        free_enis=len(view.enis.free), max_enis=quota.max_enis, ips_per_eni=quota.ips_per_eni,
                        pod_ips=pod_ips(view, attachable), pod_enis=pod_enis(view))


def is_ready(view: PoolView) -> bool:
    """Usable once it has its first IPs: min(min_allocate, max_allocate) of them, or an in-use ENI (exclusive
    mode: an exclusive ENI in use, held or free)."""
    if view.facts.spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE:
        return any(e.state is EniState.INUSE for e in view.enis.enis)
    wanted = min(view.facts.settings.min_allocate, view.facts.max_allocate)
    return len(view.slots) >= wanted or bool(view.facts.usable_enis)


def node_status(status: NodeStatus, view: PoolView) -> NodeStatus | None:
    """The status with the pool's readiness, ENIs (pool ENIs, then exclusive ones) and capacity; None when nothing
    changed."""
    pool_enis = [*view.facts.secondary_enis, *xp.exclusive_enis(view.facts)]
    enis = [e.eni_id for e in pool_enis if e.state is not EniState.DELETED]
    ready, capacity = is_ready(view), node_capacity(view)
    if status.ready == ready and status.enis == enis and status.capacity == capacity:
        return None
    new = status.model_copy(deep=True)
    new.ready, new.enis, new.capacity, new.updated_at = ready, enis, capacity, view.now
    return new


# ---- release handshake and upkeep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasePlan:
    """Excess IPs to mark (IP -> ENI id), marks to cancel, marks to confirm, entries to drop (IP gone)."""

    mark: dict[str, str] = field(default_factory=dict)
    unmark: list[str] = field(default_factory=list)
    confirm: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.mark or self.unmark or self.confirm or self.drop)


def choose_excess(view: PoolView, count: int) -> dict[str, str]:
    """`count` free IPs, from the ENIs with the fewest used IPs first (highest addresses first)."""
    used_on: dict[str, int] = {}
    for ip in view.pool.allocated:
        eni = view.facts.eni_holding(ip)
        if eni is not None:
            used_on[eni.eni_id] = used_on.get(eni.eni_id, 0) + 1
    slots = [s for s in view.free_slots if s.eni is not None]
    ranked = sorted(slots, key=lambda s: (used_on.get(s.origin, 0), -(s.eni.index if s.eni else 0), -int(s.ip)))
    return {str(s.ip): s.origin for s in ranked[:count]}


def plan_release(view: PoolView) -> ReleasePlan:
    pool, facts, settings = view.pool, view.facts, view.facts.settings
    drop = sorted((ip for ip in pool.releasing if facts.eni_holding(ip) is None), key=_ip_order)
    marked = sorted((ip for ip, m in pool.releasing.items() if m.state is ReleaseState.MARKED and ip not in drop),
                    key=lambda ip: (pool.releasing[ip].marked_at, _ip_order(ip)))
    short = wm.shortfall(view.free, view.pending, settings)
    unmark = marked if not settings.release_excess else marked[len(marked) - min(short, len(marked)):]
    delay = timedelta(seconds=settings.release_delay_s)
    confirm = [ip for ip in marked if ip not in unmark and ip not in pool.allocated
               and pool.releasing[ip].marked_at + delay <= view.now]
    mark = choose_excess(view, view.excess()) if not unmark and not short else {}
    return ReleasePlan(mark=mark, unmark=unmark, confirm=confirm, drop=drop)


def apply_release(pool: NodePool, plan: ReleasePlan, now: datetime) -> NodePool:
    if plan.is_empty:
        return pool
    new = pool.model_copy(deep=True)
    for ip in (*plan.drop, *plan.unmark):
        new.releasing.pop(ip, None)
    for ip in plan.confirm:
        new.releasing[ip].state = ReleaseState.CONFIRMED
    for ip, eni_id in plan.mark.items():
        new.releasing[ip] = ReleaseMark(eni_id=eni_id, state=ReleaseState.MARKED, marked_at=now)
    return new


@dataclass(frozen=True)
class Upkeep:
    """What one maintenance pass did to a pool."""

    pool: NodePool
    changed: bool
    release: ReleasePlan
    cooled: list[str]
    stale_waiting: list[str]
    surplus_enis: list[str] = field(default_factory=list)  # exclusive ENIs marked surplus by this pass


def maintain_pool(pool: NodePool, facts: NodeFacts, now: datetime, waiting_ttl_s: float,
                  removing: bool = False) -> Upkeep:
    """Prune finished cooldowns and stale waiting entries, drive the release handshake, recompute the demand."""
    new = pool.model_copy(deep=True)
    cooled = sorted((ip for ip, until in pool.cooldown.items() if until <= now or facts.slot_of(ip) is None),
                    key=_ip_order)
    for ip in cooled:
        del new.cooldown[ip]
    stale = sorted(k for k, since in pool.waiting.items() if since + timedelta(seconds=waiting_ttl_s) <= now)
    for key in stale:
        del new.waiting[key]
    for key in spread.stale_waits(pool, now, waiting_ttl_s):
        del new.subnet_waiting[key]
    xp.prune(new, facts, now, waiting_ttl_s)
    surplus = [] if removing else xp.mark_surplus(new, facts, now)
    # vpc-route: no IP-level release handshake; idle CIDRs go back through route_manager
    plan = ReleasePlan() if removing or facts.is_route_mode else plan_release(PoolView(new, facts, now))
    new = refresh_demand(apply_release(new, plan, now), facts, now, removing, owned=True)
    return Upkeep(new, not same_pool(pool, new), plan, cooled, stale, surplus)

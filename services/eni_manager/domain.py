"""eni_manager's decisions, as pure functions: quotas, names, subnet choice, node-local ENI indexes, stuck ENIs,
adoption, and `plan_node` / `plan_removal`, which turn a node's records into a `NodePlan` of cloud actions.

No asyncio, NATS, cloud calls or clock reads here: `now` is passed in, and plans are plain data that the
executor carries out (and tests assert on).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from schemas.errors import ErrorReason
from schemas.quotas import ips_per_eni_by_memory, max_enis_by_cpus
from schemas.records import Eni, EniState, EniUse, NetResourceSet, NodePool, NodeSpec, ReleaseState, Subnet

BATCH = 10  # IPs per add/remove call (the cloud's limit)
PENDING_STATES = (EniState.AVAILABLE, EniState.ATTACHING)
COUNTED_STATES = (EniState.INUSE, EniState.ATTACHING)  # their secondaries count toward the node's current IPs
MIN_FREE_FOR_NEW_ENI = 2  # a new ENI takes its primary IP and needs room for at least one pod IP

# ---------------------------------------------------------------------------------------------------------------
# Quotas.


@dataclass(frozen=True)
class Quota:
    max_enis: int  # ENIs besides the primary NIC
    ips_per_eni: int  # IPs per ENI, its primary included

    @property
    def secondaries_per_eni(self) -> int:
        return max(self.ips_per_eni - 1, 0)


def node_quota(spec: NodeSpec, eni_quota: int | None) -> Quota:
    """The node's overrides win; else the instance's ENI quota (when the cloud told us one); else min(cpus, 8)."""
    if spec.max_enis is not None:
        max_enis = spec.max_enis
    elif eni_quota:
        max_enis = eni_quota
    else:
        max_enis = max_enis_by_cpus(spec.cpus)
    ips = spec.ips_per_eni if spec.ips_per_eni is not None else ips_per_eni_by_memory(spec.memory_mib)
    return Quota(max_enis, ips)


# ---------------------------------------------------------------------------------------------------------------
# Names: `cce-{cluster_id}-{node}-{index}` marks an ENI as ours and says for which node and slot.


@dataclass(frozen=True)
class EniName:
    node: str
    index: int


def name_prefix(cluster_id: str) -> str:
    return f"cce-{cluster_id}-"


def eni_name(cluster_id: str, node: str, index: int) -> str:
    return f"{name_prefix(cluster_id)}{node}-{index}"


def eni_description(cluster_id: str, node: str, use: EniUse = EniUse.SECONDARY_IPS) -> str:
    """Says whose the ENI is and, for an exclusive ENI, its use (so adoption restores it)."""
    base = f"cce-network cluster={cluster_id} node={node}"
    return base if use is EniUse.SECONDARY_IPS else f"{base} use={use.value}"


def use_of_description(description: str) -> EniUse:
    return EniUse.EXCLUSIVE if f"use={EniUse.EXCLUSIVE.value}" in description.split() else EniUse.SECONDARY_IPS


def is_ours(cluster_id: str, name: str) -> bool:
    return name.startswith(name_prefix(cluster_id))


def parse_eni_name(cluster_id: str, name: str) -> EniName | None:
    """The node and index an ENI name of ours carries; None for anything else."""
    if not is_ours(cluster_id, name):
        return None
    node, sep, index = name[len(name_prefix(cluster_id)):].rpartition("-")
    if not sep or not node or not index.isdigit() or int(index) < 1:
        return None
    return EniName(node, int(index))


# ---------------------------------------------------------------------------------------------------------------
# Node-local indexes (cce-eni-N, route table 127+N).


def lowest_free_index(used: Iterable[int]) -> int:
    taken = set(used)
    index = 1
    while index in taken:
        index += 1
    return index


def index_for_adopted(wanted: int | None, used: Iterable[int]) -> int:
    """An adopted ENI keeps the index its name carries unless another ENI of the node holds it."""
    taken = set(used)
    if wanted is not None and wanted >= 1 and wanted not in taken:
        return wanted
    return lowest_free_index(taken)


# ---------------------------------------------------------------------------------------------------------------
# Subnets.


@dataclass(frozen=True)
class PlanError:
    reason: ErrorReason
    message: str


def candidate_subnets(spec: NodeSpec, subnets: Mapping[str, Subnet]) -> list[Subnet]:
    """The node's own subnet list if set, else every mirrored subnet of its zone; never an excluded one."""
    named = [subnets[s] for s in spec.subnet_ids if s in subnets]
    pool = named if spec.subnet_ids else list(subnets.values())
    return [s for s in pool if s.zone == spec.zone and not s.excluded]


def choose_subnet(spec: NodeSpec, subnets: Mapping[str, Subnet]) -> Subnet | PlanError:
    """The candidate with the most free IPs (ties: lowest id), or why there is none."""
    candidates = candidate_subnets(spec, subnets)
    if not candidates:
        where = f"subnets {', '.join(spec.subnet_ids)}" if spec.subnet_ids else f"zone {spec.zone}"
        return PlanError(ErrorReason.NO_AVAILABLE_SUBNET, f"no usable subnet in {where}")
    roomy = [s for s in candidates if s.available_ips >= MIN_FREE_FOR_NEW_ENI]
    if not roomy:
        names = ", ".join(f"{s.subnet_id} ({s.available_ips} free)" for s in candidates)
        return PlanError(ErrorReason.SUBNET_NO_MORE_IP, f"no free IPs left in {names}")
    return min(roomy, key=lambda s: (-s.available_ips, s.subnet_id))


# ---------------------------------------------------------------------------------------------------------------
# Stuck ENIs and adoption.


def is_stuck(eni: Eni, now: datetime, stuck_after_s: float) -> bool:
    """Available or attaching for longer than `stuck_after_s`: the creation or attachment never finished."""
    return eni.state in PENDING_STATES and (now - eni.state_since).total_seconds() > stuck_after_s


def adoption_owner(cluster_id: str, name: str, known: bool, nodes: Collection[str]) -> EniName | None:
    """An ENI named ours that no record knows and whose node exists belongs to that node (by its name)."""
    if known:
        return None
    parsed = parse_eni_name(cluster_id, name)
    if parsed is None or parsed.node not in nodes:
        return None
    return parsed


# ---------------------------------------------------------------------------------------------------------------
# Plans.


@dataclass(frozen=True)
class AddIps:
    eni_id: str
    count: int
    ips: tuple[str, ...] = ()  # these named IPs (a PodSubnetTopologySpread's range), else `count` the cloud picks


@dataclass(frozen=True)
class RemoveIps:
    eni_id: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class CreateEni:
    subnet_id: str
    index: int
    name: str
    description: str
    security_group_ids: tuple[str, ...] = ()
    use: EniUse = EniUse.SECONDARY_IPS


@dataclass(frozen=True)
class AttachEni:
    eni_id: str


@dataclass(frozen=True)
class AwaitAttach:
    eni_id: str


@dataclass(frozen=True)
class DeleteEni:
    """Detach first when attached, then delete, then drop the record."""

    eni_id: str
    why: str


@dataclass(frozen=True)
class DropProvision:
    """Every ENI of a removed node is gone: its EniProvision record goes too."""


@dataclass(frozen=True)
class SyncPrimaryNic:
    """vpc-eni-primary: read the instance and write the record of its primary NIC."""


@dataclass(frozen=True)
class AddPrimaryIps:
    count: int


@dataclass(frozen=True)
class RemovePrimaryIps:
    ips: tuple[str, ...]


@dataclass(frozen=True)
class DropPrimaryNic:
    """A removed vpc-eni-primary node: every secondary IP leaves the primary NIC, then its record goes."""

    ips: tuple[str, ...]


Action = (AddIps | RemoveIps | CreateEni | AttachEni | AwaitAttach | DeleteEni | DropProvision | SyncPrimaryNic
          | AddPrimaryIps | RemovePrimaryIps | DropPrimaryNic)


@dataclass(frozen=True)
class NodePlan:
    node: str
    actions: tuple[Action, ...] = ()
    error: PlanError | None = None
    waiting: str = ""  # why nothing more is planned now, if something is pending

    @property
    def is_idle(self) -> bool:
        return not self.actions


@dataclass(frozen=True)
class PlanSettings:
    cluster_id: str = "cce-local"
    stuck_after_s: float = 300.0
    removal_grace_s: float = 5.0
    pre_allocate_enis: int = 0
    enis_in_flight: int = 4  # new ENIs a node may have created and attaching at once


@dataclass
class _Growth:
    """Bookkeeping while planning adds: what is still needed and what each subnet has left."""

    needed: int
    batch: int = 0  # ipam's refill batch: what the adds are rounded up to
    headroom: int = 0  # what a refill may round up to: the IPs the node may still take (its cap less what it has)
    subnet_left: dict[str, int] = field(default_factory=dict)
    blocked_by_subnet: bool = False


def confirmed_releases(pool: NodePool | None) -> set[str]:
    if pool is None:
        return set()
    return {ip for ip, mark in pool.releasing.items() if mark.state is ReleaseState.CONFIRMED}


def current_ips(enis: Sequence[Eni], pool: NodePool | None) -> int:
    """Secondaries on ENIs in use or being attached, minus those confirmed for release."""
    gone = confirmed_releases(pool)
    return sum(1 for e in enis if e.state in COUNTED_STATES for ip in e.secondary_ips if str(ip) not in gone)


def release_actions(enis: Sequence[Eni], pool: NodePool | None) -> list[RemoveIps]:
    """Confirmed releases on the ENI that holds them, in batches; never a primary, never an unconfirmed IP."""
    gone = confirmed_releases(pool)
    actions: list[RemoveIps] = []
    for eni in sorted(enis, key=lambda e: e.eni_id):
        ips = sorted((str(ip) for ip in eni.secondary_ips if str(ip) in gone), key=_ip_order)
        actions += [RemoveIps(eni.eni_id, tuple(ips[i:i + BATCH])) for i in range(0, len(ips), BATCH)]
    return actions


def max_pool_ips(spec: NodeSpec) -> int:
    """The cap on a node's pod IPs: its pool's max_allocate, else its max pods."""
    return spec.pool.max_allocate if spec.pool.max_allocate is not None else spec.max_pods


def _ip_order(ip: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ip.split("."))


def _room(eni: Eni, quota: Quota, gone: set[str]) -> int:
    held = sum(1 for p in eni.private_ips if p.primary or str(p.ip) not in gone)
    return max((eni.ip_quota or quota.ips_per_eni) - held, 0)


def batched(needed: int, batch: int, headroom: int) -> int:
    """What to add for `needed` IPs: whole batches when ipam asks for them (a call costs the same for 1 IP or
    BATCH), never above `headroom` (what the node may still take in all)."""
    if needed <= 0 or batch <= 0:
        return max(needed, 0)
    batch = min(batch, BATCH)
    return max(needed, min(-(-needed // batch) * batch, headroom))


def _add_actions(enis: Sequence[Eni], quota: Quota, pool: NodePool | None, subnets: Mapping[str, Subnet],
                 growth: _Growth, burstable: bool) -> list[AddIps]:
    """Fill in-use ENIs with room, the fullest first (ties: lowest index), in batches of at most BATCH (what is
    still needed rounded up to ipam's refill batch: the next pods' IPs come at no extra call)."""
    gone = confirmed_releases(pool)
    actions: list[AddIps] = []
    inuse = [e for e in enis if e.state is EniState.INUSE]
    for eni in sorted(inuse, key=lambda e: (-len(e.secondary_ips), e.index, e.eni_id)):
        room = _room(eni, quota, gone)
        if growth.needed <= 0 or room <= 0:
            continue
        left = growth.subnet_left.setdefault(eni.subnet_id, _subnet_free(subnets, eni.subnet_id))
        count = min(room if burstable else min(room, batched(growth.needed, growth.batch, growth.headroom)), left)
        if count <= 0:
            growth.blocked_by_subnet = True
            continue
        growth.subnet_left[eni.subnet_id] = left - count
        growth.needed -= count
        actions += [AddIps(eni.eni_id, min(BATCH, count - i)) for i in range(0, count, BATCH)]
    return actions


def _subnet_free(subnets: Mapping[str, Subnet], subnet_id: str) -> int:
    subnet = subnets.get(subnet_id)
    return subnet.available_ips if subnet is not None else 1 << 30  # unknown: let the cloud decide


def _creation(nrs: NetResourceSet, enis: Sequence[Eni], quota: Quota, subnets: Mapping[str, Subnet],
              settings: PlanSettings, other_enis: int, indexes: Iterable[int] = (),
              use: EniUse = EniUse.SECONDARY_IPS) -> CreateEni | PlanError:
    """A new ENI of `use` for the node, or why not; `other_enis` count against the quota, `indexes` are taken."""
    if len(enis) + other_enis >= quota.max_enis:
        return PlanError(ErrorReason.ENI_CAPACITY_EXCEED,
                         f"node {nrs.name} has {len(enis) + other_enis} of {quota.max_enis} ENIs and they are full")
    subnet = choose_subnet(nrs.spec, subnets)
    if isinstance(subnet, PlanError):
        return subnet
    index = lowest_free_index([*indexes, *(e.index for e in enis)])
    return CreateEni(subnet.subnet_id, index, eni_name(settings.cluster_id, nrs.name, index),
                     eni_description(settings.cluster_id, nrs.name, use), tuple(nrs.spec.security_group_ids), use)


def _creations(nrs: NetResourceSet, enis: Sequence[Eni], quota: Quota, subnets: Mapping[str, Subnet],
                settings: PlanSettings, other_enis: int, indexes: Sequence[int], shares: Sequence[int],
                use: EniUse = EniUse.SECONDARY_IPS) -> tuple[list[CreateEni], PlanError | None]:
    """One new ENI per entry of `shares` (the secondaries it is to hold), each from the subnet with most room once
    the earlier ones' primaries and shares are counted; up to the first refusal, which is returned with them."""
    left = dict(subnets)
    creates: list[CreateEni] = []
    for share in shares:
        created = _creation(nrs, enis, quota, left, settings, other_enis + len(creates),
                            [*indexes, *(c.index for c in creates)], use)
        if isinstance(created, PlanError):
            return creates, created
        creates.append(created)
        chosen = left[created.subnet_id]
        left[created.subnet_id] = chosen.model_copy(
            update={"available_ips": max(chosen.available_ips - 1 - share, 0)})
    return creates, None


def plan_node(nrs: NetResourceSet, enis: Sequence[Eni], pool: NodePool | None, quota: Quota,
              subnets: Mapping[str, Subnet], settings: PlanSettings, now: datetime, *,
              other_enis: int = 0) -> NodePlan:
    """What to do for a live node: releases, adds to ENIs with room, finishing or collecting pending ENIs, and the
    new ENIs the rest of the need asks for (at most `enis_in_flight` being attached at once). `enis` are the node's
    records; `other_enis` counts attached ENIs that are not ours."""
    mine = [e for e in enis if e.use is EniUse.SECONDARY_IPS and not is_dedicated(nrs.spec, e.subnet_id)]
    stuck = [e for e in mine if is_stuck(e, now, settings.stuck_after_s)]
    stuck_ids = {e.eni_id for e in stuck}
    live = [e for e in mine if e.eni_id not in stuck_ids]
    pending = [e for e in live if e.state in PENDING_STATES]
    target = pool.demand.target_ips if pool is not None else 0
    current = current_ips(live, pool)
    # a refill is rounded up to ipam's batch, except on a node giving IPs back: it gets only what it needs
    batch = pool.demand.refill_batch if pool is not None and not pool.releasing else 0
    growth = _Growth(needed=target - current, batch=batch, headroom=max_pool_ips(nrs.spec) - current)
    actions: list[Action] = [*release_actions(mine, pool)]
    actions += _add_actions(live, quota, pool, subnets, growth, nrs.spec.pool.burstable)
    actions += [DeleteEni(e.eni_id, "stuck") for e in stuck]
    actions += [AttachEni(e.eni_id) if e.state is EniState.AVAILABLE else AwaitAttach(e.eni_id) for e in pending]
    short = max(min(settings.pre_allocate_enis, quota.max_enis) - len(live), 0)  # pre-allocated ENIs missing
    if growth.needed <= 0 and not short:
        return NodePlan(nrs.name, tuple(actions))
    # what the ENIs being attached will hold counts; what is needed beyond it is asked of new ENIs side by side (the
    # cloud attaches them in parallel: a node short of several ENIs waits for about one attach, not one per ENI)
    beyond = growth.needed - sum(_room(e, quota, set()) for e in pending)
    per_eni = max(quota.secondaries_per_eni, 1)
    wanted = min(max(-(-beyond // per_eni), short), settings.enis_in_flight - len(pending))
    if wanted <= 0:
        return NodePlan(nrs.name, tuple(actions), waiting="an ENI is being attached")
    left = {k: s.model_copy(update={"available_ips": max(growth.subnet_left[k], 0)}) if k in growth.subnet_left
            else s for k, s in subnets.items()}  # what the adds planned above leave
    ours = {e.eni_id for e in mine}  # a spread's dedicated ENIs count against the quota like other uses
    others = [e for e in enis if e.eni_id not in ours and e.state is not EniState.DELETED]
    shares = [min(max(beyond - i * per_eni, 0), per_eni) for i in range(wanted)]  # the secondaries each is to hold
    creates, refused = _creations(nrs, live, quota, left, settings, other_enis + len(others),
                                  [e.index for e in others], shares)
    if creates or refused is None:  # (none refused: as many as wanted)
        return NodePlan(nrs.name, (*actions, *creates))
    if pending:
        return NodePlan(nrs.name, tuple(actions), waiting="an ENI is being attached")
    if growth.blocked_by_subnet and refused.reason is ErrorReason.ENI_CAPACITY_EXCEED:
        refused = PlanError(ErrorReason.SUBNET_NO_MORE_IP, f"the subnets of node {nrs.name}'s ENIs are full")
    if growth.needed <= 0:  # only pre-allocation wanted it: not worth an error
        return NodePlan(nrs.name, tuple(actions))
    return NodePlan(nrs.name, tuple(actions), error=refused)


def is_dedicated(spec: NodeSpec, subnet_id: str) -> bool:
    """An ENI in this subnet exists for PodSubnetTopologySpreads only (`spread.py`): the node names its own
    subnets and this is not one of them."""
    return bool(spec.subnet_ids) and subnet_id not in spec.subnet_ids


def plan_removal(node: str, enis: Sequence[Eni], marked_at: datetime, settings: PlanSettings, now: datetime, *,
                 has_provision: bool = True) -> NodePlan:
    """A removed node: after the grace period, delete every ENI (detaching first), then its provision record."""
    if (now - marked_at).total_seconds() < settings.removal_grace_s:
        return NodePlan(node, waiting="node removal grace period")
    if not enis:
        return NodePlan(node, (DropProvision(),) if has_provision else ())
    nics = [e for e in enis if e.use is EniUse.PRIMARY_NIC]  # the instance's own NIC: only its secondaries go
    actions: list[Action] = [DropPrimaryNic(tuple(str(ip) for ip in e.secondary_ips)) for e in nics]
    actions += [DeleteEni(e.eni_id, "node-removed") for e in sorted(enis, key=lambda e: e.index) if e not in nics]
    return NodePlan(node, tuple(actions))

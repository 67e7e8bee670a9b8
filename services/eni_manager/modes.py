"""eni_manager's plans for the ENI-family modes besides vpc-eni (pure, like `domain`):

- vpc-eni-primary: the node's pool is its instance's primary NIC, one `Eni` record of use PRIMARY_NIC
  (`primary-<instance_id>`); secondary IPs are added and removed with the instance-level batch calls, released ones
  only after ipam confirmed them (the same handshake as vpc-eni); the NIC's own IP is never touched.
- vpc-eni-exclusive (and vpc-eni nodes with `allow_exclusive`): ENIs of use EXCLUSIVE, created and attached like
  secondary-IP ENIs but given whole to one pod; eni_manager keeps the node at ipam's `demand.target_enis` (pods
  holding one + pods waiting + one spare), up to `enis_in_flight` created and attached at once, never past the
  node's ENI quota; ENIs ipam marked surplus (`NodePool.eni_releasing`) are detached and deleted unless a pod holds
  one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from schemas.base import NetworkMode
from schemas.errors import ErrorReason
from schemas.quotas import primary_nic_ips
from schemas.records import Eni, EniState, EniUse, NetResourceSet, NodePool, NodeSpec, Subnet
from services.eni_manager.domain import (
    BATCH,
    PENDING_STATES,
    Action,
    AddPrimaryIps,
    AttachEni,
    AwaitAttach,
    CreateEni,
    DeleteEni,
    NodePlan,
    PlanError,
    PlanSettings,
    Quota,
    RemovePrimaryIps,
    SyncPrimaryNic,
    _creations,
    _ip_order,
    _subnet_free,
    confirmed_releases,
    is_stuck,
    plan_node,
)
from services.eni_manager.spread import plan_spread

PRIMARY_NIC_PREFIX = "primary-"
ENI_MODES = frozenset({NetworkMode.VPC_ENI, NetworkMode.VPC_ENI_PRIMARY, NetworkMode.VPC_ENI_EXCLUSIVE})
LIFECYCLE = (CreateEni, AttachEni, AwaitAttach)


def primary_nic_id(instance_id: str) -> str:
    """The record id of an instance's primary NIC (the simulator's fabric names the NIC the same)."""
    return f"{PRIMARY_NIC_PREFIX}{instance_id}"


def primary_quota(spec: NodeSpec) -> Quota:
    """No ENIs besides the primary NIC; its IP quota (own IP included): override, 40 on BBC, else by memory."""
    return Quota(0, primary_nic_ips(spec.instance_type.value, spec.memory_mib, spec.ips_per_eni))


def wants_exclusive(spec: NodeSpec) -> bool:
    """Nodes that give pods whole ENIs: exclusive-mode nodes and vpc-eni nodes that allow the opt-in."""
    return spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE or (spec.mode is NetworkMode.VPC_ENI and spec.allow_exclusive)


def is_eniless(eni_quota: int | None, spec: NodeSpec) -> bool:
    """A vpc-eni node on an instance the cloud gives no ENI quota (and no override says otherwise)."""
    return spec.mode is NetworkMode.VPC_ENI and spec.max_enis is None and eni_quota == 0


# ---------------------------------------------------------------------------------------------------------------
# vpc-eni-primary


def plan_primary(nrs: NetResourceSet, nic: Eni | None, pool: NodePool | None,
                 subnets: Mapping[str, Subnet]) -> NodePlan:
    """Confirmed releases leave the NIC; then IPs are added toward the target, at most BATCH per call."""
    if nic is None:
        return NodePlan(nrs.name, (SyncPrimaryNic(),), waiting="reading the primary NIC")
    gone = confirmed_releases(pool)
    leaving = sorted((str(ip) for ip in nic.secondary_ips if str(ip) in gone), key=_ip_order)
    actions: list[Action] = [RemovePrimaryIps(tuple(leaving[i:i + BATCH])) for i in range(0, len(leaving), BATCH)]
    current = len(nic.secondary_ips) - len(leaving)
    needed = (pool.demand.target_ips if pool is not None else 0) - current
    if needed <= 0:
        return NodePlan(nrs.name, tuple(actions))
    held = current + 1
    room = max(nic.ip_quota - held, 0)
    left = _subnet_free(subnets, nic.subnet_id)
    count = min(needed, room, left)
    actions += [AddPrimaryIps(min(BATCH, count - i)) for i in range(0, count, BATCH)]
    error = None
    if needed > room:
        error = PlanError(ErrorReason.ENI_CAPACITY_EXCEED, f"the primary NIC of node {nrs.name} "
                          f"({nic.instance_id}) holds {held} of {nic.ip_quota} IPs and cannot take {needed} more")
    elif needed > left:
        error = PlanError(ErrorReason.SUBNET_NO_MORE_IP, f"subnet {nic.subnet_id} of node {nrs.name}'s primary NIC "
                          f"has {left} free IPs, {needed} wanted")
    return NodePlan(nrs.name, tuple(actions), error=error)


# ---------------------------------------------------------------------------------------------------------------
# vpc-eni-exclusive


def plan_exclusive(nrs: NetResourceSet, enis: Sequence[Eni], pool: NodePool | None, quota: Quota,
                   subnets: Mapping[str, Subnet], settings: PlanSettings, now: datetime, *,
                   other_enis: int = 0) -> NodePlan:
    """Stuck exclusive ENIs and those ipam marked surplus (and no pod holds) go, pending ones are attached, and more
    are created (up to `enis_in_flight` pending at once) while the node holds fewer than ipam's `target_enis` (ENIs
    of other uses and foreign ones count against the quota)."""
    mine = [e for e in enis if e.use is EniUse.EXCLUSIVE]
    claimed = set(pool.exclusive) if pool is not None else set()
    marked = set(pool.eni_releasing) if pool is not None else set()
    surplus = [e for e in mine if e.eni_id in marked and e.eni_id not in claimed and e.state is not EniState.DELETED]
    stuck = [e for e in mine if e.eni_id not in claimed and e not in surplus
             and is_stuck(e, now, settings.stuck_after_s)]
    gone = {e.eni_id for e in (*stuck, *surplus)}
    live = [e for e in mine if e.eni_id not in gone and e.state is not EniState.DELETED]
    pending = [e for e in live if e.state in PENDING_STATES]
    actions: list[Action] = [DeleteEni(e.eni_id, "stuck") for e in stuck]
    actions += [DeleteEni(e.eni_id, "surplus") for e in surplus]
    actions += [AttachEni(e.eni_id) if e.state is EniState.AVAILABLE else AwaitAttach(e.eni_id) for e in pending]
    demand = pool.demand if pool is not None else None
    target = demand.target_enis if demand is not None else 0
    if len(live) >= target:
        return NodePlan(nrs.name, tuple(actions))
    wanted = min(target - len(live), settings.enis_in_flight - len(pending))
    others = [e for e in enis if e.use is not EniUse.EXCLUSIVE and e.state is not EniState.DELETED]
    creates, refused = _creations(nrs, live, quota, subnets, settings, other_enis + len(others),
                                  [e.index for e in enis], [0] * max(wanted, 0), use=EniUse.EXCLUSIVE)
    if creates:
        return NodePlan(nrs.name, (*actions, *creates))
    if pending or refused is None:  # as many as may be are in flight
        return NodePlan(nrs.name, tuple(actions), waiting="an exclusive ENI is being attached")
    if demand is None or demand.enis_pending == 0:  # only the spare wanted it: not worth an error
        return NodePlan(nrs.name, tuple(actions))
    return NodePlan(nrs.name, tuple(actions), error=refused)


def with_spread(plan: NodePlan, nrs: NetResourceSet, enis: Sequence[Eni], pool: NodePool | None, quota: Quota,
                subnets: Mapping[str, Subnet], settings: PlanSettings, now: datetime, other_enis: int,
                taken: Collection[str]) -> NodePlan:
    """The vpc-eni plan with the PodSubnetTopologySpreads' subnets (`spread.py`): one ENI creation or attachment
    in flight for the node, the spreads' first (their pods wait for that very subnet)."""
    busy = any(e.state in PENDING_STATES for e in enis if e.use is EniUse.SECONDARY_IPS)
    extra = plan_spread(nrs, enis, pool, quota, subnets, settings, now, taken=taken, other_enis=other_enis,
                        busy=busy)
    if not extra:
        return plan
    creating = any(isinstance(a, LIFECYCLE) for a in extra)
    kept = [a for a in plan.actions if not (creating and isinstance(a, CreateEni))]
    waiting = plan.waiting or ("an ENI is being attached" if creating else "")
    return NodePlan(plan.node, (*kept, *extra), error=plan.error, waiting=waiting)


def plan_live_node(nrs: NetResourceSet, enis: Sequence[Eni], pool: NodePool | None, quota: Quota,
                   subnets: Mapping[str, Subnet], settings: PlanSettings, now: datetime, *,
                   other_enis: int = 0, taken: Collection[str] = ()) -> NodePlan:
    """The plan for a live node in its mode. A vpc-eni node that allows exclusive ENIs gets both plans, with at most
    one ENI created or attached at a time (the exclusive one first)."""
    mode = nrs.spec.mode
    if mode is NetworkMode.VPC_ENI_PRIMARY:
        nic = next((e for e in enis if e.use is EniUse.PRIMARY_NIC), None)
        return plan_primary(nrs, nic, pool, subnets)
    exclusive = plan_exclusive(nrs, enis, pool, quota, subnets, settings, now, other_enis=other_enis) \
        if wants_exclusive(nrs.spec) else None
    if mode is NetworkMode.VPC_ENI_EXCLUSIVE:
        assert exclusive is not None
        return exclusive
    secondary = with_spread(plan_node(nrs, enis, pool, quota, subnets, settings, now, other_enis=other_enis),
                            nrs, enis, pool, quota, subnets, settings, now, other_enis, taken)
    if exclusive is None or (exclusive.is_idle and exclusive.error is None and not exclusive.waiting):
        return secondary
    busy = any(isinstance(a, LIFECYCLE) for a in exclusive.actions) or bool(exclusive.waiting)
    kept = [a for a in secondary.actions if not (busy and isinstance(a, CreateEni))]
    return NodePlan(nrs.name, (*exclusive.actions, *kept), error=exclusive.error or secondary.error,
                    waiting=exclusive.waiting or secondary.waiting)

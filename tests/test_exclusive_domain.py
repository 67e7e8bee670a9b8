"""Unit tier: exclusive-ENI decisions in ipam (claims, capacity, cooldown, demand, GC inputs) and eni_manager (the
spare ENI, the quota, one creation at a time), with a Hypothesis state machine: no ENI is ever held by two pods, a
cooling ENI is never handed out, and the demand's counters equal a recount."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from schemas.base import InstanceType, NetworkMode
from schemas.errors import ErrorReason
from schemas.messages import AllocateRequest, PodRef
from schemas.records import (
    Eni,
    EniProvision,
    EniState,
    EniUse,
    NetResourceSet,
    NodePool,
    NodeSpec,
    NodeStatus,
    PodInfo,
    PoolDemand,
    PoolSettings,
    PrivateIp,
    Subnet,
)
from services.cni_gateway.domain import parse_request, wants_exclusive_eni
from services.eni_manager.domain import (
    AttachEni,
    CreateEni,
    DeleteEni,
    PlanSettings,
    Quota,
    eni_description,
    use_of_description,
)
from services.eni_manager.modes import plan_exclusive, plan_live_node
from services.ipam import domain, exclusive
from services.ipam import exclusive_pool as xp

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODE = "x-1"
SUBNET = IPv4Network("10.0.0.0/20")


def secs(s: float) -> timedelta:
    return timedelta(seconds=s)


def xeni(index: int, *, state: EniState = EniState.INUSE, use: EniUse = EniUse.EXCLUSIVE) -> Eni:
    return Eni(eni_id=f"eni-{index}", node=NODE, instance_id="i-1", use=use, subnet_id="sbn-1", subnet_cidr=SUBNET,
               mac=f"fa:16:3e:00:00:{index:02x}", state=state, index=index,
               private_ips=[PrivateIp(ip=IPv4Address(f"10.0.0.{10 + index}"), primary=True)])


def spec(mode: NetworkMode = NetworkMode.VPC_ENI_EXCLUSIVE, max_enis: int = 3, **extra: object) -> NodeSpec:
    return NodeSpec.model_validate({"instance_id": "i-1", "instance_type": InstanceType.BCC, "zone": "zoneA",
                                    "cpus": 8, "memory_mib": 16384, "mode": mode, "max_enis": max_enis, **extra})


def facts(*enis: Eni, provision: EniProvision | None = None, **spec_args: object) -> domain.NodeFacts:
    return domain.NodeFacts(node=NODE, spec=spec(**spec_args), enis=enis, provision=provision)


def key(n: int) -> str:
    return f"{NODE}.c{n}.eth0"


def claim(pool: NodePool, f: domain.NodeFacts, k: str, now: datetime = T0, wait: bool = True) -> domain.Claim:
    return exclusive.claim_eni(pool, f, k, now, wait)


# ---- ipam ---------------------------------------------------------------------------------------------------------


def test_a_pod_gets_a_whole_eni_and_a_repeat_gets_the_same_one() -> None:
    f = facts(xeni(1), xeni(2))
    first = claim(NodePool(node=NODE), f, key(0))
    assert first.slot is not None and first.slot.eni is not None
    assert (first.slot.eni.eni_id, first.slot.ip) == ("eni-1", IPv4Address("10.0.0.11"))
    assert first.pool.exclusive == {"eni-1": key(0)}
    again = claim(first.pool, f, key(0))
    assert again.reused and again.slot == first.slot and not again.changed
    other = claim(first.pool, f, key(1))
    assert other.slot is not None and other.slot.eni is not None and other.slot.eni.eni_id == "eni-2"


def test_the_endpoint_of_an_exclusive_eni_carries_its_ip_with_the_subnet_mask_and_its_mac() -> None:
    f = facts(xeni(1))
    got = claim(NodePool(node=NODE), f, key(0))
    assert got.slot is not None
    req = AllocateRequest(node=NODE, container_id="c0", pod=PodRef(namespace="default", name="p"))
    ep = domain.new_endpoint(req, NetworkMode.VPC_ENI_EXCLUSIVE, got.slot, T0, 60)
    address = ep.addresses[0]
    assert (str(address.ip), address.prefix_len, str(address.gateway)) == ("10.0.0.11", 20, "10.0.0.1")
    assert (address.eni_id, address.mac, address.route_table) == ("eni-1", "fa:16:3e:00:00:01", None)
    assert ep.mode is NetworkMode.VPC_ENI_EXCLUSIVE


def test_a_full_node_at_its_quota_is_at_capacity_at_once() -> None:
    f = facts(xeni(1), xeni(2), xeni(3))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0), "eni-2": key(1), "eni-3": key(2)})
    got = claim(pool, f, key(3))
    assert got.slot is None and got.at_capacity and key(3) not in got.pool.exclusive_waiting
    err = exclusive.failure(f, got, 0, T0)
    assert err.reason.value == "ENICapacityExceed"


def test_room_in_the_quota_means_waiting_for_the_spare_not_capacity() -> None:
    f = facts(xeni(1))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0)})
    got = claim(pool, f, key(1))
    assert got.slot is None and not got.at_capacity
    assert got.pool.exclusive_waiting == {key(1): T0}
    assert got.pool.demand.target_enis == 3  # 1 held + 1 waiting + 1 spare
    assert exclusive.failure(f, got, 10, T0).reason.value == "WaitCreateMoreENI"


def test_an_eni_being_attached_counts_as_coming_even_at_the_quota() -> None:
    f = facts(xeni(1), xeni(2), xeni(3, state=EniState.ATTACHING))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0), "eni-2": key(1)})
    got = claim(pool, f, key(2))
    assert got.slot is None and not got.at_capacity


def test_a_released_eni_cools_down_then_goes_to_the_next_pod() -> None:
    f = facts(xeni(1), xeni(2), xeni(3))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0), "eni-2": key(1), "eni-3": key(2)})
    released, _ = domain.release_ip(pool, key(1), 30, T0, eni_cooldown_s=5)
    assert "eni-2" not in released.exclusive and released.eni_cooldown == {"eni-2": T0 + secs(5)}
    waiting = claim(released, f, key(3), T0 + secs(1))
    assert waiting.slot is None and not waiting.at_capacity and waiting.next_cooldown_end == T0 + secs(5)
    got = claim(waiting.pool, f, key(3), T0 + secs(5))
    assert got.slot is not None and got.slot.eni is not None and got.slot.eni.eni_id == "eni-2"
    assert got.pool.eni_cooldown == {} and got.pool.exclusive_waiting == {}
    assert domain.release_ip(released, key(1), 30, T0, eni_cooldown_s=5) == (released, [])  # idempotent


def test_demand_counts_held_waiting_and_one_spare_and_capacity_says_how_many_are_free() -> None:
    f = facts(xeni(1), xeni(2))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0)})
    view = domain.PoolView(pool, f, T0)
    demand = view.demand()
    assert (demand.target_enis, demand.enis_used, demand.enis_free, demand.target_ips) == (2, 1, 1, 0)
    status = domain.node_status(NodeStatus(), view)
    assert status is not None and status.capacity.free_enis == 1 and status.ready
    assert status.enis == ["eni-1", "eni-2"]
    assert view.demand(removing=True).target_enis == 0


def test_pod_capacity_of_an_exclusive_node_is_its_enis_held_free_and_creatable() -> None:
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0)})
    cap = domain.node_capacity(domain.PoolView(pool, facts(xeni(1), xeni(2)), T0))
    assert (cap.pod_enis, cap.pod_ips) == (3, 3)  # 1 held + 1 free + 1 more within the quota of 3
    quota_hit = EniProvision(node=NODE, instance_id="i-1", last_error=ErrorReason.ENI_CAPACITY_EXCEED)
    assert domain.node_capacity(domain.PoolView(pool, facts(xeni(1), xeni(2), provision=quota_hit), T0)).pod_enis == 2
    mixed = facts(xeni(1), mode=NetworkMode.VPC_ENI, allow_exclusive=True)
    assert domain.node_capacity(domain.PoolView(pool, mixed, T0)).pod_enis == 3


def test_a_vpc_eni_node_wants_no_spare_unless_it_allows_exclusive_pods() -> None:
    plain = facts(mode=NetworkMode.VPC_ENI)
    mixed = facts(mode=NetworkMode.VPC_ENI, allow_exclusive=True)
    assert domain.PoolView(NodePool(node=NODE), plain, T0).demand().target_enis == 0
    assert domain.PoolView(NodePool(node=NODE), mixed, T0).demand().target_enis == 1
    assert not xp.allows_exclusive(plain.spec) and xp.allows_exclusive(mixed.spec)


def test_an_exclusive_claim_without_endpoint_is_an_orphan_and_an_endpoint_without_claim_a_stray() -> None:
    f = facts(xeni(1), xeni(2))
    pool = claim(NodePool(node=NODE), f, key(0)).pool
    assert domain.orphan_claims(pool, []) == {"eni-1": key(0)}
    slot = claim(pool, f, key(0)).slot
    assert slot is not None
    req = AllocateRequest(node=NODE, container_id="c0", pod=PodRef(namespace="default", name="p"))
    ep = domain.new_endpoint(req, NetworkMode.VPC_ENI_EXCLUSIVE, slot, T0, 60)
    assert domain.orphan_claims(pool, [key(0)]) == {}
    assert domain.stray_endpoints({key(0): ep}, pool) == []
    assert domain.stray_endpoints({key(0): ep}, NodePool(node=NODE)) == [key(0)]


def test_upkeep_prunes_finished_eni_cooldowns_and_stale_exclusive_waits() -> None:
    f = facts(xeni(1))
    pool = NodePool(node=NODE, eni_cooldown={"eni-1": T0 + secs(5), "eni-gone": T0 + secs(50)},
                    exclusive_waiting={key(0): T0})
    up = domain.maintain_pool(pool, f, T0 + secs(6), waiting_ttl_s=5)
    assert up.changed and up.pool.eni_cooldown == {} and up.pool.exclusive_waiting == {}



def test_free_enis_beyond_the_spare_are_marked_surplus_once_the_surplus_lasted_and_never_handed_out() -> None:
    f = facts(xeni(1), xeni(2), xeni(3), pool=PoolSettings(eni_release_after_s=60))
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0)})  # one held, two free: one of them is the spare
    started = domain.maintain_pool(pool, f, T0, waiting_ttl_s=60)
    assert started.changed and started.pool.eni_surplus_since == T0 and started.surplus_enis == []
    early = domain.maintain_pool(started.pool, f, T0 + secs(59), waiting_ttl_s=60)
    assert not early.changed and early.pool.eni_releasing == {}
    due = domain.maintain_pool(early.pool, f, T0 + secs(60), waiting_ttl_s=60)
    assert due.surplus_enis == ["eni-3"] and due.pool.eni_releasing == {"eni-3": T0 + secs(60)}  # highest index
    assert due.pool.eni_surplus_since is None
    view = xp.EniView(due.pool, f, T0 + secs(60))
    assert [e.eni_id for e in view.free] == ["eni-2"] and [e.eni_id for e in view.releasing] == ["eni-3"]
    assert view.target() == 2
    second = claim(due.pool, f, key(1), T0 + secs(61))
    assert second.slot is not None and second.slot.eni is not None and second.slot.eni.eni_id == "eni-2"
    third = claim(second.pool, f, key(2), T0 + secs(61))
    assert third.slot is None  # eni-3 is going: the pod waits for a new spare


def test_a_surplus_that_ends_before_its_time_marks_nothing_and_a_node_without_the_setting_keeps_its_enis() -> None:
    f = facts(xeni(1), xeni(2), pool=PoolSettings(eni_release_after_s=60))
    started = domain.maintain_pool(NodePool(node=NODE), f, T0, waiting_ttl_s=60).pool
    assert started.eni_surplus_since == T0
    taken = claim(started, f, key(0), T0 + secs(30)).pool  # one pod: one held, one spare, nothing more
    ended = domain.maintain_pool(taken, f, T0 + secs(90), waiting_ttl_s=60)
    assert ended.pool.eni_surplus_since is None and ended.pool.eni_releasing == {}
    keep = facts(xeni(1), xeni(2), xeni(3), pool=PoolSettings(eni_release_after_s=None))
    kept = domain.maintain_pool(NodePool(node=NODE), keep, T0 + secs(10 ** 6), waiting_ttl_s=60)
    assert kept.pool.eni_surplus_since is None and kept.pool.eni_releasing == {}


def test_waiting_pods_cooling_and_coming_enis_count_before_any_is_surplus() -> None:
    def surplus(pool: NodePool, *enis: Eni) -> list[str]:
        return [e.eni_id for e in xp.EniView(pool, facts(*enis), T0).surplus()]

    coming = xeni(3, state=EniState.ATTACHING)
    assert surplus(NodePool(node=NODE), xeni(1), xeni(2), coming) == ["eni-1", "eni-2"]  # the spare is on its way
    waiting = NodePool(node=NODE, exclusive_waiting={key(5): T0})
    assert surplus(waiting, xeni(1), xeni(2), coming) == ["eni-2"]  # one pod waits, the coming one is the spare
    cooling = NodePool(node=NODE, eni_cooldown={"eni-1": T0 + secs(5)})
    assert surplus(cooling, xeni(1), xeni(2)) == ["eni-2"]  # the cooling one is the spare
    assert surplus(NodePool(node=NODE), xeni(1)) == []


def test_the_mark_of_an_eni_that_is_gone_leaves_the_pool() -> None:
    f = facts(xeni(1))
    pool = NodePool(node=NODE, eni_releasing={"eni-9": T0})
    assert domain.maintain_pool(pool, f, T0, waiting_ttl_s=60).pool.eni_releasing == {}

# ---- Hypothesis: no ENI is ever held by two pods -------------------------------------------------------------------


class ExclusiveClaims(RuleBasedStateMachine):
    """Pods claim and release whole ENIs while ENIs attach and time passes; the model checks every hand-out."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.enis: list[Eni] = []
        self.pool = NodePool(node=NODE)
        self.holder: dict[str, str] = {}  # model: ENI -> pod
        self.freed_at: dict[str, datetime] = {}

    def facts(self) -> domain.NodeFacts:
        return facts(*self.enis, max_enis=4, pool=PoolSettings(eni_cooldown_s=3, eni_release_after_s=2))

    @rule()
    def attach(self) -> None:
        if len(self.enis) < 4:
            free_index = min(set(range(1, 5)) - {e.index for e in self.enis})
            self.enis.append(xeni(free_index))

    @rule()
    def eni_manager_deletes_the_surplus(self) -> None:
        gone = set(self.pool.eni_releasing) - set(self.pool.exclusive)
        self.enis = [e for e in self.enis if e.eni_id not in gone]

    @rule(pod=st.integers(0, 6))
    def add(self, pod: int) -> None:
        got = claim(self.pool, self.facts(), key(pod), self.now)
        self.pool = got.pool
        if got.slot is None or got.slot.eni is None:
            return
        eni_id = got.slot.eni.eni_id
        assert self.holder.get(eni_id, key(pod)) == key(pod), "an ENI handed to a second pod"
        assert got.reused or eni_id not in self.pool.eni_releasing, "an ENI marked surplus handed out"
        assert got.reused or self.freed_at.get(eni_id, T0 - secs(99)) + secs(3) <= self.now, "cooling ENI handed out"
        if not got.reused:
            assert key(pod) not in self.holder.values(), "a pod holding two ENIs"
        self.holder[eni_id] = key(pod)

    @rule(pod=st.integers(0, 6))
    def delete(self, pod: int) -> None:
        self.pool, _ = domain.release_ip(self.pool, key(pod), 30, self.now, eni_cooldown_s=3)
        for eni_id in [e for e, k in self.holder.items() if k == key(pod)]:
            del self.holder[eni_id]
            self.freed_at[eni_id] = self.now

    @rule(seconds=st.sampled_from([0.5, 1, 3]))
    def tick(self, seconds: float) -> None:
        self.now += secs(seconds)
        self.pool = domain.maintain_pool(self.pool, self.facts(), self.now, waiting_ttl_s=60).pool

    @invariant()
    def claims_match_the_model(self) -> None:
        assert self.pool.exclusive == self.holder
        assert len(set(self.pool.exclusive.values())) == len(self.pool.exclusive)

    @invariant()
    def counters_equal_a_recount(self) -> None:
        view = xp.EniView(self.pool, self.facts(), self.now)
        held = set(self.pool.exclusive)
        assert len(view.free) + len(view.cooling) + len(view.coming) + len(view.releasing) + len(held) == \
            len(self.enis)
        assert view.used == len(self.holder)

    @invariant()
    def no_held_eni_is_marked_surplus(self) -> None:
        assert not set(self.pool.eni_releasing) & set(self.pool.exclusive)


TestExclusiveClaims = ExclusiveClaims.TestCase
TestExclusiveClaims.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


# ---- eni_manager ---------------------------------------------------------------------------------------------------

QUOTA = Quota(max_enis=3, ips_per_eni=16)
PLAN = PlanSettings(cluster_id="c1")
SUBNETS = {"sbn-1": Subnet(subnet_id="sbn-1", vpc_id="vpc-1", zone="zoneA", cidr=SUBNET, available_ips=100)}


def nrs(**spec_args: object) -> NetResourceSet:
    return NetResourceSet(name=NODE, spec=spec(**spec_args))


def wanting(target: int, pending: int = 0) -> NodePool:
    return NodePool(node=NODE, demand=PoolDemand(target_enis=target, enis_pending=pending))


def test_an_exclusive_node_gets_its_spare_eni_created_with_the_exclusive_use() -> None:
    plan = plan_exclusive(nrs(), [], wanting(1), QUOTA, SUBNETS, PLAN, T0)
    assert len(plan.actions) == 1 and isinstance(plan.actions[0], CreateEni)
    create = plan.actions[0]
    assert create.use is EniUse.EXCLUSIVE and create.index == 1
    assert use_of_description(create.description) is EniUse.EXCLUSIVE
    assert use_of_description(eni_description("c1", NODE)) is EniUse.SECONDARY_IPS


def test_no_more_than_the_target_and_no_more_in_flight_than_allowed() -> None:
    assert plan_exclusive(nrs(), [xeni(1)], wanting(1), QUOTA, SUBNETS, PLAN, T0).is_idle
    attaching = plan_exclusive(nrs(), [xeni(1, state=EniState.AVAILABLE)], wanting(3), QUOTA, SUBNETS, PLAN, T0)
    assert attaching.actions[0] == AttachEni("eni-1") and not attaching.waiting
    assert [(a.use, a.index) for a in attaching.actions[1:] if isinstance(a, CreateEni)] == [
        (EniUse.EXCLUSIVE, 2), (EniUse.EXCLUSIVE, 3)]
    one_at_a_time = PlanSettings(cluster_id="c1", enis_in_flight=1)
    alone = plan_exclusive(nrs(), [xeni(1, state=EniState.AVAILABLE)], wanting(3), QUOTA, SUBNETS, one_at_a_time, T0)
    assert alone.actions == (AttachEni("eni-1"),) and alone.waiting


def test_the_quota_counts_enis_of_every_use_and_only_waiting_pods_make_it_an_error() -> None:
    enis = [xeni(1), xeni(2, use=EniUse.SECONDARY_IPS), xeni(3)]
    spare_only = plan_exclusive(nrs(), enis, wanting(3), QUOTA, SUBNETS, PLAN, T0)
    assert spare_only.is_idle and spare_only.error is None
    pods_wait = plan_exclusive(nrs(), enis, wanting(3, pending=1), QUOTA, SUBNETS, PLAN, T0)
    assert pods_wait.error is not None and pods_wait.error.reason.value == "ENICapacityExceed"


def test_a_vpc_eni_node_allowing_exclusive_pods_creates_one_eni_at_a_time() -> None:
    node = nrs(mode=NetworkMode.VPC_ENI, allow_exclusive=True, max_enis=8)
    pool = NodePool(node=NODE, demand=PoolDemand(target_ips=10, target_enis=1))
    plan = plan_live_node(node, [], pool, Quota(8, 16), SUBNETS, PLAN, T0)
    creates = [a for a in plan.actions if isinstance(a, CreateEni)]
    assert [c.use for c in creates] == [EniUse.EXCLUSIVE]
    later = plan_live_node(node, [xeni(1)], pool, Quota(8, 16), SUBNETS, PLAN, T0)
    assert [(a.use, a.index) for a in later.actions if isinstance(a, CreateEni)] == [(EniUse.SECONDARY_IPS, 2)]


def test_the_endpoint_for_a_released_eni_is_never_recreated_by_a_stale_claim() -> None:
    """A pod whose ENI left the node (record gone) gets another one, and the old claim does not linger."""
    f = facts(xeni(1), xeni(2))
    pool = NodePool(node=NODE, exclusive={"eni-9": key(0)})
    got = claim(pool, f, key(0))
    assert got.slot is not None and got.pool.exclusive == {"eni-1": key(0)}


# ---- cni_gateway: the pod's opt-in from CNI_ARGS -------------------------------------------------------------------


@pytest.mark.parametrize(("cni_args", "wanted"), [
    ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IgnoreUnknown=1", False),
    ("CCE_EXCLUSIVE_ENI=true", True),
    ("CCE_EXCLUSIVE_ENI=false", False),
    ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_ANNOTATION_cce.io/exclusive-eni=True", True),
    ("K8S_POD_ANNOTATION_cce.io/exclusive-eni=no", False),
])
def test_a_pod_opts_in_to_an_exclusive_eni_through_cni_args(cni_args: str, wanted: bool) -> None:
    req = parse_request({"command": "ADD", "config": {"cniVersion": "1.0.0", "name": "cce", "type": "cce-cni"},
                         "env": {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
                                 "CNI_ARGS": cni_args}})
    assert wants_exclusive_eni(req.args) is wanted


@pytest.mark.parametrize(("annotation", "wanted"), [("true", True), ("True", True), ("false", False), (None, False)])
def test_a_pod_opts_in_to_an_exclusive_eni_through_its_annotation_in_the_pods_record(annotation: str | None,
                                                                                       wanted: bool) -> None:
    pod = PodInfo(namespace="ns", name="p", uid="u", node=NODE,
                  annotations={} if annotation is None else {"cce.io/exclusive-eni": annotation})
    assert wants_exclusive_eni({}, pod) is wanted
    assert wants_exclusive_eni({"CCE_EXCLUSIVE_ENI": "true"}, pod) is True


def test_eni_manager_deletes_enis_marked_surplus_unless_a_pod_holds_one() -> None:
    pool = NodePool(node=NODE, exclusive={"eni-1": key(0)}, eni_releasing={"eni-3": T0},
                    demand=PoolDemand(target_enis=2, enis_used=1))
    plan = plan_exclusive(nrs(), [xeni(1), xeni(2), xeni(3)], pool, QUOTA, SUBNETS, PLAN, T0)
    assert plan.actions == (DeleteEni("eni-3", "surplus"),)
    held = pool.model_copy(update={"exclusive": {"eni-1": key(0), "eni-3": key(1)}})  # a stale view: never delete
    assert plan_exclusive(nrs(), [xeni(1), xeni(2), xeni(3)], held, QUOTA, SUBNETS, PLAN, T0).is_idle
    short = pool.model_copy(update={"demand": PoolDemand(target_enis=3, enis_used=2)})  # the going one is no spare
    replaced = plan_exclusive(nrs(), [xeni(1), xeni(2), xeni(3)], short, QUOTA, SUBNETS, PLAN, T0)
    assert replaced.actions[0] == DeleteEni("eni-3", "surplus") and isinstance(replaced.actions[1], CreateEni)

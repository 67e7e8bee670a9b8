"""Unit tier: eni_manager's pure decisions (quotas, names, subnets, indexes, plans), as tables where they fit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from cloud.port import CloudEni
from schemas.base import InstanceType
from schemas.errors import ErrorReason
from schemas.records import (
    Eni,
    EniState,
    NetResourceSet,
    NodePool,
    NodeSpec,
    PoolDemand,
    PoolSettings,
    PrivateIp,
    ReleaseMark,
    ReleaseState,
    Subnet,
)
from services.eni_manager.domain import (
    AddIps,
    AttachEni,
    AwaitAttach,
    CreateEni,
    DeleteEni,
    DropProvision,
    EniName,
    NodePlan,
    PlanSettings,
    Quota,
    RemoveIps,
    adoption_owner,
    choose_subnet,
    current_ips,
    eni_description,
    eni_name,
    index_for_adopted,
    ips_per_eni_by_memory,
    is_stuck,
    lowest_free_index,
    node_quota,
    parse_eni_name,
    plan_node,
    plan_removal,
)
from services.eni_manager.nodesync import read_scan

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
QUOTA = Quota(max_enis=8, ips_per_eni=16)
SETTINGS = PlanSettings(cluster_id="c1")


def spec(**overrides: object) -> NodeSpec:
    values: dict[str, object] = {"instance_id": "i-1", "instance_type": InstanceType.BCC, "zone": "zoneA",
                                 "cpus": 8, "memory_mib": 32768, **overrides}
    return NodeSpec.model_validate(values)


def nrs(**overrides: object) -> NetResourceSet:
    return NetResourceSet(name="node-1", spec=spec(**overrides))


def eni(eni_id: str, index: int, secondaries: int, *, state: EniState = EniState.INUSE, subnet_id: str = "sbn-a",
        since: datetime = NOW, ip_quota: int = 16) -> Eni:
    ips = [PrivateIp(ip=IPv4Address(f"10.{index}.0.1"), primary=True)]
    ips += [PrivateIp(ip=IPv4Address(f"10.{index}.1.{i + 1}")) for i in range(secondaries)]
    return Eni(eni_id=eni_id, node="node-1", instance_id="i-1", subnet_id=subnet_id,
               subnet_cidr=IPv4Network("10.0.0.0/8"), state=state, private_ips=ips, ip_quota=ip_quota, index=index,
               state_since=since)


def pool(target: int, releasing: dict[str, ReleaseState] | None = None) -> NodePool:
    marks = {ip: ReleaseMark(eni_id="eni-1", state=state) for ip, state in (releasing or {}).items()}
    return NodePool(node="node-1", releasing=marks, demand=PoolDemand(target_ips=target))


def subnet(subnet_id: str, available: int, *, zone: str = "zoneA", excluded: bool = False) -> Subnet:
    return Subnet(subnet_id=subnet_id, vpc_id="vpc-1", zone=zone, cidr=IPv4Network("10.0.0.0/16"),
                  available_ips=available, excluded=excluded)


SUBNETS = {"sbn-a": subnet("sbn-a", 1000)}


def plan(node: NetResourceSet, enis: list[Eni], target: int | NodePool, *, quota: Quota = QUOTA,
         subnets: dict[str, Subnet] | None = None, settings: PlanSettings = SETTINGS, other_enis: int = 0) -> NodePlan:
    demand = pool(target) if isinstance(target, int) else target
    return plan_node(node, enis, demand, quota, SUBNETS if subnets is None else subnets, settings, NOW,
                     other_enis=other_enis)


def create(index: int, subnet_id: str = "sbn-a", sgs: tuple[str, ...] = ()) -> CreateEni:
    return CreateEni(subnet_id, index, f"cce-c1-node-1-{index}", "cce-network cluster=c1 node=node-1", sgs)


# --- quotas ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("memory_mib", "ips"), [
    (1024, 2), (2047, 2), (2048, 8), (8192, 8), (8193, 16), (32768, 16), (65536, 30), (65537, 40), (262144, 40),
])
def test_ips_per_eni_follow_the_memory_table(memory_mib: int, ips: int) -> None:
    assert ips_per_eni_by_memory(memory_mib) == ips


@pytest.mark.parametrize(("overrides", "eni_quota", "expected"), [
    ({}, 6, Quota(6, 16)),
    ({}, None, Quota(8, 16)),
    ({"cpus": 4}, None, Quota(4, 16)),
    ({"cpus": 4}, 0, Quota(4, 16)),
    ({"cpus": 32}, None, Quota(8, 16)),
    ({"max_enis": 2}, 6, Quota(2, 16)),
    ({"ips_per_eni": 5, "memory_mib": 1024}, 6, Quota(6, 5)),
])
def test_node_quota_prefers_overrides_then_the_cloud_then_the_fallbacks(
        overrides: dict[str, object], eni_quota: int | None, expected: Quota) -> None:
    assert node_quota(spec(**overrides), eni_quota) == expected


# --- names and indexes -----------------------------------------------------------------------------------------


def test_an_eni_name_carries_cluster_node_and_index() -> None:
    assert eni_name("c1", "node-1", 3) == "cce-c1-node-1-3"
    assert eni_description("c1", "node-1") == "cce-network cluster=c1 node=node-1"


@pytest.mark.parametrize(("name", "parsed"), [
    ("cce-c1-node-1-3", EniName("node-1", 3)),
    ("cce-c1-a.b-c-12", EniName("a.b-c", 12)),
    ("cce-c2-node-1-3", None),
    ("cce-c1-node-1-x", None),
    ("cce-c1-node-1-0", None),
    ("cce-c1-7", None),
    ("manual-eni", None),
])
def test_only_names_of_our_cluster_parse(name: str, parsed: EniName | None) -> None:
    assert parse_eni_name("c1", name) == parsed


@pytest.mark.parametrize(("used", "free"), [([], 1), ([1], 2), ([1, 2, 3], 4), ([2, 3], 1), ([1, 3], 2)])
def test_the_lowest_free_index_is_taken(used: list[int], free: int) -> None:
    assert lowest_free_index(used) == free


@pytest.mark.parametrize(("wanted", "used", "index"), [(3, [1], 3), (1, [1, 2], 3), (None, [1], 2), (0, [], 1)])
def test_an_adopted_eni_keeps_its_named_index_unless_taken(wanted: int | None, used: list[int], index: int) -> None:
    assert index_for_adopted(wanted, used) == index


# --- subnets ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("node_subnets", "mirror", "chosen"), [
    ([], [subnet("sbn-a", 10), subnet("sbn-b", 50)], "sbn-b"),
    ([], [subnet("sbn-a", 50), subnet("sbn-b", 50)], "sbn-a"),
    (["sbn-a"], [subnet("sbn-a", 10), subnet("sbn-b", 50)], "sbn-a"),
    ([], [subnet("sbn-a", 10), subnet("sbn-b", 50, excluded=True)], "sbn-a"),
    ([], [subnet("sbn-a", 10), subnet("sbn-b", 50, zone="zoneB")], "sbn-a"),
])
def test_the_subnet_with_most_free_ips_among_the_candidates_is_chosen(
        node_subnets: list[str], mirror: list[Subnet], chosen: str) -> None:
    picked = choose_subnet(spec(subnet_ids=node_subnets), {s.subnet_id: s for s in mirror})
    assert isinstance(picked, Subnet)
    assert picked.subnet_id == chosen


@pytest.mark.parametrize(("node_subnets", "mirror", "reason"), [
    ([], [], ErrorReason.NO_AVAILABLE_SUBNET),
    (["sbn-x"], [subnet("sbn-a", 10)], ErrorReason.NO_AVAILABLE_SUBNET),
    ([], [subnet("sbn-a", 10, zone="zoneB")], ErrorReason.NO_AVAILABLE_SUBNET),
    ([], [subnet("sbn-a", 10, excluded=True)], ErrorReason.NO_AVAILABLE_SUBNET),
    ([], [subnet("sbn-a", 1), subnet("sbn-b", 0)], ErrorReason.SUBNET_NO_MORE_IP),
])
def test_no_usable_subnet_is_a_coded_error(node_subnets: list[str], mirror: list[Subnet],
                                           reason: ErrorReason) -> None:
    picked = choose_subnet(spec(subnet_ids=node_subnets), {s.subnet_id: s for s in mirror})
    assert not isinstance(picked, Subnet)
    assert picked.reason is reason


# --- stuck ENIs and adoption -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "age_s", "stuck"), [
    (EniState.AVAILABLE, 301, True), (EniState.ATTACHING, 301, True), (EniState.AVAILABLE, 299, False),
    (EniState.INUSE, 3600, False), (EniState.DETACHING, 3600, False),
])
def test_an_eni_pending_longer_than_the_limit_is_stuck(state: EniState, age_s: int, stuck: bool) -> None:
    assert is_stuck(eni("eni-1", 1, 0, state=state, since=NOW - timedelta(seconds=age_s)), NOW, 300) is stuck


@pytest.mark.parametrize(("name", "known", "nodes", "owner"), [
    ("cce-c1-node-1-2", False, {"node-1"}, EniName("node-1", 2)),
    ("cce-c1-node-1-2", True, {"node-1"}, None),
    ("cce-c1-node-9-2", False, {"node-1"}, None),
    ("cce-c2-node-1-2", False, {"node-1"}, None),
    ("someone-elses", False, {"node-1"}, None),
])
def test_an_unknown_eni_of_ours_is_adopted_by_its_named_node(name: str, known: bool, nodes: set[str],
                                                              owner: EniName | None) -> None:
    assert adoption_owner("c1", name, known, nodes) == owner


# --- plans: growth ---------------------------------------------------------------------------------------------


def test_a_node_without_enis_gets_one_created_with_name_description_and_security_groups() -> None:
    result = plan(nrs(security_group_ids=["sg-1", "sg-2"]), [], 10)
    assert result.actions == (create(1, sgs=("sg-1", "sg-2")),)
    assert result.error is None


def test_ips_are_added_to_an_eni_with_room_in_batches_of_at_most_ten() -> None:
    assert plan(nrs(), [eni("eni-1", 1, 0, ip_quota=40)], 25, quota=Quota(8, 40)).actions == (
        AddIps("eni-1", 10), AddIps("eni-1", 10), AddIps("eni-1", 5))


def test_a_refill_is_rounded_up_to_ipams_batch_within_the_eni_room_and_the_node_cap() -> None:
    batched = NodePool(node="node-1", demand=PoolDemand(target_ips=12, refill_batch=10))
    enis = [eni("eni-1", 1, 10, ip_quota=40)]
    assert plan(nrs(), enis, batched, quota=Quota(8, 40)).actions == (AddIps("eni-1", 10),)
    assert plan(nrs(max_pods=15), enis, batched, quota=Quota(8, 40)).actions == (AddIps("eni-1", 5),)
    assert plan(nrs(), [eni("eni-1", 1, 10)], batched).actions == (AddIps("eni-1", 5),)  # the ENI's room
    assert plan(nrs(), enis, 12, quota=Quota(8, 40)).actions == (AddIps("eni-1", 2),)  # no batch asked: exact


def test_a_node_giving_ips_back_gets_no_more_than_it_needs() -> None:
    giving = NodePool(node="node-1", demand=PoolDemand(target_ips=12, refill_batch=10),
                      releasing={"10.1.1.1": ReleaseMark(eni_id="eni-1", state=ReleaseState.MARKED)})
    assert plan(nrs(), [eni("eni-1", 1, 10, ip_quota=40)], giving, quota=Quota(8, 40)).actions == (
        AddIps("eni-1", 2),)


def test_the_fullest_eni_is_filled_first() -> None:
    enis = [eni("eni-1", 1, 5), eni("eni-2", 2, 10)]
    assert plan(nrs(), enis, 20).actions == (AddIps("eni-2", 5),)


def test_when_every_eni_is_full_the_rest_goes_to_a_new_eni_with_the_lowest_free_index() -> None:
    enis = [eni("eni-1", 1, 10), eni("eni-3", 3, 15)]
    assert plan(nrs(), enis, 40).actions == (AddIps("eni-1", 5), create(2))


def test_a_satisfied_node_is_idle_without_error() -> None:
    result = plan(nrs(), [eni("eni-1", 1, 10)], 10)
    assert result.is_idle
    assert result.error is None


def test_a_pending_eni_is_attached_or_awaited_and_no_second_one_is_created_for_what_it_will_hold() -> None:
    available = plan(nrs(), [eni("eni-1", 1, 0, state=EniState.AVAILABLE)], 10)
    assert available.actions == (AttachEni("eni-1"),)
    attaching = plan(nrs(), [eni("eni-1", 1, 0, state=EniState.ATTACHING)], 15)
    assert attaching.actions == (AwaitAttach("eni-1"),)
    assert attaching.waiting


def test_a_need_beyond_the_pending_enis_creates_enis_beside_them_up_to_the_in_flight_limit() -> None:
    """15 secondaries per ENI: 40 needed, 15 coming from the attaching ENI, 25 ask for two more at once."""
    attaching = plan(nrs(), [eni("eni-1", 1, 0, state=EniState.ATTACHING)], 40)
    assert attaching.actions == (AwaitAttach("eni-1"), create(2), create(3))
    assert not attaching.waiting
    limited = plan(nrs(), [eni("eni-1", 1, 0, state=EniState.ATTACHING)], 100,
                   settings=PlanSettings(cluster_id="c1", enis_in_flight=2))
    assert limited.actions == (AwaitAttach("eni-1"), create(2))
    full = plan(nrs(), [eni("eni-1", 1, 0, state=EniState.ATTACHING)], 40, settings=PlanSettings(
        cluster_id="c1", enis_in_flight=1))
    assert full.actions == (AwaitAttach("eni-1"),) and full.waiting


def test_a_node_short_of_several_enis_creates_them_at_once_within_its_quota() -> None:
    assert plan(nrs(), [], 50).actions == (create(1), create(2), create(3), create(4))
    assert plan(nrs(), [], 50, quota=Quota(max_enis=2, ips_per_eni=16)).actions == (create(1), create(2))
    two_subnets = {"sbn-a": subnet("sbn-a", 100), "sbn-b": subnet("sbn-b", 100)}
    spread = plan(nrs(subnet_ids=["sbn-a", "sbn-b"]), [], 30, subnets=two_subnets).actions
    assert spread == (create(1, "sbn-a"), create(2, "sbn-b"))  # each takes the subnet with most room left
    tiny = {"sbn-a": subnet("sbn-a", 13)}  # the first ENI's primary and 12 secondaries take it all
    assert plan(nrs(), [], 20, subnets=tiny).actions == (create(1),)


def test_attaching_secondaries_count_but_available_ones_do_not() -> None:
    enis = [eni("eni-1", 1, 4, state=EniState.ATTACHING), eni("eni-2", 2, 3, state=EniState.AVAILABLE),
            eni("eni-3", 3, 2)]
    assert current_ips(enis, None) == 6


def test_the_eni_quota_stops_creation_with_a_capacity_error() -> None:
    enis = [eni("eni-1", 1, 15), eni("eni-2", 2, 15)]
    result = plan(nrs(), enis, 40, quota=Quota(2, 16))
    assert result.actions == ()
    assert result.error is not None and result.error.reason is ErrorReason.ENI_CAPACITY_EXCEED


def test_foreign_enis_on_the_instance_count_toward_the_quota() -> None:
    result = plan(nrs(), [eni("eni-1", 1, 15)], 20, quota=Quota(2, 16), other_enis=1)
    assert result.error is not None and result.error.reason is ErrorReason.ENI_CAPACITY_EXCEED


def test_adds_stop_at_what_the_subnet_has_left_and_a_full_subnet_is_reported() -> None:
    result = plan(nrs(subnet_ids=["sbn-a"]), [eni("eni-1", 1, 0)], 10, subnets={"sbn-a": subnet("sbn-a", 3)})
    assert result.actions == (AddIps("eni-1", 3),)
    assert result.error is not None and result.error.reason is ErrorReason.SUBNET_NO_MORE_IP


def test_no_subnet_in_the_zone_is_reported() -> None:
    result = plan(nrs(), [], 10, subnets={"sbn-b": subnet("sbn-b", 100, zone="zoneB")})
    assert result.actions == ()
    assert result.error is not None and result.error.reason is ErrorReason.NO_AVAILABLE_SUBNET


def test_a_burstable_node_fills_an_eni_to_capacity() -> None:
    result = plan(nrs(pool=PoolSettings(burstable=True)), [eni("eni-1", 1, 0)], 3)
    assert result.actions == (AddIps("eni-1", 10), AddIps("eni-1", 5))


@pytest.mark.parametrize(("existing", "expected"), [(0, (create(1), create(2))), (1, (create(2),)), (2, ())])
def test_pre_allocated_enis_are_kept_without_demand(existing: int, expected: tuple[CreateEni, ...]) -> None:
    enis = [eni(f"eni-{i + 1}", i + 1, 0) for i in range(existing)]
    result = plan(nrs(), enis, 0, settings=PlanSettings(cluster_id="c1", pre_allocate_enis=2))
    assert result.actions == expected
    assert result.error is None


def test_a_stuck_eni_is_deleted_and_replaced() -> None:
    stuck = eni("eni-1", 1, 0, state=EniState.AVAILABLE, since=NOW - timedelta(seconds=301))
    assert plan(nrs(), [stuck], 10).actions == (DeleteEni("eni-1", "stuck"), create(1))


# --- plans: release --------------------------------------------------------------------------------------------


def test_only_confirmed_releases_are_removed_and_never_a_primary() -> None:
    holder = eni("eni-1", 1, 3)
    demand = pool(2, {"10.1.1.1": ReleaseState.CONFIRMED, "10.1.1.2": ReleaseState.MARKED,
                      "10.1.0.1": ReleaseState.CONFIRMED})
    assert plan(nrs(), [holder], demand).actions == (RemoveIps("eni-1", ("10.1.1.1",)),)


def test_confirmed_releases_are_removed_in_batches_and_do_not_count_toward_the_target() -> None:
    holder = eni("eni-1", 1, 15)
    gone = {f"10.1.1.{i + 1}": ReleaseState.CONFIRMED for i in range(12)}
    actions = plan(nrs(), [holder], pool(5, gone)).actions
    assert [len(a.ips) for a in actions if isinstance(a, RemoveIps)] == [10, 2]
    assert [a for a in actions if isinstance(a, AddIps)] == [AddIps("eni-1", 2)]


# --- plans: node removal ---------------------------------------------------------------------------------------


def test_a_removed_node_waits_for_the_grace_period() -> None:
    result = plan_removal("node-1", [eni("eni-1", 1, 3)], NOW - timedelta(seconds=4), PlanSettings(), NOW)
    assert result.is_idle
    assert result.waiting


def test_a_removed_node_loses_every_eni_then_its_provision_record() -> None:
    marked = NOW - timedelta(seconds=6)
    enis = [eni("eni-2", 2, 0, state=EniState.AVAILABLE), eni("eni-1", 1, 3)]
    assert plan_removal("node-1", enis, marked, PlanSettings(), NOW).actions == (
        DeleteEni("eni-1", "node-removed"), DeleteEni("eni-2", "node-removed"))
    assert plan_removal("node-1", [], marked, PlanSettings(), NOW).actions == (DropProvision(),)
    assert plan_removal("node-1", [], marked, PlanSettings(), NOW, has_provision=False).is_idle


def test_a_vpc_scan_groups_attached_enis_by_instance_and_sorts_unattached_ones_of_ours() -> None:
    def cloud(eni_id: str, name: str, status: EniState, instance_id: str | None = None) -> CloudEni:
        return CloudEni(eni_id=eni_id, name=name, subnet_id="sbn-1", vpc_id="vpc-1", zone="zoneA",
                        mac="02:00:00:00:00:01", status=status, instance_id=instance_id)

    ours_on_1 = cloud("eni-a", eni_name("c1", "n1", 1), EniState.INUSE, "i-1")
    foreign_on_1 = cloud("eni-b", "someone-elses", EniState.INUSE, "i-1")
    attaching_on_2 = cloud("eni-c", eni_name("c1", "n2", 1), EniState.ATTACHING, "i-2")
    to_adopt = cloud("eni-d", eni_name("c1", "n2", 2), EniState.AVAILABLE)
    orphan = cloud("eni-e", eni_name("c1", "gone", 1), EniState.AVAILABLE)
    known = cloud("eni-f", eni_name("c1", "n1", 2), EniState.AVAILABLE)
    other_cluster = cloud("eni-g", eni_name("c2", "n1", 1), EniState.AVAILABLE)

    scan = read_scan([ours_on_1, foreign_on_1, attaching_on_2, to_adopt, orphan, known, other_cluster], "c1",
                     known={"eni-f"}, live_nodes={"n1", "n2"})

    assert scan.attached == {"i-1": [ours_on_1, foreign_on_1], "i-2": [attaching_on_2]}
    assert scan.hints == {"n2": [to_adopt]}
    assert scan.orphans == [orphan]

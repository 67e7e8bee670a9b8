"""Unit tier (pure logic, no I/O): PodSubnetTopologySpread — which spread selects a pod (services/ipam/spread.py),
the claim within its subnets and the demand it makes (spread_claim.py), the ordinary pool keeping off dedicated ENIs
and reserved ranges (domain.py), eni_manager's plan for the spreads' subnets (services/eni_manager/spread.py), and
the bridge's reading, validation and status of the objects (services/k8s_bridge/spreads.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from schemas.errors import RETRYABLE, ErrorReason
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    Eni,
    EniState,
    LabelRequirement,
    LabelSelector,
    NetResourceSet,
    NodePool,
    NodeSpec,
    PodInfo,
    PrivateIp,
    SelectorOperator,
    SpreadSubnet,
    Subnet,
    SubnetSpread,
)
from services.eni_manager.domain import AddIps, CreateEni, PlanSettings, Quota, plan_node
from services.eni_manager.modes import plan_live_node
from services.eni_manager.spread import plan_spread
from services.ipam import domain, spread
from services.ipam.spread_claim import claim_in_spread, exhausted, unsatisfiable
from services.k8s_bridge import spreads as bridge

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NET = {"sbn-own": IPv4Network("10.0.0.0/24"), "sbn-a": IPv4Network("10.1.0.0/24"),
       "sbn-b": IPv4Network("10.2.0.0/24"), "sbn-far": IPv4Network("10.9.0.0/24")}
ZONE = {"sbn-own": "zoneA", "sbn-a": "zoneA", "sbn-b": "zoneA", "sbn-far": "zoneB"}
SPEC = NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=8, memory_mib=16384,
                subnet_ids=["sbn-own"], max_enis=3)
MIRROR = {k: Subnet(subnet_id=k, vpc_id="vpc-1", zone=ZONE[k], cidr=c, available_ips=200) for k, c in NET.items()}


def eni(eni_id: str, subnet_id: str, hosts: list[int], index: int, state: EniState = EniState.INUSE) -> Eni:
    net = NET[subnet_id]
    private = [PrivateIp(ip=net[200 + index], primary=True), *(PrivateIp(ip=net[h]) for h in hosts)]
    return Eni(eni_id=eni_id, node="node-1", instance_id="i-1", subnet_id=subnet_id, subnet_cidr=net,
               zone=ZONE[subnet_id], state=state, private_ips=private, ip_quota=8, index=index)


def facts(*enis: Eni, spreads: tuple[SubnetSpread, ...] = ()) -> domain.NodeFacts:
    return domain.NodeFacts(node="node-1", spec=SPEC, enis=enis, reserved=spread.reserved_ranges(spreads))


def psts(name: str, *subnets: tuple[str, int] | tuple[str, int, list[str]], namespace: str = "team",
         priority: int = 0, labels: dict[str, str] | None = None,
         namespaces: LabelSelector | None = None) -> SubnetSpread:
    subs = [SpreadSubnet(subnet_id=s[0], priority=s[1], ranges=list(s[2]) if len(s) > 2 else [],  # type: ignore[misc]
                         zone=ZONE[s[0]], cidr=NET[s[0]]) for s in subnets]
    return SubnetSpread(namespace=namespace, name=name, priority=priority, subnets=subs,
                        pod_selector=LabelSelector(match_labels=labels or {}), namespace_selector=namespaces)


def pod(namespace: str = "team", labels: dict[str, str] | None = None,
        ns_labels: dict[str, str] | None = None) -> PodInfo:
    return PodInfo(namespace=namespace, name="web-0", node="node-1", labels=labels or {},
                   namespace_labels=ns_labels or {})


# ---- selection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("operator", "values", "labels", "ok"), [
    (SelectorOperator.IN, ["a", "b"], {"tier": "a"}, True),
    (SelectorOperator.IN, ["a"], {}, False),
    (SelectorOperator.NOT_IN, ["a"], {"tier": "b"}, True),
    (SelectorOperator.NOT_IN, ["a"], {}, True),
    (SelectorOperator.EXISTS, [], {"tier": ""}, True),
    (SelectorOperator.DOES_NOT_EXIST, [], {"tier": "x"}, False),
])
def test_label_selector_expressions_follow_kubernetes(operator: SelectorOperator, values: list[str],
                                                     labels: dict[str, str], ok: bool) -> None:
    selector = LabelSelector(match_expressions=[LabelRequirement(key="tier", operator=operator, values=values)])
    assert spread.matches(selector, labels) is ok


def test_a_namespaced_spread_wins_over_cluster_wide_ones_and_priority_orders_each_scope() -> None:
    wide_low = psts("wide-low", ("sbn-a", 0), namespace="", priority=1)
    wide_high = psts("wide-high", ("sbn-b", 0), namespace="", priority=5,
                     namespaces=LabelSelector(match_labels={"env": "prod"}))
    own_low = psts("own-low", ("sbn-a", 0), labels={"app": "web"})
    own_high = psts("own-high", ("sbn-b", 0), labels={"app": "web"}, priority=3)
    other_ns = psts("elsewhere", ("sbn-b", 0), namespace="other", priority=99)
    everything = [wide_low, wide_high, own_low, own_high, other_ns]
    assert spread.select_spread(everything, pod(labels={"app": "web"})) is own_high
    assert spread.select_spread(everything, pod(labels={"app": "db"}, ns_labels={"env": "prod"})) is wide_high
    assert spread.select_spread(everything, pod(labels={"app": "db"}, ns_labels={"env": "dev"})) is wide_low
    assert spread.select_spread([own_low], pod(labels={"app": "db"})) is None


# ---- claims --------------------------------------------------------------------------------------------------------


def test_a_selected_pod_takes_an_ip_of_the_highest_priority_subnet_then_the_one_with_most_free() -> None:
    f = facts(eni("eni-own", "sbn-own", [10, 11], 1), eni("eni-a", "sbn-a", [10], 2),
              eni("eni-b", "sbn-b", [10, 11], 3))
    equal = psts("p", ("sbn-a", 0), ("sbn-b", 0))
    claim = claim_in_spread(NodePool(node="node-1"), f, equal, [], MIRROR, "k1", T0, wait=True)
    assert claim.slot is not None and claim.slot.eni is not None and claim.slot.eni.subnet_id == "sbn-b"  # most free
    ranked = psts("p", ("sbn-a", 5), ("sbn-b", 0))
    claim = claim_in_spread(NodePool(node="node-1"), f, ranked, [], MIRROR, "k1", T0, wait=True)
    assert claim.slot is not None and str(claim.slot.ip) == "10.1.0.10"  # priority first
    assert claim.pool.allocated == {"10.1.0.10": "k1"}


def test_an_ordinary_pod_never_takes_a_dedicated_eni_or_a_reserved_range_ip() -> None:
    ranged = psts("p", ("sbn-own", 0, ["10.0.0.16/30"]))
    f = facts(eni("eni-own", "sbn-own", [10, 17], 1), eni("eni-a", "sbn-a", [10, 11], 2), spreads=(ranged,))
    view = domain.PoolView(NodePool(node="node-1"), f, T0)
    assert [str(s.ip) for s in view.free_slots] == ["10.0.0.10"]
    # a spread's claims on dedicated ENIs are not the ordinary pool's
    pool = NodePool(node="node-1", allocated={"10.1.0.10": "k-spread", "10.0.0.10": "k-plain"})
    assert domain.PoolView(pool, f, T0).used == 1
    # the range spread's pod gets the range IP only
    claim = claim_in_spread(NodePool(node="node-1"), f, ranged, [], MIRROR, "k1", T0, wait=True)
    assert claim.slot is not None and str(claim.slot.ip) == "10.0.0.17"


def test_a_pod_with_no_free_ip_waits_for_one_subnet_and_the_demand_asks_for_it() -> None:
    f = facts(eni("eni-own", "sbn-own", [10], 1))
    ranged = psts("p", ("sbn-a", 9, ["10.1.0.32/28"]), ("sbn-b", 1))
    claim = claim_in_spread(NodePool(node="node-1"), f, ranged, [], MIRROR, "k1", T0, wait=True)
    assert claim.slot is None and claim.changed and not claim.at_capacity
    assert claim.pool.subnet_waiting["k1"].subnet_id == "sbn-a"
    demand = claim.pool.demand.subnets["sbn-a"]
    assert (demand.target_ips, demand.waiting, demand.ranges) == (1, 1, [IPv4Network("10.1.0.32/28")])
    assert claim.pool.demand.pending == 0  # not the ordinary pool's pending
    # once it holds an IP there, the wait is gone and the demand keeps what it uses
    f2 = facts(eni("eni-own", "sbn-own", [10], 1), eni("eni-a", "sbn-a", [33], 2))
    claimed = claim_in_spread(claim.pool, f2, ranged, [], MIRROR, "k1", T0, wait=True, resume=True)
    assert claimed.slot is not None and str(claimed.slot.ip) == "10.1.0.33"
    assert not claimed.pool.subnet_waiting and claimed.pool.demand.subnets["sbn-a"].target_ips == 1


def test_a_range_the_node_has_used_up_sends_the_wait_to_the_next_subnet() -> None:
    ranged = psts("p", ("sbn-a", 9, ["10.1.0.16/31"]), ("sbn-b", 1))
    full = facts(eni("eni-own", "sbn-own", [10], 1), eni("eni-a", "sbn-a", [16, 17], 2))
    pool = NodePool(node="node-1", allocated={"10.1.0.16": "k-a", "10.1.0.17": "k-b"})
    claim = claim_in_spread(pool, full, ranged, [], MIRROR, "k1", T0, wait=True)
    assert claim.slot is None and claim.pool.subnet_waiting["k1"].subnet_id == "sbn-b"
    assert claim.pool.demand.subnets["sbn-b"].target_ips == 1 and "sbn-a" in claim.pool.demand.subnets  # kept


def test_a_node_that_cannot_grow_in_the_subnets_fails_at_once_and_another_zone_is_unsatisfiable() -> None:
    full = facts(eni("eni-own", "sbn-own", [10], 1), eni("eni-x", "sbn-own", [11], 2), eni("eni-y", "sbn-own", [12], 3))
    p = psts("p", ("sbn-a", 0))
    claim = claim_in_spread(NodePool(node="node-1"), full, p, [], MIRROR, "k1", T0, wait=True)
    assert claim.at_capacity and claim.slot is None and not claim.pool.subnet_waiting
    err = exhausted(p, full, 0.0)
    assert err.reason is ErrorReason.PSTS_SUBNET_EXHAUSTED and "sbn-a" in err.message and err.retryable
    far = psts("far", ("sbn-far", 0))
    cannot = unsatisfiable(far, full)
    assert cannot is not None and cannot.reason is ErrorReason.SUBNET_NOT_IN_ZONE
    assert "sbn-far (zoneB)" in cannot.message and ErrorReason.SUBNET_NOT_IN_ZONE not in RETRYABLE
    assert unsatisfiable(p, full) is None
    empty = {**MIRROR, "sbn-a": MIRROR["sbn-a"].model_copy(update={"available_ips": 0})}
    roomy = facts(eni("eni-own", "sbn-own", [10], 1))
    assert claim_in_spread(NodePool(node="node-1"), roomy, p, [], empty, "k1", T0, wait=True).at_capacity


# ---- eni_manager ---------------------------------------------------------------------------------------------------

PLAN = PlanSettings(cluster_id="c1")
QUOTA = Quota(3, 8)


def nrs() -> NetResourceSet:
    return NetResourceSet(name="node-1", spec=SPEC)


def waiting_pool(f: domain.NodeFacts, p: SubnetSpread) -> NodePool:
    return claim_in_spread(NodePool(node="node-1"), f, p, [], MIRROR, "k1", T0, wait=True).pool


def test_eni_manager_creates_an_eni_in_the_wanted_subnet_and_the_ordinary_plan_ignores_it() -> None:
    own = eni("eni-own", "sbn-own", [10, 11], 1)
    pool = waiting_pool(facts(own), psts("p", ("sbn-a", 0)))
    actions = plan_spread(nrs(), [own], pool, QUOTA, MIRROR, PLAN, T0)
    created = [a for a in actions if isinstance(a, CreateEni)]
    assert len(created) == 1 and created[0].subnet_id == "sbn-a" and created[0].index == 2
    attaching = eni("eni-a", "sbn-a", [], 2, state=EniState.ATTACHING)
    whole = plan_live_node(nrs(), [own, attaching], pool, QUOTA, MIRROR, PLAN, T0)
    assert not any(isinstance(a, CreateEni) for a in whole.actions)  # one ENI in flight per node
    ordinary = plan_node(nrs(), [own, eni("eni-a", "sbn-a", [10, 11, 12], 2)], None, QUOTA, MIRROR, PLAN, T0)
    assert all(getattr(a, "eni_id", "") != "eni-a" for a in ordinary.actions)


def test_eni_manager_adds_named_range_ips_to_an_eni_of_the_subnet() -> None:
    own, dedicated = eni("eni-own", "sbn-own", [10], 1), eni("eni-a", "sbn-a", [], 2)
    pool = waiting_pool(facts(own, dedicated), psts("p", ("sbn-a", 0, ["10.1.0.32/30"])))
    actions = plan_spread(nrs(), [own, dedicated], pool, QUOTA, MIRROR, PLAN, T0, taken={"10.1.0.33"})
    assert actions == [AddIps("eni-a", 1, ips=("10.1.0.32",))]
    plain = waiting_pool(facts(own, dedicated), psts("p", ("sbn-a", 0)))
    assert plan_spread(nrs(), [own, dedicated], plain, QUOTA, MIRROR, PLAN, T0) == [AddIps("eni-a", 1)]
    at_quota = Quota(2, 8)  # no ENI can be added, but adding to the subnet's ENI needs none
    assert plan_spread(nrs(), [own, dedicated], plain, at_quota, MIRROR, PLAN, T0) == [AddIps("eni-a", 1)]
    assert plan_spread(nrs(), [own], waiting_pool(facts(own), psts("p", ("sbn-b", 0))), Quota(1, 8), MIRROR, PLAN,
                       T0) == []  # no ENI of the subnet and no room for one


# ---- the bridge: objects, validation, status ------------------------------------------------------------------


def obj(subnets: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "team", "uid": "u1", "generation": 2},
            "spec": {"subnets": subnets, **spec}}


def test_the_bridge_validates_subnets_against_the_vpc_with_clear_errors() -> None:
    parsed = bridge.parse(obj([{"subnetId": "sbn-a", "ipRanges": ["10.1.0.16/28"], "priority": 2},
                               {"subnetId": "sbn-gone"}, {"subnetId": "sbn-b", "ipRanges": ["10.3.0.0/28"]}],
                              podSelector={"matchLabels": {"app": "web"}}), cluster_wide=False)
    vpc: dict[str, Subnet | None] = {"sbn-a": MIRROR["sbn-a"], "sbn-gone": None, "sbn-b": MIRROR["sbn-b"]}
    checked = bridge.validate(parsed, vpc)
    assert checked is not None and not checked.is_valid
    assert [s.subnet_id for s in checked.usable_subnets] == ["sbn-a"]
    assert checked.errors == ["subnet sbn-gone: does not exist in the VPC",
                              "subnet sbn-b: IP ranges 10.3.0.0/28 are not inside the subnet's CIDR 10.2.0.0/24"]
    status = bridge.status(checked, {}, MIRROR, set(), [], T0)
    assert status["valid"] is False and status["conditions"][0]["reason"] == "SubnetNotFound"
    good = bridge.validate(bridge.parse(obj([{"subnetId": "sbn-a"}]), False), vpc)
    assert good is not None and good.is_valid and good.usable_subnets[0].zone == "zoneA"


@pytest.mark.parametrize(("raw", "error"), [
    (obj([]), "spec.subnets: at least one subnet is needed"),
    (obj([{"subnetId": "sbn-a"}], strategy="Fixed"), "spec.strategy: 'Fixed' is not supported (Elastic)"),
    (obj([{"subnetId": "sbn-a", "ipRanges": ["not-a-cidr"]}]), "spec.subnets[0] (sbn-a): ranges.0"),
    (obj([{"subnetId": "sbn-a"}], podSelector={"matchExpressions": [{"key": "a", "operator": "Near"}]}),
     "spec.podSelector: not a label selector"),
])
def test_malformed_objects_say_what_is_wrong_and_never_raise(raw: dict[str, Any], error: str) -> None:
    parsed = bridge.parse(raw, cluster_wide=False)
    assert any(e.startswith(error) for e in parsed.errors), parsed.errors


def test_the_status_counts_ips_used_per_subnet_and_free_in_ranges() -> None:
    ranged = psts("p", ("sbn-a", 0, ["10.1.0.16/30"]), ("sbn-b", 0))
    eps = [CceEndpoint(node="node-1", container_id=f"c{i}", ifname="eth0", namespace="team", pod=f"p{i}", psts=key,
                       addresses=[EndpointAddress(ip=ip, gateway=IPv4Address("10.1.0.1"), subnet_id=sid)])
           for i, (key, ip, sid) in enumerate([("team.p", IPv4Address("10.1.0.17"), "sbn-a"),
                                               ("team.p", IPv4Address("10.2.0.9"), "sbn-b"),
                                               ("team.other", IPv4Address("10.2.0.8"), "sbn-b")])]
    used = bridge.used_by_subnet("team.p", eps)
    status = bridge.status(ranged, used, MIRROR, {"10.1.0.17"}, [], T0)
    rows = {r["subnetId"]: r for r in status["subnets"]}
    assert (rows["sbn-a"]["used"], rows["sbn-a"]["free"]) == (1, 3)  # .16 .17 .18 .19, less the held .17
    assert (rows["sbn-b"]["used"], rows["sbn-b"]["free"]) == (1, 200) and status["usedIPs"] == 2


def test_spreads_of_one_scope_with_the_same_selector_and_priority_are_ambiguous() -> None:
    a, b = psts("a", ("sbn-a", 0), labels={"x": "1"}), psts("b", ("sbn-b", 0), labels={"x": "1"})
    c = psts("c", ("sbn-b", 0), labels={"x": "1"}, priority=1)
    assert bridge.ambiguous([a, b, c]) == {"team.a": ["team.b"], "team.b": ["team.a"]}

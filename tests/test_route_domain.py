"""Unit tier: route_manager's pure domain: start-up refusals, CIDR choice, the route diff and idle CIDRs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from cloud.port import CloudRouteRule
from schemas.records import NodeCidr, NodeCidrState
from services.route_manager.domain import (
    CidrUse,
    ConfigError,
    ConflictPolicy,
    DesiredRule,
    check_against_vpc,
    check_blocks,
    description_for,
    first_cidr,
    idle_cidrs,
    next_free_cidr,
    owner_of,
    plan_routes,
    pool_size,
)
from services.route_manager.settings import RouteManagerSettings

N = IPv4Network
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLUSTER = "c1"


def rule(dest: str, hop: str, desc: str = "", rid: str = "") -> CloudRouteRule:
    return CloudRouteRule(rule_id=rid or f"rr-{dest}-{hop}", route_table_id="rt-1", destination=dest,
                          next_hop_id=hop, description=desc)


def ours(dest: str, hop: str, node: str = "n1") -> CloudRouteRule:
    return rule(dest, hop, description_for(CLUSTER, node))


def want(dest: str, hop: str, node: str = "n1") -> DesiredRule:
    return DesiredRule(N(dest), node, hop, description_for(CLUSTER, node))


# ---- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("blocks", "mask", "message"), [
    ([], 24, "no cluster CIDR block"),
    (["172.16.0.0/16", "172.16.128.0/17"], 24, "overlap"),
    (["172.16.0.0/16"], 12, "does not fit"),
    (["172.16.0.0/24"], 31, "out of range"),
])
def test_bad_blocks_or_masks_are_refused(blocks: list[str], mask: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_blocks([N(b) for b in blocks], mask)


def test_blocks_overlapping_the_vpc_or_a_subnet_are_refused() -> None:
    with pytest.raises(ConfigError, match="VPC CIDR"):
        check_against_vpc([N("10.1.0.0/16")], N("10.0.0.0/8"), {})
    with pytest.raises(ConfigError, match="subnet sbn-2"):
        check_against_vpc([N("192.168.0.0/16")], N("10.0.0.0/8"), {"sbn-1": N("10.0.0.0/20"),
                                                                    "sbn-2": N("192.168.4.0/24")})
    check_against_vpc([N("172.16.0.0/16")], N("10.0.0.0/8"), {"sbn-1": N("10.0.0.0/20")})


def test_settings_refuse_overlaps_and_flapping_thresholds() -> None:
    with pytest.raises(ValueError, match="overlap"):
        RouteManagerSettings(cluster_cidrs="172.16.0.0/16,172.16.1.0/24")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flap"):
        RouteManagerSettings(low_free_threshold=16, release_free_threshold=16)
    s = RouteManagerSettings(cluster_cidrs="172.16.0.0/16, 172.20.0.0/20")  # type: ignore[arg-type]
    assert s.cluster_cidrs == [N("172.16.0.0/16"), N("172.20.0.0/20")]


# ---- choosing CIDRs ----------------------------------------------------------------------------------------------


def test_cidrs_are_handed_out_in_block_order_skipping_used_and_foreign_ones() -> None:
    blocks = [N("172.16.0.0/23"), N("172.20.0.0/24")]
    assert pool_size(blocks, 24) == 3
    assert next_free_cidr(blocks, 24, set()) == N("172.16.0.0/24")
    assert next_free_cidr(blocks, 24, {N("172.16.0.0/24")}, avoid={N("172.16.1.0/24")}) == N("172.20.0.0/24")
    assert next_free_cidr(blocks, 24, {N("172.16.0.0/24"), N("172.16.1.0/24"), N("172.20.0.0/24")}) is None


def test_the_first_cidr_carries_the_router_address() -> None:
    a = NodeCidr(cidr=N("172.16.5.0/24"), node="n1", allocated_at=T0 + timedelta(seconds=1))
    b = NodeCidr(cidr=N("172.16.9.0/24"), node="n1", allocated_at=T0)
    first = first_cidr([a, b])
    assert first is b and b.router_ip == IPv4Address("172.16.9.1")


# ---- the route diff ----------------------------------------------------------------------------------------------


def test_missing_rules_are_created_and_right_ones_are_programmed() -> None:
    diff = plan_routes([want("172.16.0.0/24", "i-1"), want("172.16.1.0/24", "i-2", "n2")],
                       [ours("172.16.0.0/24", "i-1")], CLUSTER)
    assert [d.destination for d in diff.create] == [N("172.16.1.0/24")]
    assert list(diff.programmed) == [N("172.16.0.0/24")]
    assert not diff.delete and not diff.conflicts


def test_stale_rules_of_ours_are_deleted_and_others_never_touched() -> None:
    foreign = rule("172.16.7.0/24", "i-9", "ops")
    other_cluster = rule("172.16.8.0/24", "i-9", description_for("c2", "n1"))
    diff = plan_routes([], [ours("172.16.3.0/24", "i-1"), foreign, other_cluster], CLUSTER)
    assert [r.destination for r in diff.delete] == ["172.16.3.0/24"]


def test_a_foreign_rule_on_our_destination_is_a_conflict_under_every_policy() -> None:
    for policy in ConflictPolicy:
        diff = plan_routes([want("172.16.0.0/24", "i-1")], [rule("172.16.0.0/24", "i-9", "ops")], CLUSTER, policy)
        assert not diff.create and not diff.delete
        assert [(c.destination, c.ours) for c in diff.conflicts] == [(N("172.16.0.0/24"), False)]


def test_a_stale_rule_of_ours_with_another_next_hop_is_reported_or_taken_over() -> None:
    actual = [ours("172.16.0.0/24", "i-old", "gone-node")]
    report = plan_routes([want("172.16.0.0/24", "i-1")], actual, CLUSTER)
    assert report.conflicts[0].ours and not report.create and not report.delete
    takeover = plan_routes([want("172.16.0.0/24", "i-1")], actual, CLUSTER, ConflictPolicy.TAKEOVER)
    assert takeover.delete == actual and [d.next_hop for d in takeover.create] == ["i-1"]
    assert not takeover.conflicts


def test_ownership_is_read_from_the_description() -> None:
    assert owner_of(description_for(CLUSTER, "node.a"), CLUSTER) == "node.a"
    assert owner_of(description_for("c2", "n"), CLUSTER) is None
    assert owner_of("cce-route:c1:", CLUSTER) is None


# ---- idle CIDRs ---------------------------------------------------------------------------------------------------


def cidr(net: str, seconds: int, state: NodeCidrState = NodeCidrState.ACTIVE) -> NodeCidr:
    return NodeCidr(cidr=N(net), node="n1", allocated_at=T0 + timedelta(seconds=seconds), state=state)


def test_idle_extra_cidrs_go_back_but_never_the_first_nor_below_the_release_threshold() -> None:
    first, second, third = cidr("172.16.0.0/27", 0), cidr("172.16.0.32/27", 1), cidr("172.16.0.64/27", 2)
    uses = [CidrUse(first, used=3, cooling=0), CidrUse(second, 0, 0), CidrUse(third, 0, 0)]
    # first has 29 - 3 = 26 free: both idle ones can go at threshold 20, only one at 40 (26 + 30 = 56 - 30)
    assert [c.cidr for c in idle_cidrs(uses, 20)] == [third.cidr, second.cidr]
    assert [c.cidr for c in idle_cidrs(uses, 40)] == [third.cidr]
    assert idle_cidrs(uses, 200) == []
    busy = [CidrUse(first, 0, 0), CidrUse(second, 1, 0), CidrUse(third, 0, 2)]
    assert idle_cidrs(busy, 0) == []
    assert idle_cidrs([CidrUse(first, 0, 0)], 0) == []

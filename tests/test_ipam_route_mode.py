"""Unit tier: ipam's pool in vpc-route mode (pure): which addresses a node may hand out, when it asks for another
CIDR and with which request id, why an allocation fails, and the node's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from schemas.base import InstanceType, NetworkMode
from schemas.errors import ErrorReason
from schemas.messages import AllocateRequest, PodRef
from schemas.records import (
    ClusterCidrPool,
    NodeCidr,
    NodeCidrState,
    NodePool,
    NodeSpec,
    NodeStatus,
    RouteRule,
    RouteRuleState,
)
from schemas.subjects import expand_request_id
from services.ipam import domain, route_mode

N = IPv4Network
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODE = "node-1"


def cidr(net: str, nth: int, state: NodeCidrState = NodeCidrState.ACTIVE) -> NodeCidr:
    return NodeCidr(cidr=N(net), node=NODE, state=state, allocated_at=T0 + timedelta(seconds=nth),
                    request_id=expand_request_id(NODE, nth))


def route(net: str, state: RouteRuleState = RouteRuleState.PROGRAMMED,
          reason: ErrorReason | None = None) -> RouteRule:
    return RouteRule(destination=N(net), node=NODE, route_table_id="rt-1", next_hop_instance="i-1",
                     description="d", state=state, reason=reason, message="why")


def facts(cidrs: list[NodeCidr], routes: list[RouteRule], max_pods: int = 110, low_free: int = 8,
          max_cidrs: int = 8) -> domain.NodeFacts:
    spec = NodeSpec(instance_id="i-1", instance_type=InstanceType.BCC, zone="z", cpus=4, memory_mib=8192,
                    max_pods=max_pods, mode=NetworkMode.VPC_ROUTE)
    pool = ClusterCidrPool(blocks=[N("172.16.0.0/16")], node_mask=27, low_free_threshold=low_free,
                           max_cidrs_per_node=max_cidrs)
    return domain.NodeFacts(node=NODE, spec=spec, cidrs=tuple(cidrs), routes=tuple(routes), cidr_pool=pool)


def claim_n(pool: NodePool, f: domain.NodeFacts, n: int) -> tuple[NodePool, list[domain.IpSlot]]:
    slots = []
    for i in range(n):
        got = domain.claim_ip(pool, f, f"{NODE}.c{i}.eth0", T0, wait=False)
        assert got.slot is not None
        pool = got.pool
        slots.append(got.slot)
    return pool, slots


def test_pods_get_routed_addresses_but_never_the_router_address() -> None:
    f = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.32/27", 2)], [route("172.16.0.0/27")])
    view = domain.PoolView(NodePool(node=NODE), f, T0)
    assert f.router_ip == IPv4Address("172.16.0.1")
    assert view.free == 29  # 30 hosts of the routed CIDR, less the router; the unrouted one is not usable yet
    pool, slots = claim_n(NodePool(node=NODE), f, 29)
    assert IPv4Address("172.16.0.1") not in {s.ip for s in slots}
    assert all(s.cidr == N("172.16.0.0/27") and s.eni is None for s in slots)
    assert domain.claim_ip(pool, f, "late", T0, wait=False).slot is None


def test_a_released_address_cools_down_and_a_repeat_claim_returns_the_held_one() -> None:
    f = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")])
    pool, (slot,) = claim_n(NodePool(node=NODE), f, 1)
    again = domain.claim_ip(pool, f, f"{NODE}.c0.eth0", T0, wait=False)
    assert again.reused and again.slot == slot
    released, ips = domain.release_ip(pool, f"{NODE}.c0.eth0", 30.0, T0)
    assert ips == [slot.ip]
    other = domain.claim_ip(released, f, "other", T0, wait=False)
    assert other.slot is not None and other.slot.ip != slot.ip


def test_addresses_of_a_releasing_cidr_are_not_handed_out_but_stay_held() -> None:
    f = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.32/27", 2)], [route("172.16.0.0/27"),
                                                                        route("172.16.0.32/27")])
    pool = NodePool(node=NODE, allocated={"172.16.0.40": "held"})
    marked = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.32/27", 2, NodeCidrState.RELEASING)],
                   list(f.routes))
    assert domain.PoolView(pool, marked, T0).free == 29
    assert domain.claim_ip(pool, marked, "held", T0, wait=False).slot == domain.IpSlot(
        IPv4Address("172.16.0.40"), cidr=N("172.16.0.32/27"))


def test_the_node_asks_for_its_next_cidr_before_it_runs_dry() -> None:
    f = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")])
    pool, _ = claim_n(NodePool(node=NODE), f, 21)  # 8 free: at the threshold, no ask yet
    assert route_mode.needs_cidr(domain.PoolView(pool, f, T0)) is None
    pool = domain.claim_ip(pool, f, "one-more", T0, wait=False).pool
    ask = route_mode.needs_cidr(domain.PoolView(pool, f, T0))
    assert ask is not None and ask.request_id == expand_request_id(NODE, 2) and ask.free == 7
    # the new CIDR, while its rule is being written, counts: no second ask
    coming = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.32/27", 2)], [route("172.16.0.0/27")])
    assert route_mode.needs_cidr(domain.PoolView(pool, coming, T0)) is None


def test_request_ids_follow_the_highest_cidr_number_not_the_count() -> None:
    f = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.64/27", 3)], [route("172.16.0.0/27")])
    assert route_mode.next_nth(f) == 4


def test_no_ask_when_every_pod_already_fits_or_at_the_cidr_maximum_or_before_the_first() -> None:
    small = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")], max_pods=20)
    pool, _ = claim_n(NodePool(node=NODE), small, 20)
    assert route_mode.needs_cidr(domain.PoolView(pool, small, T0)) is None
    capped = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")], max_cidrs=1)
    pool, _ = claim_n(NodePool(node=NODE), capped, 25)
    assert route_mode.needs_cidr(domain.PoolView(pool, capped, T0)) is None
    assert route_mode.needs_cidr(domain.PoolView(NodePool(node=NODE), facts([], []), T0)) is None


def test_failures_carry_the_reason_the_node_has_no_address() -> None:
    status = NodeStatus()
    at_max = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")], max_pods=3)
    assert route_mode.failure(at_max, status, 3, 1).reason is ErrorReason.IP_POOL_EXHAUSTED
    conflict = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27", RouteRuleState.CONFLICT,
                                                        ErrorReason.ROUTE_CONFLICT)])
    assert route_mode.failure(conflict, status, 0, 1).reason is ErrorReason.ROUTE_CONFLICT
    quota = facts([cidr("172.16.0.0/27", 1), cidr("172.16.0.32/27", 2)],
                  [route("172.16.0.0/27"), route("172.16.0.32/27", RouteRuleState.PENDING,
                                                 ErrorReason.ROUTE_QUOTA_EXCEEDED)])
    assert route_mode.failure(quota, status, 29, 1).reason is ErrorReason.ROUTE_QUOTA_EXCEEDED
    assert route_mode.failure(facts([], []), status, 0, 1).reason is ErrorReason.WAIT_NODE_CIDR
    full = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")])
    exhausted = route_mode.with_condition(status, ErrorReason.CIDR_POOL_EXHAUSTED, "no free /27")
    assert exhausted is not None
    assert route_mode.failure(full, exhausted, 29, 1).reason is ErrorReason.CIDR_POOL_EXHAUSTED
    cleared = route_mode.with_condition(exhausted, None, "")
    assert cleared is not None and route_mode.failure(full, cleared, 29, 1).reason is ErrorReason.IP_POOL_EXHAUSTED
    assert route_mode.with_condition(cleared, None, "") is None


def test_the_status_carries_cidrs_router_and_readiness_once_the_first_rule_is_programmed() -> None:
    pending = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27", RouteRuleState.PENDING)])
    status = route_mode.node_status(NodeStatus(), domain.PoolView(NodePool(node=NODE), pending, T0))
    assert status is not None and not status.ready and status.router_ip == IPv4Address("172.16.0.1")
    routed = facts([cidr("172.16.0.0/27", 1)], [route("172.16.0.0/27")])
    status = route_mode.node_status(status, domain.PoolView(NodePool(node=NODE), routed, T0))
    assert status is not None and status.ready and status.cidrs == [N("172.16.0.0/27")]
    assert route_mode.node_status(status, domain.PoolView(NodePool(node=NODE), routed, T0)) is None


def test_a_route_mode_endpoint_uses_the_router_as_gateway_and_no_eni() -> None:
    req = AllocateRequest(node=NODE, container_id="c1", pod=PodRef(namespace="ns", name="p"))
    slot = domain.IpSlot(IPv4Address("172.16.0.5"), cidr=N("172.16.0.0/27"))
    ep = domain.new_endpoint(req, NetworkMode.VPC_ROUTE, slot, T0, 60, router_ip=IPv4Address("172.16.0.1"))
    (address,) = ep.addresses
    assert (address.ip, address.prefix_len, address.gateway) == (slot.ip, 32, IPv4Address("172.16.0.1"))
    assert address.eni_id is None and address.route_table is None and address.subnet_cidr == N("172.16.0.0/27")

"""Unit tier: ipam's pool domain and watermark maths — tables, examples, and a Hypothesis state machine checking
that no IP is handed out twice, only IPs of the node's in-use ENIs are, cooldowns and releases are respected, and
the demand's counters equal a recount."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from schemas.errors import ErrorReason
from schemas.messages import AllocateRequest, PodRef
from schemas.records import (
    CceEndpoint,
    EndpointState,
    Eni,
    EniProvision,
    EniState,
    EniUse,
    NodePool,
    NodeSpec,
    NodeStatus,
    PoolSettings,
    PrivateIp,
    ReleaseMark,
    ReleaseState,
)
from services.ipam import domain
from services.ipam import watermarks as wm

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODE = "node-1"


def secs(s: float) -> timedelta:
    return timedelta(seconds=s)


def eni(index: int, n_ips: int, *, node: str = NODE, state: EniState = EniState.INUSE,
        use: EniUse = EniUse.SECONDARY_IPS, base: int = 0) -> Eni:
    """ENI `index` of a node: primary 10.0.<index>.10, secondaries 10.0.<index>.100+base ..."""
    ips = [PrivateIp(ip=IPv4Address(f"10.0.{index}.10"), primary=True)]
    ips += [PrivateIp(ip=IPv4Address(f"10.0.{index}.{100 + base + i}")) for i in range(n_ips)]
    return Eni(eni_id=f"eni-{node}-{index}", node=node, instance_id="i-1", use=use, subnet_id="sbn-1",
               subnet_cidr=IPv4Network("10.0.0.0/16"), state=state, private_ips=ips, ip_quota=16, index=index)


def spec(**pool: object) -> NodeSpec:
    return NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=8, memory_mib=16384, max_pods=110,
                    pool=PoolSettings(**pool))


def facts(*enis: Eni, provision: EniProvision | None = None, **pool: object) -> domain.NodeFacts:
    return domain.NodeFacts(node=NODE, spec=spec(**pool), enis=enis, provision=provision)


def request(cid: str = "c1") -> AllocateRequest:
    return AllocateRequest(node=NODE, container_id=cid, pod=PodRef(namespace="default", name=f"pod-{cid}"))


# ---- watermark maths -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("memory_mib", "ips"), [
    (512, 2), (2047, 2), (2048, 8), (8192, 8), (8193, 16), (32768, 16), (32769, 30), (65536, 30), (65537, 40),
    (524288, 40),
])
def test_ips_per_eni_follow_the_memory_table(memory_mib: int, ips: int) -> None:
    assert wm.ips_per_eni_by_memory(memory_mib) == ips


def test_quota_prefers_eni_manager_then_the_node_override_then_the_fallback() -> None:
    node = spec()
    assert wm.eni_quota(node, None) == wm.Quota(max_enis=8, ips_per_eni=16)
    overridden = node.model_copy(update={"max_enis": 3, "ips_per_eni": 5, "cpus": 2})
    assert wm.eni_quota(overridden, None) == wm.Quota(max_enis=3, ips_per_eni=5)
    provision = EniProvision(node=NODE, instance_id="i-1", max_enis=6, ips_per_eni=30)
    assert wm.eni_quota(overridden, provision) == wm.Quota(max_enis=6, ips_per_eni=30)
    assert wm.eni_quota(node.model_copy(update={"cpus": 2}), None).max_enis == 2
    assert wm.Quota(8, 16).max_secondaries == 120


@pytest.mark.parametrize(("used", "pending", "cooling", "pool", "upper", "target"), [
    (0, 0, 0, {}, 110, 10),  # a new node gets min_allocate
    (9, 0, 0, {}, 110, 11),  # used + pre_allocate
    (0, 12, 0, {}, 110, 14),  # the pending surge
    (5, 0, 4, {}, 110, 11),  # cooling IPs cannot be handed out: they count as used
    (105, 5, 0, {}, 110, 110),  # never above max_allocate
    (0, 0, 0, {"min_allocate": 0, "pre_allocate": 0}, 110, 0),
    (3, 0, 0, {"min_allocate": 20}, 8, 8),
])
def test_target_is_clamped_max_of_min_allocate_and_used_pending_pre_allocate(
        used: int, pending: int, cooling: int, pool: dict[str, int], upper: int, target: int) -> None:
    assert wm.target_ips(used, pending, PoolSettings(**pool), upper, cooling=cooling) == target


@pytest.mark.parametrize(("target", "existing", "per_eni", "rounded"), [
    (10, [], 15, 15),  # the first ENI is filled
    (16, [], 15, 30),  # two new ENIs, both full
    (10, [15], 15, 15),  # an existing ENI is kept full
    (20, [15, 7], 15, 22),  # existing ENIs with their own capacity
    (23, [15, 7], 15, 37),
    (0, [], 15, 0),
    (12, [], 0, 12),  # unknown quota: no rounding
])
def test_burstable_rounds_up_to_full_enis(target: int, existing: list[int], per_eni: int, rounded: int) -> None:
    assert wm.burstable_target(target, existing, per_eni) == rounded


@pytest.mark.parametrize(("available", "free", "used", "pending", "pool", "excess"), [
    (40, 40, 0, 0, {}, 14),  # 40 - (pre 2 + above 24)
    (40, 35, 5, 0, {}, 9),
    (40, 35, 5, 3, {}, 6),
    (26, 26, 0, 0, {}, 0),  # at the watermark: nothing
    (40, 40, 0, 0, {"release_excess": False}, 0),
    (40, 40, 0, 0, {"pre_allocate": 0, "max_above_watermark": 0, "min_allocate": 30}, 10),  # keep min_allocate
    (40, 5, 35, 0, {"pre_allocate": 0, "max_above_watermark": 0, "min_allocate": 0}, 5),  # only free IPs go
])
def test_excess_is_what_lies_above_the_watermark_and_min_allocate(
        available: int, free: int, used: int, pending: int, pool: dict[str, object], excess: int) -> None:
    settings = PoolSettings(**pool)
    target = wm.target_ips(used, pending, settings, 110)
    keep = wm.keep_ips(target, used, 0, pending, settings)
    assert wm.excess_ips(available, free, keep, settings) == excess


def test_pending_surge_leaves_out_waiters_that_already_hold_an_ip() -> None:
    assert wm.pending_surge(5, 2) == 3
    assert wm.pending_surge(1, 3) == 0


# ---- the view and claims ---------------------------------------------------------------------------------------


def test_free_ips_are_the_secondaries_of_in_use_secondary_ip_enis_of_the_node_in_order() -> None:
    view = domain.PoolView(NodePool(node=NODE), facts(
        eni(2, 2), eni(1, 2), eni(3, 2, state=EniState.ATTACHING), eni(4, 2, node="node-2"),
        eni(5, 2, use=EniUse.EXCLUSIVE)), T0)
    assert [str(s.ip) for s in view.free_slots] == ["10.0.1.100", "10.0.1.101", "10.0.2.100", "10.0.2.101"]
    assert domain.pick_ip(view) == view.free_slots[0]


def test_allocated_cooling_and_releasing_ips_are_not_free() -> None:
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "k1"},
                    cooldown={"10.0.1.101": T0 + secs(5), "10.0.1.102": T0 - secs(1)},
                    releasing={"10.0.1.103": {"eni_id": "eni-node-1-1"}})
    view = domain.PoolView(pool, facts(eni(1, 5)), T0)
    assert [str(s.ip) for s in view.free_slots] == ["10.0.1.102", "10.0.1.104"]  # .102's cooldown is over
    assert (view.used, view.cooling, view.free, view.available) == (1, 1, 2, 4)
    assert view.next_cooldown_end() == T0 + secs(5)


def test_allocate_gives_the_first_free_ip_and_the_same_one_again_to_the_same_key() -> None:
    node = facts(eni(1, 2))
    pool, slot = domain.allocate_ip(NodePool(node=NODE), node, "k1", T0) or pytest.fail("no IP")
    assert (str(slot.ip), slot.eni.eni_id) == ("10.0.1.100", "eni-node-1-1")
    assert pool.allocated == {"10.0.1.100": "k1"}
    assert pool.demand.used == 1
    again = domain.allocate_ip(pool, node, "k1", T0)
    assert again is not None and again[1].ip == slot.ip and again[0] is pool
    pool, second = domain.allocate_ip(pool, node, "k2", T0) or pytest.fail("no IP")
    assert str(second.ip) == "10.0.1.101"
    assert domain.allocate_ip(pool, node, "k3", T0) is None


def test_a_claim_whose_ip_left_the_node_is_replaced() -> None:
    pool = NodePool(node=NODE, allocated={"10.9.9.9": "k1"})
    new, slot = domain.allocate_ip(pool, facts(eni(1, 1)), "k1", T0) or pytest.fail("no IP")
    assert new.allocated == {str(slot.ip): "k1"}


def test_a_waiting_claim_is_recorded_and_counted_as_pending_until_it_gets_an_ip() -> None:
    node = facts()
    claim = domain.claim_ip(NodePool(node=NODE), node, "k1", T0, wait=True)
    assert claim.slot is None and claim.changed
    assert claim.pool.waiting == {"k1": T0}
    assert (claim.pool.demand.pending, claim.pool.demand.target_ips) == (1, 10)
    assert not domain.claim_ip(claim.pool, node, "k1", T0, wait=True).changed
    filled = facts(eni(1, 3))
    got = domain.claim_ip(claim.pool, filled, "k1", T0 + secs(1), wait=True)
    assert got.slot is not None and got.pool.waiting == {} and got.pool.demand.pending == 0
    no_wait = domain.claim_ip(NodePool(node=NODE), node, "k2", T0, wait=False)
    assert no_wait.pool.waiting == {}


def test_a_resumed_wait_overtaken_by_a_release_of_its_key_is_cancelled() -> None:
    node = facts()
    waiting = domain.claim_ip(NodePool(node=NODE), node, "k1", T0, wait=True).pool
    released, _ = domain.release_ip(waiting, "k1", 30, T0)
    filled = facts(eni(1, 3))
    cancelled = domain.claim_ip(released, filled, "k1", T0, wait=True, resume=True)
    assert cancelled.cancelled and cancelled.slot is None and not cancelled.changed
    assert domain.claim_ip(waiting, filled, "k1", T0, wait=True, resume=True).slot is not None


def test_a_node_at_max_pods_refuses_at_once() -> None:
    node = facts(eni(1, 3), max_allocate=2)
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "a", "10.0.1.101": "b"})
    claim = domain.claim_ip(pool, node, "c", T0, wait=True)
    assert claim.at_max and claim.slot is None and claim.pool.waiting == {}
    assert domain.claim_ip(pool, node, "a", T0, wait=True).reused  # a holder still gets its own IP back


def test_release_moves_the_ip_to_cooldown_and_is_idempotent() -> None:
    node = facts(eni(1, 1))
    pool, slot = domain.allocate_ip(NodePool(node=NODE), node, "k1", T0) or pytest.fail("no IP")
    released, ips = domain.release_ip(pool, "k1", 30, T0)
    assert ips == [slot.ip] and released.allocated == {}
    assert released.cooldown == {str(slot.ip): T0 + secs(30)}
    assert domain.release_ip(released, "k1", 30, T0) == (released, [])
    assert domain.allocate_ip(released, node, "k2", T0 + secs(29)) is None
    later = domain.allocate_ip(released, node, "k2", T0 + secs(30))
    assert later is not None and later[1].ip == slot.ip and later[0].cooldown == {}


# ---- demand, release handshake, upkeep -------------------------------------------------------------------------


def test_demand_counts_every_category_and_burstable_fills_enis() -> None:
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "a"}, cooldown={"10.0.1.101": T0 + secs(9)},
                    waiting={"w": T0})
    demand = domain.PoolView(pool, facts(eni(1, 4)), T0).demand()
    assert (demand.used, demand.cooling, demand.pending, demand.free, demand.releasing) == (1, 1, 1, 2, 0)
    assert demand.target_ips == 10
    burst = domain.PoolView(pool, facts(eni(1, 4), burstable=True), T0).demand()
    assert burst.target_ips == 15  # the ENI's 15 secondaries cover the 10 wanted: fill it
    two = domain.PoolView(pool, facts(eni(1, 4), burstable=True, min_allocate=20), T0).demand()
    assert two.target_ips == 30
    assert domain.PoolView(pool, facts(eni(1, 4)), T0).demand(removing=True).target_ips == 0


def test_the_target_looks_ahead_by_the_recent_allocations_and_forgets_them_after_the_window() -> None:
    node, pool = facts(eni(1, 15), eni(2, 15)), NodePool(node=NODE)
    for i in range(12):
        claimed = domain.allocate_ip(pool, node, f"k{i}", T0 + secs(i * 0.01))
        assert claimed is not None
        pool = claimed[0]
    view = domain.PoolView(pool, node, T0 + secs(0.2))
    assert (view.used, view.ahead) == (12, 12)
    assert pool.demand.target_ips == 12 + 12  # used + what the last seconds took, not used + pre_allocate
    assert domain.PoolView(pool, node, T0 + secs(60)).target() == 12 + 2  # a quiet minute: pre_allocate again
    capped = facts(eni(1, 15), eni(2, 15), max_above_watermark=14)
    assert domain.PoolView(pool, capped, T0 + secs(0.2)).ahead == 7  # never more than a release would take back
    off = facts(eni(1, 15), eni(2, 15), lookahead_s=0)
    assert domain.PoolView(pool, off, T0 + secs(0.2)).target() == 12 + 2


def test_excess_ips_are_marked_from_the_least_used_eni_then_confirmed_after_the_delay() -> None:
    node = facts(eni(1, 10), eni(2, 10), pre_allocate=0, max_above_watermark=2, min_allocate=0, release_delay_s=5)
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "a", "10.0.1.101": "b", "10.0.2.100": "c"})
    up = domain.maintain_pool(pool, node, T0, waiting_ttl_s=90)
    marked = up.release.mark
    assert len(marked) == 20 - 3 - 2
    assert all(eni_id == "eni-node-1-2" for ip, eni_id in list(marked.items())[:9])  # ENI 2 has fewer used
    assert up.pool.demand.releasing == 15 and up.pool.demand.free == 2
    assert up.pool.demand.target_ips <= 20 - 15  # eni_manager will not add them back
    assert not domain.maintain_pool(up.pool, node, T0 + secs(4), 90).release.confirm
    confirmed = domain.maintain_pool(up.pool, node, T0 + secs(5), 90)
    assert sorted(confirmed.release.confirm) == sorted(marked)
    assert all(m.state is ReleaseState.CONFIRMED for m in confirmed.pool.releasing.values())
    gone = facts(eni(1, 0), eni(2, 0), pre_allocate=0, max_above_watermark=2, min_allocate=0)
    dropped = domain.maintain_pool(confirmed.pool, gone, T0 + secs(6), 90)
    assert dropped.pool.releasing == {} and len(dropped.release.drop) == 15


def test_marks_are_cancelled_when_the_pool_runs_short() -> None:
    node = facts(eni(1, 4), pre_allocate=2, max_above_watermark=0, min_allocate=0, release_delay_s=30)
    up = domain.maintain_pool(NodePool(node=NODE), node, T0, 90)
    assert len(up.release.mark) == 2
    busy = up.pool.model_copy(deep=True)
    free = [str(s.ip) for s in domain.PoolView(busy, node, T0).free_slots]
    busy.allocated.update({ip: f"k{ip}" for ip in free})
    again = domain.maintain_pool(busy, node, T0 + secs(1), 90)
    assert sorted(again.release.unmark) == sorted(up.release.mark) and again.pool.releasing == {}


def test_upkeep_prunes_finished_cooldowns_and_stale_waiting_and_reports_no_change_when_settled() -> None:
    node = facts(eni(1, 3))
    pool = NodePool(node=NODE, cooldown={"10.0.1.100": T0, "10.0.1.101": T0 + secs(5), "10.9.9.9": T0 + secs(5)},
                    waiting={"old": T0 - secs(100), "new": T0})
    up = domain.maintain_pool(pool, node, T0, waiting_ttl_s=90)
    assert set(up.pool.cooldown) == {"10.0.1.101"} and set(up.pool.waiting) == {"new"}
    assert up.cooled == ["10.0.1.100", "10.9.9.9"] and up.stale_waiting == ["old"]
    assert not domain.maintain_pool(up.pool, node, T0, waiting_ttl_s=90).changed


# ---- endpoints, failures, status -------------------------------------------------------------------------------


def test_a_new_endpoint_carries_the_enis_subnet_gateway_and_table() -> None:
    slot = domain.IpSlot(IPv4Address("10.0.3.100"), eni(3, 1))
    ep = domain.new_endpoint(request(), spec().mode, slot, T0, ttl_s=120)
    address = ep.addresses[0]
    assert (address.ip, address.prefix_len, address.gateway) == (slot.ip, 32, IPv4Address("10.0.0.1"))
    assert (address.eni_id, address.subnet_id, address.route_table) == ("eni-node-1-3", "sbn-1", 130)
    assert ep.state is EndpointState.ALLOCATED and ep.expires_at == T0 + secs(120)
    ready = domain.confirm_endpoint(ep, "veth1", T0 + secs(1))
    assert (ready.state, ready.expires_at, ready.host_veth) == (EndpointState.READY, None, "veth1")


def test_expired_orphan_and_stray_endpoints_are_found() -> None:
    slot = domain.IpSlot(IPv4Address("10.0.1.100"), eni(1, 1))
    ep = domain.new_endpoint(request(), spec().mode, slot, T0, ttl_s=10)
    ready = domain.confirm_endpoint(ep, "v", T0)
    endpoints: dict[str, CceEndpoint] = {"k1": ep, "k2": ready}
    assert domain.expired_endpoints(endpoints, T0 + secs(9)) == []
    assert domain.expired_endpoints(endpoints, T0 + secs(10)) == ["k1"]
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "k1", "10.0.1.101": "k3"})
    assert domain.orphan_claims(pool, endpoints.keys()) == {"10.0.1.101": "k3"}
    assert domain.stray_endpoints(endpoints, pool) == ["k2"]


def provision(**kw: object) -> EniProvision:
    return EniProvision(node=NODE, instance_id="i-1", **kw)


@pytest.mark.parametrize(("prov", "used", "reason", "words"), [
    (None, 3, ErrorReason.IP_POOL_EXHAUSTED, "no free IP"),
    (provision(creating_eni=True), 3, ErrorReason.WAIT_CREATE_MORE_ENI, "new ENI"),
    (provision(creating_eni=True, last_error=ErrorReason.SUBNET_NO_MORE_IP), 3, ErrorReason.WAIT_CREATE_MORE_ENI,
     "new ENI"),
    (provision(last_error=ErrorReason.SUBNET_NO_MORE_IP), 3, ErrorReason.SUBNET_NO_MORE_IP, "provisioning"),
    (provision(last_error=ErrorReason.ENI_CAPACITY_EXCEED), 3, ErrorReason.ENI_CAPACITY_EXCEED, "provisioning"),
    (provision(last_error=ErrorReason.CLOUD_THROTTLED), 3, ErrorReason.CLOUD_THROTTLED, "provisioning"),
    (provision(last_error=ErrorReason.CLOUD_AUTH_FAILED), 3, ErrorReason.IP_POOL_EXHAUSTED, "no free IP"),
    (provision(creating_eni=True), 110, ErrorReason.IP_POOL_EXHAUSTED, "max pods"),
])
def test_failure_reason_follows_what_eni_manager_reports(prov: EniProvision | None, used: int,
                                                         reason: ErrorReason, words: str) -> None:
    err = domain.failure(NODE, prov, used, 110, 10)
    assert err.reason is reason and words in err.message and err.details["node"] == NODE


def test_capacity_and_readiness_of_a_node() -> None:
    node = facts(eni(1, 4), eni(2, 2, state=EniState.ATTACHING))
    view = domain.PoolView(NodePool(node=NODE, allocated={"10.0.1.100": "a"}), node, T0)
    cap = domain.node_capacity(view)
    assert (cap.free_ips, cap.used_ips, cap.max_enis, cap.ips_per_eni) == (3, 1, 8, 16)
    assert cap.attachable_ips == 8 * 15 - 6
    assert domain.is_ready(view)
    assert not domain.is_ready(domain.PoolView(NodePool(node=NODE), facts(eni(2, 2, state=EniState.ATTACHING)), T0))
    new = domain.node_status(NodeStatus(), view)
    assert new is not None and new.ready and new.enis == ["eni-node-1-1", "eni-node-1-2"]
    assert domain.node_status(new, view) is None


def test_pod_capacity_counts_what_the_node_has_and_can_still_get_up_to_max_pods() -> None:
    small = NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=2, memory_mib=8192, max_pods=110)
    node = domain.NodeFacts(node=NODE, spec=small, enis=(eni(1, 4),))  # 2 ENIs x 7 secondaries
    pool = NodePool(node=NODE, allocated={"10.0.1.100": "a"}, cooldown={"10.0.1.101": T0 + secs(9)})
    assert domain.node_capacity(domain.PoolView(pool, node, T0)).pod_ips == 14  # 4 had (cooling too) + 10 more
    full = EniProvision(node=NODE, instance_id="i-1", last_error=ErrorReason.SUBNET_NO_MORE_IP)
    stuck = domain.NodeFacts(node=NODE, spec=small, enis=(eni(1, 4),), provision=full)
    assert domain.node_capacity(domain.PoolView(pool, stuck, T0)).pod_ips == 4  # the subnet gives no more
    released = NodePool(node=NODE, releasing={"10.0.1.103": ReleaseMark(eni_id="eni-node-1-1")})
    assert domain.node_capacity(domain.PoolView(released, stuck, T0)).pod_ips == 3  # on its way out
    assert domain.node_capacity(domain.PoolView(pool, facts(eni(1, 4)), T0)).pod_ips == 110  # capped at max pods
    assert domain.node_capacity(domain.PoolView(pool, facts(eni(1, 4)), T0)).pod_enis == 0  # no exclusive ENIs


# ---- the state machine -----------------------------------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Random allocations, releases, new ENI IPs, passing time and the release handshake on one node's pool (plus
    an ENI of another node and one still attaching, whose IPs must never be handed out). The pool is "written"
    only when a step changed it, as the service does by compare-and-set."""

    @initialize()
    def setup(self) -> None:
        self.now = T0
        self.enis: dict[str, Eni] = {"own": eni(1, 2), "other": eni(7, 3, node="node-2"),
                                     "attaching": eni(8, 3, state=EniState.ATTACHING)}
        self.next_ip = 0
        self.keys = 0
        self.released_at: dict[str, datetime] = {}  # IP -> when it was freed (cooldown 10 s)
        self.deleted: set[str] = set()
        self.settings: dict[str, Any] = {"pre_allocate": 1, "max_above_watermark": 2, "min_allocate": 2,
                                         "release_delay_s": 3, "cooldown_s": 10, "max_allocate": 12}
        self.write(domain.refresh_demand(NodePool(node=NODE), self.node, self.now))

    @property
    def node(self) -> domain.NodeFacts:
        return facts(*self.enis.values(), **self.settings)

    def write(self, pool: NodePool) -> None:
        self.pool, self.written_with = pool, self.node

    def inuse_ips(self, node: domain.NodeFacts) -> set[str]:
        return {str(ip) for e in node.usable_enis for ip in e.secondary_ips}

    def check_handed_out(self, slot: domain.IpSlot) -> None:
        ip = str(slot.ip)
        assert ip not in self.pool.allocated, f"{ip} handed out twice"
        assert ip not in self.pool.releasing, f"{ip} is being released"
        assert ip in self.inuse_ips(self.node) and slot.eni.node == NODE
        freed = self.released_at.get(ip)
        assert freed is None or self.now >= freed + secs(10), f"{ip} reused within its cooldown"

    @rule(wait=st.booleans())
    def allocate(self, wait: bool) -> None:
        self.keys += 1
        claim = domain.claim_ip(self.pool, self.node, f"k{self.keys}", self.now, wait)
        if claim.slot is not None:
            self.check_handed_out(claim.slot)
        event("allocated" if claim.slot else "at max" if claim.at_max else "none free")
        assert claim.at_max == (claim.slot is None and len(self.pool.allocated) >= 12)
        if claim.changed:
            self.write(claim.pool)

    @precondition(lambda self: bool(self.pool.allocated))
    @rule(data=st.data())
    def allocate_again(self, data: st.DataObject) -> None:
        ip, key = data.draw(st.sampled_from(sorted(self.pool.allocated.items())))
        claim = domain.claim_ip(self.pool, self.node, key, self.now, wait=True)
        assert claim.reused and claim.slot is not None and str(claim.slot.ip) == ip

    @precondition(lambda self: bool(self.pool.allocated))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(set(self.pool.allocated.values()))))
        pool, ips = domain.release_ip(self.pool, key, 10, self.now)
        assert ips and key not in pool.allocated.values()
        self.write(domain.refresh_demand(pool, self.node, self.now))
        for ip in ips:
            self.released_at[str(ip)] = self.now

    @rule(count=st.integers(1, 4), new_eni=st.booleans())
    def add_eni_ips(self, count: int, new_eni: bool) -> None:
        name = f"e{len(self.enis)}" if new_eni else "own"
        current = self.enis.get(name) or eni(len(self.enis) + 1, 0)
        extra = [PrivateIp(ip=IPv4Address(int(IPv4Address("10.1.0.1")) + self.next_ip + i)) for i in range(count)]
        self.next_ip += count
        self.enis[name] = current.model_copy(update={"private_ips": [*current.private_ips, *extra]})

    @rule(seconds=st.floats(0, 12))
    def advance_time(self, seconds: float) -> None:
        self.now += secs(seconds)

    @rule()
    def maintain(self) -> None:
        up = domain.maintain_pool(self.pool, self.node, self.now, waiting_ttl_s=30)
        for ip in up.release.confirm:
            assert self.now >= self.pool.releasing[ip].marked_at + secs(3) and ip not in self.pool.allocated
        for ip in up.release.mark:
            assert ip in self.inuse_ips(self.node) and ip not in self.pool.allocated
        for what, ips in (("marked", up.release.mark), ("confirmed", up.release.confirm),
                          ("unmarked", up.release.unmark), ("dropped", up.release.drop)):
            if ips:
                event(what)
        if up.changed:
            self.write(up.pool)

    @rule()
    def eni_manager_deletes_confirmed_ips(self) -> None:
        confirmed = {ip for ip, m in self.pool.releasing.items() if m.state is ReleaseState.CONFIRMED}
        for name, e in self.enis.items():
            keep = [p for p in e.private_ips if str(p.ip) not in confirmed]
            self.enis[name] = e.model_copy(update={"private_ips": keep})
        self.deleted |= confirmed

    @invariant()
    def no_ip_twice_and_only_the_nodes_in_use_ips(self) -> None:
        holders = list(self.pool.allocated.values())
        assert len(holders) == len(set(holders)), "a key holds two IPs"
        assert set(self.pool.allocated) <= self.inuse_ips(self.node)
        assert not set(self.pool.allocated) & self.deleted
        assert not set(self.pool.allocated) & set(self.pool.releasing)
        assert len(self.pool.allocated) <= 12

    @invariant()
    def demand_counters_equal_a_recount(self) -> None:
        demand, pool = self.pool.demand, self.pool
        usable = self.inuse_ips(self.written_with)
        cooling = {ip for ip in usable - set(pool.allocated) - set(pool.releasing)
                   if pool.cooldown.get(ip, T0) > demand.computed_at}
        free = usable - set(pool.allocated) - set(pool.releasing) - cooling
        assert demand.used == len(pool.allocated)
        assert demand.releasing == len(pool.releasing)
        assert demand.pending == len([k for k in pool.waiting if k not in pool.allocated.values()])
        assert (demand.free, demand.cooling) == (len(free), len(cooling))
        recount = domain.PoolView(pool, self.written_with, demand.computed_at).demand()
        assert demand == recount


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=100, stateful_step_count=60, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])

"""Unit tier: fixed IPs of StatefulSet pods — the pool claims of services/ipam/fixed.py (with a Hypothesis state
machine over two nodes and a cloud moving IPs between them: no IP is ever held by two pods, a reserved IP goes to no
other pod, every pod's IP is on its node), the endpoint fields, and the gateway's reading of the annotations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from schemas.messages import AllocateRequest, FixedIpRequest, PodRef
from schemas.records import (
    AllocationType,
    Eni,
    EniState,
    FixedIp,
    NodePool,
    NodeSpec,
    PodInfo,
    PrivateIp,
    ReleaseStrategy,
)
from services.cni_gateway.fixed_ip import FixedIpError, fixed_ip_of, parse_ttl
from services.ipam import domain, fixed

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SUBNET = IPv4Network("10.0.0.0/16")
SPEC = NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=8, memory_mib=16384)


def eni_of(node: str, ips: list[str], index: int = 1) -> Eni:
    private = [PrivateIp(ip=IPv4Address(f"10.0.{index}{node[-1]}.10"), primary=True)]
    private += [PrivateIp(ip=IPv4Address(ip)) for ip in ips]
    return Eni(eni_id=f"eni-{node}", node=node, instance_id=f"i-{node}", subnet_id="sbn-1", subnet_cidr=SUBNET,
               state=EniState.INUSE, private_ips=private, ip_quota=16, index=index)


def facts(node: str, ips: list[str]) -> domain.NodeFacts:
    return domain.NodeFacts(node=node, spec=SPEC, enis=(eni_of(node, ips),))


def reservation(ip: str, node: str, endpoint: str = "", ttl_s: float | None = 60.0,
                strategy: ReleaseStrategy = ReleaseStrategy.TTL, idle_since: datetime | None = None) -> FixedIp:
    return FixedIp(namespace="ns", name="db-0", ip=IPv4Address(ip), subnet_id="sbn-1", subnet_cidr=SUBNET, node=node,
                   eni_id=f"eni-{node}", endpoint=endpoint, ttl_s=ttl_s, release_strategy=strategy,
                   idle_since=idle_since)


MARK = fixed.marker("ns", "db-0")


def test_a_released_fixed_ip_is_parked_under_its_marker_and_claimed_again_by_the_new_sandbox() -> None:
    f = facts("node-1", ["10.0.1.100", "10.0.1.101"])
    pool = NodePool(node="node-1", allocated={"10.0.1.100": "k-old"})
    parked = fixed.park(pool, "k-old", {"10.0.1.100": MARK})
    released, ips = domain.release_ip(parked, "k-old", 30, T0)
    assert released.allocated == {"10.0.1.100": MARK} and ips == [] and not released.cooldown
    view = domain.PoolView(released, f, T0)
    assert [str(s.ip) for s in view.free_slots] == ["10.0.1.101"]  # nobody else gets it
    assert domain.orphan_claims(released, set()) == {}  # a parked IP is no orphan
    claim = fixed.claim_fixed(released, f, "k-new", IPv4Address("10.0.1.100"), MARK, set())
    assert claim.changed and claim.slot is not None and claim.pool.allocated == {"10.0.1.100": "k-new"}


def test_an_ip_held_by_another_pod_is_not_taken() -> None:
    f = facts("node-1", ["10.0.1.100"])
    pool = NodePool(node="node-1", allocated={"10.0.1.100": "someone-else"})
    claim = fixed.claim_fixed(pool, f, "k-new", IPv4Address("10.0.1.100"), MARK, {"k-old"})
    assert not claim.changed and claim.held_by == "someone-else" and claim.pool is pool
    earlier = NodePool(node="node-1", allocated={"10.0.1.100": "k-old"})  # the pod's earlier sandbox: taken over
    assert fixed.claim_fixed(earlier, f, "k-new", IPv4Address("10.0.1.100"), MARK, {"k-old"}).changed


def test_a_claim_before_the_ip_arrives_holds_it_for_the_pod() -> None:
    f = facts("node-2", ["10.0.2.100"])
    claim = fixed.claim_fixed(NodePool(node="node-2"), f, "k-new", IPv4Address("10.0.1.100"), MARK, set())
    assert claim.slot is None and claim.pool.allocated == {"10.0.1.100": "k-new"}
    arrived = facts("node-2", ["10.0.2.100", "10.0.1.100"])
    assert [str(s.ip) for s in domain.PoolView(claim.pool, arrived, T0).free_slots] == ["10.0.2.100"]
    assert fixed.claim_fixed(claim.pool, arrived, "k-new", IPv4Address("10.0.1.100"), MARK, set()).slot is not None
    undone = fixed.unclaim(claim.pool, "10.0.1.100", {"k-new"})
    assert undone is not None and undone.allocated == {}
    assert fixed.unclaim(claim.pool, "10.0.1.100", {"someone-else"}) is None


def test_the_ttl_counts_from_when_the_pod_went_and_never_with_never() -> None:
    r = reservation("10.0.1.100", "node-1", idle_since=T0, ttl_s=60)
    assert not fixed.is_due(r, T0 + timedelta(seconds=59)) and fixed.is_due(r, T0 + timedelta(seconds=60))
    assert not fixed.is_due(r.model_copy(update={"endpoint": "k"}), T0 + timedelta(days=9))
    never = reservation("10.0.1.100", "node-1", idle_since=T0, ttl_s=None, strategy=ReleaseStrategy.NEVER)
    assert not fixed.is_due(never, T0 + timedelta(days=3650)) and never.release_at is None
    idle = fixed.idle(reservation("10.0.1.100", "node-1", endpoint="k"), T0)
    assert idle.endpoint == "" and idle.idle_since == T0 and idle.release_at == T0 + timedelta(seconds=60)
    pool = NodePool(node="node-1", allocated={"10.0.1.100": MARK})
    gone = fixed.release_marker(pool, "10.0.1.100", MARK, 30, T0)
    assert gone is not None and gone.allocated == {} and gone.cooldown == {"10.0.1.100": T0 + timedelta(seconds=30)}


def test_markers_no_reservation_keeps_are_stray() -> None:
    f = facts("node-1", ["10.0.1.100", "10.0.1.101"])
    pool = NodePool(node="node-1", allocated={"10.0.1.100": MARK, "10.0.1.101": fixed.marker("ns", "gone-0"),
                                              "10.0.1.102": MARK})
    kept = {"ns.db-0": reservation("10.0.1.100", "node-1")}
    assert fixed.stray_markers(pool, f, kept) == {"10.0.1.101": fixed.marker("ns", "gone-0"),
                                                   "10.0.1.102": MARK}


def test_the_endpoint_says_fixed_and_how_it_is_released() -> None:
    req = AllocateRequest(node="node-1", container_id="c1", pod=PodRef(namespace="ns", name="db-0"),
                          fixed_ip=FixedIpRequest(ttl_s=3600))
    slot = domain.IpSlot(IPv4Address("10.0.1.100"), eni_of("node-1", ["10.0.1.100"]))
    ep = domain.new_endpoint(req, SPEC.mode, slot, T0, 60)
    assert (ep.allocation_type, ep.release_strategy, ep.release_ttl_s) == (AllocationType.FIXED,
                                                                            ReleaseStrategy.TTL, 3600)
    plain = domain.new_endpoint(req.model_copy(update={"fixed_ip": None}), SPEC.mode, slot, T0, 60)
    assert plain.allocation_type is AllocationType.ELASTIC and plain.release_strategy is None


# ---- the gateway's reading of the pod ---------------------------------------------------------------------------


def pod(kind: str = "StatefulSet", **annotations: str) -> PodInfo:
    return PodInfo(namespace="ns", name="db-0", node="node-1", owner_kind=kind, owner_name="db",
                   annotations=annotations)


@pytest.mark.parametrize(("text", "seconds"), [("168h", 604800), ("30m", 1800), ("90s", 90), ("1h30m", 5400),
                                               ("3600", 3600), ("Never", None), ("never", None)])
def test_ttls_read_as_durations(text: str, seconds: float | None) -> None:
    assert parse_ttl(text) == seconds


def test_statefulset_pods_ask_by_their_own_or_their_namespaces_annotation() -> None:
    assert fixed_ip_of(pod(**{"cce.io/fixed-ip": "true"})) == FixedIpRequest(owner="StatefulSet/db")
    asked = fixed_ip_of(pod(**{"cce.io/fixed-ip": "true", "cce.io/fixed-ip-ttl": "Never"}))
    assert asked is not None and asked.release_strategy is ReleaseStrategy.NEVER
    space = pod().model_copy(update={"namespace_annotations": {"cce.io/fixed-ip": "true",
                                                               "cce.io/fixed-ip-ttl": "1h"}})
    assert fixed_ip_of(space) == FixedIpRequest(ttl_s=3600, owner="StatefulSet/db")
    opted_out = space.model_copy(update={"annotations": {"cce.io/fixed-ip": "false"}})
    assert fixed_ip_of(opted_out) is None
    deployment = space.model_copy(update={"owner_kind": "ReplicaSet"})
    assert fixed_ip_of(deployment) is None  # the namespace's word is for its StatefulSet pods
    assert fixed_ip_of(pod()) is None and fixed_ip_of(None) is None


@pytest.mark.parametrize(("info", "words"), [
    (pod(**{"cce.io/fixed-ip": "yes please"}), "cce.io/fixed-ip='yes please': expected true or false"),
    (pod(**{"cce.io/fixed-ip": "true", "cce.io/fixed-ip-ttl": "a week"}), "cce.io/fixed-ip-ttl='a week'"),
    (pod("ReplicaSet", **{"cce.io/fixed-ip": "true"}), "fixed IPs are for StatefulSet pods"),
])
def test_bad_fixed_ip_annotations_are_named(info: PodInfo, words: str) -> None:
    with pytest.raises(FixedIpError) as err:
        fixed_ip_of(info)
    assert words in str(err.value)


# ---- two nodes, a cloud, pods coming and going ---------------------------------------------------------------------

NODES = ("node-1", "node-2")
IPS = [f"10.0.9.{i}" for i in range(10, 16)]
PODS = ("db-0", "db-1", "web-a", "web-b")  # db-*: fixed; web-*: elastic


class FixedIpMachine(RuleBasedStateMachine):
    """Each node's pool is written as ipam writes it; the cloud (which node's ENI carries which IP) changes only by
    moves ipam asks for. Pods are added on a node and released; fixed pods come back anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.cloud = {ip: NODES[i % 2] for i, ip in enumerate(IPS)}
        self.pools = {n: NodePool(node=n) for n in NODES}
        self.reservations: dict[str, FixedIp] = {}
        self.live: dict[str, tuple[str, str, str]] = {}  # pod -> (node, key, ip)
        self.now = T0
        self.seq = 0

    def facts(self, node: str) -> domain.NodeFacts:
        return facts(node, [ip for ip, n in self.cloud.items() if n == node])

    @rule(name=st.sampled_from(PODS), node=st.sampled_from(NODES))
    def add(self, name: str, node: str) -> None:
        if name in self.live:
            return
        self.seq += 1
        key = f"{node}.c{self.seq}.eth0"
        r = self.reservations.get(name)
        if r is None:
            got = domain.allocate_ip(self.pools[node], self.facts(node), key, self.now)
            if got is None:
                return
            self.pools[node], slot = got
            ip = str(slot.ip)
            if name.startswith("db"):
                self.reservations[name] = reservation(ip, node, endpoint=key).model_copy(update={"name": name})
        else:
            mark = fixed.marker("ns", name)
            claim = fixed.claim_fixed(self.pools[node], self.facts(node), key, r.ip, mark, set())
            assert not claim.held_by, "a reserved IP is never held by another pod"
            self.pools[node] = claim.pool
            ip = str(r.ip)
            if r.node != node:  # the cloud moves it; the old node's claim goes
                self.cloud[ip] = node
                self.pools[r.node] = fixed.unclaim(self.pools[r.node], ip, {mark}) or self.pools[r.node]
            self.reservations[name] = r.model_copy(update={"node": node, "endpoint": key, "idle_since": None})
        self.live[name] = (node, key, ip)

    @rule(name=st.sampled_from(PODS))
    def release(self, name: str) -> None:
        if name not in self.live:
            return
        node, key, ip = self.live.pop(name)
        r = self.reservations.get(name)
        reserved = {ip: fixed.marker("ns", name)} if r is not None else {}
        self.pools[node], _ = domain.release_ip(fixed.park(self.pools[node], key, reserved), key, 5, self.now)
        if r is not None:
            self.reservations[name] = fixed.idle(r, self.now)

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        for name, r in list(self.reservations.items()):
            if fixed.is_due(r, self.now):
                del self.reservations[name]
                self.pools[r.node] = fixed.release_marker(self.pools[r.node], str(r.ip), fixed.marker("ns", name), 5,
                                                          self.now) or self.pools[r.node]

    @invariant()
    def no_ip_is_held_by_two_pods(self) -> None:
        holders: dict[str, list[str]] = {}
        for pool in self.pools.values():
            for ip, key in pool.allocated.items():
                if self.cloud[ip] == pool.node or not fixed.is_marker(key):
                    holders.setdefault(ip, []).append(key)
        assert all(len(keys) == 1 for keys in holders.values()), holders
        ips = [ip for _, _, ip in self.live.values()]
        assert len(ips) == len(set(ips))

    @invariant()
    def every_pod_holds_an_ip_of_its_node(self) -> None:
        for node, key, ip in self.live.values():
            assert self.cloud[ip] == node and self.pools[node].allocated.get(ip) == key

    @invariant()
    def a_reserved_ip_is_no_one_elses(self) -> None:
        for name, r in self.reservations.items():
            holder = self.pools[r.node].allocated.get(str(r.ip))
            assert holder == fixed.marker("ns", name) or holder == self.live.get(name, ("", "", ""))[1]
            free = {str(s.ip) for s in domain.PoolView(self.pools[r.node], self.facts(r.node), self.now).free_slots}
            assert str(r.ip) not in free


TestFixedIpMachine = FixedIpMachine.TestCase
TestFixedIpMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


def test_eni_manager_moves_a_fixed_ip_to_the_roomiest_eni_of_the_node_in_its_subnet() -> None:
    from services.eni_manager.assign import carrier, target_eni

    full = eni_of("node-2", [f"10.0.2.{i}" for i in range(100, 115)], index=1)  # 16 of 16
    roomy = eni_of("node-2", ["10.0.3.100"], index=2).model_copy(update={"eni_id": "eni-node-2-b"})
    other_subnet = roomy.model_copy(update={"eni_id": "eni-node-2-c", "subnet_id": "sbn-9"})
    attaching = roomy.model_copy(update={"eni_id": "eni-node-2-d", "state": EniState.ATTACHING, "private_ips": []})
    source = eni_of("node-1", ["10.0.1.100"])
    enis = [full, roomy, other_subnet, attaching, source]
    assert target_eni(enis, "node-2", "sbn-1") == roomy
    assert target_eni(enis, "node-2", "sbn-7") is None
    assert carrier(enis, "10.0.1.100") == source and carrier(enis, "10.9.9.9") is None

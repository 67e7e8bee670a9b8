"""The simulated cloud's domain: quotas, addresses, ENI states, route rules, persistence — examples and a
Hypothesis state machine checking the invariants under random operations."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.vpc_sim.domain import SimCloud
from services.vpc_sim.model import ENI_EDGES, CloudFault, EniStatus, Tunables, ips_per_nic_by_memory
from services.vpc_sim.persist import StateFileError, load_state, save_state
from services.vpc_sim.views import paginate

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def new_cloud(route_quota: int = 50) -> SimCloud:
    cloud = SimCloud.create("10.0.0.0/16", tunables=Tunables(attach_delay_s=1, detach_delay_s=1,
                                                             route_quota=route_quota))
    cloud.create_subnet(zone="zoneA", cidr="10.0.0.0/24")
    return cloud


def codes(call: object) -> str:
    assert callable(call)
    with pytest.raises(CloudFault) as info:
        call()
    return info.value.code


@pytest.fixture
def cloud() -> SimCloud:
    return new_cloud()


def subnet_id(cloud: SimCloud) -> str:
    return next(iter(cloud.subnets))


# ---- subnets and addresses ------------------------------------------------------------------------------------


def test_network_gateway_and_broadcast_are_never_handed_out() -> None:
    cloud = SimCloud.create("10.0.0.0/16")
    subnet = cloud.create_subnet(zone="zoneA", cidr="10.0.1.0/29")
    assert subnet.available == 5
    eni = cloud.create_eni(name="e", subnet_id=subnet.subnet_id, now=T0)
    cloud.add_private_ips(eni.eni_id, now=T0, count=4)
    assert sorted(eni.ips) == [f"10.0.1.{n}" for n in range(2, 7)]
    assert subnet.available == 0
    assert codes(lambda: cloud.create_eni(name="f", subnet_id=subnet.subnet_id, now=T0)) == \
        "SubnetHasNoMoreIpException"


def test_free_count_goes_down_and_up(cloud: SimCloud) -> None:
    subnet = cloud.subnet(subnet_id(cloud))
    before = subnet.available
    eni = cloud.create_eni(name="e", subnet_id=subnet.subnet_id, now=T0)
    added = cloud.add_private_ips(eni.eni_id, now=T0, count=3)
    assert subnet.available == before - 4
    cloud.remove_private_ips(eni.eni_id, added[:2], now=T0)
    assert subnet.available == before - 2
    cloud.delete_eni(eni.eni_id, now=T0)
    assert subnet.available == before


def test_addresses_are_the_lowest_free_ones(cloud: SimCloud) -> None:
    a = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    b = cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0)
    assert (a.primary_ip, b.primary_ip) == ("10.0.0.2", "10.0.0.3")
    cloud.delete_eni(a.eni_id, now=T0)
    c = cloud.create_eni(name="c", subnet_id=subnet_id(cloud), now=T0)
    assert c.primary_ip == "10.0.0.2"


def test_reserved_addresses_are_skipped_and_cannot_be_asked_for(cloud: SimCloud) -> None:
    reserved = cloud.reserve(subnet_id(cloud), cidr="10.0.0.0/30")
    assert reserved == ["10.0.0.2", "10.0.0.3"]  # .0 and .1 are network and gateway anyway
    assert cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0).primary_ip == "10.0.0.4"
    assert codes(lambda: cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0, primary_ip="10.0.0.2")) \
        == "PrivateIpInUseException"


def test_requested_address_in_use_is_refused(cloud: SimCloud) -> None:
    cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0, primary_ip="10.0.0.50")
    assert codes(lambda: cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0, primary_ip="10.0.0.50")) \
        == "PrivateIpInUseException"
    assert codes(lambda: cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0, primary_ip="10.0.9.9")) \
        == "InvalidParameter"


def test_subnets_must_fit_the_vpc_and_not_overlap(cloud: SimCloud) -> None:
    assert codes(lambda: cloud.create_subnet(zone="zoneA", cidr="192.168.0.0/24")) == "InvalidParameter"
    assert codes(lambda: cloud.create_subnet(zone="zoneA", cidr="10.0.0.128/25")) == "InvalidParameter"
    assert codes(lambda: cloud.create_subnet(zone="zoneA", cidr="10.0.1.0/30")) == "InvalidParameter"
    assert cloud.create_subnet(zone="zoneB", cidr="10.0.1.0/24").zone == "zoneB"


# ---- instances and quotas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("memory_mib", "quota"), [
    (1024, 2), (2047, 2), (2048, 8), (8192, 8), (8193, 16), (32768, 16), (65536, 30), (65537, 40), (262144, 40),
])
def test_ips_per_eni_follow_the_memory(memory_mib: int, quota: int) -> None:
    assert ips_per_nic_by_memory(memory_mib) == quota


@pytest.mark.parametrize(("kind", "cpus", "quota"), [("BCC", 2, 2), ("BCC", 16, 8), ("EBC", 4, 4), ("BBC", 48, 0)])
def test_default_eni_quota(cloud: SimCloud, kind: str, cpus: int, quota: int) -> None:
    assert cloud.create_instance(instance_type=kind, cpus=cpus, memory_mib=8192, zone="zoneA",
                                 now=T0).eni_quota == quota


def test_attaching_past_the_eni_quota_is_refused(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=1, memory_mib=4096, zone="zoneA", now=T0)
    a = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    b = cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(a.eni_id, vm.instance_id, now=T0)
    assert codes(lambda: cloud.attach_eni(b.eni_id, vm.instance_id, now=T0)) == "EniQuotaExceeded"


def test_ip_quota_of_an_attached_eni_is_the_instance_memory_quota(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=2, memory_mib=1024, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)
    cloud.add_private_ips(eni.eni_id, now=T0, count=1)
    assert codes(lambda: cloud.add_private_ips(eni.eni_id, now=T0, count=1)) == \
        "VmMemoryCanNotAttachMoreIpException"


def test_unattached_eni_holds_eight_and_cannot_join_a_smaller_instance(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=2, memory_mib=1024, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    cloud.add_private_ips(eni.eni_id, now=T0, count=7)
    assert codes(lambda: cloud.add_private_ips(eni.eni_id, now=T0, count=1)) == \
        "VmMemoryCanNotAttachMoreIpException"
    assert codes(lambda: cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)) == \
        "VmMemoryCanNotAttachMoreIpException"


def test_bbc_primary_nic_holds_forty_ips(cloud: SimCloud) -> None:
    bbc = cloud.create_instance(instance_type="BBC", cpus=48, memory_mib=262144, zone="zoneA", now=T0)
    for _ in range(3):
        cloud.add_instance_ips(bbc.instance_id, now=T0, count=10)
    cloud.add_instance_ips(bbc.instance_id, now=T0, count=9)
    assert len(bbc.secondary_ips) == 39
    assert codes(lambda: cloud.add_instance_ips(bbc.instance_id, now=T0, count=1)) == \
        "VmMemoryCanNotAttachMoreIpException"
    cloud.remove_instance_ips(bbc.instance_id, bbc.secondary_ips[:2], now=T0)
    assert len(bbc.secondary_ips) == 37


def test_batches_hold_one_to_ten_addresses(cloud: SimCloud) -> None:
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    assert codes(lambda: cloud.add_private_ips(eni.eni_id, now=T0, count=11)) == "InvalidParameter"
    assert codes(lambda: cloud.add_private_ips(eni.eni_id, now=T0, count=0)) == "InvalidParameter"
    assert codes(lambda: cloud.add_private_ips(eni.eni_id, now=T0, ips=["10.0.0.9"], count=1)) == "InvalidParameter"


def test_removing_missing_or_primary_ips(cloud: SimCloud) -> None:
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    assert codes(lambda: cloud.remove_private_ips(eni.eni_id, ["10.0.0.99"], now=T0)) == "ENIPrivateIPNotFound"
    assert codes(lambda: cloud.remove_private_ips(eni.eni_id, [eni.primary_ip], now=T0)) == "InvalidParameter"


# ---- ENI states -----------------------------------------------------------------------------------------------


def test_attach_and_detach_complete_after_their_delays(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)
    assert cloud.eni(eni.eni_id).status == EniStatus.ATTACHING
    assert cloud.advance(T0 + 0.5) == []
    [moved] = cloud.advance(T0 + 1)
    assert (moved.old, moved.new) == (EniStatus.ATTACHING, EniStatus.INUSE)
    assert codes(lambda: cloud.delete_eni(eni.eni_id, now=T0 + 1)) == "EniStatusInvalid"
    cloud.detach_eni(eni.eni_id, vm.instance_id, now=T0 + 2)
    assert (eni.status, eni.instance_id) == (EniStatus.DETACHING, vm.instance_id)
    cloud.advance(T0 + 3)
    assert (eni.status, eni.instance_id) == (EniStatus.AVAILABLE, None)
    cloud.delete_eni(eni.eni_id, now=T0 + 3)
    assert eni.eni_id not in cloud.enis


def test_state_errors(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    assert codes(lambda: cloud.detach_eni(eni.eni_id, vm.instance_id, now=T0)) == "EniStatusInvalid"
    cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)
    assert codes(lambda: cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)) == "EniStatusInvalid"
    assert codes(lambda: cloud.attach_eni("eni-nope", vm.instance_id, now=T0)) == "NoSuchObject"
    assert codes(lambda: cloud.attach_eni(eni.eni_id, "i-nope", now=T0)) == "NoSuchObject"


def test_eni_and_instance_zones_must_match(cloud: SimCloud) -> None:
    other = cloud.create_subnet(zone="zoneB", cidr="10.0.1.0/24")
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=other.subnet_id, now=T0)
    assert codes(lambda: cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)) == "InvalidParameter"


def test_deleting_an_instance_with_enis_needs_force(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)
    assert codes(lambda: cloud.delete_instance(vm.instance_id, now=T0)) == "OperationDenied"
    cloud.delete_instance(vm.instance_id, now=T0, force=True)
    assert eni.status == EniStatus.AVAILABLE and eni.instance_id is None
    assert vm.primary_ip not in cloud.subnet(subnet_id(cloud)).used


# ---- route rules ----------------------------------------------------------------------------------------------


def test_route_rules_repeated_and_quota() -> None:
    cloud = new_cloud(route_quota=2)
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    rt = cloud.main_route_table_id
    rule = cloud.create_route_rule(route_table_id=rt, destination="172.16.0.0/24", next_hop_id=vm.instance_id)
    assert codes(lambda: cloud.create_route_rule(route_table_id=rt, destination="172.16.0.0/24",
                                                 next_hop_id=vm.instance_id)) == "RouteRuleRepeated"
    cloud.create_route_rule(route_table_id=rt, destination="172.16.1.0/24", next_hop_id=vm.instance_id)
    assert codes(lambda: cloud.create_route_rule(route_table_id=rt, destination="172.16.2.0/24",
                                                 next_hop_id=vm.instance_id)) == "RouteRuleQuotaExceeded"
    cloud.delete_route_rule(rule.rule_id)
    assert codes(lambda: cloud.delete_route_rule(rule.rule_id)) == "NoSuchObject"
    assert codes(lambda: cloud.create_route_rule(route_table_id=rt, destination="not-a-cidr",
                                                 next_hop_id=vm.instance_id)) == "InvalidParameter"


# ---- ids, persistence and the fabric --------------------------------------------------------------------------


def test_ids_continue_after_a_round_trip_and_refusals_burn_none(cloud: SimCloud) -> None:
    first = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    with pytest.raises(CloudFault):
        cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0, primary_ip=first.primary_ip)
    restored = SimCloud.from_dict(json.loads(json.dumps(cloud.to_dict())))
    second = restored.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0)
    assert (first.eni_id, second.eni_id) == ("eni-00000001", "eni-00000002")
    assert first.mac != second.mac


def test_pending_moves_survive_a_round_trip(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    eni = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(eni.eni_id, vm.instance_id, now=T0)
    restored = SimCloud.from_dict(json.loads(json.dumps(cloud.to_dict())))
    assert restored == cloud
    restored.advance(T0 + 5)
    assert restored.eni(eni.eni_id).status == EniStatus.INUSE


def test_client_tokens_are_remembered_and_bounded(cloud: SimCloud) -> None:
    cloud.remember("create_eni", "t1", {"eniId": "eni-1"})
    assert cloud.recall("create_eni", "t1") == {"eniId": "eni-1"}
    assert cloud.recall("delete_eni", "t1") is None
    for n in range(1100):
        cloud.remember("create_eni", f"x{n}", {})
    assert len(cloud.tokens) == 1000 and cloud.recall("create_eni", "t1") is None


def test_fabric_spec_has_primary_nics_plugged_enis_and_rules(cloud: SimCloud) -> None:
    vm = cloud.create_instance(instance_type="BCC", cpus=4, memory_mib=8192, zone="zoneA", now=T0)
    inuse = cloud.create_eni(name="a", subnet_id=subnet_id(cloud), now=T0)
    attaching = cloud.create_eni(name="b", subnet_id=subnet_id(cloud), now=T0)
    cloud.attach_eni(inuse.eni_id, vm.instance_id, now=T0)
    cloud.advance(T0 + 1)
    cloud.attach_eni(attaching.eni_id, vm.instance_id, now=T0 + 1)
    cloud.create_route_rule(route_table_id=cloud.main_route_table_id, destination="172.16.0.0/24",
                            next_hop_id=vm.instance_id)
    spec = cloud.fabric_spec()
    [instance] = spec.instances
    assert instance.primary.primary and instance.primary.private_ips == (vm.primary_ip,)
    assert [n.nic_id for n in instance.enis] == [inuse.eni_id]
    assert instance.enis[0].mac == inuse.mac and instance.enis[0].subnet_cidr == "10.0.0.0/24"
    assert [(r.destination, r.next_hop_instance) for r in spec.route_rules] == [("172.16.0.0/24", vm.instance_id)]


def test_paginate_by_marker() -> None:
    items = [f"k{n}" for n in range(5)]
    page = paginate(items, str, None, 2)
    assert (page["items"], page["isTruncated"], page["nextMarker"]) == (["k0", "k1"], True, "k2")
    page = paginate(items, str, "k4", 2)
    assert (page["items"], page["isTruncated"], page["nextMarker"]) == (["k4"], False, "")


def test_state_file_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sim.json"
    assert load_state(path) is None
    save_state(path, {"a": 1})
    save_state(path, {"a": 2})
    assert load_state(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["sim.json"]


def test_corrupt_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text('{"version": 1, "vpc')
    with pytest.raises(StateFileError, match=str(path)):
        load_state(path)
    path.write_text("[1, 2]")
    with pytest.raises(StateFileError, match="expected a JSON object"):
        load_state(path)


# ---- the state machine ----------------------------------------------------------------------------------------


class CloudMachine(RuleBasedStateMachine):
    """Random ENI and IP operations on a small subnet; every refusal must be a CloudFault, and the books must
    always balance."""

    @initialize()
    def setup(self) -> None:
        self.cloud = SimCloud.create("10.0.0.0/16", tunables=Tunables(attach_delay_s=0.5, detach_delay_s=0.5))
        self.subnet = self.cloud.create_subnet(zone="zoneA", cidr="10.0.0.0/27")
        self.cloud.reserve(self.subnet.subnet_id, ips=["10.0.0.10", "10.0.0.11"])
        self.now = T0
        for kind, cpus, memory in (("BCC", 2, 1024), ("BCC", 8, 8192), ("BBC", 48, 131072)):
            self.cloud.create_instance(instance_type=kind, cpus=cpus, memory_mib=memory, zone="zoneA", now=T0)
        self.last_status = self.statuses()

    def statuses(self) -> dict[str, EniStatus]:
        return {eni_id: eni.status for eni_id, eni in self.cloud.enis.items()}

    def pick(self, data: st.DataObject, pool: list[str]) -> str:
        return data.draw(st.sampled_from(pool)) if pool else "missing"

    def attempt(self, op: object) -> None:
        assert callable(op)
        try:
            op()
            event("ok")
        except CloudFault as fault:
            event(fault.code)
            status = fault.status
            assert status in (400, 404, 409)

    @rule(dt=st.floats(min_value=0, max_value=1.5))
    def tick(self, dt: float) -> None:
        self.now += dt
        for moved in self.cloud.advance(self.now):
            event(f"{moved.old} -> {moved.new}")

    @rule(requested=st.none() | st.integers(min_value=0, max_value=31))
    def create_eni(self, requested: int | None) -> None:
        ip = None if requested is None else f"10.0.0.{requested}"
        self.attempt(lambda: self.cloud.create_eni(name="e", subnet_id=self.subnet.subnet_id, now=self.now,
                                                   primary_ip=ip))

    @precondition(lambda self: bool(self.cloud.enis))
    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        eni, vm = self.pick(data, sorted(self.cloud.enis)), self.pick(data, sorted(self.cloud.instances))
        self.attempt(lambda: self.cloud.attach_eni(eni, vm, now=self.now))

    @precondition(lambda self: bool(self.cloud.enis))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        inuse = sorted(e.eni_id for e in self.cloud.enis.values() if e.status == EniStatus.INUSE)
        eni = self.pick(data, inuse or sorted(self.cloud.enis))
        owner = self.cloud.enis[eni].instance_id
        vm = owner or self.pick(data, sorted(self.cloud.instances))
        self.attempt(lambda: self.cloud.detach_eni(eni, vm, now=self.now))

    @precondition(lambda self: bool(self.cloud.enis))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        eni = self.pick(data, sorted(self.cloud.enis))
        self.attempt(lambda: self.cloud.delete_eni(eni, now=self.now))

    @precondition(lambda self: bool(self.cloud.enis))
    @rule(data=st.data(), count=st.integers(min_value=0, max_value=12), explicit=st.booleans())
    def add_ips(self, data: st.DataObject, count: int, explicit: bool) -> None:
        eni = self.pick(data, sorted(self.cloud.enis))
        ips = [f"10.0.0.{data.draw(st.integers(0, 31))}" for _ in range(count)] if explicit else None
        self.attempt(lambda: self.cloud.add_private_ips(eni, now=self.now, ips=ips, count=0 if ips else count))

    @precondition(lambda self: bool(self.cloud.enis))
    @rule(data=st.data())
    def remove_ips(self, data: st.DataObject) -> None:
        eni = self.pick(data, sorted(self.cloud.enis))
        held = self.cloud.enis[eni].ips if eni in self.cloud.enis else ["10.0.0.1"]
        ips = data.draw(st.lists(st.sampled_from([*held, "10.0.0.30"]), min_size=1, max_size=4, unique=True))
        self.attempt(lambda: self.cloud.remove_private_ips(eni, ips, now=self.now))

    @rule(data=st.data(), count=st.integers(min_value=1, max_value=10))
    def add_instance_ips(self, data: st.DataObject, count: int) -> None:
        vm = self.pick(data, sorted(self.cloud.instances))
        self.attempt(lambda: self.cloud.add_instance_ips(vm, now=self.now, count=count))

    @rule(data=st.data())
    def remove_instance_ips(self, data: st.DataObject) -> None:
        vm = self.cloud.instances[self.pick(data, sorted(self.cloud.instances))]
        if vm.secondary_ips:
            ips = data.draw(st.lists(st.sampled_from(vm.secondary_ips), min_size=1, max_size=3, unique=True))
            self.attempt(lambda: self.cloud.remove_instance_ips(vm.instance_id, ips, now=self.now))

    @invariant()
    def subnet_books_balance(self) -> None:
        subnet = self.subnet
        owners: dict[str, str] = {}
        for eni in self.cloud.enis.values():
            for ip in eni.ips:
                assert ip not in owners, f"{ip} used twice"
                owners[ip] = eni.eni_id
        for vm in self.cloud.instances.values():
            for ip in [vm.primary_ip, *vm.secondary_ips]:
                assert ip not in owners, f"{ip} used twice"
                owners[ip] = vm.instance_id
        assert owners == subnet.used
        free = [ip for ip in subnet.candidates() if ip not in subnet.used and ip not in subnet.reserved]
        assert subnet.available == len(free) == subnet.size - len(subnet.reserved) - len(subnet.used) >= 0
        net = ipaddress.IPv4Network(subnet.cidr)
        assert not set(owners) & ({str(net.network_address), str(net.broadcast_address), subnet.gateway}
                                  | subnet.reserved)

    @invariant()
    def quotas_hold(self) -> None:
        for eni in self.cloud.enis.values():
            assert len(eni.ips) <= self.cloud.eni_ip_quota(eni)
        for vm in self.cloud.instances.values():
            assert len(self.cloud.enis_of(vm.instance_id)) <= vm.eni_quota
            assert 1 + len(vm.secondary_ips) <= vm.primary_nic_ip_quota

    @invariant()
    def states_move_only_along_edges(self) -> None:
        now = self.statuses()
        for eni_id, status in now.items():
            old = self.last_status.get(eni_id)
            assert (old is None and status == EniStatus.AVAILABLE) or old == status or (old, status) in ENI_EDGES
        for eni_id in set(self.last_status) - set(now):
            assert self.last_status[eni_id] == EniStatus.AVAILABLE
        for eni in self.cloud.enis.values():
            assert (eni.instance_id is None) == (eni.status == EniStatus.AVAILABLE)
            assert (eni.transition_at is not None) == (eni.status in (EniStatus.ATTACHING, EniStatus.DETACHING))
        self.last_status = now

    @invariant()
    def round_trip_is_identity(self) -> None:
        data = self.cloud.to_dict()
        restored = SimCloud.from_dict(json.loads(json.dumps(data)))
        assert restored == self.cloud
        assert restored.to_dict() == data


TestCloudMachine = CloudMachine.TestCase
TestCloudMachine.settings = settings(max_examples=80, stateful_step_count=50, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])

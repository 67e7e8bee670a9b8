"""Unit tier: vpc-eni-primary decisions — eni_manager's plan for the primary NIC (batch adds toward the target, the
confirmed releases, never its own IP, the NIC's IP quota), node removal, the record from the instance, and ipam's
view of the NIC (pool IPs, endpoint addressing, quota, mode at registration)."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

import pytest

from cloud.port import CloudInstance
from schemas.base import InstanceType, NetworkMode
from schemas.messages import AllocateRequest, NodeRegisterRequest, PodRef
from schemas.quotas import primary_nic_ips
from schemas.records import (
    Eni,
    EniState,
    EniUse,
    NetResourceSet,
    NodePool,
    NodeSpec,
    PoolDemand,
    PrivateIp,
    ReleaseMark,
    ReleaseState,
    Subnet,
)
from services.eni_manager.domain import (
    AddPrimaryIps,
    DeleteEni,
    DropPrimaryNic,
    PlanSettings,
    RemovePrimaryIps,
    SyncPrimaryNic,
    plan_removal,
)
from services.eni_manager.mirror import primary_nic_record
from services.eni_manager.modes import is_eniless, plan_primary, primary_nic_id, primary_quota
from services.ipam import domain
from services.ipam.handlers import registered_mode

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODE = "bbc-1"
SUBNET = IPv4Network("10.0.0.0/20")


def spec(**extra: object) -> NodeSpec:
    values: dict[str, object] = {"instance_id": "i-1", "instance_type": InstanceType.BBC, "zone": "zoneA", "cpus": 8,
                                 "memory_mib": 32768, "mode": NetworkMode.VPC_ENI_PRIMARY, **extra}
    return NodeSpec.model_validate(values)


def nic(secondaries: int, ip_quota: int = 40) -> Eni:
    ips = [PrivateIp(ip=IPv4Address("10.0.0.5"), primary=True)]
    ips += [PrivateIp(ip=IPv4Address(f"10.0.1.{i + 1}")) for i in range(secondaries)]
    return Eni(eni_id="primary-i-1", node=NODE, instance_id="i-1", use=EniUse.PRIMARY_NIC, subnet_id="sbn-1",
               subnet_cidr=SUBNET, state=EniState.INUSE, private_ips=ips, ip_quota=ip_quota)


def pool(target: int, confirmed: tuple[str, ...] = ()) -> NodePool:
    marks = {ip: ReleaseMark(eni_id="primary-i-1", state=ReleaseState.CONFIRMED) for ip in confirmed}
    return NodePool(node=NODE, releasing=marks, demand=PoolDemand(target_ips=target))


NRS = NetResourceSet(name=NODE, spec=spec())
SUBNETS = {"sbn-1": Subnet(subnet_id="sbn-1", vpc_id="v", zone="zoneA", cidr=SUBNET, available_ips=1000)}


def test_the_nic_is_read_first_then_ips_are_added_in_batches_of_10() -> None:
    assert plan_primary(NRS, None, pool(10), SUBNETS).actions == (SyncPrimaryNic(),)
    plan = plan_primary(NRS, nic(0), pool(25), SUBNETS)
    assert plan.actions == (AddPrimaryIps(10), AddPrimaryIps(10), AddPrimaryIps(5)) and plan.error is None
    assert plan_primary(NRS, nic(25), pool(25), SUBNETS).is_idle


def test_a_full_nic_adds_what_fits_and_says_enicapacityexceed() -> None:
    plan = plan_primary(NRS, nic(35), pool(45), SUBNETS)
    assert plan.actions == (AddPrimaryIps(4),)
    assert plan.error is not None and plan.error.reason.value == "ENICapacityExceed"
    assert "36 of 40" in plan.error.message


def test_confirmed_releases_leave_the_nic_and_its_own_ip_never_does() -> None:
    plan = plan_primary(NRS, nic(3), pool(2, confirmed=("10.0.1.1", "10.0.0.5")), SUBNETS)
    assert plan.actions == (RemovePrimaryIps(("10.0.1.1",)),)  # 2 left: the target


def test_a_short_subnet_limits_the_adds() -> None:
    short = {"sbn-1": SUBNETS["sbn-1"].model_copy(update={"available_ips": 3})}
    plan = plan_primary(NRS, nic(0), pool(10), short)
    assert plan.actions == (AddPrimaryIps(3),)
    assert plan.error is not None and plan.error.reason.value == "SubnetNoMoreIP"


def test_a_removed_node_gives_back_the_nic_ips_and_deletes_only_real_enis() -> None:
    exclusive = nic(0).model_copy(update={"eni_id": "eni-1", "use": EniUse.SECONDARY_IPS, "index": 1})
    plan = plan_removal(NODE, [nic(2), exclusive], T0, PlanSettings(removal_grace_s=0), T0)
    assert plan.actions == (DropPrimaryNic(("10.0.1.1", "10.0.1.2")), DeleteEni("eni-1", "node-removed"))


def test_the_nic_record_comes_from_the_instance() -> None:
    inst = CloudInstance(instance_id="i-1", name="bbc-1", instance_type=InstanceType.BBC, zone="zoneA", cpus=8,
                         memory_mib=32768, vpc_id="vpc-1", subnet_id="sbn-1", primary_ip="10.0.0.5",
                         primary_mac="fa:16:3e:00:00:01", secondary_ips=("10.0.1.2", "10.0.1.1"))
    record = primary_nic_record(inst, node=NODE, eni_id=primary_nic_id("i-1"), subnet_cidr=SUBNET, ip_quota=40,
                                now=T0)
    assert (record.eni_id, record.use, record.mac, record.state) == (
        "primary-i-1", EniUse.PRIMARY_NIC, "fa:16:3e:00:00:01", EniState.INUSE)
    assert [str(p.ip) for p in record.private_ips] == ["10.0.0.5", "10.0.1.1", "10.0.1.2"]
    assert str(record.primary_ip) == "10.0.0.5"


@pytest.mark.parametrize(("kind", "memory_mib", "override", "ips"), [
    ("BBC", 262144, None, 40), ("EBC", 16384, None, 16), ("EBC", 131072, None, 40), ("BBC", 262144, 12, 12)])
def test_primary_nic_ip_quota(kind: str, memory_mib: int, override: int | None, ips: int) -> None:
    assert primary_nic_ips(kind, memory_mib, override) == ips


def test_an_eniless_instance_is_detected_only_for_vpc_eni_nodes_without_override() -> None:
    ebc = spec(instance_type=InstanceType.EBC, mode=NetworkMode.VPC_ENI)
    assert is_eniless(0, ebc)
    assert not is_eniless(2, ebc) and not is_eniless(None, ebc)
    assert not is_eniless(0, ebc.model_copy(update={"max_enis": 2}))
    assert primary_quota(spec()).ips_per_eni == 40 and primary_quota(spec()).max_enis == 0


def test_ipam_takes_pod_ips_from_the_primary_nic_with_the_subnet_gateway_and_no_table() -> None:
    secondary = nic(0).model_copy(update={"eni_id": "eni-x", "use": EniUse.SECONDARY_IPS, "index": 1,
                                          "private_ips": [PrivateIp(ip=IPv4Address("10.0.2.1"))]})
    f = domain.NodeFacts(node=NODE, spec=spec(), enis=(nic(2), secondary))
    view = domain.PoolView(NodePool(node=NODE), f, T0)
    assert [str(s.ip) for s in view.slots] == ["10.0.1.1", "10.0.1.2"]  # never the NIC's own IP
    assert (f.quota.max_enis, f.quota.ips_per_eni) == (1, 40)
    claim = domain.claim_ip(NodePool(node=NODE), f, f"{NODE}.c.eth0", T0, wait=False)
    assert claim.slot is not None
    req = AllocateRequest(node=NODE, container_id="c", pod=PodRef(namespace="d", name="p"))
    address = domain.new_endpoint(req, NetworkMode.VPC_ENI_PRIMARY, claim.slot, T0, 60).addresses[0]
    assert (str(address.gateway), address.route_table, address.eni_id, address.prefix_len) == (
        "10.0.0.1", None, "primary-i-1", 32)
    assert domain.node_capacity(view).attachable_ips == 37


def test_registration_runs_a_bbc_in_primary_mode_and_keeps_a_detected_primary_mode() -> None:
    def req(kind: InstanceType, mode: NetworkMode = NetworkMode.VPC_ENI) -> NodeRegisterRequest:
        return NodeRegisterRequest(node=NODE, instance_id="i-1", instance_type=kind, zone="zoneA", cpus=8,
                                   memory_mib=32768, mode=mode)

    assert registered_mode(req(InstanceType.BBC), None) is NetworkMode.VPC_ENI_PRIMARY
    assert registered_mode(req(InstanceType.BCC), None) is NetworkMode.VPC_ENI
    assert registered_mode(req(InstanceType.EBC), spec(instance_type=InstanceType.EBC)) is NetworkMode.VPC_ENI_PRIMARY
    assert registered_mode(req(InstanceType.BCC, NetworkMode.VPC_ENI_EXCLUSIVE), None) is NetworkMode.VPC_ENI_EXCLUSIVE

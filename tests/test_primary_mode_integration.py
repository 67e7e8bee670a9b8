"""Integration tier: vpc-eni-primary (the instance's primary NIC carries the pod IPs) as real processes (ipam,
eni_manager) with a real nats-server and the simulated VPC over HTTP through the production adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.rpc import call
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import ReleaseRequest
from schemas.records import EniUse, PoolSettings
from schemas.subjects import IPAM_RELEASE
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path) as c:
        yield c


async def instance_ips(cluster: Cluster, instance_id: str) -> tuple[str, set[str]]:
    inst = await cluster.api().get_instance(instance_id)
    return inst.primary_ip, set(inst.secondary_ips)


async def test_a_bbc_node_gets_39_pod_ips_from_its_primary_nic_and_the_40th_fails(cluster: Cluster,
                                                                                    sim_admin: SimAdmin) -> None:
    inst = await sim_admin.create_instance(name="bbc-1", instance_type="BBC", cpus=8, memory_mib=32768)
    await cluster.register("bbc-1", inst, mode=NetworkMode.VPC_ENI_PRIMARY)
    nic_id = f"primary-{inst['id']}"

    async def filled() -> bool:
        pool = await cluster.pool("bbc-1")
        return pool is not None and pool.demand.free >= 10

    await until(filled, 20, "10 free IPs on bbc-1's primary NIC")
    records = await cluster.eni_records("bbc-1")
    assert [(r.eni_id, r.use) for r in records] == [(nic_id, EniUse.PRIMARY_NIC)]
    assert records[0].mac == inst["nicInfo"]["macAddress"]  # type: ignore[index]
    assert await cluster.cloud_enis(str(inst["id"])) == []  # no ENI was created

    replies = await asyncio.gather(*(cluster.allocate("bbc-1", f"p{i:02d}") for i in range(39)))
    ips = {str(r.endpoint.addresses[0].ip) for r in replies}
    assert len(ips) == 39
    primary, secondaries = await instance_ips(cluster, str(inst["id"]))
    assert ips == secondaries
    assert primary not in ips
    address = replies[0].endpoint.addresses[0]
    subnet = IPv4Network(str(address.subnet_cidr))
    assert (address.eni_id, address.route_table, address.gateway) == (nic_id, None, next(subnet.hosts()))
    assert replies[0].endpoint.mode is NetworkMode.VPC_ENI_PRIMARY

    with pytest.raises(CceError) as info:
        await cluster.allocate("bbc-1", "p39", wait_s=2)
    assert info.value.reason is ErrorReason.ENI_CAPACITY_EXCEED
    assert "40 of 40" in info.value.message


async def test_released_ips_leave_the_primary_nic_through_the_handshake(cluster: Cluster,
                                                                        sim_admin: SimAdmin) -> None:
    inst = await sim_admin.create_instance(name="bbc-1", instance_type="BBC", cpus=8, memory_mib=32768)
    pool = PoolSettings(cooldown_s=0, release_delay_s=0, max_above_watermark=4)
    await cluster.register("bbc-1", inst, mode=NetworkMode.VPC_ENI_PRIMARY, pool=pool)
    await asyncio.gather(*(cluster.allocate("bbc-1", f"p{i:02d}") for i in range(30)))
    primary, before = await instance_ips(cluster, str(inst["id"]))
    assert len(before) >= 30
    for i in range(30):
        await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node="bbc-1", container_id=f"p{i:02d}"))

    async def shrunk() -> bool:
        # keep = max(min_allocate 10, pre_allocate 2 + max_above_watermark 4) = 10 free IPs
        return len((await instance_ips(cluster, str(inst["id"])))[1]) == 10

    await until(shrunk, 20, "the primary NIC to shrink to 10 secondary IPs")
    after_primary, after = await instance_ips(cluster, str(inst["id"]))
    assert after_primary == primary
    await until(lambda: _record_has(cluster, "bbc-1", after), 10, "the record to follow the cloud")
    nic = (await cluster.eni_records("bbc-1"))[0]
    assert nic.primary_ip is not None and str(nic.primary_ip) == primary


async def _record_has(cluster: Cluster, node: str, ips: set[str]) -> bool:
    records = await cluster.eni_records(node)
    return bool(records) and {str(ip) for ip in records[0].secondary_ips} == ips


async def test_modes_are_detected_from_the_instance(cluster: Cluster, sim_admin: SimAdmin) -> None:
    bbc = await sim_admin.create_instance(name="bbc-auto", instance_type="BBC", cpus=8, memory_mib=32768)
    ebc = await sim_admin.create_instance(name="ebc-noeni", instance_type="EBC", cpus=8, memory_mib=16384,
                                          eni_quota=0)
    await cluster.register("bbc-auto", bbc)  # the default mode, vpc-eni
    await cluster.register("ebc-noeni", ebc)
    nrs = await cluster.nrs("bbc-auto")
    assert nrs is not None and nrs.spec.mode is NetworkMode.VPC_ENI_PRIMARY

    async def switched() -> bool:
        nrs = await cluster.nrs("ebc-noeni")
        return nrs is not None and nrs.spec.mode is NetworkMode.VPC_ENI_PRIMARY

    await until(switched, 20, "ebc-noeni to be found ENI-less")
    reply = await cluster.allocate("ebc-noeni", "pod-a")
    assert reply.endpoint.addresses[0].eni_id == f"primary-{ebc['id']}"
    assert str(reply.endpoint.addresses[0].ip) in (await instance_ips(cluster, str(ebc["id"])))[1]
    assert await cluster.cloud_enis(str(ebc["id"])) == []

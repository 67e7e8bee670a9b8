"""Integration tier: vpc-eni-exclusive (a whole ENI per pod) as real processes (ipam, eni_manager) with a real
nats-server and the simulated VPC over HTTP through the production adapter. No datapath: the control plane only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.rpc import call
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import ReleaseRequest
from schemas.records import EniState, EniUse, PoolSettings
from schemas.subjects import ENDPOINTS, IPAM_RELEASE
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane, until

pytestmark = pytest.mark.integration
ORPHAN_GRACE_S = 2.0


@pytest.fixture
async def cluster(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path,
                                 service_env={"ipam": {"CCE_ORPHAN_GRACE_S": str(ORPHAN_GRACE_S)}}) as c:
        yield c


async def quota3_node(cluster: Cluster, admin: SimAdmin, name: str, **register: object) -> dict[str, object]:
    """A BCC whose quota allows exactly 3 ENIs besides its primary NIC (in the cloud and in the registration)."""
    inst = await admin.create_instance(name=name, cpus=8, memory_mib=16384, eni_quota=3)
    register.setdefault("mode", NetworkMode.VPC_ENI_EXCLUSIVE)
    await cluster.register(name, inst, max_enis=3, **register)  # type: ignore[arg-type]
    return inst


async def free_enis(cluster: Cluster, node: str) -> int:
    nrs = await cluster.nrs(node)
    return nrs.status.capacity.free_enis if nrs is not None else -1


async def release(cluster: Cluster, node: str, cid: str) -> None:
    await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=cid))


async def test_an_exclusive_node_keeps_one_spare_eni_ready(cluster: Cluster, sim_admin: SimAdmin) -> None:
    inst = await quota3_node(cluster, sim_admin, "x-1")
    await until(lambda: _free_is(cluster, "x-1", 1), 20, "one spare ENI on x-1")
    enis = await cluster.cloud_enis(str(inst["id"]))
    assert len(enis) == 1 and enis[0].status is EniState.INUSE
    assert enis[0].secondary_ips == []  # a whole ENI: no secondary IPs
    records = await cluster.eni_records("x-1")
    assert [r.use for r in records] == [EniUse.EXCLUSIVE]
    first = await cluster.allocate("x-1", "pod-a")
    assert first.endpoint.addresses[0].eni_id == enis[0].eni_id
    # the node status may still say 1 free from before the allocation: wait for the second ENI in the cloud too
    async def new_spare() -> bool:
        return len(await cluster.cloud_enis(str(inst["id"]))) == 2 and await _free_is(cluster, "x-1", 1)

    await until(new_spare, 20, "a new spare once the first is taken")
    pool = await cluster.pool("x-1")
    assert pool is not None and pool.demand.target_enis == 2 and pool.demand.enis_used == 1


async def _free_is(cluster: Cluster, node: str, count: int) -> bool:
    return await free_enis(cluster, node) == count


async def test_three_pods_fill_a_quota_3_node_the_4th_is_refused_and_gets_in_after_a_release(
    cluster: Cluster, sim_admin: SimAdmin
) -> None:
    inst = await quota3_node(cluster, sim_admin, "x-1", pool=PoolSettings(eni_cooldown_s=1.0))
    replies = await asyncio.gather(*(cluster.allocate("x-1", f"pod-{i}") for i in range(3)))
    cloud = {e.eni_id: e for e in await cluster.cloud_enis(str(inst["id"]))}
    assert len(cloud) == 3
    held = [r.endpoint.addresses[0] for r in replies]
    assert sorted(str(a.eni_id) for a in held) == sorted(cloud)  # three pods, three different ENIs
    for address, reply in zip(held, replies, strict=True):
        eni = cloud[str(address.eni_id)]
        assert str(address.ip) == eni.primary_ip
        assert address.mac == eni.mac and address.route_table is None
        assert address.subnet_cidr is not None and address.prefix_len == address.subnet_cidr.prefixlen
        assert address.gateway == next(address.subnet_cidr.hosts())
        assert reply.endpoint.mode is NetworkMode.VPC_ENI_EXCLUSIVE

    started = time.monotonic()
    with pytest.raises(CceError) as info:
        await cluster.allocate("x-1", "pod-3", wait_s=10)
    assert info.value.reason is ErrorReason.ENI_CAPACITY_EXCEED
    assert time.monotonic() - started < 2  # refused at once: waiting would not help
    assert await free_enis(cluster, "x-1") == 0

    await release(cluster, "x-1", "pod-1")
    fourth = await cluster.allocate("x-1", "pod-3", wait_s=10)  # waits out the ENI's 1 s cooldown
    assert fourth.endpoint.addresses[0].eni_id == held[1].eni_id
    again = await cluster.allocate("x-1", "pod-3")
    assert again.reused and again.endpoint.addresses[0].eni_id == held[1].eni_id
    assert len(await cluster.cloud_enis(str(inst["id"]))) == 3


async def test_enis_beyond_the_spare_are_deleted_once_the_pods_are_gone_and_the_surplus_lasted(
    cluster: Cluster, sim_admin: SimAdmin
) -> None:
    inst = await quota3_node(cluster, sim_admin, "x-1", pool=PoolSettings(eni_cooldown_s=0, eni_release_after_s=1.0))
    replies = await asyncio.gather(*(cluster.allocate("x-1", f"pod-{i}") for i in range(3)))
    held = {str(r.endpoint.addresses[0].eni_id) for r in replies}
    for i in range(3):
        await release(cluster, "x-1", f"pod-{i}")

    async def one_spare_left() -> bool:
        cloud = await cluster.cloud_enis(str(inst["id"]))
        pool = await cluster.pool("x-1")
        return len(cloud) == 1 and len(await cluster.eni_records("x-1")) == 1 and await _free_is(cluster, "x-1", 1) \
            and pool is not None and pool.eni_releasing == {}  # the marks go with the ENIs

    await until(one_spare_left, 30, "the two ENIs beyond the spare deleted")
    [spare] = await cluster.cloud_enis(str(inst["id"]))
    assert spare.eni_id in held and spare.status is EniState.INUSE
    again = await cluster.allocate("x-1", "pod-9")  # the spare is handed out, and a new spare follows
    assert str(again.endpoint.addresses[0].eni_id) == spare.eni_id
    await until(lambda: _cloud_count_is(cluster, str(inst["id"]), 2), 20, "a new spare")


async def _cloud_count_is(cluster: Cluster, instance_id: str, count: int) -> bool:
    return len(await cluster.cloud_enis(instance_id)) == count

async def test_an_eni_whose_endpoint_vanished_is_reclaimed_after_the_grace_period(cluster: Cluster,
                                                                                 sim_admin: SimAdmin) -> None:
    await quota3_node(cluster, sim_admin, "x-1", pool=PoolSettings(eni_cooldown_s=0))
    reply = await cluster.allocate("x-1", "pod-a")
    eni_id = str(reply.endpoint.addresses[0].eni_id)
    endpoints = await cluster.store(ENDPOINTS)
    await endpoints.delete("x-1.pod-a.eth0")
    vanished = time.monotonic()
    await asyncio.sleep(ORPHAN_GRACE_S / 4)
    pool = await cluster.pool("x-1")
    assert pool is not None and pool.exclusive.get(eni_id) == "x-1.pod-a.eth0"  # not at once: two phases

    async def reclaimed() -> bool:
        pool = await cluster.pool("x-1")
        return pool is not None and eni_id not in pool.exclusive

    await until(reclaimed, 15, "the vanished pod's ENI to be reclaimed")
    assert time.monotonic() - vanished >= ORPHAN_GRACE_S
    other = await cluster.allocate("x-1", "pod-b")
    assert other.endpoint.addresses[0].eni_id is not None


async def test_pods_opt_in_to_an_exclusive_eni_on_vpc_eni_nodes_that_allow_it(cluster: Cluster,
                                                                              sim_admin: SimAdmin) -> None:
    await quota3_node(cluster, sim_admin, "mixed", mode=NetworkMode.VPC_ENI, allow_exclusive=True)
    await quota3_node(cluster, sim_admin, "plain", mode=NetworkMode.VPC_ENI)
    shared = await cluster.allocate("mixed", "pod-shared")
    whole = await cluster.allocate("mixed", "pod-whole", exclusive=True)
    assert shared.endpoint.mode is NetworkMode.VPC_ENI and shared.endpoint.addresses[0].prefix_len == 32
    assert whole.endpoint.mode is NetworkMode.VPC_ENI_EXCLUSIVE
    assert whole.endpoint.addresses[0].eni_id != shared.endpoint.addresses[0].eni_id
    records = {r.eni_id: r.use for r in await cluster.eni_records("mixed")}
    assert records[str(whole.endpoint.addresses[0].eni_id)] is EniUse.EXCLUSIVE
    assert records[str(shared.endpoint.addresses[0].eni_id)] is EniUse.SECONDARY_IPS
    with pytest.raises(CceError) as info:
        await cluster.allocate("plain", "pod-whole", exclusive=True)
    assert info.value.reason is ErrorReason.INVALID_REQUEST


async def test_a_mixed_cluster_serves_each_node_in_its_registered_mode(cluster: Cluster, sim_admin: SimAdmin) -> None:
    eni_node = await sim_admin.create_instance(name="n-eni", cpus=8, memory_mib=16384)
    bbc = await sim_admin.create_instance(name="n-bbc", instance_type="BBC", cpus=8, memory_mib=32768)
    await cluster.register("n-eni", eni_node)
    await cluster.register("n-bbc", bbc, mode=NetworkMode.VPC_ENI_PRIMARY)
    await quota3_node(cluster, sim_admin, "n-excl")
    replies = {node: await cluster.allocate(node, f"pod-{node}") for node in ("n-eni", "n-bbc", "n-excl")}
    assert {node: r.endpoint.mode for node, r in replies.items()} == {
        "n-eni": NetworkMode.VPC_ENI, "n-bbc": NetworkMode.VPC_ENI_PRIMARY, "n-excl": NetworkMode.VPC_ENI_EXCLUSIVE}
    uses = {node: {r.use for r in await cluster.eni_records(node)} for node in replies}
    assert uses == {"n-eni": {EniUse.SECONDARY_IPS}, "n-bbc": {EniUse.PRIMARY_NIC}, "n-excl": {EniUse.EXCLUSIVE}}
    tables = {node: replies[node].endpoint.addresses[0].route_table for node in replies}
    assert tables["n-eni"] is not None and tables["n-bbc"] is None and tables["n-excl"] is None

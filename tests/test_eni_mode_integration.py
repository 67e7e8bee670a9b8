"""Integration tier: the ENI secondary-IP control plane as real processes (2 ipam, 2 eni_manager) with a real
nats-server and the simulated VPC over HTTP through the production adapter. No datapath yet."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.rpc import call
from schemas.errors import CceError, ErrorReason
from schemas.messages import ReleaseRequest
from schemas.records import EniState, PoolSettings
from schemas.subjects import ENDPOINTS, IPAM_RELEASE
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.faults import FaultConfig, RateLimitSpec
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane, until

pytestmark = pytest.mark.integration
NODE_SHAPE = {"cpus": 8, "memory_mib": 32768}  # 8 ENIs of 16 IPs: 120 pod IPs


@pytest.fixture
async def cluster(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path, ipam=2, eni_managers=2) as c:
        yield c


async def new_node(cluster: Cluster, admin: SimAdmin, name: str, **register: object) -> dict[str, object]:
    inst = await admin.create_instance(name=name, **NODE_SHAPE)  # type: ignore[arg-type]
    await cluster.register(name, inst, **register)  # type: ignore[arg-type]
    return inst


async def test_a_joining_node_fills_its_pool_to_min_allocate(cluster: Cluster, sim_admin: SimAdmin) -> None:
    started = time.monotonic()
    inst = await new_node(cluster, sim_admin, "node-1")

    async def filled() -> bool:
        pool = await cluster.pool("node-1")
        return pool is not None and pool.demand.free >= 10

    await until(filled, 20, "10 free IPs on node-1")
    took = time.monotonic() - started
    enis = await cluster.cloud_enis(str(inst["id"]))
    assert len(enis) == 1
    assert enis[0].status is EniState.INUSE
    assert len(enis[0].secondary_ips) >= 10
    print(f"pool reached min-allocate in {took:.2f}s")


async def test_110_concurrent_allocations_get_unique_cloud_ips_and_the_111th_fails(
    cluster: Cluster, sim_admin: SimAdmin
) -> None:
    inst = await new_node(cluster, sim_admin, "node-1")
    replies = await asyncio.gather(*(cluster.allocate("node-1", f"c{i:03d}") for i in range(110)))
    ips = [str(r.endpoint.addresses[0].ip) for r in replies]
    assert len(set(ips)) == 110
    cloud_ips = {ip for eni in await cluster.cloud_enis(str(inst["id"])) for ip in eni.secondary_ips}
    assert set(ips) <= cloud_ips
    by_eni = {str(a.eni_id) for r in replies for a in r.endpoint.addresses}
    assert by_eni <= {e.eni_id for e in await cluster.cloud_enis(str(inst["id"]))}
    with pytest.raises(CceError) as info:
        await cluster.allocate("node-1", "c110", wait_s=2)
    assert info.value.reason is ErrorReason.IP_POOL_EXHAUSTED
    assert "max" in info.value.message


async def test_repeat_allocate_is_idempotent_and_released_ips_cool_down(cluster: Cluster,
                                                                          sim_admin: SimAdmin) -> None:
    await new_node(cluster, sim_admin, "node-1")
    first = await cluster.allocate("node-1", "pod-a")
    again = await cluster.allocate("node-1", "pod-a")
    assert again.reused
    assert again.endpoint.addresses[0].ip == first.endpoint.addresses[0].ip
    ip = first.endpoint.addresses[0].ip
    released = await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node="node-1", container_id="pod-a"))
    assert released.released
    unknown = await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node="node-1", container_id="never-seen"))
    assert not unknown.released
    pool = await cluster.pool("node-1")
    assert pool is not None and str(ip) in pool.cooldown
    others = [await cluster.allocate("node-1", f"pod-{i}") for i in range(12)]
    assert ip not in {r.endpoint.addresses[0].ip for r in others}


async def test_killing_an_ipam_replica_mid_burst_loses_and_duplicates_nothing(cluster: Cluster,
                                                                               sim_admin: SimAdmin) -> None:
    await new_node(cluster, sim_admin, "node-1")
    keys = [f"burst{i:02d}" for i in range(60)]
    burst = asyncio.gather(*(cluster.allocate("node-1", k, retries=5, timeout=5) for k in keys))
    await asyncio.sleep(0.3)
    cluster.kill("ipam-1")
    replies = await burst
    ips = [str(r.endpoint.addresses[0].ip) for r in replies]
    assert len(set(ips)) == 60
    pool = await cluster.pool("node-1")
    assert pool is not None
    endpoints = await (await cluster.store(ENDPOINTS)).list("node-1.")
    assert {str(e.value.addresses[0].ip) for e in endpoints.values()} == set(ips)
    assert set(pool.allocated) == set(ips)
    assert sorted(pool.allocated.values()) == sorted(endpoints)


async def test_killing_the_eni_manager_leader_mid_creation_creates_no_second_eni(cluster: Cluster,
                                                                                 sim_admin: SimAdmin) -> None:
    await sim_admin.set_settings(attach_delay_s=2.0)
    inst = await new_node(cluster, sim_admin, "node-1")
    leader = await cluster.leader("eni_manager")
    assert leader is not None

    async def attaching() -> bool:
        enis = await cluster.api().list_enis(vpc_id=cluster.sim.vpc_id)
        return any(e.status is EniState.ATTACHING for e in enis)

    await until(attaching, 15, "an ENI being attached")
    cluster.kill(leader)
    await until(lambda: _other_leads(cluster, leader), 10, "the standby to lead")

    async def filled() -> bool:
        pool = await cluster.pool("node-1")
        return pool is not None and pool.demand.free >= 10

    await until(filled, 30, "node-1's pool to fill")
    ours = [e for e in await cluster.api().list_enis(vpc_id=cluster.sim.vpc_id) if "node-1" in e.name]
    assert len(ours) == 1, [(e.eni_id, e.status) for e in ours]
    assert ours[0].instance_id == inst["id"]


async def _other_leads(cluster: Cluster, old: str) -> bool:
    holder = await cluster.leader("eni_manager")
    return holder is not None and holder != old


async def test_churn_under_cloud_faults_converges_with_records_equal_to_the_cloud(
    cluster: Cluster, sim_admin: SimAdmin
) -> None:
    await sim_admin.set_faults(FaultConfig(
        error_rates={api: 0.1 for api in ("create_eni", "attach_eni", "batch_add_private_ips",
                                          "batch_delete_private_ips", "get_eni", "list_enis")},
        rate_limits={"batch_add_private_ips": RateLimitSpec(rate_per_s=5, burst=5)},
        seed=7,
    ))
    inst = await new_node(cluster, sim_admin, "node-1",
                          pool=PoolSettings(cooldown_s=0.5, release_delay_s=0.5))
    rng = random.Random(1)
    live: set[str] = set()
    ops = 0

    async def worker(w: int) -> None:
        nonlocal ops
        for i in range(100):
            if live and (len(live) > 40 or rng.random() < 0.5):
                key = rng.choice(sorted(live))
                live.discard(key)
                await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node="node-1", container_id=key))
            else:
                key = f"w{w}-{i}"
                await cluster.allocate("node-1", key, retries=3)
                live.add(key)  # only a pod that has its IP can be deleted
            ops += 1

    await asyncio.gather(*(worker(w) for w in range(10)))
    assert ops == 1000
    for key in sorted(live):
        await call(cluster.bus, IPAM_RELEASE, ReleaseRequest(node="node-1", container_id=key))
    await sim_admin.clear_faults()

    async def converged() -> bool:
        pool = await cluster.pool("node-1")
        if pool is None or pool.allocated or pool.waiting or pool.releasing:
            return False
        records = {e.eni_id: sorted(map(str, e.secondary_ips)) for e in await cluster.eni_records("node-1")}
        cloud = {e.eni_id: sorted(e.secondary_ips) for e in await cluster.cloud_enis(str(inst["id"]))}
        return records == cloud

    try:
        await until(converged, 60, "records and cloud to agree", every=0.5)
    except AssertionError:
        pool = await cluster.pool("node-1")
        records = {e.eni_id: sorted(map(str, e.secondary_ips)) for e in await cluster.eni_records("node-1")}
        cloud = {e.eni_id: sorted(e.secondary_ips) for e in await cluster.cloud_enis(str(inst["id"]))}
        raise AssertionError(f"pool={pool and pool.model_dump_json()}\nrecords={records}\ncloud={cloud}\n"
                             f"provision={await cluster.provision('node-1')}") from None
    ours = [e for e in await cluster.api().list_enis(vpc_id=cluster.sim.vpc_id) if e.name.startswith("cce-")]
    assert {e.eni_id for e in ours} == {e.eni_id for e in await cluster.eni_records("node-1")}
    assert await (await cluster.store(ENDPOINTS)).list("node-1.") == {}

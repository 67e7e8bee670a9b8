"""Component/integration tier: ipam replicas in-process against a real nats-server, with eni_manager's part played
by the stateful `EniDouble` (tests/eni_double.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.msg import Msg

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import KvCache, Store, Versioned
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.base import subject_token
from schemas.errors import CceError, ErrorReason, ErrorReply
from schemas.messages import (
    AllocateReply,
    AllocateRequest,
    ConfirmRequest,
    NodeRegisterReply,
    NodeRegisterRequest,
    NodeRemoveRequest,
    PodRef,
    ReleaseReply,
    ReleaseRequest,
)
from schemas.records import CceEndpoint, EndpointState, NetResourceSet, NodePool, PoolSettings, ReleaseState
from schemas.subjects import (
    ENDPOINTS,
    IPAM,
    IPAM_ALLOCATE,
    IPAM_CONFIRM,
    IPAM_RELEASE,
    NODE_REGISTER,
    NODE_REMOVE,
    NODES,
    POOLS,
    endpoint_key,
)
from services.ipam.main import Ipam, build
from services.ipam.settings import IpamSettings
from tests.eni_double import EniDouble, wait_until

pytestmark = pytest.mark.integration
NODE = "node-1"
KEY = subject_token(NODE)


@dataclass
class Replica:
    proc: ServiceProcess
    ipam: Ipam
    stopped: bool = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.proc.shutdown()


StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replicas(settings: ChassisSettings) -> AsyncIterator[StartReplica]:
    started: list[Replica] = []

    async def start(service_id: str = "ipam-a", **overrides: Any) -> Replica:
        values = {**settings.model_dump(), "service_id": service_id, "maintenance_period_s": 0.1, **overrides}
        proc = ServiceProcess(IPAM, IpamSettings(**values))
        await proc.start()
        replica = Replica(proc, await build(proc))
        proc.ready = True
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def ipam(replicas: StartReplica) -> Replica:
    return await replicas()


@pytest.fixture
async def double(bus: Bus) -> AsyncIterator[EniDouble]:
    d = await EniDouble(bus).start()
    yield d
    await d.close()


@dataclass
class Watch:
    """The test's own view of ipam's buckets, to wait on conditions."""

    nodes: KvCache[NetResourceSet]
    pools: KvCache[NodePool]
    endpoints: KvCache[CceEndpoint]
    pool_history: list[NodePool] = field(default_factory=list)

    def pool(self) -> NodePool:
        pool = self.pools.get(KEY)
        assert pool is not None, "no pool"
        return pool

    async def until_pool(self, check: Callable[[NodePool], bool], timeout: float = 5.0) -> NodePool:
        await self.pools.wait_for(lambda items: KEY in items and check(items[KEY].value), timeout)
        return self.pool()


@pytest.fixture
async def watch(bus: Bus) -> AsyncIterator[Watch]:
    history: list[NodePool] = []

    def record(_key: str, item: Versioned[NodePool] | None) -> None:
        if item is not None:
            history.append(item.value)

    caches = (KvCache(Store(await bus.bucket(NODES), NetResourceSet, NODES.name)),
              KvCache(Store(await bus.bucket(POOLS), NodePool, POOLS.name), record),
              KvCache(Store(await bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)))
    for cache in caches:
        await cache.start()
    yield Watch(*caches, pool_history=history)
    for cache in caches:
        await cache.stop()


async def register(bus: Bus, node: str = NODE, **kw: Any) -> NodeRegisterReply:
    values = {"instance_id": f"i-{subject_token(node)}", "instance_type": "BCC", "zone": "zoneA", "cpus": 8,
              "memory_mib": 16384, "max_pods": 110, **kw}
    reply: NodeRegisterReply = await call(bus, NODE_REGISTER, NodeRegisterRequest(node=node, **values))
    return reply


def allocation(cid: str, wait_s: float = 5.0, node: str = NODE) -> AllocateRequest:
    return AllocateRequest(node=node, container_id=cid, pod=PodRef(namespace="default", name=f"pod-{cid}"),
                           wait_s=wait_s)


async def allocate(bus: Bus, cid: str, wait_s: float = 5.0, node: str = NODE) -> AllocateReply:
    reply: AllocateReply = await call(bus, IPAM_ALLOCATE, allocation(cid, wait_s, node), timeout=wait_s + 10)
    return reply


async def release(bus: Bus, cid: str, node: str = NODE) -> ReleaseReply:
    reply: ReleaseReply = await call(bus, IPAM_RELEASE, ReleaseRequest(node=node, container_id=cid))
    return reply


async def refused(request: Awaitable[Any]) -> CceError:
    with pytest.raises(CceError) as info:
        await request
    return info.value


def ip_of(reply: AllocateReply) -> str:
    return str(reply.endpoint.addresses[0].ip)


# ---- nodes -----------------------------------------------------------------------------------------------------


async def test_registering_twice_is_idempotent_and_keeps_the_status(ipam: Replica, bus: Bus, watch: Watch) -> None:
    first = await register(bus)
    assert first.created and first.nrs.spec.max_pods == 110 and not first.nrs.status.removing
    await watch.nodes.wait_for(lambda items: KEY in items and items[KEY].value.status.capacity.max_enis == 8, 5)
    second = await register(bus, max_pods=64, pool=PoolSettings(cooldown_s=5))
    assert not second.created
    assert second.nrs.spec.max_pods == 64 and second.nrs.spec.pool.cooldown_s == 5
    assert second.nrs.status.capacity.max_enis == 8  # the status maintenance wrote is kept
    assert second.nrs.status.registered_at == first.nrs.status.registered_at
    third = await register(bus, max_pods=64)
    assert third.nrs.spec.pool.cooldown_s == 5  # pool settings left out are kept
    assert watch.pools.get(KEY) is not None


async def test_one_instance_is_one_node(ipam: Replica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    """Two node records on one instance would share its ENIs, and the removal of one would delete the other's
    (the bus fuzz found it: node-1 and node.1 registered on one instance)."""
    double.follow_demand()
    instance = f"i-{KEY}"
    await register(bus)
    err = await refused(register(bus, "node.1", instance_id=instance))
    assert err.reason is ErrorReason.CONFLICT and err.retryable
    assert f"instance {instance} is registered as node {NODE}; remove that node first" in err.message
    nodes = Store(await bus.bucket(NODES), NetResourceSet, NODES.name)
    assert await nodes.get(subject_token("node.1")) is None
    assert not (await register(bus)).created  # the holder registering again is no conflict

    # two names at once on one instance: one is registered, the other refused
    outcomes = await asyncio.gather(register(bus, "node-a", instance_id="i-shared"),
                                    register(bus, "node-b", instance_id="i-shared"), return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, NodeRegisterReply)]
    lost = [o for o in outcomes if isinstance(o, CceError)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].reason is ErrorReason.CONFLICT, outcomes

    # once the holder is gone, the instance may be registered under another name
    await call(bus, NODE_REMOVE, NodeRemoveRequest(node=NODE))
    await watch.nodes.wait_for(lambda items: KEY not in items, 10)
    assert (await register(bus, "node.1", instance_id=instance)).created


async def test_allocating_on_an_unregistered_node_is_node_not_registered(ipam: Replica, bus: Bus) -> None:
    err = await refused(allocate(bus, "c1", wait_s=0))
    assert err.reason is ErrorReason.NODE_NOT_REGISTERED and err.details["node"] == NODE


async def test_a_joining_node_asks_for_min_allocate_and_becomes_ready_once_provisioned(
        ipam: Replica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    await register(bus)
    pool = await watch.until_pool(lambda p: p.demand.target_ips > 0)
    assert pool.demand.target_ips == 10 and pool.demand.used == pool.demand.free == 0
    double.follow_demand()
    await watch.nodes.wait_for(lambda items: items[KEY].value.status.ready, 5)
    await watch.nodes.wait_for(lambda items: items[KEY].value.status.capacity.free_ips == 10, 5)
    status = watch.nodes.items[KEY].value.status
    assert status.enis == [e.eni_id for e in double.enis_of(NODE)]
    assert status.capacity.attachable_ips == 8 * 15 - 10


# ---- allocation ------------------------------------------------------------------------------------------------


async def test_110_concurrent_allocations_fill_a_max_pods_110_node_and_the_111th_is_refused(
        ipam: Replica, bus: Bus, double: EniDouble) -> None:
    await register(bus)
    double.follow_demand()
    replies = await asyncio.gather(*(allocate(bus, f"c{i}", wait_s=40) for i in range(110)))
    ips = [ip_of(r) for r in replies]
    assert len(set(ips)) == 110
    on_enis = {str(ip): e for e in double.enis_of(NODE) for ip in e.secondary_ips}
    for reply in replies:
        address = reply.endpoint.addresses[0]
        eni = on_enis[str(address.ip)]
        assert (address.eni_id, address.route_table, eni.node, eni.state.value) == (
            eni.eni_id, 127 + eni.index, NODE, "inuse")
    err = await refused(allocate(bus, "c110", wait_s=5))
    assert err.reason is ErrorReason.IP_POOL_EXHAUSTED and "max pods" in err.message


async def test_a_repeated_allocation_returns_the_same_ip_and_is_announced_once(
        ipam: Replica, bus: Bus, double: EniDouble) -> None:
    seen: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await bus.nc.subscribe("cce.events.endpoint.>", cb=collect)
    await register(bus)
    await double.attach_eni(NODE, 3)
    first = await allocate(bus, "c1")
    again = await allocate(bus, "c1")
    assert not first.reused and again.reused and ip_of(again) == ip_of(first)
    assert first.endpoint.state is EndpointState.ALLOCATED and first.endpoint.expires_at is not None
    await wait_until(lambda: any(e["what"] == "allocated" for e in seen), what="allocated event")
    assert [e["object"] for e in seen if e["what"] == "allocated"] == [endpoint_key(NODE, "c1", "eth0")]
    await sub.unsubscribe()


async def test_a_lost_endpoint_write_is_rebuilt_from_the_pool_claim(ipam: Replica, bus: Bus,
                                                                    double: EniDouble) -> None:
    await register(bus)
    await double.attach_eni(NODE, 3)
    first = await allocate(bus, "c1")
    endpoints = Store(await bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)
    await endpoints.delete(endpoint_key(NODE, "c1", "eth0"))
    again = await allocate(bus, "c1")
    assert again.reused and ip_of(again) == ip_of(first)
    assert await endpoints.get(endpoint_key(NODE, "c1", "eth0")) is not None


async def test_releasing_an_unknown_key_succeeds(ipam: Replica, bus: Bus) -> None:
    assert not (await release(bus, "never-seen")).released
    await register(bus)
    assert not (await release(bus, "never-seen")).released


async def test_a_released_ip_is_not_reused_within_its_cooldown_but_is_after(
        ipam: Replica, bus: Bus, double: EniDouble) -> None:
    await register(bus, pool=PoolSettings(cooldown_s=1.0))
    await double.attach_eni(NODE, 1)
    first = await allocate(bus, "c1")
    loop = asyncio.get_running_loop()
    reply = await release(bus, "c1")
    released_at = loop.time()
    assert reply.released and [str(ip) for ip in reply.ips] == [ip_of(first)]
    err = await refused(allocate(bus, "c2", wait_s=0))
    assert err.reason is ErrorReason.IP_POOL_EXHAUSTED
    later = await allocate(bus, "c3", wait_s=5)
    assert ip_of(later) == ip_of(first)
    assert loop.time() - released_at >= 0.9


async def test_an_unconfirmed_allocation_expires_and_a_confirmed_one_does_not(
        replicas: StartReplica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    await replicas(allocation_ttl_s=0.5)
    await register(bus)
    await double.attach_eni(NODE, 2)
    kept, dropped = await allocate(bus, "keep"), await allocate(bus, "drop")
    confirmed = await call(bus, IPAM_CONFIRM, ConfirmRequest(node=NODE, container_id="keep", host_veth="veth0"))
    assert confirmed.endpoint.state is EndpointState.READY and confirmed.endpoint.expires_at is None
    gone = endpoint_key(NODE, "drop", "eth0")
    await watch.endpoints.wait_for(lambda items: gone not in items, 5)
    pool = await watch.until_pool(lambda p: ip_of(dropped) in p.cooldown)
    assert pool.allocated == {ip_of(kept): endpoint_key(NODE, "keep", "eth0")}
    assert watch.endpoints.items[endpoint_key(NODE, "keep", "eth0")].value.host_veth == "veth0"
    err = await refused(call(bus, IPAM_CONFIRM, ConfirmRequest(node=NODE, container_id="drop")))
    assert err.reason is ErrorReason.ENDPOINT_NOT_FOUND


async def test_two_replicas_serving_one_node_never_hand_out_an_ip_twice(
        replicas: StartReplica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    a, b = await replicas("ipam-a"), await replicas("ipam-b")
    await register(bus, max_pods=60)
    double.follow_demand()
    serve = (a.ipam.handlers.allocate, b.ipam.handlers.allocate)
    replies = await asyncio.gather(*(serve[i % 2](allocation(f"c{i}", wait_s=30)) for i in range(45)))
    assert len({ip_of(r) for r in replies}) == 45
    await asyncio.gather(*(release(bus, f"c{i}") for i in range(0, 45, 3)))
    more = await asyncio.gather(*(serve[i % 2](allocation(f"d{i}", wait_s=30)) for i in range(15)))
    holders = [r for r in replies if int(r.endpoint.container_id[1:]) % 3] + list(more)
    assert len({ip_of(r) for r in holders}) == len(holders) == 45
    pool = await watch.until_pool(lambda p: len(p.allocated) == 45)
    assert {ip: key.split(".")[1] for ip, key in pool.allocated.items()} == {
        ip_of(r): r.endpoint.container_id for r in holders}
    assert [a.ipam.elector.is_leader, b.ipam.elector.is_leader].count(True) == 1


@pytest.mark.parametrize(("provision", "reason"), [
    ({"creating_eni": True}, ErrorReason.WAIT_CREATE_MORE_ENI),
    ({"last_error": ErrorReason.SUBNET_NO_MORE_IP}, ErrorReason.SUBNET_NO_MORE_IP),
    ({}, ErrorReason.IP_POOL_EXHAUSTED),
])
async def test_an_allocation_that_waited_in_vain_says_why(ipam: Replica, bus: Bus, double: EniDouble,
                                                          provision: dict[str, Any], reason: ErrorReason) -> None:
    await register(bus)
    if provision:
        await double.set_provision(NODE, **provision)
    err = await refused(allocate(bus, "c1", wait_s=0.5))
    assert err.reason is reason and err.details["node"] == NODE


async def test_a_waiting_allocation_is_counted_in_the_demand_and_removed_when_it_gives_up(
        ipam: Replica, bus: Bus, watch: Watch) -> None:
    await register(bus, pool=PoolSettings(min_allocate=0, pre_allocate=0))
    waiting = asyncio.create_task(allocate(bus, "c1", wait_s=1.5))
    pool = await watch.until_pool(lambda p: p.demand.pending == 1)
    assert list(pool.waiting) == [endpoint_key(NODE, "c1", "eth0")] and pool.demand.target_ips == 1
    assert (await refused(waiting)).reason is ErrorReason.IP_POOL_EXHAUSTED
    await watch.until_pool(lambda p: not p.waiting and p.demand.target_ips == 0)


async def test_a_release_overtaking_a_waiting_allocation_of_the_same_key_cancels_it(
        ipam: Replica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    await register(bus, pool=PoolSettings(min_allocate=0, pre_allocate=0))
    lingering = asyncio.create_task(allocate(bus, "c1", wait_s=10))  # its client gave up; the pod is deleted
    await watch.until_pool(lambda p: p.demand.pending == 1)
    assert not (await release(bus, "c1")).released
    await double.attach_eni(NODE, 2)
    err = await refused(lingering)
    assert err.reason is ErrorReason.CONFLICT and "released" in err.message
    pool = await watch.until_pool(lambda p: not p.waiting)
    assert pool.allocated == {}


async def test_a_restarted_replica_rebuilds_from_the_buckets_and_allocations_stay_idempotent(
        replicas: StartReplica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    first = await replicas("ipam-a")
    await register(bus)
    double.follow_demand()
    before = {f"c{i}": ip_of(await allocate(bus, f"c{i}")) for i in range(5)}
    await first.stop()
    second = await replicas("ipam-a2")
    after = {f"c{i}": await allocate(bus, f"c{i}") for i in range(5)}
    assert all(r.reused for r in after.values())
    assert {k: ip_of(r) for k, r in after.items()} == before
    fresh = await allocate(bus, "c5")
    assert ip_of(fresh) not in before.values()
    await wait_until(lambda: second.ipam.elector.is_leader, what="the new replica leads maintenance")
    await watch.until_pool(lambda p: p.demand.used == 6 and p.demand.target_ips == 10)


# ---- release handshake and removal -----------------------------------------------------------------------------


async def test_excess_ips_go_marked_then_confirmed_then_deleted_then_dropped(
        ipam: Replica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    await register(bus, pool=PoolSettings(min_allocate=2, pre_allocate=1, max_above_watermark=2,
                                          release_delay_s=0.5))
    eni = await double.attach_eni(NODE, 10)
    double.follow_demand()
    # keep used 0 + pre_allocate 1 + max_above_watermark 2 = 3; the other 7 go
    await wait_until(lambda: len(double.deleted_ips) == 7, what="7 excess IPs deleted")
    pool = await watch.until_pool(lambda p: not p.releasing and p.demand.free == 3)
    marked = {ip for p in watch.pool_history for ip, m in p.releasing.items() if m.state is ReleaseState.MARKED}
    confirmed = {ip for p in watch.pool_history for ip, m in p.releasing.items()
                 if m.state is ReleaseState.CONFIRMED}
    assert set(double.deleted_ips) == marked == confirmed
    assert all(m.eni_id == eni.eni_id for p in watch.pool_history for m in p.releasing.values())
    assert len(double.secondaries(NODE)) == 3 and pool.demand.target_ips == 2


async def test_removing_a_node_releases_its_endpoints_then_deletes_pool_and_record(
        ipam: Replica, bus: Bus, watch: Watch, double: EniDouble) -> None:
    await register(bus)
    double.follow_demand()
    for cid in ("c1", "c2", "c3"):
        await allocate(bus, cid)
    reply = await call(bus, NODE_REMOVE, NodeRemoveRequest(node=NODE))
    assert reply.removing
    err = await refused(allocate(bus, "c4", wait_s=0))
    assert err.reason is ErrorReason.NODE_NOT_REGISTERED
    await watch.endpoints.wait_for(lambda items: not items, 5)
    await watch.nodes.wait_for(lambda items: KEY not in items, 5)
    pools = Store(await bus.bucket(POOLS), NodePool, POOLS.name)
    assert await pools.get(KEY) is None  # the pool went first
    assert not double.enis_of(NODE)
    assert not (await call(bus, NODE_REMOVE, NodeRemoveRequest(node=NODE))).removing


async def test_a_bad_payload_is_invalid_request(ipam: Replica, bus: Bus) -> None:
    msg = await bus.nc.request(IPAM_ALLOCATE.for_node(NODE), b'{"node": "node-1", "container_id": "c1"}',
                               timeout=2)
    err = ErrorReply.model_validate_json(msg.data)
    assert err.reason is ErrorReason.INVALID_REQUEST and "pod" in err.message

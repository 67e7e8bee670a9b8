"""Integration tier: eni_manager in-process on a real nats-server, driving the simulated VPC over HTTP through the
production adapter (`BceVpcApi`). The test plays ipam: it writes NetResourceSet and NodePool records."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import KvCache, Store, Versioned
from chassis.service import ServiceProcess
from cloud.bce import BceSettings, BceVpcApi
from cloud.port import CloudEni, VpcApi
from schemas.base import InstanceType, NetworkMode, subject_token, utcnow
from schemas.errors import ErrorReason
from schemas.events import Event
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    Eni,
    EniProvision,
    EniState,
    NetResourceSet,
    NodePool,
    NodeSpec,
    NodeStatus,
    PoolDemand,
    PrivateIp,
    ReleaseMark,
    ReleaseState,
)
from schemas.subjects import ENDPOINTS, ENI_MANAGER, ENIS, EVENTS_WILDCARD, NODES, POOLS, PROVISION
from services.eni_manager.ledger import EniRecords
from services.eni_manager.main import wire_manager
from services.eni_manager.reconciler import Reconciler
from services.eni_manager.settings import EniManagerSettings
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.sim_fixtures import wide_open_api

pytestmark = pytest.mark.integration

PREFIX = "cce-cce-local-"
TIMEOUT = 20.0


# ---- the world -------------------------------------------------------------------------------------------------


@dataclass
class World:
    bus: Bus
    settings: ChassisSettings
    sim: SimServer
    admin: SimAdmin
    api: BceVpcApi
    vpc_id: str
    nodes: Store[NetResourceSet]
    pools: Store[NodePool]
    enis: Store[Eni]
    provision: Store[EniProvision]
    events: list[Event] = field(default_factory=list)

    def manager_settings(self, service_id: str, **overrides: Any) -> EniManagerSettings:
        return EniManagerSettings(**{**self.settings.model_dump(), "service_id": service_id,
                                     "resync_period_s": 1.0, "subnet_sync_period_s": 1.0, "removal_grace_s": 0.0,
                                     "attach_poll_s": 0.02, "attach_timeout_s": 10.0, "retry_backoff_s": 0.1,
                                     **overrides})

    async def add_node(self, name: str = "node-1", *, target: int = 10, cpus: int = 8, memory_mib: int = 32768,
                       **spec: Any) -> str:
        created = await self.admin.create_instance(name=name, cpus=cpus, memory_mib=memory_mib)
        instance_id = str(created["id"])
        node_spec = NodeSpec(instance_id=instance_id, instance_type=InstanceType.BCC, zone="zoneA", cpus=cpus,
                             memory_mib=memory_mib, mode=NetworkMode.VPC_ENI, **spec)
        await self.nodes.create(subject_token(name), NetResourceSet(name=name, spec=node_spec))
        await self.set_target(name, target)
        return instance_id

    async def set_target(self, node: str, target: int, releasing: dict[str, ReleaseMark] | None = None) -> None:
        def change(pool: NodePool | None) -> NodePool:
            pool = pool or NodePool(node=node)
            return pool.model_copy(update={"demand": PoolDemand(target_ips=target),
                                           "releasing": releasing if releasing is not None else pool.releasing})

        await self.pools.mutate(subject_token(node), change)

    async def cloud_enis(self, instance_id: str | None = None) -> list[CloudEni]:
        enis = await self.api.list_enis(vpc_id=self.vpc_id, instance_id=instance_id)
        return [e for e in enis if e.name.startswith(PREFIX)]

    async def records(self, node: str = "node-1") -> list[Eni]:
        return sorted((v.value for v in (await self.enis.list()).values() if v.value.node == node),
                      key=lambda e: e.index)

    async def provision_of(self, node: str = "node-1") -> EniProvision | None:
        item = await self.provision.get(subject_token(node))
        return item.value if item else None

    def seen(self, kind: str, what: str) -> list[Event]:
        return [e for e in self.events if e.kind.value == kind and e.what == what]


@pytest.fixture
async def world(bus: Bus, settings: ChassisSettings, vpc_sim: SimServer,
                sim_admin: SimAdmin) -> AsyncIterator[World]:
    async def store(bucket: Any) -> Store[Any]:
        return Store(await bus.bucket(bucket), bucket.record, bucket.name)

    info = await sim_admin.info()
    w = World(bus, settings, vpc_sim, sim_admin, wide_open_api(vpc_sim), str(info["vpcId"]), await store(NODES),
              await store(POOLS), await store(ENIS), await store(PROVISION))

    async def on_event(msg: Any) -> None:
        w.events.append(Event.model_validate_json(msg.data))

    sub = await bus.nc.subscribe(EVENTS_WILDCARD, cb=on_event)
    yield w
    await sub.unsubscribe()


class Manager:
    """One eni_manager replica as the composition root wires it, on this world's bus and cloud (the VPC is
    learnt from a node's instance)."""

    def __init__(self, w: World, api: VpcApi | None, service_id: str, **overrides: Any) -> None:
        self.settings = w.manager_settings(service_id, **overrides)
        self.proc = ServiceProcess(ENI_MANAGER, self.settings)
        self.api = api or w.api
        self.stopped = False
        self.reconciler: Reconciler | None = None

    def knows_pod_ip(self, node: str, ip: str) -> bool:
        """The manager has seen the pool record saying the node's pool holds the IP for a pod."""
        return self.reconciler is not None and node in self.reconciler.views.pod_nodes(ip)

    async def start(self) -> None:
        await self.proc.start()
        self.reconciler = await wire_manager(self.proc, self.settings, self.api)
        self.proc.ready = True

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.proc.shutdown()

    async def leading(self) -> bool:
        return self.proc.elector is not None and self.proc.elector.is_leader


@asynccontextmanager
async def running(w: World, api: VpcApi | None = None, service_id: str = "em-a",
                  **overrides: Any) -> AsyncIterator[Manager]:
    manager = Manager(w, api, service_id, **overrides)
    try:
        await manager.start()
        yield manager
    finally:
        await manager.stop()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for a condition with a deadline (polling the cloud and the buckets)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


def secondaries(enis: Sequence[CloudEni]) -> int:
    return sum(len(e.secondary_ips) for e in enis)


async def settled(w: World, instance_id: str, ips: int, enis: int | None = None) -> bool:
    """The cloud holds `ips` secondaries on in-use ENIs of ours (and `enis` of them), and the records agree."""
    cloud = await w.cloud_enis()
    records = await w.records()
    if enis is not None and len(cloud) != enis:
        return False
    if any(e.status is not EniState.INUSE or e.instance_id != instance_id for e in cloud):
        return False
    mirrored = {r.eni_id: sorted(str(ip) for ip in r.secondary_ips) for r in records if r.state is EniState.INUSE}
    return secondaries(cloud) == ips and mirrored == {e.eni_id: sorted(e.secondary_ips) for e in cloud}


class ProbeApi:
    """The real adapter, probed: tracks ENI creations in flight (created, not yet seen in use), counts per ENI the
    looks that found it still attaching, and can hang forever right after one method's real call, as a leader
    killed at that point would."""

    def __init__(self, inner: BceVpcApi, hang_after: str | None = None) -> None:
        self.inner = inner
        self.hang_after = hang_after
        self.hung = asyncio.Event()
        self.in_flight: set[str] = set()
        self.max_in_flight = 0
        self.listings: list[str | None] = []  # instance id of each list_enis call, None: the whole VPC
        self.attaching: Counter[str] = Counter()
        self.attached: list[str] = []  # ENI ids in the order attach_eni was called

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_eni(self, **kwargs: Any) -> str:
        eni_id = await self.inner.create_eni(**kwargs)
        self.in_flight.add(eni_id)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        await self._maybe_hang("create_eni")
        return eni_id

    async def attach_eni(self, eni_id: str, instance_id: str) -> None:
        self.attached.append(eni_id)
        await self.inner.attach_eni(eni_id, instance_id)
        await self._maybe_hang("attach_eni")

    async def list_enis(self, *, vpc_id: str, instance_id: str | None = None,
                        name: str | None = None) -> list[CloudEni]:
        self.listings.append(instance_id)
        return await self.inner.list_enis(vpc_id=vpc_id, instance_id=instance_id, name=name)

    def listed(self, per_instance: bool) -> int:
        return sum(1 for instance_id in self.listings if (instance_id is not None) == per_instance)

    async def get_eni(self, eni_id: str) -> CloudEni:
        eni = await self.inner.get_eni(eni_id)
        if eni.status is EniState.INUSE:
            self.in_flight.discard(eni_id)
        elif eni.status is EniState.ATTACHING:
            self.attaching[eni_id] += 1
        return eni

    async def _maybe_hang(self, method: str) -> None:
        if self.hang_after == method:
            self.hung.set()
            await asyncio.Event().wait()


# ---- provisioning ----------------------------------------------------------------------------------------------


async def test_a_node_gets_an_inuse_eni_with_its_target_ips_in_the_cloud_and_in_the_records(world: World) -> None:
    async with running(world):
        instance_id = await world.add_node(target=10)
        await until(lambda: settled(world, instance_id, 10, enis=1), "one in-use ENI with 10 secondaries")

        [cloud] = await world.cloud_enis(instance_id)
        [record] = await world.records()
        assert (record.eni_id, record.mac, record.subnet_id, record.zone, record.vpc_id, record.instance_id) == \
            (cloud.eni_id, cloud.mac, cloud.subnet_id, cloud.zone, cloud.vpc_id, instance_id)
        assert record.primary_ip is not None and str(record.primary_ip) == cloud.primary_ip
        assert record.private_ips[0].primary
        assert (record.index, record.ip_quota) == (1, 16)
        assert record.name == cloud.name == "cce-cce-local-node-1-1"
        assert record.description == "cce-network cluster=cce-local node=node-1"
        assert record.subnet_cidr.network_address.is_private

        provision = await world.provision_of()
        assert provision is not None
        assert (provision.instance_id, provision.max_enis, provision.ips_per_eni) == (instance_id, 8, 16)
        assert not provision.creating_eni
        assert provision.last_error is None
        await until(lambda: _true(world.seen("eni", "attached") and world.seen("ip", "added")), "events")
        assert [e.object for e in world.seen("eni", "created")] == [cloud.eni_id]
        assert sum(e.data["count"] for e in world.seen("ip", "added")) == 10


async def _true(value: object) -> bool:
    return bool(value)


async def one_eni_then_three(world: World) -> str:
    """node-1 with a target of 10 secondaries (one ENI), then of 40 (three ENIs); returns its instance id."""
    instance_id = await world.add_node(target=10)
    await until(lambda: settled(world, instance_id, 10, enis=1), "the first ENI")
    await world.set_target("node-1", 40)
    await until(lambda: settled(world, instance_id, 40, enis=3), "three ENIs holding 40 secondaries")
    return instance_id


@pytest.mark.parametrize(("in_flight", "most"), [(4, 2), (1, 1)])
async def test_a_higher_target_brings_the_enis_it_needs_side_by_side_up_to_the_in_flight_limit(
        world: World, in_flight: int, most: int) -> None:
    """From 10 to 40 secondaries: the first ENI's room takes 5, the other 25 ask for two ENIs, created and attached
    at once (or one after the other with `enis_in_flight` 1)."""
    probe = ProbeApi(world.api)
    async with running(world, probe, enis_in_flight=in_flight):
        instance_id = await one_eni_then_three(world)

    cloud = await world.cloud_enis(instance_id)
    assert sorted(len(e.secondary_ips) for e in cloud) == [10, 15, 15]
    assert [r.index for r in await world.records()] == [1, 2, 3]
    assert probe.max_in_flight == most


async def test_after_one_attach_the_next_are_looked_at_when_an_attach_usually_ends(world: World) -> None:
    """The first attach is polled every attach_poll_s; then the first look waits most of the learnt attach time,
    so a steady cloud is asked a few times per ENI instead of once per poll period (cloud calls are rate-limited)."""
    await world.admin.set_settings(attach_delay_s=0.5)
    polls = ProbeApi(world.api)
    async with running(world, polls):
        await one_eni_then_three(world)

    first, *later = (polls.attaching[eni_id] for eni_id in polls.attached)
    assert len(later) == 2
    assert max(later) * 2 <= first, (first, later)


async def test_confirmed_releases_are_deleted_in_the_cloud_and_the_record_but_marked_ones_stay(
        world: World) -> None:
    async with running(world):
        instance_id = await world.add_node(target=10)
        await until(lambda: settled(world, instance_id, 10, enis=1), "10 secondaries")
        [cloud] = await world.cloud_enis(instance_id)
        confirmed, marked = cloud.secondary_ips[:2], cloud.secondary_ips[2]
        releasing = {ip: ReleaseMark(eni_id=cloud.eni_id, state=ReleaseState.CONFIRMED) for ip in confirmed}
        releasing[marked] = ReleaseMark(eni_id=cloud.eni_id, state=ReleaseState.MARKED)
        await world.set_target("node-1", 8, releasing)
        await until(lambda: settled(world, instance_id, 8, enis=1), "the confirmed IPs gone")

        [cloud] = await world.cloud_enis(instance_id)
        assert not set(confirmed) & set(cloud.secondary_ips)
        assert marked in cloud.secondary_ips
        assert cloud.primary_ip is not None
        # the event is published after the cloud call and the record; it may reach us a moment later
        async def removed_two() -> bool:
            return sum(e.data["count"] for e in world.seen("ip", "removed")) == 2

        await until(removed_two, "the ip.removed event")


# ---- coded failures --------------------------------------------------------------------------------------------


async def test_a_target_beyond_the_eni_quota_records_eni_capacity_exceed(world: World) -> None:
    async with running(world):
        instance_id = await world.add_node(target=40, max_enis=2)

        async def capacity_error() -> bool:
            provision = await world.provision_of()
            return provision is not None and provision.last_error is ErrorReason.ENI_CAPACITY_EXCEED

        await until(capacity_error, "ENICapacityExceed in the provision record")
        await until(lambda: settled(world, instance_id, 30, enis=2), "two full ENIs")
        provision = await world.provision_of()
        assert provision is not None and provision.max_enis == 2 and provision.message


async def test_a_full_subnet_records_subnet_no_more_ip(world: World) -> None:
    tiny = await world.admin.create_subnet(zone="zoneA", cidr="10.1.0.0/28")  # 13 usable addresses
    async with running(world):
        instance_id = await world.add_node(target=20, subnet_ids=[tiny["subnetId"]])

        async def subnet_error() -> bool:
            provision = await world.provision_of()
            return provision is not None and provision.last_error is ErrorReason.SUBNET_NO_MORE_IP

        await until(subnet_error, "SubnetNoMoreIP in the provision record")
        await until(lambda: settled(world, instance_id, 12, enis=1), "the subnet's last addresses in use")
        assert (await world.cloud_enis())[0].subnet_id == tiny["subnetId"]


async def test_injected_cloud_errors_are_recorded_and_retried_until_converged(world: World) -> None:
    reasons: list[ErrorReason] = []

    def watch(_key: str, item: Versioned[EniProvision] | None) -> None:
        if item is not None and item.value.last_error is not None:
            reasons.append(item.value.last_error)

    cache = KvCache(world.provision, watch)
    await cache.start()
    attempts = BceSettings().max_attempts
    await world.admin.fail_next("create_eni", count=attempts, code="InternalError", status=500)
    await world.admin.fail_next("batch_add_private_ips", count=attempts, code="RateLimit", status=429)
    try:
        async with running(world):
            instance_id = await world.add_node(target=10)
            await until(lambda: settled(world, instance_id, 10, enis=1), "convergence after the faults")

            async def cleared() -> bool:
                provision = await world.provision_of()
                return provision is not None and provision.last_error is None

            await until(cleared, "the last error cleared")
    finally:
        await cache.stop()
    assert ErrorReason.CLOUD_ERROR in reasons
    assert ErrorReason.CLOUD_THROTTLED in reasons
    assert {e.reason for e in world.seen("eni", "step-failed")} >= {ErrorReason.CLOUD_ERROR,
                                                                    ErrorReason.CLOUD_THROTTLED}


# ---- adoption and takeover -------------------------------------------------------------------------------------


async def test_an_eni_of_ours_unknown_to_the_records_is_adopted_and_used(world: World) -> None:
    async with running(world):
        instance_id = await world.add_node(target=0)
        await until(lambda: _has_provision(world), "the node provisioned")
        info = await world.admin.info()
        eni_id = await world.api.create_eni(name="cce-cce-local-node-1-4", subnet_id=info["subnets"][0]["subnetId"],
                                            security_group_ids=[], description="made by hand")

        async def adopted_in_use() -> bool:
            return any(r.eni_id == eni_id and r.state is EniState.INUSE for r in await world.records())

        await until(adopted_in_use, "the ENI adopted and attached")
        await world.set_target("node-1", 5)
        await until(lambda: settled(world, instance_id, 5, enis=1), "IPs added to the adopted ENI")
        assert [r.index for r in await world.records()] == [4]
        assert [e.object for e in world.seen("eni", "adopted")] == [eni_id]
        assert not world.seen("eni", "created")


async def _has_provision(w: World) -> bool:
    return await w.provision_of() is not None


@pytest.mark.parametrize("killed_after", ["create_eni", "attach_eni"])
async def test_a_standby_takes_over_a_leader_killed_mid_creation_without_a_second_eni(
        world: World, killed_after: str) -> None:
    await world.admin.set_settings(attach_delay_s=0.5)
    probe = ProbeApi(world.api, hang_after=killed_after)
    async with running(world, probe, service_id="em-a") as first:
        await until(first.leading, "em-a leading")
        async with running(world, service_id="em-b") as standby:
            instance_id = await world.add_node(target=10)
            await asyncio.wait_for(probe.hung.wait(), TIMEOUT)
            await first.stop()  # the leader dies between the cloud call and what follows it
            await until(standby.leading, "em-b leading")
            await until(lambda: settled(world, instance_id, 10, enis=1), "one ENI with 10 secondaries")
            provision = await world.provision_of()
            assert provision is not None and not provision.creating_eni
    [cloud] = await world.cloud_enis()
    # killed before recording it, the ENI is found by the successor's VPC scan; killed while attaching, by its record
    unrecorded = killed_after == "create_eni"
    assert [e.object for e in world.seen("eni", "adopted")] == ([cloud.eni_id] if unrecorded else [])
    assert [e.object for e in world.seen("eni", "created")] == ([] if unrecorded else [cloud.eni_id])


async def test_nodes_registered_after_the_election_join_without_a_vpc_scan_each(world: World) -> None:
    """A node known when the term began waits for a VPC scan before acting (a predecessor may have created an ENI
    for it unrecorded); one whose record was first written after that cannot have one and joins on its own
    listing: a join never waits for a listing of the whole VPC."""
    async with running(world):
        known = await world.add_node("node-1", target=5)
    probe = ProbeApi(world.api)
    async with running(world, probe, resync_period_s=600.0) as manager:
        await until(manager.leading, "leading")
        # node-1 was settled by the first term; this term's first round of it lists its instance, after the scan
        await until(lambda: _true(known in probe.listings), "node-1's first round of this term")
        assert probe.listings.index(None) < probe.listings.index(known)  # the term's scan came first
        await until(lambda: settled(world, known, 5, enis=1), "node-1 settled")
        assert probe.listed(per_instance=False) == 1
        for name in ("node-2", "node-3", "node-4"):
            instance_id = await world.add_node(name, target=5)

            async def holding(instance_id: str = instance_id) -> bool:
                enis = await world.cloud_enis(instance_id)
                return len(enis) == 1 and enis[0].status is EniState.INUSE and secondaries(enis) == 5

            await until(holding, f"{name} holding 5 IPs")
        assert probe.listed(per_instance=False) == 1
        assert probe.listed(per_instance=True) == 4  # each node's first round lists its instance


# ---- periodic resync ----------------------------------------------------------------------------------------


async def test_periodic_resyncs_use_the_vpc_listing_and_still_catch_drift_in_the_cloud(world: World) -> None:
    """Each period lists the VPC once; nodes untouched while it ran resync from it instead of one listing each."""
    probe = ProbeApi(world.api)
    async with running(world, probe):
        instances = [await world.add_node(f"node-{n}", target=5) for n in (1, 2, 3)]

        async def holding(instance_id: str, ips: int) -> bool:
            enis = await world.cloud_enis(instance_id)
            return len(enis) == 1 and enis[0].status is EniState.INUSE and secondaries(enis) == ips

        async def all_settled() -> bool:
            return all([await holding(i, 5) for i in instances])

        await until(all_settled, "three nodes holding 5 IPs each")
        node_listings, scans = probe.listed(per_instance=True), probe.listed(per_instance=False)
        await until(lambda: _true(probe.listed(per_instance=False) >= scans + 3), "three more periodic scans")
        # one listing per node and period before; a round that overlaps a scan still lists its node on its own
        assert probe.listed(per_instance=True) - node_listings < 3

        [eni] = await world.cloud_enis(instances[0])
        gone = eni.secondary_ips[0]
        await world.api.remove_private_ips(eni.eni_id, [gone])  # by hand, behind the manager's back

        async def noticed() -> bool:
            return any(gone in e.data["removed"] for e in world.seen("ip", "resynced") if e.object == eni.eni_id)

        await until(noticed, "the removal seen by a resync")
        await until(lambda: holding(instances[0], 5), "the IP made up for")
        [record] = await world.records("node-1")
        assert sorted(map(str, record.secondary_ips)) == sorted((await world.cloud_enis(instances[0]))[0].secondary_ips)


# ---- one IP, one ENI -------------------------------------------------------------------------------------------


async def _lowest_secondary(world: World, instance_id: str) -> tuple[str, str]:
    """An ENI of the instance and its lowest secondary IP (the simulator hands out the lowest free address)."""
    [eni] = await world.cloud_enis(instance_id)
    return eni.eni_id, min(eni.secondary_ips, key=lambda ip: tuple(map(int, ip.split("."))))


async def _listed_by(world: World, ip: str) -> list[str]:
    return sorted(item.value.eni_id for item in (await world.enis.list()).values()
                  if ip in map(str, item.value.secondary_ips))


async def test_an_ip_taken_off_an_eni_behind_our_back_and_handed_to_another_node_leaves_the_first_record(
        world: World) -> None:
    """No resync of node-1 comes (a long period): the record of node-2's ENI getting the IP is what takes it off
    node-1's stale record, so the two nodes' pools never both offer it."""
    async with running(world, resync_period_s=600.0):
        one = await world.add_node("node-1", target=5)
        await until(lambda: settled(world, one, 5, enis=1), "node-1 settled")
        two = await world.add_node("node-2", target=5)
        await until(lambda: _settled_count(world, two, 5), "node-2 settled")
        eni_1, ip = await _lowest_secondary(world, one)
        await world.api.remove_private_ips(eni_1, [ip])  # by hand; node-1's record still lists it
        await world.set_target("node-2", 6)  # the cloud hands the freed address to node-2's ENI
        await until(lambda: _has(world, two, ip), "the address on node-2's ENI in the cloud")
        [eni_2] = await world.cloud_enis(two)
        await until(lambda: _listed_is(world, ip, [eni_2.eni_id]), "only node-2's record listing it")
        await until(lambda: _true(any(ip in e.data["ips"] for e in world.seen("ip", "moved")
                                      if e.object == eni_1 and e.node == "node-1")), "a moved event for node-1")


async def _has(world: World, instance_id: str, ip: str) -> bool:
    return any(ip in e.secondary_ips for e in await world.cloud_enis(instance_id))


async def _listed_is(world: World, ip: str, eni_ids: list[str]) -> bool:
    return await _listed_by(world, ip) == eni_ids


async def _a_pod_of_node_1_holds(world: World, manager: Manager, ip: str) -> None:
    """node-1's pool holds the IP for a pod (as ipam writes it), and the manager has seen it."""

    def hold(pool: NodePool | None) -> NodePool:
        assert pool is not None
        return pool.model_copy(update={"allocated": {**pool.allocated, ip: POD_A}})

    await world.pools.mutate(subject_token("node-1"), hold)
    await until(lambda: _true(manager.knows_pod_ip("node-1", ip)), "the pool holding seen by the manager")


async def _handed_to_node_2(world: World, manager: Manager, node_1_ips: int) -> tuple[str, str, str, str]:
    """node-1's pool holds its lowest address for a pod; the address is taken off node-1's ENI behind our back and
    the cloud hands it to node-2's ENI. (node-1's own resync would put it back first: none comes, the period is
    long.) Returns node-2's instance, node-1's and node-2's ENIs and the address."""
    one = await world.add_node("node-1", target=node_1_ips)
    await until(lambda: settled(world, one, node_1_ips, enis=1), "node-1 settled")
    two = await world.add_node("node-2", target=5)
    await until(lambda: _settled_count(world, two, 5), "node-2 settled")
    eni_1, ip = await _lowest_secondary(world, one)
    [eni_2] = await world.cloud_enis(two)

    await _a_pod_of_node_1_holds(world, manager, ip)
    await world.api.remove_private_ips(eni_1, [ip])
    await world.set_target("node-2", 6)
    return two, eni_1, eni_2.eni_id, ip


async def test_an_ip_a_pod_on_another_node_has_goes_back_from_the_eni_the_cloud_put_it_on(world: World) -> None:
    async with running(world, resync_period_s=600.0) as manager:
        two, eni_1, eni_2, ip = await _handed_to_node_2(world, manager, 5)
        await until(lambda: _true(any(e.data["ips"] == [ip] and e.data["from_eni"] == eni_2
                                      for e in world.seen("ip", "returned") if e.object == eni_1)),
                    "a returned event for node-1's ENI")
        assert not await _has(world, two, ip)
        assert ip in next(e for e in await world.cloud_enis() if e.eni_id == eni_1).secondary_ips
        assert await _listed_by(world, ip) == [eni_1]


async def test_an_ip_a_pod_on_another_node_has_is_held_back_where_it_cannot_go_back(world: World) -> None:
    """node-1's ENI is full by its record (the stale address still counted): node-2's record leaves the address
    out (a conflict event) until the pod lets go, then records it."""
    async with running(world, resync_period_s=600.0) as manager:
        two, _eni_1, eni_2, ip = await _handed_to_node_2(world, manager, 15)
        await until(lambda: _true(any(ip in e.data["ips"] for e in world.seen("ip", "conflict")
                                      if e.node == "node-2")), "a conflict event for node-2")
        assert await _has(world, two, ip) and eni_2 not in await _listed_by(world, ip)

        def let_go(pool: NodePool | None) -> NodePool:
            assert pool is not None
            return pool.model_copy(update={"allocated": {k: v for k, v in pool.allocated.items() if k != ip}})

        await world.pools.mutate(subject_token("node-1"), let_go)
        await until(lambda: _listed_is(world, ip, [eni_2]), "node-2's record listing it once the pod let go")


async def test_an_ip_a_pod_holds_taken_off_its_eni_behind_our_back_is_put_back(world: World) -> None:
    async with running(world) as manager:
        one = await world.add_node("node-1", target=5)
        await until(lambda: settled(world, one, 5, enis=1), "node-1 settled")
        eni_1, ip = await _lowest_secondary(world, one)

        await _a_pod_of_node_1_holds(world, manager, ip)
        await world.api.remove_private_ips(eni_1, [ip])
        await until(lambda: _true(any(ip in e.data["ips"] for e in world.seen("ip", "restored")
                                      if e.object == eni_1)), "a restored event")
        assert await _has(world, one, ip)
        await until(lambda: _listed_is(world, ip, [eni_1]), "the record listing it again")
        await until(lambda: settled(world, one, 5, enis=1), "node-1 as before")


async def test_a_pod_ip_a_resync_dropped_before_the_claim_was_seen_is_put_back_on_the_pods_eni(
        world: World, bus: Bus) -> None:
    """The cloud loses a free IP; a resync drops it from the record; ipam (reading the record before the drop) hands
    it to a pod. No ENI record carries the pod's IP: it goes back onto the ENI the pod's endpoint names."""
    async with running(world) as manager:
        one, eni_1, ip = await _a_free_ip_lost_and_dropped(world)
        await _handed_to_a_pod_of_node_1(world, bus, manager, ip, eni_1)
        await until(lambda: _listed_is(world, ip, [eni_1]), "the record listing the pod's IP again")
        assert await _has(world, one, ip)
        [restored] = [e for e in world.seen("ip", "restored") if ip in e.data["ips"]]
        assert restored.object == eni_1 and restored.data["endpoint"] == POD_A


async def test_a_dropped_pod_ip_the_cloud_gave_to_something_else_is_reported_lost_once(
        world: World, bus: Bus) -> None:
    async with running(world) as manager:
        _one, eni_1, ip = await _a_free_ip_lost_and_dropped(world)
        info = await world.admin.info()
        await world.api.create_eni(name="not-ours", subnet_id=info["subnets"][0]["subnetId"], security_group_ids=[],
                                   primary_ip=ip)
        await _handed_to_a_pod_of_node_1(world, bus, manager, ip, eni_1)
        await until(lambda: _true(world.seen("ip", "lost")), "a lost event")
        reconciler = manager.reconciler
        assert reconciler is not None
        done = reconciler.rounds_done("node-1")
        await until(lambda: _true(reconciler.rounds_done("node-1") >= done + 3), "three more rounds of node-1")
        [lost] = world.seen("ip", "lost")
        assert lost.object == eni_1 and lost.data["ips"] == [ip] and lost.reason is ErrorReason.IP_IN_USE
        assert await _listed_is(world, ip, []) and not world.seen("ip", "restored")


POD_A = "node-1.pod-a.eth0"


async def _a_free_ip_lost_and_dropped(world: World) -> tuple[str, str, str]:
    """node-1 settled with 5 IPs; its lowest, free, taken off its ENI in the cloud and dropped from the record by a
    resync (the node wants 4 by then: no refill gives the address back). Returns the instance, ENI and address."""
    one = await world.add_node("node-1", target=5)
    await until(lambda: settled(world, one, 5, enis=1), "node-1 settled")
    eni_1, ip = await _lowest_secondary(world, one)
    await world.set_target("node-1", 4)
    await world.api.remove_private_ips(eni_1, [ip])
    await until(lambda: _listed_is(world, ip, []), "a resync dropping the free IP from the record")
    assert not world.seen("ip", "restored")
    return one, eni_1, ip


async def _handed_to_a_pod_of_node_1(world: World, bus: Bus, manager: Manager, ip: str, eni_id: str) -> None:
    """What ipam writes for a pod given the IP on the ENI: its endpoint, then the pool's claim."""
    endpoints: Store[CceEndpoint] = Store(await bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)
    address = EndpointAddress(ip=IPv4Address(ip), gateway=IPv4Address("10.0.0.1"), eni_id=eni_id)
    await endpoints.create(POD_A, CceEndpoint(node="node-1", container_id="pod-a", ifname="eth0", namespace="ns",
                                              pod="a", addresses=[address]))
    await _a_pod_of_node_1_holds(world, manager, ip)


async def _settled_count(world: World, instance_id: str, ips: int) -> bool:
    enis = await world.cloud_enis(instance_id)
    return len(enis) == 1 and enis[0].status is EniState.INUSE and secondaries(enis) == ips


async def test_the_records_index_follows_each_ip_to_the_record_listing_it(bus: Bus) -> None:
    records = EniRecords(Store(await bus.bucket(ENIS), Eni, ENIS.name))

    def listing(eni_id: str, index: int, *ips: str) -> Eni:
        addresses = [PrivateIp(ip=IPv4Address(f"10.9.{index}.1"), primary=True)]
        addresses += [PrivateIp(ip=IPv4Address(ip)) for ip in ips]
        return Eni(eni_id=eni_id, node="node-1", instance_id="i-1", subnet_id="sbn-1",
                   subnet_cidr=IPv4Network("10.0.0.0/8"), state=EniState.INUSE, private_ips=addresses, index=index)

    await records.put("eni-1", listing("eni-1", 1, "10.0.0.5", "10.0.0.6"))
    assert records.carries("10.0.0.5") and records.carries("10.0.0.6") and not records.carries("10.0.0.7")
    await records.put("eni-1", listing("eni-1", 1, "10.0.0.6"))
    assert not records.carries("10.0.0.5")
    await records.put("eni-2", listing("eni-2", 2, "10.0.0.5"))
    holder = records.holder(IPv4Address("10.0.0.5"))
    assert records.carries("10.0.0.5") and holder is not None and holder.eni_id == "eni-2"
    await records.drop("eni-2")
    assert not records.carries("10.0.0.5") and records.carries("10.0.0.6")
    fresh = EniRecords(records.store)
    await fresh.load()
    assert fresh.carries("10.0.0.6") and not fresh.carries("10.0.0.5")


# ---- node removal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["removing", "deleted"])
async def test_a_removed_node_loses_its_enis_in_the_cloud_and_its_records(world: World, how: str) -> None:
    async with running(world):
        instance_id = await world.add_node(target=20)
        await until(lambda: settled(world, instance_id, 20, enis=2), "two ENIs")
        if how == "removing":
            await world.nodes.mutate(subject_token("node-1"), lambda nrs: nrs.model_copy(
                update={"status": NodeStatus(removing=True)}) if nrs else None)
        else:
            await world.nodes.delete(subject_token("node-1"))

        async def gone() -> bool:
            return not await world.cloud_enis() and not await world.records() and not await _has_provision(world)

        await until(gone, "no ENI in the cloud, no record, no provision")
        assert len(world.seen("eni", "deleted")) == 2


async def test_a_removed_node_keeps_its_enis_for_the_grace_period_then_loses_them(world: World) -> None:
    grace = 1.0
    async with running(world, resync_period_s=60.0, removal_grace_s=grace):
        instance_id = await world.add_node(target=5)
        await until(lambda: settled(world, instance_id, 5, enis=1), "one ENI")
        marked_at = utcnow()
        await world.nodes.mutate(subject_token("node-1"), lambda nrs: nrs.model_copy(
            update={"status": NodeStatus(removing=True)}) if nrs else None)
        await until(lambda: _true(world.seen("eni", "deleted")), "the ENI deleted", timeout=10)
    [deleted] = world.seen("eni", "deleted")
    assert (deleted.time - marked_at).total_seconds() >= grace
    assert not await world.cloud_enis()


async def test_pre_allocated_enis_are_attached_without_demand_and_a_burstable_node_fills_each(
        world: World) -> None:
    async with running(world, pre_allocate_enis=2):
        instance_id = await world.add_node(target=0)
        await until(lambda: settled(world, instance_id, 0, enis=2), "two empty ENIs attached")
        await world.add_node("node-2", target=3, pool={"burstable": True})
        await until(lambda: _filled(world, "node-2"), "node-2's ENIs filled to capacity")
    assert sorted(len(e.secondary_ips) for e in await world.records("node-2")) == [0, 15]


async def _filled(w: World, node: str) -> bool:
    records = await w.records(node)
    return len(records) == 2 and sorted(len(e.secondary_ips) for e in records) == [0, 15]

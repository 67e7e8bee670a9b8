"""Component/integration tier: route_manager in-process on a real nats-server, driving the simulated VPC's route
table over HTTP through the production adapter. The test plays ipam: it writes NetResourceSet and NodePool
records and sends expand requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network
from typing import Any

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import Store
from chassis.rpc import call
from chassis.service import ServiceProcess
from cloud.bce import BceVpcApi
from cloud.port import CloudRouteRule
from schemas.base import InstanceType, NetworkMode, subject_token, utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import Event
from schemas.messages import ExpandRequest
from schemas.records import (
    ClusterCidrPool,
    NetResourceSet,
    NodeCidr,
    NodeCidrState,
    NodePool,
    NodeSpec,
    RouteRule,
    RouteRuleState,
)
from schemas.subjects import (
    CIDR_POOL,
    EVENTS_WILDCARD,
    NODE_CIDRS,
    NODES,
    POOLS,
    ROUTE_EXPAND,
    ROUTE_MANAGER,
    ROUTES,
    expand_request_id,
)
from services.route_manager.domain import ConfigError
from services.route_manager.main import wire_manager
from services.route_manager.reconciler import RouteManager
from services.route_manager.settings import RouteManagerSettings
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.sim_fixtures import wide_open_api

pytestmark = pytest.mark.integration

TIMEOUT = 15.0


@dataclass
class World:
    bus: Bus
    settings: ChassisSettings
    sim: SimServer
    admin: SimAdmin
    api: BceVpcApi
    vpc_id: str
    route_table_id: str
    nodes: Store[NetResourceSet]
    pools: Store[NodePool]
    cidrs: Store[NodeCidr]
    routes: Store[RouteRule]
    config: Store[ClusterCidrPool]
    events: list[Event] = field(default_factory=list)
    instances: dict[str, str] = field(default_factory=dict)

    def manager_settings(self, service_id: str, **overrides: Any) -> RouteManagerSettings:
        values = {**self.settings.model_dump(), "service_id": service_id, "resync_period_s": 0.5,
                  "retry_backoff_s": 0.1, "cluster_cidrs": [IPv4Network("172.16.0.0/16")], **overrides}
        return RouteManagerSettings(**values)

    async def add_node(self, name: str, *, removing: bool = False) -> str:
        created = await self.admin.create_instance(name=name, cpus=4, memory_mib=8192)
        instance_id = self.instances[name] = str(created["id"])
        spec = NodeSpec(instance_id=instance_id, instance_type=InstanceType.BCC, zone="zoneA", cpus=4,
                        memory_mib=8192, mode=NetworkMode.VPC_ROUTE)
        await self.nodes.create(subject_token(name), NetResourceSet(name=name, spec=spec))
        await self.pools.mutate(subject_token(name), lambda p: p or NodePool(node=name))
        return instance_id

    async def remove_node(self, name: str) -> None:
        def change(nrs: NetResourceSet | None) -> NetResourceSet | None:
            assert nrs is not None
            nrs.status.removing = True
            return nrs

        await self.nodes.mutate(subject_token(name), change)

    async def claim(self, node: str, ips: list[str]) -> None:
        def change(pool: NodePool | None) -> NodePool:
            pool = pool or NodePool(node=node)
            for ip in ips:
                pool.allocated[ip] = f"{node}.c{ip}.eth0"
            return pool

        await self.pools.mutate(subject_token(node), change)

    async def cidrs_of(self, node: str) -> list[NodeCidr]:
        return sorted((v.value for v in (await self.cidrs.list()).values() if v.value.node == node),
                      key=lambda c: c.allocated_at)

    async def rules(self) -> list[CloudRouteRule]:
        return await self.api.list_route_rules(self.route_table_id)

    async def rule_on(self, cidr: IPv4Network) -> CloudRouteRule | None:
        return next((r for r in await self.rules() if r.destination == str(cidr)), None)

    async def record(self, cidr: IPv4Network) -> RouteRule | None:
        item = await self.routes.get(str(cidr).replace("/", "_"))
        return item.value if item else None

    def seen(self, kind: str, what: str) -> list[Event]:
        return [e for e in self.events if e.kind.value == kind and e.what == what]


@pytest.fixture
async def world(bus: Bus, settings: ChassisSettings, vpc_sim: SimServer,
                sim_admin: SimAdmin) -> AsyncIterator[World]:
    async def store(bucket: Any) -> Store[Any]:
        return Store(await bus.bucket(bucket), bucket.record, bucket.name)

    info = await sim_admin.info()
    w = World(bus, settings, vpc_sim, sim_admin, wide_open_api(vpc_sim), str(info["vpcId"]),
              str(info["routeTableId"]), await store(NODES), await store(POOLS), await store(NODE_CIDRS),
              await store(ROUTES), await store(CIDR_POOL))

    async def on_event(msg: Any) -> None:
        w.events.append(Event.model_validate_json(msg.data))

    sub = await bus.nc.subscribe(EVENTS_WILDCARD, cb=on_event)
    yield w
    await sub.unsubscribe()


class Replica:
    def __init__(self, w: World, service_id: str, vpc_id: str = "", **overrides: Any) -> None:
        self.settings = w.manager_settings(service_id, **overrides)
        self.proc = ServiceProcess(ROUTE_MANAGER, self.settings)
        self.world = w
        self.vpc_id = vpc_id
        self.manager: RouteManager | None = None

    async def start(self) -> None:
        await self.proc.start()
        self.manager = await wire_manager(self.proc, self.settings, self.world.api, vpc_id=self.vpc_id)
        self.proc.ready = True

    async def stop(self) -> None:
        await self.proc.shutdown()


@asynccontextmanager
async def running(w: World, service_id: str = "rm-a", vpc_id: str = "", **overrides: Any) -> AsyncIterator[Replica]:
    replica = Replica(w, service_id, vpc_id, **overrides)
    try:
        await replica.start()
        yield replica
    finally:
        await replica.stop()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def programmed(w: World, node: str, count: int = 1) -> list[NodeCidr]:
    """Wait for `count` CIDRs of the node, each with its rule in the cloud and a programmed record."""
    out: list[NodeCidr] = []

    async def check() -> bool:
        cidrs = await w.cidrs_of(node)
        if len(cidrs) < count:
            return False
        for cidr in cidrs:
            rule, record = await w.rule_on(cidr.cidr), await w.record(cidr.cidr)
            if rule is None or record is None or record.state is not RouteRuleState.PROGRAMMED:
                return False
        out[:] = cidrs
        return True

    await until(check, f"{count} programmed CIDR(s) on {node}")
    return out


# ---- tests -------------------------------------------------------------------------------------------------------


async def test_three_nodes_get_distinct_cidrs_with_their_route_rules(world: World) -> None:
    async with running(world):
        for name in ("node-1", "node-2", "node-3"):
            await world.add_node(name)
        got = {n: (await programmed(world, n))[0] for n in ("node-1", "node-2", "node-3")}
    assert len({c.cidr for c in got.values()}) == 3
    assert all(c.cidr.prefixlen == 24 and c.cidr.subnet_of(IPv4Network("172.16.0.0/16")) for c in got.values())
    rules = {r.destination: r for r in await world.rules()}
    for name, cidr in got.items():
        rule = rules[str(cidr.cidr)]
        assert rule.next_hop_id == world.instances[name]
        assert rule.description == f"cce-route:cce-local:{name}"
        assert cidr.request_id == expand_request_id(name, 1)
    config = await world.config.get("config")
    assert config is not None and config.value.route_table_id == world.route_table_id
    assert config.value.blocks == [IPv4Network("172.16.0.0/16")]


async def test_removing_a_node_deletes_its_rules_then_frees_its_cidrs(world: World) -> None:
    async with running(world):
        await world.add_node("node-1")
        await world.add_node("node-2")
        first = (await programmed(world, "node-1"))[0]
        await programmed(world, "node-2")
        await world.remove_node("node-1")

        async def gone() -> bool:
            return await world.rule_on(first.cidr) is None and not await world.cidrs_of("node-1")

        await until(gone, "node-1's rule and CIDR to go")
        assert await world.record(first.cidr) is None
        assert world.seen("cidr", "released")
        # the freed CIDR is handed out again
        await world.add_node("node-3")
        again = (await programmed(world, "node-3"))[0]
        assert again.cidr == first.cidr


async def test_a_foreign_rule_on_a_nodes_destination_is_a_conflict_left_alone(world: World) -> None:
    async with running(world):
        await world.add_node("node-1")
        cidr = (await programmed(world, "node-1"))[0].cidr
        other = await world.admin.create_instance(name="someone-else")
        mine = await world.rule_on(cidr)
        assert mine is not None
        await world.api.delete_route_rule(mine.rule_id)
        foreign = await world.api.create_route_rule(route_table_id=world.route_table_id, destination=str(cidr),
                                                    next_hop_instance=str(other["id"]), description="ops: by hand")

        async def conflicted() -> bool:
            record = await world.record(cidr)
            return record is not None and record.state is RouteRuleState.CONFLICT

        await until(conflicted, "the conflict to be recorded")
        record = await world.record(cidr)
        assert record is not None and record.reason is ErrorReason.ROUTE_CONFLICT and record.conflict == foreign
        await asyncio.sleep(1.2)  # a few more rounds: still left alone
        still = await world.rule_on(cidr)
        assert still is not None and still.rule_id == foreign and still.next_hop_id == other["id"]
        events = world.seen("route", "conflict")
        assert len(events) == 1 and events[0].reason is ErrorReason.ROUTE_CONFLICT
        # a new node is not given a destination a foreign rule holds
        await world.api.create_route_rule(route_table_id=world.route_table_id, destination="172.16.1.0/24",
                                          next_hop_instance=str(other["id"]), description="ops: reserved")
        await asyncio.sleep(0.8)
        await world.add_node("node-2")
        assert (await programmed(world, "node-2"))[0].cidr == IPv4Network("172.16.2.0/24")


async def test_takeover_policy_replaces_a_stale_rule_of_ours_but_never_a_foreign_one(world: World) -> None:
    other = await world.admin.create_instance(name="old-node")
    await world.api.create_route_rule(route_table_id=world.route_table_id, destination="172.16.0.0/24",
                                      next_hop_instance=str(other["id"]), description="cce-route:cce-local:old-node")
    async with running(world, conflict_policy="takeover"):
        inst = await world.add_node("node-1")
        cidr = (await programmed(world, "node-1"))[0].cidr
    assert cidr == IPv4Network("172.16.0.0/24")
    rule = await world.rule_on(cidr)
    assert rule is not None and rule.next_hop_id == inst


async def test_route_quota_exhaustion_is_a_coded_error_and_recovers_when_room_appears(world: World) -> None:
    await world.admin.set_settings(route_quota=2)
    async with running(world):
        for name in ("node-1", "node-2"):  # fill the table first: which of three racing nodes loses is not fixed
            await world.add_node(name)
        await programmed(world, "node-1")
        await programmed(world, "node-2")
        await world.add_node("node-3")

        async def blocked() -> bool:
            cidrs = await world.cidrs_of("node-3")
            record = await world.record(cidrs[0].cidr) if cidrs else None
            return record is not None and record.reason is ErrorReason.ROUTE_QUOTA_EXCEEDED

        await until(blocked, "node-3's rule to be blocked by the quota")
        third = await world.cidrs_of("node-3")
        record = await world.record(third[0].cidr)
        assert record is not None and record.state is RouteRuleState.PENDING
        assert len(world.seen("route", "quota-exceeded")) == 1
        await world.remove_node("node-1")
        await programmed(world, "node-3")


async def test_expand_is_idempotent_by_request_id_and_gives_another_cidr(world: World) -> None:
    async with running(world):
        await world.add_node("node-1")
        first = (await programmed(world, "node-1"))[0]
        req = ExpandRequest(node="node-1", request_id=expand_request_id("node-1", 2), free_ips=3)
        one = await call(world.bus, ROUTE_EXPAND, req)
        two = await call(world.bus, ROUTE_EXPAND, req)
        assert one.added == two.added and one.added != first.cidr
        assert one.cidrs == [first.cidr, one.added]
        again = await call(world.bus, ROUTE_EXPAND, ExpandRequest(node="node-1",
                                                                  request_id=expand_request_id("node-1", 1)))
        assert again.added == first.cidr
        await programmed(world, "node-1", 2)
        with pytest.raises(CceError) as info:
            await call(world.bus, ROUTE_EXPAND, ExpandRequest(node="node-9", request_id="x"))
        assert info.value.reason is ErrorReason.NODE_NOT_REGISTERED


async def test_an_idle_extra_cidr_is_given_back_but_never_the_first(world: World) -> None:
    async with running(world, release_delay_s=0.3, release_confirm_s=0.3, release_free_threshold=16):
        await world.add_node("node-1")
        first = (await programmed(world, "node-1"))[0]
        reply = await call(world.bus, ROUTE_EXPAND, ExpandRequest(node="node-1",
                                                                  request_id=expand_request_id("node-1", 2)))
        assert reply.added is not None
        second = reply.added
        await programmed(world, "node-1", 2)

        async def released() -> bool:
            return [c.cidr for c in await world.cidrs_of("node-1")] == [first.cidr]

        await until(released, "the idle second CIDR to go back")
        assert await world.rule_on(second) is None
        assert world.seen("cidr", "release-marked")
        await asyncio.sleep(1.0)
        assert [c.cidr for c in await world.cidrs_of("node-1")] == [first.cidr]


async def test_a_claim_in_a_marked_cidr_cancels_its_release(world: World) -> None:
    async with running(world, release_delay_s=0.0, release_confirm_s=2.0, release_free_threshold=16):
        await world.add_node("node-1")
        await programmed(world, "node-1")
        reply = await call(world.bus, ROUTE_EXPAND, ExpandRequest(node="node-1",
                                                                  request_id=expand_request_id("node-1", 2)))
        assert reply.added is not None

        async def marked() -> bool:
            return any(c.state is NodeCidrState.RELEASING for c in await world.cidrs_of("node-1"))

        await until(marked, "the second CIDR to be marked")
        await world.claim("node-1", [str(next(reply.added.hosts()))])

        async def active() -> bool:
            cidrs = await world.cidrs_of("node-1")
            return len(cidrs) == 2 and all(c.state is NodeCidrState.ACTIVE for c in cidrs)

        await until(active, "the release to be cancelled")
        assert world.seen("cidr", "release-cancelled")


async def test_blocks_overlapping_the_vpc_or_a_subnet_are_refused_at_start(world: World) -> None:
    replica = Replica(world, "rm-bad", vpc_id=world.vpc_id, cluster_cidrs=[IPv4Network("10.0.0.0/16")])
    await replica.proc.start()
    try:
        with pytest.raises(ConfigError, match=r"overlaps the VPC CIDR 10\.0\.0\.0/8"):
            await wire_manager(replica.proc, replica.settings, world.api, vpc_id=world.vpc_id)
    finally:
        await replica.stop()


async def test_a_standby_takes_over_and_never_hands_out_a_held_cidr_again(world: World) -> None:
    async with running(world, "rm-a") as a, running(world, "rm-b") as b:
        await world.add_node("node-1")
        held = (await programmed(world, "node-1"))[0]
        leader, standby = (a, b) if a.proc.elector and a.proc.elector.is_leader else (b, a)
        await leader.stop()
        await world.add_node("node-2")
        other = (await programmed(world, "node-2"))[0]
        assert standby.manager is not None and standby.manager.leading
    assert other.cidr != held.cidr
    stamp = utcnow() - timedelta(seconds=1)
    assert all(c.allocated_at > stamp - timedelta(minutes=1) for c in (held, other))

"""Integration tier: the vpc-route control plane as real processes (2 ipam, 2 route_manager) with a real
nats-server and the simulated VPC over HTTP through the production adapter. No datapath: the pod side is the
allocation (its address, gateway = the node's router address) and the VPC side is the route table."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.rpc import call
from cloud.port import CloudRouteRule
from schemas.base import NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import NodeRemoveRequest
from schemas.records import NetResourceSet, NodeCidr, RouteRule, RouteRuleState
from schemas.subjects import NODE_CIDRS, NODE_REMOVE, NODES, ROUTES, cidr_key
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, until

pytestmark = pytest.mark.integration

BLOCK = IPv4Network("172.16.0.0/16")
ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def route_cluster(bus: Bus, clean_nats: str, vpc_sim: SimServer,
                        tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """Starts 2 ipam + 2 route_manager processes with the given node mask / route_manager settings."""
    started: list[Cluster] = []

    async def start(mask: int = 24, **rm_env: str) -> Cluster:
        c = Cluster(bus, vpc_sim, clean_nats, tmp_path)
        c.service_env["route_manager"] = {
            "CCE_CLUSTER_CIDRS": str(BLOCK), "CCE_NODE_CIDR_MASK": str(mask), "CCE_RESYNC_PERIOD_S": "0.5",
            "CCE_RETRY_BACKOFF_S": "0.1", "CCE_CLOUD_VPC_ID": vpc_sim.vpc_id, **rm_env}
        started.append(c)
        for sid, service in (("ipam-1", "ipam"), ("ipam-2", "ipam"), ("rm-1", "route_manager"),
                             ("rm-2", "route_manager")):
            c.start(service, sid)
        await c.wait_started("ipam-1", "ipam-2", "rm-1", "rm-2")
        await until(lambda: c.leader("route_manager"), 15, "a route_manager leader")
        return c

    try:
        yield start
    finally:
        for c in started:
            await c.stop()


async def node(c: Cluster, admin: SimAdmin, name: str, *, max_pods: int = 110) -> str:
    inst = await admin.create_instance(name=name, cpus=4, memory_mib=8192)
    await c.register(name, inst, max_pods=max_pods, mode=NetworkMode.VPC_ROUTE)
    return str(inst["id"])


async def nrs(c: Cluster, name: str) -> NetResourceSet | None:
    item = await (await c.store(NODES)).get(name)
    return item.value if item else None  # type: ignore[no-any-return]


async def ready(c: Cluster, name: str, timeout: float = 15) -> NetResourceSet:
    async def check() -> bool:
        record = await nrs(c, name)
        return record is not None and record.status.ready and record.status.router_ip is not None

    await until(check, timeout, f"{name} to be ready")
    record = await nrs(c, name)
    assert record is not None
    return record


async def rules(c: Cluster) -> dict[str, CloudRouteRule]:
    return {r.destination: r for r in await c.api().list_route_rules(c.sim.route_table_id)}


async def node_cidrs(c: Cluster) -> list[NodeCidr]:
    return [v.value for v in (await (await c.store(NODE_CIDRS)).list()).values()]


async def route_record(c: Cluster, cidr: IPv4Network) -> RouteRule | None:
    item = await (await c.store(ROUTES)).get(cidr_key(cidr))
    return item.value if item else None  # type: ignore[no-any-return]


async def test_three_nodes_get_distinct_cidrs_rules_and_pod_addresses(route_cluster: ClusterFactory,
                                                                       sim_admin: SimAdmin) -> None:
    c = await route_cluster()
    instances = {name: await node(c, sim_admin, name) for name in ("node-1", "node-2", "node-3")}
    records = {name: await ready(c, name) for name in instances}
    cidrs = {name: r.status.cidrs for name, r in records.items()}
    assert all(len(v) == 1 and v[0].subnet_of(BLOCK) and v[0].prefixlen == 24 for v in cidrs.values())
    assert len({v[0] for v in cidrs.values()}) == 3
    table = await rules(c)
    for name, inst in instances.items():
        rule = table[str(cidrs[name][0])]
        assert rule.next_hop_id == inst and rule.description == f"cce-route:cce-local:{name}"
        assert records[name].status.router_ip == next(cidrs[name][0].hosts())
    for name in instances:
        reply = await c.allocate(name, f"pod-{name}", wait_s=5)
        address = reply.endpoint.addresses[0]
        assert address.ip in cidrs[name][0] and address.ip != records[name].status.router_ip
        assert (address.gateway, address.prefix_len) == (records[name].status.router_ip, 32)
        assert address.eni_id is None and address.route_table is None
        assert reply.endpoint.mode is NetworkMode.VPC_ROUTE


async def test_removing_a_node_deletes_its_rules_frees_its_cidr_then_its_record(route_cluster: ClusterFactory,
                                                                                sim_admin: SimAdmin) -> None:
    c = await route_cluster()
    await node(c, sim_admin, "node-1")
    await node(c, sim_admin, "node-2")
    gone = (await ready(c, "node-1")).status.cidrs[0]
    await ready(c, "node-2")
    await c.allocate("node-1", "pod-a", wait_s=5)
    await call(c.bus, NODE_REMOVE, NodeRemoveRequest(node="node-1"))

    async def removed() -> bool:
        return await nrs(c, "node-1") is None

    await until(removed, 15, "node-1's record to go")
    assert str(gone) not in await rules(c)
    assert gone not in {x.cidr for x in await node_cidrs(c)}
    await node(c, sim_admin, "node-3")
    assert (await ready(c, "node-3")).status.cidrs == [gone]


async def test_a_foreign_rule_on_a_nodes_destination_is_a_conflict_left_alone(route_cluster: ClusterFactory,
                                                                              sim_admin: SimAdmin) -> None:
    c = await route_cluster()
    await node(c, sim_admin, "node-1")
    cidr = (await ready(c, "node-1")).status.cidrs[0]
    api = c.api()
    other = await sim_admin.create_instance(name="not-ours")
    await api.delete_route_rule((await rules(c))[str(cidr)].rule_id)
    foreign = await api.create_route_rule(route_table_id=c.sim.route_table_id, destination=str(cidr),
                                          next_hop_instance=str(other["id"]), description="someone else's")

    async def conflicted() -> bool:
        record = await route_record(c, cidr)
        return record is not None and record.state is RouteRuleState.CONFLICT

    await until(conflicted, 10, "the conflict to be recorded")
    record = await route_record(c, cidr)
    assert record is not None and record.reason is ErrorReason.ROUTE_CONFLICT and foreign in record.conflict
    with pytest.raises(CceError) as info:
        await c.allocate("node-1", "pod-x", wait_s=1)
    assert info.value.reason is ErrorReason.ROUTE_CONFLICT
    await asyncio.sleep(1.0)
    left = (await rules(c))[str(cidr)]
    assert (left.rule_id, left.next_hop_id) == (foreign, other["id"])


async def test_route_quota_exhaustion_is_a_coded_error_and_recovers(route_cluster: ClusterFactory,
                                                                    sim_admin: SimAdmin) -> None:
    await sim_admin.set_settings(route_quota=2)
    c = await route_cluster()
    for name in ("node-1", "node-2"):
        await node(c, sim_admin, name)
        await ready(c, name)
    await node(c, sim_admin, "node-3")
    with pytest.raises(CceError) as info:
        await c.allocate("node-3", "pod-q", wait_s=2)
    assert info.value.reason is ErrorReason.ROUTE_QUOTA_EXCEEDED
    record = await nrs(c, "node-3")
    assert record is not None and not record.status.ready
    await call(c.bus, NODE_REMOVE, NodeRemoveRequest(node="node-1"))
    await ready(c, "node-3")
    reply = await c.allocate("node-3", "pod-q", wait_s=5)
    assert reply.endpoint.addresses[0].ip in (await ready(c, "node-3")).status.cidrs[0]


async def test_a_node_filled_past_its_first_cidr_gets_another_and_no_allocation_fails(
    route_cluster: ClusterFactory, sim_admin: SimAdmin
) -> None:
    c = await route_cluster(mask=27)  # 30 hosts; 29 for pods in the first CIDR (the router takes one)
    inst = await node(c, sim_admin, "node-1")
    first = (await ready(c, "node-1")).status.cidrs[0]
    ips: list[IPv4Address] = []
    for i in range(70):  # one pod at a time, like a node filling up: the next CIDR must be there in time
        reply = await c.allocate("node-1", f"pod-{i:02d}", wait_s=5)
        ips.append(reply.endpoint.addresses[0].ip)
    assert len(set(ips)) == 70

    async def third_cidr_recorded() -> bool:  # the node's status follows its pool (maintenance writes it)
        record = await nrs(c, "node-1")
        return record is not None and len(record.status.cidrs) >= 3

    await until(third_cidr_recorded, 15, "the node's status to list its third CIDR")
    record = await ready(c, "node-1")
    assert record.status.cidrs[0] == first and len(record.status.cidrs) >= 3
    assert all(any(ip in cidr for cidr in record.status.cidrs) for ip in ips)
    table = await rules(c)
    assert all(table[str(cidr)].next_hop_id == inst for cidr in record.status.cidrs)
    assert record.status.router_ip not in ips


async def test_killing_the_route_manager_leader_mid_allocation_never_gives_a_cidr_to_two_nodes(
    route_cluster: ClusterFactory, sim_admin: SimAdmin
) -> None:
    c = await route_cluster(mask=28, CCE_LOW_FREE_THRESHOLD="8")
    names = [f"node-{i:02d}" for i in range(12)]
    instances = {n: await sim_admin.create_instance(name=n, cpus=4, memory_mib=8192) for n in names}
    leader = await c.leader("route_manager")
    assert leader is not None
    burst = asyncio.gather(*(c.register(n, instances[n], mode=NetworkMode.VPC_ROUTE) for n in names))
    await asyncio.sleep(0.15)
    c.kill(leader)
    await burst
    for n in names:
        await ready(c, n, timeout=30)
    # fill two nodes past their first /28 (13 addresses) while leadership settles
    fills = [c.allocate(n, f"{n}-p{i}", wait_s=15, retries=3) for n in names[:2] for i in range(20)]
    await asyncio.gather(*fills)
    owners: dict[IPv4Network, str] = {}

    async def settled() -> bool:  # ipam may still ask for one more CIDR after the last allocation
        records = await node_cidrs(c)
        owners.clear()
        owners.update({r.cidr: r.node for r in records})
        assert len(owners) == len(records)  # one record per CIDR (keys are CIDRs)
        table = await rules(c)
        return set(table) == {str(x) for x in owners} and all(
            table[str(x)].next_hop_id == instances[n]["id"] for x, n in owners.items())

    await until(settled, 20, "every CIDR routed to its own node, and no other rule")
    await asyncio.sleep(1.5)  # the last ask ipam makes after a fill lands within ms; let it, then look again
    await until(settled, 20, "every CIDR routed to its own node, and no other rule")
    for n in names:
        status = (await ready(c, n)).status
        for cidr in status.cidrs:
            assert owners[cidr] == n
    all_cidrs = sorted(owners, key=lambda x: int(x.network_address))
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(all_cidrs))
    assert len({x for n in names[:2] for x in (await ready(c, n)).status.cidrs}) >= 4

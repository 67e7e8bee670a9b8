"""node_datapath in vpc-route, vpc-eni-primary and vpc-eni-exclusive modes against a real kernel (privileged tier:
root, ping, iproute2). The world is the simulator's fabric with two instances (node-a, node-b): their primary NICs
on the VPC router, exclusive ENIs as links carrying the ENI's MAC, and the VPC route table's rules as router routes
toward the next-hop instance. One datapath per node runs in-process on records from memory; the kernel is checked
with `ip -j`, independently of pyroute2."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from chassis import netns
from schemas.base import InstanceType, NetworkMode
from schemas.errors import CceError, ErrorReason
from schemas.messages import CheckRequest, SetupRequest, TeardownRequest
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    EndpointState,
    Eni,
    EniLinkState,
    EniState,
    EniUse,
    NetResourceSet,
    NodeSpec,
    NodeStatus,
    PrivateIp,
    host_veth_name,
)
from schemas.subjects import endpoint_key
from services.node_datapath.datapath import NodeDatapath, Timing
from services.node_datapath.netlink import Kernel
from services.vpc_sim.fabric import Fabric, FabricSpec, InstanceSpec, NicSpec, RouteRuleSpec, eni_peer_name
from tests.privileged import NEEDS_PING_AND_IP
from tests.test_datapath_kernel import Clock, MemoryRecords, MemoryReporter, ip_json, node_objects, ping, run

pytestmark = NEEDS_PING_AND_IP

NODES = {"node-a": "i-a", "node-b": "i-b"}
PRIMARY = {"i-a": ("02:00:00:00:00:0a", "10.0.0.10"), "i-b": ("02:00:00:00:00:0b", "10.0.0.11")}
VPC_SUBNET = "10.0.0.0/24"
ENI_SUBNET = "10.0.2.0/24"
ROUTE_CIDRS = {"node-a": "172.16.1.0/24", "node-b": "172.16.2.0/24"}
SECONDARIES = {"i-a": ("10.0.0.20", "10.0.0.21"), "i-b": ("10.0.0.30",)}
EXCLUSIVE = {  # eni id -> (instance, MAC, primary IP)
    "eni-x1": ("i-a", "02:00:00:00:02:01", "10.0.2.5"),
    "eni-x2": ("i-a", "02:00:00:00:02:02", "10.0.2.6"),
    "eni-y1": ("i-b", "02:00:00:00:02:03", "10.0.2.7"),
}
_seq = itertools.count()


@dataclass
class ModesWorld:
    fabric: Fabric
    pods: list[str]
    records: MemoryRecords
    reporter: MemoryReporter
    clock: Clock

    def node_ns(self, node: str) -> str:
        return self.fabric.instance_ns(NODES[node])

    def datapath(self, node: str, **timing: float) -> NodeDatapath:
        values = {"gc_grace_s": 5.0, "eni_wait_s": 2.0, **timing}
        return NodeDatapath(node, Kernel(self.node_ns(node)), self.records, self.reporter, Timing(**values),
                            self.clock)

    def pod_ns(self, i: int) -> str:
        return f"/run/netns/{self.pods[i]}"

    def setup_req(self, ep: CceEndpoint, pod: int) -> SetupRequest:
        """As the gateway asks after ipam recorded the endpoint (with the pod's netns): the datapath reads it."""
        self.records.put(ep.model_copy(update={"netns": self.pod_ns(pod)}))
        return SetupRequest(node=ep.node, container_id=ep.container_id, ifname=ep.ifname, netns=self.pod_ns(pod),
                            endpoint=ep)

    def teardown_req(self, ep: CceEndpoint, pod: int | None) -> TeardownRequest:
        return TeardownRequest(node=ep.node, container_id=ep.container_id, ifname=ep.ifname,
                               netns=self.pod_ns(pod) if pod is not None else "", endpoint=ep)


def fabric_spec(*, exclusive: bool = False, route: bool = False) -> FabricSpec:
    instances = []
    for iid, (mac, ip) in PRIMARY.items():
        primary = NicSpec(f"primary-{iid}", mac, VPC_SUBNET, (ip, *SECONDARIES[iid]), primary=True)
        enis = tuple(NicSpec(eni_id, emac, ENI_SUBNET, (eip,)) for eni_id, (owner, emac, eip) in EXCLUSIVE.items()
                     if exclusive and owner == iid)
        instances.append(InstanceSpec(iid, primary, enis))
    rules = tuple(RouteRuleSpec(cidr, NODES[node]) for node, cidr in ROUTE_CIDRS.items()) if route else ()
    return FabricSpec(tuple(instances), rules)


def node_record(node: str, mode: NetworkMode, router_ip: str | None = None) -> NetResourceSet:
    iid = NODES[node]
    spec = NodeSpec(instance_id=iid, instance_type=InstanceType.BCC, zone="zone-a", cpus=8, memory_mib=32768,
                    mode=mode, primary_ip=IPv4Address(PRIMARY[iid][1]), primary_mac=PRIMARY[iid][0])
    status = NodeStatus(ready=True, router_ip=IPv4Address(router_ip) if router_ip else None,
                        cidrs=[IPv4Network(ROUTE_CIDRS[node])] if router_ip else [])
    return NetResourceSet(name=node, spec=spec, status=status)


def primary_nic_record(node: str) -> Eni:
    iid = NODES[node]
    mac, ip = PRIMARY[iid]
    return Eni(eni_id=f"primary-{iid}", node=node, instance_id=iid, use=EniUse.PRIMARY_NIC, subnet_id="sbn-0",
               subnet_cidr=IPv4Network(VPC_SUBNET), mac=mac, state=EniState.INUSE, ip_quota=40,
               private_ips=[PrivateIp(ip=IPv4Address(ip), primary=True),
                            *(PrivateIp(ip=IPv4Address(x)) for x in SECONDARIES[iid])])


def exclusive_record(eni_id: str) -> Eni:
    iid, mac, ip = EXCLUSIVE[eni_id]
    node = next(n for n, i in NODES.items() if i == iid)
    return Eni(eni_id=eni_id, node=node, instance_id=iid, use=EniUse.EXCLUSIVE, subnet_id="sbn-2",
               subnet_cidr=IPv4Network(ENI_SUBNET), mac=mac, state=EniState.INUSE, ip_quota=1,
               private_ips=[PrivateIp(ip=IPv4Address(ip), primary=True)])


def veth_endpoint(node: str, cid: str, mode: NetworkMode, ip: str, gateway: str, eni_id: str | None = None,
                  cidr: str | None = None) -> CceEndpoint:
    address = EndpointAddress(ip=IPv4Address(ip), gateway=IPv4Address(gateway), eni_id=eni_id,
                              subnet_cidr=IPv4Network(cidr) if cidr else None)
    return CceEndpoint(node=node, container_id=cid, ifname="eth0", namespace="default", pod=f"pod-{cid}", mode=mode,
                       state=EndpointState.READY, addresses=[address])


def exclusive_endpoint(cid: str, eni_id: str) -> CceEndpoint:
    iid, mac, ip = EXCLUSIVE[eni_id]
    node = next(n for n, i in NODES.items() if i == iid)
    address = EndpointAddress(ip=IPv4Address(ip), prefix_len=24, gateway=IPv4Address("10.0.2.1"), eni_id=eni_id,
                              mac=mac, subnet_cidr=IPv4Network(ENI_SUBNET))
    return CceEndpoint(node=node, container_id=cid, ifname="eth0", namespace="default", pod=f"pod-{cid}",
                       mode=NetworkMode.VPC_ENI_EXCLUSIVE, state=EndpointState.READY, addresses=[address])


@asynccontextmanager
async def new_world(pods: int = 4) -> AsyncIterator[ModesWorld]:
    prefix = f"dm{os.getpid() % 100000}x{next(_seq)}"
    fabric = Fabric(prefix=prefix)
    names = [f"{prefix}pod{i}" for i in range(pods)]
    try:
        netns.create_namespaces(names)
        yield ModesWorld(fabric, names, MemoryRecords(), MemoryReporter(), Clock())
    finally:
        for name in names:
            netns.remove_namespace(name)
        await fabric.teardown()


@pytest.fixture
async def world() -> AsyncIterator[ModesWorld]:
    async with new_world() as w:
        yield w


async def link_of(ns: str, mac: str) -> dict[str, Any] | None:
    return next((x for x in await ip_json(ns, "addr", "show") if x.get("address") == mac), None)


def sysctl(ns: str, key: str) -> str | None:
    return netns.read_sysctls(ns, [key])[key]


# ---------------------------------------------------------------------------------------------------- vpc-route


async def test_route_mode_pods_on_two_nodes_ping_across_through_the_route_rules(world: ModesWorld) -> None:
    await world.fabric.apply(fabric_spec(route=True))
    world.records.nodes = {"node-a": node_record("node-a", NetworkMode.VPC_ROUTE, "172.16.1.1"),
                           "node-b": node_record("node-b", NetworkMode.VPC_ROUTE, "172.16.2.1")}
    route = NetworkMode.VPC_ROUTE
    eps = [veth_endpoint("node-a", "r1", route, "172.16.1.10", "172.16.1.1", cidr=ROUTE_CIDRS["node-a"]),
           veth_endpoint("node-a", "r2", route, "172.16.1.11", "172.16.1.1", cidr=ROUTE_CIDRS["node-a"]),
           veth_endpoint("node-b", "r3", route, "172.16.2.10", "172.16.2.1", cidr=ROUTE_CIDRS["node-b"])]
    dps = {node: world.datapath(node) for node in NODES}
    for dp in dps.values():
        await dp.resync()
    ns_a = world.node_ns("node-a")
    lo = (await ip_json(ns_a, "addr", "show", "dev", "lo"))[0]
    assert {(a["local"], a["prefixlen"], a.get("label")) for a in lo["addr_info"] if a["family"] == "inet"} >= {
        ("172.16.1.1", 32, "lo:cce")}
    assert sysctl(ns_a, "net/ipv4/ip_forward") == "1" and sysctl(ns_a, "net/ipv4/conf/all/rp_filter") == "0"
    assert sysctl(ns_a, "net/ipv4/conf/eth0/rp_filter") == "0"
    for i, ep in enumerate(eps):
        world.records.put(ep)
        reply = await dps[ep.node].setup(world.setup_req(ep, i))
        assert str(reply.ips[0].gateway) == ep.addresses[0].gateway.compressed and reply.host_veth
    assert not [r for r in await ip_json(ns_a, "rule", "show") if r.get("src") == "172.16.1.10"]  # no rules
    assert await ping(world.pods[0], "172.16.2.10")  # across nodes: node-a -> VPC router (rule) -> node-b
    assert await ping(world.pods[2], "172.16.1.11")
    assert await ping(world.pods[0], "172.16.1.11")  # same node
    assert await ping(world.pods[0], "172.16.1.1")  # its gateway: the node's router address
    assert await ping(world.pods[2], PRIMARY["i-a"][1])  # another node's primary IP
    check = CheckRequest(node="node-a", container_id="r1", netns=world.pod_ns(0), endpoint=eps[0])
    assert (await dps["node-a"].check(check)).ok
    world.clock.now += 60
    assert await dps["node-a"].resync() == [] and await dps["node-b"].resync() == []  # converged, nothing stale
    for i, ep in enumerate(eps):
        await dps[ep.node].teardown(world.teardown_req(ep, i))
        await dps[ep.node].reaped()  # the veth goes right after the reply
        veth = host_veth_name(ep.namespace, ep.pod, ep.ifname)
        assert await node_objects(world.node_ns(ep.node), str(ep.addresses[0].ip), veth) == []


async def test_a_changed_router_address_replaces_the_old_one_on_resync(world: ModesWorld) -> None:
    await world.fabric.apply(fabric_spec(route=True))
    world.records.nodes = {"node-a": node_record("node-a", NetworkMode.VPC_ROUTE, "172.16.1.1")}
    dp = world.datapath("node-a")
    await dp.resync()
    world.records.nodes = {"node-a": node_record("node-a", NetworkMode.VPC_ROUTE, "172.16.9.1")}
    changes = await dp.resync()
    assert sorted(changes) == ["add router address 172.16.9.1/32 to lo (lo:cce)",
                               "delete router address 172.16.1.1/32 from lo"]
    lo = (await ip_json(world.node_ns("node-a"), "addr", "show", "dev", "lo"))[0]
    assert [a["local"] for a in lo["addr_info"] if a.get("label") == "lo:cce"] == ["172.16.9.1"]


# ---------------------------------------------------------------------------------------------- vpc-eni-primary


async def test_primary_nic_pods_ping_across_nodes_through_the_main_table(world: ModesWorld) -> None:
    await world.fabric.apply(fabric_spec())
    world.records.eni_records = {f"primary-{i}": primary_nic_record(n) for n, i in NODES.items()}
    eps = [veth_endpoint("node-a", "p1", NetworkMode.VPC_ENI_PRIMARY, "10.0.0.20", "10.0.0.1", "primary-i-a"),
           veth_endpoint("node-a", "p2", NetworkMode.VPC_ENI_PRIMARY, "10.0.0.21", "10.0.0.1", "primary-i-a"),
           veth_endpoint("node-b", "p3", NetworkMode.VPC_ENI_PRIMARY, "10.0.0.30", "10.0.0.1", "primary-i-b")]
    dps = {node: world.datapath(node) for node in NODES}
    for dp in dps.values():
        await dp.resync()
    ns_a = world.node_ns("node-a")
    assert sysctl(ns_a, "net/ipv4/conf/eth0/proxy_arp") == "1" and sysctl(ns_a, "net/ipv4/ip_forward") == "1"
    record = world.reporter.states["primary-i-a"]
    assert (record.state, record.link_name, record.route_table) == (EniLinkState.READY, "eth0", None)
    for i, ep in enumerate(eps):
        world.records.put(ep)
        await dps[ep.node].setup(world.setup_req(ep, i))
    assert [x["ifname"] for x in await ip_json(ns_a, "link", "show") if x["ifname"].startswith("cce-eni")] == []
    assert {str(r.get("table")) for r in await ip_json(ns_a, "route", "show", "table", "all")} <= {
        "None", "local", "main"}  # no per-ENI table
    assert not [r for r in await ip_json(ns_a, "rule", "show") if r.get("src") == "10.0.0.20"]
    assert await ping(world.pods[0], "10.0.0.30")  # across nodes: proxy ARP on both sides
    assert await ping(world.pods[2], "10.0.0.21")
    assert await ping(world.pods[0], "10.0.0.21")  # same node
    assert await ping(world.pods[0], "10.0.0.1")  # the subnet gateway
    assert await ping(world.pods[2], PRIMARY["i-a"][1])
    world.clock.now += 60
    assert await dps["node-a"].resync() == []
    assert world.reporter.states["primary-i-a"].state is EniLinkState.READY  # not taken for a stale ENI
    assert await ip_json(ns_a, "link", "show", "dev", "eth0")  # never renamed
    for i, ep in enumerate(eps):
        await dps[ep.node].teardown(world.teardown_req(ep, i))
        await dps[ep.node].reaped()  # the veth goes right after the reply
        veth = host_veth_name(ep.namespace, ep.pod, ep.ifname)
        assert await node_objects(world.node_ns(ep.node), str(ep.addresses[0].ip), veth) == []


# -------------------------------------------------------------------------------------------- vpc-eni-exclusive


async def exclusive_world(world: ModesWorld) -> dict[str, NodeDatapath]:
    await world.fabric.apply(fabric_spec(exclusive=True))
    world.records.eni_records = {eni_id: exclusive_record(eni_id) for eni_id in EXCLUSIVE}
    dps = {node: world.datapath(node) for node in NODES}
    for dp in dps.values():
        await dp.resync()
    return dps


async def assert_on_node(world: ModesWorld, eni_id: str) -> None:
    """The ENI's link is back on its node under its original name, down, without address; reported ready."""
    iid, mac, _ = EXCLUSIVE[eni_id]
    node = next(n for n, i in NODES.items() if i == iid)
    link = await link_of(world.node_ns(node), mac)
    assert link is not None, f"{eni_id} is not on {node}"
    assert link["ifname"] == eni_peer_name(eni_id) and "UP" not in link["flags"]
    assert [a for a in link["addr_info"] if a["family"] == "inet"] == []
    record = world.reporter.states[eni_id]
    assert (record.state, record.link_name, record.original_name) == (
        EniLinkState.READY, eni_peer_name(eni_id), eni_peer_name(eni_id))


async def assert_in_pod(world: ModesWorld, pod: int, eni_id: str) -> None:
    _, mac, ip = EXCLUSIVE[eni_id]
    eth0 = (await ip_json(world.pods[pod], "addr", "show", "dev", "eth0"))[0]
    assert eth0["address"] == mac and "UP" in eth0["flags"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [(ip, 24)]
    default = next(r for r in await ip_json(world.pods[pod], "route", "show") if r["dst"] == "default")
    assert (default["gateway"], default["dev"]) == ("10.0.2.1", "eth0")


async def test_exclusive_pods_carry_the_eni_and_ping_across_then_it_goes_home_for_the_next_pod(
        world: ModesWorld) -> None:
    dps = await exclusive_world(world)
    for eni_id in EXCLUSIVE:
        await assert_on_node(world, eni_id)
    a, b = exclusive_endpoint("x1", "eni-x1"), exclusive_endpoint("y1", "eni-y1")
    for i, ep in ((0, a), (2, b)):
        world.records.put(ep)
        reply = await dps[ep.node].setup(world.setup_req(ep, i))
        assert reply.host_veth == "" and reply.interfaces[0].mac == ep.addresses[0].mac
        assert str(reply.ips[0].address) == f"{ep.addresses[0].ip}/24" and reply.ips[0].interface == 0
    await assert_in_pod(world, 0, "eni-x1")
    assert await link_of(world.node_ns("node-a"), EXCLUSIVE["eni-x1"][1]) is None
    record = world.reporter.states["eni-x1"]
    assert (record.state, record.netns, record.endpoint, record.original_name) == (
        EniLinkState.IN_POD, world.pod_ns(0), endpoint_key("node-a", "x1", "eth0"), eni_peer_name("eni-x1"))
    assert await ping(world.pods[0], "10.0.2.7")  # across nodes through the VPC router
    assert await ping(world.pods[2], "10.0.2.5")
    assert await ping(world.pods[0], "10.0.2.1")
    assert await ping(world.pods[0], PRIMARY["i-b"][1])
    check = CheckRequest(node="node-a", container_id="x1", netns=world.pod_ns(0), endpoint=a)
    assert (await dps["node-a"].check(check)).ok
    assert await dps["node-a"].setup(world.setup_req(a, 0))  # a repeated ADD finds it in place

    world.clock.now += 60
    assert await dps["node-a"].resync() == []  # a moved ENI of a live pod is left alone
    assert await ping(world.pods[0], "10.0.2.7")
    await assert_on_node(world, "eni-x2")  # the free one was not renamed into a cce-eni-N table either

    await run("ip", "-n", world.pods[0], "addr", "flush", "dev", "eth0")
    broken = await dps["node-a"].check(check)
    assert not broken.ok and "address 10.0.2.5/24 on eth0 missing" in broken.problems

    down = await dps["node-a"].teardown(world.teardown_req(a, 0))
    assert down.removed == [f"move ENI eni-x1 back to the node as {eni_peer_name('eni-x1')}"]
    await assert_on_node(world, "eni-x1")
    assert [x["ifname"] for x in await ip_json(world.pods[0], "link", "show")] == ["lo"]
    assert (await dps["node-a"].teardown(world.teardown_req(a, 0))).removed == []  # DEL twice
    assert (await dps["node-a"].teardown(world.teardown_req(a, None))).removed == []  # CNI_NETNS=""

    world.records.eps.pop(endpoint_key("node-a", "x1", "eth0"))
    nxt = exclusive_endpoint("x1-next", "eni-x1")  # the same ENI for the next pod
    world.records.put(nxt)
    await dps["node-a"].setup(world.setup_req(nxt, 1))
    await assert_in_pod(world, 1, "eni-x1")
    assert await ping(world.pods[1], "10.0.2.7")


async def test_an_exclusive_setup_into_an_occupied_ifname_or_without_the_link_fails_cleanly(
        world: ModesWorld) -> None:
    dps = await exclusive_world(world)
    await run("ip", "-n", world.pods[0], "link", "add", "eth0", "type", "veth", "peer", "name", "squat")
    ep = exclusive_endpoint("x1", "eni-x1")
    with pytest.raises(CceError, match="already exists in the pod") as info:
        await dps["node-a"].setup(world.setup_req(ep, 0))
    assert info.value.reason is ErrorReason.DATAPATH_FAILED
    await assert_on_node(world, "eni-x1")
    stray = exclusive_endpoint("y1", "eni-y1").model_copy(update={"node": "node-a"})  # its ENI is on node-b
    with pytest.raises(CceError, match="no link with MAC 02:00:00:00:02:03") as info:
        await dps["node-a"].setup(world.setup_req(stray, 1))
    assert info.value.reason is ErrorReason.DATAPATH_FAILED


async def test_gc_moves_an_eni_back_from_a_pod_whose_record_vanished_after_the_grace(world: ModesWorld) -> None:
    dps = await exclusive_world(world)
    dp = dps["node-a"]
    ep = exclusive_endpoint("x1", "eni-x1")
    world.records.put(ep)
    await dp.setup(world.setup_req(ep, 0))
    world.records.eps.clear()  # the pod's record is gone; its netns still holds the ENI
    assert await dp.resync() == []  # set up moments ago: never touched within the grace
    world.clock.now += 3
    assert await dp.resync() == []  # marked
    await assert_in_pod(world, 0, "eni-x1")
    restarted = world.datapath("node-a")  # a new process knows where the ENI went from its EniOnNode record
    restarted.adopt_reported(list(world.reporter.states.values()))
    restarted.marks = dict(dp.marks)
    world.clock.now += 3
    removed = await restarted.resync()
    assert len(removed) == 1 and "ENI eni-x1 left in" in removed[0], removed
    await assert_on_node(world, "eni-x1")
    assert [x["ifname"] for x in await ip_json(world.pods[0], "link", "show")] == ["lo"]


async def test_an_eni_whose_pod_netns_died_is_released_when_its_link_is_back_on_the_node(
        world: ModesWorld) -> None:
    dps = await exclusive_world(world)
    dp = dps["node-a"]
    ep = exclusive_endpoint("x2", "eni-x2")
    world.records.put(ep)
    await dp.setup(world.setup_req(ep, 3))
    netns.remove_namespace(world.pods[3])  # the runtime removed the netns without a DEL: the link dies with it
    await dp.teardown(world.teardown_req(ep, None))  # a DEL without netns: nothing to move
    world.records.eps.clear()
    world.clock.now += 6
    await dp.resync()
    world.clock.now += 6
    await dp.resync()
    assert world.reporter.states["eni-x2"].state is EniLinkState.PENDING
    await world.fabric.apply(fabric_spec(exclusive=True))  # the cloud side plugs the NIC back in
    await dp.resync()
    await assert_on_node(world, "eni-x2")
    # a link that comes back under another name (as the kernel names a returned NIC) gets its name back
    await run("ip", "-n", world.node_ns("node-a"), "link", "set", eni_peer_name("eni-x2"), "name", "dev9")
    assert await dp.resync() == [f"rename dev9 back to {eni_peer_name('eni-x2')}"]
    await assert_on_node(world, "eni-x2")
    nxt = exclusive_endpoint("x2-next", "eni-x2")
    world.records.put(nxt)
    await dp.setup(world.setup_req(nxt, 0))
    await assert_in_pod(world, 0, "eni-x2")
    assert await ping(world.pods[0], "10.0.2.1")

"""node_datapath against a real kernel (privileged tier: root, ping, iproute2). The world is the simulator's own
fabric: a VPC router namespace holding the subnet gateway /32 with proxy ARP, an instance namespace (the node) with
an ENI veth carrying the ENI's MAC, plus pod namespaces. The datapath runs in-process with records from memory
(the bus is exercised in test_datapath_service.py); the kernel is checked with `ip -j`, independently of pyroute2.
Every test uses its own namespace names and removes them."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from chassis import netns
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import CheckRequest, SetupReply, SetupRequest, TeardownRequest
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    EndpointState,
    Eni,
    EniLinkState,
    EniOnNode,
    EniState,
    NetResourceSet,
    PrivateIp,
    host_veth_name,
)
from schemas.subjects import endpoint_key
from services.node_datapath.datapath import NodeDatapath, Timing
from services.node_datapath.netlink import Kernel
from services.vpc_sim.fabric import Fabric, FabricSpec, InstanceSpec, NicSpec
from tests.cluster import until
from tests.privileged import NEEDS_PING_AND_IP

pytestmark = NEEDS_PING_AND_IP

NODE = "node-a"
ENI_ID = "eni-a"
ENI_MAC = "02:00:00:00:01:01"
SUBNET = "10.0.1.0/24"
GATEWAY = "10.0.1.1"
POD_IPS = ("10.0.1.20", "10.0.1.21", "10.0.1.22")
_seq = itertools.count()


# ----------------------------------------------------------------------------------------------------- helpers


async def run(*args: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {err.decode()}{out.decode()}")
    return proc.returncode or 0, out.decode()


async def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    _, out = await run("ip", "-n", ns, "-j", *args)
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


async def ping(ns: str, dst: str) -> bool:
    rc, _ = await run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst, check=False)
    return rc == 0


def eni_record(index: int = 1, ips: tuple[str, ...] = POD_IPS) -> Eni:
    return Eni(eni_id=ENI_ID, node=NODE, instance_id="i-a", subnet_id="sbn-1", subnet_cidr=IPv4Network(SUBNET),
               mac=ENI_MAC, state=EniState.INUSE, index=index,
               private_ips=[PrivateIp(ip=IPv4Address("10.0.1.5"), primary=True),
                            *(PrivateIp(ip=IPv4Address(ip)) for ip in ips)])


def endpoint(cid: str, ip: str, pod: str | None = None) -> CceEndpoint:
    return CceEndpoint(node=NODE, container_id=cid, ifname="eth0", namespace="default", pod=pod or f"pod-{cid}",
                       state=EndpointState.READY,
                       addresses=[EndpointAddress(ip=IPv4Address(ip), gateway=IPv4Address(GATEWAY),
                                                  subnet_cidr=IPv4Network(SUBNET), eni_id=ENI_ID, route_table=128)])


@dataclass
class MemoryRecords:
    eps: dict[str, CceEndpoint] = field(default_factory=dict)
    eni_records: dict[str, Eni] = field(default_factory=dict)
    nodes: dict[str, NetResourceSet] = field(default_factory=dict)

    def node_record(self, node: str) -> NetResourceSet | None:
        return self.nodes.get(node)

    def endpoints(self) -> list[CceEndpoint]:
        return list(self.eps.values())

    def endpoint(self, key: str) -> CceEndpoint | None:
        return self.eps.get(key)

    async def fetch_endpoint(self, key: str) -> CceEndpoint | None:
        return self.eps.get(key)

    def enis(self) -> dict[str, Eni]:
        return dict(self.eni_records)

    def put(self, ep: CceEndpoint) -> None:
        self.eps[endpoint_key(ep.node, ep.container_id, ep.ifname)] = ep


@dataclass
class MemoryReporter:
    states: dict[str, EniOnNode] = field(default_factory=dict)
    events: list[tuple[EventKind, str, dict[str, Any]]] = field(default_factory=list)

    async def eni_state(self, record: EniOnNode) -> None:
        self.states[record.eni_id] = record

    async def eni_gone(self, eni_id: str) -> None:
        self.states.pop(eni_id, None)

    async def event(self, kind: EventKind, what: str, **data: Any) -> None:
        self.events.append((kind, what, data))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    fabric: Fabric
    node_ns: str
    pods: list[str]
    records: MemoryRecords
    reporter: MemoryReporter
    clock: Clock

    def datapath(self, **timing: float) -> NodeDatapath:
        values = {"gc_grace_s": 5.0, "eni_wait_s": 5.0, **timing}
        return NodeDatapath(NODE, Kernel(self.node_ns), self.records, self.reporter, Timing(**values), self.clock)

    def pod_ns(self, i: int) -> str:
        return f"/run/netns/{self.pods[i]}"  # by absolute path, as a runtime passes it

    def setup_req(self, ep: CceEndpoint, pod: int) -> SetupRequest:
        """As the gateway asks after ipam recorded the endpoint (with the pod's netns): the datapath reads it."""
        self.records.put(ep.model_copy(update={"netns": self.pod_ns(pod)}))
        return SetupRequest(node=NODE, container_id=ep.container_id, ifname=ep.ifname, netns=self.pod_ns(pod),
                            endpoint=ep)


def spec(with_eni: bool = True) -> FabricSpec:
    primary = NicSpec("primary-i-a", "02:00:00:00:00:01", "10.0.0.0/24", ("10.0.0.10",), primary=True)
    eni = NicSpec(ENI_ID, ENI_MAC, SUBNET, ("10.0.1.5", *POD_IPS))
    return FabricSpec((InstanceSpec("i-a", primary, (eni,) if with_eni else ()),))


@asynccontextmanager
async def new_world() -> AsyncIterator[World]:
    """A fabric (router + node namespace with the ENI) and three pod namespaces, all removed afterwards."""
    prefix = f"dp{os.getpid() % 100000}x{next(_seq)}"
    fabric = Fabric(prefix=prefix)
    pods = [f"{prefix}pod{i}" for i in range(3)]  # not "<prefix>-*": the fabric would take them for its own
    try:
        netns.create_namespaces(pods)
        records = MemoryRecords(eni_records={ENI_ID: eni_record()})
        yield World(fabric, fabric.instance_ns("i-a"), pods, records, MemoryReporter(), Clock())
    finally:
        for name in pods:
            netns.remove_namespace(name)
        await fabric.teardown()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with new_world() as w:
        yield w


async def node_objects(ns: str, ip: str, veth: str | None = None) -> list[str]:
    """Everything of a pod IP left on the node: routes, rules, neighbours, and host veths (`veth`, or any)."""
    left = [f"link {x['ifname']}" for x in await ip_json(ns, "link", "show")
            if x["ifname"] == veth or (veth is None and x["ifname"].startswith("cce")
                                       and not x["ifname"].startswith("cce-eni"))]
    left += [f"route {r['dst']}" for r in await ip_json(ns, "route", "show", "table", "all") if r.get("dst") == ip]
    left += [f"rule {r}" for r in await ip_json(ns, "rule", "show") if ip in (r.get("src"), r.get("dst"))]
    left += [f"neigh {n}" for n in await ip_json(ns, "neigh", "show") if n.get("dst") == ip]
    return left


# ---------------------------------------------------------------------------------------------------------- ENI


async def test_resync_configures_the_eni_found_by_mac(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    await dp.resync()
    ns = world.node_ns
    link = (await ip_json(ns, "addr", "show", "dev", "cce-eni-1"))[0]
    assert link["address"] == ENI_MAC and "UP" in link["flags"]
    addr = next(a for a in link["addr_info"] if a["family"] == "inet")
    assert (addr["local"], addr["prefixlen"], addr.get("noprefixroute")) == ("10.0.1.5", 24, True)
    assert not [r for r in await ip_json(ns, "route", "show") if r["dst"] == SUBNET]  # no connected route in main
    table = {r["dst"]: r for r in await ip_json(ns, "route", "show", "table", "128")}
    assert table["10.0.1.1"]["dev"] == "cce-eni-1" and table["10.0.1.1"]["scope"] == "link"
    assert (table["default"]["gateway"], table["default"]["dev"]) == (GATEWAY, "cce-eni-1")
    sysctls = netns.read_sysctls(ns, ["net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter",
                                      "net/ipv4/conf/cce-eni-1/rp_filter", "net/ipv4/conf/cce-eni-1/proxy_arp"])
    assert list(sysctls.values()) == ["1", "0", "0", "1"]
    record = world.reporter.states[ENI_ID]
    assert (record.state, record.link_name, record.route_table, record.original_name) == (
        EniLinkState.READY, "cce-eni-1", 128, link["ifname"] and record.original_name)
    assert record.original_name.startswith("e")  # the fabric's name for it
    assert [(k, w) for k, w, _ in world.reporter.events] == [(EventKind.ENI, "ready")]
    assert await dp.resync() == []  # converged: nothing to change, nothing re-reported
    assert len(world.reporter.events) == 1


async def test_an_eni_without_its_link_is_pending_with_a_message(world: World) -> None:
    await world.fabric.apply(spec(with_eni=False))
    dp = world.datapath()
    await dp.resync()
    record = world.reporter.states[ENI_ID]
    assert record.state is EniLinkState.PENDING
    assert f"no link with MAC {ENI_MAC}" in record.message


# ---------------------------------------------------------------------------------------------------------- pods


async def test_two_pods_ping_each_other_and_the_gateway_then_teardown_leaves_nothing(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    await dp.resync()
    eps = [endpoint("c1", POD_IPS[0]), endpoint("c2", POD_IPS[1])]
    for ep in eps:
        world.records.put(ep)
    setup_ms: list[float] = []
    replies: list[SetupReply] = []
    for i, ep in enumerate(eps):
        started = time.perf_counter()
        replies.append(await dp.setup(world.setup_req(ep, i)))
        setup_ms.append((time.perf_counter() - started) * 1000)
    veth = host_veth_name("default", "pod-c1", "eth0")
    assert replies[0].host_veth == veth and replies[0].interfaces[0].name == veth
    assert replies[0].interfaces[1].sandbox == world.pod_ns(0)
    assert str(replies[0].ips[0].address) == f"{POD_IPS[0]}/32" and str(replies[0].ips[0].gateway) == GATEWAY

    assert await ping(world.pods[0], POD_IPS[1])
    assert await ping(world.pods[1], POD_IPS[0])
    assert await ping(world.pods[0], GATEWAY)
    assert await ping(world.pods[1], GATEWAY)

    again = await dp.setup(world.setup_req(eps[0], 0))  # a repeated ADD: the same reply, still working
    assert again == replies[0]
    assert await ping(world.pods[0], POD_IPS[1])

    check = CheckRequest(node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=eps[0])
    assert (await dp.check(check)).ok
    await run("ip", "-n", world.node_ns, "route", "del", f"{POD_IPS[0]}/32", "dev", veth)
    result = await dp.check(check)
    assert not result.ok and result.problems == [f"route {POD_IPS[0]}/32 dev {veth} missing in main"]
    await dp.resync()  # a live pod's missing host route is repaired
    assert (await dp.check(check)).ok

    teardown_ms: list[float] = []
    for i, ep in enumerate(eps):
        started = time.perf_counter()
        reply = await dp.teardown(TeardownRequest(node=NODE, container_id=ep.container_id, netns=world.pod_ns(i),
                                                  endpoint=ep))
        teardown_ms.append((time.perf_counter() - started) * 1000)
        assert any("host veth" in r for r in reply.removed) and sum("rule" in r for r in reply.removed) == 2
        # at the reply: no route, rule nor neighbour of the pod's IP is left, its veth is down or already gone...
        assert [x for x in await node_objects(world.node_ns, POD_IPS[i]) if not x.startswith("link ")] == []
        assert all("UP" not in x["flags"] for x in await ip_json(world.node_ns, "link", "show")
                   if x["ifname"] == host_veth_name("default", f"pod-{ep.container_id}", "eth0"))
    await dp.reaped()  # ...and it is deleted right after
    for ip in POD_IPS[:2]:
        assert await node_objects(world.node_ns, ip) == []
    assert [x["ifname"] for x in await ip_json(world.pods[0], "link", "show")] == ["lo"]
    again_down = await dp.teardown(TeardownRequest(node=NODE, container_id="c1", netns=world.pod_ns(0),
                                                   endpoint=eps[0]))
    assert again_down.removed == []
    print(f"\nper-pod setup ms: {[round(x, 2) for x in setup_ms]}, teardown ms: {[round(x, 2) for x in teardown_ms]}")


async def test_setup_and_teardown_timing(world: World) -> None:
    """Not a benchmark: prints per-pod setup and teardown times for the record."""
    await world.fabric.apply(spec())
    dp = world.datapath()
    await dp.resync()
    setup_ms, teardown_ms = [], []
    for round_ in range(10):
        ep = endpoint(f"t{round_}", POD_IPS[round_ % 3])
        world.records.put(ep)
        started = time.perf_counter()
        await dp.setup(world.setup_req(ep, 0))
        setup_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await dp.teardown(TeardownRequest(node=NODE, container_id=ep.container_id, netns=world.pod_ns(0),
                                          endpoint=ep))
        teardown_ms.append((time.perf_counter() - started) * 1000)
    print(f"\nsetup ms p50 {statistics.median(setup_ms):.2f} max {max(setup_ms):.2f}; "
          f"teardown ms p50 {statistics.median(teardown_ms):.2f} max {max(teardown_ms):.2f} (10 pods)")


async def test_setup_waits_for_the_eni_link_to_appear(world: World) -> None:
    await world.fabric.apply(spec(with_eni=False))
    dp = world.datapath()
    ep = endpoint("c1", POD_IPS[0])
    world.records.put(ep)
    pending = asyncio.create_task(dp.setup(world.setup_req(ep, 0)))
    await asyncio.sleep(0.3)
    assert not pending.done()
    await world.fabric.apply(spec())  # the ENI is hot-plugged
    await asyncio.wait_for(pending, 5)
    assert await ping(world.pods[0], GATEWAY)


async def test_setup_gives_up_when_the_eni_never_appears(world: World) -> None:
    await world.fabric.apply(spec(with_eni=False))
    dp = world.datapath(eni_wait_s=0.3)
    ep = endpoint("c1", POD_IPS[0])
    with pytest.raises(CceError, match="not ready after") as info:
        await dp.setup(world.setup_req(ep, 0))
    assert info.value.reason is ErrorReason.DATAPATH_FAILED
    assert await node_objects(world.node_ns, POD_IPS[0]) == []


async def test_bad_netns_paths_get_coded_errors(world: World, tmp_path: Path) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    ep = endpoint("c1", POD_IPS[0])
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    for path, words in (("/run/netns/does-not-exist", "does not exist"), (str(plain), "not a network namespace"),
                        (f"/run/netns/{world.node_ns}", "the node's own"),
                        ("/proc/1/ns/net", "the node's own|Permission denied")):  # where init's ns is not ours to read
        world.records.put(ep.model_copy(update={"netns": path}))  # ipam recorded what the runtime passed
        req = SetupRequest(node=NODE, container_id="c1", netns=path, endpoint=ep)
        with pytest.raises(CceError, match=words) as info:
            await dp.setup(req)
        assert info.value.reason is ErrorReason.INVALID_REQUEST
    assert await node_objects(world.node_ns, POD_IPS[0]) == []
    world.records.put(ep.model_copy(update={"netns": "/run/netns/does-not-exist"}))
    gone = await dp.check(CheckRequest(node=NODE, container_id="c1", netns="/run/netns/does-not-exist", endpoint=ep))
    assert not gone.ok and "host veth" in gone.problems[0]


async def test_the_datapath_programs_what_the_record_says_not_what_the_request_says(world: World) -> None:
    """A forged setup (right node, made-up endpoint; or a real endpoint dressed with another IP and the host's
    netns) changes nothing the record does not say."""
    await world.fabric.apply(spec())
    dp = world.datapath()
    made_up = endpoint("c9", POD_IPS[2])
    with pytest.raises(CceError) as info:
        await dp.setup(SetupRequest(node=NODE, container_id="c9", netns=world.pod_ns(0), endpoint=made_up))
    assert info.value.reason is ErrorReason.ENDPOINT_NOT_FOUND
    real = endpoint("c1", POD_IPS[0])
    world.records.put(real.model_copy(update={"netns": world.pod_ns(0)}))
    forged = real.model_copy(update={"addresses": made_up.addresses, "netns": "/proc/1/ns/net"})
    reply = await dp.setup(SetupRequest(node=NODE, container_id="c1", netns="/proc/1/ns/net", endpoint=forged))
    assert str(reply.ips[0].address) == f"{POD_IPS[0]}/32" and reply.interfaces[1].sandbox == world.pod_ns(0)
    assert await node_objects(world.node_ns, POD_IPS[2], veth=reply.host_veth) == [f"link {reply.host_veth}"]
    assert await ping(world.pods[0], GATEWAY)


async def test_a_new_container_of_the_same_pod_replaces_the_old_veth(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    old, new = endpoint("c1", POD_IPS[0], pod="web"), endpoint("c2", POD_IPS[1], pod="web")
    await dp.setup(world.setup_req(old, 0))
    reply = await dp.setup(world.setup_req(new, 1))
    assert reply.host_veth == host_veth_name("default", "web", "eth0")
    assert await ping(world.pods[1], GATEWAY)
    links = [x for x in await ip_json(world.node_ns, "link", "show") if x.get("ifalias", "").startswith("cce-net ")]
    assert [x["ifalias"] for x in links] == [f"cce-net {endpoint_key(NODE, 'c2', 'eth0')}"]
    # the old container's DEL must not take the new one's veth
    await dp.teardown(TeardownRequest(node=NODE, container_id="c1", endpoint=old))
    assert await ping(world.pods[1], GATEWAY)


async def test_an_add_right_after_a_del_of_the_same_attachment_waits_for_its_old_veth_to_go(world: World) -> None:
    """The DEL's veth is deleted after its reply (held here until the ADD is seen waiting): a DEL again at once
    changes nothing, and an ADD again of the same container (the same veth name) waits for the deletion, then
    builds a working pair that nothing deletes afterwards."""
    await world.fabric.apply(spec())
    dp = world.datapath()
    gate = asyncio.Event()
    delete_link = dp.kernel.delete_link_aside

    async def held_delete(link: Any) -> bool:
        await gate.wait()
        return await delete_link(link)

    dp.kernel.delete_link_aside = held_delete  # type: ignore[method-assign]
    ep = endpoint("c1", POD_IPS[0])
    world.records.put(ep)
    await dp.setup(world.setup_req(ep, 0))
    down = TeardownRequest(node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=ep)
    assert any("host veth" in r for r in (await dp.teardown(down)).removed)
    assert (await dp.teardown(down)).removed == []  # DEL twice: its deletion is already on its way
    again = asyncio.create_task(dp.setup(world.setup_req(ep, 0)))

    await until(lambda: again.done() or dp.reap_waits == 1, 30, "the ADD to wait for the old veth's deletion")
    gate.set()
    reply = await again
    await dp.reaped()
    veth = host_veth_name("default", "pod-c1", "eth0")
    [link] = [x for x in await ip_json(world.node_ns, "link", "show") if x["ifname"] == veth]
    assert "UP" in link["flags"] and reply.host_veth == veth
    assert await ping(world.pods[0], GATEWAY)


async def test_teardown_without_a_record_finds_the_ip_from_the_host_route(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    ep = endpoint("c1", POD_IPS[0])
    await dp.setup(world.setup_req(ep, 0))
    await netns_gone(world.pods[0])  # the runtime already removed the netns: the veth went with it
    reply = await dp.teardown(TeardownRequest(node=NODE, container_id="c1", netns=""))
    assert sum("rule" in r for r in reply.removed) in (0, 2)
    await dp.resync()
    world.clock.now += 10
    await dp.resync()  # whatever teardown could not find, GC does
    assert await node_objects(world.node_ns, POD_IPS[0]) == []


async def netns_gone(name: str) -> None:
    netns.remove_namespace(name)
    await asyncio.sleep(0.05)


async def test_teardown_by_alias_removes_veth_and_rules_when_the_record_is_gone(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    ep = endpoint("c1", POD_IPS[0])
    await dp.setup(world.setup_req(ep, 0))
    reply = await dp.teardown(TeardownRequest(node=NODE, container_id="c1", netns=world.pod_ns(0)))
    assert len(reply.removed) == 3, reply.removed
    await dp.reaped()
    assert await node_objects(world.node_ns, POD_IPS[0]) == []


# ---------------------------------------------------------------------------------------------- restart and GC


async def test_a_restarted_datapath_leaves_pods_working(world: World) -> None:
    await world.fabric.apply(spec())
    first = world.datapath()
    await first.resync()
    eps = [endpoint("c1", POD_IPS[0]), endpoint("c2", POD_IPS[1])]
    for i, ep in enumerate(eps):
        world.records.put(ep)
        await first.setup(world.setup_req(ep, i))
    second = world.datapath()  # a new process: no memory of the first
    assert await second.resync() == []
    world.clock.now += 60
    assert await second.resync() == []
    assert await ping(world.pods[0], POD_IPS[1]) and await ping(world.pods[1], GATEWAY)


async def test_resync_removes_a_pod_whose_endpoint_is_gone_after_the_grace(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath(gc_grace_s=5)
    keep, drop = endpoint("c1", POD_IPS[0]), endpoint("c2", POD_IPS[1])
    for i, ep in enumerate((keep, drop)):
        world.records.put(ep)
        await dp.setup(world.setup_req(ep, i))
    world.records.eps.pop(endpoint_key(NODE, "c2", "eth0"))
    assert await dp.resync() == []  # set up moments ago: never removed within the grace
    world.clock.now += 3
    assert await dp.resync() == []  # marked, not yet removed
    assert await node_objects(world.node_ns, POD_IPS[1]) != []
    world.clock.now += 3
    removed = await dp.resync()
    assert len(removed) == 3, removed  # the veth and both rules
    assert await node_objects(world.node_ns, POD_IPS[1], host_veth_name("default", "pod-c2", "eth0")) == []
    assert await ping(world.pods[0], GATEWAY)
    kinds = [(k, w) for k, w, _ in world.reporter.events]
    assert (EventKind.DATAPATH, "stale-cleaned") in kinds
    data = next(d for k, w, d in world.reporter.events if w == "stale-cleaned")
    assert data["endpoints"] == [endpoint_key(NODE, "c2", "eth0")]


async def test_resync_removes_stale_rules_and_tables_of_enis_that_left(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath(gc_grace_s=1)
    await dp.resync()
    ns = world.node_ns
    await run("ip", "-n", ns, "rule", "add", "from", "10.0.1.99", "lookup", "128", "priority", "1536")
    await run("ip", "-n", ns, "rule", "add", "to", "10.0.1.99", "lookup", "main", "priority", "512")
    await run("ip", "-n", ns, "route", "add", "default", "via", GATEWAY, "dev", "cce-eni-1", "onlink", "table", "130")
    await run("ip", "-n", ns, "rule", "add", "from", "10.0.1.98", "lookup", "128", "priority", "1000")  # not ours
    assert await dp.resync() == []
    world.clock.now += 2
    removed = await dp.resync()
    assert sorted(removed) == sorted(["stale rule 1536: from 10.0.1.99/32 lookup 128",
                                      "stale rule 512: to 10.0.1.99/32 lookup 254",
                                      "stale route 0.0.0.0/0 via 10.0.1.1 dev cce-eni-1 in table 130"])
    rules = await ip_json(ns, "rule", "show")
    assert [r.get("src") for r in rules if r["priority"] == 1000] == ["10.0.1.98"]
    assert await node_objects(ns, "10.0.1.99") == []
    assert "128" in {str(r.get("table")) for r in await ip_json(ns, "route", "show", "table", "all")}


async def test_an_interface_squatting_the_pod_ifname_is_reported_clearly(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    await run("ip", "-n", world.pods[0], "link", "add", "eth0", "type", "veth", "peer", "name", "squat")
    with pytest.raises(CceError, match="interface eth0 already exists in /run/netns/") as info:
        await dp.setup(world.setup_req(endpoint("c1", POD_IPS[0]), 0))
    assert info.value.reason is ErrorReason.DATAPATH_FAILED
    assert await node_objects(world.node_ns, POD_IPS[0]) == []

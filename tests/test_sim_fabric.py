"""The simulator's real network fabric (services/vpc_sim/fabric.py): namespaces, veths, router routes, and real
pings between simulated instances. Privileged tier: needs root (network namespaces) and ping. Every test uses its
own namespace prefix and tears down. The kernel state is checked with iproute2 (`ip -j`), independently of
pyroute2."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.vpc_sim.fabric import (
    Fabric,
    FabricError,
    FabricSpec,
    InstanceSpec,
    NicSpec,
    RouteRuleSpec,
    build_desired,
    plan_routes,
    router_link_name,
)
from tests.privileged import NEEDS_PING_AND_IP

pytestmark = NEEDS_PING_AND_IP

_seq = itertools.count()


# ----------------------------------------------------------------------------------------------------- helpers


def instance(name: str, n: int, eni: bool = True) -> InstanceSpec:
    """Instance `name`: primary NIC 10.0.0.(9+n)/24; optionally one ENI in 10.0.1.0/24 with primary IP 10.0.1.(4+n)
    and secondary IP 10.0.1.(19+n). A: n=1 (10.0.0.10, 10.0.1.20); B: n=2 (10.0.0.11, 10.0.1.21)."""
    primary = NicSpec(f"primary-{name}", f"02:00:00:00:00:{n:02x}", "10.0.0.0/24", (f"10.0.0.{9 + n}",), primary=True)
    enis = (eni_of(name, n),) if eni else ()
    return InstanceSpec(name, primary, enis)


def eni_of(name: str, n: int) -> NicSpec:
    return NicSpec(f"eni-{name}", f"02:00:00:00:01:{n:02x}", "10.0.1.0/24", (f"10.0.1.{4 + n}", f"10.0.1.{19 + n}"))


A_ENI_MAC = "02:00:00:00:01:01"
B_ENI_MAC = "02:00:00:00:01:02"


def two(rules: tuple[RouteRuleSpec, ...] = (), a_eni: bool = True, b_eni: bool = True) -> FabricSpec:
    return FabricSpec((instance("i-a", 1, a_eni), instance("i-b", 2, b_eni)), rules)


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


async def link_by_mac(ns: str, mac: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = next((x for x in await ip_json(ns, "link", "show") if x.get("address") == mac), None)
    return found


async def ipv4(ns: str, dev: str) -> set[str]:
    return {
        f"{a['local']}/{a['prefixlen']}"
        for link in await ip_json(ns, "addr", "show", "dev", dev)
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    }


async def routes(ns: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in await ip_json(ns, "route", "show")}


async def sysctl(ns: str, key: str) -> str:
    _, out = await run("ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}")
    return out.strip()


async def namespaces(prefix: str) -> list[str]:
    _, out = await run("ip", "netns", "list")
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-"))


async def ping(ns: str, src: str, dst: str) -> bool:
    rc, _ = await run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-I", src, dst, check=False)
    return rc == 0


async def configure_eni_by_hand(ns: str, mac: str, ip: str, peer_ip: str) -> str:
    """What the node datapath will do: find the ENI by MAC, up, its secondary IP /32, a route to the peer's IP via
    the subnet gateway on that link."""
    link = await link_by_mac(ns, mac)
    assert link is not None, f"no link with MAC {mac} in {ns}"
    dev = str(link["ifname"])
    await run("ip", "-n", ns, "link", "set", dev, "up")
    await run("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", dev)
    await run("ip", "-n", ns, "route", "add", f"{peer_ip}/32", "via", "10.0.1.1", "dev", dev, "onlink")
    return dev


@pytest.fixture
async def fabric() -> AsyncIterator[Fabric]:
    fab = Fabric(prefix=f"t{os.getpid() % 10000}{next(_seq)}")
    try:
        yield fab
    finally:
        await fab.teardown()


# ------------------------------------------------------------------------------------------------- pure parts


def test_builder_names_gateways_and_routes() -> None:
    desired = build_desired("cce-sim", two((RouteRuleSpec("172.16.5.7/24", "i-a"),)))
    assert desired.router_ns == "cce-sim-vpc"
    assert set(desired.instances) == {"cce-sim-i-a", "cce-sim-i-b"}
    assert all(len(name) <= 15 and len(link.peer_name) <= 15 for name, link in desired.links.items())
    eni = desired.links[router_link_name("eni-i-a")]
    assert (eni.gateway, eni.mac, eni.primary, eni.instance_ns) == ("10.0.1.1", A_ENI_MAC, False, "cce-sim-i-a")
    primary = desired.instances["cce-sim-i-a"]
    assert (primary.address, primary.prefixlen, primary.gateway) == ("10.0.0.10", 24, "10.0.0.1")
    assert desired.links[router_link_name("primary-i-a")].peer_name == "eth0"
    assert desired.routes["10.0.1.20/32"].link == router_link_name("eni-i-a")
    rule = desired.routes["172.16.5.0/24"]
    assert (rule.link, rule.gateway) == (router_link_name("primary-i-a"), "10.0.0.10")


def test_builder_rejects_inconsistent_specs() -> None:
    a = instance("i-a", 1)
    clash = InstanceSpec("i-b", NicSpec("primary-i-b", "02:00:00:00:00:02", "10.0.0.0/24", ("10.0.0.10",)))
    with pytest.raises(FabricError, match=r"10\.0\.0\.10"):
        build_desired("p", FabricSpec((a, clash)))
    same_mac = InstanceSpec("i-b", NicSpec("primary-i-b", "02:00:00:00:00:01", "10.0.0.0/24", ("10.0.0.11",)))
    with pytest.raises(FabricError, match="MAC"):
        build_desired("p", FabricSpec((a, same_mac)))
    with pytest.raises(FabricError, match="namespace"):
        build_desired("p", FabricSpec((instance("vpc", 1),)))
    no_ip = InstanceSpec("i-c", NicSpec("primary-i-c", "02:00:00:00:00:03", "10.0.0.0/24", ()))
    with pytest.raises(FabricError, match="no private IP"):
        build_desired("p", FabricSpec((no_ip,)))
    # a rule to an instance that is not simulated has nowhere to go: skipped
    assert "9.9.9.0/24" not in build_desired("p", two((RouteRuleSpec("9.9.9.0/24", "i-zz"),))).routes


def test_route_plan_replaces_wrong_and_deletes_unwanted() -> None:
    from services.vpc_sim.fabric import DesiredRoute, RouteState

    desired = {
        "10.0.0.10/32": DesiredRoute("10.0.0.10/32", "ra"),
        "172.16.5.0/24": DesiredRoute("172.16.5.0/24", "ra", "10.0.0.10"),
    }
    observed = [
        RouteState("10.0.0.10/32", 7, None, False, None, 4),  # right
        RouteState("172.16.5.0/24", 8, "10.0.0.11", True, None, 4),  # wrong next hop
        RouteState("10.9.9.9/32", 7, None, False, None, 4),  # no longer wanted
    ]
    replace, delete = plan_routes(desired, {"ra": 7}, observed)
    assert [(r.dst, oif) for r, oif in replace] == [("172.16.5.0/24", 7)]
    assert {r.dst for r in delete} == {"172.16.5.0/24", "10.9.9.9/32"}


def test_available() -> None:
    assert Fabric.available() == (True, "")


# ------------------------------------------------------------------------------------------------- the fabric


async def test_layout_after_apply(fabric: Fabric) -> None:
    await fabric.apply(two())
    router, ns_a = fabric.router_ns(), fabric.instance_ns("i-a")
    assert await namespaces(fabric.prefix) == sorted([router, ns_a, fabric.instance_ns("i-b")])

    eth0 = await link_by_mac(ns_a, "02:00:00:00:00:01")
    assert eth0 is not None and eth0["ifname"] == "eth0" and "UP" in eth0["flags"]
    assert await ipv4(ns_a, "eth0") == {"10.0.0.10/24"}
    default = (await routes(ns_a))["default"]
    assert (default["gateway"], default["dev"]) == ("10.0.0.1", "eth0")

    eni = await link_by_mac(ns_a, A_ENI_MAC)
    assert eni is not None and "UP" not in eni["flags"]
    assert await ipv4(ns_a, eni["ifname"]) == set()

    for nic, gateway in (("primary-i-a", "10.0.0.1/32"), ("eni-i-a", "10.0.1.1/32")):
        name = router_link_name(nic)
        link = (await ip_json(router, "link", "show", "dev", name))[0]
        assert "UP" in link["flags"]
        assert await ipv4(router, name) == {gateway}
        assert await sysctl(router, f"net/ipv4/conf/{name}/proxy_arp") == "1"
    assert await sysctl(router, "net/ipv4/ip_forward") == "1"

    table = await routes(router)
    for ip, nic in (
        ("10.0.0.10", "primary-i-a"),
        ("10.0.1.5", "eni-i-a"),
        ("10.0.1.20", "eni-i-a"),
        ("10.0.0.11", "primary-i-b"),
        ("10.0.1.21", "eni-i-b"),
    ):
        assert table[ip]["dev"] == router_link_name(nic)
        assert table[ip]["scope"] == "link"


async def test_instances_ping_each_other_through_the_router(fabric: Fabric) -> None:
    await fabric.apply(two())
    ns_a, ns_b = fabric.instance_ns("i-a"), fabric.instance_ns("i-b")
    await configure_eni_by_hand(ns_a, A_ENI_MAC, "10.0.1.20", "10.0.1.21")
    await configure_eni_by_hand(ns_b, B_ENI_MAC, "10.0.1.21", "10.0.1.20")
    assert await ping(ns_a, "10.0.1.20", "10.0.1.21")
    assert await ping(ns_b, "10.0.1.21", "10.0.1.20")
    assert await ping(ns_a, "10.0.0.10", "10.0.0.11")
    assert await ping(ns_b, "10.0.0.11", "10.0.0.10")
    # the hand configuration is the datapath's business: a re-apply leaves it alone
    await fabric.apply(two())
    assert fabric.last_changes == ()
    assert await ping(ns_a, "10.0.1.20", "10.0.1.21")


async def test_apply_is_idempotent(fabric: Fabric) -> None:
    await fabric.apply(two((RouteRuleSpec("172.16.5.0/24", "i-a"),)))
    assert fabric.last_changes
    before = {ns: await ip_json(ns, "link", "show") for ns in await namespaces(fabric.prefix)}
    router_routes = await routes(fabric.router_ns())
    await fabric.apply(two((RouteRuleSpec("172.16.5.0/24", "i-a"),)))
    assert fabric.last_changes == ()
    after = {ns: await ip_json(ns, "link", "show") for ns in await namespaces(fabric.prefix)}
    assert {ns: [(x["ifindex"], x["ifname"]) for x in links] for ns, links in after.items()} == {
        ns: [(x["ifindex"], x["ifname"]) for x in links] for ns, links in before.items()
    }
    assert await routes(fabric.router_ns()) == router_routes


async def test_removing_an_eni_removes_its_link_and_routes(fabric: Fabric) -> None:
    await fabric.apply(two())
    ns_b = fabric.instance_ns("i-b")
    assert await link_by_mac(ns_b, B_ENI_MAC) is not None
    await fabric.apply(two(b_eni=False))
    assert await link_by_mac(ns_b, B_ENI_MAC) is None
    table = await routes(fabric.router_ns())
    assert "10.0.1.21" not in table and "10.0.1.6" not in table
    assert table["10.0.1.20"]["dev"] == router_link_name("eni-i-a")  # the other ENI is untouched
    names = {x["ifname"] for x in await ip_json(fabric.router_ns(), "link", "show")}
    assert router_link_name("eni-i-b") not in names and router_link_name("eni-i-a") in names


async def test_a_link_gone_while_converging_is_built_again(fabric: Fabric,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A removed pod namespace takes its ENI end with it, and the kernel drops the router's peer a moment later (in
    the background): apply saw the peer, then found it gone when it wrote its sysctls. It converges again."""
    import services.vpc_sim.fabric as fabric_module

    await fabric.apply(two())
    peer = router_link_name("eni-i-b")
    await run("ip", "-n", fabric.router_ns(), "link", "del", peer)  # the instance end goes too (a veth pair)
    write = fabric_module._write_sysctls
    pulled: list[str] = []

    def link_goes_first(ns: str, values: Any) -> list[str]:
        if not pulled:  # the first convergence has just made the pair again: it vanishes under the sysctls
            pulled.append(peer)
            subprocess.run(["ip", "-n", ns, "link", "del", peer], check=True)
        return write(ns, values)

    monkeypatch.setattr(fabric_module, "_write_sysctls", link_goes_first)
    await fabric.apply(two())
    assert pulled == [peer]
    assert await link_by_mac(fabric.instance_ns("i-b"), B_ENI_MAC) is not None
    assert await sysctl(fabric.router_ns(), f"net/ipv4/conf/{peer}/proxy_arp") == "1"


async def test_removing_an_instance_removes_its_namespace(fabric: Fabric) -> None:
    await fabric.apply(two())
    await fabric.apply(FabricSpec((instance("i-a", 1),)))
    assert await namespaces(fabric.prefix) == sorted([fabric.router_ns(), fabric.instance_ns("i-a")])
    table = await routes(fabric.router_ns())
    assert "10.0.0.11" not in table and "10.0.1.21" not in table and "10.0.0.10" in table
    names = {x["ifname"] for x in await ip_json(fabric.router_ns(), "link", "show")}
    assert names == {"lo", router_link_name("primary-i-a"), router_link_name("eni-i-a")}


async def test_route_rules_route_via_the_next_hop_primary_ip(fabric: Fabric) -> None:
    await fabric.apply(two((RouteRuleSpec("172.16.5.0/24", "i-a"),)))
    rule = (await routes(fabric.router_ns()))["172.16.5.0/24"]
    assert (rule["gateway"], rule["dev"]) == ("10.0.0.10", router_link_name("primary-i-a"))
    assert "onlink" in rule["flags"]
    await fabric.apply(two((RouteRuleSpec("172.16.5.0/24", "i-b"),)))  # the rule now points at B
    rule = (await routes(fabric.router_ns()))["172.16.5.0/24"]
    assert (rule["gateway"], rule["dev"]) == ("10.0.0.11", router_link_name("primary-i-b"))
    await fabric.apply(two())
    assert "172.16.5.0/24" not in await routes(fabric.router_ns())


async def test_route_rule_carries_pod_traffic_to_the_next_hop(fabric: Fabric) -> None:
    """vpc-route mode in miniature: a pod CIDR routed to instance B; an address of it on B's lo answers A."""
    await fabric.apply(two((RouteRuleSpec("172.16.5.0/24", "i-b"),), a_eni=False, b_eni=False))
    ns_a, ns_b = fabric.instance_ns("i-a"), fabric.instance_ns("i-b")
    await run("ip", "-n", ns_b, "addr", "add", "172.16.5.9/32", "dev", "lo")
    assert await ping(ns_a, "10.0.0.10", "172.16.5.9")


async def test_eni_renamed_or_moved_by_the_datapath_is_not_recreated(fabric: Fabric) -> None:
    await fabric.apply(two())
    ns_a, ns_b = fabric.instance_ns("i-a"), fabric.instance_ns("i-b")
    eni_a = await link_by_mac(ns_a, A_ENI_MAC)
    eni_b = await link_by_mac(ns_b, B_ENI_MAC)
    assert eni_a is not None and eni_b is not None
    await run("ip", "-n", ns_a, "link", "set", eni_a["ifname"], "name", "cce-eni-0")
    pod_ns = f"{fabric.prefix}pod"  # not named with the fabric prefix: the fabric would remove it
    await run("ip", "netns", "add", pod_ns)
    try:
        await run("ip", "-n", ns_b, "link", "set", eni_b["ifname"], "netns", pod_ns)
        await fabric.apply(two())
        assert fabric.last_changes == ()
        assert await link_by_mac(ns_b, B_ENI_MAC) is None  # still in the pod namespace, not rebuilt
        assert await link_by_mac(pod_ns, B_ENI_MAC) is not None
        renamed = await link_by_mac(ns_a, A_ENI_MAC)
        assert renamed is not None and renamed["ifname"] == "cce-eni-0"
        await fabric.apply(two(b_eni=False))  # detaching it deletes the pair wherever its end went
        assert await link_by_mac(pod_ns, B_ENI_MAC) is None
    finally:
        await run("ip", "netns", "del", pod_ns, check=False)


async def test_eni_moved_to_another_instance(fabric: Fabric) -> None:
    await fabric.apply(two(b_eni=False))
    moved = InstanceSpec("i-b", instance("i-b", 2, eni=False).primary, (eni_of("i-a", 1),))
    await fabric.apply(FabricSpec((instance("i-a", 1, eni=False), moved)))
    assert await link_by_mac(fabric.instance_ns("i-a"), A_ENI_MAC) is None
    assert await link_by_mac(fabric.instance_ns("i-b"), A_ENI_MAC) is not None
    assert (await routes(fabric.router_ns()))["10.0.1.20"]["dev"] == router_link_name("eni-i-a")


async def test_lost_primary_link_is_rebuilt(fabric: Fabric) -> None:
    await fabric.apply(two())
    ns_a = fabric.instance_ns("i-a")
    await run("ip", "-n", ns_a, "link", "del", "eth0")
    assert "10.0.0.10" not in await routes(fabric.router_ns())  # went with the router side
    await fabric.apply(two())
    assert await ipv4(ns_a, "eth0") == {"10.0.0.10/24"}
    assert await ping(ns_a, "10.0.0.10", "10.0.0.11")


async def test_netlink_errors_say_what_was_being_done(fabric: Fabric) -> None:
    ns_a = fabric.instance_ns("i-a")
    await run("ip", "netns", "add", ns_a)
    await run("ip", "-n", ns_a, "link", "add", "eth0", "type", "veth", "peer", "name", "squat")  # takes the name
    with pytest.raises(FabricError, match=r"create veth .*primary-i-a.*File exists"):
        await fabric.apply(FabricSpec((instance("i-a", 1),)))


async def test_concurrent_applies_are_serialized(fabric: Fabric) -> None:
    await asyncio.gather(fabric.apply(two()), fabric.apply(two(b_eni=False)), fabric.apply(two()))
    assert await link_by_mac(fabric.instance_ns("i-b"), B_ENI_MAC) is not None
    await fabric.apply(two())
    assert fabric.last_changes == ()


async def test_teardown_removes_everything_and_is_idempotent(fabric: Fabric) -> None:
    await fabric.apply(two())
    assert len(await namespaces(fabric.prefix)) == 3
    await fabric.teardown()
    assert await namespaces(fabric.prefix) == []
    from pyroute2 import netns

    assert [n for n in netns.listnetns() if n.startswith(f"{fabric.prefix}-")] == []
    await fabric.teardown()
    await fabric.apply(two())  # and it can be built again
    assert len(await namespaces(fabric.prefix)) == 3

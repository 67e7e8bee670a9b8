"""End-to-end tier (root) for the other network modes: the whole local stack (`cce-net up --mode M --nodes 2`) with
each simulated node running its node_datapath and cni_gateway against its namespace in the simulator's fabric;
pods are created the way a container runtime does (the installed CNI plugin, exec'd with the CNI environment) and
ping each other through the simulated VPC. One stack per mode, shared by that mode's tests (class-scoped, so only
one stack runs at a time)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_stack import Stack, ok, running_stack, until
from tests.privileged import NEEDS_ROOT

pytestmark = [pytest.mark.e2e, NEEDS_ROOT]  # simulated nodes are network namespaces

def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True).stdout
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


def pings(pod: dict[str, Any], ip: str) -> bool:
    return subprocess.run(["nsenter", f"--net={pod['netns']}", "ping", "-c", "1", "-W", "2", ip],
                          capture_output=True, check=False, timeout=30).returncode == 0


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["ips"][0]).split("/")[0]


def all_ping(pods: list[dict[str, Any]]) -> list[str]:
    """Every pod pings every other pod; returns the pairs that failed."""
    return [f"{a['name']} -> {b['name']} ({ip_of(b)})" for a in pods for b in pods
            if a is not b and not pings(a, ip_of(b))]


def leftovers(netns: str, ip: str) -> list[str]:
    """Host veths, routes and neighbours of a pod IP still on its node."""
    found = [f"route {r}" for r in ip_json(netns, "route", "show", "table", "all") if r.get("dst") == ip]
    found += [f"rule {r}" for r in ip_json(netns, "rule", "show") if ip in (r.get("src"), r.get("dst"))]
    found += [f"neigh {n}" for n in ip_json(netns, "neigh", "show") if n.get("dst") == ip]
    return found


# ---------------------------------------------------------------------------------------------------- vpc-route


@pytest.fixture(scope="class")
def route_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory, "vpc-route", "mr") as stack:
        yield stack


class TestVpcRoute:
    def test_pods_on_both_nodes_ping_each_other_through_the_vpc_route_table(self, route_stack: Stack) -> None:
        stack = route_stack
        for ref, node in (("default/r1", "node-1"), ("default/r2", "node-2")):  # the CLI path once per node
            ok(stack.cli("pod", "add", ref, "--node", node))
        stack.add("default/r3", "node-1")
        stack.add("default/r4", "node-2")
        pods = list(stack.pods().values())
        status = stack.status()
        cidrs = {n["name"]: [ipaddress.IPv4Network(c) for c in n["status"]["cidrs"]] for n in status["nodes"]}
        routers = {n["name"]: n["status"]["router_ip"] for n in status["nodes"]}
        for pod in pods:  # each pod's address is in its own node's CIDR, its gateway is the node's router IP
            assert any(ipaddress.IPv4Address(ip_of(pod)) in c for c in cidrs[pod["node"]]), (pod, cidrs)
        router_routes = {r["dst"]: r for r in ip_json(f"{stack.fabric_prefix}-vpc", "route", "show")}
        primary_ips = {n["name"]: n["spec"]["primary_ip"] for n in status["nodes"]}
        for node, node_cidrs in cidrs.items():  # the VPC route table's rules, as the simulated router routes them
            for cidr in node_cidrs:
                assert router_routes[str(cidr)]["gateway"] == primary_ips[node], router_routes
        assert all_ping(pods) == []
        for pod in pods:
            assert pings(pod, routers[pod["node"]])  # the gateway answers: the node carries the router address

    def test_del_leaves_nothing_of_the_pod_on_its_node(self, route_stack: Stack) -> None:
        stack = route_stack
        pod = stack.add("default/gone", "node-2")
        ok(stack.cli("pod", "del", "default/gone"))
        ns = stack.node_ns("node-2")
        assert until(lambda: leftovers(ns, ip_of(pod)) == [], 10, "the pod's routes and neighbours to go")
        rest = [p for p in stack.pods().values()]
        assert all_ping(rest[:2]) == []


# ---------------------------------------------------------------------------------------------- vpc-eni-primary


@pytest.fixture(scope="class")
def primary_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory, "vpc-eni-primary", "mp") as stack:
        yield stack


class TestVpcEniPrimary:
    def test_pods_on_the_primary_nic_ping_across_nodes(self, primary_stack: Stack) -> None:
        stack = primary_stack
        ok(stack.cli("pod", "add", "default/p1", "--node", "node-1"))
        stack.add("default/p2", "node-2")
        stack.add("default/p3", "node-1")
        pods = list(stack.pods().values())
        status = stack.status()
        primary = {e["node"]: e for e in status["enis"] if e["use"] == "primary-nic"}
        for pod in pods:  # pod IPs are secondaries of the node's primary NIC
            nic = primary[pod["node"]]
            assert ip_of(pod) in [p["ip"] for p in nic["private_ips"] if not p["primary"]]
            assert ipaddress.IPv4Address(ip_of(pod)) in ipaddress.IPv4Network(nic["subnet_cidr"])
        assert all_ping(pods) == []
        ns = stack.node_ns("node-1")
        links = [x["ifname"] for x in ip_json(ns, "link", "show")]
        assert "eth0" in links and not [x for x in links if x.startswith("cce-eni")]  # no ENI, no table
        assert not [r for r in ip_json(ns, "rule", "show") if r.get("priority") in (512, 1536)]
        on_node = {r["eni_id"]: r for r in status["eni_on_node"]}
        assert on_node[primary["node-1"]["eni_id"]]["state"] == "ready"
        assert on_node[primary["node-1"]["eni_id"]]["link_name"] == "eth0"

    def test_39_pods_get_ips_on_a_bbc_node_and_the_40th_fails_with_a_coded_reason(self, primary_stack: Stack) -> None:
        from cce_net.pods import PodError

        stack = primary_stack
        on_node = [p for p in stack.pods().values() if p["node"] == "node-1"]
        for i in range(39 - len(on_node)):
            stack.add(f"default/fill-{i}", "node-1")
        ips = [ip_of(p) for p in stack.pods().values() if p["node"] == "node-1"]
        assert len(ips) == 39 == len(set(ips))
        with pytest.raises(PodError) as info:
            stack.add("default/the-40th", "node-1")
        error = info.value.cni_error or {}
        assert "ENICapacityExceed" in str(error.get("msg", "")) + str(error.get("details", "")), error
        assert "default/the-40th" not in stack.pods()
        assert all_ping([p for p in stack.pods().values() if p["name"] in ("fill-0", "p2")]) == []


# -------------------------------------------------------------------------------------------- vpc-eni-exclusive


@pytest.fixture(scope="class")
def exclusive_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # surplus ENIs (free beyond the one spare) go after 3 s instead of 300 s, so the last test sees them go
    with running_stack(tmp_path_factory, "vpc-eni-exclusive", "mx", ["--pool", '{"eni_release_after_s": 3}'],
                       CCE_NET_NODE_MAX_ENIS="3") as stack:
        yield stack


def eni_by_mac(stack: Stack, mac: str) -> dict[str, Any]:
    return next(e for e in stack.status()["enis"] if e["mac"].lower() == mac.lower())


def node_link(stack: Stack, node: str, mac: str) -> dict[str, Any] | None:
    return next((x for x in ip_json(stack.node_ns(node), "addr", "show") if x.get("address") == mac.lower()), None)


class TestVpcEniExclusive:
    def test_the_pod_eth0_is_the_eni_and_pings_across_nodes(self, exclusive_stack: Stack) -> None:
        stack = exclusive_stack
        ok(stack.cli("pod", "add", "default/x1", "--node", "node-1"))
        stack.add("default/x2", "node-2")
        pods = stack.pods()
        for ref in ("default/x1", "default/x2"):
            pod = pods[ref]
            eth0 = ip_json(Path(pod["netns"]).name, "addr", "show", "dev", "eth0")[0]
            eni = eni_by_mac(stack, eth0["address"])
            primary = next(p["ip"] for p in eni["private_ips"] if p["primary"])
            assert (eni["node"], eni["use"]) == (pod["node"], "exclusive")
            addrs = [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"]
            assert addrs == [(primary, ipaddress.IPv4Network(eni["subnet_cidr"]).prefixlen)]
            assert str(pod["ips"][0]) == f"{primary}/{ipaddress.IPv4Network(eni['subnet_cidr']).prefixlen}"
            assert node_link(stack, pod["node"], eth0["address"]) is None  # it left the node
        assert all_ping(list(pods.values())) == []
        ok(stack.cli("pod", "check", "default/x1"))

    def test_three_enis_per_node_the_fourth_add_fails_then_gets_the_freed_eni(self, exclusive_stack: Stack) -> None:
        from cce_net.pods import PodError

        stack = exclusive_stack
        have = [p for p in stack.pods().values() if p["node"] == "node-1"]
        for i in range(3 - len(have)):
            stack.add(f"default/cap-{i}", "node-1")
        on_node = {ref: p for ref, p in stack.pods().items() if p["node"] == "node-1"}
        assert len(on_node) == 3
        started = time.monotonic()
        with pytest.raises(PodError) as info:
            stack.add("default/fourth", "node-1")
        error = info.value.cni_error or {}
        assert "ENICapacityExceed" in str(error.get("msg", "")) + str(error.get("details", "")), error
        assert time.monotonic() - started < 8  # refused, not a wait for an ENI that cannot come

        ref, victim = sorted(on_node.items())[0]
        mac = ip_json(Path(victim["netns"]).name, "link", "show", "dev", "eth0")[0]["address"]
        eni = eni_by_mac(stack, mac)
        ok(stack.cli("pod", "del", ref))
        link = node_link(stack, "node-1", mac)  # back on the node under its original name, down, no address
        assert link is not None
        record = next(r for r in stack.status()["eni_on_node"] if r["eni_id"] == eni["eni_id"])
        assert link["ifname"] == record["original_name"] and record["state"] == "ready"
        assert "UP" not in link["flags"] and not [a for a in link["addr_info"] if a["family"] == "inet"]

        fourth = stack.add("default/fourth", "node-1")  # waits out the ENI cooldown, then gets the freed ENI
        eth0 = ip_json(Path(fourth["netns"]).name, "link", "show", "dev", "eth0")[0]
        assert eth0["address"] == mac
        others = [p for r, p in stack.pods().items() if p["node"] == "node-2"]
        assert all_ping([fourth, *others]) == []

    def test_freed_enis_beyond_the_spare_leave_the_node_and_the_cloud(self, exclusive_stack: Stack) -> None:
        stack = exclusive_stack

        def exclusive_enis(node: str) -> list[dict[str, Any]]:
            return [e for e in stack.status()["enis"] if e["node"] == node and e["use"] == "exclusive"]

        have = [p for p in stack.pods().values() if p["node"] == "node-2"]
        for i in range(2 - len(have)):  # two pods and their spare fill node-2's quota of 3
            stack.add(f"default/surplus-{i}", "node-2")
        on_node = [ref for ref, p in stack.pods().items() if p["node"] == "node-2"]
        before = until(lambda: (lambda e: e if len(e) == len(on_node) + 1 else None)(exclusive_enis("node-2")), 30,
                       "the pods' ENIs and one spare")
        for ref in on_node:
            ok(stack.cli("pod", "del", ref))
        # every freed ENI cools down (5 s), then the surplus lasts 3 s, then eni_manager detaches and deletes it
        left = until(lambda: (lambda e: e if len(e) == 1 else None)(exclusive_enis("node-2")), 60, "one spare left")
        gone = [e for e in before if e["eni_id"] != left[0]["eni_id"]]
        assert all(node_link(stack, "node-2", e["mac"]) is None for e in gone)  # hot-unplugged from the node
        assert until(lambda: not {r["eni_id"] for r in stack.status()["eni_on_node"]} & {e["eni_id"] for e in gone},
                     30, "the node's records of the deleted ENIs to go")
        pod = stack.add("default/after-surplus", "node-2")  # the spare is handed out and works
        eth0 = ip_json(Path(pod["netns"]).name, "link", "show", "dev", "eth0")[0]
        assert eth0["address"].lower() == left[0]["mac"].lower()
        assert all_ping([pod, *[p for p in stack.pods().values() if p["node"] == "node-1"][:1]]) == []

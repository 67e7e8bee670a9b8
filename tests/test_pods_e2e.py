"""End-to-end tier (root): the whole local stack with two simulated nodes, each running its node_datapath and
cni_gateway against its namespace in the simulator's fabric; pods are created with `cce-net pod`, which runs the
installed CNI plugin exactly as a container runtime does, and ping each other through the simulated VPC."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cce_net.stack import read_state
from schemas.records import NodePool
from tests.e2e_stack import Stack, in_ns, ok, running_stack, stack_env, until
from tests.privileged import NEEDS_CHAIN_PLUGINS, NEEDS_ROOT

pytestmark = [pytest.mark.e2e, NEEDS_ROOT]  # simulated nodes are network namespaces

COOLDOWN_S = 4.0
STACK_TAG = "p"


def cce_net(*args: str, state_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return Stack(state_dir, stack_env(STACK_TAG)).cli(*args, timeout=timeout)


@pytest.fixture(scope="module", params=[1, 3], ids=["one-nats-server", "nats-cluster-3"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs on a stack whose bus is one nats-server, and again on a 3-member cluster (every stream and
    bucket on 3 replicas)."""
    members = int(request.param)
    with running_stack(tmp_path_factory, "vpc-eni", f"{STACK_TAG}{members}",
                       up_args=("--pool", json.dumps({"cooldown_s": COOLDOWN_S}), "--nats-cluster", str(members))
                       ) as running:
        if members > 1:
            state = read_state(running.state_dir) or {}
            assert len([p for p in state["nats_pids"] if p]) == members and state["bus"]["replicas"] == 3
        yield running.state_dir


def pods(state_dir: Path) -> dict[str, dict[str, Any]]:
    listed = json.loads(ok(cce_net("pod", "ls", "--json", state_dir=state_dir)))
    return {f"{p['namespace']}/{p['name']}": p for p in listed}


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["ips"][0]).split("/")[0]


def node_netns(state_dir: Path, node: str) -> str:
    state = read_state(state_dir) or {}
    return str(state["node_info"][node]["netns"])


def ping(state_dir: Path, ref: str, ip: str) -> subprocess.CompletedProcess[str]:
    """`ping` inside the pod's namespace (what `cce-net pod exec REF -- ping` runs, without a CLI start each)."""
    netns = pods(state_dir)[ref]["netns"]
    return subprocess.run(["nsenter", f"--net={netns}", "ping", "-c", "1", "-W", "2", ip], capture_output=True,
                          text=True, check=False, timeout=30)


def pool_record(state_dir: Path, node: str) -> NodePool:
    """The node's NodePool, read from the bus as the stack's admin."""
    from cce_net.stack import client_settings
    from chassis.bus import Bus
    from chassis.kv import Store
    from schemas.subjects import POOLS

    async def read() -> NodePool:
        bus = await Bus.connect(client_settings(None, state_dir), name="test")
        try:
            item = await Store(await bus.bucket(POOLS), NodePool, POOLS.name).get(node)
        finally:
            await bus.close()
        assert item is not None, f"{node} has no pool"
        return item.value

    return asyncio.run(read())


def leftovers(state_dir: Path, node: str, ip: str, veth: str) -> list[str]:
    """Everything of a pod that is still on its node: its veth, routes, rules and neighbour entries."""
    ns = node_netns(state_dir, node)
    found = []
    links = in_ns(ns, "ip", "-o", "link", "show").stdout
    if veth and (f" {veth}@" in links or f" {veth}:" in links):
        found.append(f"link {veth}")
    for table in ("main", "all"):
        found += [f"route {line}" for line in in_ns(ns, "ip", "route", "show", "table", table).stdout.splitlines()
                  if line.split()[0] == ip or line.startswith(f"{ip} ")]
    found += [f"rule {line}" for line in in_ns(ns, "ip", "rule", "show").stdout.splitlines()
              if f" {ip} " in f" {line} "]
    found += [f"neigh {line}" for line in in_ns(ns, "ip", "neigh", "show").stdout.splitlines()
              if line.split()[0] == ip]
    return found


SIX = [("team-a/web-1", "node-1"), ("team-a/web-2", "node-1"), ("team-b/db-1", "node-1"),
       ("team-a/web-3", "node-2"), ("team-b/db-2", "node-2"), ("default/tools", "node-2")]


@pytest.fixture(scope="module")
def six_pods(stack: Path) -> dict[str, dict[str, Any]]:
    # pools fill right after registration; ADD waits for a refill anyway
    for ref, node in SIX:
        ok(cce_net("pod", "add", ref, "--node", node, state_dir=stack))
    listed = pods(stack)
    assert set(listed) >= {ref for ref, _ in SIX}
    return {ref: listed[ref] for ref, _ in SIX}


def test_six_pods_over_two_nodes_get_distinct_vpc_addresses(stack: Path, six_pods: dict[str, Any]) -> None:
    ips = [ip_of(p) for p in six_pods.values()]
    assert len(set(ips)) == 6
    assert {p["node"] for p in six_pods.values()} == {"node-1", "node-2"}
    data = json.loads(ok(cce_net("status", "--json", state_dir=stack)))
    eni_ips = {str(ip) for p in data["pools"] for eni in p["enis"] for ip in eni["ips"]}
    assert set(ips) <= eni_ips, "every pod IP is a secondary IP of one of its node's ENIs"


def test_every_pod_pings_every_other_pod_across_nodes(stack: Path, six_pods: dict[str, Any]) -> None:
    pairs = [(a, ip_of(six_pods[b])) for a, b in itertools.permutations(six_pods, 2)]
    with ThreadPoolExecutor(6) as pool_:
        results = list(pool_.map(lambda pair: (pair, ping(stack, *pair)), pairs))
    via_cli = cce_net("pod", "exec", "team-a/web-1", "--", "ping", "-c", "1", "-W", "2",
                      ip_of(six_pods["team-b/db-2"]), state_dir=stack)
    assert via_cli.returncode == 0, via_cli.stdout + via_cli.stderr
    failed = [f"{src} -> {dst}: {r.stdout[-200:]} {r.stderr[-200:]}" for (src, dst), r in results if r.returncode]
    assert not failed, "\n".join(failed)


def test_add_twice_returns_the_same_result(stack: Path, six_pods: dict[str, Any]) -> None:
    from cce_net.pods import Pods

    record = Pods(stack).store.get("team-a", "web-1")
    assert record is not None and record.result is not None
    network = Pods(stack)._network((read_state(stack) or {})["node_info"]["node-1"])
    again = network.add(record.container_id, record.netns_path, record.ifname, record.cni_args)
    assert again == record.result


def test_check_passes_then_fails_after_a_pod_route_is_deleted_by_hand(stack: Path, six_pods: dict[str, Any]) -> None:
    from cce_net.cni_runtime import CniError
    from cce_net.pods import Pods

    ok(cce_net("pod", "check", "team-b/db-2", state_dir=stack))
    record = Pods(stack).store.get("team-b", "db-2")
    assert record is not None
    network = Pods(stack)._network((read_state(stack) or {})["node_info"]["node-2"])
    ip, ns = ip_of(six_pods["team-b/db-2"]), node_netns(stack, "node-2")

    def host_route() -> bool:
        return bool(in_ns(ns, "ip", "route", "show", f"{ip}/32").stdout.strip())

    failure: CniError | None = None
    for _ in range(5):  # resync repairs the route within a period; retry if it won the race with our CHECK
        removed = in_ns(ns, "ip", "route", "del", f"{ip}/32")
        assert removed.returncode == 0, removed.stderr
        try:
            network.check(record.container_id, record.netns_path, record.ifname, record.cni_args, record.result)
        except CniError as err:
            failure = err
            break
        assert host_route(), "CHECK passed while the pod's host route was missing"
    assert failure is not None, "resync repaired the route before every CHECK"
    assert failure.plugin == "cce" and ip in failure.error["msg"], failure.error
    # resync repairs what a live pod is missing
    until(lambda: cce_net("pod", "check", "team-b/db-2", state_dir=stack).returncode == 0, 20,
          "resync to restore the pod's host route")


def test_del_leaves_nothing_behind_and_the_ip_returns_after_cooldown(stack: Path, six_pods: dict[str, Any]) -> None:
    from cce_net.pods import Pods

    ref = "default/tools"
    record = Pods(stack).store.get("default", "tools")
    assert record is not None
    ip = ip_of(six_pods[ref])
    veth = host_veth(record.result or {})
    ok(cce_net("pod", "del", ref, state_dir=stack))
    assert ref not in pods(stack)
    assert gone_at_once(leftovers(stack, "node-2", ip, veth))
    until(lambda: leftovers(stack, "node-2", ip, veth) == [], 10, "the pod's veth to be deleted")
    # the pool record itself (read in-process: a CLI start per look could miss a 4 s window on a loaded machine)
    until(lambda: ip in pool_record(stack, "node-2").cooldown, 10, "the released IP to cool down", 0.1)
    until(lambda: ip not in pool_record(stack, "node-2").cooldown, COOLDOWN_S + 15, "the cooldown to end", 0.1)
    assert ip not in pool_record(stack, "node-2").allocated

    # a second DEL, as CRI sends it: no netns, no prevResult
    network = Pods(stack)._network((read_state(stack) or {})["node_info"]["node-2"])
    network.delete(record.container_id, "", record.ifname, record.cni_args, None)


def gone_at_once(left: list[str]) -> bool:
    """At a DEL's reply its IP's routes, rules and neighbours are gone; its veth (down) is deleted right after."""
    return [x for x in left if not x.startswith("link ")] == []


def host_veth(result: dict[str, Any]) -> str:
    return next((i["name"] for i in result.get("interfaces", []) if not i.get("sandbox")), "")


def _node_pids(stack: Path, node: str) -> dict[str, int]:
    state = read_state(stack) or {}
    return {s["service"]: s["pid"] for s in state["services"] if s.get("node") == node}


def test_pods_keep_working_across_node_service_restarts(stack: Path, six_pods: dict[str, Any]) -> None:
    before = _node_pids(stack, "node-1")
    assert set(before) == {"node_datapath", "cni_gateway"}
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    until(lambda: all(p != before[s] for s, p in _node_pids(stack, "node-1").items()), 30,
          "the supervisor to restart node-1's services")
    r = ping(stack, "team-a/web-1", ip_of(six_pods["team-a/web-3"]))
    assert r.returncode == 0, r.stdout + r.stderr
    # and the restarted gateway serves new pods
    ok(cce_net("pod", "add", "team-c/after-restart", "--node", "node-1", state_dir=stack))
    new = pods(stack)["team-c/after-restart"]
    until(lambda: ping(stack, "team-c/after-restart", ip_of(six_pods["team-b/db-2"])).returncode == 0, 15,
          "the new pod to reach node-2")
    ok(cce_net("pod", "del", "team-c/after-restart", state_dir=stack))
    assert new["node"] == "node-1"


def test_a_pod_whose_record_is_gone_is_cleaned_from_the_node_by_resync(stack: Path,
                                                                     six_pods: dict[str, Any]) -> None:
    from cce_net.pods import Pods
    from cce_net.stack import client_settings
    from chassis.bus import Bus
    from schemas.subjects import ENDPOINTS, endpoint_key

    record = Pods(stack).store.get("team-b", "db-1")
    assert record is not None
    ip = ip_of(six_pods["team-b/db-1"])
    veth = host_veth(record.result or {})
    assert leftovers(stack, "node-1", ip, veth)

    async def drop_endpoint() -> None:
        bus = await Bus.connect(client_settings(None, stack), name="test")  # as the stack's admin
        try:
            kv = await bus.bucket(ENDPOINTS)
            await kv.delete(endpoint_key("node-1", record.container_id, record.ifname))
        finally:
            await bus.close()

    asyncio.run(drop_endpoint())
    until(lambda: not leftovers(stack, "node-1", ip, veth), 30, "resync to remove the orphaned pod")


@NEEDS_CHAIN_PLUGINS
def test_chained_with_the_reference_portmap_and_bandwidth_on_a_real_node(stack: Path,
                                                                          six_pods: dict[str, Any]) -> None:
    from cce_net.cni_runtime import CniError, CniNetwork, CniRuntime, conflist_from
    from cce_net.pods import create_netns, remove_netns

    info = (read_state(stack) or {})["node_info"]["node-1"]
    raw = {"cniVersion": "1.0.0", "name": "cce-chained", "plugins": [
        {"type": "cce", "socket": info["socket"], "node": "node-1"},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
    node_ns = f"/run/netns/{info['netns']}"
    network = CniNetwork(conflist_from(raw), CniRuntime([info["bin_dir"], "/usr/lib/cni"], exec_netns=node_ns))
    caps = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000_000,
                          "egressRate": 8_000_000, "egressBurst": 80_000_000}}
    netns = f"cce-pod-chain{os.getpid() % 10**6}"
    create_netns(netns)
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-d;K8S_POD_NAME=chained"
    try:
        result = network.add("chained-1", f"/run/netns/{netns}", "eth0", args, caps)
        veth = host_veth(result)
        assert "18080" in in_ns(info["netns"], "iptables-save", "-t", "nat").stdout
        assert "tbf" in in_ns(info["netns"], "tc", "qdisc", "show", "dev", veth).stdout
        r = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "ping", "-c", "1", "-W", "2",
                            ip_of(six_pods["team-a/web-3"])], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        failure: CniError | None = None
        try:
            network.check("chained-1", f"/run/netns/{netns}", "eth0", args, result, caps)
        except CniError as err:
            failure = err
        if failure is not None:
            # Debian's portmap 1.1.1 fails CHECK on IPv4-only pods, looking for ip6tables rules it never made
            # (containernetworking/plugins#819); the rest of the chain must pass CHECK.
            assert failure.plugin == "portmap" and "ipv6" in failure.error["msg"], failure
            without = CniNetwork(conflist_from({**raw, "plugins": [raw["plugins"][0], raw["plugins"][2]]}),
                                 network.runtime)
            without.check("chained-1", f"/run/netns/{netns}", "eth0", args, result, caps)
        network.delete("chained-1", f"/run/netns/{netns}", "eth0", args, result, caps)
        assert "18080" not in in_ns(info["netns"], "iptables-save", "-t", "nat").stdout
        gone_ip = ip_of({"ips": [result["ips"][0]["address"]]})
        assert gone_at_once(leftovers(stack, "node-1", gone_ip, veth))
        until(lambda: leftovers(stack, "node-1", gone_ip, veth) == [], 10, "the pod's veth to be deleted")
        network.delete("chained-1", "", "eth0", args, None, caps)  # and once more, as CRI does
    finally:
        remove_netns(netns)

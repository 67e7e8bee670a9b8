"""End-to-end tier: the README's commands against the whole local stack, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cce_net.stack import pid_alive, read_state

pytestmark = pytest.mark.e2e


def cce_net(*args: str, state_dir: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["COLUMNS"] = "200"
    # one fabric prefix per stack, so stacks of parallel tests never touch each other's namespaces
    env["CCE_SIM_FABRIC_PREFIX"] = f"t{abs(hash(str(state_dir))) % 10**6}"
    return subprocess.run([sys.executable, "-m", "cce_net", *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("stack")
    result = cce_net("up", "--detach", "--nodes", "2", state_dir=state_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    yield state_dir
    cce_net("down", state_dir=state_dir)


def _netns() -> list[str]:
    run = Path("/run/netns")
    return sorted(p.name for p in run.iterdir()) if run.exists() else []


def _all_pids(state: dict[str, Any]) -> list[int]:
    return [state["supervisor_pid"], state["nats_pid"], *(s["pid"] for s in state["services"])]


def test_svc_ls_lists_every_running_service(stack: Path) -> None:
    result = cce_net("svc", "ls", "--json", "--timeout", "2", state_dir=stack)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)
    expected = {"ipam": 2, "eni_manager": 2, "route_manager": 2}
    if not (read_state(stack) or {}).get("node_services_off"):
        expected |= {"node_datapath": 2, "cni_gateway": 2}  # one each per simulated node (root)
    assert Counter(s["name"] for s in services) == expected
    table = cce_net("svc", "ls", state_dir=stack).stdout
    assert "eni_manager" in table


def test_status_shows_both_nodes_with_their_pools_filled(stack: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        result = cce_net("status", "--json", state_dir=stack)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        pools = {p["node"]: p for p in data["pools"]}
        if set(pools) == {"node-1", "node-2"} and all(p["free"] >= 10 for p in pools.values()):
            break
        assert time.monotonic() < deadline, f"pools did not fill: {pools}"
        time.sleep(0.5)
    for pool in pools.values():
        assert pool["mode"] == "vpc-eni"
        assert pool["used"] == 0
        assert pool["enis"][0]["state"] == "inuse"
        assert len(pool["enis"][0]["ips"]) >= 10
    assert {item["service"] for item in data["leaders"]} >= {"eni_manager", "route_manager"}
    table = cce_net("status", state_dir=stack).stdout
    assert "Pools" in table
    assert "node-2" in table


def test_events_prints_what_the_services_published(stack: Path) -> None:
    result = cce_net("events", "--json", "--filter", "cce.events.service.>", state_dir=stack)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {e["object"] for e in events if e["what"] == "elected"} >= {"eni_manager", "route_manager"}


def test_every_service_reports_health_and_metrics(stack: Path) -> None:
    state = read_state(stack)
    assert state is not None
    roles: Counter[tuple[str, str]] = Counter()
    for svc in state["services"]:
        with urllib.request.urlopen(svc["http"] + "/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "ok"
        with urllib.request.urlopen(svc["http"] + "/metrics", timeout=2) as resp:
            metrics = resp.read()
        if svc["service"] == "vpc_sim":
            assert b"cce_sim_" in metrics
            continue
        assert body["checks"]["ready"]["ok"]
        assert b"cce_bus_requests_in_flight" in metrics
        if "leader" in body["checks"]:
            roles[(svc["service"], body["checks"]["leader"]["detail"])] += 1
    for manager in ("eni_manager", "route_manager"):
        assert roles[(manager, "leader")] == 1
        assert roles[(manager, "standby")] == 1


def test_a_crashed_service_is_restarted(stack: Path) -> None:
    state = read_state(stack)
    assert state is not None
    victim = next(s for s in state["services"] if s["id"] == "ipam-2")
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = read_state(stack)
        assert now is not None
        entry = next(s for s in now["services"] if s["id"] == "ipam-2")
        if entry["restarts"] >= 1 and pid_alive(entry["pid"]):
            break
        assert time.monotonic() < deadline, "ipam-2 was not restarted"
        time.sleep(0.2)
    assert entry["pid"] != victim["pid"]


def test_up_refuses_a_second_stack_in_the_same_state_dir(stack: Path) -> None:
    result = cce_net("up", "--detach", state_dir=stack)
    assert result.returncode == 1
    assert "already running" in result.stderr


def test_up_creates_the_simulated_nodes_and_sim_info_describes_the_cloud(stack: Path) -> None:
    result = cce_net("sim", "info", "--json", state_dir=stack)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {i["name"] for i in info["instances"]} == {"node-1", "node-2"}
    assert info["endpoint"].startswith("http://127.0.0.1:")
    assert info["accessKey"] and info["secretKey"] and info["vpcId"] and info["routeTableId"]
    assert info["subnets"]


def test_the_official_sdk_can_be_pointed_at_the_simulator_from_sim_info(stack: Path) -> None:
    from baidubce.auth.bce_credentials import BceCredentials
    from baidubce.bce_client_configuration import BceClientConfiguration
    from baidubce.retry.retry_policy import NoRetryPolicy
    from baidubce.services.subnet.subnet_client import SubnetClient

    info = json.loads(cce_net("sim", "info", "--json", state_dir=stack).stdout)
    client = SubnetClient(BceClientConfiguration(credentials=BceCredentials(info["accessKey"], info["secretKey"]),
                                                 endpoint=info["endpoint"], retry_policy=NoRetryPolicy()))
    subnets = client.list_subnets(vpc_id=info["vpcId"]).subnets
    assert [s.subnet_id for s in subnets] == [s["subnetId"] for s in info["subnets"]]


def test_sim_commands_add_nodes_and_subnets_and_inject_faults(stack: Path) -> None:
    assert cce_net("sim", "add-subnet", "10.0.32.0/24", state_dir=stack).returncode == 0
    added = cce_net("sim", "add-node", "node-7", "--type", "BBC", "--cpus", "16", state_dir=stack)
    assert added.returncode == 0, added.stderr
    info = json.loads(cce_net("sim", "info", "--json", state_dir=stack).stdout)
    assert "10.0.32.0/24" in {s["cidr"] for s in info["subnets"]}
    assert any(i["name"] == "node-7" and i["instanceType"] == "BBC" for i in info["instances"])
    injected = cce_net("sim", "fault", "fail-next", "get_subnet", "--count", "1", "--code", "RateLimit",
                       "--status", "429", state_dir=stack)
    assert injected.returncode == 0, injected.stderr
    faults = json.loads(cce_net("sim", "fault", "show", state_dir=stack).stdout)
    assert faults["fail_next"] == [{"api": "get_subnet", "count": 1, "code": "RateLimit", "status": 429, "body": None}]
    assert cce_net("sim", "fault", "clear", state_dir=stack).returncode == 0
    assert json.loads(cce_net("sim", "fault", "show", state_dir=stack).stdout)["fail_next"] == []
    bad = cce_net("sim", "fault", "fail-next", "no_such_api", state_dir=stack)
    assert bad.returncode == 2
    assert "unknown api" in bad.stderr


def test_down_leaves_no_process_or_namespace_behind(tmp_path: Path) -> None:
    assert cce_net("up", "--detach", "--nodes", "1", state_dir=tmp_path).returncode == 0
    state = read_state(tmp_path)
    assert state is not None
    pids = _all_pids(state)
    assert all(pid_alive(p) for p in pids)
    prefix = state["fabric_prefix"]
    if os.geteuid() == 0:
        assert f"{prefix}-vpc" in _netns()
    result = cce_net("down", state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p for p in pids if pid_alive(p)] == []
    assert read_state(tmp_path) is None
    assert [n for n in _netns() if n.startswith(prefix + "-")] == []


def test_a_nats_server_of_ones_own_set_up_as_the_readme_says(tmp_path: Path) -> None:
    """`cce-net bus setup` for a server the user runs, that server, then `cce-net up` against it with the
    identities: the stack runs with each process's own credentials and TLS, and the tools work as the admin."""
    from chassis.embedded_nats import find_nats_server, free_port

    bus_dir, state_dir, port = tmp_path / "bus", tmp_path / "stack", free_port()
    result = subprocess.run([sys.executable, "-m", "cce_net", "bus", "setup", "--dir", str(bus_dir), "--nodes",
                             "node-1,node-2", "--port", str(port), "--store", str(tmp_path / "js")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    server = subprocess.Popen([find_nats_server(), "-c", str(bus_dir / "nats-server.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"tls://127.0.0.1:{port}"
        up = cce_net("up", "--detach", "--nodes", "2", "--nats-url", url, "--creds-dir", str(bus_dir),
                     "--nats-ca", str(bus_dir / "ca.pem"), state_dir=state_dir, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        try:
            state = read_state(state_dir) or {}
            assert state["bus"] == {"url": url, "creds_dir": str(bus_dir), "ca": str(bus_dir / "ca.pem"),
                                    "replicas": 1}

            def pools_filled() -> bool:
                status = json.loads(cce_net("status", "--json", state_dir=state_dir).stdout or "{}")
                nodes = {n["name"]: n for n in status.get("nodes", [])}
                return set(nodes) == {"node-1", "node-2"} and all(n["status"]["ready"] for n in nodes.values())

            deadline = time.monotonic() + 60
            while not pools_filled():
                assert time.monotonic() < deadline, "the nodes' pools did not fill on the user's server"
                time.sleep(0.5)
            services = json.loads(cce_net("svc", "ls", "--json", "--timeout", "2", state_dir=state_dir).stdout)
            assert {s["name"] for s in services} >= {"ipam", "eni_manager", "route_manager"}
        finally:
            cce_net("down", state_dir=state_dir)
    finally:
        server.terminate()
        server.wait(15)

"""End-to-end tier (root): a real Prometheus (Debian's `prometheus`, started here on a free port) scrapes the local
stack's `/metrics` (the addresses in its state file) while pods come and go, and evaluates the chart's alert rules
against it; `cce-net trace` shows where a pod ADD that waited for a refill spent its time.

The stack's nodes start with empty pools (min-allocate 0, pre-allocate 0: every first ADD waits for eni_manager to
refill the node) and a cap of 3 pod IPs (max-allocate 3), so node-2 is exhausted by three pods and a fourth fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cce_net.pods import PodError
from cce_net.stack import read_state
from tests.e2e_stack import Stack, ok, running_stack, until
from tests.privileged import NEEDS_ROOT

pytestmark = [pytest.mark.e2e, NEEDS_ROOT, pytest.mark.timeout(600)]

RULES = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "cce-network" / "files" / "alerts.rules.yaml"
POOL = {"min_allocate": 0, "pre_allocate": 0, "max_allocate": 3, "cooldown_s": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: {the series' node (or '') : value}."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {r["metric"].get("node", r["metric"].get("reason", "")): float(r["value"][1]) for r in result}

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return alerts


def prometheus_config(state: dict[str, Any], rules: Path) -> dict[str, Any]:
    """Scrape every process of the stack (its /metrics address from the state file) each second."""
    targets = [{"targets": [s["http"].removeprefix("http://")], "labels": {"cce_process": s["id"]}}
               for s in state["services"]]
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "cce-network", "static_configs": targets}]}


def quick_rules(tmp: Path) -> Path:
    """The chart's rules, with `for:` short enough for a test to wait out (the rules themselves unchanged)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is missing (apt-get install prometheus)")
    with running_stack(tmp_path_factory, "vpc-eni", "o", up_args=("--pool", json.dumps(POOL)),
                       CCE_TRACE_FLUSH_S="0.2") as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(read_state(stack.state_dir) or {}, quick_rules(tmp))))
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        until(ready, 30, "Prometheus to be ready")
        until(lambda: all(t["health"] == "up" for t in prom.get("/api/v1/targets")["activeTargets"]), 30,
              "every process of the stack to be scraped")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def pods(stack: Stack) -> dict[str, Any]:
    """node-1: three pods, one deleted again; node-2: three pods (its cap), and a fourth that fails."""
    made = {ref: stack.add(ref, "node-1") for ref in ("obs/web-1", "obs/web-2", "obs/web-3")}
    stack.delete("obs/web-3")
    made |= {ref: stack.add(ref, "node-2") for ref in ("obs/db-1", "obs/db-2", "obs/db-3")}
    with pytest.raises(PodError, match="IPPoolExhausted"):
        stack.add("obs/db-4", "node-2")
    return made


def test_prometheus_reads_each_nodes_pool_from_the_maintenance_leader(prometheus: Prometheus,
                                                                      pods: dict[str, Any]) -> None:
    until(lambda: prometheus.query("cce_ipam_pool_used_ips") == {"node-1": 2.0, "node-2": 3.0}, 30,
          "the pools' used IPs: node-1 2, node-2 3")
    assert prometheus.query("cce_ipam_pool_max_ips") == {"node-1": 3.0, "node-2": 3.0}
    assert prometheus.query('count by (node) (cce_ipam_pool_used_ips{mode="vpc-eni"})') == {"node-1": 1.0,
                                                                                           "node-2": 1.0}, \
        "one ipam replica (the maintenance leader) exports a node's gauges"
    until(lambda: prometheus.query("cce_ipam_pool_free_ips").get("node-2") == 0.0, 30, "node-2 without a free IP")
    assert prometheus.query("cce_ipam_pool_pending_allocations") == {"node-1": 0.0, "node-2": 0.0}
    assert prometheus.query("cce_ipam_pool_enis") == {"node-1": 1.0, "node-2": 1.0}


def test_prometheus_reads_the_add_and_del_histograms_and_the_failure_by_reason(prometheus: Prometheus,
                                                                                pods: dict[str, Any]) -> None:
    adds = 'sum by (node) (label_replace(cce_cni_request_seconds_count{command="ADD", outcome="success"}, ' \
           '"node", "$1", "cce_process", "cni_gateway-(.*)"))'
    dels = 'sum(cce_cni_request_seconds_count{command="DEL", outcome="success"})'
    allocates = 'sum(cce_bus_request_seconds_count{service="ipam", endpoint="allocate"})'
    # each target is scraped on its own schedule: wait for every count this test reads to be in, then read them
    until(lambda: prometheus.query(adds) == {"node-1": 3.0, "node-2": 3.0} and prometheus.query(dels) == {"": 2.0}
          and prometheus.query(allocates).get("", 0) >= 7, 30,
          "3 successful ADDs per node, 2 DELs and ipam's allocates scraped")
    assert prometheus.query('sum(cce_cni_request_seconds_bucket{command="ADD", outcome="success", le="+Inf"})') \
        == {"": 6.0}
    # web-3's DEL, and the DEL a runtime sends after a failed ADD (db-4), as `cce-net pod add` does: 2 DELs above
    assert prometheus.query('sum by (reason) (cce_cni_failures_total{command="ADD"})') == {"IPPoolExhausted": 1.0}
    modes = prometheus.get("/api/v1/query", query='cce_cni_request_seconds_count{command="ADD"}')["result"]
    assert {r["metric"]["mode"] for r in modes} == {"vpc-eni"}
    p99 = prometheus.query('histogram_quantile(0.99, sum by (le) (cce_cni_request_seconds_bucket{command="ADD"}))')
    assert 0 < p99[""] < 60
    # the chassis' own latency histogram is ipam's allocate latency: 7 allocates (6 ok, 1 exhausted) waited for above


def test_the_pool_exhausted_alert_fires_for_the_full_node_only(prometheus: Prometheus, pods: dict[str, Any]) -> None:
    def firing() -> set[str]:
        return {a["labels"]["node"] for a in prometheus.alerts()
                if a["labels"]["alertname"] == "CceNodePoolExhausted" and a["state"] == "firing"}

    until(lambda: firing() == {"node-2"}, 60, "CceNodePoolExhausted firing for node-2")
    rules = prometheus.get("/api/v1/rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"CceNodePoolExhausted", "CceRouteConflict"}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules


def test_trace_shows_the_refill_wait_and_the_cloud_calls_that_ended_it(stack: Stack, pods: dict[str, Any]) -> None:
    """web-1 was node-1's first pod: its pool was empty, so its ADD waited for eni_manager's refill."""

    def traced() -> str | None:
        result = stack.cli("trace", "obs/web-1")
        out = result.stdout
        return out if result.returncode == 0 and "cloud." in out and "node_datapath.setup" in out else None

    out = until(traced, 30, "the trace of obs/web-1's ADD with its refill")
    lines = out.splitlines()
    assert "ADD obs/web-1 on node-1" in lines[0]

    def line(name: str) -> tuple[int, float, float]:
        """(column of its name: the deeper, the further right; start ms; end ms) of the first span `name`."""
        text = next(x for x in lines[2:] if f" {name} [" in x)
        start, took = (float(v.removesuffix("ms")) for v in text.split()[:2])
        return text.index(f" {name} ["), start, start + took

    root = line("cni.ADD")
    wait = line("ipam.wait_for_refill")
    refill = line("eni_manager.refill")
    cloud_name = next(x.split(" [")[0].split()[-1] for x in lines if " cloud." in x)
    cloud = line(cloud_name)
    assert root[1] <= wait[1] and wait[2] <= root[2] + 1
    allocate = line("ipam.allocate")
    # the allocation raises the pool's demand before it starts waiting, so eni_manager may call the cloud a moment
    # before the wait's span begins; the wait ends only after the cloud's work
    assert allocate[1] <= cloud[1] and cloud[2] <= wait[2] + 1, f"the cloud call inside the allocation:\n{out}"
    assert refill[0] < cloud[0], f"the cloud call inside eni_manager's refill:\n{out}"
    for name in ("ipam.allocate", "node_datapath.setup", "ipam.confirm"):
        assert f" {name} [" in out, out
    as_json = json.loads(ok(stack.cli("trace", "obs/web-1", "--json")))
    services = {s["service"] for s in as_json["spans"]}
    assert services == {"cni_gateway", "ipam", "eni_manager", "node_datapath"}
    assert len({s["trace_id"] for s in as_json["spans"]}) == 1


def test_trace_of_an_unknown_pod_says_so(stack: Stack) -> None:
    result = stack.cli("trace", "obs/nobody")
    assert result.returncode == 1 and "no trace" in result.stdout


def test_the_stack_serves_metrics_a_person_can_read(stack: Stack, pods: dict[str, Any]) -> None:
    state = read_state(stack.state_dir) or {}
    gateway = next(s for s in state["services"] if s["id"] == "cni_gateway-node-1")
    with urllib.request.urlopen(gateway["http"] + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "# HELP cce_cni_request_seconds" in text and 'command="ADD"' in text

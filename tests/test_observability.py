"""Metrics, dashboard, alert rules and traces.

Unit: the pool gauges of a node, exported only by the maintenance leader; the dashboard's and the alert rules'
queries name only metrics the services export (names collected from the Prometheus registry the services' modules
fill when imported, not from a list kept here); promtool accepts the rules; the chart ships both; the trace records'
subjects and who may publish them. Integration (a real nats-server): a traced request's context travels in the bus
request's headers, the spans of both sides reach CCE_TRACES and `cce-net trace` reads them back as a timeline.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from cce_net.traces import timeline, trace_data
from chassis import tracing
from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.permissions import node_identity, permissions, service_identity
from schemas.records import Eni, EniState, EniUse, NetResourceSet, NodePool, NodeSpec, PoolSettings, PrivateIp
from schemas.subjects import TRACES, trace_index_subject, trace_span_subject
from services.ipam.domain import NodeFacts
from services.ipam.metrics import GAUGES, POOL_GAUGES, leader_samples, pool_sample
from tests.echo import ECHO, EchoReply, EchoRequest

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "cce-network"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "alerts.rules.yaml"
# every module whose import registers the metrics of a service process (their composition roots import the rest)
SERVICE_MODULES = ("services.ipam.main", "services.eni_manager.main", "services.route_manager.main",
                   "services.node_datapath.main", "services.cni_gateway.main", "services.k8s_bridge.main")


# ---- the metric names the services export -----------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the services' processes can expose: what the default registry holds once their modules are
    imported, histograms and counters with their sample suffixes."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "summary": ("_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    names |= set(GAUGES)  # the pool gauges have families even where no node is known (describe)
    return names


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset", "le", "inf", "nan"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither functions, keywords, label names
    (inside `{}` or the `by`/`on` lists) nor numbers, durations or template variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings out
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers out
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges out
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(), text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(f"panel {p['title']!r}", t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert inner, f"variable {var['name']}: {query}"
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def rule_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(f"rule {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names_in('histogram_quantile(0.99, sum by (le, mode) (rate(a_bucket{command="ADD"}[5m])))') \
        == {"a_bucket"}
    assert metric_names_in("(x == 0) and on (node) ((y > 0) or (z >= w))") == {"x", "y", "z", "w"}
    assert metric_names_in('sum(rate(q_total{a=~"b|c"}[$__rate_interval])) or vector(0)') == {"q_total"}


def test_every_dashboard_and_alert_query_names_an_exported_metric() -> None:
    exported = exported_metric_names()
    assert {"cce_cni_request_seconds_bucket", "cce_ipam_pool_free_ips", "cce_cloud_rate_limit_per_second",
            "cce_kv_cas_conflicts_total", "cce_leader_changes_total"} <= exported
    missing = {(where, name) for where, expr in [*dashboard_queries(), *rule_queries()]
               for name in metric_names_in(expr) if name not in exported}
    assert not missing, sorted(missing)


def test_metric_labels_never_carry_a_pod_or_an_address() -> None:
    exported_metric_names()
    unbounded = {"pod", "namespace", "ip", "container_id", "endpoint_key", "key", "eni_id", "subnet", "cidr"}
    for family in REGISTRY.collect():
        if not family.name.startswith("cce_"):
            continue
        for sample in family.samples:
            assert not unbounded & set(sample.labels), (family.name, sample.labels)


def test_the_dashboard_is_a_grafana_dashboard_with_the_panels_an_operator_needs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "cce-network" and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in dash["panels"])
    for wanted in ("Cluster overview", "$node", "ADD latency percentiles", "failures by reason", "Budget use"):
        assert wanted in titles, wanted
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["node"]["type"] == "query"


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (Debian's prometheus package)")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_the_rules_alert_on_what_matters() -> None:
    alerts = {name.split()[1] for name, _ in rule_queries()}
    assert alerts >= {"CceNodePoolExhausted", "CceCniAddLatencyHigh", "CceCloudThrottled", "CceRouteConflict",
                      "CceLeaderFlapping"}


def test_the_chart_ships_the_dashboard_and_the_rules_when_asked() -> None:
    from tests.test_chart import helm_path

    helm = helm_path()
    if not helm.exists():
        pytest.skip(f"helm is not built ({helm}): make helm")
    result = subprocess.run(
        [str(helm), "template", "t", str(CHART), "--set", "metrics.grafanaDashboard.enabled=true",
         "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=kps"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout) if d}
    dashboard = docs["ConfigMap/t-cce-network-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["cce-network.json"]) == json.loads(DASHBOARD.read_text())
    rule = docs["PrometheusRule/t-cce-network"]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    plain = subprocess.run([str(helm), "template", "t", str(CHART)], capture_output=True, text=True, check=False)
    assert "PrometheusRule" not in plain.stdout and "grafana_dashboard" not in plain.stdout


# ---- pool gauges ----------------------------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(name: str, **pool: Any) -> NetResourceSet:
    return NetResourceSet(name=name, spec=NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=8,
                                                   memory_mib=16384, max_pods=110, pool=PoolSettings(**pool)))


def eni(node_name: str, ips: int) -> Eni:
    addresses = [PrivateIp(ip=IPv4Address("10.0.1.10"), primary=True)]
    addresses += [PrivateIp(ip=IPv4Address(f"10.0.1.{100 + i}")) for i in range(ips)]
    return Eni(eni_id=f"eni-{node_name}", node=node_name, instance_id="i-1", use=EniUse.SECONDARY_IPS,
               subnet_id="sbn-1", subnet_cidr=IPv4Network("10.0.0.0/16"), state=EniState.INUSE,
               private_ips=addresses, ip_quota=16, index=1)


def test_a_nodes_pool_gauges_say_free_used_cooling_waiting_target_and_enis() -> None:
    nrs = node("node-1", pre_allocate=2, min_allocate=4, max_allocate=8)
    pool = NodePool(node="node-1", allocated={"10.0.1.100": "k1", "10.0.1.101": "k2"},
                    cooldown={"10.0.1.102": NOW + timedelta(seconds=5)}, waiting={"k3": NOW})
    sample = pool_sample(nrs, pool, NodeFacts(node="node-1", spec=nrs.spec, enis=(eni("node-1", 5),)), NOW)
    assert (sample.node, sample.mode) == ("node-1", "vpc-eni")
    values = sample.values
    assert values["cce_ipam_pool_used_ips"] == 2 and values["cce_ipam_pool_cooling_ips"] == 1
    assert values["cce_ipam_pool_free_ips"] == 2 and values["cce_ipam_pool_pending_allocations"] == 1
    assert values["cce_ipam_pool_max_ips"] == 8 and values["cce_ipam_pool_enis"] == 1
    assert values["cce_ipam_pool_target_ips"] == 6  # used 2 + cooling 1 + waiting 1 + pre-allocate 2


class FakeState:
    def __init__(self, nodes: dict[str, NetResourceSet]) -> None:
        self.nodes = nodes

    def known_nodes(self) -> set[str]:
        return set(self.nodes)

    def nrs(self, name: str) -> NetResourceSet | None:
        return self.nodes.get(name)

    def pool(self, name: str) -> NodePool | None:
        return NodePool(node=name) if name in self.nodes else None

    def facts(self, name: str, spec: NodeSpec) -> NodeFacts:
        return NodeFacts(node=name, spec=spec, enis=(eni(name, 3),))


class FakeElector:
    is_leader = False


def scrape(name: str) -> dict[str, float]:
    return {s.labels["node"]: s.value for f in POOL_GAUGES.collect() if f.name == name for s in f.samples}


@pytest.fixture
def restore_gauges() -> Iterator[None]:
    before = POOL_GAUGES.source
    yield
    POOL_GAUGES.source = before


def test_only_the_maintenance_leader_exports_pool_gauges_and_a_removed_node_has_none(restore_gauges: None) -> None:
    state, elector = FakeState({"node-1": node("node-1"), "node-2": node("node-2")}), FakeElector()
    POOL_GAUGES.source = leader_samples(state, elector, lambda: NOW)  # type: ignore[arg-type]
    assert scrape("cce_ipam_pool_free_ips") == {}
    assert "cce_ipam_pool_free_ips" in {f.name for f in POOL_GAUGES.collect()}  # the family is always described
    elector.is_leader = True
    assert scrape("cce_ipam_pool_free_ips") == {"node-1": 3.0, "node-2": 3.0}
    del state.nodes["node-2"]
    assert scrape("cce_ipam_pool_free_ips") == {"node-1": 3.0}
    state.nodes["node-1"].status.removing = True
    assert scrape("cce_ipam_pool_free_ips") == {}


# ---- trace records on the bus ---------------------------------------------------------------------------------------


def test_trace_subjects_carry_the_node_first_so_a_node_writes_only_its_own() -> None:
    assert trace_span_subject("node.a", "ab" * 16) == f"cce.traces.node_a.span.{'ab' * 16}"
    assert trace_index_subject("node-1", "ADD", "team-a", "web.v2-1") == "cce.traces.node-1.pod.add.team-a.web.v2-1"
    node_perms = permissions(node_identity("node-1"))
    assert node_perms.may_publish(trace_span_subject("node-1", "0" * 32))
    assert node_perms.may_publish(trace_index_subject("node-1", "ADD", "a", "b"))
    assert not node_perms.may_publish(trace_span_subject("node-2", "0" * 32))
    for service in ("ipam", "eni_manager"):
        perms = permissions(service_identity(service))
        assert perms.may_publish(trace_span_subject("node-2", "0" * 32))
        assert perms.may_publish(f"$JS.API.STREAM.CREATE.{TRACES.name}")
    assert not permissions(service_identity("route_manager")).may_publish(trace_span_subject("node-2", "0" * 32))


def test_traceparent_round_trips_and_nonsense_is_no_trace() -> None:
    parent = tracing.parse(f"00-{'1' * 32}-{'2' * 16}-01")
    assert parent is not None and parent.trace_id == int("1" * 32, 16) and parent.is_remote
    for bad in (None, "", "00-xyz", f"00-{'0' * 32}-{'2' * 16}-01", f"00-{'g' * 32}-{'2' * 16}-01"):
        assert tracing.parse(bad) is None
    assert tracing.traceparent() is None and tracing.headers() is None  # outside a trace: nothing to carry


@pytest.fixture
async def traced_echo(settings: ChassisSettings) -> AsyncIterator[ServiceProcess]:
    seen: list[str | None] = []

    async def handler(req: EchoRequest) -> EchoReply:
        seen.append(tracing.traceparent())
        with tracing.child_span("echo.step", {"cloud.api": "nothing"}):
            await asyncio.sleep(0.01)
        return EchoReply(text=req.text, served_by="echo")

    proc = ServiceProcess("echo", settings.model_copy(update={"trace_flush_s": 0.05}))
    await proc.start()
    await proc.bus.ensure_stream(TRACES)
    await proc.rpc.add(ECHO, handler)
    proc.seen = seen  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        await proc.shutdown()
        tracing.disable()


async def test_a_traced_request_carries_its_trace_and_both_sides_spans_reach_the_trace_stream(
        traced_echo: ServiceProcess, bus: Bus) -> None:
    attrs = {"cni.command": "ADD", "cni.container_id": "c-1", "k8s.namespace.name": "team-a",
             "k8s.pod.name": "web-1", tracing.NODE: "node-1", tracing.INDEX: True}
    with tracing.root_span("cni.ADD", attrs) as root:
        assert root is not None
        trace_id = f"{root.get_span_context().trace_id:032x}"
        await call(bus, ECHO, EchoRequest(node="node-1", text="hi"))
    await call(bus, ECHO, EchoRequest(node="node-1", text="untraced"))
    seen = traced_echo.seen  # type: ignore[attr-defined]
    assert seen[0] is not None and seen[0].split("-")[1] == trace_id
    assert seen[1] is None, "a request without a trace makes no span"

    async def complete() -> dict[str, Any] | None:
        data = await trace_data(bus, "team-a", "web-1")
        return data if data is not None and len(data["spans"]) == 3 else None

    data = None
    async with asyncio.timeout(10):
        while data is None:
            data = await complete()
            await asyncio.sleep(0.05)
    spans = {s.name: s for s in data["spans"]}
    assert data["index"].trace_id == trace_id and data["index"].container_id == "c-1"
    assert spans["echo.echo"].parent_id == spans["cni.ADD"].span_id
    assert spans["echo.step"].parent_id == spans["echo.echo"].span_id
    assert spans["echo.echo"].node == "node-1" and spans["echo.echo"].service == "echo"
    lines = timeline(data["index"], data["spans"])
    assert "ADD team-a/web-1 on node-1" in lines[0]
    step = next(line for line in lines if "echo.step" in line)
    assert step.index("echo.step") > next(line for line in lines if "echo.echo" in line).index("echo.echo")


async def test_a_failed_step_carries_its_coded_reason(traced_echo: ServiceProcess, bus: Bus) -> None:
    from schemas.errors import CceError, ErrorReason

    with tracing.root_span("cni.ADD", {tracing.INDEX: True, "cni.command": "ADD", "k8s.namespace.name": "a",
                                       "k8s.pod.name": "b"}), tracing.child_span("ipam.allocate") as step:
        with pytest.raises(CceError), tracing.child_span("inner"):
            raise CceError(ErrorReason.IP_POOL_EXHAUSTED, "none left")
        tracing.fail(step, "SubnetNoMoreIP")
    data = None
    async with asyncio.timeout(10):
        while data is None or len(data["spans"]) < 3:
            data = await trace_data(bus, "a", "b")
            await asyncio.sleep(0.05)
    errors = {s.name: s.error for s in data["spans"]}
    assert errors == {"cni.ADD": "", "ipam.allocate": "SubnetNoMoreIP", "inner": "IPPoolExhausted"}

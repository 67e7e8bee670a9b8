"""End-to-end tier with Kubernetes: `cce-net up --kube` (a real API server, k8s_bridge, the simulated nodes joining
as Node objects) and pods made by `cce-net pod add` as kubelet's world makes them (the Pod object, then CNI ADD
through the installed plugin), looked at with kubectl as an operator would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cce_net.kubelocal import missing_parts
from schemas.records import host_veth_name
from services.node_datapath.shaping import ifb_name
from tests.e2e_stack import Stack, in_ns, ok, running_stack, until
from tests.privileged import NEEDS_ROOT

pytestmark = [pytest.mark.e2e, NEEDS_ROOT]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = missing_parts()
    if missing:
        pytest.skip("no local Kubernetes API server: " + "; ".join(missing))
    with running_stack(tmp_path_factory, "vpc-eni", "kube", up_args=["--kube"]) as s:
        yield s


def kubectl(stack: Stack, *args: str) -> str:
    return ok(stack.cli("kubectl", *args))


def kubectl_json(stack: Stack, *args: str) -> Any:
    return json.loads(kubectl(stack, *args, "-o", "json"))


def test_the_nodes_joined_through_their_node_objects(stack: Stack) -> None:
    def ready_nodes() -> set[str]:
        return {n["metadata"]["name"] for n in kubectl_json(stack, "get", "nodes")["items"]
                if any(c["type"] == "CCENetworkReady" and c["status"] == "True"
                       for c in n["status"].get("conditions", []))}

    until(lambda: ready_nodes() == {"node-1", "node-2"}, 30, "both nodes CCENetworkReady")
    table = kubectl(stack, "get", "nrs")
    for name in ("node-1", "node-2"):
        assert name in table
    assert {n["name"] for n in stack.status()["nodes"]} == {"node-1", "node-2"}  # the bus has them: the bridge did it


def test_kubectl_shows_the_pods_cce_net_pod_add_made_and_forgets_those_it_deletes(stack: Stack) -> None:
    added = {}
    for ref, node in (("team-a/web-1", "node-1"), ("team-a/web-2", "node-2"), ("team-b/db-0", "node-2")):
        out = ok(stack.cli("pod", "add", ref, "--node", node, "--json"))
        added[ref] = (node, json.loads(out)["ips"][0]["address"].split("/")[0])
    pods = kubectl_json(stack, "get", "pods", "-A")["items"]
    assert {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods} >= set(added)

    def row(table: str, ref: str) -> str:
        namespace, name = ref.split("/")
        return next((line for line in table.splitlines()
                     if line.startswith(namespace) and f"cceendpoint.cce.io/{name} " in line), "")

    def shown() -> str:
        table = kubectl(stack, "get", "nrs,cep", "-A")
        return table if all("ready" in row(table, ref) for ref in added) else ""

    table = until(shown, 30, "every pod's cep with its IP in `kubectl get nrs,cep -A`")
    for ref, (node, ip) in added.items():
        assert f" {ip} " in row(table, ref) and f" {node} " in row(table, ref)
    assert "netresourceset.cce.io/node-1" in table and "vpc-eni" in table
    ok(stack.cli("pod", "del", "team-a/web-1"))
    until(lambda: "web-1" not in kubectl(stack, "get", "cep", "-A"), 30, "web-1's cep gone")
    assert "web-1" not in kubectl(stack, "get", "pods", "-n", "team-a")


def test_bandwidth_annotations_are_shaped_on_the_node_and_a_malformed_one_is_an_event(stack: Stack) -> None:
    out = ok(stack.cli("pod", "add", "team-c/shaped-1", "--node", "node-1", "--json",
                       "-a", "kubernetes.io/ingress-bandwidth=8M", "-a", "kubernetes.io/egress-bandwidth=16M"))
    assert json.loads(out)["ips"]
    cep = until(lambda: kubectl_json(stack, "get", "cep", "-n", "team-c", "shaped-1")["status"].get("bandwidth"), 30,
                "the cep of team-c/shaped-1 showing its limits")
    assert cep == {"ingressBps": 8_000_000, "egressBps": 16_000_000}
    node_ns = stack.node_ns("node-1")
    veth = host_veth_name("team-c", "shaped-1", "eth0")
    qdiscs = json.loads(in_ns(node_ns, "tc", "-j", "qdisc", "show", "dev", veth).stdout)
    assert any(q["kind"] == "tbf" and q["options"]["rate"] == 1_000_000 for q in qdiscs)
    ifb = json.loads(in_ns(node_ns, "tc", "-j", "qdisc", "show", "dev", ifb_name(veth)).stdout)
    assert any(q["kind"] == "tbf" and q["options"]["rate"] == 2_000_000 for q in ifb)
    ok(stack.cli("pod", "del", "team-c/shaped-1"))
    assert ifb_name(veth) not in in_ns(node_ns, "ip", "link", "show").stdout

    failed = stack.cli("pod", "add", "team-c/shaped-2", "--node", "node-1", "-a", "kubernetes.io/egress-bandwidth=fast")
    assert failed.returncode != 0 and "InvalidRequest" in failed.stdout + failed.stderr
    assert "kubernetes.io/egress-bandwidth='fast'" in failed.stdout + failed.stderr

    def event() -> Any:
        items = kubectl_json(stack, "get", "events", "-n", "team-c",
                             "--field-selector", "involvedObject.name=shaped-2")["items"]
        return next((e for e in items if e["reason"] == "InvalidRequest"), None)

    assert "egress-bandwidth" in until(event, 30, "an InvalidRequest event on team-c/shaped-2")["message"]


def test_a_statefulset_pods_fixed_ip_follows_it_to_another_node_and_answers_there(stack: Stack) -> None:
    fixed = ["--statefulset", "db", "-a", "cce.io/fixed-ip=true", "-a", "cce.io/fixed-ip-ttl=1h"]
    first = json.loads(ok(stack.cli("pod", "add", "team-d/db-0", "--node", "node-1", "--json", *fixed)))
    ip = first["ips"][0]["address"].split("/")[0]
    ok(stack.cli("pod", "add", "team-d/client", "--node", "node-1"))
    cep = until(lambda: kubectl_json(stack, "get", "cep", "-n", "team-d", "db-0")["status"], 30, "db-0's cep")
    assert (cep["allocationType"], cep["releaseTTL"], cep["ip"]) == ("Fixed", "1h", ip)

    ok(stack.cli("pod", "del", "team-d/db-0"))
    held = {f"{r['namespace']}/{r['name']}": r for r in stack.status()["fixed_ips"]}
    assert held["team-d/db-0"]["ip"] == ip and not held["team-d/db-0"]["endpoint"]  # reserved for its return
    until(lambda: kubectl_json(stack, "get", "cep", "-n", "team-d", "db-0")["status"].get("state") == "reserved",
          30, "db-0's cep reserved")

    again = json.loads(ok(stack.cli("pod", "add", "team-d/db-0", "--node", "node-2", "--json", *fixed)))
    assert again["ips"][0]["address"].split("/")[0] == ip
    until(lambda: stack.cli("pod", "exec", "team-d/client", "--", "ping", "-c", "1", "-W", "1", ip).returncode == 0,
          30, f"the client on node-1 reaching db-0 at {ip} on node-2, through the VPC")
    assert "team-d/db-0" in ok(stack.cli("status")) and "Fixed IPs" in ok(stack.cli("status"))
    ok(stack.cli("pod", "del", "team-d/db-0"))
    ok(stack.cli("pod", "del", "team-d/client"))

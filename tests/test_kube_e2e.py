"""End-to-end tier with Kubernetes: `cce-net up --kube` (a real API server, k8s_bridge, the simulated nodes joining
as Node objects) and pods made by `cce-net pod add` as kubelet's world makes them (the Pod object, then CNI ADD
through the installed plugin), looked at with kubectl as an operator would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cce_net.kubelocal import missing_parts
from tests.e2e_stack import Stack, ok, running_stack, until
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

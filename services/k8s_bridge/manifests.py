"""The Kubernetes objects the bridge needs installed: the CustomResourceDefinitions of the projections and the
bridge's least-privilege ClusterRole. Defined here once; `deploy/crds/` and `deploy/rbac/` are generated from them, and
so are the Helm chart's `crds/` and the file its ClusterRole template reads its rules from
(`python -m services.k8s_bridge.manifests`, `--check` in the tests), and `cce-net up --kube` applies them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from services.k8s_bridge.projection import CEP, GROUP, KINDS, NRS, SBN, VERSION, Kind

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
CHART = DEPLOY / "helm" / "cce-network"  # the Helm chart: crds/ and files/k8s-bridge-clusterrole.yaml come from here
BRIDGE_USER = "cce-network:k8s-bridge"  # the identity of the bridge where no service account is used (local runs)
BRIDGE_ROLE = "cce-network-k8s-bridge"

_COLUMNS: dict[str, list[dict[str, Any]]] = {
    NRS.kind: [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Instance", "type": "string", "jsonPath": ".spec.instanceId"},
        {"name": "Ready", "type": "boolean", "jsonPath": ".status.ready"},
        {"name": "Used", "type": "integer", "jsonPath": ".status.ips.used", "description": "pod IPs in use"},
        {"name": "Free", "type": "integer", "jsonPath": ".status.ips.free", "description": "pod IPs ready to give"},
        {"name": "ENIs", "type": "integer", "jsonPath": ".status.eniCount"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    CEP.kind: [
        {"name": "IP", "type": "string", "jsonPath": ".status.ip"},
        {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        {"name": "ENI", "type": "string", "jsonPath": ".status.eniId"},
        {"name": "State", "type": "string", "jsonPath": ".status.state"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    SBN.kind: [
        {"name": "Zone", "type": "string", "jsonPath": ".spec.zone"},
        {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.availableIPs"},
        {"name": "VPC", "type": "string", "jsonPath": ".spec.vpcId", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}
_DESCRIPTIONS = {
    NRS.kind: "A node's IP resource pool (its ENIs and their IPs, or its CIDRs), projected from the cce-network bus.",
    CEP.kind: "A pod interface's network endpoint (its VPC address, ENI, node), projected from the cce-network bus.",
    SBN.kind: "A VPC subnet cce-network allocates from, with its free addresses, projected from the bus.",
}


def crd(kind: Kind) -> dict[str, Any]:
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.kind.lower(),
                      "shortNames": [kind.short], "categories": ["cce"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _COLUMNS[kind.kind],
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": _DESCRIPTIONS[kind.kind],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": open_object, "status": open_object},
                }},
            }],
        },
    }


def bridge_cluster_role() -> dict[str, Any]:
    """Exactly what the bridge does: read Nodes and Pods, set its condition on Nodes, write Events, and own the
    projections (their status through the subresource)."""
    plurals = [k.plural for k in KINDS]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": BRIDGE_ROLE, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "get"]},
            {"apiGroups": [GROUP], "resources": plurals,
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in plurals], "verbs": ["patch"]},
        ],
    }


def bridge_binding(user: str = BRIDGE_USER) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": BRIDGE_ROLE, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": BRIDGE_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def files() -> dict[Path, str]:
    header = "# Generated from services/k8s_bridge/manifests.py; do not edit by hand.\n"
    out = {DEPLOY / "crds" / f"{GROUP}_{k.plural}.yaml": header + yaml.safe_dump(crd(k), sort_keys=False)
           for k in KINDS}
    role = header + yaml.safe_dump(bridge_cluster_role(), sort_keys=False)
    out[DEPLOY / "rbac" / "k8s-bridge-clusterrole.yaml"] = role
    # the chart: CRDs in crds/ (installed before its templates), the rules its ClusterRole template reads
    for kind in KINDS:
        out[CHART / "crds" / f"{GROUP}_{kind.plural}.yaml"] = out[DEPLOY / "crds" / f"{GROUP}_{kind.plural}.yaml"]
    out[CHART / "files" / "k8s-bridge-clusterrole.yaml"] = role
    return out


def stale() -> list[Path]:
    return [p for p, text in files().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        paths = stale()
        for path in paths:
            print(f"{path} is stale: run `python -m services.k8s_bridge.manifests`", file=sys.stderr)
        return 1 if paths else 0
    for path, text in files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

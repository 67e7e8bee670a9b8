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
from services.k8s_bridge.readiness import TAINT_KEY
from services.k8s_bridge.spreads import CPSTS, PSTS, SPREAD_KINDS

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
CHART = DEPLOY / "helm" / "cce-network"  # the Helm chart: crds/ and files/k8s-bridge-clusterrole.yaml come from here
BRIDGE_USER = "cce-network:k8s-bridge"  # the identity of the bridge where no service account is used (local runs)
BRIDGE_ROLE = "cce-network-k8s-bridge"
NODE_POLICY = "cce-network-k8s-bridge-nodes"  # the admission policy narrowing the bridge's Node writes to its taint
ALL_KINDS = (*KINDS, *SPREAD_KINDS)  # the projections the bridge writes, the spreads users write

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
        {"name": "Type", "type": "string", "jsonPath": ".status.allocationType",
         "description": "Elastic, or Fixed: the pod keeps the IP across delete and re-create"},
        {"name": "TTL", "type": "string", "jsonPath": ".status.releaseTTL",
         "description": "a fixed IP is released once its pod has been gone this long"},
        {"name": "Release-At", "type": "date", "jsonPath": ".status.releaseAt", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    SBN.kind: [
        {"name": "Zone", "type": "string", "jsonPath": ".spec.zone"},
        {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.availableIPs"},
        {"name": "VPC", "type": "string", "jsonPath": ".spec.vpcId", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    **{k.kind: [
        {"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"},
        {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
        {"name": "Subnets", "type": "string", "jsonPath": ".spec.subnets[*].subnetId"},
        {"name": "Used", "type": "integer", "jsonPath": ".status.usedIPs", "description": "pod IPs in its subnets"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].reason",
         "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ] for k in SPREAD_KINDS},
}
_DESCRIPTIONS = {
    NRS.kind: "A node's IP resource pool (its ENIs and their IPs, or its CIDRs), projected from the cce-network bus.",
    CEP.kind: "A pod interface's network endpoint (its VPC address, ENI, node), projected from the cce-network bus.",
    SBN.kind: "A VPC subnet cce-network allocates from, with its free addresses, projected from the bus.",
    PSTS.kind: "The subnets (and IP ranges in them) the pods it selects in its namespace get their IPs from.",
    CPSTS.kind: "The subnets (and IP ranges in them) the pods it selects in the namespaces it selects get their IPs "
                "from; a namespace's own PodSubnetTopologySpread comes first.",
}


def _selector_schema(what: str) -> dict[str, Any]:
    expression = {"type": "object", "required": ["key", "operator"], "properties": {
        "key": {"type": "string"}, "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": {"type": "string"}}}}
    return {"type": "object", "description": f"a label selector of {what} (empty: all)", "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": expression}}}


def spread_spec_schema(kind: Kind) -> dict[str, Any]:
    """What the API server checks of a spread at admission; whether its subnets exist and hold its ranges is
    checked by the bridge against the VPC and told in the status (condition Valid) and an Event."""
    subnet = {"type": "object", "required": ["subnetId"], "properties": {
        "subnetId": {"type": "string", "pattern": "^[A-Za-z0-9][-A-Za-z0-9_]{0,127}$"},
        "ipRanges": {"type": "array", "description": "CIDRs inside the subnet; only these IPs are used (empty: any)",
                     "items": {"type": "string", "pattern": r"^([0-9]{1,3}\.){3}[0-9]{1,3}(/[0-9]{1,2})?$"}},
        "priority": {"type": "integer", "description": "subnets of higher priority are used first"}}}
    props: dict[str, Any] = {
        "podSelector": _selector_schema("pods"),
        "subnets": {"type": "array", "minItems": 1, "items": subnet},
        "strategy": {"type": "string", "enum": ["Elastic"], "default": "Elastic"},
        "priority": {"type": "integer", "default": 0,
                     "description": "the highest priority wins among the spreads of one scope selecting a pod"},
    }
    if not kind.namespaced:
        props["namespaceSelector"] = _selector_schema("namespaces")
    return {"type": "object", "required": ["subnets"], "properties": props}


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
                                   "metadata": {"type": "object"},
                                   "spec": spread_spec_schema(kind) if kind in SPREAD_KINDS else open_object,
                                   "status": open_object},
                }},
            }],
        },
    }


def bridge_cluster_role() -> dict[str, Any]:
    """Exactly what the bridge does: read Nodes and Pods, set its conditions and extended resources on Nodes (their
    status) and its taint (patch of the Node: RBAC cannot narrow it to `spec.taints`, the admission policy of
    `bridge_node_policy` does), write Events, and own the projections (their status through the subresource)."""
    plurals = [k.plural for k in KINDS]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": BRIDGE_ROLE, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes", "pods", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "get"]},
            {"apiGroups": [GROUP], "resources": plurals,
             "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in plurals], "verbs": ["patch"]},
            {"apiGroups": [GROUP], "resources": [k.plural for k in SPREAD_KINDS], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": [f"{k.plural}/status" for k in SPREAD_KINDS], "verbs": ["patch"]},
        ],
    }


def bridge_binding(user: str = BRIDGE_USER) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": BRIDGE_ROLE, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": BRIDGE_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def _same(path: str) -> str:
    """CEL: the field is the same before and after the update (or absent from both)."""
    return f"has(object.{path}) == has(oldObject.{path}) && (!has(object.{path}) || object.{path} == oldObject.{path})"


def bridge_node_policy(user: str = BRIDGE_USER) -> dict[str, Any]:
    """What RBAC cannot say: of a Node, the bridge may change only its own taint (its status is another
    subresource, which this policy does not match). A ValidatingAdmissionPolicy (CEL, in the API server: no
    webhook to run) that matches only the bridge's updates of Nodes."""
    others = f"t, t.key != '{TAINT_KEY}'"
    kept = [_same(f"metadata.{f}") for f in ("labels", "annotations", "finalizers", "ownerReferences")]
    kept += [_same(f"spec.{f}") for f in ("unschedulable", "providerID", "podCIDR", "podCIDRs", "configSource")]
    taints = (f"(has(object.spec.taints) ? object.spec.taints.filter({others}) : []) == "
              f"(has(oldObject.spec.taints) ? oldObject.spec.taints.filter({others}) : [])")
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": NODE_POLICY, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                    "operations": ["UPDATE"], "resources": ["nodes"]}]},
            "matchConditions": [{"name": "k8s-bridge", "expression": f"request.userInfo.username == '{user}'"}],
            "validations": [
                {"expression": " && ".join(kept), "reason": "Forbidden",
                 "message": "cce-network's k8s_bridge may change only its own taint of a Node"},
                {"expression": taints, "reason": "Forbidden",
                 "message": f"cce-network's k8s_bridge may add or remove only the taint {TAINT_KEY}"},
            ],
        },
    }


def bridge_node_policy_binding() -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": NODE_POLICY, "labels": {"app.kubernetes.io/part-of": "cce-network"}},
        "spec": {"policyName": NODE_POLICY, "validationActions": ["Deny"]},
    }


def objects(user: str = BRIDGE_USER) -> list[dict[str, Any]]:
    """Everything to apply for a bridge running as `user`: CRDs, its ClusterRole and binding, its Node policy."""
    return [*(crd(k) for k in ALL_KINDS), bridge_cluster_role(), bridge_binding(user), bridge_node_policy(user),
            bridge_node_policy_binding()]


def files() -> dict[Path, str]:
    header = "# Generated from services/k8s_bridge/manifests.py; do not edit by hand.\n"
    out = {DEPLOY / "crds" / f"{GROUP}_{k.plural}.yaml": header + yaml.safe_dump(crd(k), sort_keys=False)
           for k in ALL_KINDS}
    role = header + yaml.safe_dump(bridge_cluster_role(), sort_keys=False)
    out[DEPLOY / "rbac" / "k8s-bridge-clusterrole.yaml"] = role
    # the chart: CRDs in crds/ (installed before its templates), the rules its ClusterRole template reads
    for kind in ALL_KINDS:
        out[CHART / "crds" / f"{GROUP}_{kind.plural}.yaml"] = out[DEPLOY / "crds" / f"{GROUP}_{kind.plural}.yaml"]
    out[CHART / "files" / "k8s-bridge-clusterrole.yaml"] = role
    policy = yaml.safe_dump(bridge_node_policy(), sort_keys=False)
    out[DEPLOY / "rbac" / "k8s-bridge-node-policy.yaml"] = (
        header + f"# The bridge's user here is {BRIDGE_USER}; the chart matches its service account instead.\n"
        + policy + "---\n" + yaml.safe_dump(bridge_node_policy_binding(), sort_keys=False))
    out[CHART / "files" / "k8s-bridge-node-policy.yaml"] = header + policy  # the chart sets its own user
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

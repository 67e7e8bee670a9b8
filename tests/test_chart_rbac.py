"""The chart's RBAC, asked of a real API server: its ServiceAccounts, ClusterRoles and bindings applied for real in a
namespace of their own, then a SubjectAccessReview per (service account, action). k8s_bridge may do exactly what it
does; every other service account may do none of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cce_net.kubelocal import apply_manifests
from services.k8s_bridge.projection import GROUP, KINDS
from services.k8s_bridge.spreads import SPREAD_KINDS
from tests.e2e_stack import until
from tests.kube import Kube
from tests.test_chart import Helm, by_kind, helm  # noqa: F401  (the session's helm fixture)

RELEASE = "cce-rbac"  # not the release name of the test server's own bridge role (cce-network-k8s-bridge)
NAMESPACE = "cce-rbac-test"
FULLNAME = "cce-rbac-cce-network"
SERVICE_ACCOUNTS = ("nats", "ipam", "eni-manager", "route-manager", "k8s-bridge", "node")
Action = tuple[str, str, str, str, str]  # verb, group, resource, subresource, namespace ("" = all)
# the first test to need helm may build it (~2 min on 2 cores from a clean module cache)
pytestmark = pytest.mark.timeout(600)

BRIDGE_DOES: list[Action] = [
    *[(verb, "", "nodes", "", "") for verb in ("get", "list", "watch")],
    *[(verb, "", "pods", "", ns) for verb in ("list", "watch") for ns in ("", "team-a")],
    ("patch", "", "nodes", "status", ""),
    ("patch", "", "nodes", "", ""),  # its taint only: the admission policy (test_node_readiness.py) says so
    *[(verb, "", "namespaces", "", "") for verb in ("get", "list", "watch")],  # their annotations of ours
    *[(verb, "", "events", "", ns) for verb in ("create", "patch") for ns in ("default", "team-a")],
    *[(verb, GROUP, kind.plural, "", "team-a" if kind.namespaced else "")
      for kind in KINDS for verb in ("get", "list", "watch", "create", "patch", "delete")],
    *[("patch", GROUP, kind.plural, "status", "team-a" if kind.namespaced else "") for kind in KINDS],
    # the subnet spreads users write: read, and their status written
    *[(verb, GROUP, kind.plural, "", "team-a" if kind.namespaced else "")
      for kind in SPREAD_KINDS for verb in ("get", "list", "watch")],
    *[("patch", GROUP, kind.plural, "status", "team-a" if kind.namespaced else "") for kind in SPREAD_KINDS],
]
BRIDGE_MUST_NOT: list[Action] = [
    ("update", "", "nodes", "", ""), ("delete", "", "nodes", "", ""), ("patch", "", "namespaces", "", ""),
    ("update", "", "nodes", "status", ""), ("create", "", "nodes", "", ""),
    ("delete", "", "pods", "", "team-a"), ("create", "", "pods", "", "team-a"), ("patch", "", "pods", "", "team-a"),
    ("create", "", "pods", "eviction", "team-a"), ("create", "", "pods", "exec", "team-a"),
    ("get", "", "secrets", "", ""), ("list", "", "secrets", "", NAMESPACE), ("watch", "", "secrets", "", "team-a"),
    ("get", "", "configmaps", "", NAMESPACE), ("create", "", "serviceaccounts", "token", NAMESPACE),
    ("delete", "", "events", "", "team-a"),
    ("update", GROUP, "netresourcesets", "", ""), ("update", GROUP, "cceendpoints", "status", "team-a"),
    ("create", GROUP, "podsubnettopologyspreads", "", "team-a"),
    ("patch", GROUP, "podsubnettopologyspreads", "", "team-a"), ("delete", GROUP, "podsubnettopologyspreads", "", ""),
    ("patch", GROUP, "clusterpodsubnettopologyspreads", "", ""),
    ("create", GROUP, "clusterpodsubnettopologyspreads", "", ""),
    ("list", "apps", "deployments", "", ""), ("create", "apps", "daemonsets", "", NAMESPACE),
    ("create", "events.k8s.io", "events", "", "team-a"), ("patch", "networking.k8s.io", "networkpolicies", "", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("update", "coordination.k8s.io", "leases", "", NAMESPACE),
    ("create", "authentication.k8s.io", "tokenreviews", "", ""),
    ("impersonate", "", "serviceaccounts", "", NAMESPACE),
]


@pytest.fixture(scope="module")
def chart_rbac(helm: Helm, kube_server: Any) -> Iterator[Kube]:  # noqa: F811
    """The chart's ServiceAccounts, ClusterRoles and ClusterRoleBindings, applied for real; removed afterwards
    (but the namespace: without a controller-manager no namespace finishes terminating)."""
    kube = Kube(kube_server)
    kube.ensure_namespace(NAMESPACE)
    objects = [o for o in helm.objects("--set", "routeManager.enabled=true", release=RELEASE, namespace=NAMESPACE)
               if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"} == {
        f"{FULLNAME}-{sa}" for sa in SERVICE_ACCOUNTS}
    apply_manifests(kube.server.kubeconfig, objects, manager="helm")
    # the authorizer sees the new binding once its informer has it: wait for the bridge's first right
    until(lambda: allowed(kube, "k8s-bridge", BRIDGE_DOES[0]), 10.0, "the k8s-bridge binding to take effect")
    try:
        yield kube
    finally:
        rbac = kube.k.RbacAuthorizationV1Api(kube.api)
        for obj in objects:
            name = obj["metadata"]["name"]
            try:
                if obj["kind"] == "ClusterRole":
                    rbac.delete_cluster_role(name)
                elif obj["kind"] == "ClusterRoleBinding":
                    rbac.delete_cluster_role_binding(name)
                else:
                    kube.core.delete_namespaced_service_account(name, NAMESPACE)
            except ApiException as err:
                if err.status != 404:
                    raise
        kube.close()


def allowed(kube: Kube, account: str, action: Action) -> bool:
    verb, group, resource, subresource, namespace = action
    k = kube.k
    review = k.V1SubjectAccessReview(spec=k.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{NAMESPACE}:{FULLNAME}-{account}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"],
        resource_attributes=k.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                   subresource=subresource or None, namespace=namespace or None)))
    answer = k.AuthorizationV1Api(kube.api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def describe(action: Action) -> str:
    verb, group, resource, subresource, namespace = action
    return f"{verb} {resource}{'/' + subresource if subresource else ''}.{group or 'core'} in {namespace or 'all'}"


def test_the_bridge_may_do_what_it_does(chart_rbac: Kube) -> None:
    assert [describe(a) for a in BRIDGE_DOES if not allowed(chart_rbac, "k8s-bridge", a)] == []


def test_the_bridge_may_do_nothing_else(chart_rbac: Kube) -> None:
    assert [describe(a) for a in BRIDGE_MUST_NOT if allowed(chart_rbac, "k8s-bridge", a)] == []


@pytest.mark.parametrize("account", [sa for sa in SERVICE_ACCOUNTS if sa != "k8s-bridge"])
def test_every_other_service_may_do_nothing_at_all(chart_rbac: Kube, account: str) -> None:
    assert [describe(a) for a in BRIDGE_DOES + BRIDGE_MUST_NOT if allowed(chart_rbac, account, a)] == []


def test_the_chart_grants_nothing_but_the_bridge_role(helm: Helm) -> None:  # noqa: F811
    objects = helm.objects("--set", "routeManager.enabled=true", release=RELEASE, namespace=NAMESPACE)
    assert set(by_kind(objects, "ClusterRole")) == {f"{FULLNAME}-k8s-bridge"}
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    (binding,) = by_kind(objects, "ClusterRoleBinding").values()
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-k8s-bridge",
                                    "namespace": NAMESPACE}]

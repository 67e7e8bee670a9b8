"""A real Kubernetes API server for the tests that claim Kubernetes behaviour: etcd + kube-apiserver (built from the
Go module by `make kube-tools`, cached) on free ports, one per session, with the CRDs and the bridge's ClusterRole
applied; every test starts with no Nodes, Pods, projections or Events. The tests drive it with the official Python
client, as an operator's tools would; the bridge runs with its own least-privilege identity.

Skips (with the reason) only where a part is genuinely missing: the binaries could not be built (no Go) or etcd is
not installed. `.ci/run` installs etcd and `make test` builds the binaries first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient

from cce_net.kubelocal import KubeAdmin, LocalKube, apply_manifests, missing_parts
from services.k8s_bridge.manifests import BRIDGE_USER, objects
from services.k8s_bridge.projection import GROUP, KINDS, VERSION, Kind
from services.k8s_bridge.spreads import SPREAD_KINDS


class Kube(KubeAdmin):
    """The admin's view of the test API server: write Nodes and Pods as kubelet would, read what the network shows."""

    def __init__(self, server: LocalKube) -> None:
        super().__init__(server.kubeconfig)
        self.server = server

    @property
    def custom(self) -> kclient.CustomObjectsApi:
        return kclient.CustomObjectsApi(self.api)

    @property
    def bridge_kubeconfig(self) -> Path:
        return self.server.kubeconfig_for(BRIDGE_USER)

    # ---- what the network shows ----------------------------------------------------------------------------------

    def objects(self, kind: Kind, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        if kind.namespaced and namespace:
            found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
        else:
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, kind.plural)
        return {o["metadata"]["name"]: o for o in found["items"]}

    def events(self, kind: str, name: str, namespace: str = "default") -> list[Any]:
        found = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
        return list(found.items)

    def node_condition(self, name: str, kind: str) -> Any:
        node = self.core.read_node(name)
        return next((c for c in node.status.conditions or [] if c.type == kind), None)

    # ---- between tests -------------------------------------------------------------------------------------------

    def wipe(self) -> None:
        for pod in self.core.list_pod_for_all_namespaces().items:
            self.delete_pod(pod.metadata.namespace, pod.metadata.name)
        for node in self.core.list_node().items:
            self.delete_node(node.metadata.name)
        for kind in (*KINDS, *SPREAD_KINDS):
            for obj in self.custom.list_cluster_custom_object(GROUP, VERSION, kind.plural)["items"]:
                meta = obj["metadata"]
                if kind.namespaced:
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, meta["namespace"], kind.plural,
                                                                meta["name"])
                else:
                    self.custom.delete_cluster_custom_object(GROUP, VERSION, kind.plural, meta["name"])
        for ns in self.core.list_namespace().items:
            self.core.delete_collection_namespaced_event(ns.metadata.name)


def manifests() -> list[dict[str, Any]]:
    return objects()


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKube]:
    missing = missing_parts()
    if missing:
        pytest.skip("no local Kubernetes API server: " + "; ".join(missing))
    server = LocalKube(tmp_path_factory.mktemp("kube"), service_users=(BRIDGE_USER,)).start()
    try:
        apply_manifests(server.kubeconfig, manifests())
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube(kube_server: LocalKube) -> Iterator[Kube]:
    k = Kube(kube_server)
    k.wipe()
    try:
        yield k
    finally:
        k.close()

"""Node readiness against a real API server and the simulated VPC (k8s_bridge, ipam and eni_manager as processes): a
node whose network is not ready carries our NoSchedule taint and NetworkUnavailable=True, both lifted when its pool
fills; what it can hold is published as the extended resources cce.io/ip and cce.io/eni. The bridge may change
nothing else of a Node (its ClusterRole allows patching Nodes; the admission policy narrows it to its taint)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException

from services.k8s_bridge.readiness import ENI_RESOURCE, IP_RESOURCE, TAINT_KEY
from services.vpc_sim.admin import SimAdmin
from tests.cluster import Cluster, until
from tests.kube import Kube
from tests.test_k8s_bridge import node_object, plane, registered_and_ready  # noqa: F401  (plane: a fixture)

pytestmark = pytest.mark.integration


def our_taint(kube: Kube, node: str) -> Any:
    return next((t for t in kube.core.read_node(node).spec.taints or [] if t.key == TAINT_KEY), None)


def condition(kube: Kube, node: str, kind: str) -> str:
    return str(getattr(kube.node_condition(node, kind), "status", ""))


def resource(kube: Kube, node: str, part: str, name: str) -> str | None:
    values = getattr(kube.core.read_node(node).status, part) or {}
    return values.get(name)


async def test_a_node_with_an_empty_pool_is_tainted_and_untainted_when_the_pool_fills(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    full = await sim_admin.create_subnet(zone="zoneA", cidr="10.0.251.0/28", name="full")
    await sim_admin.reserve(str(full["subnetId"]), cidr="10.0.251.0/28")  # no address left for an ENI
    roomy = await sim_admin.create_subnet(zone="zoneA", cidr="10.0.252.0/24", name="roomy")
    await node_object(c, kube, sim_admin, "node-1", annotations={"cce.io/subnet-ids": str(full["subnetId"])})
    await until(lambda: our_taint(kube, "node-1") is not None, 20, "our taint on node-1")
    assert our_taint(kube, "node-1").effect == "NoSchedule"
    await until(lambda: condition(kube, "node-1", "NetworkUnavailable") == "True", 10, "NetworkUnavailable=True")
    await until(lambda: kube.node_condition("node-1", "CCENetworkReady").reason == "SubnetNoMoreIP" if
                kube.node_condition("node-1", "CCENetworkReady") else False, 30,
                "CCENetworkReady=False saying the subnet is full")
    assert condition(kube, "node-1", "CCENetworkReady") == "False"
    await until(lambda: resource(kube, "node-1", "allocatable", IP_RESOURCE) == "0", 10, "cce.io/ip 0")

    # the operator gives the node a subnet with room: the pool fills, the taint goes
    kube.core.patch_node("node-1", {"metadata": {"annotations": {"cce.io/subnet-ids": str(roomy["subnetId"])}}})
    await registered_and_ready(c, kube, "node-1")
    await until(lambda: our_taint(kube, "node-1") is None, 20, "our taint lifted from node-1")
    await until(lambda: condition(kube, "node-1", "NetworkUnavailable") == "False", 10, "NetworkUnavailable=False")
    assert condition(kube, "node-1", "CCENetworkReady") == "True"
    nrs = await c.nrs("node-1")
    assert nrs is not None and nrs.status.capacity.pod_ips == 110  # 8 ENIs x 15 IPs, capped at max pods
    await until(lambda: resource(kube, "node-1", "allocatable", IP_RESOURCE) == "110", 10, "cce.io/ip 110")
    assert resource(kube, "node-1", "capacity", IP_RESOURCE) == "110"
    assert resource(kube, "node-1", "capacity", ENI_RESOURCE) == "0"  # this node allows no exclusive ENI


async def test_other_taints_survive_ours_coming_and_going(plane: tuple[Cluster, Kube],  # noqa: F811
                                                          sim_admin: SimAdmin) -> None:
    c, kube = plane
    inst = await sim_admin.create_instance(name="node-1", cpus=8, memory_mib=32768)
    kube.create_node("node-1", f"cce://{inst['id']}", labels={"topology.kubernetes.io/zone": "zoneA"})
    kube.core.patch_node("node-1", {"spec": {"taints": [{"key": "team", "value": "a", "effect": "NoSchedule"},
                                                        {"key": TAINT_KEY, "effect": "NoSchedule"}]}})
    await registered_and_ready(c, kube, "node-1")
    await until(lambda: our_taint(kube, "node-1") is None, 20, "our taint lifted")
    taints = kube.core.read_node("node-1").spec.taints
    assert [(t.key, t.value, t.effect) for t in taints] == [("team", "a", "NoSchedule")]


async def test_the_bridge_may_set_its_taint_and_nothing_else_of_a_node(kube: Kube) -> None:
    kube.create_node("node-9", "cce://i-nothing", labels={"a": "b"})
    kube.core.patch_node("node-9", {"spec": {"taints": [{"key": "team", "value": "a", "effect": "NoSchedule"}]}})
    api = kconfig.new_client_from_config(str(kube.bridge_kubeconfig))
    core = kclient.CoreV1Api(api)
    try:
        mine = [{"key": "team", "value": "a", "effect": "NoSchedule"}, {"key": TAINT_KEY, "effect": "NoSchedule"}]
        core.patch_node("node-9", {"spec": {"taints": mine}})
        assert our_taint(kube, "node-9") is not None
        for forbidden in ({"metadata": {"labels": {"a": "c"}}}, {"metadata": {"annotations": {"x": "y"}}},
                          {"spec": {"taints": [{"key": TAINT_KEY, "effect": "NoSchedule"}]}},  # drops another's
                          {"spec": {"unschedulable": True}}, {"spec": {"podCIDR": "10.9.0.0/24"}}):
            with pytest.raises(ApiException) as err:
                core.patch_node("node-9", forbidden)
            assert err.value.status == 403, forbidden
            assert "k8s_bridge may" in str(err.value.body)
        node = kube.core.read_node("node-9")
        assert node.metadata.labels == {"a": "b"} and not node.spec.unschedulable
        assert [t.key for t in node.spec.taints] == ["team", TAINT_KEY]
        with pytest.raises(ApiException) as err:
            core.delete_node("node-9")
        assert err.value.status == 403
    finally:
        api.close()

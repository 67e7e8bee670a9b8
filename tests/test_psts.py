"""Integration tier: PodSubnetTopologySpread against a real Kubernetes API server, the simulated VPC over HTTP and a
real nats-server (k8s_bridge, ipam, eni_manager as processes). Spread objects are written as a user would; the
bridge validates them and records them for ipam; pods are allocated as cni_gateway does (from their facts in
`cce_pods`), and where their IPs land is read from the endpoints and the cloud. The last test runs a real gateway
(root: it needs a network namespace) to see the coded failure become an Event on the pod."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from rich.console import Console

from cce_net.inspect import render_status, status_data
from chassis.kv import Store
from chassis.rpc import call
from schemas.errors import CceError, ErrorReason
from schemas.messages import AllocateReply, AllocateRequest, ConfirmRequest, PodRef
from schemas.records import CceEndpoint, PodInfo, SubnetSpread
from schemas.subjects import IPAM_ALLOCATE, IPAM_CONFIRM, PODS, SPREADS, pod_key, psts_key
from services.k8s_bridge.projection import GROUP, VERSION
from services.k8s_bridge.spreads import CPSTS, PSTS
from services.vpc_sim.admin import SimAdmin
from tests.cluster import Cluster, until
from tests.kube import Kube
from tests.privileged import NEEDS_ROOT
from tests.test_k8s_bridge import cni_add, node_object, plane, registered_and_ready, start_gateway  # noqa: F401

pytestmark = pytest.mark.integration

NS = "team-s"


async def subnets(admin: SimAdmin, **cidrs: str) -> dict[str, str]:
    """name -> subnet id of new subnets (zone: zoneB for a name starting with `far`, else zoneA)."""
    out = {}
    for name, cidr in cidrs.items():
        made = await admin.create_subnet(zone="zoneB" if name.startswith("far") else "zoneA", cidr=cidr, name=name)
        out[name] = str(made["subnetId"])
    return out


def namespace(kube: Kube, name: str, labels: dict[str, str] | None = None) -> None:
    try:
        kube.core.create_namespace(kclient.V1Namespace(metadata=kclient.V1ObjectMeta(name=name, labels=labels)))
    except kclient.ApiException as err:
        if err.status != 409:
            raise
        kube.core.patch_namespace(name, {"metadata": {"labels": labels or {}}})


def labelled_pod(kube: Kube, ns: str, name: str, node: str, labels: dict[str, str]) -> str:
    body = kclient.V1Pod(metadata=kclient.V1ObjectMeta(name=name, labels=labels),
                         spec=kclient.V1PodSpec(node_name=node, containers=[
                             kclient.V1Container(name="app", image="registry.local/pause:3.10")]))
    return str(kube.core.create_namespaced_pod(ns, body).metadata.uid)


def spread_object(kind: Any, name: str, subnets_: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if kind.namespaced:
        meta["namespace"] = NS
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind.kind, "metadata": meta,
            "spec": {"subnets": subnets_, **spec}}


def create_spread(kube: Kube, body: dict[str, Any]) -> None:
    if body["kind"] == PSTS.kind:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PSTS.plural, body)
    else:
        kube.custom.create_cluster_custom_object(GROUP, VERSION, CPSTS.plural, body)


async def recorded(c: Cluster, namespace: str, name: str) -> SubnetSpread:
    store: Store[SubnetSpread] = await c.store(SPREADS)

    async def found() -> SubnetSpread | None:
        item = await store.get(psts_key(namespace, name))
        return item.value if item else None

    await until(found, 20, f"spread {namespace or 'cluster'}/{name} recorded")
    spread = await found()
    assert spread is not None
    return spread


def status_of(kube: Kube, kind: Any, name: str) -> dict[str, Any]:
    objs = kube.objects(kind, NS if kind.namespaced else None)
    return dict(objs.get(name, {}).get("status") or {})


async def add(c: Cluster, node: str, cid: str, ns: str, name: str, uid: str, wait_s: float = 20) -> CceEndpoint:
    """An ADD as cni_gateway makes it, once the pod's record (of this uid) is in cce_pods."""
    pods: Store[PodInfo] = await c.store(PODS)

    async def record() -> bool:
        item = await pods.get(pod_key(node, ns, name))
        return item is not None and item.value.uid == uid

    await until(record, 15, f"{ns}/{name} in cce_pods")
    reply: AllocateReply = await call(c.bus, IPAM_ALLOCATE, AllocateRequest(
        node=node, container_id=cid, pod=PodRef(namespace=ns, name=name, uid=uid), wait_s=wait_s),
        timeout=wait_s + 20)
    await call(c.bus, IPAM_CONFIRM, ConfirmRequest(node=node, container_id=cid, host_veth="vethx"), timeout=5)
    return reply.endpoint


def subnet_of(ep: CceEndpoint) -> str:
    return str(ep.addresses[0].subnet_id)


async def test_a_spread_with_two_subnets_puts_its_pods_there_and_other_pods_outside(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    ids = await subnets(sim_admin, own="10.0.240.0/24", first="10.0.241.0/24", second="10.0.242.0/24")
    await node_object(c, kube, sim_admin, "node-1", annotations={"cce.io/subnet-ids": ids["own"]})
    await registered_and_ready(c, kube, "node-1")
    namespace(kube, NS)
    namespace(kube, "blue", {"team": "blue"})
    # the first subnet has priority and only a /30 range of it (4 addresses); then the second subnet, any address
    create_spread(kube, spread_object(PSTS, "web", [
        {"subnetId": ids["first"], "priority": 10, "ipRanges": ["10.0.241.16/30"]},
        {"subnetId": ids["second"]}], podSelector={"matchLabels": {"app": "web"}}))
    create_spread(kube, spread_object(CPSTS, "blue", [{"subnetId": ids["second"]}],
                                      namespaceSelector={"matchLabels": {"team": "blue"}}))
    assert (await recorded(c, NS, "web")).is_valid and (await recorded(c, "", "blue")).is_valid

    placed = []
    for i in range(5):
        uid = labelled_pod(kube, NS, f"web-{i}", "node-1", {"app": "web"})
        placed.append(await add(c, "node-1", f"c-web-{i}", NS, f"web-{i}", uid))
    in_range = {f"10.0.241.{h}" for h in range(16, 20)}
    assert {str(ep.addresses[0].ip) for ep in placed[:4]} == in_range
    assert [subnet_of(ep) for ep in placed] == [ids["first"]] * 4 + [ids["second"]]
    assert {ep.psts for ep in placed} == {psts_key(NS, "web")}

    plain = await add(c, "node-1", "c-db", NS, "db-0", labelled_pod(kube, NS, "db-0", "node-1", {"app": "db"}))
    blue = await add(c, "node-1", "c-blue", "blue", "api-0", labelled_pod(kube, "blue", "api-0", "node-1", {}))
    assert subnet_of(plain) == ids["own"] and not plain.psts
    assert subnet_of(blue) == ids["second"] and blue.psts == psts_key("", "blue")
    # the spreads' ENIs are their own: the ordinary pod's IP is on none of them
    enis = {e.eni_id: e.subnet_id for e in await c.cloud_enis(str((await c.nrs("node-1")).spec.instance_id))}
    assert enis[str(plain.addresses[0].eni_id)] == ids["own"]
    assert {enis[str(ep.addresses[0].eni_id)] for ep in placed} == {ids["first"], ids["second"]}

    def shown() -> bool:
        rows = {r["subnetId"]: r for r in status_of(kube, PSTS, "web").get("subnets", [])}
        return (rows.get(ids["first"], {}).get("used"), rows.get(ids["first"], {}).get("free"),
                rows.get(ids["second"], {}).get("used")) == (4, 0, 1)

    await until(shown, 20, "the spread's status: 4 used and none free in the first subnet's range, 1 in the second")
    status = status_of(kube, PSTS, "web")
    assert status["valid"] is True and status["conditions"][0]["type"] == "Valid"
    await until(lambda: [r.get("used") for r in status_of(kube, CPSTS, "blue").get("subnets", [])] == [1], 20,
                "the cluster-wide spread's status: 1 used")

    console = Console(record=True, width=200)
    render_status(await status_data(c.bus), console)
    text = console.export_text()
    assert "Subnet spreads (PSTS)" in text and f"{NS}.web" in text and "10.0.241.16/30" in text


async def test_an_invalid_spread_says_why_in_its_status_and_an_event(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    ids = await subnets(sim_admin, good="10.0.243.0/24")
    namespace(kube, NS)
    create_spread(kube, spread_object(PSTS, "broken", [
        {"subnetId": "sbn-nosuchsubnet"}, {"subnetId": ids["good"], "ipRanges": ["10.0.244.0/28"]}],
        podSelector={"matchLabels": {"app": "broken"}}))
    spread = await recorded(c, NS, "broken")
    assert not spread.is_valid and not spread.usable_subnets

    def invalid() -> dict[str, Any] | None:
        valid = next((x for x in status_of(kube, PSTS, "broken").get("conditions", []) if x["type"] == "Valid"), None)
        return valid if valid is not None and valid["status"] == "False" else None

    await until(invalid, 20, "the spread's Valid condition False")
    condition = invalid()
    assert condition is not None and condition["reason"] == "SubnetNotFound"
    assert "sbn-nosuchsubnet: does not exist in the VPC" in condition["message"]
    assert "IP ranges 10.0.244.0/28 are not inside the subnet's CIDR 10.0.243.0/24" in condition["message"]
    await until(lambda: any(e.reason == "InvalidSubnetTopologySpread" and e.type == "Warning"
                            for e in kube.events(PSTS.kind, "broken", NS)), 20, "a Warning event on the spread")
    # the API server itself refuses what its schema can tell: no subnets at all
    with pytest.raises(kclient.ApiException) as refused:
        create_spread(kube, spread_object(PSTS, "empty", []))
    assert refused.value.status == 422

    # fixed: valid again, the condition says so
    kube.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PSTS.plural, "broken", {"spec": {"subnets": [
        {"subnetId": ids["good"], "ipRanges": ["10.0.243.16/28"]}]}})
    await until(lambda: status_of(kube, PSTS, "broken").get("valid") is True, 20, "the spread valid once fixed")


async def test_a_spread_the_node_cannot_satisfy_fails_add_with_a_coded_reason(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    ids = await subnets(sim_admin, own="10.0.245.0/24", far="10.0.246.0/24", near="10.0.247.0/24")
    # one ENI at most: the node's own, so it can never add one in another subnet
    await node_object(c, kube, sim_admin, "node-1", annotations={"cce.io/subnet-ids": ids["own"],
                                                                 "cce.io/max-enis": "1"})
    await registered_and_ready(c, kube, "node-1")
    namespace(kube, NS)
    create_spread(kube, spread_object(PSTS, "far", [{"subnetId": ids["far"]}],
                                      podSelector={"matchLabels": {"app": "far"}}))
    create_spread(kube, spread_object(PSTS, "near", [{"subnetId": ids["near"]}],
                                      podSelector={"matchLabels": {"app": "near"}}))
    await recorded(c, NS, "far")
    await recorded(c, NS, "near")
    uid = labelled_pod(kube, NS, "far-0", "node-1", {"app": "far"})
    with pytest.raises(CceError) as err:
        await add(c, "node-1", "c-far", NS, "far-0", uid)
    assert err.value.reason is ErrorReason.SUBNET_NOT_IN_ZONE and not err.value.retryable
    assert f"{ids['far']} (zoneB)" in err.value.message
    uid = labelled_pod(kube, NS, "near-0", "node-1", {"app": "near"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CceError) as err:
        await add(c, "node-1", "c-near", NS, "near-0", uid, wait_s=30)
    assert err.value.reason is ErrorReason.PSTS_SUBNET_EXHAUSTED and ids["near"] in err.value.message
    assert loop.time() - started < 25  # known at once: no waiting for a refill that cannot come
    pool = await c.pool("node-1")
    assert pool is not None and not pool.subnet_waiting and not any(k.endswith("c-near.eth0") for k in
                                                                    pool.allocated.values())


@NEEDS_ROOT
async def test_a_failed_add_for_a_spread_is_an_event_on_the_pod(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin, tmp_path: Path) -> None:  # noqa: F811
    c, kube = plane
    ids = await subnets(sim_admin, own="10.0.248.0/24", far="10.0.249.0/24")
    await node_object(c, kube, sim_admin, "node-1", annotations={"cce.io/subnet-ids": ids["own"]})
    await until(lambda: c.nrs("node-1"), 20, "node-1 registered")
    namespace(kube, NS)
    create_spread(kube, spread_object(PSTS, "far", [{"subnetId": ids["far"]}],
                                      podSelector={"matchLabels": {"app": "far"}}))
    await recorded(c, NS, "far")
    uid = labelled_pod(kube, NS, "far-1", "node-1", {"app": "far"})
    netns = f"cce-test-{tmp_path.name[-8:]}"
    await asyncio.to_thread(subprocess.run, ["ip", "netns", "add", netns], check=True)
    gateway = await asyncio.to_thread(start_gateway, c, tmp_path, "node-1")
    try:
        await until(lambda: (tmp_path / "cni.sock").exists(), 20, "the gateway's socket")
        reply = await cni_add(tmp_path / "cni.sock", f"/run/netns/{netns}", "c-far-1",
                              f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME=far-1;K8S_POD_UID={uid}")
        assert not reply["ok"] and reply["error"]["msg"].startswith("SubnetNotInZone"), reply

        def event() -> Any:
            return next((e for e in kube.events("Pod", "far-1", NS) if e.reason == "SubnetNotInZone"), None)

        await until(event, 20, f"a SubnetNotInZone event on {NS}/far-1")
        assert event().type == "Warning" and event().involved_object.uid == uid
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 15)
        await asyncio.to_thread(subprocess.run, ["ip", "netns", "del", netns], check=False)

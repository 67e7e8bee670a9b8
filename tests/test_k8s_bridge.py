"""Integration tier with a real Kubernetes API server: k8s_bridge (two replicas, least-privilege identity) between
the API server and the control plane (ipam, eni_manager as processes, real nats-server, the simulated VPC over
HTTP). Node and Pod objects are written as kubelet and the scheduler would; what the network does is read from the
bus, the cloud and the API server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from chassis.bus import Bus
from chassis.kv import Store
from chassis.rpc import call
from schemas.messages import AllocateReply, AllocateRequest, ConfirmRequest, PodRef
from schemas.records import CceEndpoint, PodInfo
from schemas.subjects import ENDPOINTS, IPAM_ALLOCATE, IPAM_CONFIRM, PODS, endpoint_key, pod_key
from services.k8s_bridge.projection import CEP, GROUP, NRS, SBN, VERSION
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane, until
from tests.kube import Kube
from tests.privileged import NEEDS_ROOT

pytestmark = pytest.mark.integration

BRIDGES = ("bridge-1", "bridge-2")
ZONE_LABELS = {"topology.kubernetes.io/zone": "zoneA", "node.kubernetes.io/instance-type": "BCC"}


def bridge_env(kube: Kube) -> dict[str, str]:
    return {"CCE_KUBECONFIG": str(kube.bridge_kubeconfig), "CCE_NODE_GONE_GRACE_S": "1", "CCE_POD_GONE_GRACE_S": "1",
            "CCE_GC_PERIOD_S": "0.3", "CCE_PROJECTION_INTERVAL_S": "0.2", "CCE_INSTANCE_RECHECK_S": "2",
            "CCE_EVENT_REFILL_S": "1", "CCE_LOG_LEVEL": "info"}


@pytest.fixture
async def plane(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path,
                kube: Kube) -> AsyncIterator[tuple[Cluster, Kube]]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path, ipam=1, eni_managers=1,
                                 service_env={"k8s_bridge": bridge_env(kube)}) as c:
        for sid in BRIDGES:
            c.start("k8s_bridge", sid)
        await c.wait_started(*BRIDGES)
        await until(lambda: c.leader("k8s_bridge"), 15, "a k8s_bridge leader")
        yield c, kube


async def node_object(c: Cluster, kube: Kube, admin: SimAdmin, name: str, **extra: Any) -> dict[str, Any]:
    inst = await admin.create_instance(name=name, cpus=8, memory_mib=32768)
    kube.create_node(name, f"cce://{inst['id']}", labels={**ZONE_LABELS, **extra.pop("labels", {})}, **extra)
    return inst


async def add_like_the_gateway(c: Cluster, node: str, cid: str, namespace: str, pod: str,
                               uid: str) -> CceEndpoint:
    """What cni_gateway does for an ADD, without a node datapath: allocate, then confirm."""
    reply: AllocateReply = await call(c.bus, IPAM_ALLOCATE, AllocateRequest(
        node=node, container_id=cid, pod=PodRef(namespace=namespace, name=pod, uid=uid), wait_s=20), timeout=30)
    await call(c.bus, IPAM_CONFIRM, ConfirmRequest(node=node, container_id=cid, host_veth="vethx"), timeout=5)
    return reply.endpoint


def cr_status(kube: Kube, kind: Any, name: str, namespace: str = "") -> dict[str, Any] | None:
    objs = kube.objects(kind, namespace or None)
    return objs[name].get("status") if name in objs else None


async def registered_and_ready(c: Cluster, kube: Kube, node: str) -> None:
    async def ready() -> bool:
        nrs = await c.nrs(node)
        status = cr_status(kube, NRS, node)
        return bool(nrs and nrs.status.ready and status and status.get("ready") and status["ips"]["free"] >= 10)

    await until(ready, 30, f"{node} registered, its pool filled and its nrs showing it")


# ---- nodes ---------------------------------------------------------------------------------------------------------


async def test_node_objects_register_their_nodes_and_nrs_shows_the_filled_pools(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:
    c, kube = plane
    insts = [await node_object(c, kube, sim_admin, f"node-{i}") for i in (1, 2)]
    for i, inst in enumerate(insts, 1):
        await registered_and_ready(c, kube, f"node-{i}")
        nrs = await c.nrs(f"node-{i}")
        assert nrs is not None and nrs.spec.instance_id == inst["id"] and nrs.spec.zone == "zoneA"
        assert nrs.spec.max_pods == 110 and nrs.spec.cpus == 8 and nrs.spec.memory_mib == 32768
    obj = kube.objects(NRS)["node-1"]
    assert obj["spec"]["instanceId"] == insts[0]["id"] and obj["spec"]["mode"] == "vpc-eni"
    assert obj["status"]["eniCount"] == 1 and obj["status"]["enis"][0]["ips"] >= 10
    await until(lambda: getattr(kube.node_condition("node-1", "CCENetworkReady"), "status", "") == "True", 15,
                "CCENetworkReady=True on node-1")
    await until(lambda: any(e.reason == "Registered" for e in kube.events("Node", "node-1")), 15,
                "a Registered event on node-1")
    subnets = kube.objects(SBN)
    assert subnets and all(s["spec"]["zone"] and "availableIPs" in s["status"] for s in subnets.values())


async def test_node_overrides_come_from_labels_and_annotations(plane: tuple[Cluster, Kube],
                                                                sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1", pods="64",
                      labels={"cce.io/network-mode": "vpc-eni", "cce.io/allow-exclusive-eni": "true"},
                      annotations={"cce.io/min-allocate": "4", "cce.io/max-enis": "2"})

    async def registered() -> bool:  # the capacity comes in a second write (the status), as a kubelet's may
        nrs = await c.nrs("node-1")
        return nrs is not None and nrs.spec.pool.min_allocate == 4 and nrs.spec.max_pods == 64

    await until(registered, 20, "node-1 registered with its overrides and its capacity's max pods")
    nrs = await c.nrs("node-1")
    assert nrs is not None
    assert (nrs.spec.max_pods, nrs.spec.max_enis, nrs.spec.allow_exclusive) == (64, 2, True)
    kube.core.patch_node("node-1", {"metadata": {"annotations": {"cce.io/min-allocate": "6"}}})

    async def updated() -> bool:
        nrs = await c.nrs("node-1")
        return nrs is not None and nrs.spec.pool.min_allocate == 6

    await until(updated, 20, "node-1's registration to follow its annotation")


@pytest.mark.parametrize(("provider_id", "annotations", "reason"), [
    ("aws:///us-east-1a/i-0abc", {}, "InvalidProviderID"),
    ("", {}, "InvalidProviderID"),
    ("cce://i-nosuchinstance", {}, "InstanceNotFound"),
    (None, {"cce.io/max-pods": "lots"}, "InvalidNodeConfig"),
], ids=["foreign provider", "no providerID", "unknown instance", "bad annotation"])
async def test_a_node_that_cannot_be_registered_says_why_and_nothing_else_happens(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin, provider_id: str | None, annotations: dict[str, str],
        reason: str) -> None:
    c, kube = plane
    inst = await sim_admin.create_instance(name="node-9")
    kube.create_node("node-9", provider_id if provider_id is not None else f"cce://{inst['id']}",
                     labels=ZONE_LABELS, annotations=annotations)
    await until(lambda: getattr(kube.node_condition("node-9", "CCENetworkReady"), "reason", "") == reason, 20,
                f"CCENetworkReady=False/{reason} on node-9")
    await until(lambda: any(e.reason == reason and e.type == "Warning" for e in kube.events("Node", "node-9")), 10,
                f"a {reason} event on node-9")
    assert await c.nrs("node-9") is None
    assert "node-9" not in kube.objects(NRS)
    assert not await c.cloud_enis(str(inst["id"]))


async def test_a_deleted_node_leaves_the_bus_and_its_enis_leave_the_cloud(plane: tuple[Cluster, Kube],
                                                                          sim_admin: SimAdmin) -> None:
    c, kube = plane
    inst = await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    assert await c.cloud_enis(str(inst["id"]))
    kube.delete_node("node-1")

    async def gone() -> bool:
        return await c.nrs("node-1") is None and not await c.cloud_enis(str(inst["id"]))

    await until(gone, 30, "node-1's record and ENIs gone")
    await until(lambda: "node-1" not in kube.objects(NRS), 10, "node-1's nrs deleted")


async def test_a_node_renamed_on_its_instance_waits_for_the_old_name_to_leave(plane: tuple[Cluster, Kube],
                                                                               sim_admin: SimAdmin) -> None:
    """One instance is one node: the new name says why it waits (InstanceInUse) and leaves the old one's ENIs
    alone; once the old Node object is gone, the new name registers."""
    c, kube = plane
    inst = await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    enis = {e.eni_id for e in await c.cloud_enis(str(inst["id"]))}
    kube.create_node("node-1b", f"cce://{inst['id']}", labels=ZONE_LABELS)
    await until(lambda: getattr(kube.node_condition("node-1b", "CCENetworkReady"), "reason", "") == "InstanceInUse",
                20, "CCENetworkReady=False/InstanceInUse on node-1b")
    event = next(e for e in kube.events("Node", "node-1b") if e.reason == "InstanceInUse")
    assert f"instance {inst['id']} is registered as node node-1" in event.message and event.type == "Warning"
    assert await c.nrs("node-1b") is None
    assert {e.eni_id for e in await c.cloud_enis(str(inst["id"]))} >= enis  # node-1's ENIs untouched
    kube.delete_node("node-1")
    await until(lambda: c.nrs("node-1b"), 45, "node-1b registered once node-1 left")
    await registered_and_ready(c, kube, "node-1b")


async def test_a_node_deleted_and_back_within_the_grace_keeps_its_pool(plane: tuple[Cluster, Kube],
                                                                       sim_admin: SimAdmin) -> None:
    c, kube = plane
    c.service_env["k8s_bridge"]["CCE_NODE_GONE_GRACE_S"] = "30"
    for sid in BRIDGES:  # the same bridges with a long grace
        c.kill(sid)
        c.start("k8s_bridge", sid)
    inst = await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    enis = {e.eni_id for e in await c.cloud_enis(str(inst["id"]))}
    kube.delete_node("node-1")
    await until(lambda: not any(n.metadata.name == "node-1" for n in kube.core.list_node().items), 5, "the delete")
    kube.create_node("node-1", f"cce://{inst['id']}", labels=ZONE_LABELS)
    await until(lambda: getattr(kube.node_condition("node-1", "CCENetworkReady"), "status", "") == "True", 20,
                "node-1 ready again")
    nrs = await c.nrs("node-1")
    assert nrs is not None and not nrs.status.removing
    assert {e.eni_id for e in await c.cloud_enis(str(inst["id"]))} == enis


# ---- pods ----------------------------------------------------------------------------------------------------------


async def test_a_pod_and_its_add_show_as_a_cep_and_the_pods_deletion_releases_it(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    uid = kube.create_pod("team-a", "web-1", "node-1", annotations={"cce.io/exclusive-eni": "false", "other": "x"})
    pods: Store[PodInfo] = await c.store(PODS)

    async def pod_record() -> PodInfo | None:
        item = await pods.get(pod_key("node-1", "team-a", "web-1"))
        return item.value if item else None

    await until(pod_record, 10, "team-a/web-1 in cce_pods")
    info = await pod_record()
    assert info is not None and info.uid == uid and info.annotations == {"cce.io/exclusive-eni": "false"}
    ep = await add_like_the_gateway(c, "node-1", "c-web-1", "team-a", "web-1", uid)
    ip = str(ep.addresses[0].ip)

    def cep_ready() -> bool:
        status = cr_status(kube, CEP, "web-1", "team-a")
        return bool(status and status.get("ip") == ip and status.get("state") == "ready")

    await until(cep_ready, 15, "the cep of team-a/web-1 with its IP, ready")
    obj = kube.objects(CEP, "team-a")["web-1"]
    assert obj["spec"]["node"] == "node-1" and obj["status"]["eniId"] == ep.addresses[0].eni_id
    kube.delete_pod("team-a", "web-1")
    endpoints: Store[CceEndpoint] = await c.store(ENDPOINTS)

    async def released() -> bool:
        return await endpoints.get(endpoint_key("node-1", "c-web-1", "eth0")) is None and not await pod_record()

    await until(released, 20, "the endpoint released and the pod record gone after the grace")
    await until(lambda: "web-1" not in kube.objects(CEP, "team-a"), 10, "the cep gone")


async def test_an_endpoint_of_a_recreated_pod_is_released_but_the_new_pods_is_kept(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    old_uid = kube.create_pod("team-a", "db-0", "node-1")
    await add_like_the_gateway(c, "node-1", "c-old", "team-a", "db-0", old_uid)
    kube.delete_pod("team-a", "db-0")  # re-created at once, as a StatefulSet does, before any DEL came
    new_uid = kube.create_pod("team-a", "db-0", "node-1")
    new = await add_like_the_gateway(c, "node-1", "c-new", "team-a", "db-0", new_uid)
    endpoints: Store[CceEndpoint] = await c.store(ENDPOINTS)

    async def only_the_new_one() -> bool:
        return await endpoints.get(endpoint_key("node-1", "c-old", "eth0")) is None

    await until(only_the_new_one, 20, "the old sandbox's endpoint released")
    assert await endpoints.get(endpoint_key("node-1", "c-new", "eth0")) is not None
    await until(lambda: (cr_status(kube, CEP, "db-0", "team-a") or {}).get("ip") == str(new.addresses[0].ip), 10,
                "the cep showing the new sandbox")


async def test_a_cep_deleted_or_edited_by_hand_is_put_back(plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    uid = kube.create_pod("team-a", "web-1", "node-1")
    ep = await add_like_the_gateway(c, "node-1", "c-web-1", "team-a", "web-1", uid)
    ip = str(ep.addresses[0].ip)
    await until(lambda: (cr_status(kube, CEP, "web-1", "team-a") or {}).get("ip") == ip, 15, "the cep")
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, "team-a", CEP.plural, "web-1")
    await until(lambda: (cr_status(kube, CEP, "web-1", "team-a") or {}).get("ip") == ip, 15, "the cep re-created")
    kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, "team-a", CEP.plural, "web-1",
                                                      {"status": {"ip": "192.0.2.1", "extra": "hand-made"}})
    kube.custom.patch_namespaced_custom_object(GROUP, VERSION, "team-a", CEP.plural, "web-1",
                                               {"spec": {"node": "node-77"}})

    def corrected() -> bool:
        obj = kube.objects(CEP, "team-a").get("web-1") or {}
        return (obj.get("status", {}).get("ip") == ip and "extra" not in obj.get("status", {})
                and obj.get("spec", {}).get("node") == "node-1")

    await until(corrected, 15, "the hand edits undone")
    kube.custom.delete_cluster_custom_object(GROUP, VERSION, NRS.plural, "node-1")
    await until(lambda: "node-1" in kube.objects(NRS), 15, "the nrs re-created")


# ---- failures where a user looks ----------------------------------------------------------------------------------


@NEEDS_ROOT
async def test_an_add_on_a_node_whose_subnet_is_full_is_an_event_on_the_pod(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin, tmp_path: Path) -> None:
    c, kube = plane
    subnet = await sim_admin.create_subnet(zone="zoneA", cidr="10.0.250.0/28", name="tiny")
    await sim_admin.reserve(str(subnet["subnetId"]), cidr="10.0.250.0/28")  # every address taken
    await node_object(c, kube, sim_admin, "node-1", annotations={"cce.io/subnet-ids": str(subnet["subnetId"])})
    await until(lambda: c.nrs("node-1"), 20, "node-1 registered")
    uid = kube.create_pod("team-a", "web-1", "node-1")
    netns = f"cce-test-{tmp_path.name[-8:]}"
    await asyncio.to_thread(subprocess.run, ["ip", "netns", "add", netns], check=True)
    gateway = await asyncio.to_thread(start_gateway, c, tmp_path, "node-1")
    await until(lambda: (tmp_path / "cni.sock").exists(), 20, "the gateway's socket")
    try:
        reply = await cni_add(tmp_path / "cni.sock", f"/run/netns/{netns}", "c-web-1",
                              f"K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-1;K8S_POD_UID={uid}")
        assert not reply["ok"] and reply["error"]["msg"].startswith("SubnetNoMoreIP"), reply

        def event() -> Any:
            return next((e for e in kube.events("Pod", "web-1", "team-a") if e.reason == "SubnetNoMoreIP"), None)

        await until(event, 20, "a SubnetNoMoreIP event on team-a/web-1")
        found = event()
        assert found.type == "Warning" and found.involved_object.uid == uid
        await until(lambda: any(e.reason == "SubnetNoMoreIP" for e in kube.events("Node", "node-1")), 10,
                    "the node-level SubnetNoMoreIP event on node-1")
        await cni_add(tmp_path / "cni.sock", f"/run/netns/{netns}", "c-web-1",
                      f"K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-1;K8S_POD_UID={uid}")
        await until(lambda: (event().count or 1) >= 2, 20, "the second failure counted on the same event")
        assert sum(e.reason == "SubnetNoMoreIP" for e in kube.events("Pod", "web-1", "team-a")) == 1
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 15)
        await asyncio.to_thread(subprocess.run, ["ip", "netns", "del", netns], check=False)


def start_gateway(c: Cluster, tmp_path: Path, node: str) -> subprocess.Popen[bytes]:
    """A real cni_gateway for `node` (no datapath: the tests using it fail before setup)."""
    env = {**c.env("gw-1"), "CCE_NODE": node, "CCE_CNI_SOCKET": str(tmp_path / "cni.sock"),
           "CCE_CNI_STATE_DIR": str(tmp_path / "gw-state"), "CCE_ALLOCATE_WAIT_S": "1", "CCE_POD_INFO_WAIT_S": "2"}
    with open(tmp_path / "gw-1.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.cni_gateway"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def cni_add(socket: Path, netns: str, cid: str, args: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(socket))
    request = {"command": "ADD", "env": {"CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                                         "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin"},
               "config": {"cniVersion": "1.0.0", "name": "cce", "type": "cce"}}
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    reply: dict[str, Any] = json.loads(line)
    return reply


# ---- the bridge itself under trouble -------------------------------------------------------------------------------


async def test_the_bridge_resumes_after_the_api_server_restarts(plane: tuple[Cluster, Kube],
                                                               sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    uid1 = kube.create_pod("team-a", "web-1", "node-1")
    ep1 = await add_like_the_gateway(c, "node-1", "c-1", "team-a", "web-1", uid1)
    await until(lambda: cr_status(kube, CEP, "web-1", "team-a"), 15, "web-1's cep")
    registered_events = [e.count or 1 for e in kube.events("Node", "node-1") if e.reason == "Registered"]
    kube.server.stop_apiserver()
    try:
        # the bus moves on while Kubernetes is away: a pod of the node is served, nothing may be judged gone
        ep2 = await add_like_the_gateway(c, "node-1", "c-2", "team-a", "web-2", "")
    finally:
        # not from a worker thread: the API server dies with the thread that started it (PR_SET_PDEATHSIG)
        kube.server.restart_apiserver()
    uid3 = kube.create_pod("team-a", "web-3", "node-1")
    pods: Store[PodInfo] = await c.store(PODS)
    await until(lambda: pods.get(pod_key("node-1", "team-a", "web-3")), 30, "web-3 in cce_pods after the restart")
    await until(lambda: (cr_status(kube, CEP, "web-2", "team-a") or {}).get("ip") == str(ep2.addresses[0].ip), 30,
                "the cep of the endpoint made while the API server was down")
    assert (cr_status(kube, CEP, "web-1", "team-a") or {}).get("ip") == str(ep1.addresses[0].ip)
    assert sorted(kube.objects(CEP, "team-a")) == ["web-1", "web-2"]
    assert set(kube.objects(NRS)) == {"node-1"}
    endpoints: Store[CceEndpoint] = await c.store(ENDPOINTS)
    assert set(await endpoints.keys()) == {endpoint_key("node-1", "c-1", "eth0"), endpoint_key("node-1", "c-2", "eth0")}
    assert [e.count or 1 for e in kube.events("Node", "node-1") if e.reason == "Registered"] == registered_events
    assert uid3


async def test_the_standby_bridge_carries_on_when_the_leader_is_killed(plane: tuple[Cluster, Kube],
                                                                       sim_admin: SimAdmin) -> None:
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    leader = await c.leader("k8s_bridge")
    assert leader in BRIDGES
    c.kill(leader)
    await node_object(c, kube, sim_admin, "node-2")
    await registered_and_ready(c, kube, "node-2")
    assert await c.leader("k8s_bridge") == next(b for b in BRIDGES if b != leader)
    uid = kube.create_pod("team-b", "api-1", "node-2")
    ep = await add_like_the_gateway(c, "node-2", "c-api-1", "team-b", "api-1", uid)
    await until(lambda: (cr_status(kube, CEP, "api-1", "team-b") or {}).get("ip") == str(ep.addresses[0].ip), 15,
                "the cep written by the new leader")


async def test_the_bridge_writes_nothing_it_may_not(kube: Kube) -> None:
    """Its identity may read Nodes but not delete them (of a Node it may change only its taint: see
    test_node_readiness.py); may not touch Secrets, Pods or other objects."""
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(str(kube.bridge_kubeconfig))
    core = kclient.CoreV1Api(api)
    try:
        core.list_node()
        for forbidden in (lambda: core.delete_node("x"),
                          lambda: core.list_secret_for_all_namespaces(),
                          lambda: core.delete_namespaced_pod("p", "default")):
            with pytest.raises(ApiException) as err:
                forbidden()
            assert err.value.status == 403
    finally:
        api.close()

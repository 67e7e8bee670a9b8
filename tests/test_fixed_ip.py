"""Fixed IPs of StatefulSet pods against a real API server and the simulated VPC (k8s_bridge, ipam, eni_manager as
processes): the pod's facts come from its object (owner, annotations, its namespace's annotations) through
`cce_pods`, the gateway's reading of them makes the allocation ask for a fixed IP, and the pod gets the same IP when
deleted and re-created, on its node and on another (the cloud moves the IP between the nodes' ENIs); the IP is
released once the pod has been gone for its TTL. CCEEndpoints show it all."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as kclient

from chassis.kv import Store
from chassis.rpc import call
from schemas.errors import CceError, ErrorReason
from schemas.messages import AllocateReply, AllocateRequest, ConfirmRequest, PodRef
from schemas.records import AllocationType, FixedIp, NodePool, PodInfo, ReleaseStrategy
from schemas.subjects import FIXED_IPS, IPAM_ALLOCATE, IPAM_CONFIRM, PODS, POOLS, fixed_ip_key, pod_key
from services.cni_gateway.fixed_ip import fixed_ip_of
from services.k8s_bridge.projection import CEP, ttl_text
from services.vpc_sim.admin import SimAdmin
from tests.cluster import Cluster, until
from tests.kube import Kube
from tests.test_k8s_bridge import cr_status, node_object, plane, registered_and_ready  # noqa: F401  (plane: a fixture)

pytestmark = pytest.mark.integration

NS = "team-f"


def statefulset(kube: Kube, name: str) -> Any:
    kube.ensure_namespace(NS)
    apps = kclient.AppsV1Api(kube.api)
    body = kclient.V1StatefulSet(
        metadata=kclient.V1ObjectMeta(name=name),
        spec=kclient.V1StatefulSetSpec(
            service_name=name, selector=kclient.V1LabelSelector(match_labels={"app": name}),
            template=kclient.V1PodTemplateSpec(
                metadata=kclient.V1ObjectMeta(labels={"app": name}),
                spec=kclient.V1PodSpec(containers=[kclient.V1Container(name="db", image="registry.local/db:1")]))))
    try:
        return apps.create_namespaced_stateful_set(NS, body)
    except kclient.ApiException as err:  # an earlier test's (the API server outlives the tests)
        if err.status != 409:
            raise
        return apps.read_namespaced_stateful_set(name, NS)


def sts_pod(kube: Kube, sts: Any, name: str, node: str, annotations: dict[str, str]) -> str:
    """A pod of the StatefulSet, as its controller and the scheduler would make it."""
    owner = kclient.V1OwnerReference(api_version="apps/v1", kind="StatefulSet", name=sts.metadata.name,
                                     uid=sts.metadata.uid, controller=True)
    body = kclient.V1Pod(metadata=kclient.V1ObjectMeta(name=name, annotations=annotations, owner_references=[owner],
                                                       labels={"app": sts.metadata.name}),
                         spec=kclient.V1PodSpec(node_name=node, containers=[
                             kclient.V1Container(name="db", image="registry.local/db:1")]))
    return str(kube.core.create_namespaced_pod(NS, body).metadata.uid)


async def add_as_the_gateway(c: Cluster, node: str, cid: str, name: str, uid: str) -> AllocateReply:
    """What cni_gateway does for an ADD: the pod's record from cce_pods (waiting for the one of this uid), its
    fixed-IP request read from it, allocate, confirm."""
    pods: Store[PodInfo] = await c.store(PODS)

    async def record() -> PodInfo | None:
        item = await pods.get(pod_key(node, NS, name))
        return item.value if item is not None and item.value.uid == uid else None

    await until(record, 15, f"{NS}/{name} ({uid}) in cce_pods")
    info = await record()
    reply: AllocateReply = await call(c.bus, IPAM_ALLOCATE, AllocateRequest(
        node=node, container_id=cid, pod=PodRef(namespace=NS, name=name, uid=uid), wait_s=20,
        fixed_ip=fixed_ip_of(info)), timeout=40)
    await call(c.bus, IPAM_CONFIRM, ConfirmRequest(node=node, container_id=cid, host_veth="vethx"), timeout=5)
    return reply


async def reservation(c: Cluster, name: str) -> FixedIp | None:
    store: Store[FixedIp] = await c.store(FIXED_IPS)
    item = await store.get(fixed_ip_key(NS, name))
    return item.value if item else None


async def gone_and_idle(c: Cluster, kube: Kube, name: str) -> FixedIp:
    kube.delete_pod(NS, name)

    async def idle() -> FixedIp | None:
        r = await reservation(c, name)
        return r if r is not None and not r.endpoint and r.idle_since is not None else None

    await until(idle, 20, f"{NS}/{name}'s endpoint released and its fixed IP idle")
    r = await idle()
    assert r is not None
    return r


async def test_a_statefulset_pod_keeps_its_ip_across_re_creation_and_nodes_until_the_ttl(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    insts = {n: await node_object(c, kube, sim_admin, n) for n in ("node-1", "node-2")}
    for n in insts:
        await registered_and_ready(c, kube, n)
    sts = statefulset(kube, "db")
    # a TTL no loaded machine outlasts while the pod moves; the last re-creation asks for 4 s, to see it expire
    fixed = {"cce.io/fixed-ip": "true", "cce.io/fixed-ip-ttl": "600s"}
    short = {**fixed, "cce.io/fixed-ip-ttl": "4s"}

    first = await add_as_the_gateway(c, "node-1", "c-1", "db-0", sts_pod(kube, sts, "db-0", "node-1", fixed))
    ep = first.endpoint
    ip = str(ep.addresses[0].ip)
    assert (ep.allocation_type, ep.release_strategy, ep.release_ttl_s) == (AllocationType.FIXED,
                                                                            ReleaseStrategy.TTL, 600.0)
    r = await reservation(c, "db-0")
    assert r is not None and (str(r.ip), r.node, r.owner) == (ip, "node-1", "StatefulSet/db")
    await until(lambda: (cr_status(kube, CEP, "db-0", NS) or {}).get("allocationType") == "Fixed", 15,
                "the cep of db-0 saying Fixed")
    assert cr_status(kube, CEP, "db-0", NS)["releaseTTL"] == ttl_text(600.0)  # type: ignore[index]

    # an elastic pod beside it, to show it is not every pod
    other = await add_as_the_gateway(c, "node-1", "c-web", "web-0", sts_pod(kube, sts, "web-0", "node-1", {}))
    assert other.endpoint.allocation_type is AllocationType.ELASTIC and str(other.endpoint.addresses[0].ip) != ip

    # deleted and re-created on the same node: the same IP; the cep shows it reserved meanwhile
    await gone_and_idle(c, kube, "db-0")
    await until(lambda: (cr_status(kube, CEP, "db-0", NS) or {}).get("state") == "reserved", 15, "cep reserved")
    assert cr_status(kube, CEP, "db-0", NS)["ip"] == ip  # type: ignore[index]
    again = await add_as_the_gateway(c, "node-1", "c-2", "db-0", sts_pod(kube, sts, "db-0", "node-1", fixed))
    assert str(again.endpoint.addresses[0].ip) == ip

    # deleted and re-created on another node: the IP moves between the nodes' ENIs in the cloud
    await gone_and_idle(c, kube, "db-0")
    moved = await add_as_the_gateway(c, "node-2", "c-3", "db-0", sts_pod(kube, sts, "db-0", "node-2", fixed))
    assert str(moved.endpoint.addresses[0].ip) == ip and moved.endpoint.node == "node-2"
    on = {n: {str(p) for e in await c.cloud_enis(str(inst["id"])) for p in e.secondary_ips}
          for n, inst in insts.items()}
    assert ip in on["node-2"] and ip not in on["node-1"]
    r = await reservation(c, "db-0")
    assert r is not None and r.node == "node-2" and r.endpoint
    pool1 = await c.pool("node-1")
    assert pool1 is not None and ip not in pool1.allocated

    # back on the same node asking for a 4 s TTL, then gone for it: released, the cep goes, the IP is the pool's again
    await gone_and_idle(c, kube, "db-0")
    last = await add_as_the_gateway(c, "node-2", "c-3b", "db-0", sts_pod(kube, sts, "db-0", "node-2", short))
    assert str(last.endpoint.addresses[0].ip) == ip and last.endpoint.release_ttl_s == 4.0
    await gone_and_idle(c, kube, "db-0")

    async def released() -> bool:
        pool = await c.pool("node-2")
        return await reservation(c, "db-0") is None and pool is not None and pool.allocated.get(ip) is None

    await until(released, 20, "the fixed IP released after its 4 s TTL")
    await until(lambda: "db-0" not in kube.objects(CEP, NS), 15, "db-0's cep gone")
    fresh = await add_as_the_gateway(c, "node-2", "c-4", "db-0", sts_pod(kube, sts, "db-0", "node-2", short))
    assert fresh.endpoint.allocation_type is AllocationType.FIXED  # a new reservation, from scratch


async def test_a_fixed_ip_held_by_another_pod_is_refused_and_nothing_is_lost(
        plane: tuple[Cluster, Kube], sim_admin: SimAdmin) -> None:  # noqa: F811
    c, kube = plane
    await node_object(c, kube, sim_admin, "node-1")
    await registered_and_ready(c, kube, "node-1")
    sts = statefulset(kube, "db")
    fixed = {"cce.io/fixed-ip": "true", "cce.io/fixed-ip-ttl": "Never"}
    first = await add_as_the_gateway(c, "node-1", "c-1", "db-0", sts_pod(kube, sts, "db-0", "node-1", fixed))
    ip = str(first.endpoint.addresses[0].ip)
    r = await gone_and_idle(c, kube, "db-0")
    assert r.release_strategy is ReleaseStrategy.NEVER and r.release_at is None
    # meanwhile the IP went to another pod (say, by an operator's hand on the pool)
    pools: Store[NodePool] = await c.store(POOLS)
    await pools.mutate("node-1", lambda p: p.model_copy(update={"allocated": {**(p.allocated if p else {}),
                                                                               ip: "node-1.intruder.eth0"}}))
    uid = sts_pod(kube, sts, "db-0", "node-1", fixed)
    with pytest.raises(CceError) as err:
        await add_as_the_gateway(c, "node-1", "c-2", "db-0", uid)
    assert err.value.reason is ErrorReason.IP_IN_USE and "node-1.intruder.eth0" in err.value.message
    kept = await reservation(c, "db-0")
    assert kept is not None and str(kept.ip) == ip  # the reservation stays
    pool = await c.pool("node-1")
    assert pool is not None and pool.allocated[ip] == "node-1.intruder.eth0"  # and so does the other claim

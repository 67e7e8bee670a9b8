"""Unit tier: the pure parts of k8s_bridge — what a Node object says, which endpoints lost their pod, the projections
and their patches, which bus events become Kubernetes Events, and the keyed work queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from cloud.port import CloudInstance
from schemas.base import InstanceType, NetworkMode
from schemas.errors import ErrorReason
from schemas.events import Event, EventKind, Severity
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    EndpointState,
    NetResourceSet,
    NodeSpec,
    NodeStatus,
    PoolSettings,
    Subnet,
)
from services.k8s_bridge import nodefacts, projection
from services.k8s_bridge.kubeevents import InvolvedObject, SpamFilter, from_bus_event
from services.k8s_bridge.manifests import stale
from services.k8s_bridge.nodefacts import Defaults, NodeProblem, NodeView, instance_id_of, read_node, registration
from services.k8s_bridge.podfacts import PodRef, gone_endpoints, pod_info
from services.k8s_bridge.workqueue import WorkQueue
from tests.cluster import until as until_for

pytestmark = pytest.mark.unit


async def until(predicate: Any) -> None:
    await until_for(predicate, 5.0, "the queue", every=0.005)
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
INSTANCE = CloudInstance(instance_id="i-abc", name="n", instance_type=InstanceType.BBC, zone="zoneB", cpus=4,
                         memory_mib=8192, vpc_id="vpc-1", subnet_id="sbn-1", primary_ip="10.0.0.5",
                         primary_mac="fa:16:3e:00:00:01")


def node(provider_id: str = "cce://i-abc", labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None, capacity: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "node-1", "uid": "u1", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"providerID": provider_id},
            "status": {"capacity": capacity if capacity is not None else {"cpu": "8", "memory": "32Gi",
                                                                            "pods": "110"}}}


# ---- nodes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider_id", "instance"), [
    ("cce://i-abc", "i-abc"), ("bce://i-abc", "i-abc"), ("CCE://i-abc", "i-abc"),
    ("cce:///bj/zoneA/i-abc", "i-abc"), ("cce://i-abc/", "i-abc"),
])
def test_accepted_provider_ids_name_the_instance(provider_id: str, instance: str) -> None:
    assert instance_id_of(provider_id) == instance


@pytest.mark.parametrize(("provider_id", "words"), [
    ("", "empty"), ("i-abc", "no scheme"), ("aws:///us-east-1a/i-0abc", "not a Baidu instance"),
    ("cce://", "no valid instance id"), ("cce://i abc", "no valid instance id"),
])
def test_malformed_provider_ids_are_refused_with_a_reason(provider_id: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        instance_id_of(provider_id)
    problem = read_node(node(provider_id))
    assert isinstance(problem, NodeProblem) and problem.reason == nodefacts.INVALID_PROVIDER_ID


def test_a_plain_node_registers_with_the_labels_capacity_and_the_clouds_word() -> None:
    view = read_node(node(labels={"topology.kubernetes.io/zone": "zoneA",
                                  "node.kubernetes.io/instance-type": "bcc.g5.c8m32"}))
    assert isinstance(view, NodeView)
    req = registration(view, INSTANCE, Defaults())
    assert (req.node, req.instance_id, req.instance_type, req.zone) == ("node-1", "i-abc", InstanceType.BCC, "zoneA")
    assert (req.cpus, req.memory_mib, req.max_pods, req.mode) == (8, 32768, 110, NetworkMode.VPC_ENI)
    assert (str(req.primary_ip), req.primary_mac) == ("10.0.0.5", "fa:16:3e:00:00:01")


def test_what_the_node_does_not_say_comes_from_the_cloud_then_the_cluster_defaults() -> None:
    view = read_node(node(capacity={}))
    assert isinstance(view, NodeView)
    defaults = Defaults(mode=NetworkMode.VPC_ROUTE, max_pods=64, subnet_ids=("sbn-2",),
                        pool=PoolSettings(pre_allocate=5))
    req = registration(view, INSTANCE, defaults)
    assert (req.instance_type, req.zone, req.cpus, req.memory_mib) == (InstanceType.BBC, "zoneB", 4, 8192)
    assert (req.mode, req.max_pods, req.subnet_ids) == (NetworkMode.VPC_ROUTE, 64, ["sbn-2"])
    assert req.pool is not None and req.pool.pre_allocate == 5


def test_labels_and_annotations_of_ours_override_the_defaults() -> None:
    view = read_node(node(
        labels={"cce.io/network-mode": "vpc-eni-exclusive", "cce.io/allow-exclusive-eni": "True"},
        annotations={"cce.io/max-pods": "32", "cce.io/subnet-ids": "sbn-a, sbn-b", "cce.io/max-enis": "0",
                     "cce.io/pre-allocate": "4", "cce.io/burstable": "true", "unrelated/x": "y"}))
    assert isinstance(view, NodeView)
    req = registration(view, INSTANCE, Defaults(pool=PoolSettings(min_allocate=3)))
    assert (req.mode, req.allow_exclusive, req.max_pods, req.max_enis) == (NetworkMode.VPC_ENI_EXCLUSIVE, True, 32, 0)
    assert req.subnet_ids == ["sbn-a", "sbn-b"]
    assert req.pool is not None and (req.pool.pre_allocate, req.pool.min_allocate, req.pool.burstable) == (4, 3, True)


def test_every_invalid_value_is_named_in_one_problem() -> None:
    problem = read_node(node(labels={"cce.io/network-mode": "overlay"},
                             annotations={"cce.io/max-pods": "0", "cce.io/subnet-ids": "sbn-a,bad id",
                                          "cce.io/burstable": "maybe"},
                             capacity={"cpu": "lots"}))
    assert isinstance(problem, NodeProblem) and problem.reason == nodefacts.INVALID_NODE_CONFIG
    for words in ("cce.io/network-mode='overlay'", "cce.io/max-pods='0'", "bad id", "cce.io/burstable='maybe'",
                  "status.capacity.cpu"):
        assert words in problem.message


# ---- pods ----------------------------------------------------------------------------------------------------------


def pod(name: str = "web-1", node_name: str | None = "node-1", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "uid": "uid-1", **meta},
            "spec": {"nodeName": node_name} if node_name else {}}


def test_a_bound_pod_keeps_only_the_annotations_the_network_reads() -> None:
    info = pod_info(pod(annotations={"cce.io/exclusive-eni": "true", "kubernetes.io/egress-bandwidth": "10M",
                                     "checksum/config": "abc"}, labels={"app": "web"},
                        ownerReferences=[{"kind": "ReplicaSet", "name": "web-7d", "controller": True}]))
    assert info is not None
    assert info.annotations == {"cce.io/exclusive-eni": "true", "kubernetes.io/egress-bandwidth": "10M"}
    assert (info.node, info.owner_kind, info.owner_name, info.labels) == ("node-1", "ReplicaSet", "web-7d",
                                                                          {"app": "web"})


def test_a_pod_not_bound_to_a_node_has_no_record() -> None:
    assert pod_info(pod(node_name=None)) is None


def endpoint(pod_name: str, uid: str, node_name: str = "node-1", cid: str = "c1") -> CceEndpoint:
    return CceEndpoint(node=node_name, container_id=cid, ifname="eth0", namespace="team-a", pod=pod_name,
                       pod_uid=uid, state=EndpointState.READY, created_at=T0,
                       addresses=[EndpointAddress(ip=IPv4Address("10.0.1.5"), gateway=IPv4Address("10.0.1.1"),
                                                  eni_id="eni-1", subnet_id="sbn-1")])


def test_endpoints_whose_pod_is_gone_recreated_or_elsewhere_are_named_with_why() -> None:
    pods = {("team-a", "a"): PodRef("u-a", "node-1"), ("team-a", "b"): PodRef("u-b2", "node-1"),
            ("team-a", "c"): PodRef("u-c", "node-2"), ("team-a", "d"): PodRef("u-d", "")}
    eps = [("k-a", endpoint("a", "u-a")), ("k-b", endpoint("b", "u-b1")), ("k-c", endpoint("c", "u-c")),
           ("k-d", endpoint("d", "u-d")), ("k-e", endpoint("e", "u-e")), ("k-f", endpoint("f", ""))]
    gone = gone_endpoints(eps, pods)
    assert set(gone) == {"k-b", "k-c", "k-e"}
    assert "re-created" in gone["k-b"] and "runs on node-2" in gone["k-c"] and "no longer exists" in gone["k-e"]


# ---- projections ---------------------------------------------------------------------------------------------------


def nrs_record() -> NetResourceSet:
    spec = NodeSpec(instance_id="i-abc", instance_type=InstanceType.BCC, zone="zoneA", cpus=8, memory_mib=32768)
    return NetResourceSet(name="node-1", spec=spec, status=NodeStatus(ready=True, enis=["eni-1"], registered_at=T0))


def test_the_nrs_projection_carries_what_the_printer_columns_read() -> None:
    desired = projection.nrs(nrs_record(), None, [], None)
    assert (desired.kind, desired.namespace, desired.name) == (projection.NRS, "", "node-1")
    assert desired.spec["mode"] == "vpc-eni" and desired.spec["instanceId"] == "i-abc"
    assert desired.status["ready"] is True and desired.status["eniCount"] == 1
    assert desired.status["ips"] == {"used": 0, "free": 0, "attachable": 0}
    assert desired.body()["metadata"]["labels"] == projection.MANAGED_BY


def test_a_pod_with_two_sandboxes_shows_the_newest_and_other_interfaces_get_their_own_cep() -> None:
    old = endpoint("web-1", "u", cid="c-old")
    new = endpoint("web-1", "u", cid="c-new").model_copy(update={"created_at": T0.replace(minute=5)})
    net1 = endpoint("web-1", "u", cid="c-new").model_copy(update={"ifname": "net1"})
    ceps = projection.ceps([old, new, net1])
    assert set(ceps) == {("team-a", "web-1"), ("team-a", "web-1-net1")}
    assert ceps[("team-a", "web-1")].spec["containerID"] == "c-new"
    assert ceps[("team-a", "web-1")].status["ip"] == "10.0.1.5" and ceps[("team-a", "web-1")].status["eniId"] == "eni-1"


def test_a_fixed_ip_shows_on_its_pods_cep_and_as_reserved_once_the_pod_is_gone() -> None:
    from schemas.records import AllocationType, FixedIp, ReleaseStrategy

    ep = endpoint("db-0", "u").model_copy(update={"allocation_type": AllocationType.FIXED,
                                                  "release_strategy": ReleaseStrategy.TTL,
                                                  "release_ttl_s": 604800.0})
    r = FixedIp(namespace="team-a", name="db-0", ip=IPv4Address("10.0.1.5"), subnet_id="sbn-1",
                subnet_cidr=IPv4Network("10.0.1.0/24"), node="node-1", eni_id="eni-1", endpoint="k", ttl_s=604800)
    held = projection.ceps([ep], [r])[("team-a", "db-0")].status
    assert (held["state"], held["allocationType"], held["releaseStrategy"], held["releaseTTL"]) == (
        "ready", "Fixed", "TTL", "168h")
    gone = projection.ceps([], [r.model_copy(update={"endpoint": "", "idle_since": T0})])[("team-a", "db-0")]
    assert gone.status["state"] == "reserved" and gone.status["ip"] == "10.0.1.5"
    assert gone.status["releaseAt"] == "2026-12-11T12:00:00Z" and gone.spec["node"] == "node-1"
    plain = projection.ceps([endpoint("web-1", "u")])[("team-a", "web-1")].status
    assert plain["allocationType"] == "Elastic" and "releaseTTL" not in plain
    assert projection.ttl_text(90) == "90s" and projection.ttl_text(1800) == "30m" and projection.ttl_text(None) is None


def test_the_subnet_projection() -> None:
    desired = projection.sbn(Subnet(subnet_id="sbn-1", vpc_id="vpc-1", zone="zoneA",
                                    cidr=IPv4Network("10.0.1.0/24"), available_ips=200))
    assert desired.spec == {"vpcId": "vpc-1", "zone": "zoneA", "cidr": "10.0.1.0/24"}
    assert desired.status == {"availableIPs": 200}


@pytest.mark.parametrize(("desired", "actual", "patch"), [
    ({"a": 1}, {"a": 1}, None),
    ({"a": 1}, None, {"a": 1}),
    ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4, "e": 5}, "x": 9},
     {"b": {"d": 3, "e": None}, "x": None}),
    ({"l": [1, 2]}, {"l": [1]}, {"l": [1, 2]}),
])
def test_a_merge_patch_turns_what_is_into_what_should_be(desired: dict[str, Any], actual: dict[str, Any] | None,
                                                        patch: dict[str, Any] | None) -> None:
    assert projection.merge_patch(desired, actual) == patch


def test_the_generated_crds_and_rbac_are_up_to_date() -> None:
    assert not stale(), "run `python -m services.k8s_bridge.manifests`"


# ---- events --------------------------------------------------------------------------------------------------------


def test_a_coded_add_failure_is_an_event_on_its_pod() -> None:
    event = Event(kind=EventKind.ENDPOINT, node="node-1", what="add-failed", reason=ErrorReason.SUBNET_NO_MORE_IP,
                  message="SubnetNoMoreIP: no free IP", source="cni_gateway-node-1",
                  data={"namespace": "team-a", "pod": "web-1", "pod_uid": "u1"})
    kube = from_bus_event(event)
    assert kube is not None
    assert (kube.involved, kube.type, kube.reason) == (InvolvedObject("Pod", "web-1", "team-a", "u1"), "Warning",
                                                       "SubnetNoMoreIP")
    assert kube.namespace == "team-a"
    again = from_bus_event(event.model_copy(update={"source": "cni_gateway-node-1b"}))
    assert again is not None and again.name == kube.name  # told again: the same Event, counted


def test_node_trouble_is_an_event_on_the_node_and_chatter_is_not() -> None:
    quota = Event(kind=EventKind.ENI, node="node-1", what="provision-failed", reason=ErrorReason.ENI_CAPACITY_EXCEED,
                  message="holds 8 of 8", severity=Severity.WARNING)
    kube = from_bus_event(quota, node_uid="n-uid")
    assert kube is not None and (kube.involved.kind, kube.reason, kube.namespace) == ("Node", "ENICapacityExceed",
                                                                                    "default")
    assert from_bus_event(Event(kind=EventKind.IP, node="node-1", what="added")) is None
    assert from_bus_event(Event(kind=EventKind.ENDPOINT, node="node-1", what="allocated")) is None
    assert from_bus_event(Event(kind=EventKind.NODE, node="node-1", what="registered", data={"created": False})) is None
    registered = from_bus_event(Event(kind=EventKind.NODE, node="node-1", what="registered", data={"created": True}))
    assert registered is not None and (registered.type, registered.reason) == ("Normal", "Registered")


def test_the_spam_filter_lets_a_burst_through_then_one_per_refill() -> None:
    spam = SpamFilter(burst=3, refill_s=10.0)
    obj = InvolvedObject("Pod", "p", "ns")
    assert [spam.allow(obj, 0.0) for _ in range(4)] == [True, True, True, False]
    assert spam.allow(obj, 5.0) is False
    assert spam.allow(obj, 10.1) is True
    assert spam.allow(InvolvedObject("Pod", "q", "ns"), 10.1) is True


# ---- the work queue ------------------------------------------------------------------------------------------------


async def settle() -> None:
    """Let every ready task run until none is left to run (absence can only be checked when nothing is pending)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_key_added_many_times_is_processed_once_and_never_twice_at_once() -> None:
    seen: list[str] = []
    running: set[str] = set()
    release = asyncio.Event()

    async def process(key: str) -> None:
        assert key not in running
        running.add(key)
        seen.append(key)
        await release.wait()
        running.discard(key)

    queue: WorkQueue[str] = WorkQueue("t", process, workers=3)
    task = asyncio.create_task(queue.run())
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    await until(lambda: len(seen) == 2)
    await settle()
    assert sorted(seen) == ["a", "b"]
    queue.add("a")  # while being processed: once more after
    release.set()
    await until(lambda: queue.processed == 3 and not len(queue))
    task.cancel()
    assert sorted(seen) == ["a", "a", "b"]


async def test_a_failing_key_comes_back_after_a_growing_back_off() -> None:
    tries: list[float] = []
    loop = asyncio.get_running_loop()

    async def process(_key: str) -> None:
        tries.append(loop.time())
        if len(tries) < 3:
            raise RuntimeError("not yet")

    queue: WorkQueue[str] = WorkQueue("t", process, backoff=(0.05, 1.0))
    task = asyncio.create_task(queue.run())
    queue.add("k")
    await until(lambda: len(tries) == 3)
    task.cancel()
    assert tries[1] - tries[0] >= 0.05 and tries[2] - tries[1] >= 0.1


async def test_workers_wait_their_turn() -> None:
    turn = asyncio.Event()
    done: list[str] = []

    async def process(key: str) -> None:
        done.append(key)

    queue: WorkQueue[str] = WorkQueue("t", process, wait_turn=turn.wait)
    task = asyncio.create_task(queue.run())
    queue.add("k")
    await settle()
    assert done == [] and len(queue) == 1
    turn.set()
    await until(lambda: done == ["k"])
    task.cancel()

"""Unit tier: what a Node says about its network (services/k8s_bridge/readiness.py): our taint, NetworkUnavailable and
CCENetworkReady, the extended resources, and the patches that write only what changed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.base import NetworkMode
from schemas.errors import ErrorReason
from schemas.records import EniProvision, NetResourceSet, NodeCapacity, NodeCondition, NodeSpec, NodeStatus
from services.k8s_bridge import readiness
from services.k8s_bridge.readiness import ENI_RESOURCE, IP_RESOURCE, TAINT_KEY

pytestmark = pytest.mark.unit

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def record(ready: bool, mode: NetworkMode = NetworkMode.VPC_ENI, **status: Any) -> NetResourceSet:
    spec = NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=8, memory_mib=32768, mode=mode)
    cap = NodeCapacity(pod_ips=40, pod_enis=3)
    return NetResourceSet(name="node-1", spec=spec, status=NodeStatus(ready=ready, capacity=cap, **status))


def test_a_ready_node_has_no_taint_network_available_and_its_resources() -> None:
    net = readiness.of_record(record(True))
    assert net.ready and net.reason == "PoolReady" and dict(net.resources) == {IP_RESOURCE: 40, ENI_RESOURCE: 3}
    patch = readiness.status_patch({}, net, NOW)
    assert patch is not None
    status = patch["status"]
    assert status["capacity"] == status["allocatable"] == {IP_RESOURCE: "40", ENI_RESOURCE: "3"}
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["CCENetworkReady"]["status"] == "True"
    assert by_type["NetworkUnavailable"]["status"] == "False"
    assert readiness.taints([], True) is None


def test_why_a_node_is_not_ready_comes_from_its_record_or_eni_manager() -> None:
    assert readiness.of_record(None).reason == "Registering"
    assert readiness.of_record(None).resources == {IP_RESOURCE: 0, ENI_RESOURCE: 0}
    assert readiness.of_record(record(False)).reason == "PoolNotReady"
    failing = record(False, conditions=[NodeCondition(type="NodeCIDR", status=False, reason="CIDRPoolExhausted",
                                                      message="no CIDR left")])
    assert readiness.of_record(failing).reason == "CIDRPoolExhausted"
    full = EniProvision(node="node-1", instance_id="i-1", last_error=ErrorReason.SUBNET_NO_MORE_IP,
                        message="subnet sbn-1 is full")
    net = readiness.of_record(record(False), full)
    assert not net.ready and net.reason == "SubnetNoMoreIP" and "sbn-1 is full" in net.message
    assert readiness.of_record(record(True), full).ready  # a ready pool stays ready whatever the last error
    assert readiness.of_record(record(True, removing=True)).reason == "Removing"
    assert readiness.of_problem("InvalidProviderID", "no").resources[IP_RESOURCE] == 0


def test_only_what_changed_is_written_and_transitions_keep_their_time() -> None:
    net = readiness.of_record(record(True))
    first = readiness.status_patch({}, net, NOW)
    assert first is not None
    written = {**first["status"]}
    assert readiness.status_patch(written, net, LATER) is None
    lost = readiness.of_record(record(False))
    again = readiness.status_patch(written, lost, LATER)
    assert again is not None and "capacity" not in again["status"]  # the resources did not change
    unavailable = next(c for c in again["status"]["conditions"] if c["type"] == "NetworkUnavailable")
    assert unavailable["status"] == "True" and unavailable["lastTransitionTime"] == LATER
    same_status_new_reason = readiness.conditions_patch(
        written["conditions"], readiness.NodeNetwork(True, "PoolReady", "other words", net.resources), LATER)
    assert [c["lastTransitionTime"] for c in same_status_new_reason] == [NOW]  # the message only


def test_our_taint_comes_and_goes_and_others_stay() -> None:
    theirs = {"key": "team", "value": "a", "effect": "NoSchedule"}
    tainted = readiness.taints([theirs], ready=False)
    assert tainted == [theirs, {"key": TAINT_KEY, "effect": "NoSchedule"}]
    assert readiness.taints(tainted, ready=False) is None
    assert readiness.taints(tainted, ready=True) == [theirs]
    assert readiness.taints([theirs], ready=True) is None
    assert readiness.taints([{"key": TAINT_KEY, "effect": "NoExecute"}], ready=False) == [
        {"key": TAINT_KEY, "effect": "NoSchedule"}]  # a hand-made variant of ours is put right
    assert readiness.taints_patch("42", []) == {"metadata": {"resourceVersion": "42"}, "spec": {"taints": None}}


taint = st.fixed_dictionaries({"key": st.sampled_from(["a", "b", TAINT_KEY]),
                               "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])})


@given(st.lists(taint, max_size=5), st.booleans())
def test_applying_the_taints_converges_and_never_touches_another_taint(current: list[dict[str, Any]],
                                                                       ready: bool) -> None:
    new = readiness.taints(current, ready)
    after = current if new is None else new
    assert readiness.taints(after, ready) is None
    assert [t for t in after if t["key"] != TAINT_KEY] == [t for t in current if t["key"] != TAINT_KEY]
    assert any(t["key"] == TAINT_KEY for t in after) is not ready

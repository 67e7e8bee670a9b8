"""A node's network as the scheduler sees it (pure: no I/O, no clock).

Until a node's network is ready (ipam's NetResourceSet says `ready`: its pool has its first addresses, its first
node CIDR is routed, or it has an exclusive ENI), its Node carries our `NoSchedule` taint and the condition
`NetworkUnavailable=True`; both are lifted when it is ready and set again when it is no longer (its ENIs gone, its
route rule lost). A Node the bridge cannot register is not ready either. Our own condition `CCENetworkReady` says the
same with the reason.

What the node can hold is published as extended resources in its status (capacity and allocatable):
`cce.io/ip` (pods by address, those running included) and `cce.io/eni` (exclusive ENIs, on nodes that allow them).
A pod that requests `cce.io/ip: 1` (or `cce.io/eni: 1`) is not scheduled to a node that has none left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.base import NetworkMode
from schemas.records import EniProvision, NetResourceSet

TAINT_KEY = "cce.io/network-unavailable"
TAINT_EFFECT = "NoSchedule"
READY_CONDITION = "CCENetworkReady"
UNAVAILABLE_CONDITION = "NetworkUnavailable"
IP_RESOURCE = "cce.io/ip"
ENI_RESOURCE = "cce.io/eni"
CONDITIONS = (READY_CONDITION, UNAVAILABLE_CONDITION)


@dataclass(frozen=True)
class NodeNetwork:
    """What the Node should say about its network."""

    ready: bool
    reason: str
    message: str
    resources: Mapping[str, int] = field(default_factory=lambda: {IP_RESOURCE: 0, ENI_RESOURCE: 0})


def of_record(record: NetResourceSet | None, provision: EniProvision | None = None) -> NodeNetwork:
    """The network of a node from its record (None: not registered yet) and eni_manager's provisioning record,
    which says why a pool that is not ready cannot fill (`SubnetNoMoreIP`, `ENICapacityExceed`, ...)."""
    if record is None:
        return NodeNetwork(False, "Registering", "the node is being registered with cce-network")
    cap = record.status.capacity
    resources = {IP_RESOURCE: cap.pod_ips, ENI_RESOURCE: cap.pod_enis}
    mode = record.spec.mode.value
    if record.status.removing:
        return NodeNetwork(False, "Removing", "the node is being removed from cce-network", resources)
    if record.status.ready:
        what = "its exclusive ENIs" if record.spec.mode is NetworkMode.VPC_ENI_EXCLUSIVE else "its pool"
        return NodeNetwork(True, "PoolReady", f"{mode}: {what} can give pods addresses", resources)
    failing = [c for c in record.status.conditions if not c.status]
    if provision is not None and provision.last_error is not None:
        return NodeNetwork(False, provision.last_error.value,
                           f"{mode}: the pool cannot fill: {provision.message or provision.last_error.value}",
                           resources)
    if failing:
        return NodeNetwork(False, failing[0].reason or "PoolNotReady",
                           failing[0].message or "the node's pool is not ready", resources)
    return NodeNetwork(False, "PoolNotReady", f"{mode}: the node's first resources are being provisioned", resources)


def of_problem(reason: str, message: str) -> NodeNetwork:
    """A Node that cannot be registered: no network."""
    return NodeNetwork(False, reason, message)


# ---- the Node's status -----------------------------------------------------------------------------------------


def _condition_fields(kind: str, network: NodeNetwork) -> tuple[str, str, str]:
    if kind == READY_CONDITION:
        return ("True" if network.ready else "False"), network.reason, network.message
    if network.ready:  # NetworkUnavailable: the other way round
        return "False", "CCENetworkReady", "cce-network configured the node's network"
    return "True", network.reason, network.message


def conditions_patch(current: Sequence[Mapping[str, Any]], network: NodeNetwork, now: str) -> list[dict[str, Any]]:
    """Our conditions that differ from what the Node has (strategic merge: by type, others' stay as they are)."""
    have = {c.get("type"): c for c in current}
    out: list[dict[str, Any]] = []
    for kind in CONDITIONS:
        status, reason, message = _condition_fields(kind, network)
        old = have.get(kind) or {}
        if (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
            continue
        since = old.get("lastTransitionTime") if old.get("status") == status else now
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": since or now})
    return out


def resources_patch(status: Mapping[str, Any], network: NodeNetwork) -> dict[str, Any]:
    """The extended resources where they differ, in capacity and allocatable (a kubelet copies capacity to
    allocatable for resources it does not manage; the API server alone does not)."""
    out: dict[str, Any] = {}
    for part in ("capacity", "allocatable"):
        have: Mapping[str, Any] = status.get(part) or {}
        changed = {k: str(v) for k, v in network.resources.items() if str(have.get(k)) != str(v)}
        if changed:
            out[part] = changed
    return out


def status_patch(status: Mapping[str, Any], network: NodeNetwork, now: str) -> dict[str, Any] | None:
    """The strategic-merge patch of the Node's status, or None when it already says all of it."""
    patch: dict[str, Any] = resources_patch(status, network)
    conditions = conditions_patch(status.get("conditions") or [], network, now)
    if conditions:
        patch["conditions"] = conditions
    return {"status": patch} if patch else None


# ---- the Node's taints -----------------------------------------------------------------------------------------


def is_ours(taint: Mapping[str, Any]) -> bool:
    return taint.get("key") == TAINT_KEY


def taints(current: Sequence[Mapping[str, Any]], ready: bool) -> list[dict[str, Any]] | None:
    """The Node's taints with ours present (not ready) or absent (ready); None when they already are so."""
    ours = [t for t in current if is_ours(t)]
    wanted = [] if ready else [{"key": TAINT_KEY, "effect": TAINT_EFFECT}]
    if [{"key": t.get("key"), "effect": t.get("effect")} for t in ours] == wanted and \
            all(not t.get("value") for t in ours):
        return None
    return [dict(t) for t in current if not is_ours(t)] + wanted


def taints_patch(resource_version: str, new: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON merge patch of the Node's taints that applies only to the version they were computed from (a taint
    someone else added meanwhile is not lost: the write conflicts, is recomputed and tried again)."""
    return {"metadata": {"resourceVersion": resource_version}, "spec": {"taints": new or None}}

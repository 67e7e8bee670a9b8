"""A Node object -> the node's registration on the bus (pure: no I/O, no clock).

What a Node says, and where:
- `spec.providerID`: the instance. Accepted forms: `cce://<instance-id>` (what CCE's kubelets set),
  `bce://<instance-id>`, and either scheme with a path (`cce:///<region-or-zone>/<instance-id>`: the last segment).
- instance kind and zone: the well-known labels `node.kubernetes.io/instance-type` (`BCC`, `EBC`, `BBC`, or a
  specification such as `bcc.g5.c8m32`) and `topology.kubernetes.io/zone` (or their beta forms); the cloud's
  answer where a label is missing or names no kind of ours.
- CPUs, memory and max pods: `status.capacity` (what the kubelet reports), the cloud's for CPUs and memory else.
- Ours: the labels `cce.io/network-mode` and `cce.io/allow-exclusive-eni`, and the annotations in `ANNOTATIONS`;
  what a node does not say comes from the cluster defaults (the bridge's settings).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from cloud.port import CloudInstance
from schemas.base import InstanceType, NetworkMode
from schemas.messages import NodeRegisterRequest
from schemas.records import PoolSettings

PROVIDER_SCHEMES = ("cce", "bce")
INSTANCE_ID = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_]{0,127}$")
SUBNET_OR_SG_ID = INSTANCE_ID

INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
MODE_LABEL = "cce.io/network-mode"
EXCLUSIVE_LABEL = "cce.io/allow-exclusive-eni"
# annotation -> (field, kind): per-node overrides of the cluster defaults
ANNOTATIONS: dict[str, tuple[str, str]] = {
    "cce.io/max-pods": ("max_pods", "int>=1"),
    "cce.io/subnet-ids": ("subnet_ids", "ids"),
    "cce.io/security-group-ids": ("security_group_ids", "ids"),
    "cce.io/max-enis": ("max_enis", "int>=0"),
    "cce.io/ips-per-eni": ("ips_per_eni", "int>=1"),
    "cce.io/pre-allocate": ("pool.pre_allocate", "int>=0"),
    "cce.io/min-allocate": ("pool.min_allocate", "int>=0"),
    "cce.io/max-above-watermark": ("pool.max_above_watermark", "int>=0"),
    "cce.io/max-allocate": ("pool.max_allocate", "int>=0"),
    "cce.io/burstable": ("pool.burstable", "bool"),
}

# Condition and Event reasons of node problems (a Node we cannot register says why)
INVALID_PROVIDER_ID = "InvalidProviderID"
INSTANCE_NOT_FOUND = "InstanceNotFound"
INSTANCE_IN_USE = "InstanceInUse"  # registered on the bus as another node (one renamed: the old one leaves first)
INVALID_NODE_CONFIG = "InvalidNodeConfig"


@dataclass(frozen=True)
class Defaults:
    """The cluster's defaults (from the bridge's settings)."""

    mode: NetworkMode = NetworkMode.VPC_ENI
    max_pods: int = 110
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    pool: PoolSettings = field(default_factory=PoolSettings)


@dataclass(frozen=True)
class NodeProblem:
    reason: str
    message: str


@dataclass(frozen=True)
class NodeView:
    """What the Node object says, checked; the cloud fills in the rest (`registration`)."""

    name: str
    instance_id: str
    instance_type: InstanceType | None
    zone: str
    cpus: int | None
    memory_mib: int | None
    overrides: dict[str, Any]  # NodeRegisterRequest fields (pool as a dict), from labels and annotations


def instance_id_of(provider_id: str) -> str:
    """The instance id in a providerID; raises ValueError saying what is wrong with it."""
    if not provider_id:
        raise ValueError("spec.providerID is empty (expected cce://<instance-id>)")
    scheme, sep, rest = provider_id.partition("://")
    if not sep:
        raise ValueError(f"spec.providerID {provider_id!r} has no scheme (expected cce://<instance-id>)")
    if scheme.lower() not in PROVIDER_SCHEMES:
        raise ValueError(f"spec.providerID {provider_id!r} is not a Baidu instance (scheme {scheme!r}; "
                         f"accepted: {', '.join(s + '://' for s in PROVIDER_SCHEMES)})")
    instance_id = rest.rstrip("/").rsplit("/", 1)[-1]
    if not INSTANCE_ID.match(instance_id):
        raise ValueError(f"spec.providerID {provider_id!r} names no valid instance id")
    return instance_id


def read_node(obj: Mapping[str, Any]) -> NodeView | NodeProblem:
    """Check a Node object's providerID, labels and annotations; every problem is named in one message."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    try:
        instance_id = instance_id_of(str((obj.get("spec") or {}).get("providerID") or ""))
    except ValueError as err:
        return NodeProblem(INVALID_PROVIDER_ID, str(err))
    problems: list[str] = []
    overrides = _overrides(labels, annotations, problems)
    capacity = (obj.get("status") or {}).get("capacity") or {}
    cpus = _quantity(capacity, "cpu", Decimal(1), problems)
    memory = _quantity(capacity, "memory", Decimal(1024 * 1024), problems)
    pods = _quantity(capacity, "pods", Decimal(1), problems)
    if pods is not None and pods >= 1:
        overrides.setdefault("max_pods", pods)
    if problems:
        return NodeProblem(INVALID_NODE_CONFIG, "; ".join(problems))
    return NodeView(name=name, instance_id=instance_id, instance_type=_kind(_first(labels, INSTANCE_TYPE_LABELS)),
                    zone=_first(labels, ZONE_LABELS), cpus=cpus if cpus and cpus >= 1 else None,
                    memory_mib=memory if memory and memory >= 1 else None, overrides=overrides)


def registration(view: NodeView, instance: CloudInstance, defaults: Defaults) -> NodeRegisterRequest:
    """The registration of a checked Node whose instance the cloud knows: the Node's word first, then the cloud's,
    then the cluster's defaults."""
    pool = defaults.pool.model_dump()
    pool.update(view.overrides.get("pool", {}))
    facts: dict[str, Any] = {
        "node": view.name, "instance_id": view.instance_id,
        "instance_type": view.instance_type or instance.instance_type,
        "zone": view.zone or instance.zone,
        "cpus": view.cpus or instance.cpus, "memory_mib": view.memory_mib or instance.memory_mib,
        "max_pods": defaults.max_pods, "mode": defaults.mode,
        "primary_ip": instance.primary_ip or None, "primary_mac": instance.primary_mac or None,
        "subnet_ids": list(defaults.subnet_ids), "security_group_ids": list(defaults.security_group_ids),
    }
    facts.update({k: v for k, v in view.overrides.items() if k != "pool"})
    return NodeRegisterRequest(**facts, pool=PoolSettings(**pool))


# ---- parsing -------------------------------------------------------------------------------------------------------


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str:
    return next((str(labels[k]) for k in keys if labels.get(k)), "")


def _kind(value: str) -> InstanceType | None:
    """`BCC` / `bbc` / `bcc.g5.c8m32` -> the kind; anything else -> None (the cloud says)."""
    head = value.split(".", 1)[0].upper()
    return InstanceType(head) if head in InstanceType.__members__ else None


def _overrides(labels: Mapping[str, str], annotations: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if MODE_LABEL in labels:
        try:
            out["mode"] = NetworkMode(labels[MODE_LABEL])
        except ValueError:
            problems.append(f"label {MODE_LABEL}={labels[MODE_LABEL]!r} is not one of "
                            f"{', '.join(m.value for m in NetworkMode)}")
    if EXCLUSIVE_LABEL in labels:
        _put(out, "allow_exclusive", _parse(labels[EXCLUSIVE_LABEL], "bool"), EXCLUSIVE_LABEL, labels, problems)
    for key, (name, kind) in ANNOTATIONS.items():
        if key in annotations:
            _put(out, name, _parse(annotations[key], kind), key, annotations, problems)
    return out


def _put(out: dict[str, Any], name: str, value: Any, key: str, source: Mapping[str, str], problems: list[str]) -> None:
    if isinstance(value, _Invalid):
        problems.append(f"{key}={source[key]!r}: {value.why}")
        return
    if "." in name:
        group, sub = name.split(".", 1)
        out.setdefault(group, {})[sub] = value
    else:
        out[name] = value


@dataclass(frozen=True)
class _Invalid:
    why: str


def _parse(text: str, kind: str) -> Any:
    text = str(text).strip()
    if kind == "bool":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return _Invalid("expected true or false")
    if kind == "ids":
        ids = [part.strip() for part in text.split(",") if part.strip()]
        bad = [i for i in ids if not SUBNET_OR_SG_ID.match(i)]
        return _Invalid(f"not an id: {', '.join(bad)}") if bad else ids
    low = int(kind[len("int>="):])
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < low:
        return _Invalid(f"expected a whole number >= {low}")
    return int(text)


def _quantity(capacity: Mapping[str, Any], key: str, unit: Decimal, problems: list[str]) -> int | None:
    if key not in capacity:
        return None
    try:
        return int(parse_quantity(capacity[key]) / unit)
    except (ValueError, InvalidOperation, TypeError):
        problems.append(f"status.capacity.{key}={capacity[key]!r} is not a quantity")
        return None

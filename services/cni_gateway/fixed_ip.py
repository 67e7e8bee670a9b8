"""Whether a pod keeps its IP across delete and re-create (pure): StatefulSet pods whose pod (through its template) or
namespace says `cce.io/fixed-ip: "true"`, kept `cce.io/fixed-ip-ttl` after the pod goes (a duration such as `168h`,
`30m`, `90s`, or seconds; `Never`: until the reservation is deleted by hand; default ipam's, 7 days). The pod's own
annotations win over its namespace's. A pod of another kind that asks for it itself is refused (its name does not
come back); a namespace's word applies to its StatefulSet pods only."""

from __future__ import annotations

import re

from schemas.messages import FixedIpRequest
from schemas.records import PodInfo, ReleaseStrategy

FIXED_ANNOTATION = "cce.io/fixed-ip"
TTL_ANNOTATION = "cce.io/fixed-ip-ttl"
STATEFULSET = "StatefulSet"
NEVER = "never"
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class FixedIpError(ValueError):
    """An annotation that cannot be used; the message names it and why."""


def parse_ttl(text: str) -> float | None:
    """Seconds from `168h`, `1h30m`, `90s`, `3600`; None for `Never`. ValueError otherwise."""
    value = text.strip()
    if value.lower() == NEVER:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    if not _DURATION.match(value):
        raise ValueError(f"{text!r} is not a duration (e.g. 168h, 30m, 90s) or Never")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))


def _bool(key: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise FixedIpError(f"annotation {key}={text!r}: expected true or false")
    return value == "true"


def fixed_ip_of(pod: PodInfo | None) -> FixedIpRequest | None:
    """The pod's fixed-IP request, or None; FixedIpError names a malformed annotation or a pod that cannot have one."""
    if pod is None:
        return None
    own, space = pod.annotations, pod.namespace_annotations
    if FIXED_ANNOTATION in own:
        wanted, said_by_pod = _bool(FIXED_ANNOTATION, own[FIXED_ANNOTATION]), True
    elif FIXED_ANNOTATION in space:
        wanted, said_by_pod = _bool(f"{FIXED_ANNOTATION} (namespace {pod.namespace})", space[FIXED_ANNOTATION]), False
    else:
        return None
    if not wanted:
        return None
    if pod.owner_kind != STATEFULSET:
        if not said_by_pod:
            return None
        what = f"{pod.owner_kind}/{pod.owner_name}" if pod.owner_kind else "no controller"
        raise FixedIpError(f"annotation {FIXED_ANNOTATION}=true: fixed IPs are for StatefulSet pods, whose names come "
                           f"back (this pod's controller: {what})")
    raw = own.get(TTL_ANNOTATION, space.get(TTL_ANNOTATION))
    owner = f"{pod.owner_kind}/{pod.owner_name}"
    if raw is None:
        return FixedIpRequest(owner=owner)
    try:
        ttl = parse_ttl(raw)
    except ValueError as err:
        raise FixedIpError(f"annotation {TTL_ANNOTATION}={raw!r}: {err}") from None
    if ttl is None:
        return FixedIpRequest(release_strategy=ReleaseStrategy.NEVER, owner=owner)
    return FixedIpRequest(ttl_s=ttl, owner=owner)

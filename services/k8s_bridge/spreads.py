"""PodSubnetTopologySpread objects (and the cluster-wide ClusterPodSubnetTopologySpread) -> the `SubnetSpread`
records ipam selects subnets by, their validation against the VPC, and the status shown on the object (pure).

A spread is checked for what the API server's schema cannot know: each subnet exists in the VPC and each of its IP
ranges lies inside the subnet's CIDR. A subnet that fails is unusable (it says why) and the spread is invalid (its
`Valid` condition is False with every reason); ipam still applies it to the pods it selects, with its usable
subnets only, so a typo never sends its pods into a subnet it does not name. Two spreads of one scope (a namespace,
or the cluster) at the same priority with the same selectors are ambiguous: the first by name wins, and both say so.

The status shows, per subnet, the IPs its pods use there (endpoints ipam allocated under the spread) and the IPs
free (inside its ranges when it names some: the range's addresses no ENI we know holds, at most the subnet's free
addresses; else the subnet's free addresses).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from pydantic import ValidationError

from schemas.records import (
    CceEndpoint,
    LabelSelector,
    SpreadStrategy,
    SpreadSubnet,
    Subnet,
    SubnetSpread,
)
from schemas.subjects import psts_key
from services.k8s_bridge.projection import GROUP, VERSION, Kind

PSTS = Kind("PodSubnetTopologySpread", "podsubnettopologyspreads", "psts", namespaced=True)
CPSTS = Kind("ClusterPodSubnetTopologySpread", "clusterpodsubnettopologyspreads", "cpsts", namespaced=False)
SPREAD_KINDS = (PSTS, CPSTS)


def spread_path(kind: Kind, namespace: str, name: str) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    return f"{base}/namespaces/{namespace}/{kind.plural}/{name}" if kind.namespaced else f"{base}/{kind.plural}/{name}"


@dataclass(frozen=True)
class Parsed:
    """What an object asks for, or why it cannot be read at all."""

    spread: SubnetSpread | None
    errors: tuple[str, ...] = ()


def _selector(raw: Any, where: str, errors: list[str]) -> LabelSelector:
    if raw is None:
        return LabelSelector()
    try:
        return LabelSelector(match_labels=raw.get("matchLabels") or {},
                             match_expressions=raw.get("matchExpressions") or [])
    except (ValidationError, AttributeError) as err:
        errors.append(f"{where}: not a label selector ({_first(err)})")
        return LabelSelector(match_labels={"cce.io/invalid-selector": "true"})  # selects nothing until fixed


def _first(err: Exception) -> str:
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(err)


def _subnet(raw: Any, i: int, errors: list[str]) -> SpreadSubnet | None:
    if not isinstance(raw, dict):
        errors.append(f"spec.subnets[{i}]: not an object")
        return None
    try:
        return SpreadSubnet(subnet_id=raw.get("subnetId", ""), ranges=raw.get("ipRanges") or [],
                            priority=raw.get("priority") or 0)
    except ValidationError as err:
        errors.append(f"spec.subnets[{i}] ({raw.get('subnetId', '?')}): {_first(err)}")
        return None


def parse(obj: Mapping[str, Any], cluster_wide: bool) -> Parsed:
    """The spread an object asks for (subnets not yet checked against the VPC), with what is malformed."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    errors: list[str] = []
    subnets = [s for i, raw in enumerate(spec.get("subnets") or []) if (s := _subnet(raw, i, errors)) is not None]
    if not spec.get("subnets"):
        errors.append("spec.subnets: at least one subnet is needed")
    strategy = spec.get("strategy") or SpreadStrategy.ELASTIC.value
    if strategy not in {s.value for s in SpreadStrategy}:
        errors.append(f"spec.strategy: {strategy!r} is not supported (Elastic)")
        strategy = SpreadStrategy.ELASTIC.value
    try:
        spread = SubnetSpread(
            namespace="" if cluster_wide else meta.get("namespace", ""), name=meta.get("name", ""),
            uid=meta.get("uid", ""), generation=int(meta.get("generation") or 0),
            priority=int(spec.get("priority") or 0), strategy=SpreadStrategy(strategy),
            pod_selector=_selector(spec.get("podSelector"), "spec.podSelector", errors),
            namespace_selector=_selector(spec.get("namespaceSelector"), "spec.namespaceSelector", errors)
            if cluster_wide and spec.get("namespaceSelector") is not None else None,
            subnets=subnets)
    except (ValidationError, ValueError, TypeError) as err:
        return Parsed(None, (*errors, _first(err)))
    return Parsed(spread, tuple(errors))


def validate(parsed: Parsed, vpc: Mapping[str, Subnet | None]) -> SubnetSpread | None:
    """The spread with each subnet checked against the VPC (`vpc`: subnet id -> the subnet, None when the VPC has
    no such subnet) and every error found."""
    if parsed.spread is None:
        return None
    errors = list(parsed.errors)
    checked: list[SpreadSubnet] = []
    seen: set[str] = set()
    for sub in parsed.spread.subnets:
        found = vpc.get(sub.subnet_id)
        error = _subnet_error(sub, found, seen)
        seen.add(sub.subnet_id)
        if error:
            errors.append(f"subnet {sub.subnet_id}: {error}")
        checked.append(sub.model_copy(update={"zone": found.zone if found else "",
                                              "cidr": found.cidr if found else None, "error": error}))
    return parsed.spread.model_copy(update={"subnets": checked, "errors": errors})


def _subnet_error(sub: SpreadSubnet, found: Subnet | None, seen: set[str]) -> str:
    if sub.subnet_id in seen:
        return "named twice"
    if found is None:
        return "does not exist in the VPC"
    outside = [str(r) for r in sub.ranges if not r.subnet_of(found.cidr)]
    if outside:
        return f"IP ranges {', '.join(outside)} are not inside the subnet's CIDR {found.cidr}"
    return ""


def key_of(spread: SubnetSpread) -> str:
    return psts_key(spread.namespace, spread.name)


def ambiguous(spreads: Iterable[SubnetSpread]) -> dict[str, list[str]]:
    """Key -> the keys of the spreads of its scope that select the same pods at the same priority."""
    groups: dict[tuple[str, int, str], list[str]] = {}
    for s in spreads:
        ns_sel = s.namespace_selector.model_dump_json() if s.namespace_selector else ""
        scope = (s.namespace, s.priority, s.pod_selector.model_dump_json() + ns_sel)
        groups.setdefault(scope, []).append(key_of(s))
    return {k: sorted(x for x in keys if x != k) for keys in groups.values() if len(keys) > 1 for k in keys}


# ---- status ----------------------------------------------------------------------------------------------------


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


def _condition(kind: str, ok: bool, reason: str, message: str, since: Any) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message[:1024],
            "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}


def used_by_subnet(key: str, endpoints: Iterable[CceEndpoint]) -> dict[str, int]:
    used: dict[str, int] = {}
    for ep in endpoints:
        if ep.psts != key:
            continue
        for a in ep.addresses:
            if a.subnet_id:
                used[a.subnet_id] = used.get(a.subnet_id, 0) + 1
    return used


def free_in(sub: SpreadSubnet, mirrored: Subnet | None, held: set[str]) -> int | None:
    """Free IPs of the subnet for the spread (None: unknown)."""
    available = mirrored.available_ips if mirrored is not None else None
    if not sub.ranges or sub.cidr is None:
        return available
    cidr: IPv4Network = sub.cidr
    reserved = {cidr.network_address, next(cidr.hosts()), cidr.broadcast_address}
    free = sum(1 for r in sub.ranges for ip in r if ip in cidr and ip not in reserved and str(ip) not in held)
    return free if available is None else min(free, available)


def status(spread: SubnetSpread, used: Mapping[str, int], subnets: Mapping[str, Subnet], held: set[str],
           others: list[str], since: Any) -> dict[str, Any]:
    rows = [_drop_none({"subnetId": s.subnet_id, "zone": s.zone or None, "cidr": str(s.cidr) if s.cidr else None,
                        "ipRanges": [str(r) for r in s.ranges], "priority": s.priority or None,
                        "used": used.get(s.subnet_id, 0), "free": free_in(s, subnets.get(s.subnet_id), held),
                        "error": s.error or None})
            for s in spread.subnets]
    valid = spread.is_valid
    conditions = [_condition("Valid", valid, "Valid" if valid else _reason(spread),
                             "every subnet exists and its ranges lie inside it" if valid else "; ".join(spread.errors),
                             since)]
    if others:
        conditions.append(_condition("Ambiguous", True, "SameSelectorAndPriority",
                                     f"selects the same pods at the same priority as {', '.join(others)}; "
                                     "the first by name applies", since))
    return _drop_none({"observedGeneration": spread.generation or None, "valid": valid,
                       "usedIPs": sum(used.values()), "subnets": rows, "conditions": conditions})


def unreadable_status(errors: str) -> dict[str, Any]:
    """The status of an object no spread can be made of (its pods are not selected until it is fixed)."""
    return {"valid": False, "conditions": [{"type": "Valid", "status": "False", "reason": "InvalidSpec",
                                            "message": errors[:1024] or "unreadable"}]}


def _reason(spread: SubnetSpread) -> str:
    if any("does not exist" in s.error for s in spread.subnets):
        return "SubnetNotFound"
    if any("ranges" in s.error for s in spread.subnets):
        return "RangeOutsideSubnet"
    return "InvalidSpec"


def same_spread(a: SubnetSpread, b: SubnetSpread) -> bool:
    return a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})

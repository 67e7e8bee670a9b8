"""Bus records -> the custom resources that show them in Kubernetes (pure): NetResourceSet per node, CCEEndpoint per
pod endpoint, Subnet per subnet. The records stay the source of truth; a resource is their projection, and a
resource that differs from its projection (edited by hand, or stale) is patched back to it.

Field names follow Kubernetes conventions (camelCase); every value is plain JSON so that what is desired compares
equal to what the API server returns."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.records import (
    AllocationType,
    CceEndpoint,
    Eni,
    EniProvision,
    EniState,
    FixedIp,
    NetResourceSet,
    NodePool,
    Subnet,
)

GROUP = "cce.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = {"app.kubernetes.io/managed-by": "cce-network"}


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short: str
    namespaced: bool


NRS = Kind("NetResourceSet", "netresourcesets", "nrs", namespaced=False)
CEP = Kind("CCEEndpoint", "cceendpoints", "cep", namespaced=True)
SBN = Kind("Subnet", "subnets", "sbn", namespaced=False)
KINDS = (NRS, CEP, SBN)

ObjectKey = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Desired:
    kind: Kind
    namespace: str
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]

    @property
    def key(self) -> ObjectKey:
        return self.namespace, self.name

    def body(self) -> dict[str, Any]:
        """The object to create (the status goes through the status subresource afterwards)."""
        meta: dict[str, Any] = {"name": self.name, "labels": dict(MANAGED_BY)}
        if self.namespace:
            meta["namespace"] = self.namespace
        return {"apiVersion": API_VERSION, "kind": self.kind.kind, "metadata": meta, "spec": self.spec}


def _time(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


# ---- NetResourceSet ------------------------------------------------------------------------------------------------


def nrs(record: NetResourceSet, pool: NodePool | None, enis: Iterable[Eni],
        provision: EniProvision | None) -> Desired:
    spec, status = record.spec, record.status
    pool_spec = spec.pool
    desired_spec = _drop_none({
        "instanceId": spec.instance_id, "instanceType": spec.instance_type.value, "zone": spec.zone,
        "mode": spec.mode.value, "maxPods": spec.max_pods, "cpus": spec.cpus, "memoryMiB": spec.memory_mib,
        "primaryIP": str(spec.primary_ip) if spec.primary_ip else None,
        "subnetIds": list(spec.subnet_ids), "securityGroupIds": list(spec.security_group_ids),
        "maxENIs": spec.max_enis, "ipsPerENI": spec.ips_per_eni, "allowExclusive": spec.allow_exclusive,
        "pool": _drop_none({"preAllocate": pool_spec.pre_allocate, "minAllocate": pool_spec.min_allocate,
                            "maxAboveWatermark": pool_spec.max_above_watermark,
                            "maxAllocate": pool_spec.max_allocate, "burstable": pool_spec.burstable}),
    })
    cap = status.capacity
    eni_list = sorted(enis, key=lambda e: (e.index, e.eni_id))
    desired_status = _drop_none({
        "ready": status.ready, "removing": status.removing or None,
        "ips": {"used": cap.used_ips, "free": cap.free_ips, "attachable": cap.attachable_ips},
        "enis": [_eni(e) for e in eni_list if e.state is not EniState.DELETED],
        "eniCount": len(status.enis), "freeENIs": cap.free_enis if spec.mode.value == "vpc-eni-exclusive" else None,
        "quota": {"maxENIs": cap.max_enis, "ipsPerENI": cap.ips_per_eni},
        "cidrs": [str(c) for c in status.cidrs], "routerIP": str(status.router_ip) if status.router_ip else None,
        "pool": _pool(pool) if pool else None,
        "conditions": [_condition(c.type, c.status, c.reason, c.message, c.since) for c in status.conditions],
        "provisioning": _provisioning(provision),
        "registeredAt": _time(status.registered_at),
    })
    return Desired(NRS, "", record.name, desired_spec, desired_status)


def _eni(e: Eni) -> dict[str, Any]:
    return _drop_none({"id": e.eni_id, "use": e.use.value, "state": e.state.value, "subnetId": e.subnet_id,
                       "mac": e.mac or None, "primaryIP": str(e.primary_ip) if e.primary_ip else None,
                       "ips": len(e.secondary_ips), "index": e.index})


def _pool(pool: NodePool) -> dict[str, Any]:
    d = pool.demand
    return {"target": d.target_ips, "used": d.used, "free": d.free, "pending": d.pending, "cooling": d.cooling,
            "releasing": d.releasing}


def _condition(kind: str, ok: bool, reason: str, message: str, since: Any) -> dict[str, Any]:
    return _drop_none({"type": kind, "status": "True" if ok else "False", "reason": reason or None,
                       "message": message or None, "lastTransitionTime": _time(since)})


def _provisioning(p: EniProvision | None) -> dict[str, Any] | None:
    if p is None or p.last_error is None:
        return None
    return _drop_none({"lastError": p.last_error.value, "message": p.message or None, "errorAt": _time(p.error_at)})


# ---- CCEEndpoint ---------------------------------------------------------------------------------------------------


def cep_name(ep: CceEndpoint) -> str:
    """The pod's name for its first interface (`eth0`), `<pod>-<ifname>` for others."""
    if ep.ifname == "eth0":
        return ep.pod
    return f"{ep.pod}-{re.sub(r'[^a-z0-9.-]', '-', ep.ifname.lower())}"[:253].rstrip("-.")


def ceps(endpoints: Iterable[CceEndpoint], reservations: Iterable[FixedIp] = ()) -> dict[ObjectKey, Desired]:
    """One resource per pod interface; when a pod has endpoints of two sandboxes (the old one not yet released),
    the newest shows. A fixed IP whose pod is gone shows as its pod's resource too, `reserved`, until released."""
    newest: dict[ObjectKey, CceEndpoint] = {}
    for ep in endpoints:
        key = (ep.namespace, cep_name(ep))
        if key not in newest or (ep.created_at, ep.container_id) > (newest[key].created_at, newest[key].container_id):
            newest[key] = ep
    out = {key: cep(ep) for key, ep in newest.items()}
    for r in reservations:
        if (r.namespace, r.name) not in out:
            out[(r.namespace, r.name)] = reserved_cep(r)
    return out


def ttl_text(seconds: float | None) -> str | None:
    """`168h`, `30m`, `90s` (as the annotation says it), None for none."""
    if seconds is None:
        return None
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _fixed(ep: CceEndpoint) -> dict[str, Any]:
    if ep.allocation_type is not AllocationType.FIXED:
        return {"allocationType": ep.allocation_type.value}
    return _drop_none({"allocationType": ep.allocation_type.value,
                       "releaseStrategy": ep.release_strategy.value if ep.release_strategy else None,
                       "releaseTTL": ttl_text(ep.release_ttl_s)})


def reserved_cep(r: FixedIp) -> Desired:
    """A fixed IP waiting for its pod: where it is, and when it goes."""
    spec = _drop_none({"node": r.node, "podUID": r.pod_uid or None, "mode": "vpc-eni", "owner": r.owner or None})
    status = _drop_none({
        "state": "reserved", "ip": str(r.ip), "eniId": r.eni_id,
        "addresses": [{"ip": str(r.ip), "subnetId": r.subnet_id, "eniId": r.eni_id, "subnetCIDR": str(r.subnet_cidr)}],
        "allocationType": AllocationType.FIXED.value, "releaseStrategy": r.release_strategy.value,
        "releaseTTL": ttl_text(r.ttl_s), "idleSince": _time(r.idle_since), "releaseAt": _time(r.release_at),
        "createdAt": _time(r.created_at),
    })
    return Desired(CEP, r.namespace, r.name, spec, status)


def cep(ep: CceEndpoint) -> Desired:
    first = ep.addresses[0] if ep.addresses else None
    spec = _drop_none({"node": ep.node, "containerID": ep.container_id, "ifname": ep.ifname,
                       "podUID": ep.pod_uid or None, "mode": ep.mode.value})
    status = _drop_none({
        "state": ep.state.value,
        "ip": str(first.ip) if first else None,
        "eniId": first.eni_id if first else None,
        "addresses": [_drop_none({"ip": str(a.ip), "prefixLen": a.prefix_len, "gateway": str(a.gateway),
                                  "subnetId": a.subnet_id, "eniId": a.eni_id,
                                  "subnetCIDR": str(a.subnet_cidr) if a.subnet_cidr else None})
                      for a in ep.addresses],
        "hostVeth": ep.host_veth or None,
        "createdAt": _time(ep.created_at),
        "bandwidth": _drop_none({"ingressBps": ep.bandwidth.ingress_bps, "egressBps": ep.bandwidth.egress_bps})
        if ep.bandwidth else None,
        **_fixed(ep),
    })
    return Desired(CEP, ep.namespace, cep_name(ep), spec, status)


# ---- Subnet --------------------------------------------------------------------------------------------------------


def sbn(subnet: Subnet) -> Desired:
    spec = {"vpcId": subnet.vpc_id, "zone": subnet.zone, "cidr": str(subnet.cidr)}
    status = _drop_none({"availableIPs": subnet.available_ips, "excluded": subnet.excluded or None,
                         "name": subnet.name or None})
    return Desired(SBN, "", subnet.subnet_id, spec, status)


# ---- comparing -----------------------------------------------------------------------------------------------------


def merge_patch(desired: Mapping[str, Any], actual: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A JSON merge patch (RFC 7386) that turns `actual` into `desired`; None when they are equal."""
    if actual == desired:
        return None
    patch: dict[str, Any] = {}
    actual = actual or {}
    for key, value in desired.items():
        old = actual.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            sub = merge_patch(value, old)
            if sub is not None:
                patch[key] = sub
        elif value != old:
            patch[key] = value
    for key in actual.keys() - desired.keys():
        patch[key] = None
    return patch or None

"""The promises a chaos run checks, as pure functions over what independent witnesses say: the records in the
KV buckets, the simulated cloud's own state (its admin API), the nodes' kernels, and the CNI results the run got.
Each check returns the violations it finds; each violation names its invariant, the IPs it is about and the event
trail that explains it (filled in by the caller from the event stream)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.records import CceEndpoint, Eni, EniState, EniUse, NetResourceSet, NodePool

OUR_ENI = "cce-network cluster="  # the description eni_manager gives the ENIs it creates


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    ips: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    trail: tuple[str, ...] = ()

    def with_trail(self, trail: Iterable[str]) -> Violation:
        return Violation(self.invariant, self.detail, self.ips, self.keys, tuple(trail))


@dataclass(frozen=True)
class LivePod:
    """A pod whose ADD answered success and whose DEL has not started: what its CNI result said."""

    key: str  # the endpoint key <node>.<container_id>.<ifname>
    node: str
    ip: str
    netns: str = ""  # with the fabric: the pod's namespace name under /run/netns


@dataclass(frozen=True)
class NodeKernel:
    """What a node's kernel holds: host-side pod veths (name -> ifalias) and the /32 routes of the main table."""

    veths: Mapping[str, str]
    routes: frozenset[str] = frozenset()


@dataclass
class Truth:
    endpoints: dict[str, CceEndpoint] = field(default_factory=dict)
    pools: dict[str, NodePool] = field(default_factory=dict)
    enis: dict[str, Eni] = field(default_factory=dict)
    nodes: dict[str, NetResourceSet] = field(default_factory=dict)
    cloud_enis: list[dict[str, Any]] = field(default_factory=list)  # the simulator's ENIs (BCE JSON)
    kernel: dict[str, NodeKernel] | None = None  # per node, with the fabric
    pod_addrs: dict[str, frozenset[str]] | None = None  # pod netns -> the IPv4 addresses on its eth0


def endpoint_ip_list(ep: CceEndpoint) -> list[str]:
    return [str(a.ip) for a in ep.addresses]


# ---- at any moment ---------------------------------------------------------------------------------------------


def duplicate_endpoint_ips(endpoints: Mapping[str, CceEndpoint]) -> list[Violation]:
    """No two endpoint records hold the same IP."""
    holders: dict[str, list[str]] = defaultdict(list)
    for key, ep in endpoints.items():
        if ep.mode.value == "vpc-eni-exclusive":
            continue  # the ENI's primary IP, moved whole: one pod per ENI by construction
        for ip in endpoint_ip_list(ep):
            holders[ip].append(key)
    return [Violation("duplicate-ip", f"{ip} is held by {len(keys)} endpoint records: {', '.join(sorted(keys))}",
                      (ip,), tuple(sorted(keys))) for ip, keys in sorted(holders.items()) if len(keys) > 1]


def duplicate_live_ips(live: Iterable[LivePod]) -> list[Violation]:
    """No two live pods were told the same IP by their CNI results."""
    holders: dict[str, list[str]] = defaultdict(list)
    for pod in live:
        holders[pod.ip].append(pod.key)
    return [Violation("duplicate-ip", f"{ip} was given to {len(keys)} live pods: {', '.join(sorted(keys))}",
                      (ip,), tuple(sorted(keys))) for ip, keys in sorted(holders.items()) if len(keys) > 1]


# ---- once the faults stopped and the system settled ------------------------------------------------------------


def pods_match_records(live: Iterable[LivePod], endpoints: Mapping[str, CceEndpoint]) -> list[Violation]:
    """Every live pod has its endpoint with the IP its CNI result said, and every endpoint has a live pod."""
    found: list[Violation] = []
    pods = {p.key: p for p in live}
    for key, pod in sorted(pods.items()):
        ep = endpoints.get(key)
        if ep is None:
            found.append(Violation("pod-without-endpoint", f"live pod {key} ({pod.ip}) has no endpoint record",
                                   (pod.ip,), (key,)))
        elif pod.ip not in endpoint_ip_list(ep):
            found.append(Violation("ip-changed", f"pod {key} was given {pod.ip}, its record says "
                                   f"{', '.join(endpoint_ip_list(ep))}", (pod.ip, *endpoint_ip_list(ep)), (key,)))
    for key in sorted(set(endpoints) - set(pods)):
        ips = tuple(endpoint_ip_list(endpoints[key]))
        found.append(Violation("endpoint-without-pod", f"endpoint {key} ({', '.join(ips)}) has no live pod",
                               ips, (key,)))
    return found


def claims_match_endpoints(truth: Truth) -> list[Violation]:
    """A pool's claims and the endpoint records say the same: IP -> key, both ways."""
    found: list[Violation] = []
    claimed: dict[str, str] = {}
    for pool in truth.pools.values():
        claimed.update(pool.allocated)
    held = {ip: key for key, ep in truth.endpoints.items() for ip in endpoint_ip_list(ep)
            if ep.mode.value != "vpc-eni-exclusive"}
    for ip, key in sorted(claimed.items()):
        if held.get(ip) != key:
            found.append(Violation("claim-without-endpoint", f"{ip} is claimed by {key} in the pool, but "
                                   f"{'no endpoint holds it' if ip not in held else held[ip] + ' holds it'}",
                                   (ip,), (key,)))
    for ip, key in sorted(held.items()):
        if ip not in claimed:
            found.append(Violation("endpoint-without-claim", f"endpoint {key} holds {ip}, no pool claims it",
                                   (ip,), (key,)))
    return found


def _ours(cloud_eni: Mapping[str, Any]) -> bool:
    return str(cloud_eni.get("description", "")).startswith(OUR_ENI)


def _secondaries(cloud_eni: Mapping[str, Any]) -> set[str]:
    return {p["privateIpAddress"] for p in cloud_eni.get("privateIpSet", []) if not p.get("primary")}


def cloud_matches_records(truth: Truth) -> list[Violation]:
    """Every ENI of ours in the cloud is known, attached, and carries exactly the IPs its record says (no IP the
    cloud charges us for is unknown to the pools: none leaked); every record's ENI exists in the cloud."""
    found: list[Violation] = []
    cloud = {e["eniId"]: e for e in truth.cloud_enis if _ours(e)}
    for eni_id, ce in sorted(cloud.items()):
        record = truth.enis.get(eni_id)
        if record is None:
            found.append(Violation("leaked-eni", f"ENI {eni_id} ({ce.get('status')}) of ours is in the cloud, no "
                                   "record knows it", tuple(sorted(_secondaries(ce))), (eni_id,)))
            continue
        if ce.get("status") != "inuse" and record.use is not EniUse.EXCLUSIVE:
            found.append(Violation("eni-not-attached", f"ENI {eni_id} of {record.node} is {ce.get('status')} in the "
                                   "cloud", (), (eni_id,)))
        if record.use is EniUse.EXCLUSIVE:
            continue
        known = {str(ip) for ip in record.secondary_ips}
        for ip in sorted(_secondaries(ce) - known):
            found.append(Violation("leaked-ip", f"{ip} is on ENI {eni_id} in the cloud; no record or pool has it",
                                   (ip,), (eni_id,)))
        for ip in sorted(known - _secondaries(ce)):
            found.append(Violation("phantom-ip", f"{ip} is in the record of ENI {eni_id}; the cloud does not have it",
                                   (ip,), (eni_id,)))
    for eni_id, record in sorted(truth.enis.items()):
        if record.state is not EniState.DELETED and record.use is not EniUse.PRIMARY_NIC and eni_id not in cloud:
            found.append(Violation("phantom-eni", f"ENI {eni_id} of {record.node} has a record, the cloud has no "
                                   "such ENI of ours", (), (eni_id,)))
    return found


def endpoints_on_pool_ips(truth: Truth) -> list[Violation]:
    """Every endpoint's IP is one of its node's ENI IPs."""
    by_node: dict[str, set[str]] = defaultdict(set)
    for record in truth.enis.values():
        by_node[record.node].update(str(p.ip) for p in record.private_ips)
    return [Violation("endpoint-ip-not-in-pool", f"endpoint {key} holds {ip}, which no ENI of {ep.node} carries",
                      (ip,), (key,))
            for key, ep in sorted(truth.endpoints.items()) for ip in endpoint_ip_list(ep)
            if ep.mode.value in ("vpc-eni", "vpc-eni-primary") and ip not in by_node[ep.node]]


def pools_within_watermarks(truth: Truth, slack: int = 10) -> list[Violation]:
    """Free IPs per node between pre-allocate (unless the node is at its capacity) and max-above-watermark (plus
    one batch of slack: eni_manager adds in batches of up to 10)."""
    found: list[Violation] = []
    for node, nrs in sorted(truth.nodes.items()):
        pool = truth.pools.get(node)
        if pool is None or nrs.spec.mode.value != "vpc-eni" or nrs.status.removing:
            continue
        enis = [e for e in truth.enis.values() if e.node == node and e.use is EniUse.SECONDARY_IPS
                and e.state is EniState.INUSE]
        ips = {str(ip) for e in enis for ip in e.secondary_ips}
        free = len(ips - set(pool.allocated) - set(pool.releasing) - set(pool.cooldown))
        settings = nrs.spec.pool
        cap = nrs.status.capacity
        full = len(ips) >= (settings.max_allocate or nrs.spec.max_pods) or (
            len(enis) >= cap.max_enis > 0 and all(len(e.private_ips) >= e.ip_quota > 0 for e in enis))
        if free > settings.max_above_watermark + slack:
            found.append(Violation("pool-above-watermark", f"{node} keeps {free} free IPs (max above watermark "
                                   f"{settings.max_above_watermark})"))
        if free < settings.pre_allocate and not full and not pool.cooldown:
            found.append(Violation("pool-below-watermark", f"{node} has {free} free IPs (pre-allocate "
                                   f"{settings.pre_allocate}) and room for more"))
    return found


def kernel_matches_records(truth: Truth, live: Iterable[LivePod]) -> list[Violation]:
    """Every endpoint has its host veth and /32 route on its node, every pod namespace its address; every host veth
    of ours on a node has an endpoint."""
    if truth.kernel is None:
        return []
    found: list[Violation] = []
    for key, ep in sorted(truth.endpoints.items()):
        kernel = truth.kernel.get(ep.node)
        if kernel is None or ep.mode.value == "vpc-eni-exclusive":
            continue
        ips = tuple(endpoint_ip_list(ep))
        if not ep.host_veth or ep.host_veth not in kernel.veths:
            found.append(Violation("missing-veth", f"endpoint {key} ({', '.join(ips)}): host veth "
                                   f"{ep.host_veth or '(none recorded)'} is not on {ep.node}", ips, (key,)))
        for ip in ips:
            if ip not in kernel.routes:
                found.append(Violation("missing-route", f"endpoint {key}: no route {ip}/32 on {ep.node}", (ip,),
                                       (key,)))
    recorded = {(ep.node, ep.host_veth) for ep in truth.endpoints.values()}
    for node, kernel in sorted(truth.kernel.items()):
        for veth, alias in sorted(kernel.veths.items()):
            if (node, veth) not in recorded:
                found.append(Violation("stray-veth", f"host veth {veth} ({alias or 'no alias'}) on {node} has no "
                                       "endpoint record", (), (alias,)))
    if truth.pod_addrs is not None:
        for pod in live:
            if pod.netns and pod.ip not in truth.pod_addrs.get(pod.netns, frozenset()):
                found.append(Violation("pod-missing-address", f"pod {pod.key}: {pod.ip} is not on eth0 in its "
                                       f"namespace {pod.netns}", (pod.ip,), (pod.key,)))
    return found


def settled_violations(truth: Truth, live: list[LivePod]) -> list[Violation]:
    """Everything that must hold once the faults stopped and two GC periods passed."""
    return [*duplicate_endpoint_ips(truth.endpoints), *duplicate_live_ips(live),
            *pods_match_records(live, truth.endpoints), *claims_match_endpoints(truth),
            *cloud_matches_records(truth), *endpoints_on_pool_ips(truth), *pools_within_watermarks(truth),
            *kernel_matches_records(truth, live)]

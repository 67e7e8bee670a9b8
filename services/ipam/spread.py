"""Subnet selection by PodSubnetTopologySpread (PSTS), as plain data and functions (no I/O, no clock reads).

Which spread selects a pod: the namespaced ones of its namespace whose pod selector matches its labels (highest
priority, then name), else the cluster-wide ones whose namespace selector matches its namespace's labels and whose
pod selector matches its labels (highest priority, then name). A selected pod gets an IP only from an in-use ENI of
the node in one of the spread's usable subnets of the node's zone, inside the subnet's ranges when it names some;
subnets are tried by priority, then by free IPs. When none is free, the pod waits for one subnet (the first by
priority, then by the cloud's free addresses, that the node can still grow in), and the pool's demand asks
eni_manager for IPs there (`PoolDemand.subnets`): on an ENI of that subnet, a new one when the node has none.

Dedicated ENIs (our call): an ENI in a subnet outside the node's own subnet list (`NodeSpec.subnet_ids`, when it
names any) exists only because a spread wanted it, so its IPs are for the pods spreads select: the node's ordinary
pool neither counts nor hands them out, and ipam never releases them as excess. Otherwise pods no spread selects
would quietly drift into subnets an operator set apart for particular workloads, and the ordinary watermarks would
count addresses those pods may not take. Likewise the IPs inside any spread's ranges are kept for the spread: an
ordinary pod never takes one, even from a shared ENI. A node with no subnet list of its own shares every subnet of
its zone, so nothing is dedicated there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from schemas.records import (
    Eni,
    EniState,
    EniUse,
    LabelSelector,
    NodePool,
    NodeSpec,
    PodInfo,
    SelectorOperator,
    SpreadSubnet,
    Subnet,
    SubnetDemand,
    SubnetSpread,
)
from schemas.subjects import psts_key
from services.ipam.facts import IpSlot, NodeFacts

# ---- selection ---------------------------------------------------------------------------------------------------


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; the empty selector matches everything."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present, value = req.key in labels, labels.get(req.key)
        ok = {SelectorOperator.IN: present and value in req.values,
              SelectorOperator.NOT_IN: not present or value not in req.values,
              SelectorOperator.EXISTS: present,
              SelectorOperator.DOES_NOT_EXIST: not present}[req.operator]
        if not ok:
            return False
    return True


def _rank(spread: SubnetSpread) -> tuple[int, str]:
    return -spread.priority, spread.name


def select_spread(spreads: Iterable[SubnetSpread], pod: PodInfo) -> SubnetSpread | None:
    """The spread that decides the pod's subnets: its namespace's first, then the cluster-wide ones."""
    spreads = list(spreads)
    own = [s for s in spreads if s.namespace == pod.namespace and matches(s.pod_selector, pod.labels)]
    if own:
        return min(own, key=_rank)
    wide = [s for s in spreads if s.is_cluster_wide and matches(s.pod_selector, pod.labels)
            and (s.namespace_selector is None or matches(s.namespace_selector, pod.namespace_labels))]
    return min(wide, key=_rank) if wide else None


def spread_key(spread: SubnetSpread) -> str:
    return psts_key(spread.namespace, spread.name)


# ---- the node's side -------------------------------------------------------------------------------------------------


def is_dedicated(spec: NodeSpec, subnet_id: str) -> bool:
    """An ENI in this subnet is a spread's only (see the module's docstring)."""
    return bool(spec.subnet_ids) and subnet_id not in spec.subnet_ids


def reserved_ranges(spreads: Iterable[SubnetSpread]) -> tuple[IPv4Network, ...]:
    """The ranges every spread keeps for its own pods."""
    return tuple(r for s in spreads for sub in s.usable_subnets for r in sub.ranges)


def in_ranges(ip: IPv4Address, ranges: Sequence[IPv4Network]) -> bool:
    return any(ip in r for r in ranges)


def zone_subnets(spread: SubnetSpread, zone: str) -> list[SpreadSubnet]:
    """The spread's usable subnets in the node's zone, highest priority first."""
    return sorted((s for s in spread.usable_subnets if s.zone == zone), key=lambda s: (-s.priority, s.subnet_id))


def _fits(slot_ip: IPv4Address, sub: SpreadSubnet, others: Sequence[IPv4Network]) -> bool:
    """In the subnet's ranges when it names some; else outside every other spread's ranges."""
    return in_ranges(slot_ip, sub.ranges) if sub.ranges else not in_ranges(slot_ip, others)


def _is_free(pool: NodePool, ip: str, now: datetime) -> bool:
    until = pool.cooldown.get(ip)
    return ip not in pool.allocated and ip not in pool.releasing and (until is None or until <= now)


def spread_slots(pool: NodePool, facts: NodeFacts, spread: SubnetSpread, others: Sequence[IPv4Network],
                 now: datetime) -> list[IpSlot]:
    """Free IPs the spread's pods may take on the node, in the order to take them: subnet priority, then the
    subnet with most of them, then ENI index and address."""
    by_subnet: dict[str, list[IpSlot]] = {}
    subs = zone_subnets(spread, facts.spec.zone)
    for sub in subs:
        for eni in _subnet_enis(facts, sub.subnet_id, (EniState.INUSE,)):
            by_subnet.setdefault(sub.subnet_id, []).extend(
                IpSlot(ip, eni) for ip in sorted(eni.secondary_ips, key=int)
                if _fits(ip, sub, others) and _is_free(pool, str(ip), now))
    order = {s.subnet_id: (-s.priority, -len(by_subnet.get(s.subnet_id, [])), s.subnet_id) for s in subs}
    slots = [slot for sid in sorted(by_subnet, key=lambda k: order[k]) for slot in by_subnet[sid]]
    return slots


def _subnet_enis(facts: NodeFacts, subnet_id: str, states: Iterable[EniState]) -> list[Eni]:
    wanted = set(states)
    return sorted((e for e in facts.enis if e.node == facts.node and e.use is EniUse.SECONDARY_IPS
                   and e.subnet_id == subnet_id and e.state in wanted), key=lambda e: (e.index, e.eni_id))


def _eni_has_room(eni: Eni, facts: NodeFacts) -> bool:
    return len(eni.private_ips) < (eni.ip_quota or facts.quota.ips_per_eni)


def _range_left(sub: SpreadSubnet, facts: NodeFacts) -> bool:
    """Whether the subnet's ranges have an address the node's ENIs do not carry yet (other nodes' are not known
    here: eni_manager finds out, and the pod's wait runs out with PSTSSubnetExhausted)."""
    if sub.cidr is None:
        return False
    cidr = sub.cidr
    reserved = {cidr.network_address, next(cidr.hosts()), cidr.broadcast_address}
    held = {p.ip for e in facts.enis for p in e.private_ips}
    return any(ip in cidr and ip not in reserved and ip not in held for r in sub.ranges for ip in r)


def can_add_eni(facts: NodeFacts) -> bool:
    """The node's ENI quota leaves room for one more (every ENI of the node counts, whatever its use)."""
    held = sum(1 for e in facts.enis if e.node == facts.node and e.use is not EniUse.PRIMARY_NIC
               and e.state is not EniState.DELETED)
    return held < facts.quota.max_enis


def growth_subnet(spread: SubnetSpread, facts: NodeFacts, subnets: Mapping[str, Subnet]) -> SpreadSubnet | None:
    """The subnet the node should get more IPs in for the spread: by priority, then the cloud's free addresses,
    the first with addresses left where the node has an ENI with room, is attaching one, or may add an ENI."""
    def free(sub: SpreadSubnet) -> int:
        mirrored = subnets.get(sub.subnet_id)
        return mirrored.available_ips if mirrored is not None else 1 << 30  # not mirrored yet: the cloud decides

    live = (EniState.INUSE, EniState.ATTACHING, EniState.AVAILABLE)
    for sub in sorted(zone_subnets(spread, facts.spec.zone), key=lambda s: (-s.priority, -free(s), s.subnet_id)):
        if free(sub) <= 0 or (sub.ranges and not _range_left(sub, facts)):
            continue
        enis = _subnet_enis(facts, sub.subnet_id, live)
        if any(e.state is not EniState.INUSE or _eni_has_room(e, facts) for e in enis) or can_add_eni(facts):
            return sub
    return None


# ---- demand ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tally:
    used: int = 0
    waiting: int = 0


def subnet_demand(pool: NodePool, facts: NodeFacts) -> dict[str, SubnetDemand]:
    """What the node should hold per subnet for the spreads' pods: the IPs they use there plus one per waiting pod.
    Only subnets someone waits for, or where a dedicated ENI carries claims, are named."""
    waits: dict[str, list[list[IPv4Network]]] = {}
    for wait in pool.subnet_waiting.values():
        waits.setdefault(wait.subnet_id, []).append(list(wait.ranges))
    dedicated = {e.subnet_id for e in facts.secondary_enis if is_dedicated(facts.spec, e.subnet_id)}
    out: dict[str, SubnetDemand] = {}
    for subnet_id in sorted(set(waits) | dedicated):
        asks = waits.get(subnet_id, [])
        ranges = sorted({r for rs in asks for r in rs}, key=str) if asks and all(asks) else []
        used = sum(1 for ip in pool.allocated if (eni := facts.eni_holding(ip)) is not None
                   and eni.subnet_id == subnet_id and (not ranges or in_ranges(IPv4Address(ip), ranges)))
        if not asks and not used:
            continue
        out[subnet_id] = SubnetDemand(target_ips=used + len(asks), used=used, waiting=len(asks), ranges=ranges)
    return out


def stale_waits(pool: NodePool, now: datetime, ttl_s: float) -> list[str]:
    return sorted(k for k, w in pool.subnet_waiting.items() if w.since + timedelta(seconds=ttl_s) <= now)


def is_general_slot(facts: NodeFacts, eni: Eni | None, ip: IPv4Address) -> bool:
    """Whether an ordinary (unselected) pod may take this address: not on a dedicated ENI, not in a spread's range."""
    if eni is None:
        return True
    return not is_dedicated(facts.spec, eni.subnet_id) and not in_ranges(ip, facts.reserved)

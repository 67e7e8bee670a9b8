"""Claims of pods a PodSubnetTopologySpread selects (pure): an IP of the spread's subnets, or a wait for one subnet
recorded in `NodePool.subnet_waiting` (so the demand asks for it), or why the node cannot serve the pod at all.
See `spread.py` for the rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from ipaddress import IPv4Network

from schemas.errors import CceError, ErrorReason
from schemas.records import NodePool, Subnet, SubnetSpread, SubnetWait
from services.ipam import domain, spread
from services.ipam.facts import NodeFacts


def _names(subnets: Sequence[object]) -> str:
    return ", ".join(getattr(s, "subnet_id", str(s)) for s in subnets) or "none"


def unsatisfiable(spread_: SubnetSpread, facts: NodeFacts) -> CceError | None:
    """A spread with no usable subnet in the node's zone: no wait can help the pod on this node."""
    if spread.zone_subnets(spread_, facts.spec.zone):
        return None
    key = spread.spread_key(spread_)
    elsewhere = [f"{s.subnet_id} ({s.zone})" for s in spread_.usable_subnets]
    broken = [f"{s.subnet_id}: {s.error}" for s in spread_.subnets if s.error]
    detail = "; ".join(p for p in (f"in other zones: {', '.join(elsewhere)}" if elsewhere else "",
                                    f"unusable: {'; '.join(broken)}" if broken else "") if p)
    return CceError(ErrorReason.SUBNET_NOT_IN_ZONE, f"PodSubnetTopologySpread {key} has no usable subnet in zone "
                    f"{facts.spec.zone} of node {facts.node}" + (f" ({detail})" if detail else ""),
                    node=facts.node, psts=key, zone=facts.spec.zone)


def exhausted(spread_: SubnetSpread, facts: NodeFacts, waited_s: float) -> CceError:
    key = spread.spread_key(spread_)
    subs = spread.zone_subnets(spread_, facts.spec.zone)
    after = f" after {waited_s:g}s" if waited_s > 0 else ""
    return CceError(ErrorReason.PSTS_SUBNET_EXHAUSTED, f"no free IP for node {facts.node} in the subnets "
                    f"{_names(subs)} of PodSubnetTopologySpread {key}{after} (subnets or ranges full, or no room "
                    "on the node for another ENI)", node=facts.node, psts=key,
                    subnets=[s.subnet_id for s in subs])


def _ranges_of(spread_: SubnetSpread, subnet_id: str) -> list[IPv4Network]:
    return next((list(s.ranges) for s in spread_.usable_subnets if s.subnet_id == subnet_id), [])


def claim_in_spread(pool: NodePool, facts: NodeFacts, spread_: SubnetSpread, others: Sequence[IPv4Network],
                    subnets: Mapping[str, Subnet], key: str, now: datetime, wait: bool,
                    resume: bool = False) -> domain.Claim:
    """Like `domain.claim_ip`, within the spread's subnets. `at_capacity` means the node cannot grow in any of them
    (the caller fails the pod at once)."""
    held = domain.held_slot(pool, facts, key)
    if held is not None:
        new = drop_subnet_wait(pool, facts, key, now)
        return domain.Claim(new, not domain.same_pool(pool, new), held, reused=True)
    if resume and key not in pool.subnet_waiting:
        return domain.Claim(pool, False, cancelled=True)
    if domain.is_at_max_pods(len(pool.allocated), facts.max_allocate):
        new = drop_subnet_wait(pool, facts, key, now)
        return domain.Claim(new, not domain.same_pool(pool, new), at_max=True)
    slots = spread.spread_slots(pool, facts, spread_, others, now)
    if slots:
        slot = slots[0]
        new = pool.model_copy(deep=True)
        new.allocated[str(slot.ip)] = key
        new.cooldown.pop(str(slot.ip), None)
        new.subnet_waiting.pop(key, None)
        return domain.Claim(domain.refresh_demand(new, facts, now), True, slot)
    grow = spread.growth_subnet(spread_, facts, subnets)
    if grow is None:
        new = drop_subnet_wait(pool, facts, key, now)
        return domain.Claim(new, not domain.same_pool(pool, new), at_capacity=True)
    new = pool.model_copy(deep=True)
    if wait:
        current = new.subnet_waiting.get(key)
        since = current.since if current is not None else now
        new.subnet_waiting[key] = SubnetWait(subnet_id=grow.subnet_id, ranges=_ranges_of(spread_, grow.subnet_id),
                                             since=since)
    new = domain.refresh_demand(new, facts, now)
    return domain.Claim(new, not domain.same_pool(pool, new))


def drop_subnet_wait(pool: NodePool, facts: NodeFacts, key: str, now: datetime) -> NodePool:
    if key not in pool.subnet_waiting:
        return pool
    new = pool.model_copy(deep=True)
    del new.subnet_waiting[key]
    return domain.refresh_demand(new, facts, now)

"""vpc-route mode in ipam, pure: when a node should ask route_manager for another CIDR, why an allocation failed,
and the node's status (its CIDRs and router address, which the datapath reads from the NetResourceSet).

Pods take host addresses of the node's active CIDRs whose VPC route rule is programmed (`domain.PoolView`); the
router address (first host of the first CIDR) is never handed out. Before the node runs dry (free addresses,
counting CIDRs whose rule is still being written, below the pool's low-free threshold) ipam asks for one more CIDR
with a request id every replica derives alike from the records, so concurrent asks get one CIDR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import CceError, ErrorReason
from schemas.records import NodeCapacity, NodeCidrState, NodeCondition, NodeStatus, RouteRuleState
from schemas.subjects import expand_request_id
from services.ipam.domain import NodeFacts, PoolView, is_at_max_pods

DEFAULT_LOW_FREE = 8
DEFAULT_MAX_CIDRS = 8
CONDITION = "NodeCIDR"  # NodeStatus.conditions entry: false with a reason when the node cannot get more CIDR
_NTH = re.compile(r"-cidr-(\d+)$")
# reasons a route record or route_manager gives that are also why an allocation found no address
ROUTE_REASONS = frozenset({ErrorReason.ROUTE_QUOTA_EXCEEDED, ErrorReason.ROUTE_CONFLICT,
                           ErrorReason.ROUTE_RULE_REPEATED, ErrorReason.CIDR_POOL_EXHAUSTED,
                           ErrorReason.CLOUD_THROTTLED, ErrorReason.CLOUD_ERROR})


def hosts(facts: NodeFacts, state: NodeCidrState = NodeCidrState.ACTIVE, routed: bool | None = None) -> int:
    """Pod addresses in the node's CIDRs of `state` (routed or not, or either), less the router address."""
    router = facts.router_ip
    total = 0
    for cidr in facts.node_cidrs:
        if cidr.state is not state or (routed is not None and facts.is_routed(cidr) != routed):
            continue
        total += cidr.cidr.num_addresses - 2 - (1 if router is not None and router in cidr.cidr else 0)
    return total


def low_free_threshold(facts: NodeFacts) -> int:
    return facts.cidr_pool.low_free_threshold if facts.cidr_pool else DEFAULT_LOW_FREE


@dataclass(frozen=True)
class Expand:
    """Ask route_manager for the node's `nth` CIDR."""

    request_id: str
    nth: int
    free: int


def next_nth(facts: NodeFacts) -> int:
    """One past the highest CIDR number the node's records carry (released numbers are not reused while a
    higher one is held, so a stale ask never matches a CIDR the node already has)."""
    numbers = [int(m.group(1)) for c in facts.node_cidrs if (m := _NTH.search(c.request_id))]
    return max(numbers, default=len(facts.node_cidrs)) + 1


def needs_cidr(view: PoolView) -> Expand | None:
    """Another CIDR when the free addresses (counting CIDRs whose rule is on its way) fall below the threshold,
    unless the node could already hold all its pods or is at its CIDR maximum. None before its first CIDR
    (route_manager gives that one on registration)."""
    facts = view.facts
    if not facts.is_route_mode or not facts.node_cidrs:
        return None
    active = [c for c in facts.node_cidrs if c.state is NodeCidrState.ACTIVE]
    limit = facts.cidr_pool.max_cidrs_per_node if facts.cidr_pool else DEFAULT_MAX_CIDRS
    if len(active) >= limit:
        return None
    coming = hosts(facts, routed=False)
    free = view.free + coming - view.pending
    if free >= low_free_threshold(facts):
        return None
    if hosts(facts) - view.cooling >= facts.max_allocate:  # every pod the node may run already fits
        return None
    nth = next_nth(facts)
    return Expand(expand_request_id(facts.node, nth), nth, max(free, 0))


def condition(status: NodeStatus) -> NodeCondition | None:
    return next((c for c in status.conditions if c.type == CONDITION), None)


def with_condition(status: NodeStatus, reason: ErrorReason | None, message: str) -> NodeStatus | None:
    """The status with the NodeCIDR condition set (reason) or cleared (None); None when nothing changes."""
    current = condition(status)
    if reason is None and (current is None or current.status):
        return None
    if current is not None and not current.status and current.reason == (reason.value if reason else ""):
        return None
    new = status.model_copy(deep=True)
    new.conditions = [c for c in new.conditions if c.type != CONDITION]
    new.conditions.append(NodeCondition(type=CONDITION, status=reason is None,
                                        reason=reason.value if reason else "", message=message))
    return new


def failure(facts: NodeFacts, status: NodeStatus, used: int, waited_s: float) -> CceError:
    """Why a vpc-route allocation got no address, with its coded reason."""
    node, upper = facts.node, facts.max_allocate
    if is_at_max_pods(used, upper):
        return CceError(ErrorReason.IP_POOL_EXHAUSTED, f"node {node} is at its max pods ({upper} IPs in use)",
                        node=node, used=used, max_pods=upper)
    for cidr in facts.node_cidrs:
        route = facts.route_of(cidr.cidr)
        if cidr.state is NodeCidrState.ACTIVE and route is not None and route.state is not RouteRuleState.PROGRAMMED \
                and route.reason in ROUTE_REASONS:
            assert route.reason is not None
            return CceError(route.reason, f"no free address on node {node} after {waited_s:g}s: the route rule of "
                            f"{cidr.cidr} is not programmed: {route.message or route.conflict}", node=node,
                            cidr=str(cidr.cidr))
    cond = condition(status)
    if cond is not None and not cond.status and cond.reason:
        reason = ErrorReason(cond.reason)
        if reason in ROUTE_REASONS:
            return CceError(reason, f"no free address on node {node} after {waited_s:g}s; no more CIDR: "
                            f"{cond.message}", node=node)
    if not facts.node_cidrs or hosts(facts, routed=False):
        return CceError(ErrorReason.WAIT_NODE_CIDR, f"no free address on node {node} after {waited_s:g}s; a node "
                        "CIDR and its route rule are being set up", node=node)
    return CceError(ErrorReason.IP_POOL_EXHAUSTED, f"no free address on node {node} after {waited_s:g}s",
                    node=node, used=used)


def pod_ips(view: PoolView, status: NodeStatus) -> int:
    """Pods the node can hold by address: its max pods while it can get more CIDRs, else what its CIDRs hold."""
    facts = view.facts
    cond = condition(status)
    if cond is None or cond.status:
        return facts.max_allocate
    return min(facts.max_allocate, view.available + hosts(facts, routed=False))


def node_status(status: NodeStatus, view: PoolView) -> NodeStatus | None:
    """The status with the node's CIDRs, router address, readiness and capacity; None when nothing changed."""
    facts = view.facts
    cidrs = [c.cidr for c in facts.node_cidrs if c.state is NodeCidrState.ACTIVE]
    router = facts.router_ip
    ready = bool(facts.node_cidrs) and facts.is_routed(facts.node_cidrs[0])
    unrouted = hosts(facts, routed=False)
    capacity = NodeCapacity(free_ips=view.free, used_ips=view.used, attachable_ips=unrouted,
                            pod_ips=pod_ips(view, status))
    if (status.ready, status.cidrs, status.router_ip, status.capacity) == (ready, cidrs, router, capacity):
        return None
    new = status.model_copy(deep=True)
    new.ready, new.cidrs, new.router_ip, new.capacity, new.updated_at = ready, cidrs, router, capacity, view.now
    return new

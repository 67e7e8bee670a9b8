"""vpc-route mode as plain data and functions (no I/O, no clock reads): the cluster CIDR pool, node CIDRs and the
diff between the route rules we want and those the VPC route table holds.

- `check_blocks` / `check_against_vpc`: the start-up refusals (overlaps, a mask that does not fit).
- `next_free_cidr`: the first node CIDR not in use, in block order.
- `plan_routes`: desired rules (one per node CIDR) against the cloud listing -> a `RouteDiff` (create, delete,
  conflicts). Rules are ours when their description carries our cluster's mark; others' are never touched.
- `idle_cidrs`: a node's CIDRs that may go back to the pool (never its first).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from cloud.port import CloudRouteRule
from schemas.records import NodeCidr, NodeCidrState

DESCRIPTION_PREFIX = "cce-route"


class ConfigError(ValueError):
    """Settings the route manager refuses to start with."""


class ConflictPolicy(StrEnum):
    REPORT = "report"  # conflicts are reported; nothing holding the destination is touched
    TAKEOVER = "takeover"  # a stale rule of OUR cluster with another next hop is replaced; others' still reported


# ---- the cluster CIDR pool ---------------------------------------------------------------------------------------


def check_blocks(blocks: Sequence[IPv4Network], node_mask: int) -> None:
    """Refuse overlapping blocks and a per-node mask that does not fit every block."""
    if not blocks:
        raise ConfigError("no cluster CIDR block is configured (CCE_CLUSTER_CIDRS)")
    if not 8 <= node_mask <= 30:
        raise ConfigError(f"node CIDR mask /{node_mask} is out of range: use /8 to /30")
    for block in blocks:
        if node_mask < block.prefixlen:
            raise ConfigError(f"node CIDR mask /{node_mask} does not fit in cluster block {block}: "
                              f"a node CIDR cannot be larger than its block")
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            if a.overlaps(b):
                raise ConfigError(f"cluster CIDR blocks {a} and {b} overlap")


def check_against_vpc(blocks: Sequence[IPv4Network], vpc_cidr: IPv4Network | None,
                      subnets: Mapping[str, IPv4Network]) -> None:
    """Refuse blocks that overlap the VPC's CIDR or any of its subnets (pod routes would shadow VPC traffic)."""
    for block in blocks:
        if vpc_cidr is not None and block.overlaps(vpc_cidr):
            raise ConfigError(f"cluster CIDR block {block} overlaps the VPC CIDR {vpc_cidr}")
        for subnet_id, cidr in sorted(subnets.items()):
            if block.overlaps(cidr):
                raise ConfigError(f"cluster CIDR block {block} overlaps subnet {subnet_id} ({cidr})")


def candidates(blocks: Sequence[IPv4Network], node_mask: int) -> Iterator[IPv4Network]:
    for block in blocks:
        yield from block.subnets(new_prefix=node_mask)


def next_free_cidr(blocks: Sequence[IPv4Network], node_mask: int, used: Collection[IPv4Network],
                   avoid: Collection[IPv4Network] = ()) -> IPv4Network | None:
    """The first node CIDR, in block order, that no node holds and no foreign route rule occupies.

    Integer arithmetic: a large pool (a /12 cut in /24s is 4,096 candidates) is walked without building objects."""
    taken = {int(c.network_address) for c in (*used, *avoid) if c.prefixlen == node_mask}
    step = 2 ** (32 - node_mask)
    for block in blocks:
        start = int(block.network_address)
        for address in range(start, start + block.num_addresses, step):
            if address not in taken:
                return IPv4Network((address, node_mask))
    return None


def pool_size(blocks: Sequence[IPv4Network], node_mask: int) -> int:
    return sum(2 ** (node_mask - b.prefixlen) for b in blocks)


def first_cidr(cidrs: Iterable[NodeCidr]) -> NodeCidr | None:
    """The node's first CIDR (earliest allocated): it carries the router address and is never given back."""
    return min(cidrs, key=lambda c: (c.allocated_at, int(c.cidr.network_address)), default=None)


def router_ip(cidrs: Iterable[NodeCidr]) -> IPv4Address | None:
    first = first_cidr(cidrs)
    return first.router_ip if first else None


def usable_hosts(cidr: NodeCidr, router: IPv4Address | None) -> list[IPv4Address]:
    return [ip for ip in cidr.cidr.hosts() if ip != router]


# ---- route rules -------------------------------------------------------------------------------------------------


def description_for(cluster_id: str, node: str) -> str:
    return f"{DESCRIPTION_PREFIX}:{cluster_id}:{node}"


def owner_of(description: str, cluster_id: str) -> str | None:
    """The node a rule of our cluster is for; None when the rule is not ours."""
    prefix = f"{DESCRIPTION_PREFIX}:{cluster_id}:"
    if not description.startswith(prefix):
        return None
    return description[len(prefix):] or None


def is_ours(rule: CloudRouteRule, cluster_id: str) -> bool:
    return owner_of(rule.description, cluster_id) is not None


@dataclass(frozen=True)
class DesiredRule:
    destination: IPv4Network
    node: str
    next_hop: str  # the node's instance id
    description: str


@dataclass(frozen=True)
class Conflict:
    destination: IPv4Network
    node: str
    holder: CloudRouteRule
    ours: bool  # a stale rule of our cluster (another next hop), else someone else's

    @property
    def message(self) -> str:
        whose = "a stale rule of this cluster" if self.ours else "a rule this cluster does not own"
        return (f"{self.destination} is held by {whose} ({self.holder.rule_id}, next hop "
                f"{self.holder.next_hop_id}, description {self.holder.description!r})")


@dataclass(frozen=True)
class RouteDiff:
    """What to do to the route table: delete first (makes room), then create. `programmed` maps destinations
    already right to their rule id; conflicts are reported and left alone unless `delete` names their rule."""

    create: list[DesiredRule] = field(default_factory=list)
    delete: list[CloudRouteRule] = field(default_factory=list)
    programmed: dict[IPv4Network, str] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.delete or self.conflicts)


def _destination(rule: CloudRouteRule) -> IPv4Network | None:
    try:
        return IPv4Network(rule.destination, strict=False)
    except ValueError:
        return None


def plan_routes(desired: Iterable[DesiredRule], actual: Iterable[CloudRouteRule], cluster_id: str,
                policy: ConflictPolicy = ConflictPolicy.REPORT) -> RouteDiff:
    """Desired rules against the table's rules.

    - desired, nothing on the destination: create;
    - desired, our rule with the same next hop: programmed;
    - desired, our rule with another next hop: conflict (policy TAKEOVER: delete it, then create);
    - desired, someone else's rule: conflict, never touched;
    - our rule whose destination is not desired (or a duplicate of ours): delete.
    """
    wanted = {d.destination: d for d in desired}
    by_dest: dict[IPv4Network, list[CloudRouteRule]] = {}
    diff = RouteDiff()
    for rule in actual:
        dest = _destination(rule)
        if dest is None:
            continue
        by_dest.setdefault(dest, []).append(rule)
    for dest, rules in sorted(by_dest.items(), key=lambda kv: int(kv[0].network_address)):
        if dest not in wanted:
            diff.delete.extend(r for r in rules if is_ours(r, cluster_id))
    for dest, want in sorted(wanted.items(), key=lambda kv: int(kv[0].network_address)):
        _plan_destination(diff, want, by_dest.get(dest, []), cluster_id, policy)
    return diff


def _plan_destination(diff: RouteDiff, want: DesiredRule, rules: list[CloudRouteRule], cluster_id: str,
                      policy: ConflictPolicy) -> None:
    ours = [r for r in rules if is_ours(r, cluster_id)]
    foreign = [r for r in rules if not is_ours(r, cluster_id)]
    right = [r for r in ours if r.next_hop_id == want.next_hop]
    stale = [r for r in ours if r.next_hop_id != want.next_hop]
    if foreign:
        diff.conflicts.append(Conflict(want.destination, want.node, foreign[0], ours=False))
        return
    if right:
        diff.programmed[want.destination] = right[0].rule_id
        diff.delete.extend(right[1:] + stale)  # duplicates of ours cannot exist in BCE, but never keep extras
        return
    if stale:
        if policy is ConflictPolicy.TAKEOVER:
            diff.delete.extend(stale)
            diff.create.append(want)
        else:
            diff.conflicts.append(Conflict(want.destination, want.node, stale[0], ours=True))
        return
    diff.create.append(want)


def foreign_destinations(actual: Iterable[CloudRouteRule], cluster_id: str) -> set[IPv4Network]:
    """Destinations held by rules we do not own: the allocator does not hand them out."""
    out = set()
    for rule in actual:
        dest = _destination(rule)
        if dest is not None and not is_ours(rule, cluster_id):
            out.add(dest)
    return out


# ---- giving idle CIDRs back --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CidrUse:
    """How a node uses one of its CIDRs, from ipam's pool: IPs claimed and cooling down in it."""

    cidr: NodeCidr
    used: int
    cooling: int


def node_free(uses: Sequence[CidrUse], router: IPv4Address | None, skip: Collection[IPv4Network] = ()) -> int:
    """Free addresses of the node over its active CIDRs (less the router address), ignoring `skip`."""
    free = 0
    for use in uses:
        if use.cidr.state is not NodeCidrState.ACTIVE or use.cidr.cidr in skip:
            continue
        hosts = use.cidr.cidr.num_addresses - 2 - (1 if router is not None and router in use.cidr.cidr else 0)
        free += max(0, hosts - use.used - use.cooling)
    return free


def idle_cidrs(uses: Sequence[CidrUse], release_free_threshold: int) -> list[NodeCidr]:
    """Active CIDRs with nothing claimed or cooling in them that the node can spare: never its first, and only
    while the node keeps at least `release_free_threshold` free addresses without them (so no flapping)."""
    first = first_cidr(u.cidr for u in uses)
    router = first.router_ip if first else None
    idle = [u.cidr for u in uses if u.cidr.state is NodeCidrState.ACTIVE and u.used == 0 and u.cooling == 0
            and first is not None and u.cidr.cidr != first.cidr]
    idle.sort(key=lambda c: (c.allocated_at, int(c.cidr.network_address)), reverse=True)  # newest first
    spared: list[NodeCidr] = []
    for cidr in idle:
        skip = {c.cidr for c in spared} | {cidr.cidr}
        if node_free(uses, router, skip) >= release_free_threshold:
            spared.append(cidr)
    return spared


def is_due(since: datetime, now: datetime, delay_s: float) -> bool:
    return since + timedelta(seconds=delay_s) <= now

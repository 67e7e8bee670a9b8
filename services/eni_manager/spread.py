"""IPs in the subnets PodSubnetTopologySpreads ask for (pure, like `domain`): ipam states per node and subnet how many
IPs its spread-selected pods want there (`PoolDemand.subnets`, inside IP ranges when they name some); this plan
adds them to the node's in-use ENIs of that subnet (named IPs from the ranges, counted ones otherwise) and, when
the node has no ENI there with room, creates one in that subnet if its ENI quota allows, at most one creation or
attachment in flight per node.

ENIs in a subnet outside the node's own subnet list are the spreads' only ("dedicated"; ipam's `spread.py` says
why): the ordinary plan (`domain.plan_node`) neither counts nor grows them, and this plan finishes, attaches and
collects them when stuck. IPs we put on them are never released as excess: the next pod of the spread reuses them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from schemas.records import Eni, EniState, EniUse, NetResourceSet, NodePool, Subnet, SubnetDemand
from services.eni_manager.domain import (
    BATCH,
    COUNTED_STATES,
    PENDING_STATES,
    Action,
    AddIps,
    AttachEni,
    AwaitAttach,
    CreateEni,
    DeleteEni,
    PlanSettings,
    Quota,
    _room,
    _subnet_free,
    confirmed_releases,
    eni_description,
    eni_name,
    is_dedicated,
    is_stuck,
    lowest_free_index,
)


def _in(ip: IPv4Address, ranges: Sequence[IPv4Network]) -> bool:
    return not ranges or any(ip in r for r in ranges)


def held_in(enis: Sequence[Eni], ranges: Sequence[IPv4Network], pool: NodePool | None) -> int:
    """Secondaries (inside `ranges`) on ENIs in use or being attached, less those confirmed for release."""
    gone = confirmed_releases(pool)
    return sum(1 for e in enis if e.state in COUNTED_STATES for ip in e.secondary_ips
               if str(ip) not in gone and _in(ip, ranges))


def range_ips(ranges: Sequence[IPv4Network], cidr: IPv4Network, taken: Collection[str]) -> Iterator[str]:
    """Addresses of the ranges that are usable in the subnet (not its network, gateway or broadcast address) and
    on no ENI we know of."""
    reserved = {cidr.network_address, next(cidr.hosts()), cidr.broadcast_address}
    for r in ranges:
        for ip in r:
            if ip in cidr and ip not in reserved and str(ip) not in taken:
                yield str(ip)


def _adds(eni: Eni, count: int, ranges: Sequence[IPv4Network], taken: set[str]) -> list[AddIps]:
    if not ranges:
        return [AddIps(eni.eni_id, min(BATCH, count - i)) for i in range(0, count, BATCH)]
    ips: list[str] = []
    for ip in range_ips(ranges, eni.subnet_cidr, taken):
        if len(ips) == count:
            break
        ips.append(ip)
    taken.update(ips)
    return [AddIps(eni.eni_id, len(ips[i:i + BATCH]), ips=tuple(ips[i:i + BATCH])) for i in range(0, len(ips), BATCH)]


def plan_spread(nrs: NetResourceSet, enis: Sequence[Eni], pool: NodePool | None, quota: Quota,
                subnets: Mapping[str, Subnet], settings: PlanSettings, now: datetime, *, taken: Collection[str] = (),
                other_enis: int = 0, busy: bool = False) -> list[Action]:
    """The actions for the spreads' subnets of a live vpc-eni node; `busy`: another ENI is being created or
    attached for the node (so none is created here), `taken`: IPs on any ENI we know (never asked for by name)."""
    mine = [e for e in enis if e.use is EniUse.SECONDARY_IPS]
    dedicated = [e for e in mine if is_dedicated(nrs.spec, e.subnet_id)]
    stuck = {e.eni_id for e in dedicated if is_stuck(e, now, settings.stuck_after_s)}
    actions: list[Action] = [DeleteEni(i, "stuck") for i in sorted(stuck)]
    pending = [e for e in dedicated if e.eni_id not in stuck and e.state in PENDING_STATES]
    actions += [AttachEni(e.eni_id) if e.state is EniState.AVAILABLE else AwaitAttach(e.eni_id) for e in pending]
    busy = busy or bool(pending)
    names = set(taken)
    demand = pool.demand.subnets if pool is not None else {}
    for subnet_id, want in sorted(demand.items()):
        live = [e for e in mine if e.subnet_id == subnet_id and e.eni_id not in stuck]
        needed = want.target_ips - held_in(live, want.ranges, pool)
        adds, needed = _fill(live, subnet_id, want, needed, quota, pool, subnets, names)
        actions += adds
        if needed > 0 and not busy and not any(e.state in PENDING_STATES for e in live):
            created = _create(nrs, enis, quota, subnets, settings, subnet_id, other_enis)
            if created is not None:
                actions.append(created)
                busy = True
    return actions


def _fill(live: Sequence[Eni], subnet_id: str, want: SubnetDemand, needed: int, quota: Quota,
          pool: NodePool | None, subnets: Mapping[str, Subnet], names: set[str]) -> tuple[list[AddIps], int]:
    """Adds to the subnet's in-use ENIs with room, the fullest first; returns them and what is still needed."""
    gone = confirmed_releases(pool)
    actions: list[AddIps] = []
    left = _subnet_free(subnets, subnet_id)
    for eni in sorted((e for e in live if e.state is EniState.INUSE),
                      key=lambda e: (-len(e.secondary_ips), e.index, e.eni_id)):
        count = min(_room(eni, quota, gone), needed, left)
        if count <= 0:
            continue
        adds = _adds(eni, count, want.ranges, names)
        added = sum(a.count for a in adds)
        actions += adds
        needed, left = needed - added, left - added
    return actions, needed


def _create(nrs: NetResourceSet, enis: Sequence[Eni], quota: Quota, subnets: Mapping[str, Subnet],
            settings: PlanSettings, subnet_id: str, other_enis: int) -> CreateEni | None:
    """A new secondary-IP ENI in the subnet, when the node's quota allows and the subnet has room."""
    held = [e for e in enis if e.use is not EniUse.PRIMARY_NIC and e.state is not EniState.DELETED]
    subnet = subnets.get(subnet_id)
    if len(held) + other_enis >= quota.max_enis or (subnet is not None and (subnet.available_ips < 2
                                                                             or subnet.zone != nrs.spec.zone)):
        return None
    index = lowest_free_index(e.index for e in held)
    return CreateEni(subnet_id, index, eni_name(settings.cluster_id, nrs.name, index),
                     eni_description(settings.cluster_id, nrs.name), tuple(nrs.spec.security_group_ids))

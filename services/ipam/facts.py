"""What ipam knows about a node besides its pool: its spec, its ENI records (eni_manager's), its provisioning record
and, in vpc-route, its CIDRs and route rules. Plain data, shared by the pool maths of every mode."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from schemas.base import NetworkMode
from schemas.errors import ErrorReason
from schemas.records import (
    ClusterCidrPool,
    Eni,
    EniProvision,
    EniState,
    EniUse,
    NodeCidr,
    NodeCidrState,
    NodeSpec,
    PoolSettings,
    RouteRule,
    RouteRuleState,
)
from services.ipam import watermarks as wm

ROUTE_TABLE_BASE = 127
# A provisioning error eni_manager reports that is also the reason an allocation failed.
PROVISION_REASONS = frozenset({
    ErrorReason.SUBNET_NO_MORE_IP, ErrorReason.ENI_CAPACITY_EXCEED, ErrorReason.NO_AVAILABLE_SUBNET,
    ErrorReason.CLOUD_THROTTLED, ErrorReason.CLOUD_ERROR,
})
LIVE_ENI_STATES = frozenset({EniState.AVAILABLE, EniState.ATTACHING, EniState.INUSE})


@dataclass(frozen=True)
class IpSlot:
    """One pod address: a secondary IP of an ENI, or (vpc-route) a host address of one of the node's CIDRs."""

    ip: IPv4Address
    eni: Eni | None = None
    cidr: IPv4Network | None = None

    @property
    def origin(self) -> str:
        """What the address comes from: the ENI id or the node CIDR."""
        return self.eni.eni_id if self.eni is not None else str(self.cidr)


@dataclass(frozen=True)
class NodeFacts:
    """Everything about a node besides its pool: its spec, its ENI records, eni_manager's view of it."""

    node: str
    spec: NodeSpec
    enis: tuple[Eni, ...] = ()
    provision: EniProvision | None = None
    cidrs: tuple[NodeCidr, ...] = ()  # vpc-route: the node's CIDRs (route_manager's records)
    routes: tuple[RouteRule, ...] = ()  # vpc-route: the route rules of those CIDRs
    cidr_pool: ClusterCidrPool | None = None
    reserved: tuple[IPv4Network, ...] = ()  # the ranges PodSubnetTopologySpreads keep for their pods (spread.py)

    @property
    def is_route_mode(self) -> bool:
        return self.spec.mode is NetworkMode.VPC_ROUTE

    @property
    def settings(self) -> PoolSettings:
        return self.spec.pool

    @property
    def quota(self) -> wm.Quota:
        if self.spec.mode is NetworkMode.VPC_ENI_PRIMARY:
            return wm.primary_nic_quota(self.spec, self.provision)
        return wm.eni_quota(self.spec, self.provision)

    @property
    def ip_use(self) -> EniUse:
        """Which ENIs carry the node's pod IPs: the primary NIC in vpc-eni-primary, else secondary-IP ENIs."""
        return EniUse.PRIMARY_NIC if self.spec.mode is NetworkMode.VPC_ENI_PRIMARY else EniUse.SECONDARY_IPS

    @property
    def max_allocate(self) -> int:
        return wm.max_allocate(self.spec)

    @cached_property
    def secondary_enis(self) -> list[Eni]:
        """The ENIs whose secondary IPs are the node's pool (secondary-IP ENIs, or the primary NIC in
        vpc-eni-primary), in order of their node-local index."""
        mine = [e for e in self.enis if e.node == self.node and e.use is self.ip_use]
        return sorted(mine, key=lambda e: (e.index, e.eni_id))

    @cached_property
    def usable_enis(self) -> list[Eni]:
        return [e for e in self.secondary_enis if e.state is EniState.INUSE]

    @cached_property
    def _holders(self) -> dict[str, Eni]:
        return {str(ip): eni for eni in self.secondary_enis for ip in eni.secondary_ips}

    def eni_holding(self, ip: str) -> Eni | None:
        """The node's ENI record (any state) that carries `ip` as a secondary IP."""
        return self._holders.get(ip)

    # ---- vpc-route ---------------------------------------------------------------------------------------------

    @cached_property
    def node_cidrs(self) -> list[NodeCidr]:
        """The node's CIDRs, first allocated first (the first carries the router address)."""
        mine = [c for c in self.cidrs if c.node == self.node]
        return sorted(mine, key=lambda c: (c.allocated_at, int(c.cidr.network_address)))

    @property
    def router_ip(self) -> IPv4Address | None:
        """The pod gateway on the node: the first host address of its first CIDR."""
        return self.node_cidrs[0].router_ip if self.node_cidrs else None

    def route_of(self, cidr: IPv4Network) -> RouteRule | None:
        return next((r for r in self.routes if r.destination == cidr), None)

    def is_routed(self, cidr: NodeCidr) -> bool:
        route = self.route_of(cidr.cidr)
        return route is not None and route.state is RouteRuleState.PROGRAMMED and route.node == self.node

    @cached_property
    def usable_cidrs(self) -> list[NodeCidr]:
        """Active CIDRs whose route rule is programmed: pods there are reachable across the VPC."""
        return [c for c in self.node_cidrs if c.state is NodeCidrState.ACTIVE and self.is_routed(c)]

    def cidr_holding(self, ip: str) -> NodeCidr | None:
        addr = IPv4Address(ip)
        return next((c for c in self.node_cidrs if addr in c.cidr), None)

    def slot_of(self, ip: str) -> IpSlot | None:
        """The address as a slot of the node (any ENI state, any CIDR state), or None when the node lost it."""
        if self.is_route_mode:
            cidr = self.cidr_holding(ip)
            if cidr is None or IPv4Address(ip) == self.router_ip:
                return None
            return IpSlot(IPv4Address(ip), cidr=cidr.cidr)
        eni = self.eni_holding(ip)
        return IpSlot(IPv4Address(ip), eni) if eni is not None else None

    def route_slots(self) -> list[IpSlot]:
        router = self.router_ip
        return [IpSlot(ip, cidr=c.cidr) for c in self.usable_cidrs for ip in c.cidr.hosts() if ip != router]

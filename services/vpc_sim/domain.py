"""The simulated cloud: one VPC with subnets, instances, ENIs and route tables, as plain data and functions.

Every operation takes `now` (epoch seconds) and first calls `advance(now)`, which completes the asynchronous ENI
moves whose delay has passed (attaching → inuse after `attach_delay_s`, detaching → available after
`detach_delay_s`). Ids come from counters kept in the state (`eni-00000001`, ...) and addresses are the lowest
free ones, so the same calls on the same state always give the same results, and a restarted simulator
continues the same sequences. Refusals raise `CloudFault` with the BCE code and HTTP status of the README.

IP quota of an ENI (primary IP included): by the memory of the instance it is attached to (or attaching to /
detaching from); while attached to nothing, `Tunables.unattached_eni_ip_quota` (8). Attaching an ENI that holds
more IPs than the target instance allows is refused with VmMemoryCanNotAttachMoreIpException. ENIs that are
attaching, in use or detaching all count against the instance's ENI quota.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.vpc_sim.model import (
    INSTANCE_TYPES,
    MAX_BATCH,
    CloudFault,
    Code,
    Eni,
    EniStatus,
    Instance,
    RouteRule,
    RouteTable,
    Subnet,
    Tunables,
    default_eni_quota,
    invalid,
    not_found,
    parse_cidr,
    parse_ipv4,
)

if TYPE_CHECKING:
    from services.vpc_sim.fabric import FabricSpec

__all__ = ["CloudFault", "Code", "EniStatus", "SimCloud", "Transition"]

STATE_VERSION = 1
MAX_REMEMBERED_TOKENS = 1000
MIN_SUBNET_PREFIX, MAX_SUBNET_PREFIX = 16, 29
ID_PREFIX = {"vpc": "vpc", "subnet": "sbn", "instance": "i", "eni": "eni", "route_table": "rt", "rule": "rr"}


@dataclass(frozen=True)
class Transition:
    """One completed asynchronous move of an ENI."""

    eni_id: str
    old: EniStatus
    new: EniStatus


@dataclass
class SimCloud:
    vpc_id: str
    vpc_cidr: str
    main_route_table_id: str
    seed: int = 0
    tunables: Tunables = field(default_factory=Tunables)
    subnets: dict[str, Subnet] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    enis: dict[str, Eni] = field(default_factory=dict)
    route_tables: dict[str, RouteTable] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    tokens: OrderedDict[str, Any] = field(default_factory=OrderedDict)

    # ---- construction and ids -------------------------------------------------------------------------------

    @classmethod
    def create(cls, vpc_cidr: str = "10.0.0.0/8", *, seed: int = 0, tunables: Tunables | None = None) -> SimCloud:
        """A fresh VPC with its main route table and nothing else."""
        net = parse_cidr(vpc_cidr, "VPC CIDR")
        counters: dict[str, int] = {}
        vpc_id = _next_id(counters, "vpc")
        rt_id = _next_id(counters, "route_table")
        cloud = cls(vpc_id=vpc_id, vpc_cidr=str(net), main_route_table_id=rt_id, seed=seed,
                    tunables=tunables or Tunables(), counters=counters)
        cloud.route_tables[rt_id] = RouteTable(rt_id, vpc_id)
        return cloud

    def _new_id(self, kind: str) -> str:
        return _next_id(self.counters, kind)

    def _new_mac(self) -> str:
        """Locally administered unicast MACs, 02:<seed>:<counter>, unique within this simulator."""
        n = self.counters.get("mac", 0) + 1
        self.counters["mac"] = n
        octets = [0x02, self.seed & 0xFF, *n.to_bytes(4, "big")]
        return ":".join(f"{o:02x}" for o in octets)

    def _claim_id(self, kind: str, wanted: str | None, taken: dict[str, Any]) -> str:
        if wanted is None:
            new = self._new_id(kind)
            while new in taken:
                new = self._new_id(kind)
            return new
        if not wanted or len(wanted) > 64 or not all(c.isalnum() or c in "-_" for c in wanted):
            raise invalid(f"bad {kind} id {wanted!r}")
        if wanted in taken:
            raise CloudFault.of(Code.CONFLICT, f"{kind} {wanted} already exists")
        return wanted

    # ---- time ------------------------------------------------------------------------------------------------

    def advance(self, now: float) -> list[Transition]:
        """Complete every pending ENI move due at `now`; returns what moved."""
        moved: list[Transition] = []
        for eni in self.enis.values():
            if eni.transition_at is None or eni.transition_at > now:
                continue
            old = eni.status
            if old == EniStatus.ATTACHING:
                eni.move(EniStatus.INUSE)
            elif old == EniStatus.DETACHING:
                eni.move(EniStatus.AVAILABLE)
                eni.instance_id = None
            else:
                eni.transition_at = None
                continue
            moved.append(Transition(eni.eni_id, old, eni.status))
        return moved

    def next_transition_at(self) -> float | None:
        pending = [e.transition_at for e in self.enis.values() if e.transition_at is not None]
        return min(pending) if pending else None

    # ---- idempotency (clientToken) ---------------------------------------------------------------------------

    def recall(self, api: str, token: str | None) -> Any:
        """The reply given to an earlier successful call of `api` with this client token, if any."""
        return None if not token else self.tokens.get(f"{api}:{token}")

    def remember(self, api: str, token: str | None, reply: Any) -> None:
        if not token:
            return
        self.tokens[f"{api}:{token}"] = reply
        while len(self.tokens) > MAX_REMEMBERED_TOKENS:
            self.tokens.popitem(last=False)

    # ---- lookups ---------------------------------------------------------------------------------------------

    def subnet(self, subnet_id: str) -> Subnet:
        found = self.subnets.get(subnet_id)
        if found is None:
            raise not_found("subnet", subnet_id)
        return found

    def instance(self, instance_id: str) -> Instance:
        found = self.instances.get(instance_id)
        if found is None:
            raise not_found("instance", instance_id)
        return found

    def eni(self, eni_id: str) -> Eni:
        found = self.enis.get(eni_id)
        if found is None:
            raise not_found("eni", eni_id)
        return found

    def route_table(self, route_table_id: str | None = None, vpc_id: str | None = None) -> RouteTable:
        if route_table_id:
            table = self.route_tables.get(route_table_id)
            if table is None:
                raise not_found("route table", route_table_id)
            return table
        if vpc_id:
            self.check_vpc(vpc_id)
            return self.route_tables[self.main_route_table_id]
        raise invalid("routeTableId or vpcId is required")

    def check_vpc(self, vpc_id: str) -> None:
        if vpc_id != self.vpc_id:
            raise not_found("vpc", vpc_id)

    def list_subnets(self, zone: str | None = None) -> list[Subnet]:
        return [s for _, s in sorted(self.subnets.items()) if zone is None or s.zone == zone]

    def list_enis(self, instance_id: str | None = None, name: str | None = None) -> list[Eni]:
        return [e for _, e in sorted(self.enis.items())
                if (instance_id is None or e.instance_id == instance_id) and (name is None or e.name == name)]

    def enis_of(self, instance_id: str) -> list[Eni]:
        return [e for e in self.enis.values() if e.instance_id == instance_id]

    def eni_ip_quota(self, eni: Eni) -> int:
        if eni.instance_id is None:
            return self.tunables.unattached_eni_ip_quota
        return self.instance(eni.instance_id).ips_per_eni

    # ---- subnets (admin) -------------------------------------------------------------------------------------

    def create_subnet(self, *, zone: str, cidr: str, name: str | None = None, subnet_id: str | None = None,
                      description: str = "") -> Subnet:
        net = parse_cidr(cidr, "subnet CIDR")
        vpc = ipaddress.IPv4Network(self.vpc_cidr)
        if not net.subnet_of(vpc):
            raise invalid(f"subnet CIDR {net} is not inside the VPC CIDR {vpc}")
        if not MIN_SUBNET_PREFIX <= net.prefixlen <= MAX_SUBNET_PREFIX:
            raise invalid(f"subnet CIDR {net}: the mask must be /{MIN_SUBNET_PREFIX} to /{MAX_SUBNET_PREFIX}")
        for other in self.subnets.values():
            if net.overlaps(other.network):
                raise invalid(f"subnet CIDR {net} overlaps subnet {other.subnet_id} ({other.cidr})")
        if not zone:
            raise invalid("zone is required")
        new_id = self._claim_id("subnet", subnet_id, self.subnets)
        subnet = Subnet(new_id, name or new_id, zone, str(net), self.vpc_id, description)
        self.subnets[new_id] = subnet
        return subnet

    def reserve(self, subnet_id: str, *, cidr: str | None = None, ips: list[str] | None = None) -> list[str]:
        """Set addresses aside so they are never handed out; returns those newly reserved."""
        subnet = self.subnet(subnet_id)
        wanted = _reservation_addresses(subnet, cidr, ips)
        system = subnet.system_addresses()
        for ip in wanted:
            if ip in subnet.used:
                raise CloudFault.of(Code.IP_IN_USE, f"{ip} is in use by {subnet.used[ip]}")
        new = [ip for ip in wanted if ip not in system and ip not in subnet.reserved]
        subnet.reserved.update(new)
        return new

    # ---- instances (admin) -----------------------------------------------------------------------------------

    def create_instance(self, *, instance_type: str, cpus: int, memory_mib: int, zone: str, now: float,
                        name: str | None = None, instance_id: str | None = None, subnet_id: str | None = None,
                        eni_quota: int | None = None, primary_ip: str | None = None) -> Instance:
        self.advance(now)
        if instance_type not in INSTANCE_TYPES:
            raise invalid(f"instanceType must be one of {', '.join(INSTANCE_TYPES)}, got {instance_type!r}")
        if cpus < 1 or memory_mib < 256:
            raise invalid(f"an instance needs cpus >= 1 and memoryMiB >= 256, got {cpus} and {memory_mib}")
        if eni_quota is not None and not 0 <= eni_quota <= 64:
            raise invalid(f"eniQuota must be in 0..64, got {eni_quota}")
        subnet = self._instance_subnet(zone, subnet_id)
        saved = dict(self.counters)
        new_id = self._claim_id("instance", instance_id, self.instances)
        try:
            ip = self._assign(subnet, new_id, [primary_ip] if primary_ip else [], 0 if primary_ip else 1)[0]
        except CloudFault:
            self.counters = saved  # a refused call burns no id
            raise
        quota = default_eni_quota(instance_type, cpus) if eni_quota is None else eni_quota
        instance = Instance(new_id, name or new_id, instance_type, cpus, memory_mib, zone, subnet.subnet_id, ip,
                            self._new_mac(), quota, now)
        self.instances[new_id] = instance
        return instance

    def _instance_subnet(self, zone: str, subnet_id: str | None) -> Subnet:
        if subnet_id:
            subnet = self.subnet(subnet_id)
            if subnet.zone != zone:
                raise invalid(f"subnet {subnet_id} is in zone {subnet.zone}, not {zone}")
            return subnet
        in_zone = self.list_subnets(zone)
        if not in_zone:
            raise invalid(f"no subnet in zone {zone!r}: create one first or pass subnetId")
        return in_zone[0]

    def delete_instance(self, instance_id: str, *, now: float, force: bool = False) -> None:
        """Remove an instance. Its ENIs and the route rules through it block this unless `force`, which
        detaches the ENIs at once (they become available) and removes the rules."""
        self.advance(now)
        instance = self.instance(instance_id)
        enis = self.enis_of(instance_id)
        rules = [r for t in self.route_tables.values() for r in t.rules if r.next_hop_id == instance_id]
        if (enis or rules) and not force:
            raise CloudFault.of(Code.CONFLICT, f"instance {instance_id} has {len(enis)} ENIs and {len(rules)} "
                                "route rules; detach/delete them first or force")
        for eni in enis:
            eni.status, eni.instance_id, eni.transition_at = EniStatus.AVAILABLE, None, None
        for table in self.route_tables.values():
            table.rules = [r for r in table.rules if r.next_hop_id != instance_id]
        self.subnet(instance.subnet_id).release([instance.primary_ip, *instance.secondary_ips])
        del self.instances[instance_id]

    # ---- ENIs ------------------------------------------------------------------------------------------------

    def create_eni(self, *, name: str, subnet_id: str, now: float, security_group_ids: list[str] | None = None,
                   primary_ip: str | None = None, description: str = "") -> Eni:
        self.advance(now)
        if not name:
            raise invalid("name is required")
        subnet = self.subnet(subnet_id)
        saved = dict(self.counters)
        eni_id = self._new_id("eni")
        try:
            ip = self._assign(subnet, eni_id, [primary_ip] if primary_ip else [], 0 if primary_ip else 1)[0]
        except CloudFault:
            self.counters = saved  # a refused call burns no id
            raise
        eni = Eni(eni_id, name, subnet_id, subnet.zone, self._new_mac(), ip, now, description,
                  list(security_group_ids or []))
        self.enis[eni_id] = eni
        return eni

    def attach_eni(self, eni_id: str, instance_id: str, *, now: float) -> None:
        self.advance(now)
        eni = self.eni(eni_id)
        instance = self.instance(instance_id)
        if eni.status != EniStatus.AVAILABLE:
            raise CloudFault.of(Code.ENI_STATUS_INVALID, f"eni {eni_id} is {eni.status}, must be available")
        if eni.zone != instance.zone:
            raise invalid(f"eni {eni_id} is in zone {eni.zone}, instance {instance_id} in {instance.zone}")
        attached = len(self.enis_of(instance_id))
        if attached >= instance.eni_quota:
            raise CloudFault.of(Code.ENI_QUOTA, f"instance {instance_id} already has {attached} ENIs, "
                                f"its quota is {instance.eni_quota}")
        if len(eni.ips) > instance.ips_per_eni:
            raise CloudFault.of(Code.IP_QUOTA, f"eni {eni_id} holds {len(eni.ips)} IPs, an ENI of instance "
                                f"{instance_id} may hold {instance.ips_per_eni}")
        eni.instance_id = instance_id
        eni.move(EniStatus.ATTACHING, now + self.tunables.attach_delay_s)

    def detach_eni(self, eni_id: str, instance_id: str, *, now: float) -> None:
        self.advance(now)
        eni = self.eni(eni_id)
        self.instance(instance_id)
        if eni.status != EniStatus.INUSE:
            raise CloudFault.of(Code.ENI_STATUS_INVALID, f"eni {eni_id} is {eni.status}, must be inuse")
        if eni.instance_id != instance_id:
            raise invalid(f"eni {eni_id} is attached to {eni.instance_id}, not {instance_id}")
        eni.move(EniStatus.DETACHING, now + self.tunables.detach_delay_s)

    def delete_eni(self, eni_id: str, *, now: float) -> None:
        self.advance(now)
        eni = self.eni(eni_id)
        if eni.status != EniStatus.AVAILABLE:
            raise CloudFault.of(Code.ENI_STATUS_INVALID, f"eni {eni_id} is {eni.status}, must be available")
        self.subnet(eni.subnet_id).release(eni.ips)
        del self.enis[eni_id]

    def add_private_ips(self, eni_id: str, *, now: float, ips: list[str] | None = None, count: int = 0) -> list[str]:
        """Add secondary IPs to an ENI: the listed ones, or `count` free ones (at most 10 per call)."""
        self.advance(now)
        eni = self.eni(eni_id)
        wanted = _batch(ips, count)
        quota = self.eni_ip_quota(eni)
        if len(eni.ips) + wanted > quota:
            raise CloudFault.of(Code.IP_QUOTA, f"eni {eni_id} holds {len(eni.ips)} of {quota} IPs, "
                                f"cannot add {wanted}")
        added = self._assign(self.subnet(eni.subnet_id), eni_id, ips or [], count)
        eni.secondary_ips.extend(added)
        return added

    def remove_private_ips(self, eni_id: str, ips: list[str], *, now: float) -> None:
        """Remove secondary IPs (all or none); the primary IP cannot be removed."""
        self.advance(now)
        eni = self.eni(eni_id)
        wanted = _removal(ips, eni.secondary_ips, eni.primary_ip, f"eni {eni_id}")
        self.subnet(eni.subnet_id).release(wanted)
        eni.secondary_ips = [ip for ip in eni.secondary_ips if ip not in wanted]

    # ---- primary-NIC secondary IPs ---------------------------------------------------------------------------

    def add_instance_ips(self, instance_id: str, *, now: float, ips: list[str] | None = None,
                         count: int = 0) -> list[str]:
        self.advance(now)
        instance = self.instance(instance_id)
        wanted = _batch(ips, count)
        held = 1 + len(instance.secondary_ips)
        quota = instance.primary_nic_ip_quota
        if held + wanted > quota:
            raise CloudFault.of(Code.IP_QUOTA, f"the primary NIC of {instance_id} holds {held} of {quota} IPs, "
                                f"cannot add {wanted}")
        added = self._assign(self.subnet(instance.subnet_id), instance_id, ips or [], count)
        instance.secondary_ips.extend(added)
        return added

    def remove_instance_ips(self, instance_id: str, ips: list[str], *, now: float) -> None:
        self.advance(now)
        instance = self.instance(instance_id)
        wanted = _removal(ips, instance.secondary_ips, instance.primary_ip, f"the primary NIC of {instance_id}")
        self.subnet(instance.subnet_id).release(wanted)
        instance.secondary_ips = [ip for ip in instance.secondary_ips if ip not in wanted]

    def _assign(self, subnet: Subnet, owner: str, ips: list[str], count: int) -> list[str]:
        if ips:
            canonical = [parse_ipv4(ip) for ip in ips]
            subnet.take_exact(owner, canonical)
            return canonical
        return subnet.take(owner, count)

    # ---- route tables ----------------------------------------------------------------------------------------

    def create_route_table(self, route_table_id: str | None = None) -> RouteTable:
        new_id = self._claim_id("route_table", route_table_id, self.route_tables)
        table = RouteTable(new_id, self.vpc_id)
        self.route_tables[new_id] = table
        return table

    def create_route_rule(self, *, route_table_id: str, destination: str, next_hop_id: str,
                          next_hop_type: str = "custom", source: str = "0.0.0.0/0", description: str = "") -> RouteRule:
        table = self.route_table(route_table_id)
        dest = str(parse_cidr(destination, "destinationAddress"))
        src = str(parse_cidr(source or "0.0.0.0/0", "sourceAddress"))
        if next_hop_type != "custom":
            raise invalid(f"nexthopType {next_hop_type!r} is not supported: only 'custom' (an instance)")
        self.instance(next_hop_id)
        if any(r.destination == dest for r in table.rules):
            raise CloudFault.of(Code.ROUTE_REPEATED, f"route table {table.route_table_id} already has a rule "
                                f"for {dest}")
        if len(table.rules) >= self.tunables.route_quota:
            raise CloudFault.of(Code.ROUTE_QUOTA, f"route table {table.route_table_id} is at its quota of "
                                f"{self.tunables.route_quota} rules")
        rule = RouteRule(self._new_id("rule"), table.route_table_id, dest, next_hop_id, next_hop_type, src,
                         description)
        table.rules.append(rule)
        return rule

    def delete_route_rule(self, rule_id: str) -> None:
        for table in self.route_tables.values():
            for rule in table.rules:
                if rule.rule_id == rule_id:
                    table.rules.remove(rule)
                    return
        raise not_found("route rule", rule_id)

    # ---- the fabric and persistence --------------------------------------------------------------------------

    def fabric_spec(self) -> FabricSpec:
        from services.vpc_sim.fabric_spec import build_fabric_spec

        return build_fabric_spec(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "vpc_id": self.vpc_id, "vpc_cidr": self.vpc_cidr,
            "main_route_table_id": self.main_route_table_id, "seed": self.seed,
            "tunables": dict(self.tunables.__dict__), "counters": dict(self.counters),
            "subnets": [s.to_dict() for s in self.subnets.values()],
            "instances": [i.to_dict() for i in self.instances.values()],
            "enis": [e.to_dict() for e in self.enis.values()],
            "route_tables": [t.to_dict() for t in self.route_tables.values()],
            "tokens": [[k, v] for k, v in self.tokens.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimCloud:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}, expected {STATE_VERSION}")
        return cls(
            vpc_id=data["vpc_id"], vpc_cidr=data["vpc_cidr"], main_route_table_id=data["main_route_table_id"],
            seed=data["seed"], tunables=Tunables(**data["tunables"]), counters=dict(data["counters"]),
            subnets={s["subnet_id"]: Subnet.from_dict(s) for s in data["subnets"]},
            instances={i["instance_id"]: Instance.from_dict(i) for i in data["instances"]},
            enis={e["eni_id"]: Eni.from_dict(e) for e in data["enis"]},
            route_tables={t["route_table_id"]: RouteTable.from_dict(t) for t in data["route_tables"]},
            tokens=OrderedDict((k, v) for k, v in data["tokens"]),
        )


def _next_id(counters: dict[str, int], kind: str) -> str:
    n = counters.get(kind, 0) + 1
    counters[kind] = n
    return f"{ID_PREFIX[kind]}-{n:08x}"


def _batch(ips: list[str] | None, count: int) -> int:
    """How many addresses a batch add asks for; exactly one of `ips` or `count`, 1..10 of them."""
    if ips and count:
        raise invalid("give either the addresses or a count, not both")
    wanted = len(ips) if ips else count
    if not 1 <= wanted <= MAX_BATCH:
        raise invalid(f"a batch adds 1 to {MAX_BATCH} addresses, got {wanted}")
    return wanted


def _removal(ips: list[str], secondary: list[str], primary: str, holder: str) -> list[str]:
    if not 1 <= len(ips) <= MAX_BATCH:
        raise invalid(f"a batch removes 1 to {MAX_BATCH} addresses, got {len(ips)}")
    wanted = [parse_ipv4(ip) for ip in ips]
    if primary in wanted:
        raise invalid(f"{primary} is the primary IP of {holder} and cannot be removed")
    missing = [ip for ip in wanted if ip not in secondary]
    if missing:
        raise CloudFault.of(Code.IP_NOT_FOUND, f"{holder} has no private IP {', '.join(missing)}")
    return list(dict.fromkeys(wanted))


def _reservation_addresses(subnet: Subnet, cidr: str | None, ips: list[str] | None) -> list[str]:
    if bool(cidr) == bool(ips):
        raise invalid("give either cidr or ips")
    if cidr:
        net = parse_cidr(cidr, "reservation CIDR")
        if not net.subnet_of(subnet.network):
            raise invalid(f"{net} is not inside subnet {subnet.subnet_id} ({subnet.cidr})")
        return [str(ip) for ip in net]
    wanted = [parse_ipv4(ip) for ip in ips or []]
    outside = [ip for ip in wanted if not subnet.contains(ip)]
    if outside:
        raise invalid(f"{', '.join(outside)} not inside subnet {subnet.subnet_id} ({subnet.cidr})")
    return wanted

"""The simulated cloud's objects: subnets, instances, ENIs, route tables, and the coded fault they raise.

Plain dataclasses with the small rules that belong to one object (a subnet's address bookkeeping, an ENI's
state edges, the IP quota of an instance); `domain.SimCloud` ties them together. Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Code(StrEnum):
    """BCE error codes the simulator answers with (services/vpc_sim/README.md)."""

    MALFORMED_JSON = "MalformedJSON"
    INVALID_PARAMETER = "InvalidParameter"
    ACCESS_DENIED = "AccessDenied"
    NO_SUCH_OBJECT = "NoSuchObject"
    IP_NOT_FOUND = "ENIPrivateIPNotFound"
    ENI_STATUS_INVALID = "EniStatusInvalid"
    IP_IN_USE = "PrivateIpInUseException"
    SUBNET_NO_MORE_IP = "SubnetHasNoMoreIpException"
    IP_QUOTA = "VmMemoryCanNotAttachMoreIpException"
    ENI_QUOTA = "EniQuotaExceeded"
    ROUTE_REPEATED = "RouteRuleRepeated"
    ROUTE_QUOTA = "RouteRuleQuotaExceeded"
    RATE_LIMIT = "RateLimit"
    INTERNAL = "InternalError"
    CONFLICT = "OperationDenied"  # admin API only: deleting an instance that still has ENIs or routes


STATUS: dict[Code, int] = {
    Code.MALFORMED_JSON: 400, Code.INVALID_PARAMETER: 400, Code.ACCESS_DENIED: 403, Code.NO_SUCH_OBJECT: 404,
    Code.IP_NOT_FOUND: 404, Code.ENI_STATUS_INVALID: 409, Code.IP_IN_USE: 409, Code.SUBNET_NO_MORE_IP: 400,
    Code.IP_QUOTA: 400, Code.ENI_QUOTA: 400, Code.ROUTE_REPEATED: 400, Code.ROUTE_QUOTA: 400,
    Code.RATE_LIMIT: 429, Code.INTERNAL: 500, Code.CONFLICT: 409,
}


class CloudFault(Exception):
    """A refused cloud call: the BCE error `code`, its HTTP `status` and a human `message`."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message

    @classmethod
    def of(cls, code: Code, message: str) -> CloudFault:
        return cls(code.value, STATUS[code], message)


def invalid(message: str) -> CloudFault:
    return CloudFault.of(Code.INVALID_PARAMETER, message)


def not_found(kind: str, object_id: str) -> CloudFault:
    return CloudFault.of(Code.NO_SUCH_OBJECT, f"{kind} {object_id!r} does not exist")


class EniStatus(StrEnum):
    AVAILABLE = "available"
    ATTACHING = "attaching"
    INUSE = "inuse"
    DETACHING = "detaching"


# The only moves an ENI makes; a deleted ENI simply disappears (only from `available`).
ENI_EDGES: frozenset[tuple[EniStatus, EniStatus]] = frozenset({
    (EniStatus.AVAILABLE, EniStatus.ATTACHING), (EniStatus.ATTACHING, EniStatus.INUSE),
    (EniStatus.INUSE, EniStatus.DETACHING), (EniStatus.DETACHING, EniStatus.AVAILABLE),
})

INSTANCE_TYPES = ("BCC", "EBC", "BBC")
BBC_PRIMARY_NIC_IPS = 40
MAX_ENI_QUOTA_BY_CPU = 8
MAX_BATCH = 10


def ips_per_nic_by_memory(memory_mib: int) -> int:
    """IPs an ENI of an instance with this much memory may hold, its primary IP included."""
    gib = memory_mib / 1024
    if gib < 2:
        return 2
    for limit, quota in ((8, 8), (32, 16), (64, 30)):
        if gib <= limit:
            return quota
    return 40


def default_eni_quota(instance_type: str, cpus: int) -> int:
    return 0 if instance_type == "BBC" else min(cpus, MAX_ENI_QUOTA_BY_CPU)


def iso_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ipv4(text: object, what: str = "IP address") -> str:
    """The canonical text of an IPv4 address, or InvalidParameter."""
    if not isinstance(text, str):
        raise invalid(f"{what} must be a string, got {text!r}")
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise invalid(f"{what} {text!r} is not an IPv4 address") from None


def parse_cidr(text: object, what: str = "CIDR") -> ipaddress.IPv4Network:
    if not isinstance(text, str):
        raise invalid(f"{what} must be a string, got {text!r}")
    try:
        return ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as err:
        raise invalid(f"{what} {text!r} is not a valid IPv4 CIDR: {err}") from None


@dataclass
class Subnet:
    """A subnet of the VPC. Network, gateway (first host) and broadcast addresses are never handed out;
    `reserved` holds addresses set aside through the admin API; `used` maps each assigned IP to its owner
    (an ENI id or an instance id)."""

    subnet_id: str
    name: str
    zone: str
    cidr: str
    vpc_id: str
    description: str = ""
    reserved: set[str] = field(default_factory=set)
    used: dict[str, str] = field(default_factory=dict)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def system_addresses(self) -> set[str]:
        net = self.network
        return {str(net.network_address), self.gateway, str(net.broadcast_address)}

    @property
    def size(self) -> int:
        """Addresses that could ever be handed out (the subnet less network, gateway and broadcast)."""
        return self.network.num_addresses - 3

    @property
    def available(self) -> int:
        return self.size - len(self.reserved) - len(self.used)

    def contains(self, ip: str) -> bool:
        return ipaddress.IPv4Address(ip) in self.network

    def candidates(self) -> Iterator[str]:
        """Assignable addresses in ascending order, used or not."""
        net = self.network
        first, last = int(net.network_address) + 2, int(net.broadcast_address) - 1
        for value in range(first, last + 1):
            yield str(ipaddress.IPv4Address(value))

    def check_assignable(self, ip: str) -> None:
        """Raise unless `ip` may be given to a NIC now."""
        if not self.contains(ip):
            raise invalid(f"{ip} is not in subnet {self.subnet_id} ({self.cidr})")
        if ip in self.system_addresses():
            raise invalid(f"{ip} is the network, gateway or broadcast address of subnet {self.subnet_id}")
        if ip in self.used or ip in self.reserved:
            raise CloudFault.of(Code.IP_IN_USE, f"{ip} is already in use in subnet {self.subnet_id}")

    def take(self, owner: str, count: int) -> list[str]:
        """The `count` lowest free addresses, now owned by `owner` (all or nothing)."""
        if count > self.available:
            raise CloudFault.of(Code.SUBNET_NO_MORE_IP, f"subnet {self.subnet_id} has {self.available} free "
                                f"addresses, {count} needed")
        taken: list[str] = []
        for ip in self.candidates():
            if len(taken) == count:
                break
            if ip not in self.used and ip not in self.reserved:
                taken.append(ip)
        for ip in taken:
            self.used[ip] = owner
        return taken

    def take_exact(self, owner: str, ips: list[str]) -> None:
        for ip in ips:
            self.check_assignable(ip)
        if len(set(ips)) != len(ips):
            raise invalid(f"duplicate addresses in {ips}")
        for ip in ips:
            self.used[ip] = owner

    def release(self, ips: list[str]) -> None:
        for ip in ips:
            self.used.pop(ip, None)

    def to_dict(self) -> dict[str, Any]:
        return {"subnet_id": self.subnet_id, "name": self.name, "zone": self.zone, "cidr": self.cidr,
                "vpc_id": self.vpc_id, "description": self.description, "reserved": sorted_ips(self.reserved),
                "used": dict(sorted(self.used.items(), key=lambda kv: ip_key(kv[0])))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subnet:
        return cls(**{**data, "reserved": set(data["reserved"]), "used": dict(data["used"])})


def ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def sorted_ips(ips: set[str] | list[str]) -> list[str]:
    return sorted(ips, key=ip_key)


@dataclass
class Instance:
    """A server: `eni_quota` counts ENIs besides the primary NIC; `secondary_ips` sit on the primary NIC."""

    instance_id: str
    name: str
    instance_type: str
    cpus: int
    memory_mib: int
    zone: str
    subnet_id: str
    primary_ip: str
    mac: str
    eni_quota: int
    created_at: float
    secondary_ips: list[str] = field(default_factory=list)

    @property
    def ips_per_eni(self) -> int:
        return ips_per_nic_by_memory(self.memory_mib)

    @property
    def primary_nic_ip_quota(self) -> int:
        """BBC: 40 IPs on the primary NIC; BCC/EBC: the same quota as any of its ENIs (own address included)."""
        return BBC_PRIMARY_NIC_IPS if self.instance_type == "BBC" else self.ips_per_eni

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "secondary_ips": list(self.secondary_ips)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        return cls(**{**data, "secondary_ips": list(data["secondary_ips"])})


@dataclass
class Eni:
    """An elastic NIC. `transition_at` is when a pending attaching/detaching completes (epoch seconds)."""

    eni_id: str
    name: str
    subnet_id: str
    zone: str
    mac: str
    primary_ip: str
    created_at: float
    description: str = ""
    security_group_ids: list[str] = field(default_factory=list)
    secondary_ips: list[str] = field(default_factory=list)
    status: EniStatus = EniStatus.AVAILABLE
    instance_id: str | None = None
    transition_at: float | None = None

    @property
    def ips(self) -> list[str]:
        return [self.primary_ip, *self.secondary_ips]

    def move(self, status: EniStatus, transition_at: float | None = None) -> None:
        if (self.status, status) not in ENI_EDGES:
            raise AssertionError(f"ENI {self.eni_id}: {self.status} -> {status} is not an allowed move")
        self.status = status
        self.transition_at = transition_at

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "status": self.status.value, "security_group_ids": list(self.security_group_ids),
                "secondary_ips": list(self.secondary_ips)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Eni:
        return cls(**{**data, "status": EniStatus(data["status"]),
                      "security_group_ids": list(data["security_group_ids"]),
                      "secondary_ips": list(data["secondary_ips"])})


@dataclass
class RouteRule:
    rule_id: str
    route_table_id: str
    destination: str
    next_hop_id: str
    next_hop_type: str = "custom"
    source: str = "0.0.0.0/0"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RouteTable:
    route_table_id: str
    vpc_id: str
    rules: list[RouteRule] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"route_table_id": self.route_table_id, "vpc_id": self.vpc_id,
                "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteTable:
        return cls(data["route_table_id"], data["vpc_id"], [RouteRule(**r) for r in data["rules"]])


@dataclass
class Tunables:
    """Behaviour knobs changeable at runtime (`PUT /admin/settings`)."""

    attach_delay_s: float = 0.2
    detach_delay_s: float = 0.2
    route_quota: int = 50
    unattached_eni_ip_quota: int = 8  # IPs an ENI may hold while attached to nothing

"""`VpcApi`: every cloud operation cce-network needs, in our domain's words.

Implementations raise `schemas.errors.CceError` with a coded reason (`SubnetNoMoreIP`, `CloudThrottled`,
`ENICapacityExceed`, `CloudNotFound`, ...) and details naming the API, the cloud's own error code, its HTTP
status and request id. Rate limiting, retries and error classification belong to the implementation; callers
never retry the cloud themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from schemas.base import InstanceType
from schemas.records import EniState


class CloudApi(StrEnum):
    """The APIs, each with its own rate limit and metrics."""

    CREATE_ENI = "create_eni"
    ATTACH_ENI = "attach_eni"
    DETACH_ENI = "detach_eni"
    DELETE_ENI = "delete_eni"
    GET_ENI = "get_eni"
    LIST_ENIS = "list_enis"
    ADD_PRIVATE_IPS = "add_private_ips"
    REMOVE_PRIVATE_IPS = "remove_private_ips"
    GET_INSTANCE = "get_instance"
    ADD_PRIMARY_NIC_IPS = "add_primary_nic_ips"
    REMOVE_PRIMARY_NIC_IPS = "remove_primary_nic_ips"
    GET_SUBNET = "get_subnet"
    LIST_SUBNETS = "list_subnets"
    LIST_ROUTE_RULES = "list_route_rules"
    CREATE_ROUTE_RULE = "create_route_rule"
    DELETE_ROUTE_RULE = "delete_route_rule"
    GET_VPC = "get_vpc"
    GET_ROUTE_TABLE = "get_route_table"


MAX_IPS_PER_BATCH = 10


@dataclass(frozen=True)
class CloudPrivateIp:
    ip: str
    primary: bool = False


@dataclass(frozen=True)
class CloudEni:
    eni_id: str
    name: str
    subnet_id: str
    vpc_id: str
    zone: str
    mac: str
    status: EniState
    instance_id: str | None = None
    description: str = ""
    private_ips: tuple[CloudPrivateIp, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    created_at: str = ""

    @property
    def primary_ip(self) -> str | None:
        return next((p.ip for p in self.private_ips if p.primary), None)

    @property
    def secondary_ips(self) -> list[str]:
        return [p.ip for p in self.private_ips if not p.primary]


@dataclass(frozen=True)
class CloudInstance:
    instance_id: str
    name: str
    instance_type: InstanceType
    zone: str
    cpus: int
    memory_mib: int
    vpc_id: str
    subnet_id: str
    primary_ip: str
    primary_mac: str
    eni_quota: int = field(default=0, metadata={"doc": "ENIs besides the primary NIC; 0 = none"})
    status: str = "Running"
    secondary_ips: tuple[str, ...] = field(default=(), metadata={"doc": "primary-NIC secondary IPs (BBC/EBC)"})


@dataclass(frozen=True)
class CloudSubnet:
    subnet_id: str
    name: str
    zone: str
    cidr: str
    vpc_id: str
    available_ips: int


@dataclass(frozen=True)
class CloudVpc:
    vpc_id: str
    name: str
    cidr: str


@dataclass(frozen=True)
class CloudRouteRule:
    rule_id: str
    route_table_id: str
    destination: str
    next_hop_id: str
    next_hop_type: str = "custom"
    source: str = "0.0.0.0/0"
    description: str = ""


class VpcApi(Protocol):
    # ENIs
    async def create_eni(self, *, name: str, subnet_id: str, security_group_ids: Sequence[str],
                         description: str = "", primary_ip: str | None = None) -> str: ...

    async def attach_eni(self, eni_id: str, instance_id: str) -> None: ...

    async def detach_eni(self, eni_id: str, instance_id: str) -> None: ...

    async def delete_eni(self, eni_id: str) -> None: ...

    async def get_eni(self, eni_id: str) -> CloudEni: ...

    async def list_enis(self, *, vpc_id: str, instance_id: str | None = None,
                        name: str | None = None) -> list[CloudEni]: ...

    # secondary IPs of an ENI: at most MAX_IPS_PER_BATCH per call, by count or by explicit list
    async def add_private_ips(self, eni_id: str, *, count: int = 0, ips: Sequence[str] = ()) -> list[str]: ...

    async def remove_private_ips(self, eni_id: str, ips: Sequence[str]) -> None: ...

    # instances and their primary NIC (BBC / EBC secondary IPs)
    async def get_instance(self, instance_id: str) -> CloudInstance: ...

    async def add_primary_nic_ips(self, instance_id: str, *, count: int = 0,
                                  ips: Sequence[str] = ()) -> list[str]: ...

    async def remove_primary_nic_ips(self, instance_id: str, ips: Sequence[str]) -> None: ...

    # subnets
    async def get_subnet(self, subnet_id: str) -> CloudSubnet: ...

    async def list_subnets(self, *, vpc_id: str, zone: str | None = None) -> list[CloudSubnet]: ...

    # the VPC and its route table
    async def get_vpc(self, vpc_id: str) -> CloudVpc: ...

    async def get_route_table(self, *, vpc_id: str) -> str:
        """The id of the VPC's (main) route table."""
        ...

    async def list_route_rules(self, route_table_id: str) -> list[CloudRouteRule]: ...

    async def create_route_rule(self, *, route_table_id: str, destination: str, next_hop_instance: str,
                                description: str) -> str: ...

    async def delete_route_rule(self, rule_id: str) -> None: ...

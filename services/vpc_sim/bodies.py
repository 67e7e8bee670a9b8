"""Request bodies of the BCE and admin APIs (camelCase as on the wire) and their validation.

`parse_body` turns raw bytes into one of these models or raises `CloudFault`: MalformedJSON when the bytes are
not a JSON object, InvalidParameter when a field is missing or of the wrong type.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.vpc_sim.model import CloudFault, Code, invalid

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)


class IpSetItem(Body):
    primary: bool | None = None
    private_ip_address: str | None = Field(None, alias="privateIpAddress")
    public_ip_address: str | None = Field(None, alias="publicIpAddress")


class CreateEniBody(Body):
    name: str = Field(min_length=1, max_length=65)
    subnet_id: str = Field(alias="subnetId", min_length=1)
    security_group_ids: list[str] = Field(default_factory=list, alias="securityGroupIds")
    private_ip_set: list[IpSetItem] = Field(default_factory=list, alias="privateIpSet")
    description: str | None = None

    def primary_ip(self) -> str | None:
        """The requested primary address, if any; only the primary IP may be given at creation."""
        if len(self.private_ip_set) > 1 or any(item.primary is False for item in self.private_ip_set):
            raise invalid("privateIpSet may only hold the primary IP; add secondary IPs with batchAdd")
        return next((item.private_ip_address for item in self.private_ip_set if item.private_ip_address), None)


class InstanceRefBody(Body):
    instance_id: str = Field(alias="instanceId", min_length=1)


class AddIpBody(Body):
    private_ip_address: str | None = Field(None, alias="privateIpAddress")
    is_ipv6: bool | None = Field(None, alias="isIpv6")


class BatchAddBody(Body):
    private_ip_addresses: list[str] | None = Field(None, alias="privateIpAddresses")
    private_ip_address_count: int | None = Field(None, alias="privateIpAddressCount")
    is_ipv6: bool | None = Field(None, alias="isIpv6")


class BatchDelBody(Body):
    private_ip_addresses: list[str] = Field(alias="privateIpAddresses")


class InstanceBatchAddBody(Body):
    instance_id: str = Field(alias="instanceId", min_length=1)
    private_ips: list[str] | None = Field(None, alias="privateIps")
    count: int | None = Field(None, alias="secondaryPrivateIpAddressCount")
    allocate_multi_ipv6_addr: bool | None = Field(None, alias="allocateMultiIpv6Addr")


class InstanceBatchDelBody(Body):
    instance_id: str = Field(alias="instanceId", min_length=1)
    private_ips: list[str] = Field(alias="privateIps")


class CreateRouteBody(Body):
    route_table_id: str = Field(alias="routeTableId", min_length=1)
    source_address: str = Field("0.0.0.0/0", alias="sourceAddress")
    destination_address: str = Field(alias="destinationAddress", min_length=1)
    nexthop_id: str = Field(alias="nexthopId", min_length=1)
    nexthop_type: str = Field("custom", alias="nexthopType")
    description: str | None = None


# ---- admin API ------------------------------------------------------------------------------------------------


class AdminInstanceBody(Body):
    name: str | None = None
    instance_id: str | None = Field(None, alias="instanceId")
    instance_type: Literal["BCC", "EBC", "BBC"] = Field("BCC", alias="instanceType")
    cpus: int = Field(4, ge=1, le=512)
    memory_mib: int = Field(8192, alias="memoryMiB", ge=256)
    zone: str = Field("zoneA", min_length=1)
    subnet_id: str | None = Field(None, alias="subnetId")
    eni_quota: int | None = Field(None, alias="eniQuota", ge=0, le=64)
    primary_ip: str | None = Field(None, alias="primaryIp")


class AdminSubnetBody(Body):
    name: str | None = None
    zone: str = Field(min_length=1)
    cidr: str
    subnet_id: str | None = Field(None, alias="subnetId")
    description: str = ""


class AdminReservationBody(Body):
    cidr: str | None = None
    ips: list[str] | None = None


class AdminRouteTableBody(Body):
    route_table_id: str | None = Field(None, alias="routeTableId")


class AdminSettingsBody(Body):
    attach_delay_s: float | None = Field(None, alias="attachDelayS", ge=0, le=3600)
    detach_delay_s: float | None = Field(None, alias="detachDelayS", ge=0, le=3600)
    route_quota: int | None = Field(None, alias="routeQuota", ge=0, le=10000)
    unattached_eni_ip_quota: int | None = Field(None, alias="unattachedEniIpQuota", ge=1, le=40)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """An empty body is `{}`; anything but a JSON object is MalformedJSON."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CloudFault.of(Code.MALFORMED_JSON, f"the body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CloudFault.of(Code.MALFORMED_JSON, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(describe_validation_error(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)

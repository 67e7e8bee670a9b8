"""The JSON objects of the BCE API (camelCase, as BCE sends them) and marker pagination. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.vpc_sim.domain import SimCloud
from services.vpc_sim.model import Eni, Instance, RouteRule, Subnet, invalid, iso_time

T = TypeVar("T")
DEFAULT_MAX_KEYS = 1000


def eni_view(cloud: SimCloud, eni: Eni) -> dict[str, Any]:
    ips = [{"privateIpAddress": eni.primary_ip, "primary": True, "publicIpAddress": ""}]
    ips += [{"privateIpAddress": ip, "primary": False, "publicIpAddress": ""} for ip in eni.secondary_ips]
    return {
        "eniId": eni.eni_id, "name": eni.name, "zoneName": eni.zone, "description": eni.description,
        "instanceId": eni.instance_id or "", "macAddress": eni.mac, "vpcId": cloud.vpc_id,
        "subnetId": eni.subnet_id, "status": eni.status.value, "privateIpSet": ips,
        "securityGroupIds": list(eni.security_group_ids), "createdTime": iso_time(eni.created_at),
    }


def instance_view(cloud: SimCloud, instance: Instance) -> dict[str, Any]:
    ips = [{"privateIp": instance.primary_ip, "primary": True}]
    ips += [{"privateIp": ip, "primary": False} for ip in instance.secondary_ips]
    return {
        "id": instance.instance_id, "name": instance.name, "instanceType": instance.instance_type,
        "status": "Running", "cpuCount": instance.cpus, "memoryCapacityInGB": instance.memory_mib // 1024,
        "zoneName": instance.zone, "internalIp": instance.primary_ip, "vpcId": cloud.vpc_id,
        "subnetId": instance.subnet_id, "eniQuota": instance.eni_quota,
        "nicInfo": {"macAddress": instance.mac, "ips": ips}, "createTime": iso_time(instance.created_at),
    }


def subnet_view(subnet: Subnet) -> dict[str, Any]:
    return {
        "subnetId": subnet.subnet_id, "name": subnet.name, "zoneName": subnet.zone, "cidr": subnet.cidr,
        "vpcId": subnet.vpc_id, "subnetType": "BCC", "description": subnet.description,
        "availableIp": subnet.available,
    }


def rule_view(rule: RouteRule) -> dict[str, Any]:
    return {
        "routeRuleId": rule.rule_id, "routeTableId": rule.route_table_id, "sourceAddress": rule.source,
        "destinationAddress": rule.destination, "nexthopId": rule.next_hop_id, "nexthopType": rule.next_hop_type,
        "description": rule.description,
    }


def parse_max_keys(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_MAX_KEYS
    try:
        value = int(text)
    except ValueError:
        raise invalid(f"maxKeys must be an integer, got {text!r}") from None
    if not 1 <= value <= DEFAULT_MAX_KEYS:
        raise invalid(f"maxKeys must be in 1..{DEFAULT_MAX_KEYS}, got {value}")
    return value


def paginate(items: Sequence[T], key: Callable[[T], str], marker: str | None, max_keys: int) -> dict[str, Any]:
    """One page of `items` (sorted by `key`) starting at the first whose key is >= `marker`.

    Returns `{"items", "marker", "isTruncated", "nextMarker", "maxKeys"}`; `nextMarker` is the key of the first
    item of the next page (empty when this is the last page).
    """
    ordered = sorted(items, key=key)
    start = 0
    if marker:
        start = next((i for i, item in enumerate(ordered) if key(item) >= marker), len(ordered))
    page = ordered[start:start + max_keys]
    truncated = start + max_keys < len(ordered)
    return {"items": page, "marker": marker or "", "isTruncated": truncated,
            "nextMarker": key(ordered[start + max_keys]) if truncated else "", "maxKeys": max_keys}

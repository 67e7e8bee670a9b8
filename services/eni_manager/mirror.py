"""Records from what the cloud says (pure): an `Eni` from a `CloudEni`, a `Subnet` from a `CloudSubnet`, and the
node's `EniProvision`. Each keeps what only we know (index, quota, `excluded`, `state_since` while the state holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from cloud.port import CloudEni, CloudInstance, CloudSubnet
from schemas.errors import ErrorReason
from schemas.records import Eni, EniProvision, EniState, EniUse, PrivateIp, Subnet
from services.eni_manager.domain import Quota, use_of_description

_VOLATILE = {"synced_at", "updated_at"}


def private_ips(cloud: CloudEni) -> list[PrivateIp]:
    """The ENI's IPs, primary first, then in address order."""
    ips = [PrivateIp(ip=IPv4Address(p.ip), primary=p.primary) for p in cloud.private_ips]
    return sorted(ips, key=lambda p: (not p.primary, p.ip))


def eni_from_cloud(cloud: CloudEni, *, node: str, instance_id: str, subnet_cidr: IPv4Network, quota: Quota,
                   index: int, now: datetime, previous: Eni | None = None) -> Eni:
    """A known ENI keeps its use; an unknown one takes it from its description (exclusive ENIs say so)."""
    same_state = previous is not None and previous.state is cloud.status
    return Eni(
        eni_id=cloud.eni_id,
        node=node,
        instance_id=cloud.instance_id or instance_id,
        use=previous.use if previous is not None else use_of_description(cloud.description),
        name=cloud.name,
        description=cloud.description,
        vpc_id=cloud.vpc_id or None,
        subnet_id=cloud.subnet_id,
        subnet_cidr=subnet_cidr,
        zone=cloud.zone,
        security_group_ids=list(cloud.security_group_ids),
        mac=cloud.mac,
        state=cloud.status,
        private_ips=private_ips(cloud),
        ip_quota=quota.ips_per_eni,
        index=index,
        state_since=previous.state_since if same_state and previous is not None else now,
        synced_at=now,
    )


def with_ips(eni: Eni, *, add: Sequence[str] = (), remove: Sequence[str] = (), now: datetime) -> Eni:
    """The record after secondary IPs were added or removed in the cloud (primaries are never removed)."""
    gone = {IPv4Address(ip) for ip in remove}
    kept = [p for p in eni.private_ips if p.primary or p.ip not in gone]
    held = {p.ip for p in kept}
    new = [PrivateIp(ip=IPv4Address(ip)) for ip in add if IPv4Address(ip) not in held]
    ips = sorted([*kept, *new], key=lambda p: (not p.primary, p.ip))
    return eni.model_copy(update={"private_ips": ips, "synced_at": now})


def subnet_from_cloud(cloud: CloudSubnet, now: datetime, previous: Subnet | None = None) -> Subnet:
    return Subnet(
        subnet_id=cloud.subnet_id,
        vpc_id=cloud.vpc_id,
        zone=cloud.zone,
        cidr=IPv4Network(cloud.cidr),
        available_ips=max(cloud.available_ips, 0),
        name=cloud.name,
        excluded=previous.excluded if previous is not None else False,
        synced_at=now,
    )


def provision_record(node: str, instance_id: str, quota: Quota, previous: EniProvision | None,
                     now: datetime) -> EniProvision:
    """The node's provision record with current quotas, as a round starts (so no creation is in flight: one a
    predecessor left flagged is over); the last error carries over until a success clears it."""
    if previous is None:
        return EniProvision(node=node, instance_id=instance_id, max_enis=quota.max_enis,
                            ips_per_eni=quota.ips_per_eni, updated_at=now)
    return previous.model_copy(update={"instance_id": instance_id, "max_enis": quota.max_enis,
                                       "ips_per_eni": quota.ips_per_eni, "creating_eni": False,
                                       "updated_at": now})


def with_error(record: EniProvision, reason: ErrorReason | None, message: str, now: datetime) -> EniProvision:
    """Record why provisioning failed, or clear it (reason None) after a success."""
    if reason is None:
        return record.model_copy(update={"last_error": None, "message": "", "error_at": None, "updated_at": now})
    return record.model_copy(update={"last_error": reason, "message": message, "error_at": now, "updated_at": now})


def differs(a: Eni | Subnet | EniProvision | None, b: Eni | Subnet | EniProvision) -> bool:
    """Whether writing `b` over `a` changes anything but timestamps of the sync itself."""
    if a is None:
        return True
    return bool(a.model_dump(exclude=_VOLATILE) != b.model_dump(exclude=_VOLATILE))


def primary_nic_record(instance: CloudInstance, *, node: str, eni_id: str, subnet_cidr: IPv4Network, ip_quota: int,
                       now: datetime, previous: Eni | None = None) -> Eni:
    """vpc-eni-primary: the record of an instance's primary NIC (always in use; its own IP is the primary)."""
    ips = [PrivateIp(ip=IPv4Address(instance.primary_ip), primary=True),
           *(PrivateIp(ip=IPv4Address(ip)) for ip in instance.secondary_ips)]
    return Eni(
        eni_id=eni_id,
        node=node,
        instance_id=instance.instance_id,
        use=EniUse.PRIMARY_NIC,
        name=f"primary NIC of {instance.instance_id}",
        vpc_id=instance.vpc_id or None,
        subnet_id=instance.subnet_id,
        subnet_cidr=subnet_cidr,
        zone=instance.zone,
        mac=instance.primary_mac,
        state=EniState.INUSE,
        private_ips=sorted(ips, key=lambda p: (not p.primary, p.ip)),
        ip_quota=ip_quota,
        index=0,
        state_since=previous.state_since if previous is not None else now,
        synced_at=now,
    )

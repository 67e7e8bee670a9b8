"""ipam's settings (environment `CCE_*`, or the file named by `CCE_CONFIG_FILE`)."""

from __future__ import annotations

from pydantic import Field

from chassis.config import ChassisSettings


class IpamSettings(ChassisSettings):
    allocation_ttl_s: float = Field(120.0, gt=0, description="an unconfirmed allocation is released after this")
    maintenance_period_s: float = Field(1.0, gt=0, description="every node's pool is reconciled this often")
    maintenance_coalesce_s: float = Field(
        0.1, ge=0, description="changes to a node's pool within this window are reconciled in one pass")
    default_wait_s: float = Field(10.0, ge=0, description="wait for a refill when the request does not say")
    max_wait_s: float = Field(60.0, ge=0, description="cap on how long an allocation waits for a refill")
    waiting_ttl_s: float = Field(
        90.0, gt=0, description="a waiting entry older than this is dropped (its replica is gone)")
    orphan_grace_s: float = Field(
        30.0, ge=0, description="claims without an endpoint, and endpoints without a claim, are collected after this")
    expand_timeout_s: float = Field(5.0, gt=0, description="vpc-route: how long an ask for another CIDR waits")
    maintenance_lease: str = Field("ipam-maintenance", min_length=1, description="lease name of the maintenance loop")
    fixed_ip_ttl_s: float = Field(7 * 24 * 3600.0, ge=0, description="a fixed IP whose pod is gone is kept this long "
                                                                     "unless the pod says otherwise")
    assign_timeout_s: float = Field(30.0, gt=0, description="how long moving a fixed IP to another node may take")

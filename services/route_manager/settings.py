"""route_manager's settings: the chassis settings plus its own (`CCE_CLUSTER_CIDRS`, `CCE_NODE_CIDR_MASK`, ...).

Blocks and mask are checked as the settings are read, so a process with overlapping blocks or a mask that does
not fit refuses to start; the checks against the VPC's CIDR and subnets need the cloud and run when the leader
first learns the VPC (`domain.check_against_vpc`)."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from chassis.config import ChassisSettings
from services.route_manager.domain import ConflictPolicy, check_blocks


class RouteManagerSettings(ChassisSettings):
    cluster_id: str = Field("cce-local", pattern=r"^[a-z0-9][-a-z0-9]{0,62}$",
                            description="marks our route rules: description cce-route:<cluster_id>:<node>")
    cluster_cidrs: Annotated[list[IPv4Network], NoDecode] = Field(
        default_factory=lambda: [IPv4Network("172.16.0.0/16")],
        description="the container CIDR blocks, comma-separated; must not overlap the VPC or its subnets")
    node_cidr_mask: int = Field(24, ge=8, le=30, description="prefix length of each node CIDR")
    low_free_threshold: int = Field(8, ge=0, description="a node with fewer free addresses gets another CIDR")
    max_cidrs_per_node: int = Field(8, ge=1, description="a node never holds more CIDRs than this")
    release_idle_cidrs: bool = Field(True, description="give back a node's idle extra CIDRs")
    release_free_threshold: int = Field(
        32, ge=0, description="an idle CIDR goes back only while the node keeps this many free addresses without it")
    release_delay_s: float = Field(300.0, ge=0, description="how long a CIDR stays idle before it is marked")
    release_confirm_s: float = Field(
        3.0, ge=0, description="how long a marked CIDR is watched for new claims before its rule and record go")
    conflict_policy: ConflictPolicy = Field(
        ConflictPolicy.REPORT, description="report: conflicts are reported only; takeover: replace stale rules of ours")
    route_table_id: str = Field("", description="the VPC route table; empty: the VPC's, asked from the cloud")
    resync_period_s: float = Field(30.0, gt=0, description="the route table is compared with the records this often")
    retry_backoff_s: float = Field(1.0, gt=0, description="first retry after a failed step (doubles)")

    @field_validator("cluster_cidrs", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> RouteManagerSettings:
        check_blocks(self.cluster_cidrs, self.node_cidr_mask)
        if self.release_idle_cidrs and self.release_free_threshold <= self.low_free_threshold:
            raise ValueError(f"release_free_threshold ({self.release_free_threshold}) must be above "
                             f"low_free_threshold ({self.low_free_threshold}), or CIDRs would flap")
        return self

    @classmethod
    def of(cls, settings: ChassisSettings) -> RouteManagerSettings:
        if isinstance(settings, cls):
            return settings
        return cls(**settings.model_dump(exclude_unset=True))

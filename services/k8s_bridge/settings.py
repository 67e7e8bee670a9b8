"""k8s_bridge's settings: the chassis settings plus how to reach the API server, the cluster defaults a Node's labels
and annotations override, and the graces and intervals of its loops (environment `CCE_*` or `CCE_CONFIG_FILE`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from chassis.config import ChassisSettings
from schemas.base import CloudId, NetworkMode
from schemas.records import PoolSettings


class BridgeSettings(ChassisSettings):
    kubeconfig: Path | None = Field(
        default_factory=lambda: Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None,
        description="kubeconfig file (CCE_KUBECONFIG, else KUBECONFIG); empty: the in-cluster service account")
    kube_workers: int = Field(8, ge=1, le=64, description="threads making Kubernetes API calls")
    kube_qps: float = Field(100.0, gt=0, description="Kubernetes API writes per second (token bucket)")
    kube_burst: int = Field(200, ge=1, description="burst of Kubernetes API writes")
    watch_timeout_s: int = Field(300, ge=10, description="a watch is re-opened after this (server side timeout)")

    # cluster defaults, overridden per node by labels and annotations of ours
    default_mode: NetworkMode = Field(NetworkMode.VPC_ENI, description="network mode of nodes that do not say")
    default_max_pods: int = Field(110, ge=1, description="max pods of nodes whose status does not say")
    default_subnet_ids: Annotated[list[CloudId], NoDecode] = Field(
        default_factory=list, description="subnets pods may use (comma-separated); empty: any of the node's zone")
    default_security_group_ids: Annotated[list[CloudId], NoDecode] = Field(default_factory=list)
    default_pool: PoolSettings = Field(default_factory=PoolSettings, description="watermarks, as JSON")

    # loops
    node_gone_grace_s: float = Field(120.0, ge=0, description="a deleted Node not back within this is removed")
    pod_gone_grace_s: float = Field(30.0, ge=0, description="an endpoint whose pod is gone is released after this")
    gc_period_s: float = Field(10.0, gt=0, description="endpoints are checked against the pods this often")
    projection_interval_s: float = Field(1.0, ge=0, description="at most one write per custom resource per interval")
    resync_period_s: float = Field(60.0, gt=0, description="everything is compared again this often")
    instance_recheck_s: float = Field(60.0, gt=0, description="a Node whose instance was not found is looked up "
                                                               "again after this")
    node_workers: int = Field(16, ge=1, le=256, description="nodes registered concurrently")
    event_burst: int = Field(25, ge=1, description="Kubernetes Events per object in a burst")
    event_refill_s: float = Field(10.0, gt=0, description="one more Event per object after this")

    @field_validator("default_subnet_ids", "default_security_group_ids", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def of(cls, settings: ChassisSettings) -> BridgeSettings:
        if isinstance(settings, cls):
            return settings
        return cls(**settings.model_dump(exclude_unset=True))

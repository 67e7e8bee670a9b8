"""eni_manager's settings: the chassis settings plus its own (`CCE_CLUSTER_ID`, `CCE_RESYNC_PERIOD_S`, ...)."""

from __future__ import annotations

from pydantic import Field

from chassis.config import ChassisSettings
from services.eni_manager.domain import PlanSettings


class EniManagerSettings(ChassisSettings):
    cluster_id: str = Field("cce-local", pattern=r"^[a-z0-9][-a-z0-9]{0,62}$",
                            description="names our ENIs cce-<cluster_id>-<node>-<index>")
    resync_period_s: float = Field(30.0, gt=0, description="every node is re-read from the cloud this often")
    subnet_sync_period_s: float = Field(30.0, gt=0, description="the subnet mirror is refreshed this often")
    stuck_after_s: float = Field(300.0, ge=0, description="an ENI available/attaching longer than this is deleted")
    removal_grace_s: float = Field(5.0, ge=0, description="a removed node's ENIs go after this grace period")
    pre_allocate_enis: int = Field(0, ge=0, description="ENIs kept attached per node even with no demand")
    enis_in_flight: int = Field(4, ge=1, description="new ENIs one node may have being created and attached at once "
                                "(a node short of several waits for about one attach)")
    attach_poll_s: float = Field(0.2, gt=0, description="how often an attaching/detaching ENI is polled")
    attach_timeout_s: float = Field(60.0, gt=0, description="how long one attach/detach is waited for")
    retry_backoff_s: float = Field(0.5, gt=0, description="first retry after a failed cloud step (doubles)")

    @property
    def plan(self) -> PlanSettings:
        return PlanSettings(cluster_id=self.cluster_id, stuck_after_s=self.stuck_after_s,
                            removal_grace_s=self.removal_grace_s, pre_allocate_enis=self.pre_allocate_enis,
                            enis_in_flight=self.enis_in_flight)

    @classmethod
    def of(cls, settings: ChassisSettings) -> EniManagerSettings:
        """These settings, from a process's settings (read from the environment when it has only the chassis')."""
        if isinstance(settings, cls):
            return settings
        return cls(**settings.model_dump(exclude_unset=True))

"""cni_gateway's settings (environment `CCE_*`, or the file named by `CCE_CONFIG_FILE`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from chassis.config import ChassisSettings

DEFAULT_SOCKET = Path("/run/cce-net/cni.sock")


class GatewaySettings(ChassisSettings):
    cni_socket: Path = Field(DEFAULT_SOCKET, description="the unix socket the CNI plugin talks to (mode 0600)")
    cni_bin_dir: Path | None = Field(None, description="when set (with cni_conf_dir), the plugin is installed here")
    cni_conf_dir: Path | None = Field(None, description="when set (with cni_bin_dir), the conflist is written here")
    cni_plugin: Literal["auto", "native", "python"] = Field(
        "auto", description="the plugin to install: native (Go, `make cni-plugin`), python, or auto (native if built)")
    cni_plugin_binary: Path | None = Field(None, description="the native plugin to install (default: build/cni/cce)")
    cni_chain: str = Field("", description="plugins chained after ours in the conflist, e.g. 'portmap,bandwidth'")
    cni_version: Literal["", "1.0.0", "1.1.0"] = Field(
        "", description="the conflist's cniVersion: empty for 1.1.0 when ours is alone (GC, STATUS) and 1.0.0 when "
        "chained; 1.0.0 for runtimes that take nothing newer (containerd 1.6, 1.7)")
    cni_state_dir: Path | None = Field(None, description="journal of pending releases; /var/lib/cce-net/<node>")
    allocate_wait_s: float = Field(10.0, ge=0, le=120, description="how long an ADD waits for the pool to refill")
    setup_timeout_s: float = Field(20.0, gt=0, description="deadline of datapath setup")
    call_timeout_s: float = Field(5.0, gt=0, description="deadline of confirm, release, teardown and check")
    read_timeout_s: float = Field(5.0, gt=0, description="a client must send its request within this")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="largest request line accepted")
    journal_retry_s: float = Field(2.0, gt=0, description="pending releases are retried this often")
    gc_grace_s: float = Field(30.0, ge=0, description="GC leaves endpoints younger than this alone")
    pod_info_wait_s: float = Field(
        0.0, ge=0, le=30, description="in a cluster with k8s_bridge: how long an ADD waits for its pod's record")

    @field_validator("node")
    @classmethod
    def _node_required(cls, value: str) -> str:
        if not value:
            raise ValueError("CCE_NODE is required: the node this gateway serves")
        return value

    @property
    def state_dir(self) -> Path:
        return self.cni_state_dir or Path("/var/lib/cce-net") / self.node

    @property
    def chain(self) -> list[str]:
        return [p.strip() for p in self.cni_chain.split(",") if p.strip()]

    @classmethod
    def of(cls, settings: ChassisSettings) -> GatewaySettings:
        if isinstance(settings, cls):
            return settings
        return cls(**settings.model_dump(exclude_unset=True))

"""Process settings: environment variables `CCE_*`, and an optional YAML/JSON file named by `CCE_CONFIG_FILE`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class _FileSource(PydanticBaseSettingsSource):
    """Values from the file in CCE_CONFIG_FILE (YAML or JSON); the environment overrides them."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get("CCE_CONFIG_FILE")
        self._data: dict[str, Any] = {}
        if path:
            text = Path(path).read_text()
            loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path}: the settings file must hold a mapping")
            self._data = {str(k).lower(): v for k, v in (loaded or {}).items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        names = set(self.settings_cls.model_fields)
        return {k: v for k, v in self._data.items() if k in names}


def read_secret(path: Path | None, setting: str) -> str | None:
    """A secret from a file, as Kubernetes mounts a Secret's key (surrounding whitespace dropped); a missing or
    empty file is a start-up error naming the setting."""
    if path is None:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as err:
        raise ValueError(f"{setting}: cannot read {path}: {err.strerror}") from None
    if not value:
        raise ValueError(f"{setting}: {path} is empty")
    return value


class ChassisSettings(BaseSettings):
    """Settings every service process has. Services subclass this to add their own."""

    model_config = SettingsConfigDict(env_prefix="CCE_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated server URLs")
    nats_creds: Path | None = Field(None, description="NATS credentials file (JWT + NKey seed)")
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_connect_timeout_s: float = 2.0
    nats_reconnect_wait_s: float = 0.5

    service_id: str = Field("", description="this replica's id; defaults to <service>-<host>-<pid>")
    node: str = Field("", description="the node a per-node service runs for")

    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535, description="/healthz and /metrics; 0 picks a free port")
    log_level: str = "info"
    log_json: bool = True

    request_timeout_s: float = Field(5.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0, description="time in-flight requests get on SIGTERM")
    lease_ttl_s: float = Field(6.0, gt=0, description="leader lease: a silent leader loses it after this")
    kv_replicas: int = Field(1, ge=1, le=5)
    events_max_age_s: float = Field(7 * 24 * 3600, gt=0, description="CCE_EVENTS keeps events this long at most")
    events_max_bytes: int = Field(1 << 30, gt=0, description="... and this many bytes (the oldest go first)")
    events_max_msgs: int = Field(5_000_000, gt=0, description="... and this many events")
    max_in_flight: int = Field(1024, ge=1, description="requests a process serves at once; more are refused (busy)")
    max_in_flight_per_node: int = Field(
        256, ge=1, description="... of them for one node: a node has at most max-pods ADDs in flight (<= 256), so "
                               "one node's flood cannot take the others' turns")
    max_bus_request_bytes: int = Field(
        256 * 1024, ge=1024, description="a larger bus request is refused (InvalidRequest)")
    tracing: bool = Field(True, description="trace CNI commands across the services (spans in CCE_TRACES)")
    trace_flush_s: float = Field(0.5, gt=0, le=60, description="spans are published this long after they end")
    trace_exporter: str = Field("", pattern=r"^(|none|console|otlp)$",
                                description="also export spans: none (default), console or otlp")
    trace_otlp_endpoint: str = Field("", description="the OTLP/HTTP traces endpoint (default: the exporter's)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

"""`SimServer`: the simulator as an object tests and the composition root start and stop.

Settings come from `SimSettings` (env prefix `CCE_SIM_`). On a fresh state the VPC gets its main route table and
one default subnet; an existing state file is continued (its ids, addresses and pending ENI moves). Delays and
the route quota are taken from the state, except those set explicitly in the settings, which win.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis.config import read_secret
from chassis.logs import get_logger
from services.vpc_sim.api import SimApp, build_app
from services.vpc_sim.domain import SimCloud
from services.vpc_sim.faults import FaultConfig, FaultInjector
from services.vpc_sim.model import Tunables
from services.vpc_sim.persist import StateFileError, load_state, save_state

log = get_logger("vpc_sim.server")

TUNABLE_FIELDS = ("attach_delay_s", "detach_delay_s", "route_quota")


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCE_SIM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    state_file: Path | None = Field(None, description="JSON state file; None keeps the state in memory")
    access_key: str = "cce-sim-ak"
    secret_key: str = "cce-sim-sk"
    access_key_file: Path | None = Field(None, description="the access key from a file (a mounted Secret)")
    secret_key_file: Path | None = Field(None, description="the secret key from a file")
    admin_token: str = Field("", description="when set, the admin API (/admin/...) wants `Authorization: Bearer "
                                             "<token>`: the admin's (its info shows the keys)")
    admin_token_file: Path | None = Field(None, description="the admin token from a file")
    region: str = "bj"
    vpc_cidr: str = "10.0.0.0/8"
    zone: str = Field("zoneA", description="zone of the default subnet")
    subnet_cidr: str = Field("10.0.0.0/20", description="default subnet created on a fresh state")
    seed: int = 0
    attach_delay_s: float = Field(0.2, ge=0)
    detach_delay_s: float = Field(0.2, ge=0)
    route_quota: int = Field(50, ge=0)
    fabric: Literal["auto", "on", "off"] = "auto"
    fabric_prefix: str = "cce-sim"
    faults: FaultConfig | None = None
    log_level: str = "info"
    log_json: bool = True

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_from_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else None
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> SimSettings:
        for field, setting in (("access_key", "CCE_SIM_ACCESS_KEY_FILE"), ("secret_key", "CCE_SIM_SECRET_KEY_FILE"),
                               ("admin_token", "CCE_SIM_ADMIN_TOKEN_FILE")):
            value = read_secret(getattr(self, f"{field}_file"), setting)
            if value is not None:
                setattr(self, field, value)
        return self


class SimServer:
    """The simulated cloud on an HTTP port. `async with SimServer(settings) as sim:` or start()/stop()."""

    def __init__(self, settings: SimSettings | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or SimSettings()
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._sim: SimApp | None = None
        self._fabric: Any = None
        self._stopped = False
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> SimServer:
        if self._sim is not None:
            raise RuntimeError("a SimServer starts once; make a new one to restart")
        s = self.settings
        cloud = self._load_or_create()
        fabric, reason = await self._start_fabric(cloud)
        injector = FaultInjector(s.faults or FaultConfig(), seed=s.seed)
        self._sim = SimApp(cloud, credentials={s.access_key: s.secret_key}, injector=injector,
                           state_file=s.state_file, fabric=fabric, fabric_reason=reason, clock=self._clock,
                           region=s.region)
        self._runner = web.AppRunner(build_app(self._sim, admin_token=s.admin_token), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else s.port
        self._sim.endpoint = self.url
        log.info("vpc_sim.started", url=self.url, vpc_id=cloud.vpc_id, route_table_id=cloud.main_route_table_id,
                 state_file=str(s.state_file) if s.state_file else None, fabric=fabric is not None,
                 fabric_reason=reason)
        return self

    async def stop(self, teardown_fabric: bool = False) -> None:
        """Stop serving and save the state; the fabric is left as it is unless `teardown_fabric`. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sim is not None and self.settings.state_file is not None:
            async with self._sim.lock:
                self._sim.cloud.advance(self._clock())
                save_state(self.settings.state_file, self._sim.cloud.to_dict())
        if teardown_fabric and self._fabric is not None:
            await self._fabric.teardown()
            log.info("vpc_sim.fabric_torn_down", prefix=self.settings.fabric_prefix)
        log.info("vpc_sim.stopped", url=self.url if self.port else None)

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- what callers need -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    @property
    def access_key(self) -> str:
        return self.settings.access_key

    @property
    def secret_key(self) -> str:
        return self.settings.secret_key

    @property
    def vpc_id(self) -> str:
        return self.domain.vpc_id

    @property
    def route_table_id(self) -> str:
        return self.domain.main_route_table_id

    @property
    def domain(self) -> SimCloud:
        return self.app.cloud

    @property
    def app(self) -> SimApp:
        if self._sim is None:
            raise RuntimeError("the simulator is not started")
        return self._sim

    @property
    def fabric_enabled(self) -> bool:
        return self._fabric is not None

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _load_or_create(self) -> SimCloud:
        s = self.settings
        data = load_state(s.state_file) if s.state_file is not None else None
        if data is None:
            cloud = SimCloud.create(s.vpc_cidr, seed=s.seed, tunables=Tunables(
                attach_delay_s=s.attach_delay_s, detach_delay_s=s.detach_delay_s, route_quota=s.route_quota))
            cloud.create_subnet(zone=s.zone, cidr=s.subnet_cidr, name="default")
            if s.state_file is not None:
                save_state(s.state_file, cloud.to_dict())
            return cloud
        try:
            cloud = SimCloud.from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise StateFileError(s.state_file or Path(), f"does not hold a simulator state: {err!r}") from err
        for name in TUNABLE_FIELDS:
            if name in s.model_fields_set:
                setattr(cloud.tunables, name, getattr(s, name))
        return cloud

    async def _start_fabric(self, cloud: SimCloud) -> tuple[Any, str]:
        """The fabric when wanted and possible, with the reason it is on or off."""
        mode = self.settings.fabric
        if mode == "off":
            return None, "disabled by settings (fabric=off)"
        from services.vpc_sim.fabric import Fabric

        ok, why = Fabric.available()
        if not ok:
            if mode == "on":
                raise RuntimeError(f"fabric=on but the network fabric cannot be built: {why}")
            log.warning("vpc_sim.fabric_off", reason=why)
            return None, f"not available: {why}"
        fabric = Fabric(prefix=self.settings.fabric_prefix)
        await fabric.apply(cloud.fabric_spec())
        self._fabric = fabric
        return fabric, f"enabled (fabric={mode})"

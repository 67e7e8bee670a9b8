"""Fixtures for tests that need the simulated VPC: a fresh `SimServer` per test (port 0, state file in the test's
tmp_path, no fabric, 50 ms ENI attach/detach) and an admin client for it. Import them into conftest.py or a test
module: `from tests.sim_fixtures import sim_admin, vpc_sim`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.bce import BceSettings, BceVpcApi
from cloud.port import CloudApi
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer, SimSettings


def sim_settings(tmp_path: Path, **overrides: object) -> SimSettings:
    values: dict[str, object] = {"port": 0, "state_file": tmp_path / "sim.json", "fabric": "off",
                                 "attach_delay_s": 0.05, "detach_delay_s": 0.05, **overrides}
    return SimSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def vpc_sim(tmp_path: Path) -> AsyncIterator[SimServer]:
    server = await SimServer(sim_settings(tmp_path)).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def sim_admin(vpc_sim: SimServer) -> AsyncIterator[SimAdmin]:
    admin = SimAdmin(vpc_sim.url)
    try:
        yield admin
    finally:
        await admin.close()


WIDE_OPEN = {api: (1000.0, 1000) for api in CloudApi}  # rate limits out of the way: the service is what is tested


def wide_open_api(sim: SimServer) -> BceVpcApi:
    """The production adapter on the simulator, without rate limits and with quick retries."""
    return BceVpcApi(BceSettings(endpoint=sim.url, access_key=sim.access_key, secret_key=sim.secret_key,
                                 rate_limits=WIDE_OPEN, backoff_base_s=0.01, backoff_max_s=0.05))

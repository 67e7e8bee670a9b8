"""Liveness and readiness of a service process: `/livez` says the process is alive (its event loop answers) and
never depends on NATS; `/readyz` (and `/healthz`, its old name) says it is serving. So a NATS outage makes every
replica not ready (503) without making a supervisor's liveness probe restart any of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chassis.config import ChassisSettings
from chassis.embedded_nats import EmbeddedNats, free_port
from chassis.http import HealthServer
from chassis.service import ServiceProcess

WAIT_S = 15.0


async def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}",
                                                         timeout=aiohttp.ClientTimeout(total=2)) as resp:
        return resp.status, await resp.json()


async def until_status(port: int, path: str, status: int, within: float = WAIT_S) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            got, body = await get(port, path)
        except aiohttp.ClientError:
            got, body = 0, {}
        if got == status:
            return body
        assert loop.time() < deadline, f"{path} stayed {got} ({body}), wanted {status}"
        await asyncio.sleep(0.05)


# ---- unit: the HTTP endpoints ------------------------------------------------------------------------------------


@pytest.fixture
async def health() -> AsyncIterator[HealthServer]:
    server = HealthServer("127.0.0.1", 0, {"service": "demo", "id": "demo-1", "node": ""})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.unit
async def test_a_failing_readiness_check_makes_readyz_and_healthz_503_but_not_livez(health: HealthServer) -> None:
    state = {"ok": False}
    health.add_check("bus", lambda: (state["ok"], "connected" if state["ok"] else "away"))

    status, body = await get(health.port, "/livez")
    assert status == 200 and body["status"] == "ok" and body["service"] == "demo" and "checks" not in body
    for path in ("/readyz", "/healthz"):
        status, body = await get(health.port, path)
        assert status == 503
        assert body["status"] == "unhealthy" and body["checks"]["bus"] == {"ok": False, "detail": "away"}

    state["ok"] = True
    for path in ("/livez", "/readyz", "/healthz"):
        assert (await get(health.port, path))[0] == 200


@pytest.mark.unit
async def test_a_readiness_check_that_raises_is_a_failed_check_not_a_dead_process(health: HealthServer) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("no bus yet")

    health.add_check("bus", broken)
    status, body = await get(health.port, "/readyz")
    assert status == 503 and "no bus yet" in body["checks"]["bus"]["detail"]
    assert (await get(health.port, "/livez"))[0] == 200


# ---- integration: a service process and a nats-server that goes away ------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of this test's own: stopping the session's would disturb other tests."""
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.mark.integration
async def test_a_nats_outage_makes_readyz_503_while_livez_stays_200(own_server: EmbeddedNats) -> None:
    settings = ChassisSettings(nats_url=own_server.url, log_level="warning", nats_reconnect_wait_s=0.2)
    proc = ServiceProcess("demo", settings)
    await proc.start()
    proc.ready = True
    port = proc.health.port
    try:
        await until_status(port, "/readyz", 200)
        own_server.kill()  # abrupt, as a crashed or partitioned server

        body = await until_status(port, "/readyz", 503)
        assert body["checks"]["nats"]["ok"] is False
        assert (await get(port, "/healthz"))[0] == 503
        status, live = await get(port, "/livez")
        assert status == 200 and live["status"] == "ok"

        own_server.start()
        await until_status(port, "/readyz", 200)
        assert (await get(port, "/livez"))[0] == 200
    finally:
        await proc.shutdown()


@pytest.mark.integration
async def test_livez_answers_while_the_first_connection_to_nats_is_still_being_made(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port)  # not started yet: the process comes up first
    settings = ChassisSettings(nats_url=server.url, log_level="warning", http_port=free_port())
    proc = ServiceProcess("demo", settings)
    starting = asyncio.create_task(proc.start())
    try:
        await until_status(settings.http_port, "/livez", 200)
        status, body = await get(settings.http_port, "/readyz")
        assert status == 503 and body["checks"]["nats"] == {"ok": False, "detail": "connecting"}

        await asyncio.to_thread(server.start)
        await asyncio.wait_for(starting, WAIT_S)
        proc.ready = True
        await until_status(settings.http_port, "/readyz", 200)
    finally:
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await proc.shutdown()
        server.stop()

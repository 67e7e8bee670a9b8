"""Integration tier: nats-server goes away and comes back; services reconnect and serve again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.embedded_nats import EmbeddedNats
from chassis.kv import KvCache, Store
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.errors import CceError, ErrorReason
from schemas.records import Lease
from schemas.subjects import LEASES
from tests.echo import ECHO, EchoReply, EchoRequest

pytestmark = pytest.mark.integration


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of this test's own: restarting the session server would disturb other tests."""
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server


async def echo(req: EchoRequest) -> EchoReply:
    return EchoReply(text=req.text)


async def _until_served(bus: Bus, text: str, within: float) -> EchoReply:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            reply: EchoReply = await call(bus, ECHO, EchoRequest(node="node-1", text=text), timeout=0.5)
            return reply
        except CceError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_services_reconnect_and_serve_after_nats_restarts(own_server: EmbeddedNats) -> None:
    settings = ChassisSettings(nats_url=own_server.url, log_level="warning", nats_reconnect_wait_s=0.2)
    proc = ServiceProcess("echo", settings)
    await proc.start()
    await proc.rpc.add(ECHO, echo)
    proc.ready = True
    client = await Bus.connect(settings, name="client")
    store = Store(await client.bucket(LEASES), Lease, LEASES.name)
    cache = KvCache(store)
    await cache.start()
    client.on_reconnect(cache.restart)
    await store.create("before", Lease(holder="x", service="before", ttl_s=1))
    try:
        assert (await call(client, ECHO, EchoRequest(node="node-1", text="one"))).text == "one"

        own_server.kill()  # an abrupt loss, not a clean shutdown
        with pytest.raises(CceError) as info:
            await call(client, ECHO, EchoRequest(node="node-1", text="lost"), timeout=0.5)
        assert info.value.reason is ErrorReason.TIMEOUT
        assert not proc.bus.connected

        own_server.start()
        assert (await _until_served(client, "two", within=15)).text == "two"
        assert proc.bus.connected
        # JetStream state survived on the file store and writes work again
        assert (await store.get("before")) is not None
        await store.create("after", Lease(holder="x", service="after", ttl_s=1))
        await cache.wait_for(lambda items: "after" in items and "before" in items, 10)
        healthy, _ = proc.health.report()
        assert healthy
    finally:
        await cache.stop()
        await client.close()
        await proc.shutdown()

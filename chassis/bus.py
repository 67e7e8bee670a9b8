"""The NATS connection of a process: connect, reconnect forever, and reach JetStream streams and buckets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from chassis.config import ChassisSettings
from chassis.logs import get_logger
from schemas.subjects import EVENTS_STREAM, EVENTS_WILDCARD, Bucket

log = get_logger("chassis.bus")


def _tls_context(settings: ChassisSettings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert:
        key = str(settings.nats_tls_key) if settings.nats_tls_key else None
        ctx.load_cert_chain(str(settings.nats_tls_cert), key)
    return ctx


class Bus:
    """One NATS connection with JetStream; reconnects forever and remembers whether it is connected."""

    def __init__(self, nc: Client, kv_replicas: int = 1) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.kv_replicas = kv_replicas
        self._buckets: dict[str, KeyValue] = {}
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.closing = False

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_reconnect.append(callback)

    async def _reconnected(self) -> None:
        log.info("nats reconnected", url=str(self.nc.connected_url.netloc if self.nc.connected_url else ""))
        for cb in list(self._on_reconnect):
            try:
                await cb()
            except Exception:
                log.exception("reconnect callback failed")

    @classmethod
    async def connect(
        cls, settings: ChassisSettings, name: str = "cce", wait_s: float = 30.0
    ) -> Bus:
        """Connect, retrying the first connection for up to `wait_s`; later losses reconnect forever."""
        holder: dict[str, Bus] = {}

        async def reconnected_cb() -> None:
            if "bus" in holder:
                await holder["bus"]._reconnected()

        async def disconnected_cb() -> None:
            closing = "bus" in holder and holder["bus"].closing
            (log.debug if closing else log.warning)("nats disconnected")

        async def error_cb(err: Exception) -> None:
            log.warning("nats error", error=repr(err))

        options: dict[str, Any] = {
            "servers": [u.strip() for u in settings.nats_url.split(",") if u.strip()],
            "name": name,
            "connect_timeout": settings.nats_connect_timeout_s,
            "reconnect_time_wait": settings.nats_reconnect_wait_s,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "reconnected_cb": reconnected_cb,
            "disconnected_cb": disconnected_cb,
            "error_cb": error_cb,
            "tls": _tls_context(settings),
        }
        if settings.nats_creds:
            options["user_credentials"] = str(settings.nats_creds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.1
        while True:
            try:
                nc = await nats.connect(**options)
                break
            except Exception as err:  # no server yet: the supervisor may still be starting it
                if loop.time() + delay > deadline:
                    raise
                log.info("nats not reachable yet", error=repr(err), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        bus = cls(nc, kv_replicas=settings.kv_replicas)
        holder["bus"] = bus
        return bus

    async def ensure_events_stream(self, max_age_s: float = 7 * 24 * 3600) -> None:
        config = StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_WILDCARD],
            storage=StorageType.FILE,
            max_age=max_age_s,
            num_replicas=self.kv_replicas,
            duplicate_window=120.0,
            description="cce-network events: cce.events.<kind>.<node>.<what>",
        )
        try:
            await self.js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            try:
                await self.js.add_stream(config)
            except BadRequestError:  # created concurrently by another process
                await self.js.stream_info(EVENTS_STREAM)

    async def bucket(self, bucket: Bucket) -> KeyValue:
        """The bucket's KV handle, creating the bucket (idempotently) on first use."""
        kv = self._buckets.get(bucket.name)
        if kv is not None:
            return kv
        try:
            kv = await self.js.key_value(bucket.name)
        except BucketNotFoundError:
            try:
                kv = await self.js.create_key_value(
                    KeyValueConfig(
                        bucket=bucket.name,
                        history=bucket.history,
                        storage=StorageType.FILE,
                        replicas=self.kv_replicas,
                        direct=True,
                        description=f"{bucket.record.__name__} records, written by {bucket.writer}",
                    )
                )
            except BadRequestError:
                kv = await self.js.key_value(bucket.name)
        self._buckets[bucket.name] = kv
        return kv

    async def close(self) -> None:
        self.closing = True
        if not self.nc.is_closed:
            await self.nc.drain()

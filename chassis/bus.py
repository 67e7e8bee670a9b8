"""The NATS connection of a process: connect, reconnect forever, and reach JetStream streams and buckets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServerError
from nats.js.kv import KeyValue

from chassis.config import ChassisSettings
from chassis.creds import creds_identity
from chassis.kv import BUS_TROUBLE
from chassis.logs import get_logger
from schemas.subjects import BUCKETS, EVENTS_STREAM, EVENTS_WILDCARD, STREAMS, Bucket, Stream

log = get_logger("chassis.bus")
STORE_NOT_MADE = 10049  # JetStream's "error creating store for stream" (e.g. a same-named stream's store going)


# What the contract says of a stream's configuration, and so what is brought back to it when it differs.
LIMIT_FIELDS = ("max_age", "max_bytes", "max_msgs", "num_replicas", "description")
KV_FIELDS = ("max_msgs_per_subject", "num_replicas", "description", "allow_direct")  # the rest is nats-py's KV layout


@dataclass(frozen=True)
class EventLimits:
    """How much of CCE_EVENTS is kept: the oldest events go first once any limit is reached."""

    max_age_s: float = 7 * 24 * 3600
    max_bytes: int = 1 << 30
    max_msgs: int = 5_000_000


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


async def settled(nc: Client, timeout: float = 10.0) -> None:
    """Return once the server has processed every command this connection wrote before the call (a SUB is live for
    every other connection's publishes from then on).

    nats-py's `flush()` alone does not promise that: it writes its PING straight to the socket, ahead of commands
    still queued for the connection's flusher task, so its PONG can come back before the server has read a SUB made
    just before (seen as a NoResponders to a service that had just said it serves). So the queue is written first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while nc.pending_data_size > 0 and loop.time() < deadline:  # the flusher writes the queue when it next runs
        await asyncio.sleep(0.001)
    await nc.flush(timeout=max(1, round(deadline - loop.time())))


class Bus:
    """One NATS connection with JetStream; reconnects forever and remembers whether it is connected.

    With credentials (`secured`), streams and buckets are created only by those asked to (their owners): the others
    wait for them, since their identity may not create them."""

    def __init__(self, nc: Client, kv_replicas: int = 1, secured: bool = False, identity: str = "",
                 events_limits: EventLimits | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.kv_replicas = kv_replicas
        self.secured = secured
        self.identity = identity
        self.events_limits = events_limits or EventLimits()
        self._buckets: dict[str, KeyValue] = {}
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self.closing = False

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def settled(self) -> None:
        """What this process wrote to the bus so far has reached the server (see `settled`)."""
        await settled(self.nc)

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
        identity = ""
        if settings.nats_creds:
            options["user_credentials"] = str(settings.nats_creds)
            identity = creds_identity(settings.nats_creds)
            if identity:  # our identities' replies come only to their own inbox prefix
                options["inbox_prefix"] = f"_INBOX.{identity}"
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
        bus = cls(nc, kv_replicas=settings.kv_replicas, secured=bool(settings.nats_creds), identity=identity,
                  events_limits=EventLimits(settings.events_max_age_s, settings.events_max_bytes,
                                            settings.events_max_msgs))
        holder["bus"] = bus
        return bus

    def events_config(self, max_age_s: float | None = None) -> StreamConfig:
        limits = self.events_limits
        return StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_WILDCARD],
            storage=StorageType.FILE,
            max_age=max_age_s if max_age_s is not None else limits.max_age_s,
            max_bytes=limits.max_bytes,
            max_msgs=limits.max_msgs,
            discard=DiscardPolicy.OLD,
            num_replicas=self.kv_replicas,
            duplicate_window=120.0,
            description="cce-network events: cce.events.<kind>.<node>.<what>",
        )

    async def ensure_events_stream(self, max_age_s: float | None = None, create: bool = True) -> None:
        """The event stream as the contract says it (created, or brought to the contract's limits); without `create`
        (an identity that may not), wait until it exists."""
        config = self.events_config(max_age_s)

        async def make() -> None:
            await self.js.add_stream(config)

        await self._ensure_stream(config, make if create else None, (*LIMIT_FIELDS, "discard", "duplicate_window"))

    def stream_config(self, stream: Stream) -> StreamConfig:
        return StreamConfig(name=stream.name, subjects=[stream.wildcard], storage=StorageType.FILE,
                            max_age=stream.max_age_s, max_bytes=stream.max_bytes, max_msgs=stream.max_msgs,
                            discard=DiscardPolicy.OLD, num_replicas=self.kv_replicas, description=stream.summary)

    async def ensure_stream(self, stream: Stream) -> None:
        """A shared stream of the contract (e.g. CCE_TRACES), created or brought to its limits; its writers never
        wait for it (they publish without acknowledgement)."""
        config = self.stream_config(stream)

        async def make() -> None:
            await self.js.add_stream(config)

        await self._ensure_stream(config, make, (*LIMIT_FIELDS, "discard"))

    async def bucket(self, bucket: Bucket, create: bool = True) -> KeyValue:
        """The bucket's KV handle. `create`: make it (idempotently) when missing and bring its configuration to the
        contract; without (an identity that may not), wait until its owner has made it."""
        kv = self._buckets.get(bucket.name)
        if kv is not None:
            return kv
        config = KeyValueConfig(bucket=bucket.name, history=bucket.history, storage=StorageType.FILE,
                                replicas=self.kv_replicas, direct=True,
                                description=f"{bucket.record.__name__} records, written by {bucket.writer}")
        contract = StreamConfig(name=bucket.stream, description=config.description, allow_direct=True,
                                max_msgs_per_subject=bucket.history, num_replicas=self.kv_replicas)

        async def make() -> None:
            await self.js.create_key_value(config)

        await self._ensure_stream(contract, make if create else None, KV_FIELDS)
        kv = await self.js.key_value(bucket.name)
        self._buckets[bucket.name] = kv
        return kv

    async def _ensure_stream(self, config: StreamConfig, make: Callable[[], Awaitable[None]] | None,
                             fields: tuple[str, ...], wait_s: float = 300.0) -> None:
        """The stream, made by `make` when missing (without `make`: waited for); when it exists, the `fields` of its
        configuration that differ from `config` are brought to it."""
        assert config.name is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        told = False
        while True:
            try:
                info = await self.js.stream_info(config.name)
            except NotFoundError:
                info = None
            except BUS_TROUBLE as err:  # no JetStream leader yet (a cluster electing one), a reconnect
                if loop.time() > deadline:
                    raise
                log.info("JetStream not answering yet; asking again", stream=config.name, error=type(err).__name__)
                await asyncio.sleep(0.5)
                continue
            if info is None and make is not None:
                try:
                    await make()
                    return
                except BadRequestError:  # created concurrently by another process
                    continue
                except ServerError as err:  # the server still removing a deleted stream of the name: asked again
                    if err.err_code != STORE_NOT_MADE or loop.time() > deadline:
                        raise
                    log.info("the server could not make the stream's store yet; asking again", stream=config.name)
                    await asyncio.sleep(0.5)
                    continue
                except BUS_TROUBLE:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.5)
                    continue
            if info is not None:
                if make is not None:
                    await self._bring_to_contract(config, info.config, fields)
                return
            if loop.time() > deadline:
                raise TimeoutError(f"stream {config.name} does not exist and this identity may not create it")
            if not told:
                log.info("waiting for the owner to create a stream", stream=config.name)
                told = True
            await asyncio.sleep(0.5)

    async def _bring_to_contract(self, want: StreamConfig, have: StreamConfig, fields: tuple[str, ...]) -> None:
        """The contract's `fields` (limits, replicas, description: what the contract says; never the subjects or the
        storage, which a stream cannot change, nor what nats-py chose for a bucket) are updated when they differ."""
        differs = [f for f in fields if getattr(want, f) is not None and getattr(want, f) != getattr(have, f)]
        if not differs:
            return
        update = have.evolve(**{f: getattr(want, f) for f in differs})
        try:
            await self.js.update_stream(update)
        except Exception as err:  # e.g. replicas beyond the cluster's size: the stream keeps working as it is
            log.warning("stream config differs from the contract and could not be updated", stream=want.name,
                        fields=differs, error=repr(err))
            return
        log.info("stream config brought to the contract", stream=want.name, fields=differs)

    async def ensure_contract(self) -> None:
        """Every stream and bucket of the contract, created or brought to it (an admin's bootstrap: then no service
        waits for another to make what it reads, and the node-scoped buckets no service owns exist)."""
        await self.ensure_events_stream()
        for stream in STREAMS:
            await self.ensure_stream(stream)
        for bucket in BUCKETS:
            await self.bucket(bucket)

    async def close(self) -> None:
        self.closing = True
        if not self.nc.is_closed:
            await self.nc.drain()

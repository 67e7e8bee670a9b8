"""The life of a service process: settings, logs, bus, micro service, health, leader lease, signals, shutdown.

A service's composition root is an async function that receives a started `ServiceProcess`, wires its handlers
and background loops, and returns; `run()` then serves until SIGTERM/SIGINT and shuts down gracefully:
stop taking requests, let in-flight ones finish, resign any lease, drain the connection.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from chassis import tracing
from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.creds import redact_url
from chassis.events import EventPublisher
from chassis.http import HealthServer
from chassis.kv import ChangeHandler, KvCache, Store
from chassis.leader import LeaderElector
from chassis.logs import configure_logging, get_logger
from chassis.rpc import Bounds, RpcServer
from chassis.settings_check import EXIT_BAD_SETTINGS, SettingsError, load_settings
from schemas.base import Contract
from schemas.events import EventKind
from schemas.permissions import CONTROL_PLANE
from schemas.records import Lease
from schemas.subjects import LEASE_KEYS, LEASES, TRACES, Bucket

log = get_logger("chassis.service")

S = TypeVar("S", bound=ChassisSettings)
R = TypeVar("R", bound=Contract)
VERSION = "0.1.0"


class ServiceProcess:
    def __init__(self, name: str, settings: ChassisSettings, description: str = "") -> None:
        self.name = name
        self.settings = settings
        self.description = description
        self.id = settings.service_id or f"{name}-{socket.gethostname()}-{os.getpid()}"
        self.node = settings.node
        self.stopping = asyncio.Event()
        self.ready = False  # set once the composition root has wired everything; /readyz is 503 before
        self.elector: LeaderElector | None = None
        self.tracing: tracing.Tracing | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus: Bus | None = None
        self._rpc: RpcServer | None = None
        self._caches: list[KvCache[Any]] = []
        self.health = HealthServer(settings.http_host, settings.http_port,
                                   {"service": name, "id": self.id, "node": self.node})

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "start() first"
        return self._bus

    @property
    def rpc(self) -> RpcServer:
        assert self._rpc is not None, "start() first"
        return self._rpc

    async def start(self) -> None:
        configure_logging(self.settings.log_level, self.settings.log_json,
                          service=self.name, service_id=self.id, node=self.node)
        # /livez answers from here on, while the bus is still connecting: a NATS outage is not a dead process
        port = await self.health.start()
        self.health.add_check("nats", self._nats_ready)
        self.health.add_check("ready", lambda: (self.ready, "serving" if self.ready else "starting"))
        try:
            self._bus = await Bus.connect(self.settings, name=self.id)
            await self._bus.ensure_events_stream(create=not self._bus.secured or self.name in CONTROL_PLANE)
        except BaseException:
            await self.health.stop()
            raise
        self.events = EventPublisher(self._bus, source=self.id)
        await self._start_tracing()
        metadata = {"id": self.id, "node": self.node, "http": f"http://{self.health.host}:{port}"}
        self._rpc = RpcServer(self._bus, self.name, VERSION, self.description, metadata,
                              Bounds(self.settings.max_in_flight, self.settings.max_in_flight_per_node,
                                     self.settings.max_bus_request_bytes))
        await self._rpc.start()
        log.info("service started", http_port=port, nats=redact_url(self.settings.nats_url),
                 identity=self.bus.identity or None)

    async def _start_tracing(self) -> None:
        """Spans of traced CNI commands go to CCE_TRACES (the control-plane writers make it when missing)."""
        self.tracing = None
        if not self.settings.tracing:
            return
        s = self.settings
        self.tracing = tracing.configure(self.name, self.node, s.trace_exporter, s.trace_otlp_endpoint)
        if self.name in TRACES.writers and self.name in CONTROL_PLANE:
            try:
                await self.bus.ensure_stream(TRACES)
            except Exception as err:  # traces are a nicety: the service serves without them
                log.warning("trace stream unavailable", stream=TRACES.name, error=repr(err))
        self.spawn(self.tracing.ship.run(self.bus.nc.publish, s.trace_flush_s), name="trace-shipper")

    def _nats_ready(self) -> tuple[bool, str]:
        if self._bus is None:
            return False, "connecting"
        return self._bus.connected, "connected" if self._bus.connected else "disconnected (reconnecting)"

    def may_create(self, bucket: Bucket) -> bool:
        """With credentials, a bucket is made only by its owner (a control-plane service; the leases by the services
        that campaign); the others wait for it. Without, whoever comes first makes it (dev and tests)."""
        if not self.bus.secured:
            return True
        if bucket is LEASES:
            return self.name in LEASE_KEYS
        return bucket.writer == self.name and self.name in CONTROL_PLANE

    async def store(self, bucket: Bucket, model: type[R] | None = None) -> Store[R]:
        kv = await self.bus.bucket(bucket, create=self.may_create(bucket))
        return Store(kv, model or bucket.record, bucket.name)  # type: ignore[arg-type]

    async def cache(self, bucket: Bucket, on_change: ChangeHandler[Any] | None = None, *, keys: str | None = None,
                    keep: Callable[[Any], bool] | None = None) -> KvCache[Any]:
        """A watch-backed view of a bucket (of the `keys` filter, of the records `keep` accepts: see KvCache),
        loaded before this returns and rebuilt after every reconnect."""
        cache: KvCache[Any] = KvCache(await self.store(bucket), on_change, keys=keys, keep=keep)
        await cache.start()
        self.bus.on_reconnect(cache.restart)
        self._caches.append(cache)
        return cache

    async def campaign(
        self,
        on_elected: Callable[[], Awaitable[None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> LeaderElector:
        """Run leader election for this service (single-active services); returns the elector."""
        leases: Store[Lease] = await self.store(LEASES)
        self.elector = LeaderElector(leases, self.name, self.id, self.settings.lease_ttl_s)
        elector = self.elector

        async def elected() -> None:
            await self.events.publish(EventKind.SERVICE, "elected", message=f"{self.id} leads {self.name}",
                                      object=self.name, term=elector.term)
            if on_elected:
                await on_elected()

        self.health.add_check("leader", lambda: (True, "leader" if elector.is_leader else "standby"))
        self.spawn(elector.run(elected, on_lost), name="leader-election")
        return elector

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A background loop owned by the process; its crash is logged and stops the process."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task crashed", task=name, error=repr(t.exception()))
                self.stopping.set()

        task.add_done_callback(done)
        return task

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def shutdown(self) -> None:
        log.info("shutting down", in_flight=self._rpc.in_flight if self._rpc else 0)
        if self._rpc is not None:
            await self._rpc.stop(self.settings.shutdown_grace_s)
        await cancel_all(self._tasks)
        for cache in self._caches:
            await cache.stop()
        if self.elector is not None:
            await self.elector.resign()
        if self._bus is not None:
            if self.tracing is not None:  # the spans of the last requests
                await self.tracing.ship.flush(self._bus.nc.publish)
            await self._bus.close()
        await self.health.stop()
        log.info("stopped")


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], again_after_s: float = 1.0) -> None:
    """Cancel the tasks and wait for them to end, cancelling again those still running every `again_after_s`: a
    cancellation can be lost (Python 3.11's `wait_for`, inside the NATS client, returns a result that arrived as it
    was cancelled), and a loop that lost it would otherwise keep the process from stopping."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=again_after_s)
        for task in done:  # their outcome is taken (as gather would), so none is reported as never retrieved
            if not task.cancelled():
                task.exception()


async def serve(
    name: str,
    settings: ChassisSettings,
    wire: Callable[[ServiceProcess], Awaitable[None]],
    description: str = "",
) -> None:
    proc = ServiceProcess(name, settings, description)
    proc.install_signal_handlers()
    await proc.start()
    try:
        await wire(proc)
        proc.ready = True
        await proc.stopping.wait()
    finally:
        # A shutdown that outlives the grace says why: the tasks still running (logged), then every thread's stack
        # (faulthandler, on stderr, also while asyncio.run joins worker threads after we return).
        report_s = settings.shutdown_grace_s + STUCK_REPORT_AFTER_S
        report = asyncio.get_running_loop().call_later(report_s, _log_running_tasks)
        faulthandler.dump_traceback_later(report_s + 1.0)
        try:
            await proc.shutdown()
        finally:
            report.cancel()


STUCK_REPORT_AFTER_S = 2.0  # past the grace; supervisors that kill at grace + 5 s still get both reports


def _log_running_tasks() -> None:
    running = [t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()]
    log.warning("shutdown is taking long; still running", tasks=[
        f"{t.get_name()}: " + " <- ".join(f"{f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})"
                                          for f in reversed(t.get_stack())) for t in running])


def run(
    name: str,
    settings_cls: type[S],
    wire: Callable[[ServiceProcess], Awaitable[None]],
    description: str = "",
) -> None:
    """Entry point of a service's composition root: read settings once, serve until signalled. Bad settings stop
    the process at once (exit 2) with a line naming the setting."""
    try:
        settings = load_settings(settings_cls)
    except SettingsError as err:
        print(f"{name}: cannot start: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    asyncio.run(serve(name, settings, wire, description))
    faulthandler.cancel_dump_traceback_later()

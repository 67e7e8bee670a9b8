"""Typed request/reply on the bus, served as NATS micro services so NATS tooling can list and inspect them.

Each request is handled in its own task (a slow allocation must not hold up the next), counted as in flight
until it has replied, so a graceful shutdown can wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import EndpointStats, Service
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram
from pydantic import ValidationError

from chassis import tracing
from chassis.bus import Bus
from chassis.logs import get_logger
from schemas.base import Contract, from_subject_token
from schemas.errors import CceError, ErrorReason, ErrorReply, status_of
from schemas.subjects import RequestSubject

log = get_logger("chassis.rpc")

REASON_HEADER = "Cce-Error-Reason"

REQUESTS = PromCounter("cce_bus_requests_total", "requests served", ["service", "endpoint", "outcome"])
LATENCY = Histogram(
    "cce_bus_request_seconds", "time to serve a request", ["service", "endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("cce_bus_requests_in_flight", "requests being served", ["service"])
BUSY = PromCounter("cce_bus_requests_refused_busy_total", "requests refused: too many in flight", ["service"])
CALLS = PromCounter("cce_bus_calls_total", "requests this process made, by endpoint and outcome: ok or the coded "
                    "reason (Timeout, ServiceUnavailable... when the bus or the service is away)",
                    ["endpoint", "outcome"])

Req = TypeVar("Req", bound=Contract)
Rep = TypeVar("Rep", bound=Contract)
Handler = Callable[[Any], Awaitable[Contract]]


def invalid_request(err: ValidationError) -> CceError:
    fields = [".".join(str(p) for p in e["loc"]) or "<body>" for e in err.errors()]
    first = err.errors()[0]
    where = fields[0]
    return CceError(
        ErrorReason.INVALID_REQUEST,
        f"invalid field '{where}': {first['msg']}",
        fields=fields,
        errors=[{"field": f, "error": e["msg"]} for f, e in zip(fields, err.errors(), strict=True)],
    )


@dataclass(frozen=True)
class Bounds:
    """What one process serves at once: requests in flight (in all, and per node, so one node's flood cannot take
    the others' turns) and the largest request body. Beyond them a request is refused at once, with a coded
    reason the caller can act on (ServiceUnavailable is retryable; InvalidRequest is not)."""

    in_flight: int = 1024
    per_node: int = 256
    request_bytes: int = 256 * 1024


class _Meters:
    """One endpoint's metric series, resolved once (a `labels()` lookup per request was the chassis's largest
    cost after the socket)."""

    def __init__(self, service: str, endpoint: str) -> None:
        self.service, self.endpoint = service, endpoint
        self.latency = LATENCY.labels(service, endpoint)
        self._outcomes: dict[str, Any] = {}

    def outcome(self, outcome: str) -> Any:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = REQUESTS.labels(self.service, self.endpoint, outcome)
        return child


_CALL_OUTCOMES: dict[tuple[str, str], Any] = {}


def _count_call(endpoint: str, outcome: str) -> None:
    child = _CALL_OUTCOMES.get((endpoint, outcome))
    if child is None:
        child = _CALL_OUTCOMES[(endpoint, outcome)] = CALLS.labels(endpoint, outcome)
    child.inc()


class RpcServer:
    """The micro service of one process and its typed endpoints."""

    def __init__(self, bus: Bus, name: str, version: str, description: str = "",
                 metadata: dict[str, str] | None = None, bounds: Bounds | None = None) -> None:
        self.bus = bus
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self.bounds = bounds or Bounds()
        self._service: Service | None = None
        self._meters: dict[str, _Meters] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._per_node: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._accepting = True

    async def start(self) -> None:
        IN_FLIGHT.labels(self.name).set_function(lambda: len(self._inflight))  # read when scraped
        self._service = await add_service(
            self.bus.nc, name=self.name, version=self.version, description=self.description,
            metadata=self.metadata, queue_group=self.name, stats_handler=self._stats,
        )

    def _stats(self, endpoint: EndpointStats) -> dict[str, Any]:
        return {"in_flight": len(self._inflight),
                "errors_by_reason": {k.split("|", 1)[1]: v for k, v in self._errors.items()
                                     if k.startswith(f"{endpoint.name}|")}}

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def add(self, spec: RequestSubject, handler: Handler, subject: str | None = None,
                  queue_group: str | None = None) -> None:
        """Serve `spec` with `handler(request) -> reply`. Control-plane services serve every node
        (`prefix.*`); a per-node service passes its own subject (`spec.for_node(node)`)."""
        assert self._service is not None, "start() first"

        async def on_request(req: Request) -> None:
            refused = self._refusal(req)
            if refused is not None:
                await self._reply_error(req, refused, spec.name)
                return
            node = req.subject.rsplit(".", 1)[-1]
            self._per_node[node] += 1
            task = asyncio.create_task(self._handle(spec, handler, req))
            self._inflight.add(task)
            task.add_done_callback(lambda t: self._done(t, node))

        self._meters[spec.name] = _Meters(self.name, spec.name)
        await self._service.add_endpoint(
            name=spec.name, subject=subject or spec.pattern, handler=on_request,
            queue_group=queue_group or self.name,
            metadata={"request": spec.request.__name__, "reply": spec.reply.__name__, "summary": spec.summary},
        )
        await self.bus.settled()  # the subscription is known to the server before we say we serve

    def _refusal(self, req: Request) -> CceError | None:
        if not self._accepting:
            return CceError(ErrorReason.SERVICE_UNAVAILABLE, "shutting down")
        if len(req.data) > self.bounds.request_bytes:
            return CceError(ErrorReason.INVALID_REQUEST, f"request of {len(req.data)} bytes is larger than "
                            f"{self.bounds.request_bytes}", fields=["<body>"])
        node = req.subject.rsplit(".", 1)[-1]
        if len(self._inflight) >= self.bounds.in_flight or self._per_node[node] >= self.bounds.per_node:
            BUSY.labels(self.name).inc()
            return CceError(ErrorReason.SERVICE_UNAVAILABLE, f"busy: {len(self._inflight)} requests in flight "
                            f"({self._per_node[node]} for {node}); try again", subject=req.subject)
        return None

    def _done(self, task: asyncio.Task[None], node: str) -> None:
        self._inflight.discard(task)
        self._per_node[node] -= 1
        if self._per_node[node] <= 0:
            del self._per_node[node]

    async def _handle(self, spec: RequestSubject, handler: Handler, req: Request) -> None:
        started = time.perf_counter()
        outcome = "ok"
        meters = self._meters[spec.name]
        try:
            try:
                request = spec.request.model_validate_json(req.data)
            except ValidationError as err:
                raise invalid_request(err) from None
            node = getattr(request, "node", None)
            token = req.subject.rsplit(".", 1)[-1]
            if node is not None and from_subject_token(token) != node and token != node:
                raise CceError(ErrorReason.INVALID_REQUEST,
                               f"invalid field 'node': {node!r} does not match the subject's node {token!r}",
                               fields=["node"])
            if tracing.active():
                with tracing.server_span(f"{self.name}.{spec.name}", req.headers, {tracing.NODE: node or token}):
                    reply = await handler(request)
            else:
                reply = await handler(request)
            await req.respond(reply.model_dump_json().encode())
        except CceError as err:
            outcome = err.reason.value
            await self._reply_error(req, err, spec.name)
        except Exception as err:
            outcome = ErrorReason.INTERNAL.value
            log.exception("handler failed", endpoint=spec.name, subject=req.subject)
            await self._reply_error(req, CceError(ErrorReason.INTERNAL, repr(err)), spec.name)
        finally:
            meters.outcome(outcome).inc()
            meters.latency.observe(time.perf_counter() - started)

    async def _reply_error(self, req: Request, err: CceError, endpoint: str = "") -> None:
        self._errors[f"{endpoint}|{err.reason.value}"] += 1
        body = err.to_reply().model_dump_json().encode()
        try:
            await req.respond_error(str(status_of(err.reason)), err.message, data=body,
                                    headers={REASON_HEADER: err.reason.value})
        except Exception as exc:  # the connection is gone: the caller will time out
            log.warning("could not send error reply", error=repr(exc))

    async def stop(self, grace_s: float) -> None:
        """Stop taking requests, let those in flight finish (up to `grace_s`), then drop the service."""
        self._accepting = False
        if self._service is not None:
            await self._service.stop()
        if self._inflight:
            log.info("waiting for in-flight requests", count=len(self._inflight), grace_s=grace_s)
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for task in pending:
                task.cancel()


async def call(bus: Bus, spec: RequestSubject, request: Contract, *, node: str | None = None,
               timeout: float = 5.0, subject: str | None = None) -> Any:
    """Send a typed request and return the typed reply; failures raise CceError with a coded reason."""
    target = subject or spec.for_node(node if node is not None else getattr(request, "node"))  # noqa: B009
    try:
        reply = await _request(bus, spec, target, request, timeout)
    except CceError as err:
        _count_call(spec.name, err.reason.value)
        raise
    _count_call(spec.name, "ok")
    return reply


async def _request(bus: Bus, spec: RequestSubject, target: str, request: Contract, timeout: float) -> Any:
    try:
        msg = await bus.nc.request(target, request.model_dump_json().encode(), timeout=timeout,
                                   headers=tracing.headers())
    except nats.errors.NoRespondersError:
        raise CceError(ErrorReason.SERVICE_UNAVAILABLE, f"no service answers {target}",
                       subject=target) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise CceError(ErrorReason.TIMEOUT, f"no reply on {target} within {timeout}s",
                       subject=target) from None
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError):
        raise CceError(ErrorReason.TIMEOUT, f"bus connection unavailable for {target}",
                       subject=target) from None
    headers = msg.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise _error_from_reply(msg.data, headers)
    try:
        return spec.reply.model_validate_json(msg.data)
    except ValidationError as err:
        raise CceError(ErrorReason.INTERNAL, f"malformed reply on {target}: {err.errors()[0]['msg']}") from None


def _error_from_reply(data: bytes, headers: dict[str, str]) -> CceError:
    try:
        return CceError.from_reply(ErrorReply.model_validate_json(data))
    except ValidationError:
        # an error from something that is not our chassis: keep its words, classify as Internal
        code = headers.get(REASON_HEADER, "")
        reason = ErrorReason(code) if code in ErrorReason._value2member_map_ else ErrorReason.INTERNAL
        return CceError(reason, headers.get(ERROR_HEADER, "error reply without a body"),
                        status=headers.get(ERROR_CODE_HEADER, ""))

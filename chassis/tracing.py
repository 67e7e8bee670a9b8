"""Traces of CNI requests across the services that serve them (OpenTelemetry API and SDK).

cni_gateway starts a trace for every CNI command it serves; the trace context travels in the `traceparent` header
(W3C Trace Context) of every bus request made for it (`chassis.rpc`), so ipam and node_datapath continue it, and
in the pool record of an allocation that waits for a refill, so eni_manager's refill of that node joins it too.
Every process publishes the spans it finished to the bounded stream CCE_TRACES (`schemas.subjects.TRACES`), a
batch per trace, where `cce-net trace <namespace/pod>` reads them. An OTLP or console exporter can be added
(`CCE_TRACE_EXPORTER`); none is by default.

Cheap by construction: a span is made only inside a trace a CNI command started (anything else costs one look at
the current context), spans are queued as they end and published later from a background task in batches, with
plain publishes nobody waits for (the stream stores them; a full queue drops the newest and counts them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes
from prometheus_client import Counter

from chassis.logs import get_logger
from schemas.subjects import TRACES, trace_index_subject, trace_span_subject

log = get_logger("chassis.tracing")

TRACEPARENT = "traceparent"
NODE = "cce.node"  # the node a span's work was for
ERROR = "cce.error"  # the coded reason (or error) of a step that failed
INDEX = "cce.index"  # on a CNI command's root span: publish a TraceIndex for its pod
SPANS = Counter("cce_trace_spans_total", "finished spans: published to CCE_TRACES, dropped (queue full) or failed "
                "(could not publish)", ["outcome"])
_SCALARS = (str, bool, int, float)


class Tracing:
    """The process's tracer and the processor that ships its spans to the bus."""

    def __init__(self, service: str, node: str, queue_limit: int = 8192, exporter: SpanExporter | None = None) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.ship = BusSpanProcessor(service, node, queue_limit)
        self.provider.add_span_processor(self.ship)
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("cce-network")

    def shutdown(self) -> None:
        self.provider.shutdown()


_current: Tracing | None = None


def configure(service: str, node: str, exporter: str = "", otlp_endpoint: str = "") -> Tracing:
    """Turn tracing on for this process (the last call wins: tests run several services in one process)."""
    global _current
    _current = Tracing(service, node, exporter=_exporter(exporter, otlp_endpoint))
    return _current


def disable() -> None:
    global _current
    if _current is not None:
        _current.shutdown()
    _current = None


def current() -> Tracing | None:
    return _current


def _exporter(kind: str, endpoint: str) -> SpanExporter | None:
    if kind in ("", "none"):
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            log.error("CCE_TRACE_EXPORTER=otlp needs the package opentelemetry-exporter-otlp-proto-http; "
                      "spans go to the bus only")
            return None
        exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        return exporter
    raise ValueError(f"CCE_TRACE_EXPORTER={kind!r}: none, console or otlp")


# ---- the context on the wire --------------------------------------------------------------------------------------


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, or None outside a trace."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def active() -> bool:
    """Whether this process records spans (CCE_TRACING): without, no request of its is in a trace."""
    return _current is not None


def headers() -> dict[str, str] | None:
    """Headers that carry the current trace on a bus request (None outside a trace: nothing to add)."""
    if _current is None:
        return None
    parent = traceparent()
    return None if parent is None else {TRACEPARENT: parent}


def parse(value: str | None) -> SpanContext | None:
    """A remote span context from a `traceparent` (None when malformed or absent)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


# ---- spans ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recorded(tracing: Tracing, name: str, context: Context | None, kind: SpanKind, attributes: Attributes,
              links: Sequence[Link] = ()) -> Iterator[Span]:
    with tracing.tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes, links=links,
                                              record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as err:
            fail(span, _reason_of(err))
            raise


def _reason_of(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    value = getattr(reason, "value", None)
    if isinstance(value, str):
        return value
    return type(err).__name__


def fail(span: Span | None, reason: str) -> None:
    """Mark a step failed with its coded reason (the first one set stays)."""
    if span is None or not span.is_recording():
        return
    attrs = getattr(span, "attributes", None) or {}
    if ERROR not in attrs:
        span.set_attribute(ERROR, reason)


@contextlib.contextmanager
def root_span(name: str, attributes: Attributes = None) -> Iterator[Span | None]:
    """A new trace (cni_gateway: one per CNI command), when tracing is on."""
    tracing = _current
    if tracing is None:
        yield None
        return
    with _recorded(tracing, name, Context(), SpanKind.SERVER, attributes) as span:
        yield span


@contextlib.contextmanager
def server_span(name: str, request_headers: Mapping[str, str] | None, attributes: Attributes = None,
                ) -> Iterator[Span | None]:
    """The span of a bus request that carries a trace; nothing when it carries none."""
    tracing = _current
    parent = parse(request_headers.get(TRACEPARENT)) if tracing is not None and request_headers else None
    if tracing is None or parent is None:
        yield None
        return
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    with _recorded(tracing, name, context, SpanKind.SERVER, attributes) as span:
        yield span


@contextlib.contextmanager
def child_span(name: str, attributes: Attributes = None, kind: SpanKind = SpanKind.INTERNAL,
               ) -> Iterator[Span | None]:
    """A step inside the current trace; nothing outside one."""
    tracing = _current
    if tracing is None or not trace.get_current_span().is_recording():
        yield None
        return
    with _recorded(tracing, name, None, kind, attributes) as span:
        yield span


def start_child(name: str, attributes: Attributes = None) -> Span | None:
    """A step of the current trace that is not the current span (a wait): the caller ends it."""
    tracing = _current
    if tracing is None or not trace.get_current_span().is_recording():
        return None
    return tracing.tracer.start_span(name, attributes=attributes, record_exception=False,
                                     set_status_on_exception=False)


@contextlib.contextmanager
def joined_span(name: str, parents: Sequence[str], attributes: Attributes = None) -> Iterator[Span | None]:
    """Work done for traces that asked for it elsewhere (`traceparent`s from records): a child of the first,
    linked to the others; nothing when none is a valid trace."""
    tracing = _current
    contexts = [c for c in (parse(p) for p in parents) if c is not None]
    if tracing is None or not contexts:
        yield None
        return
    context = trace.set_span_in_context(NonRecordingSpan(contexts[0]))
    links = [Link(c) for c in contexts[1:]]
    with _recorded(tracing, name, context, SpanKind.INTERNAL, attributes, links) as span:
        yield span


# ---- shipping spans to the bus -------------------------------------------------------------------------------------


class BusSpanProcessor(SpanProcessor):
    """Queues finished spans; `run` publishes them to CCE_TRACES in batches (a message per trace)."""

    def __init__(self, service: str, node: str, queue_limit: int) -> None:
        self.service = service
        self.node = node
        self.queue: collections.deque[ReadableSpan] = collections.deque()
        self.queue_limit = queue_limit
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_end(self, span: ReadableSpan) -> None:
        if len(self.queue) >= self.queue_limit:
            SPANS.labels("dropped").inc()
            return
        self.queue.append(span)
        wake, loop = self._wake, self._loop
        if wake is None or loop is None or wake.is_set():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def shutdown(self) -> None:
        self.queue.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    async def run(self, publish: Any, flush_s: float) -> None:
        """Publish what ended, `flush_s` after the first span of a batch; `publish(subject, data)` is the bus's.
        Never raises: tracing must not take a service down."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.queue:
            self._wake.set()
        while True:
            await self._wake.wait()
            await asyncio.sleep(flush_s)
            self._wake.clear()
            await self.flush(publish)

    async def flush(self, publish: Any) -> None:
        spans = list(self.queue)
        self.queue.clear()
        for subject, payload, count in self.messages(spans):
            try:
                await publish(subject, payload)
                SPANS.labels("published").inc(count)
            except Exception as err:  # the bus is away: these spans are lost, the service goes on
                SPANS.labels("failed").inc(count)
                log.debug("trace spans not published", subject=subject, error=repr(err))

    def messages(self, spans: list[ReadableSpan]) -> list[tuple[str, bytes, int]]:
        """(subject, payload, spans in it): a SpanBatch per trace, a TraceIndex per indexed root span."""
        by_trace: dict[str, list[dict[str, Any]]] = {}
        out: list[tuple[str, bytes, int]] = []
        for span in spans:
            record = self.record(span)
            by_trace.setdefault(record["trace_id"], []).append(record)
            index = self.index(span, record)
            if index is not None:
                out.append(index)
        for trace_id, records in by_trace.items():
            node = self.node or next((r["node"] for r in records if r["node"]), "")
            body = json.dumps({"schema_version": 1, "spans": records}, separators=(",", ":")).encode()
            out.append((trace_span_subject(node, trace_id), body, len(records)))
        return out

    def record(self, span: ReadableSpan) -> dict[str, Any]:
        ctx = span.get_span_context()
        assert ctx is not None
        attrs = dict(span.attributes or {})
        parent = span.parent
        return {
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else "",
            "name": span.name,
            "service": self.service,
            "node": str(attrs.pop(NODE, "") or self.node),
            "start_ns": span.start_time or 0,
            "end_ns": span.end_time or 0,
            "error": str(attrs.pop(ERROR, "")),
            "attributes": {k: v for k, v in attrs.items() if isinstance(v, _SCALARS) and k != INDEX},
            "events": [{"name": e.name, "at_ns": e.timestamp,
                        "attributes": {k: v for k, v in (e.attributes or {}).items() if isinstance(v, _SCALARS)}}
                       for e in span.events],
            "links": [f"{link.context.trace_id:032x}" for link in span.links],
        }

    def index(self, span: ReadableSpan, record: dict[str, Any]) -> tuple[str, bytes, int] | None:
        attrs = span.attributes or {}
        if not attrs.get(INDEX):
            return None
        namespace, pod, command = (str(attrs.get(k, "")) for k in
                                   ("k8s.namespace.name", "k8s.pod.name", "cni.command"))
        if not (namespace and pod and command):
            return None
        try:
            subject = trace_index_subject(record["node"] or self.node, command, namespace, pod)
        except ValueError:
            return None
        body = {"schema_version": 1, "trace_id": record["trace_id"], "command": command, "namespace": namespace,
                "pod": pod, "container_id": str(attrs.get("cni.container_id", "")), "node": record["node"],
                "start_ns": record["start_ns"], "end_ns": record["end_ns"], "error": record["error"]}
        return subject, json.dumps(body, separators=(",", ":")).encode(), 0


__all__ = ["ERROR", "INDEX", "NODE", "TRACEPARENT", "TRACES", "BusSpanProcessor", "Tracing", "child_span",
           "configure", "current", "disable", "fail", "headers", "joined_span", "parse", "root_span",
           "server_span", "start_child", "traceparent"]

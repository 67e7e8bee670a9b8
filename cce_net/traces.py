"""`cce-net trace <namespace/pod>`: the spans of a pod's last CNI command (ADD by default) as a timeline, read from
the stream CCE_TRACES the services publish their span records to."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from chassis.bus import Bus
from schemas.subjects import TRACES
from schemas.traces import SpanBatch, SpanRecord, TraceIndex


async def _read(bus: Bus, subject: str, policy: DeliverPolicy) -> list[bytes]:
    """Every message of CCE_TRACES under `subject` (with LAST_PER_SUBJECT: the last of each subject)."""
    config = ConsumerConfig(deliver_policy=policy)
    sub = await bus.js.subscribe(subject, stream=TRACES.name, ordered_consumer=True, deliver_policy=policy,
                                 config=config)
    out: list[bytes] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                if not (await sub.consumer_info()).num_pending:
                    return out  # nothing matches, or everything was read
                continue
            out.append(msg.data)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def last_index(bus: Bus, namespace: str, pod: str, command: str = "ADD") -> TraceIndex | None:
    """The newest TraceIndex of the pod's `command`, whatever node it ran on."""
    subject = f"{TRACES.prefix}.*.pod.{command.lower()}.{namespace}.{pod}"
    found: list[TraceIndex] = []
    for data in await _read(bus, subject, DeliverPolicy.LAST_PER_SUBJECT):
        with contextlib.suppress(ValidationError):
            found.append(TraceIndex.model_validate_json(data))
    return max(found, key=lambda i: i.start_ns, default=None)


async def spans_of(bus: Bus, trace_id: str) -> list[SpanRecord]:
    spans: dict[str, SpanRecord] = {}
    for data in await _read(bus, f"{TRACES.prefix}.*.span.{trace_id}", DeliverPolicy.ALL):
        with contextlib.suppress(ValidationError):
            for span in SpanBatch.model_validate_json(data).spans:
                spans[span.span_id] = span
    return sorted(spans.values(), key=lambda s: (s.start_ns, s.end_ns))


async def trace_data(bus: Bus, namespace: str, pod: str, command: str = "ADD") -> dict[str, Any] | None:
    """The pod's last `command`: its index and spans (None when no such trace is kept)."""
    try:
        await bus.js.stream_info(TRACES.name)
    except NotFoundError:
        return None
    index = await last_index(bus, namespace, pod, command)
    if index is None:
        return None
    return {"index": index, "spans": await spans_of(bus, index.trace_id)}


def timeline(index: TraceIndex, spans: list[SpanRecord]) -> list[str]:
    """One line per span, indented under its parent, with its start offset and duration from the trace's start."""
    start = min([index.start_ns, *(s.start_ns for s in spans)])
    children: dict[str, list[SpanRecord]] = {}
    ids = {s.span_id for s in spans}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines = [f"trace {index.trace_id}  {index.command} {index.namespace}/{index.pod} on {index.node}  "
             f"container {index.container_id or '-'}  {_ms(index.end_ns - index.start_ns)}"
             + (f"  FAILED {index.error}" if index.error else ""),
             f"{'start':>9} {'took':>9}  step"]

    def walk(parent: str, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            lines.append(f"{_ms(span.start_ns - start):>9} {_ms(span.end_ns - span.start_ns):>9}  "
                         f"{'  ' * depth}{span.name} [{span.service}]{_details(span)}")
            for event in span.events:
                attrs = " ".join(f"{k}={v}" for k, v in event.attributes.items())
                lines.append(f"{_ms(event.at_ns - start):>9} {'':>9}  {'  ' * (depth + 1)}· {event.name} {attrs}"
                             .rstrip())
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f}ms"


def _details(span: SpanRecord) -> str:
    keep = {k: v for k, v in span.attributes.items() if k.startswith(("cloud.", "cce.")) and k != "cce.action"}
    out = "".join(f" {k}={v}" for k, v in sorted(keep.items()))
    if span.error:
        out += f"  ERROR {span.error}"
    return out


def render(data: dict[str, Any] | None, out: Callable[[str], None]) -> None:
    if data is None:
        out("no trace kept for that pod and command (tracing off, or older than CCE_TRACES keeps)")
        return
    for line in timeline(data["index"], data["spans"]):
        out(line)

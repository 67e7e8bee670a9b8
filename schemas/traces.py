"""Span records of traced CNI requests, kept in the bounded JetStream stream CCE_TRACES (`cce-net trace`).

Every service that takes part in a traced request (cni_gateway, ipam, eni_manager when the request waited for a
refill, node_datapath) publishes the spans it finished, a batch per trace, on `cce.traces.<node>.span.<trace_id>`;
cni_gateway also publishes, for every CNI command it traced, a `TraceIndex` on
`cce.traces.<node>.pod.<command>.<namespace>.<name>`, so the last ADD of a pod is one lookup away.
"""

from __future__ import annotations

from pydantic import Field

from schemas.base import Contract

AttributeValue = str | bool | int | float


class SpanEvent(Contract):
    name: str
    at_ns: int = Field(description="when, in nanoseconds since the Unix epoch")
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class SpanRecord(Contract):
    """One finished span (OpenTelemetry's model, flattened): ids in lowercase hex, times in Unix nanoseconds."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    span_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    parent_id: str = Field("", pattern=r"^([0-9a-f]{16})?$", description="empty for the trace's root")
    name: str = Field(max_length=200)
    service: str = Field(description="the service that made it: cni_gateway, ipam, eni_manager, node_datapath")
    node: str = Field("", description="the node the work was for")
    start_ns: int
    end_ns: int
    error: str = Field("", description="the coded reason or error when the step failed, else empty")
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    events: list[SpanEvent] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list, description="other traces this span served (trace ids)")


class SpanBatch(Contract):
    """Spans one service finished for one trace (published once per flush)."""

    spans: list[SpanRecord]


class TraceIndex(Contract):
    """The trace of a pod's CNI command (the last one per pod and command stays findable)."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    command: str = Field(description="ADD, DEL or CHECK")
    namespace: str
    pod: str
    container_id: str = ""
    node: str = ""
    start_ns: int
    end_ns: int
    error: str = ""

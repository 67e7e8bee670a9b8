"""Publishing events to the JetStream stream CCE_EVENTS. An event that cannot be stored is logged, not fatal."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from chassis.bus import Bus
from chassis.logs import get_logger
from schemas.errors import ErrorReason
from schemas.events import Event, EventKind, Severity
from schemas.subjects import event_subject

log = get_logger("chassis.events")

PUBLISHED = Counter("cce_events_published_total", "events stored in CCE_EVENTS", ["kind", "what"])
FAILED = Counter("cce_events_failed_total", "events that could not be stored", ["kind"])


class EventPublisher:
    def __init__(self, bus: Bus, source: str, timeout: float = 2.0) -> None:
        self.bus = bus
        self.source = source
        self.timeout = timeout

    async def publish(
        self,
        kind: EventKind,
        what: str,
        *,
        node: str = "-",
        message: str = "",
        reason: ErrorReason | None = None,
        severity: Severity | None = None,
        object: str = "",
        msg_id: str | None = None,
        **data: Any,
    ) -> Event | None:
        """Store one event; `msg_id` de-duplicates retries within the stream's window."""
        event = Event(
            kind=kind, node=node or "-", what=what, message=message, reason=reason, object=object,
            severity=severity or (Severity.WARNING if reason else Severity.NORMAL),
            source=self.source, data=data,
        )
        subject = event_subject(kind, event.node, what)
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            await self.bus.js.publish(subject, event.model_dump_json().encode(), timeout=self.timeout,
                                      headers=headers)
        except Exception as err:
            FAILED.labels(kind.value).inc()
            log.warning("event not stored", subject=subject, error=repr(err))
            return None
        PUBLISHED.labels(kind.value, what).inc()
        return event

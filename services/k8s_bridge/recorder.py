"""Kubernetes Events: written for the bridge's own findings, and for the bus events a user should see where they look
(`kubectl describe pod/node`), read from CCE_EVENTS by a durable consumer that only the leader pulls from, so a new
leader continues where the last one acknowledged.

The same story told again lands on the same Event (its name comes from what it says) and raises its count; an
object that keeps failing gets at most `burst` Events at once and one more per `refill_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import ValidationError

from chassis.bus import Bus
from chassis.logs import get_logger
from schemas.base import utcnow
from schemas.events import Event
from schemas.subjects import BRIDGE_EVENTS_CONSUMER, EVENTS_PREFIX, EVENTS_STREAM
from services.k8s_bridge.kube import STRATEGIC_PATCH, KubeApi, KubeError
from services.k8s_bridge.kubeevents import ADD_FAILED, KubeEvent, SpamFilter, from_bus_event

log = get_logger("k8s_bridge.events")

CONSUMER = BRIDGE_EVENTS_CONSUMER
# what the bridge may turn into Kubernetes Events: ADD failures, and whatever concerns nodes
FILTERS = [f"{EVENTS_PREFIX}.endpoint.*.{ADD_FAILED}", *(f"{EVENTS_PREFIX}.{kind}.>" for kind in
                                                         ("node", "eni", "ip", "route", "cidr", "subnet", "datapath"))]


class EventRecorder:
    def __init__(self, api: KubeApi, spam: SpamFilter, instance: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.spam = spam
        self.instance = instance
        self.clock = clock
        self._counts: OrderedDict[str, int] = OrderedDict()  # event name -> its count, the most recent 4,096
        self.written = 0
        self.suppressed = 0

    async def record(self, event: KubeEvent) -> bool:
        """Write (or count again) one Event; False when the object's budget is spent. Raises KubeError when the
        API server cannot be reached, so a caller that must not lose it can try again."""
        if not self.spam.allow(event.involved, self.clock()):
            self.suppressed += 1
            log.debug("event suppressed (spam filter)", object=event.involved.name, reason=event.reason)
            return False
        if not event.instance:
            event = KubeEvent(event.involved, event.type, event.reason, event.message, self.instance)
        now = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        path = f"/api/v1/namespaces/{event.namespace}/events"
        count = self._counts.get(event.name)
        if count is None:
            try:
                await self.api.write("POST", path, event.body(now))
                self._remember(event.name, 1)
                self.written += 1
                return True
            except KubeError as err:
                if not err.conflict:
                    raise
                current = await self.api.get(f"{path}/{event.name}")
                count = int(current.get("count") or 1)
        try:
            await self.api.write("PATCH", f"{path}/{event.name}", {"count": count + 1, "lastTimestamp": now},
                                 STRATEGIC_PATCH)
        except KubeError as err:
            if not err.not_found:
                raise
            self._counts.pop(event.name, None)  # expired meanwhile (the API server's event TTL): tell it anew
            return await self.record(event)
        self._remember(event.name, count + 1)
        self.written += 1
        return True

    def _remember(self, name: str, count: int) -> None:
        self._counts[name] = count
        self._counts.move_to_end(name)
        while len(self._counts) > 4096:
            self._counts.popitem(last=False)


class BusEvents:
    """The leader's pull from CCE_EVENTS: each bus event a user should see becomes a Kubernetes Event; a message is
    acknowledged once written (or found not worth one), and redelivered later if the API server is unreachable."""

    def __init__(self, bus: Bus, recorder: EventRecorder, node_uid: Callable[[str], str],
                 is_leader: Callable[[], bool], wait_leader: Callable[[], object]) -> None:
        self.bus = bus
        self.recorder = recorder
        self.node_uid = node_uid
        self.is_leader = is_leader
        self.wait_leader = wait_leader
        self.seen = 0

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(durable_name=CONSUMER, deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=30.0, max_deliver=20, filter_subjects=FILTERS, max_ack_pending=1000,
                                description="k8s_bridge: bus events -> Kubernetes Events")
        try:
            await self.bus.js.consumer_info(EVENTS_STREAM, CONSUMER)
        except NotFoundError:
            with contextlib.suppress(BadRequestError):  # the other replica created it meanwhile
                await self.bus.js.add_consumer(EVENTS_STREAM, config)
        return await self.bus.js.pull_subscribe_bind(CONSUMER, EVENTS_STREAM)

    async def run(self) -> None:
        sub = None
        while True:
            await self.wait_leader()  # type: ignore[misc]
            try:
                if sub is None:
                    sub = await self._subscription()
                while self.is_leader():
                    await self._pull(sub)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("reading bus events failed; again shortly", error=repr(err))
                sub = None
                await asyncio.sleep(1.0)

    async def _pull(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            msgs = await sub.fetch(100, timeout=1.0)
        except TimeoutError:
            return
        for msg in msgs:
            self.seen += 1
            try:
                event = Event.model_validate_json(msg.data)
            except ValidationError:
                await msg.term()  # not ours to understand: never again
                continue
            kube_event = from_bus_event(event, self.node_uid(event.node))
            if kube_event is None:
                await msg.ack()
                continue
            try:
                await self.recorder.record(kube_event)
            except KubeError as err:
                log.info("event not written yet; redelivered later", reason=kube_event.reason, error=str(err))
                await msg.nak(delay=5.0)
                continue
            await msg.ack()

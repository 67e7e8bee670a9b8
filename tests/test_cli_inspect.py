"""The CLI's read-only views (cce_net.inspect) against a real nats-server: status, events, services."""

from __future__ import annotations

import asyncio
import json

import pytest
from rich.console import Console

from cce_net.inspect import list_services, render_services, render_status, status_data, tail_events
from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.events import EventPublisher
from chassis.kv import Store
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.base import Contract, InstanceType
from schemas.errors import ErrorReason
from schemas.events import Event, EventKind
from schemas.records import (
    CceEndpoint,
    EndpointAddress,
    Eni,
    EniProvision,
    EniState,
    NetResourceSet,
    NodeCapacity,
    NodePool,
    NodeSpec,
    NodeStatus,
    PoolDemand,
    PrivateIp,
    RouteRule,
)
from schemas.subjects import (
    ENDPOINTS,
    ENIS,
    EVENTS_STREAM,
    NODES,
    POOLS,
    PROVISION,
    ROUTES,
    Bucket,
    RequestSubject,
    cidr_key,
    endpoint_key,
)

pytestmark = pytest.mark.integration


async def _store(bus: Bus, bucket: Bucket) -> Store[Contract]:
    return Store(await bus.bucket(bucket), bucket.record, bucket.name)


class Lines(list[str]):
    """The lines tail_events printed, with a way to wait for more."""

    def __init__(self) -> None:
        super().__init__()
        self._added = asyncio.Event()

    def add(self, line: str) -> None:
        self.append(line)
        self._added.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self) < count:
                await self._added.wait()
                self._added.clear()


# ------------------------------------------------------------------------------------------------------------
# status


async def test_status_of_an_empty_server_is_empty_and_creates_no_buckets(bus: Bus) -> None:
    data = await status_data(bus)

    assert data["nodes"] == data["enis"] == data["endpoints"] == data["routes"] == data["leaders"] == []
    assert data["pools"] == []
    json.dumps(data)
    streams = [s.config.name for s in await bus.js.streams_info()]
    assert streams == [EVENTS_STREAM]


async def _write_records(bus: Bus) -> None:
    node = NetResourceSet(
        name="node-1",
        spec=NodeSpec(instance_id="i-node1", instance_type=InstanceType.BCC, zone="zone-a", cpus=4,
                      memory_mib=8192),
        status=NodeStatus(ready=True, enis=["eni-abc"], capacity=NodeCapacity(free_ips=5, used_ips=2)),
    )
    eni = Eni(eni_id="eni-abc", node="node-1", instance_id="i-node1", subnet_id="sbn-1",
              subnet_cidr="10.0.0.0/24", mac="02:00:00:00:00:01", state=EniState.INUSE,
              private_ips=[PrivateIp(ip="10.0.0.5", primary=True), PrivateIp(ip="10.0.0.6")])
    endpoint = CceEndpoint(node="node-1", container_id="c0ffee1234567890abcdef", ifname="eth0",
                           namespace="default", pod="web-0",
                           addresses=[EndpointAddress(ip="10.0.0.6", gateway="10.0.0.1")])
    route = RouteRule(destination="172.16.3.0/24", node="node-1", route_table_id="rt-1",
                      next_hop_instance="i-node1", description="pods of node-1")
    await (await _store(bus, NODES)).create("node-1", node)
    await (await _store(bus, ENIS)).create("eni-abc", eni)
    endpoints = await _store(bus, ENDPOINTS)
    await endpoints.create(endpoint_key("node-1", endpoint.container_id, "eth0"), endpoint)
    await (await _store(bus, ROUTES)).create(cidr_key(route.destination), route)
    pool = NodePool(node="node-1", allocated={"10.0.0.6": "node-1.c0ffee1234567890abcdef.eth0"},
                    demand=PoolDemand(target_ips=12, used=1, pending=2, free=0))
    await (await _store(bus, POOLS)).create("node-1", pool)
    provision = EniProvision(node="node-1", instance_id="i-node1", max_enis=4, ips_per_eni=8, creating_eni=True)
    await (await _store(bus, PROVISION)).create("node-1", provision)


async def test_status_shows_the_records_written_to_the_buckets(bus: Bus) -> None:
    await _write_records(bus)

    data = await status_data(bus)

    assert [n["name"] for n in data["nodes"]] == ["node-1"]
    assert data["nodes"][0]["key"] == "node-1"
    assert [e["eni_id"] for e in data["enis"]] == ["eni-abc"]
    assert data["endpoints"][0]["pod"] == "web-0"
    assert data["endpoints"][0]["key"] == "node-1.c0ffee1234567890abcdef.eth0"
    assert data["routes"][0]["destination"] == "172.16.3.0/24"
    assert data["pools"] == [{
        "node": "node-1", "mode": "vpc-eni", "used": 1, "free": 0, "pending": 2, "cooling": 0, "releasing": 0,
        "target": 12, "attachable_ips": 0, "free_enis": 0, "exclusive_used": 0, "exclusive_target": 0,
        "max_enis": 4, "ips_per_eni": 8, "provisioning": "creating ENI",
        "enis": [{"eni_id": "eni-abc", "state": "inuse", "subnet_id": "sbn-1", "use": "secondary-ips",
                  "primary_ip": "10.0.0.5", "held_by": None, "ips": ["10.0.0.6"]}],
    }]
    json.dumps(data)


async def test_rendered_status_names_the_node_and_its_eni(bus: Bus) -> None:
    await _write_records(bus)
    console = Console(record=True, width=200)

    render_status(await status_data(bus), console)

    text = console.export_text()
    for expected in ("node-1", "eni-abc", "default/web-0", "c0ffee123456", "10.0.0.6", "172.16.3.0/24",
                     "5/2"):
        assert expected in text
    assert "(none)" in text  # the Leaders table is empty


async def test_status_shows_the_fixed_ips_held_and_reserved_with_when_they_go(bus: Bus) -> None:
    from datetime import UTC, datetime

    from schemas.records import FixedIp, ReleaseStrategy
    from schemas.subjects import FIXED_IPS

    store = await _store(bus, FIXED_IPS)
    held = FixedIp(namespace="team-a", name="db-0", ip="10.0.0.7", subnet_id="sbn-1", subnet_cidr="10.0.0.0/24",
                   node="node-1", eni_id="eni-abc", endpoint="node-1.c1.eth0", ttl_s=604800)
    idle = FixedIp(namespace="team-a", name="db-1", ip="10.0.0.8", subnet_id="sbn-1", subnet_cidr="10.0.0.0/24",
                   node="node-1", eni_id="eni-abc", ttl_s=3600, idle_since=datetime(2026, 1, 1, tzinfo=UTC))
    never = idle.model_copy(update={"name": "db-2", "ip": "10.0.0.9", "ttl_s": None,
                                    "release_strategy": ReleaseStrategy.NEVER})
    for r in (held, idle, never):
        await store.create(f"{r.namespace}.{r.name}", r)
    console = Console(record=True, width=200)

    data = await status_data(bus)
    render_status(data, console)

    assert [r["name"] for r in data["fixed_ips"]] == ["db-0", "db-1", "db-2"]
    lines = {line.split()[1]: line for line in console.export_text().splitlines() if "team-a/db-" in line}
    assert "in use" in lines["team-a/db-0"] and "TTL 604800s" in lines["team-a/db-0"]
    assert "reserved" in lines["team-a/db-1"] and "2026-01-01T01:00:00Z" in lines["team-a/db-1"]
    assert "Never" in lines["team-a/db-2"]


def test_rendering_an_empty_status_prints_empty_tables() -> None:
    console = Console(record=True, width=200)

    render_status({}, console)

    text = console.export_text()
    assert "Nodes" in text
    assert "Leaders" in text
    assert "(none)" in text


# ------------------------------------------------------------------------------------------------------------
# events


async def _publish_three(bus: Bus) -> None:
    events = EventPublisher(bus, source="test")
    await events.publish(EventKind.NODE, "registered", node="node-1", message="node-1 joined")
    await events.publish(EventKind.ENI, "attached", node="node-1", object="eni-abc",
                         message="eni-abc attached")
    await events.publish(EventKind.ENDPOINT, "failed", node="node-1", reason=ErrorReason.IP_POOL_EXHAUSTED,
                         object="node-1.c1.eth0", message="no IP left")


async def test_tailing_without_follow_prints_every_stored_event_and_stops(bus: Bus) -> None:
    await _publish_three(bus)
    lines: list[str] = []

    count = await asyncio.wait_for(tail_events(bus, follow=False, out=lines.append), 5)

    assert count == 3
    assert len(lines) == 3
    assert "cce.events.node.node-1.registered" in lines[0]
    assert "Normal" in lines[0]
    assert "node-1 joined" in lines[0]
    assert "cce.events.eni.node-1.attached" in lines[1]
    assert "eni-abc" in lines[1]
    assert "Warning IPPoolExhausted node-1.c1.eth0 no IP left" in lines[2]


async def test_tailing_an_empty_stream_returns_at_once(bus: Bus) -> None:
    lines: list[str] = []

    count = await asyncio.wait_for(tail_events(bus, follow=False, out=lines.append), 0.5)

    assert count == 0
    assert lines == []


async def test_a_subject_filter_selects_only_matching_events(bus: Bus) -> None:
    await _publish_three(bus)
    lines: list[str] = []

    count = await tail_events(bus, follow=False, subject_filter="cce.events.eni.>", out=lines.append)

    assert count == 1
    assert "cce.events.eni.node-1.attached" in lines[0]


async def test_a_filter_matching_nothing_returns_at_once(bus: Bus) -> None:
    await _publish_three(bus)

    count = await asyncio.wait_for(
        tail_events(bus, follow=False, subject_filter="cce.events.route.>", out=lambda _: None), 0.5)

    assert count == 0


async def test_last_prints_only_the_newest_events(bus: Bus) -> None:
    await _publish_three(bus)
    lines: list[str] = []

    count = await tail_events(bus, follow=False, last=1, out=lines.append)

    assert count == 1
    assert "cce.events.endpoint.node-1.failed" in lines[0]


async def test_last_under_a_filter_counts_only_matching_events(bus: Bus) -> None:
    await _publish_three(bus)
    await EventPublisher(bus, source="test").publish(EventKind.NODE, "ready", node="node-1")
    lines: list[str] = []

    count = await tail_events(bus, follow=False, subject_filter="cce.events.node.>", last=1, out=lines.append)

    assert count == 1
    assert "cce.events.node.node-1.ready" in lines[0]


async def test_json_output_is_the_raw_event_payload(bus: Bus) -> None:
    await _publish_three(bus)
    lines: list[str] = []

    await tail_events(bus, follow=False, as_json=True, out=lines.append)

    events = [Event.model_validate_json(line) for line in lines]
    assert [e.what for e in events] == ["registered", "attached", "failed"]


async def test_an_undecodable_event_is_printed_raw(bus: Bus) -> None:
    await _publish_three(bus)
    await bus.js.publish("cce.events.node.x.bad", b"\xffnot json at all")
    lines: list[str] = []

    count = await tail_events(bus, follow=False, out=lines.append)

    assert count == 4
    assert "cce.events.node.x.bad" in lines[3]
    assert "not json at all" in lines[3]


async def test_following_prints_events_published_after_the_start(bus: Bus) -> None:
    events = EventPublisher(bus, source="test")
    await events.publish(EventKind.NODE, "registered", node="node-1")
    lines = Lines()
    task = asyncio.create_task(tail_events(bus, follow=True, out=lines.add))
    await lines.wait_for(1)

    await events.publish(EventKind.ROUTE, "programmed", node="node-1", object="172.16.3.0_24")
    await lines.wait_for(2)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "cce.events.route.node-1.programmed" in lines[1]


async def test_following_an_empty_stream_stops_when_idle(bus: Bus) -> None:
    lines: list[str] = []
    task = asyncio.create_task(tail_events(bus, follow=True, out=lines.append, idle_exit_s=1.0))
    await asyncio.sleep(0.2)

    await EventPublisher(bus, source="test").publish(EventKind.NODE, "registered", node="node-2")

    assert await asyncio.wait_for(task, 5) == 1
    assert "cce.events.node.node-2.registered" in lines[0]


async def test_tailing_without_an_event_stream_says_so(bus: Bus) -> None:
    await bus.js.delete_stream(EVENTS_STREAM)
    lines: list[str] = []

    count = await tail_events(bus, follow=False, out=lines.append)

    assert count == 0
    assert len(lines) == 1
    assert EVENTS_STREAM in lines[0]


# ------------------------------------------------------------------------------------------------------------
# services


class EchoRequest(Contract):
    text: str


class EchoReply(Contract):
    text: str


ECHO = RequestSubject("echo", "cce.test.v1.echo", EchoRequest, EchoReply, "testsvc", "echo, for tests")


async def _echo(request: EchoRequest) -> EchoReply:
    return EchoReply(text=request.text)


async def test_services_lists_a_running_chassis_service_with_its_stats(
    bus: Bus, settings: ChassisSettings
) -> None:
    proc = ServiceProcess("testsvc", settings, description="a test service")
    await proc.start()
    try:
        await proc.rpc.add(ECHO, _echo)
        reply = await call(bus, ECHO, EchoRequest(text="hi"), node="node-1")
        assert reply.text == "hi"

        services = await list_services(bus)
    finally:
        await proc.shutdown()

    [svc] = [s for s in services if s["name"] == "testsvc"]
    assert svc["description"] == "a test service"
    assert svc["version"]
    assert svc["metadata"]["http"].startswith("http://")
    [endpoint] = svc["endpoints"]
    assert endpoint["name"] == "echo"
    assert endpoint["subject"] == "cce.test.v1.echo.*"
    assert endpoint["queue_group"] == "testsvc"
    assert endpoint["num_requests"] >= 1
    assert endpoint["num_errors"] == 0
    assert endpoint["data"] == {"in_flight": 0, "errors_by_reason": {}}

    console = Console(record=True, width=200)
    render_services(services, console)
    text = console.export_text()
    assert "testsvc" in text
    assert "cce.test.v1.echo.*" in text


async def test_no_services_are_listed_when_none_runs(bus: Bus) -> None:
    assert await list_services(bus, timeout=0.2) == []

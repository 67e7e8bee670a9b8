"""Integration tier: typed request/reply through the chassis against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.errors import CceError, ErrorReason, ErrorReply
from tests.echo import ECHO, EchoReply, EchoRequest

pytestmark = pytest.mark.integration


async def echo_handler(req: EchoRequest) -> EchoReply:
    if req.delay_s:
        await asyncio.sleep(req.delay_s)
    if req.text == "boom":
        raise RuntimeError("unexpected")
    if req.text == "full":
        raise CceError(ErrorReason.IP_POOL_EXHAUSTED, "no free IP on node", node=req.node)
    return EchoReply(text=req.text * req.count, served_by="echo")


@pytest.fixture
async def echo_service(settings: ChassisSettings) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess("echo", settings)
    await proc.start()
    await proc.rpc.add(ECHO, echo_handler)
    yield proc
    await proc.shutdown()


async def test_typed_request_gets_typed_reply(echo_service: ServiceProcess, bus: Bus) -> None:
    reply = await call(bus, ECHO, EchoRequest(node="node-1", text="ab", count=3))
    assert isinstance(reply, EchoReply)
    assert reply.text == "ababab"


async def test_node_names_with_dots_travel_as_one_subject_token(echo_service: ServiceProcess,
                                                                 bus: Bus) -> None:
    reply = await call(bus, ECHO, EchoRequest(node="ip-10-0-0-1.cluster.local", text="x"))
    assert reply.text == "x"


async def test_invalid_payload_gets_invalid_request_naming_the_field(echo_service: ServiceProcess,
                                                                     bus: Bus) -> None:
    msg = await bus.nc.request(ECHO.for_node("node-1"), b'{"node": "node-1", "text": "a", "count": 99}',
                               timeout=2)
    err = ErrorReply.model_validate_json(msg.data)
    assert err.reason is ErrorReason.INVALID_REQUEST
    assert "count" in err.message
    assert err.details["fields"] == ["count"]
    assert msg.headers and msg.headers["Nats-Service-Error-Code"] == "400"
    # the service keeps serving
    assert (await call(bus, ECHO, EchoRequest(node="node-1", text="ok"))).text == "ok"


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[1,2]", b'{"node": 5}', b"\xff\xfe"])
async def test_garbage_never_stops_the_service(echo_service: ServiceProcess, bus: Bus,
                                               garbage: bytes) -> None:
    msg = await bus.nc.request(ECHO.for_node("node-1"), garbage, timeout=2)
    assert ErrorReply.model_validate_json(msg.data).reason is ErrorReason.INVALID_REQUEST
    assert (await call(bus, ECHO, EchoRequest(node="node-1", text="still"))).text == "still"


async def test_node_in_payload_must_match_the_subject(echo_service: ServiceProcess, bus: Bus) -> None:
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-2", text="x"), subject=ECHO.for_node("node-1"))
    assert info.value.reason is ErrorReason.INVALID_REQUEST
    assert "node" in info.value.details["fields"]


async def test_coded_errors_reach_the_caller_with_reason_and_details(echo_service: ServiceProcess,
                                                                     bus: Bus) -> None:
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-1", text="full"))
    assert info.value.reason is ErrorReason.IP_POOL_EXHAUSTED
    assert info.value.details == {"node": "node-1"}
    assert info.value.retryable


async def test_unexpected_exception_becomes_internal_and_service_survives(echo_service: ServiceProcess,
                                                                          bus: Bus) -> None:
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-1", text="boom"))
    assert info.value.reason is ErrorReason.INTERNAL
    assert (await call(bus, ECHO, EchoRequest(node="node-1", text="after"))).text == "after"


async def test_no_service_is_service_unavailable(bus: Bus) -> None:
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-1", text="x"), timeout=1)
    assert info.value.reason is ErrorReason.SERVICE_UNAVAILABLE


async def test_slow_reply_is_a_timeout_not_a_hang(echo_service: ServiceProcess, bus: Bus) -> None:
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-1", text="x", delay_s=2), timeout=0.3)
    assert info.value.reason is ErrorReason.TIMEOUT


async def test_requests_are_served_concurrently(echo_service: ServiceProcess, bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await asyncio.gather(
        *(call(bus, ECHO, EchoRequest(node="node-1", text=str(i), delay_s=0.5)) for i in range(20))
    )
    assert [r.text for r in replies] == [str(i) for i in range(20)]
    assert loop.time() - started < 5  # 20 x 0.5 s one after another would take 10 s


async def test_shutdown_finishes_in_flight_requests(settings: ChassisSettings, bus: Bus) -> None:
    proc = ServiceProcess("echo", settings)
    await proc.start()
    await proc.rpc.add(ECHO, echo_handler)
    pending = asyncio.create_task(call(bus, ECHO, EchoRequest(node="node-1", text="late", delay_s=0.5)))
    await asyncio.sleep(0.1)
    await proc.shutdown()
    assert (await pending).text == "late"
    with pytest.raises(CceError) as info:
        await call(bus, ECHO, EchoRequest(node="node-1", text="x"), timeout=0.5)
    assert info.value.reason is ErrorReason.SERVICE_UNAVAILABLE


async def test_micro_service_answers_nats_tooling(echo_service: ServiceProcess, bus: Bus) -> None:
    await call(bus, ECHO, EchoRequest(node="node-1", text="x"))
    import json

    info = json.loads((await bus.nc.request("$SRV.INFO.echo", b"", timeout=1)).data)
    assert info["endpoints"][0]["subject"] == "cce.test.v1.echo.*"
    assert info["endpoints"][0]["queue_group"] == "echo"
    stats = json.loads((await bus.nc.request("$SRV.STATS.echo", b"", timeout=1)).data)
    assert stats["endpoints"][0]["num_requests"] >= 1


async def test_a_served_endpoint_is_on_the_wire_before_add_returns(settings: ChassisSettings) -> None:
    """The server reads what a connection writes in order: add() returns only after the endpoint's SUB went out
    ahead of the ping it waits on (nats-py's own flush() writes its PING before a SUB still queued, so a caller on
    another connection could be told no one serves it: seen once in CI under load)."""
    proc = ServiceProcess("echo", settings)
    await proc.start()
    try:
        transport = proc.bus.nc._transport  # the socket writes, recorded in order
        wrote: list[bytes] = []
        write, writelines = transport.write, transport.writelines

        def record(data: bytes) -> None:
            wrote.append(bytes(data))
            write(data)

        def record_lines(lines: list[bytes]) -> None:
            wrote.extend(bytes(line) for line in lines)
            writelines(lines)

        transport.write, transport.writelines = record, record_lines
        await proc.rpc.add(ECHO, echo_handler)
        sub = next(i for i, data in enumerate(wrote) if data.startswith(f"SUB {ECHO.pattern} ".encode()))
        assert any(data == b"PING\r\n" for data in wrote[sub + 1:]), wrote
    finally:
        await proc.shutdown()

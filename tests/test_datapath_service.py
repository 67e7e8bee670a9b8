"""node_datapath on the bus (privileged + integration tier: root, ping, a real nats-server). The records come from
the real buckets, requests go through `cce.datapath.v1.*.<node>`; once in-process (ServiceProcess + build, as the
composition root wires it) and once as `python -m services.node_datapath` subprocesses that are restarted while
pods run. The kernel world (router, node, pods) is the one of test_datapath_kernel.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import Store
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.errors import CceError, ErrorReason
from schemas.events import Event, EventKind
from schemas.messages import CheckReply, CheckRequest, SetupReply, TeardownReply, TeardownRequest
from schemas.records import CceEndpoint, Eni, EniLinkState, EniOnNode, host_veth_name
from schemas.subjects import (
    DATAPATH_CHECK,
    DATAPATH_SETUP,
    DATAPATH_TEARDOWN,
    ENDPOINTS,
    ENI_ON_NODE,
    ENIS,
    EVENTS_WILDCARD,
    NODE_DATAPATH,
    endpoint_key,
    eni_on_node_key,
)
from services.node_datapath.main import build
from services.node_datapath.settings import DatapathSettings
from tests.cluster import until
from tests.privileged import NEEDS_ROOT
from tests.test_datapath_kernel import (
    ENI_ID,
    GATEWAY,
    NODE,
    POD_IPS,
    World,
    endpoint,
    eni_record,
    ip_json,
    new_world,
    node_objects,
    ping,
    run,
    spec,
)

pytestmark = [NEEDS_ROOT]


async def put_records(bus: Bus, *endpoints: CceEndpoint, eni: Eni | None = None) -> Store[CceEndpoint]:
    enis: Store[Eni] = Store(await bus.bucket(ENIS), Eni, ENIS.name)
    await enis.mutate(ENI_ID, lambda _: eni or eni_record())
    eps: Store[CceEndpoint] = Store(await bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)
    for ep in endpoints:
        await eps.mutate(endpoint_key(ep.node, ep.container_id, ep.ifname), lambda _, ep=ep: ep)  # type: ignore[misc]
    return eps


async def eni_on_node(bus: Bus) -> EniOnNode | None:
    item = await Store(await bus.bucket(ENI_ON_NODE), EniOnNode, ENI_ON_NODE.name).get(eni_on_node_key(NODE, ENI_ID))
    return item.value if item else None


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with new_world() as w:
        yield w


@pytest.fixture
async def events(bus: Bus) -> AsyncIterator[list[Event]]:
    seen: list[Event] = []

    async def on_event(msg: Any) -> None:
        seen.append(Event.model_validate_json(msg.data))

    sub = await bus.nc.subscribe(EVENTS_WILDCARD, cb=on_event)
    yield seen
    await sub.unsubscribe()


async def test_pods_through_the_bus_with_an_in_process_service(
    world: World, bus: Bus, settings: ChassisSettings, events: list[Event]
) -> None:
    await world.fabric.apply(spec())
    eps = [endpoint("c1", POD_IPS[0]), endpoint("c2", POD_IPS[1])]
    await put_records(bus, *eps)
    dsettings = DatapathSettings(**{**settings.model_dump(), "node": NODE, "datapath_netns": world.node_ns,
                                    "datapath_gc_grace_s": 1.0, "datapath_debounce_s": 0.05})
    proc = ServiceProcess(NODE_DATAPATH, dsettings)
    await proc.start()
    try:
        datapath = await build(proc, dsettings)
        proc.ready = True
        record = await eni_on_node(bus)
        assert record is not None and (record.state, record.link_name, record.node) == (
            EniLinkState.READY, "cce-eni-1", NODE)
        replies: list[SetupReply] = [await call(bus, DATAPATH_SETUP, world.setup_req(ep, i))
                                     for i, ep in enumerate(eps)]
        assert replies[0].host_veth == host_veth_name("default", "pod-c1", "eth0")
        assert await ping(world.pods[0], POD_IPS[1]) and await ping(world.pods[1], GATEWAY)

        check = CheckRequest(node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=eps[0])
        assert (await call(bus, DATAPATH_CHECK, check)).ok
        await run("ip", "-n", world.pods[0], "route", "del", "default")
        failed: CheckReply = await call(bus, DATAPATH_CHECK, check)
        assert not failed.ok and failed.problems == [
            f"pod route 0.0.0.0/0 via {GATEWAY} dev eth0 missing in main"]

        # a request for another node's endpoint, or a bad netns, is a coded error reply, not a crash
        bad = world.setup_req(eps[0], 0).model_copy(update={"netns": "/run/netns/nope-nope"})
        with pytest.raises(CceError, match="does not exist") as info:
            await call(bus, DATAPATH_SETUP, bad)
        assert info.value.reason is ErrorReason.INVALID_REQUEST

        down: TeardownReply = await call(bus, DATAPATH_TEARDOWN, TeardownRequest(
            node=NODE, container_id="c2", netns=world.pod_ns(1), endpoint=eps[1]))
        assert len(down.removed) == 3
        await datapath.reaped()  # the veth pair goes right after the reply, off the request path
        assert await node_objects(world.node_ns, POD_IPS[1], replies[1].host_veth) == []
        unknown: TeardownReply = await call(bus, DATAPATH_TEARDOWN, TeardownRequest(node=NODE, container_id="zz"))
        assert unknown.removed == []
        assert any(e.kind is EventKind.ENI and e.what == "ready" and e.object == ENI_ID for e in events)
    finally:
        await proc.shutdown()


# ------------------------------------------------------------------------------------------ real subprocesses


class Daemon:
    def __init__(self, nats_url: str, node_ns: str, logs: Path) -> None:
        self.env = {**os.environ, "CCE_NATS_URL": nats_url, "CCE_NODE": NODE, "CCE_DATAPATH_NETNS": node_ns,
                    "CCE_DATAPATH_GC_GRACE_S": "1", "CCE_DATAPATH_RESYNC_PERIOD_S": "0.5",
                    "CCE_DATAPATH_DEBOUNCE_S": "0.05", "CCE_HTTP_PORT": "0", "CCE_LOG_LEVEL": "info"}
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.logs, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.node_datapath"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def serving(bus: Bus, w: World, timeout: float = 20) -> None:
    """Until the daemon answers a check on our node's subject."""
    req = CheckRequest(node=NODE, container_id="probe", netns=w.pod_ns(2), endpoint=endpoint("probe", POD_IPS[2]))

    async def answers() -> bool:
        try:
            await call(bus, DATAPATH_CHECK, req, timeout=1)
        except CceError as err:
            return err.reason is not ErrorReason.SERVICE_UNAVAILABLE
        return True

    await until(answers, timeout, "node_datapath to serve", every=0.1)


async def test_restarted_daemon_keeps_pods_and_resync_cleans_a_pod_whose_record_is_gone(
    world: World, bus: Bus, clean_nats: str, tmp_path: Path
) -> None:
    await world.fabric.apply(spec())
    keep, drop = endpoint("c1", POD_IPS[0]), endpoint("c2", POD_IPS[1])
    eps = await put_records(bus, keep, drop)
    daemon = Daemon(clean_nats, world.node_ns, tmp_path / "datapath.log")
    daemon.start()
    try:
        await serving(bus, world)
        for i, ep in enumerate((keep, drop)):
            await call(bus, DATAPATH_SETUP, world.setup_req(ep, i), timeout=10)
        assert await ping(world.pods[0], POD_IPS[1])

        daemon.stop()  # SIGTERM while pods run, then a new process
        assert await ping(world.pods[0], POD_IPS[1])
        daemon.start()
        await serving(bus, world)
        await asyncio.sleep(1.5)  # several resync passes and more than the grace: nothing of a live pod goes
        assert await ping(world.pods[0], POD_IPS[1]) and await ping(world.pods[1], GATEWAY)
        again: CheckReply = await call(bus, DATAPATH_CHECK, CheckRequest(
            node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=keep))
        assert again.ok, again.problems

        await eps.delete(endpoint_key(NODE, "c2", "eth0"))  # the pod's record is gone: resync cleans the node
        veth = host_veth_name("default", "pod-c2", "eth0")

        async def cleaned() -> bool:
            return await node_objects(world.node_ns, POD_IPS[1], veth) == []

        await until(cleaned, 15, "the stale pod to be removed", every=0.2)
        assert [x["ifname"] for x in await ip_json(world.pods[1], "link", "show")] == ["lo"]
        assert await ping(world.pods[0], GATEWAY)
    finally:
        daemon.stop()
    log = (tmp_path / "datapath.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]

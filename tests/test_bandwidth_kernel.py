"""Bandwidth limits against a real kernel (privileged tier): node_datapath shapes a pod's traffic with tc as its
endpoint says (`kubernetes.io/ingress-bandwidth` into the pod: a tbf on the host veth;
`kubernetes.io/egress-bandwidth` out of it: the veth's ingress redirected to an ifb with a tbf), CHECK sees what is
missing, resync repairs it, DEL and resync remove it; and a transfer between two pods takes at least the time the
limit implies. The world (the simulator's fabric, a node namespace, pod namespaces) is test_datapath_kernel's; the
kernel is read with `tc -j`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.messages import CheckRequest, TeardownRequest
from schemas.records import Bandwidth, CceEndpoint, host_veth_name
from services.cni_gateway.bandwidth import limits
from services.node_datapath.shaping import ifb_name
from tests.privileged import NEEDS_PING_AND_IP
from tests.test_datapath_kernel import NODE, POD_IPS, World, endpoint, ip_json, new_world, run, spec

pytestmark = NEEDS_PING_AND_IP


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with new_world() as w:
        yield w

MBIT = 1_000_000


def limited(cid: str, ip: str, bandwidth: Bandwidth | None) -> CceEndpoint:
    return endpoint(cid, ip).model_copy(update={"bandwidth": bandwidth})


async def tc_json(ns: str, *args: str) -> list[dict[str, Any]]:
    _, out = await run("tc", "-n", ns, "-j", *args)
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


async def qdiscs(ns: str, dev: str) -> dict[str, dict[str, Any]]:
    return {q["kind"]: q for q in await tc_json(ns, "qdisc", "show", "dev", dev)}


async def links(ns: str) -> set[str]:
    return {x["ifname"] for x in await ip_json(ns, "link", "show")}


async def test_the_limits_become_tc_on_the_host_veth_and_an_ifb_and_go_with_the_pod(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    await dp.resync()
    bw = limits(ingress_bps=10 * MBIT, egress_bps=20 * MBIT)
    assert bw is not None
    ep = limited("c1", POD_IPS[0], bw)
    world.records.put(ep)
    await dp.setup(world.setup_req(ep, 0))
    ns, veth = world.node_ns, host_veth_name("default", "pod-c1", "eth0")
    ifb = ifb_name(veth)
    root = (await qdiscs(ns, veth))["tbf"]
    assert root["options"]["rate"] == 10 * MBIT // 8 and root["handle"] == "1:"
    assert "ingress" in await qdiscs(ns, veth)
    assert (await qdiscs(ns, ifb))["tbf"]["options"]["rate"] == 20 * MBIT // 8
    filters = await tc_json(ns, "filter", "show", "dev", veth, "ingress")
    action = next(a for f in filters for a in f.get("options", {}).get("actions", []))
    assert (action["kind"], action["to_dev"], action["mirred_action"]) == ("mirred", ifb, "redirect")
    assert ifb in await links(ns)
    check = CheckRequest(node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=ep)
    assert (await dp.check(check)).ok

    # someone removes the shaping by hand: CHECK says so, resync puts it back
    await run("tc", "-n", ns, "qdisc", "del", "dev", veth, "root")
    await run("tc", "-n", ns, "qdisc", "del", "dev", veth, "ingress")
    result = await dp.check(check)
    assert not result.ok and any("root qdisc" in p for p in result.problems) and \
        any("not redirected" in p for p in result.problems)
    changes = await dp.resync()
    assert any("root tbf" in c for c in changes) and any("redirect" in c for c in changes)
    assert (await dp.check(check)).ok
    assert await dp.resync() == []  # converged

    reply = await dp.teardown(TeardownRequest(node=NODE, container_id="c1", netns=world.pod_ns(0), endpoint=ep))
    assert any(r.startswith(f"ifb {ifb}") for r in reply.removed)
    assert ifb not in await links(ns)
    await dp.reaped()  # the veth goes right after the reply
    assert veth not in await links(ns)


async def test_resync_collects_the_ifb_of_a_pod_that_is_gone(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath(gc_grace_s=0.0)
    await dp.resync()
    ep = limited("c1", POD_IPS[0], limits(ingress_bps=None, egress_bps=5 * MBIT))
    world.records.put(ep)
    await dp.setup(world.setup_req(ep, 0))
    ifb = ifb_name(host_veth_name("default", "pod-c1", "eth0"))
    assert ifb in await links(world.node_ns)
    world.records.eps.clear()  # released while the node was not looking
    dp.recent.clear()
    await dp.resync()
    await dp.resync()
    assert ifb not in await links(world.node_ns)


# ---- a transfer between two pods ---------------------------------------------------------------------------------

SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 5201)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); got = 0; first = None
while True:
    data = c.recv(1 << 16)
    if not data:
        break
    first = first or time.perf_counter(); got += len(data)
print(got, time.perf_counter() - first, flush=True)
"""
SEND = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5201)); c.sendall(b"x" * int(sys.argv[2])); c.close()
"""


async def transfer(world: World, src: int, dst: int, size: int) -> float:
    """Seconds the receiving pod took from the first byte to the last of `size` bytes sent by the other pod."""
    sink = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={world.pod_ns(dst)}", sys.executable, "-c", SINK, stdout=asyncio.subprocess.PIPE)
    try:
        assert sink.stdout is not None
        assert (await asyncio.wait_for(sink.stdout.readline(), 10)).strip() == b"ready"
        await run("nsenter", f"--net={world.pod_ns(src)}", sys.executable, "-c", SEND, POD_IPS[dst], str(size))
        got, seconds = (await asyncio.wait_for(sink.stdout.readline(), 60)).split()
        assert int(got) == size
        return float(seconds)
    finally:
        if sink.returncode is None:
            sink.kill()
        await sink.wait()


async def test_a_transfer_between_two_pods_takes_the_time_the_limits_imply(world: World) -> None:
    await world.fabric.apply(spec())
    dp = world.datapath()
    await dp.resync()
    egress, ingress = limits(ingress_bps=None, egress_bps=16 * MBIT), limits(ingress_bps=8 * MBIT, egress_bps=None)
    assert egress is not None and ingress is not None
    eps = [limited("c0", POD_IPS[0], egress), limited("c1", POD_IPS[1], ingress), limited("c2", POD_IPS[2], None)]
    for i, ep in enumerate(eps):
        world.records.put(ep)
        await dp.setup(world.setup_req(ep, i))
    size = 4_000_000
    free = await transfer(world, 2, 0, size)  # into pod 0: no ingress limit there
    out_of_0 = await transfer(world, 0, 2, size)  # pod 0's egress: 16 Mbit/s
    into_1 = await transfer(world, 2, 1, size)  # pod 1's ingress: 8 Mbit/s
    want_out = (size - (egress.egress_burst_bytes or 0)) / (16 * MBIT / 8)
    want_in = (size - (ingress.ingress_burst_bytes or 0)) / (8 * MBIT / 8)
    print(f"\n{size / 1e6:g} MB: unlimited {free:.3f}s; egress 16 Mbit/s {out_of_0:.3f}s (>= {want_out:.3f}s); "
          f"ingress 8 Mbit/s {into_1:.3f}s (>= {want_in:.3f}s)")
    assert out_of_0 >= want_out * 0.95 and into_1 >= want_in * 0.95
    assert out_of_0 < want_out * 3 and into_1 < want_in * 3  # limited, not stalled
    assert free < want_out / 2  # what slows them is the limit
    started = time.perf_counter()
    for i, ep in enumerate(eps):
        await dp.teardown(TeardownRequest(node=NODE, container_id=ep.container_id, netns=world.pod_ns(i),
                                          endpoint=ep))
    assert not {n for n in await links(world.node_ns) if n.startswith("cceb")}
    assert time.perf_counter() - started < 10

"""Fuzzing (integration tier): every request subject of the bus against the real services as processes (ipam,
eni_manager, route_manager on a real nats-server and the simulated VPC): garbage bytes, JSON of the wrong shape and
types, unknown fields, huge bodies, a body naming another node than its subject, hostile subject tokens. Each one
gets an answer in bounded time, either a valid reply or a coded error that is not `Internal`; no service dies; a
refused request changes no endpoint or node record. A few hundred inputs; CCE_FUZZ_LONG=1 runs 10,000."""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chassis.bus import Bus
from chassis.rpc import REASON_HEADER, call
from schemas.base import subject_token
from schemas.errors import ErrorReason
from schemas.messages import ReleaseRequest
from schemas.subjects import (
    ENDPOINTS,
    ENI_ASSIGN,
    IPAM_ALLOCATE,
    IPAM_CONFIRM,
    IPAM_RELEASE,
    NODE_REGISTER,
    NODE_REMOVE,
    NODES,
    ROUTE_EXPAND,
    RequestSubject,
)
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.cluster import Cluster, eni_control_plane
from tests.fuzzing import COUNTS, FUZZ_TIMEOUT, corpus, fuzz_settings, json_values, mutated

pytestmark = pytest.mark.integration
SUBJECTS = {s.name: s for s in (NODE_REGISTER, NODE_REMOVE, IPAM_ALLOCATE, IPAM_CONFIRM, IPAM_RELEASE, ROUTE_EXPAND,
                                ENI_ASSIGN)}
ACCEPTED: deque[str] = deque(maxlen=400)  # the last accepted requests, named when a refused one seems to change things
TOKENS = st.one_of(st.sampled_from(["node-1", "node-2", "node_1", "-", "x" * 200]),
                   st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=30))


@pytest.fixture
async def plane(bus: Bus, clean_nats: str, vpc_sim: SimServer, tmp_path: Path,
                sim_admin: SimAdmin) -> AsyncIterator[tuple[Cluster, dict[str, dict[str, Any]]]]:
    async with eni_control_plane(bus, vpc_sim, clean_nats, tmp_path) as c:
        c.start("route_manager", "rm-1")
        await c.wait_started("rm-1")
        inst = await sim_admin.create_instance(name="node-1", cpus=8, memory_mib=32768)
        await c.register("node-1", inst)
        subnet = (await sim_admin.info())["subnets"][0]["subnetId"]
        yield c, bases(inst, subnet)


def bases(inst: dict[str, Any], subnet: str) -> dict[str, dict[str, Any]]:
    """A valid body per subject, for node-1 (removal: a node that is not there)."""
    return {
        "register": {"node": "node-1", "instance_id": inst["id"], "instance_type": "BCC", "zone": inst["zoneName"],
                     "cpus": 8, "memory_mib": 32768},
        "remove": {"node": "node-gone"},
        "allocate": {"node": "node-1", "container_id": "fuzz0", "ifname": "eth0", "wait_s": 0,
                     "pod": {"namespace": "default", "name": "fuzz"}},
        "confirm": {"node": "node-1", "container_id": "fuzz0", "ifname": "eth0"},
        "release": {"node": "node-1", "container_id": "fuzz0", "ifname": "eth0"},
        "expand": {"node": "node-1", "request_id": "r1", "free_ips": 0},
        "assign": {"node": "node-1", "ip": "10.0.0.77", "subnet_id": subnet, "request_id": "r1"},
    }


REMOVING: set[str] = set()  # node tokens whose accepted removal finishes later: their records may go at any time


async def records(c: Cluster) -> tuple[list[str], list[str]]:
    def settled(key: str) -> bool:
        return key.split(".", 1)[0] not in REMOVING

    return (sorted(filter(settled, await (await c.store(ENDPOINTS)).list())),
            sorted(filter(settled, await (await c.store(NODES)).list())))


async def bus_case(c: Cluster, spec: RequestSubject, token: str, body: bytes) -> None:
    """One request; the answer, the services' health and (when refused) the records are checked."""
    if len(body) > c.bus.nc.max_payload:
        body = body[: c.bus.nc.max_payload - 64]  # the server takes nothing larger: the cut body is the input
    before = await records(c)
    subject = f"{spec.prefix}.{token}"
    what = f"{subject} <- {body[:300]!r}"
    try:
        msg = await c.bus.nc.request(subject, body, timeout=15)
    except nats.errors.NoRespondersError:
        raise AssertionError(f"no service answered {what}") from None
    except nats.errors.TimeoutError:
        raise AssertionError(f"no answer within 15 s: {what}") from None
    COUNTS["bus"] += 1
    dead = [sid for sid, p in c.procs.items() if p.poll() is not None]
    assert not dead, f"{dead} died after {what}"
    headers = msg.headers or {}
    if REASON_HEADER in headers:
        reason = headers[REASON_HEADER]
        assert reason in ErrorReason._value2member_map_, (what, headers)
        assert reason != ErrorReason.INTERNAL.value, f"an Internal error for {what}: {msg.data[:500]!r}"
        assert await records(c) == before, f"a refused request changed the records: {what}; accepted before " \
            f"it: {[a for a in ACCEPTED if '.node.' in a][-6:]}"
        return
    reply = spec.reply.model_validate_json(msg.data)  # an accepted request answers its contract
    ACCEPTED.append(what[:200])
    if spec is NODE_REMOVE:
        REMOVING.add(subject_token(reply.node))  # type: ignore[attr-defined]
    if spec is IPAM_ALLOCATE:  # give the IP back
        ep = reply.endpoint  # type: ignore[attr-defined]
        await call(c.bus, IPAM_RELEASE, ReleaseRequest(node=ep.node, container_id=ep.container_id,
                                                       ifname=ep.ifname), timeout=10)


@FUZZ_TIMEOUT
@given(data=st.data())
@fuzz_settings()
async def test_every_request_subject_answers_hostile_messages_with_a_reply_or_a_coded_error(
        plane: tuple[Cluster, dict[str, dict[str, Any]]], data: st.DataObject) -> None:
    c, base = plane
    name = data.draw(st.sampled_from(sorted(SUBJECTS)))
    token = data.draw(st.one_of(st.just("node-1"), TOKENS))
    kind = data.draw(st.sampled_from(["mutated", "wrong-node", "garbage", "json", "huge", "unknown-fields"]))
    if kind == "mutated":
        body = json.dumps(data.draw(mutated(base[name]))).encode()
    elif kind == "wrong-node":
        body = json.dumps({**base[name], "node": data.draw(st.sampled_from(["node-2", "node-1", "node.1"]))}).encode()
        token = "node-3" if token == "node-1" else token
    elif kind == "garbage":
        body = data.draw(st.binary(max_size=512))
    elif kind == "json":
        body = json.dumps(data.draw(json_values)).encode()
    elif kind == "huge":
        body = json.dumps({**base[name], "pad": "h" * data.draw(st.integers(1 << 10, 900_000))}).encode()
    else:
        body = json.dumps({**base[name], **data.draw(st.dictionaries(st.text(max_size=20), json_values,
                                                                         min_size=1, max_size=4))}).encode()
    await bus_case(c, SUBJECTS[name], token, body)


async def test_the_bus_corpus_of_nasty_cases(plane: tuple[Cluster, dict[str, dict[str, Any]]]) -> None:
    """Every kept case, on one control plane (each names itself when it fails)."""
    c, base = plane
    for case in corpus("bus"):
        if "b64" in case:
            body = base64.b64decode(case["b64"])
        else:
            body = json.dumps({**base[case["subject"]], **case.get("fields", {})}).encode()
        try:
            await bus_case(c, SUBJECTS[case["subject"]], case.get("token", "node-1"), body)
        except AssertionError as err:
            raise AssertionError(f"corpus case {case['why']!r}: {err}") from None

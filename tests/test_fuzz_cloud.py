"""Fuzzing (integration tier): the BCE replies the production cloud adapter sees, made hostile through the
simulator's fault API (`fail_next` with a raw body): broken JSON, JSON of the wrong shape, missing and mistyped
fields, unknown error codes, HTML 5xx pages, empty and huge bodies, on every read and write the adapter makes.
Each call ends, in bounded time, in a result or a coded `CceError`; nothing else escapes the adapter.
A few hundred inputs; CCE_FUZZ_LONG=1 runs 10,000."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.bce import BceSettings, BceVpcApi
from schemas.errors import CceError, ErrorReason
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.server import SimServer
from tests.fuzzing import COUNTS, FUZZ_TIMEOUT, corpus, fuzz_settings, json_values, mutated, nasty_text
from tests.sim_fixtures import WIDE_OPEN

pytestmark = pytest.mark.integration


@dataclass
class World:
    api: BceVpcApi
    admin: SimAdmin
    vpc_id: str
    instance_id: str
    eni_id: str
    subnet_id: str
    route_table: str


@pytest.fixture
async def world(vpc_sim: SimServer, sim_admin: SimAdmin) -> World:
    api = BceVpcApi(BceSettings(endpoint=vpc_sim.url, access_key=vpc_sim.access_key, secret_key=vpc_sim.secret_key,
                                rate_limits=WIDE_OPEN, backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=2,
                                retry_budget_s=2.0))
    info = await sim_admin.info()
    inst = await sim_admin.create_instance(name="node-1", cpus=8, memory_mib=32768)
    subnet = info["subnets"][0]["subnetId"]
    eni_id = await api.create_eni(name="cce-x-node-1-1", subnet_id=subnet, security_group_ids=[])
    await api.add_private_ips(eni_id, count=3)
    return World(api, sim_admin, info["vpcId"], inst["id"], eni_id, subnet, info["routeTableId"])


# adapter call -> the simulator's API name it makes (the first call, for the paginated ones)
Call = Callable[[World], Awaitable[Any]]
CALLS: dict[str, tuple[str, Call]] = {
    "get_eni": ("get_eni", lambda w: w.api.get_eni(w.eni_id)),
    "list_enis": ("list_enis", lambda w: w.api.list_enis(vpc_id=w.vpc_id)),
    "list_instance_enis": ("list_enis", lambda w: w.api.list_enis(vpc_id=w.vpc_id, instance_id=w.instance_id)),
    "create_eni": ("create_eni", lambda w: w.api.create_eni(name="cce-x-node-1-9", subnet_id=w.subnet_id,
                                                            security_group_ids=[])),
    "attach_eni": ("attach_eni", lambda w: w.api.attach_eni(w.eni_id, w.instance_id)),
    "delete_eni": ("delete_eni", lambda w: w.api.delete_eni("eni-none")),
    "add_private_ips": ("batch_add_private_ips", lambda w: w.api.add_private_ips(w.eni_id, count=1)),
    "remove_private_ips": ("batch_delete_private_ips", lambda w: w.api.remove_private_ips(w.eni_id, ["10.9.9.9"])),
    "get_instance": ("get_instance", lambda w: w.api.get_instance(w.instance_id)),
    "add_primary_nic_ips": ("batch_add_instance_ips", lambda w: w.api.add_primary_nic_ips(w.instance_id, count=1)),
    "get_subnet": ("get_subnet", lambda w: w.api.get_subnet(w.subnet_id)),
    "list_subnets": ("list_subnets", lambda w: w.api.list_subnets(vpc_id=w.vpc_id)),
    "get_vpc": ("get_vpc", lambda w: w.api.get_vpc(w.vpc_id)),
    "get_route_table": ("get_route", lambda w: w.api.get_route_table(vpc_id=w.vpc_id)),
    "list_route_rules": ("list_route_rules", lambda w: w.api.list_route_rules(w.route_table)),
    "create_route_rule": ("create_route_rule", lambda w: w.api.create_route_rule(
        route_table_id=w.route_table, destination="172.31.0.0/24", next_hop_instance=w.instance_id,
        description="fuzz")),
}
# the shapes of real replies, to break field by field
SHAPES: list[dict[str, Any]] = [
    {"eniId": "eni-1", "name": "n", "zoneName": "zoneA", "subnetId": "sbn-1", "vpcId": "vpc-1", "status": "inuse",
     "macAddress": "fa:16:3e:00:00:01", "instanceId": "i-1", "description": "",
     "privateIpSet": [{"privateIpAddress": "10.0.0.5", "primary": True}], "securityGroupIds": []},
    {"enis": [{"eniId": "eni-1", "status": "available", "privateIpSet": []}], "isTruncated": False, "nextMarker": ""},
    {"instance": {"id": "i-1", "instanceType": "BCC", "cpuCount": 8, "memoryCapacityInGB": 32, "zoneName": "zoneA",
                  "internalIp": "10.0.0.2", "nicInfo": {"macAddress": "fa:16:3e:00:00:02", "ips": []}}},
    {"subnet": {"subnetId": "sbn-1", "zoneName": "zoneA", "cidr": "10.0.0.0/16", "vpcId": "vpc-1",
                "availableIp": 100}},
    {"subnets": [{"subnetId": "sbn-1", "cidr": "10.0.0.0/16", "availableIp": 5}], "isTruncated": False},
    {"privateIpAddresses": ["10.0.0.9"]},
    {"routeRules": [{"routeRuleId": "rr-1", "destinationAddress": "172.31.0.0/24", "nexthopId": "i-1"}],
     "isTruncated": False},
    {"routeTableId": "rt-1", "vpcId": "vpc-1", "routeRules": []},
    {"vpc": {"vpcId": "vpc-1", "cidr": "10.0.0.0/8"}},
    {"code": "InternalError", "message": "boom", "requestId": "r"},
]
BODIES = st.one_of(
    st.builds(json.dumps, st.sampled_from(SHAPES).flatmap(mutated)),
    st.builds(json.dumps, json_values),
    st.builds(lambda c, m: json.dumps({"code": c, "message": m}), nasty_text, nasty_text),
    nasty_text,
    st.sampled_from(["", "{", "[", "null", "<html><body>502 Bad Gateway</body></html>", '{"code": null}',
                     '{"enis": null}', '{"instance": 5}', '{"privateIpAddresses": "10.0.0.1"}']),
)
STATUSES = st.one_of(st.sampled_from([200, 201, 400, 403, 404, 409, 429, 500, 502, 503, 504]), st.integers(200, 599))


async def cloud_case(w: World, call: str, status: int, body: str, count: int) -> None:
    api, run = CALLS[call]
    body = body[:900_000]  # what the simulator's admin API takes (1 MiB requests)
    await w.admin.clear_faults()
    await w.admin.fail_next(api, count=count, code="Fuzz", status=status, body=body)
    what = f"{call} answered {status} {body[:300]!r} x{count}"
    reason: ErrorReason | None = None
    try:
        await asyncio.wait_for(run(w), 30)
    except CceError as err:
        reason = err.reason
    except TimeoutError:
        raise AssertionError(f"the adapter hung on {what}") from None
    except Exception as err:
        raise AssertionError(f"{type(err).__name__} escaped the adapter on {what}: {err!r}") from None
    finally:
        COUNTS["cloud"] += 1
    assert reason is None or reason in ErrorReason, what


@FUZZ_TIMEOUT
@given(data=st.data())
@fuzz_settings()
async def test_every_cloud_call_ends_in_a_result_or_a_coded_error_whatever_the_cloud_answers(
        world: World, data: st.DataObject) -> None:
    await cloud_case(world, data.draw(st.sampled_from(sorted(CALLS))), data.draw(STATUSES), data.draw(BODIES),
                     data.draw(st.integers(1, 3)))


async def test_the_cloud_corpus_of_nasty_replies(world: World) -> None:
    for case in corpus("cloud"):
        try:
            await cloud_case(world, case["call"], case["status"], case["body"], case.get("count", 1))
        except AssertionError as err:
            raise AssertionError(f"corpus case {case['why']!r}: {err}") from None

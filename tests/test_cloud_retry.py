"""`BceVpcApi` over a stateful fake of the SDK clients: retries, budgets, batching, paging and reply parsing.

The fake keeps ENIs, IPs, instances, subnets and route rules, has the SDK methods' own signatures (and, like the
SDK's `@required`, refuses None for a parameter given by keyword), returns replies parsed the way the SDK parses
JSON, and raises failures built the way the SDK builds them: `BceHttpClientError` around the `BceServerError` or
transport exception of the last attempt.
"""

from __future__ import annotations

import inspect
import itertools
import json
import random
from typing import Any

import pytest
from baidubce.exception import BceHttpClientError, BceServerError
from baidubce.utils import dict_to_python_object
from prometheus_client import REGISTRY

from cloud.bce import BceSettings, BceVpcApi, SdkClients
from cloud.limiter import RateLimits
from cloud.port import CloudApi, VpcApi
from schemas.base import InstanceType
from schemas.errors import CceError, ErrorReason
from schemas.records import EniState
from tests.fake_clock import FakeClock

pytestmark = pytest.mark.unit


def server_error(status: int, code: str | None, message: str = "refused", request_id: str = "req-1") -> Exception:
    err = BceServerError(message, code=code, request_id=request_id)
    err.status_code = status
    wrapped: Exception = BceHttpClientError("Unable to execute HTTP request. Retried 0 times. All trace backs:\n>>>>",
                                            err, status, code, request_id=request_id)
    return wrapped


def transport_error(exc: Exception) -> Exception:
    wrapped: Exception = BceHttpClientError("Unable to execute HTTP request. Retried 0 times.", exc, None, None,
                                            request_id=None)
    return wrapped


def reply(body: dict[str, Any]) -> Any:
    return json.loads(json.dumps(body), object_hook=dict_to_python_object)


class FakeCloud:
    """One object standing in for EniClient, BccClient, SubnetClient and RouteClient."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._failures: dict[str, list[Exception | None]] = {}
        self._ips = (f"10.0.{i // 250}.{i % 250 + 2}" for i in itertools.count())
        self._ids = itertools.count(1)
        self.enis: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.primary_nic = {"macAddress": "fa:16:3e:00:00:01", "ips": [{"privateIp": "10.1.0.5", "primary": True}]}

    def fail(self, method: str, *errors: Exception | None) -> None:
        """The next calls of `method` raise these, in turn; None lets that call succeed."""
        self._failures.setdefault(method, []).extend(errors)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [kwargs | {"args": args} for name, args, kwargs in self.calls if name == method]

    def _enter(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for key, value in kwargs.items():
            if value is None and key not in ("client_token", "config"):
                raise ValueError(f'arg "{key}" should not be None')  # what the SDK's @required does
        self.calls.append((method, args, kwargs))
        error = self._failures[method].pop(0) if self._failures.get(method) else None
        if error is not None:
            raise error

    @staticmethod
    def _page(items: list[Any], marker: str | None, max_keys: int) -> dict[str, Any]:
        start = int(marker) if marker else 0
        end = start + max_keys
        return {"marker": marker or "", "isTruncated": end < len(items), "nextMarker": str(end) if end < len(items)
                else "", "maxKeys": max_keys, "items": items[start:end]}

    # EniClient
    def create_eni(self, name: str, subnet_id: str, security_group_ids: Any = None, **kw: Any) -> Any:
        self._enter("create_eni", (name, subnet_id), {"security_group_ids": security_group_ids, **kw})
        eni_id = f"eni-{next(self._ids)}"
        primary = kw["eni_ip_address_list"][0].private_ip or next(self._ips)
        self.enis[eni_id] = {"eniId": eni_id, "name": name, "zoneName": "zoneA", "description": kw.get("description"),
                             "instanceId": "", "macAddress": "fa:26:00:00:00:01", "vpcId": "vpc-1",
                             "subnetId": subnet_id, "status": "available", "securityGroupIds": security_group_ids,
                             "privateIpSet": [{"privateIpAddress": primary, "primary": True, "publicIpAddress": ""}],
                             "createdTime": "2024-01-01T00:00:00Z"}
        return reply({"eniId": eni_id})

    def attach_eni_instance(self, eni_id: str, instance_id: str, **kw: Any) -> Any:
        self._enter("attach_eni_instance", (eni_id, instance_id), kw)
        self.enis[eni_id] |= {"status": "inuse", "instanceId": instance_id}
        return reply({})

    def detach_eni_instance(self, eni_id: str, instance_id: str, **kw: Any) -> Any:
        self._enter("detach_eni_instance", (eni_id, instance_id), kw)
        self.enis[eni_id] |= {"status": "available", "instanceId": ""}
        return reply({})

    def delete_eni(self, eni_id: str, **kw: Any) -> Any:
        self._enter("delete_eni", (eni_id,), kw)
        del self.enis[eni_id]
        return reply({})

    def get_eni_details(self, eni_id: str, **kw: Any) -> Any:
        self._enter("get_eni_details", (eni_id,), kw)
        return reply(self.enis[eni_id])

    def list_eni(self, vpc_id: str, **kw: Any) -> Any:
        self._enter("list_eni", (vpc_id,), kw)
        enis = [e for e in self.enis.values() if e["vpcId"] == vpc_id
                and kw.get("instance_id") in (None, e["instanceId"]) and kw.get("name") in (None, e["name"])]
        page = self._page(enis, kw.get("marker"), kw.get("max_keys", 1000))
        return reply({"enis": page.pop("items"), **page})

    def batch_add_private_ip(self, eni_id: str, **kw: Any) -> Any:
        self._enter("batch_add_private_ip", (eni_id,), kw)
        ips = kw.get("private_ip_address_list") or [next(self._ips) for _ in range(kw["private_ip_address_count"])]
        assert len(ips) <= 10
        self.enis[eni_id]["privateIpSet"] += [{"privateIpAddress": ip, "primary": False} for ip in ips]
        return reply({"privateIpAddresses": ips})

    def batch_delete_private_ip(self, eni_id: str, private_ip_address_list: list[str], **kw: Any) -> Any:
        self._enter("batch_delete_private_ip", (eni_id, private_ip_address_list), kw)
        assert len(private_ip_address_list) <= 10
        ip_set = self.enis[eni_id]["privateIpSet"]
        self.enis[eni_id]["privateIpSet"] = [p for p in ip_set if p["privateIpAddress"] not in private_ip_address_list]
        return reply({})

    # BccClient
    def get_instance(self, instance_id: str, **kw: Any) -> Any:
        self._enter("get_instance", (instance_id,), kw)
        return reply({"instance": {
            "id": instance_id, "name": "node-1", "instanceType": "BBC", "status": "Running", "cpuCount": 4,
            "memoryCapacityInGB": 3.5, "zoneName": "zoneA", "internalIp": "10.1.0.5", "vpcId": "vpc-1",
            "subnetId": "sbn-1", "eniQuota": 0, "nicInfo": self.primary_nic}})

    def batch_add_ip(self, instance_id: str, **kw: Any) -> Any:
        self._enter("batch_add_ip", (instance_id,), kw)
        ips = kw.get("private_ips") or [next(self._ips) for _ in range(kw["secondary_private_ip_address_count"])]
        self.primary_nic["ips"] += [{"privateIp": ip, "primary": False} for ip in ips]  # type: ignore[operator]
        return reply({"ips": ips})

    def batch_delete_ip(self, instance_id: str, private_ips: list[str], **kw: Any) -> Any:
        self._enter("batch_delete_ip", (instance_id, private_ips), kw)
        return reply({})

    # SubnetClient
    def get_subnet(self, subnet_id: str, **kw: Any) -> Any:
        self._enter("get_subnet", (subnet_id,), kw)
        return reply({"subnet": self._subnets()[0]})

    def list_subnets(self, **kw: Any) -> Any:
        self._enter("list_subnets", (), kw)
        subnets = [s for s in self._subnets() if kw.get("zone_name") in (None, s["zoneName"])]
        page = self._page(subnets, kw.get("marker"), kw.get("max_keys", 1000))
        return reply({"subnets": page.pop("items"), **page})

    @staticmethod
    def _subnets() -> list[dict[str, Any]]:
        return [{"subnetId": f"sbn-{i}", "name": f"s{i}", "zoneName": "zoneA" if i % 2 else "zoneB",
                 "cidr": f"10.{i}.0.0/24", "vpcId": "vpc-1", "subnetType": "BCC", "description": "",
                 "availableIp": 250 - i} for i in range(1, 6)]

    # RouteClient
    def create_route(self, route_table_id: str, source_address: str, destination_address: str, **kw: Any) -> Any:
        self._enter("create_route", (route_table_id, source_address, destination_address), kw)
        rule_id = f"rr-{next(self._ids)}"
        self.rules[rule_id] = {"routeRuleId": rule_id, "routeTableId": route_table_id, "sourceAddress": source_address,
                               "destinationAddress": destination_address, "nexthopId": kw["next_hop_id"],
                               "nexthopType": kw["next_hop_type"], "description": kw["description"]}
        return reply({"routeRuleId": rule_id})

    def get_route_rule(self, **kw: Any) -> Any:
        self._enter("get_route_rule", (), kw)
        rules = [r for r in self.rules.values() if r["routeTableId"] == kw["routeTableId"]]
        page = self._page(rules, kw.get("marker"), kw.get("maxKeys", 1000))
        return reply({"routeRules": page.pop("items"), **page})

    def delete_route(self, route_rule_id: str, **kw: Any) -> Any:
        self._enter("delete_route", (route_rule_id,), kw)
        del self.rules[route_rule_id]
        return reply({})


SEED = 7


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_api(cloud: FakeCloud, clock: FakeClock, limits: dict[CloudApi, tuple[float, int]] | None = None,
             **settings: Any) -> BceVpcApi:
    config = BceSettings(endpoint="http://127.0.0.1:9", access_key="ak", secret_key="sk", vpc_id="vpc-1",
                         **settings)
    roomy = {api: (1000.0, 1000) for api in CloudApi} | (limits or {})
    return BceVpcApi(config, clients=SdkClients(cloud, cloud, cloud, cloud),
                     limits=RateLimits(roomy, clock=clock, sleep=clock.sleep),
                     rng=random.Random(SEED), sleep=clock.sleep, clock=clock)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_adapter_implements_every_port_method(cloud: FakeCloud, clock: FakeClock) -> None:
    port: VpcApi = make_api(cloud, clock)  # mypy checks the signatures against the protocol
    methods = {name for name in vars(VpcApi) if not name.startswith("_")}
    assert len(methods) == 18
    assert all(inspect.iscoroutinefunction(getattr(port, name)) for name in methods)


# --- retries ------------------------------------------------------------------------------------------------------


async def test_retryable_failures_are_retried_with_growing_jittered_waits(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])
    cloud.fail("get_eni_details", server_error(500, "InternalError"), server_error(502, None),
               transport_error(ConnectionRefusedError(111, "Connection refused")))
    retries = metric("cce_cloud_retries_total", api="get_eni")

    eni = await api.get_eni(eni_id)

    assert eni.eni_id == eni_id
    assert len(cloud.calls_to("get_eni_details")) == 4
    rng = random.Random(SEED)
    assert clock.sleeps == [rng.uniform(0, 0.2), rng.uniform(0, 0.4), rng.uniform(0, 0.8)]
    assert all(0 <= wait <= cap for wait, cap in zip(clock.sleeps, [0.2, 0.4, 0.8], strict=True))
    assert metric("cce_cloud_retries_total", api="get_eni") == retries + 3


async def test_back_off_is_capped(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, max_attempts=8, backoff_base_s=1.0, backoff_max_s=1.5, retry_budget_s=100)
    cloud.fail("get_subnet", *[server_error(503, "ServiceUnavailable")] * 7)
    await api.get_subnet("sbn-1")
    assert len(clock.sleeps) == 7
    assert max(clock.sleeps) <= 1.5


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (400, "SubnetHasNoMoreIpException", ErrorReason.SUBNET_NO_MORE_IP),
        (400, "VmMemoryCanNotAttachMoreIpException", ErrorReason.ENI_CAPACITY_EXCEED),
        (404, "NoSuchObject", ErrorReason.CLOUD_NOT_FOUND),
        (403, "AccessDenied", ErrorReason.CLOUD_AUTH_FAILED),
        (400, "InvalidParameter", ErrorReason.CLOUD_ERROR),
    ],
)
async def test_non_retryable_failures_surface_at_once(cloud: FakeCloud, clock: FakeClock, status: int, code: str,
                                                      reason: ErrorReason) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])
    cloud.fail("batch_add_private_ip", server_error(status, code, "no", request_id="req-42"))
    errors = metric("cce_cloud_errors_total", api="add_private_ips", code=code)

    with pytest.raises(CceError) as caught:
        await api.add_private_ips(eni_id, count=3)

    assert caught.value.reason is reason
    assert caught.value.details == {"api": "add_private_ips", "cloud_code": code, "status": status,
                                    "request_id": "req-42", "attempts": 1, "eni_id": eni_id, "added_ips": []}
    assert len(cloud.calls_to("batch_add_private_ip")) == 1
    assert clock.sleeps == []
    assert metric("cce_cloud_errors_total", api="add_private_ips", code=code) == errors + 1


async def test_throttling_beyond_the_retry_budget_surfaces_cloud_throttled(cloud: FakeCloud,
                                                                           clock: FakeClock) -> None:
    api = make_api(cloud, clock, max_attempts=50, retry_budget_s=1.0)
    cloud.fail("list_subnets", *[server_error(429, "RateLimit")] * 50)
    throttled = metric("cce_cloud_calls_total", api="list_subnets", outcome="RateLimit")

    with pytest.raises(CceError) as caught:
        await api.list_subnets(vpc_id="vpc-1")

    err = caught.value
    assert err.reason is ErrorReason.CLOUD_THROTTLED
    assert err.retryable
    attempts = err.details["attempts"]
    assert 1 < attempts < 50
    assert attempts == len(cloud.calls_to("list_subnets")) == len(clock.sleeps) + 1
    assert sum(clock.sleeps) <= 1.0
    assert err.details["cloud_code"] == "RateLimit"
    assert err.details["status"] == 429
    assert metric("cce_cloud_calls_total", api="list_subnets", outcome="RateLimit") == throttled + 1


async def test_retries_stop_at_max_attempts(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    cloud.fail("get_instance", *[server_error(500, "InternalError")] * 10)
    with pytest.raises(CceError) as caught:
        await api.get_instance("i-1")
    assert caught.value.reason is ErrorReason.CLOUD_ERROR
    assert caught.value.details["attempts"] == 4
    assert caught.value.details["instance_id"] == "i-1"
    assert "after 4 attempts" in caught.value.message
    assert len(clock.sleeps) == 3


async def test_no_reply_is_retried_and_named_in_the_error(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, max_attempts=2)
    cloud.fail("get_subnet", *[transport_error(TimeoutError("timed out"))] * 2)
    with pytest.raises(CceError) as caught:
        await api.get_subnet("sbn-1")
    assert caught.value.reason is ErrorReason.CLOUD_ERROR
    assert caught.value.details["status"] is None
    assert caught.value.details["cloud_code"] is None
    assert "TimeoutError (no reply)" in caught.value.message
    assert len(cloud.calls_to("get_subnet")) == 2


async def test_a_mutation_keeps_its_client_token_across_retries(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    cloud.fail("create_eni", server_error(500, "InternalError"))
    await api.create_eni(name="a", subnet_id="sbn-1", security_group_ids=["g-1"])
    await api.create_eni(name="b", subnet_id="sbn-1", security_group_ids=["g-1"])
    tokens = [call["client_token"] for call in cloud.calls_to("create_eni")]
    assert len(tokens) == 3
    assert tokens[0] == tokens[1] != tokens[2]


async def test_primary_nic_ips_are_not_retried_after_a_failure_that_may_have_acted(cloud: FakeCloud,
                                                                                   clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    cloud.fail("batch_add_ip", server_error(500, "InternalError"))
    with pytest.raises(CceError) as caught:
        await api.add_primary_nic_ips("i-1", count=2)
    assert caught.value.details["attempts"] == 1

    cloud.fail("batch_add_ip", server_error(429, "RateLimit"))
    assert len(await api.add_primary_nic_ips("i-1", count=2)) == 2  # throttled: nothing happened, so retried
    assert len(cloud.calls_to("batch_add_ip")) == 3


# --- batches and pages --------------------------------------------------------------------------------------------


async def test_add_private_ips_splits_into_limited_batches(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, limits={CloudApi.ADD_PRIVATE_IPS: (2.0, 1)})
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])

    added = await api.add_private_ips(eni_id, count=25)

    assert [c["private_ip_address_count"] for c in cloud.calls_to("batch_add_private_ip")] == [10, 10, 5]
    assert len(set(added)) == 25
    assert clock.sleeps == [0.5, 0.5]  # every batch waits for its own token
    eni = await api.get_eni(eni_id)
    assert sorted(eni.secondary_ips) == sorted(added)

    await api.remove_private_ips(eni_id, added[:12])
    assert [len(c["args"][1]) for c in cloud.calls_to("batch_delete_private_ip")] == [10, 2]
    assert len((await api.get_eni(eni_id)).secondary_ips) == 13


async def test_explicit_ips_are_batched_too(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])
    wanted = [f"10.9.0.{i}" for i in range(10, 22)]
    assert await api.add_private_ips(eni_id, ips=wanted) == wanted
    assert [c["private_ip_address_list"] for c in cloud.calls_to("batch_add_private_ip")] == [wanted[:10],
                                                                                              wanted[10:]]


async def test_a_failed_batch_names_the_ips_already_added(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])
    cloud.fail("batch_add_private_ip", None, server_error(400, "SubnetHasNoMoreIpException"))
    with pytest.raises(CceError) as caught:
        await api.add_private_ips(eni_id, count=15)
    assert caught.value.reason is ErrorReason.SUBNET_NO_MORE_IP
    assert len(caught.value.details["added_ips"]) == 10


async def test_asking_for_a_count_and_explicit_ips_at_once_is_refused(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    with pytest.raises(CceError) as caught:
        await api.add_private_ips("eni-1", count=1, ips=["10.0.0.9"])
    assert caught.value.reason is ErrorReason.INVALID_REQUEST
    assert cloud.calls == []


async def test_list_enis_follows_the_markers(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, page_size=2)
    ids = [await api.create_eni(name=f"e{i}", subnet_id="sbn-1", security_group_ids=["g-1"]) for i in range(5)]
    await api.attach_eni(ids[0], "i-1")

    assert [e.eni_id for e in await api.list_enis(vpc_id="vpc-1")] == ids
    assert [c.get("marker") for c in cloud.calls_to("list_eni")] == [None, "2", "4"]
    assert all(c["max_keys"] == 2 for c in cloud.calls_to("list_eni"))
    attached = await api.list_enis(vpc_id="vpc-1", instance_id="i-1")
    assert [(e.eni_id, e.instance_id, e.status) for e in attached] == [(ids[0], "i-1", EniState.INUSE)]


async def test_list_subnets_follows_the_markers_and_filters_by_zone(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, page_size=2)
    assert [s.subnet_id for s in await api.list_subnets(vpc_id="vpc-1")] == [f"sbn-{i}" for i in range(1, 6)]
    assert [s.subnet_id for s in await api.list_subnets(vpc_id="vpc-1", zone="zoneB")] == ["sbn-2", "sbn-4"]
    assert cloud.calls_to("list_subnets")[-1]["zone_name"] == "zoneB"


async def test_route_rules_round_trip_with_paging(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock, page_size=2)
    ids = [await api.create_route_rule(route_table_id="rt-1", destination=f"172.16.{i}.0/24",
                                       next_hop_instance=f"i-{i}", description="cce:node") for i in range(3)]
    rules = await api.list_route_rules("rt-1")
    assert [(r.rule_id, r.destination, r.next_hop_id, r.next_hop_type, r.source) for r in rules] == [
        (ids[i], f"172.16.{i}.0/24", f"i-{i}", "custom", "0.0.0.0/0") for i in range(3)]
    await api.delete_route_rule(ids[1])
    assert [r.rule_id for r in await api.list_route_rules("rt-1")] == [ids[0], ids[2]]


# --- replies ------------------------------------------------------------------------------------------------------


async def test_eni_lifecycle_replies_parse_into_port_dataclasses(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1", "g-2"],
                                  description="node-1", primary_ip="10.0.9.9")
    await api.attach_eni(eni_id, "i-1")
    eni = await api.get_eni(eni_id)
    assert eni.status is EniState.INUSE
    assert (eni.name, eni.subnet_id, eni.vpc_id, eni.zone, eni.instance_id) == ("cce-eni", "sbn-1", "vpc-1",
                                                                                "zoneA", "i-1")
    assert eni.primary_ip == "10.0.9.9"
    assert eni.security_group_ids == ("g-1", "g-2")
    assert eni.description == "node-1"
    await api.detach_eni(eni_id, "i-1")
    detached = await api.get_eni(eni_id)
    assert (detached.status, detached.instance_id) == (EniState.AVAILABLE, None)
    await api.delete_eni(eni_id)
    assert cloud.enis == {}


async def test_an_unknown_eni_status_is_a_cloud_error(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    eni_id = await api.create_eni(name="cce-eni", subnet_id="sbn-1", security_group_ids=["g-1"])
    cloud.enis[eni_id]["status"] = "melting"
    with pytest.raises(CceError) as caught:
        await api.get_eni(eni_id)
    assert caught.value.reason is ErrorReason.CLOUD_ERROR


async def test_get_instance_reads_the_primary_nic(cloud: FakeCloud, clock: FakeClock) -> None:
    api = make_api(cloud, clock)
    added = await api.add_primary_nic_ips("i-1", count=2)
    instance = await api.get_instance("i-1")
    assert instance.instance_type is InstanceType.BBC
    assert (instance.cpus, instance.memory_mib, instance.eni_quota) == (4, 3584, 0)
    assert (instance.primary_ip, instance.primary_mac) == ("10.1.0.5", "fa:16:3e:00:00:01")
    assert instance.secondary_ips == tuple(added)
    await api.remove_primary_nic_ips("i-1", added)
    assert cloud.calls_to("batch_delete_ip")[0]["args"] == ("i-1", added)


async def test_get_subnet(cloud: FakeCloud, clock: FakeClock) -> None:
    subnet = await make_api(cloud, clock).get_subnet("sbn-1")
    assert (subnet.subnet_id, subnet.zone, subnet.cidr, subnet.vpc_id, subnet.available_ips) == (
        "sbn-1", "zoneA", "10.1.0.0/24", "vpc-1", 249)

"""The simulator over HTTP, driven by the official Baidu SDK (bce-python-sdk) exactly as the cloud adapter will."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceHttpClientError, BceServerError
from baidubce.http import http_methods
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.bcc.bcc_client import BccClient
from baidubce.services.eni.eni_client import EniClient
from baidubce.services.eni.eni_model import EniIPSet
from baidubce.services.route.route_client import RouteClient
from baidubce.services.subnet.subnet_client import SubnetClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.vpc_sim.admin import SimAdmin, SimAdminError, SimAdminSync
from services.vpc_sim.faults import FaultConfig, RateLimitSpec
from services.vpc_sim.main import settings_from_env
from services.vpc_sim.persist import StateFileError
from services.vpc_sim.server import SimServer, SimSettings
from tests import sim_fixtures

pytestmark = pytest.mark.integration



class Cloud:
    """The four SDK clients of one credential, called in a thread as the production adapter does."""

    def __init__(self, sim: SimServer, secret: str | None = None) -> None:
        config = BceClientConfiguration(credentials=BceCredentials(sim.access_key, secret or sim.secret_key),
                                        endpoint=sim.url, retry_policy=NoRetryPolicy())
        self.eni = EniClient(config)
        self.bcc = BccClient(config)
        self.subnet = SubnetClient(config)
        self.route = RouteClient(config)

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def fails(self, code: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BceServerError:
        with pytest.raises(BceHttpClientError) as info:
            await self(fn, *args, **kwargs)
        error = info.value.last_error
        assert isinstance(error, BceServerError), error
        assert error.code == code, f"{error.code}: {error}"
        assert error.request_id
        return error


async def eventually(check: Callable[[], Any], timeout_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


@pytest.fixture
def cloud(vpc_sim: SimServer) -> Cloud:
    return Cloud(vpc_sim)


async def default_subnet(admin: SimAdmin) -> str:
    return str((await admin.info())["subnets"][0]["subnetId"])


async def new_eni(cloud: Cloud, subnet_id: str, ip: str | None = None) -> str:
    reply = await cloud(cloud.eni.create_eni, "eni-test", subnet_id, ["sg-1"],
                        eni_ip_address_list=[EniIPSet(primary=True, private_ip=ip)])
    return str(reply.eni_id)


async def attached_eni(cloud: Cloud, subnet_id: str, instance_id: str) -> str:
    eni_id = await new_eni(cloud, subnet_id)
    await cloud(cloud.eni.attach_eni_instance, eni_id, instance_id)

    async def inuse() -> bool:
        return bool((await cloud(cloud.eni.get_eni_status, eni_id)).status == "inuse")

    assert await eventually(inuse)
    return eni_id


# ---- ENIs ---------------------------------------------------------------------------------------------------


async def test_an_attached_eni_is_attaching_then_inuse(cloud: Cloud, sim_admin: SimAdmin) -> None:
    vm = await sim_admin.create_instance(cpus=4, memory_mib=8192)
    subnet_id = await default_subnet(sim_admin)
    eni_id = await new_eni(cloud, subnet_id)
    assert (await cloud(cloud.eni.get_eni_status, eni_id)).status == "available"
    await cloud(cloud.eni.attach_eni_instance, eni_id, vm["id"])
    assert (await cloud(cloud.eni.get_eni_status, eni_id)).status == "attaching"

    async def inuse() -> bool:
        return bool((await cloud(cloud.eni.get_eni_status, eni_id)).status == "inuse")

    assert await eventually(inuse)
    details = await cloud(cloud.eni.get_eni_details, eni_id)
    assert (details.instance_id, details.subnet_id, details.zone_name) == (vm["id"], subnet_id, "zoneA")
    assert [ip.private_ip_address for ip in details.private_ip_set] == ["10.0.0.3"]
    listed = await cloud(cloud.bcc.list_instance_enis, vm["id"])
    assert [e.eni_id for e in listed.enis] == [eni_id]
    await cloud.fails("EniStatusInvalid", cloud.eni.delete_eni, eni_id)
    await cloud(cloud.eni.detach_eni_instance, eni_id, vm["id"])
    assert (await cloud(cloud.eni.get_eni_status, eni_id)).status == "detaching"

    async def available() -> bool:
        return bool((await cloud(cloud.eni.get_eni_status, eni_id)).status == "available")

    assert await eventually(available)
    await cloud(cloud.eni.delete_eni, eni_id)
    await cloud.fails("NoSuchObject", cloud.eni.get_eni_details, eni_id)


async def test_batch_add_ten_ips_and_remove_them(cloud: Cloud, sim_admin: SimAdmin) -> None:
    vm = await sim_admin.create_instance(cpus=4, memory_mib=32768)
    eni_id = await attached_eni(cloud, await default_subnet(sim_admin), vm["id"])
    added = (await cloud(cloud.eni.batch_add_private_ip, eni_id, private_ip_address_count=10)).private_ip_addresses
    assert len(added) == 10 and len(set(added)) == 10
    await cloud.fails("InvalidParameter", cloud.eni.batch_add_private_ip, eni_id, private_ip_address_count=11)
    one = (await cloud(cloud.eni.add_private_ip, eni_id, "10.0.0.200")).private_ip_address
    assert one == "10.0.0.200"
    await cloud.fails("PrivateIpInUseException", cloud.eni.add_private_ip, eni_id, "10.0.0.200")
    await cloud(cloud.eni.batch_delete_private_ip, eni_id, added[:5])
    await cloud(cloud.eni.delete_private_ip, eni_id, one)
    await cloud.fails("ENIPrivateIPNotFound", cloud.eni.delete_private_ip, eni_id, one)
    details = await cloud(cloud.eni.get_eni_details, eni_id)
    assert sorted(ip.private_ip_address for ip in details.private_ip_set if not ip.primary) == sorted(added[5:])


async def test_ip_quota_follows_the_instance_memory(cloud: Cloud, sim_admin: SimAdmin) -> None:
    vm = await sim_admin.create_instance(cpus=4, memory_mib=4096)  # 8 IPs per ENI, primary included
    eni_id = await attached_eni(cloud, await default_subnet(sim_admin), vm["id"])
    await cloud(cloud.eni.batch_add_private_ip, eni_id, private_ip_address_count=7)
    error = await cloud.fails("VmMemoryCanNotAttachMoreIpException", cloud.eni.batch_add_private_ip, eni_id,
                              private_ip_address_count=1)
    assert error.status_code == 400


async def test_eni_quota_follows_the_cpu_count(cloud: Cloud, sim_admin: SimAdmin) -> None:
    vm = await sim_admin.create_instance(cpus=2, memory_mib=8192)
    assert vm["eniQuota"] == 2
    subnet_id = await default_subnet(sim_admin)
    for _ in range(2):
        await cloud(cloud.eni.attach_eni_instance, await new_eni(cloud, subnet_id), vm["id"])
    error = await cloud.fails("EniQuotaExceeded", cloud.eni.attach_eni_instance, await new_eni(cloud, subnet_id),
                              vm["id"])
    assert error.status_code == 400


async def test_a_subnet_with_one_address_left(cloud: Cloud, sim_admin: SimAdmin) -> None:
    subnet = await sim_admin.create_subnet(zone="zoneA", cidr="10.1.0.0/29")  # 5 usable addresses
    await sim_admin.reserve(subnet["subnetId"], ips=["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"])
    assert (await cloud(cloud.subnet.get_subnet, subnet["subnetId"])).subnet.available_ip == 1
    eni_id = await new_eni(cloud, subnet["subnetId"])
    assert (await cloud(cloud.eni.get_eni_details, eni_id)).private_ip_set[0].private_ip_address == "10.1.0.6"
    assert (await cloud(cloud.subnet.get_subnet, subnet["subnetId"])).subnet.available_ip == 0
    await cloud.fails("SubnetHasNoMoreIpException", cloud.eni.batch_add_private_ip, eni_id,
                      private_ip_address_count=1)
    await cloud.fails("SubnetHasNoMoreIpException", cloud.eni.create_eni, "x", subnet["subnetId"], ["sg-1"])


async def test_a_client_token_makes_create_idempotent(cloud: Cloud, sim_admin: SimAdmin) -> None:
    subnet_id = await default_subnet(sim_admin)
    first = await cloud(cloud.eni.create_eni, "a", subnet_id, ["sg-1"], client_token="token-1")
    again = await cloud(cloud.eni.create_eni, "a", subnet_id, ["sg-1"], client_token="token-1")
    other = await cloud(cloud.eni.create_eni, "a", subnet_id, ["sg-1"], client_token="token-2")
    assert first.eni_id == again.eni_id != other.eni_id


async def test_list_enis_and_subnets_page_by_marker(cloud: Cloud, sim_admin: SimAdmin, vpc_sim: SimServer) -> None:
    subnet_id = await default_subnet(sim_admin)
    ids = [await new_eni(cloud, subnet_id) for _ in range(3)]
    page = await cloud(cloud.eni.list_eni, vpc_sim.vpc_id, max_keys=2)
    assert ([e.eni_id for e in page.enis], page.is_truncated, page.next_marker) == (ids[:2], True, ids[2])
    page = await cloud(cloud.eni.list_eni, vpc_sim.vpc_id, marker=page.next_marker, max_keys=2)
    assert ([e.eni_id for e in page.enis], page.is_truncated) == (ids[2:], False)
    await sim_admin.create_subnet(zone="zoneB", cidr="10.2.0.0/24", subnet_id="sbn-zoneb")
    subnets = await cloud(cloud.subnet.list_subnets, vpc_id=vpc_sim.vpc_id, zone_name="zoneB")
    assert [s.subnet_id for s in subnets.subnets] == ["sbn-zoneb"]
    await cloud.fails("NoSuchObject", cloud.eni.list_eni, "vpc-other")


# ---- instances ------------------------------------------------------------------------------------------------


async def test_bbc_primary_nic_ips(cloud: Cloud, sim_admin: SimAdmin) -> None:
    bbc = await sim_admin.create_instance(instance_type="BBC", cpus=48, memory_mib=262144)
    assert bbc["eniQuota"] == 0
    ips = (await cloud(cloud.bcc.batch_add_ip, bbc["id"], secondary_private_ip_address_count=10)).ips
    assert len(ips) == 10
    more = (await cloud(cloud.bcc.batch_add_ip, bbc["id"], private_ips=["10.0.0.100"])).ips
    assert more == ["10.0.0.100"]
    instance = (await cloud(cloud.bcc.get_instance, bbc["id"])).instance
    assert [ip.private_ip for ip in instance.nic_info.ips if not ip.primary] == [*ips, "10.0.0.100"]
    for _ in range(2):
        await cloud(cloud.bcc.batch_add_ip, bbc["id"], secondary_private_ip_address_count=10)
    await cloud(cloud.bcc.batch_add_ip, bbc["id"], secondary_private_ip_address_count=8)
    await cloud.fails("VmMemoryCanNotAttachMoreIpException", cloud.bcc.batch_add_ip, bbc["id"],
                      secondary_private_ip_address_count=1)
    await cloud(cloud.bcc.batch_delete_ip, bbc["id"], ips[:3])
    await cloud.fails("ENIPrivateIPNotFound", cloud.bcc.batch_delete_ip, bbc["id"], ips[:1])
    eni_id = await new_eni(cloud, await default_subnet(sim_admin))
    await cloud.fails("EniQuotaExceeded", cloud.eni.attach_eni_instance, eni_id, bbc["id"])


# ---- route tables ---------------------------------------------------------------------------------------------


async def test_route_rules(cloud: Cloud, sim_admin: SimAdmin, vpc_sim: SimServer) -> None:
    vm = await sim_admin.create_instance()
    rt = vpc_sim.route_table_id
    created = await cloud(cloud.route.create_route, rt, "0.0.0.0/0", "172.16.0.0/24", next_hop_type="custom",
                          description="pods of node 1", next_hop_id=vm["id"])
    rules = (await cloud(cloud.route.get_route_rule, routeTableId=rt)).route_rules
    assert [(r.route_rule_id, r.destination_address, r.nexthop_id) for r in rules] == \
        [(created.route_rule_id, "172.16.0.0/24", vm["id"])]
    table = await cloud(cloud.route.get_route, vpc_id=vpc_sim.vpc_id)
    assert (table.route_table_id, len(table.route_rules)) == (rt, 1)
    await cloud.fails("RouteRuleRepeated", cloud.route.create_route, rt, "0.0.0.0/0", "172.16.0.0/24",
                      next_hop_type="custom", description="again", next_hop_id=vm["id"])
    await sim_admin.set_settings(route_quota=2)
    await cloud(cloud.route.create_route, rt, "0.0.0.0/0", "172.16.1.0/24", next_hop_type="custom",
                description="", next_hop_id=vm["id"])
    await cloud.fails("RouteRuleQuotaExceeded", cloud.route.create_route, rt, "0.0.0.0/0", "172.16.2.0/24",
                      next_hop_type="custom", description="", next_hop_id=vm["id"])
    await cloud(cloud.route.delete_route, created.route_rule_id)
    await cloud.fails("NoSuchObject", cloud.route.delete_route, created.route_rule_id)
    rules = (await cloud(cloud.route.get_route_rule, routeTableId=rt)).route_rules
    assert [r.destination_address for r in rules] == ["172.16.1.0/24"]
    await cloud.fails("NoSuchObject", cloud.route.get_route_rule, routeTableId="rt-nope")


# ---- refusals: auth, faults, bad input ------------------------------------------------------------------------


async def test_a_wrong_secret_is_access_denied(vpc_sim: SimServer, sim_admin: SimAdmin) -> None:
    intruder = Cloud(vpc_sim, secret="not-the-secret")
    error = await intruder.fails("AccessDenied", intruder.subnet.get_subnet, await default_subnet(sim_admin))
    assert error.status_code == 403


async def test_an_injected_failure_answers_its_code_once(cloud: Cloud, sim_admin: SimAdmin) -> None:
    subnet_id = await default_subnet(sim_admin)
    await sim_admin.fail_next("create_eni", 1, "InternalError", 500)
    error = await cloud.fails("InternalError", cloud.eni.create_eni, "a", subnet_id, ["sg-1"])
    assert error.status_code == 500
    assert await new_eni(cloud, subnet_id) == "eni-00000001"  # the failed call created nothing
    assert (await sim_admin.get_faults()).fail_next == []


async def test_a_rate_limit_answers_429(cloud: Cloud, sim_admin: SimAdmin) -> None:
    subnet_id = await default_subnet(sim_admin)
    await sim_admin.set_faults(FaultConfig(rate_limits={"get_subnet": RateLimitSpec(rate_per_s=0.01, burst=2)}))
    for _ in range(2):
        await cloud(cloud.subnet.get_subnet, subnet_id)
    error = await cloud.fails("RateLimit", cloud.subnet.get_subnet, subnet_id)
    assert error.status_code == 429
    await sim_admin.clear_faults()
    await cloud(cloud.subnet.get_subnet, subnet_id)


async def test_bad_bodies_are_coded_400s(cloud: Cloud, sim_admin: SimAdmin, vpc_sim: SimServer) -> None:
    send = cloud.eni._send_request
    error = await cloud.fails("MalformedJSON", send, http_methods.POST, b"/eni", body="{not json")
    assert error.status_code == 400
    await cloud.fails("MalformedJSON", send, http_methods.POST, b"/eni", body="[1]")
    await cloud.fails("InvalidParameter", send, http_methods.POST, b"/eni", body=json.dumps({"name": 5}))
    await cloud.fails("InvalidParameter", send, http_methods.POST, b"/eni",
                      body=json.dumps({"name": "a", "subnetId": await default_subnet(sim_admin),
                                       "privateIpSet": [{"primary": True, "privateIpAddress": "bogus"}]}))
    await cloud.fails("InvalidParameter", send, http_methods.GET, b"/eni",
                      params={b"vpcId": vpc_sim.vpc_id.encode(), b"maxKeys": b"0"})


async def test_unknown_paths_and_unsigned_calls_are_coded(vpc_sim: SimServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{vpc_sim.url}/v1/nothing") as resp:
            body = await resp.json()
            assert (resp.status, body["code"]) == (404, "NoSuchObject")
            assert resp.headers["x-bce-request-id"] == body["requestId"]
        async with http.get(f"{vpc_sim.url}/v1/subnet") as resp:
            assert (resp.status, (await resp.json())["code"]) == (403, "AccessDenied")


# ---- admin, health, metrics, restart --------------------------------------------------------------------------


async def test_admin_refusals_are_coded(cloud: Cloud, sim_admin: SimAdmin) -> None:
    with pytest.raises(SimAdminError) as info:
        await sim_admin.create_subnet(zone="zoneA", cidr="10.0.0.0/24")
    assert (info.value.status, info.value.code) == (400, "InvalidParameter")
    vm = await sim_admin.create_instance()
    await attached_eni(cloud, await default_subnet(sim_admin), vm["id"])
    with pytest.raises(SimAdminError) as info:
        await sim_admin.delete_instance(vm["id"])
    assert info.value.status == 409
    await sim_admin.delete_instance(vm["id"], force=True)
    await cloud.fails("NoSuchObject", cloud.bcc.get_instance, vm["id"])


async def test_health_metrics_and_the_sync_admin(cloud: Cloud, vpc_sim: SimServer, sim_admin: SimAdmin) -> None:
    await cloud(cloud.subnet.get_subnet, await default_subnet(sim_admin))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{vpc_sim.url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["fabric"]["enabled"] is False
        async with http.get(f"{vpc_sim.url}/metrics") as resp:
            text = await resp.text()
    assert 'cce_sim_calls_total{api="get_subnet",code="OK"} 1.0' in text
    sync = SimAdminSync(vpc_sim.url)
    info = await asyncio.to_thread(sync.info)
    assert (info["vpcId"], info["accessKey"], info["endpoint"]) == (vpc_sim.vpc_id, "cce-sim-ak", vpc_sim.url)
    with pytest.raises(SimAdminError):
        await asyncio.to_thread(sync.delete_instance, "i-nope")


async def test_a_restarted_simulator_answers_as_before(cloud: Cloud, vpc_sim: SimServer,
                                                       sim_admin: SimAdmin) -> None:
    vm = await sim_admin.create_instance(cpus=4, memory_mib=16384)
    subnet_id = await default_subnet(sim_admin)
    eni_id = await attached_eni(cloud, subnet_id, vm["id"])
    await cloud(cloud.eni.batch_add_private_ip, eni_id, private_ip_address_count=4)
    await new_eni(cloud, subnet_id)
    await cloud(cloud.route.create_route, vpc_sim.route_table_id, "0.0.0.0/0", "172.16.0.0/24",
                next_hop_type="custom", description="", next_hop_id=vm["id"])

    async def snapshot(sim: SimServer, api: Cloud) -> list[Any]:
        async with SimAdmin(sim.url) as admin:
            info = {k: v for k, v in (await admin.info()).items() if k != "endpoint"}
        return [info, (await api(api.eni.list_eni, sim.vpc_id)).raw_data,
                (await api(api.eni.get_eni_details, eni_id)).raw_data,
                (await api(api.subnet.list_subnets)).raw_data,
                (await api(api.route.get_route_rule, routeTableId=sim.route_table_id)).raw_data]

    before = await snapshot(vpc_sim, cloud)
    await vpc_sim.stop()
    restarted = await SimServer(vpc_sim.settings).start()
    try:
        again = Cloud(restarted)
        assert await snapshot(restarted, again) == before
        assert await new_eni(again, subnet_id) == "eni-00000003"
    finally:
        await restarted.stop()


async def test_a_corrupt_state_file_stops_the_start(tmp_path: Path) -> None:
    config = sim_fixtures.sim_settings(tmp_path)
    assert config.state_file is not None
    config.state_file.write_text("{\"version\": 1, \"vpc_id\": ")
    with pytest.raises(StateFileError, match=r"sim\.json"):
        await SimServer(config).start()
    config.state_file.write_text("{}")
    with pytest.raises(StateFileError, match="does not hold a simulator state"):
        await SimServer(config).start()


def test_settings_take_the_stack_runner_port_and_faults_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCE_HTTP_PORT", "18080")
    monkeypatch.setenv("CCE_SIM_FAULTS", '{"rate_limits": {"create_eni": {"rate_per_s": 5, "burst": 10}}}')
    config = settings_from_env()
    assert config.port == 18080
    assert config.faults is not None and config.faults.rate_limits["create_eni"].burst == 10
    monkeypatch.setenv("CCE_SIM_PORT", "18081")
    assert settings_from_env().port == 18081
    assert SimSettings(faults="").faults is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=12)
    | st.sampled_from(["10.0.0.9", "10.0.0.0/24", "eni-00000001", "i-00000001", "sbn-00000001", "rt-00000001"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
BODY_KEYS = ["name", "subnetId", "securityGroupIds", "privateIpSet", "instanceId", "privateIpAddress",
             "privateIpAddresses", "privateIpAddressCount", "privateIps", "secondaryPrivateIpAddressCount",
             "routeTableId", "destinationAddress", "nexthopId", "nexthopType", "sourceAddress"]
ROUTES = [
    ("POST", "/v1/eni"), ("PUT", "/v1/eni/{eni}?attach"), ("PUT", "/v1/eni/{eni}?detach"), ("PUT", "/v1/eni/{eni}"),
    ("DELETE", "/v1/eni/{eni}"), ("GET", "/v1/eni/{eni}"), ("GET", "/v1/eni?vpcId={vpc}&maxKeys={n}"),
    ("POST", "/v1/eni/{eni}/privateIp"), ("DELETE", "/v1/eni/{eni}/privateIp/{ip}"),
    ("POST", "/v1/eni/{eni}/privateIp/batchAdd"), ("POST", "/v1/eni/{eni}/privateIp/batchDel"),
    ("GET", "/v2/instance/{vm}"), ("GET", "/v2/eni/{vm}"), ("PUT", "/v2/instance/batchAddIp"),
    ("PUT", "/v2/instance/batchDelIp"), ("GET", "/v1/subnet?marker={eni}&maxKeys={n}"),
    ("GET", "/v1/route?routeTableId={rt}"), ("POST", "/v1/route/rule"), ("DELETE", "/v1/route/rule/{rt}"),
]
IDS = st.sampled_from(["eni-00000001", "i-00000001", "x", "%20", "10.0.0.9", "rt-00000001", "sbn-00000001"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str]:
    method, template = draw(st.sampled_from(ROUTES))
    path = template.format(eni=draw(IDS), vm=draw(IDS), ip=draw(IDS), rt=draw(IDS), vpc="vpc-00000001",
                           n=draw(st.sampled_from(["1", "0", "x", "1000"])))
    body = draw(st.dictionaries(st.sampled_from(BODY_KEYS), JSON_VALUES, max_size=5) | JSON_VALUES)
    raw = draw(st.sampled_from([json.dumps(body), json.dumps(body)[:-1], ""]))
    return method, path, raw


async def test_random_requests_get_coded_answers_never_500(cloud: Cloud, sim_admin: SimAdmin) -> None:
    await sim_admin.create_instance()
    await new_eni(cloud, await default_subnet(sim_admin))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(requests())
    def fuzz(request: tuple[str, str, str]) -> None:
        method, target, raw = request
        path, _, query = target.partition("?")
        params = {k.encode(): v.encode() for k, _, v in (p.partition("=") for p in query.split("&") if p)}
        client = cloud.bcc if path.startswith("/v2") else cloud.eni
        try:
            client._send_request(method.encode(), path[3:].encode(), body=raw, params=params)
        except BceHttpClientError as err:
            error = err.last_error
            assert isinstance(error, BceServerError)
            assert error.status_code in (400, 403, 404, 409), (error.status_code, error.code, str(error))
            assert error.code and error.request_id

    await asyncio.to_thread(fuzz)

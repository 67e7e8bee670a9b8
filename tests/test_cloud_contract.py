"""The `VpcApi` contract, run through the production adapter (`BceVpcApi` over bce-python-sdk) against the
simulated VPC over HTTP.

The tests talk to the `api` fixture (any `VpcApi`) and build the world through `cloud_setup`; only fault
injection and a few simulator settings go to the admin client directly. To run the suite against another
implementation, replace `make_api`, `api` and `cloud_setup`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.bce import BceSettings, BceVpcApi
from cloud.port import MAX_IPS_PER_BATCH, CloudApi, CloudEni, VpcApi
from schemas.base import InstanceType
from schemas.errors import CceError, ErrorReason
from schemas.records import EniState
from services.vpc_sim.admin import SimAdmin
from services.vpc_sim.faults import FaultConfig, RateLimitSpec
from services.vpc_sim.server import SimServer
from tests import sim_fixtures
from tests.sim_fixtures import WIDE_OPEN

pytestmark = pytest.mark.integration

SG = ["sg-contract"]
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# the adapter's own token buckets opened wide: the cloud's limits (and the limiter's own tests) are what count here
FAST_RETRIES = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}

ApiFactory = Callable[..., BceVpcApi]


# ---- the world: setup through the admin API --------------------------------------------------------------------


@dataclass
class CloudSetup:
    """Creates what the VpcApi cannot: instances and subnets (here through the simulator's admin API)."""

    admin: SimAdmin
    vpc_id: str
    route_table_id: str
    subnet_id: str  # the default subnet, in `zone`
    zone: str = "zoneA"

    async def instance(self, *, cpus: int = 4, memory_mib: int = 8192, instance_type: str = "BCC") -> str:
        created = await self.admin.create_instance(instance_type=instance_type, cpus=cpus, memory_mib=memory_mib,
                                                   zone=self.zone)
        return str(created["id"])

    async def subnet(self, cidr: str, zone: str | None = None) -> str:
        return str((await self.admin.create_subnet(zone=zone or self.zone, cidr=cidr))["subnetId"])

    async def eni_delays(self, attach_s: float, detach_s: float) -> None:
        await self.admin.set_settings(attach_delay_s=attach_s, detach_delay_s=detach_s)


@pytest.fixture
def make_api(vpc_sim: SimServer) -> ApiFactory:
    """A `BceVpcApi` on a simulator (`vpc_sim` unless `server=`), with BceSettings overrides."""

    def make(server: SimServer | None = None, **overrides: Any) -> BceVpcApi:
        sim = server or vpc_sim
        values: dict[str, Any] = {"endpoint": sim.url, "access_key": sim.access_key, "secret_key": sim.secret_key,
                                  "vpc_id": sim.vpc_id, "rate_limits": WIDE_OPEN, **FAST_RETRIES, **overrides}
        return BceVpcApi(BceSettings(**values))

    return make


@pytest.fixture
def api(make_api: ApiFactory) -> VpcApi:
    return make_api()


@pytest.fixture
async def cloud_setup(sim_admin: SimAdmin) -> CloudSetup:
    info = await sim_admin.info()
    default = info["subnets"][0]
    return CloudSetup(sim_admin, info["vpcId"], info["routeTableId"], default["subnetId"], default["zoneName"])


# ---- helpers ---------------------------------------------------------------------------------------------------


async def fails(reason: ErrorReason, call: Awaitable[Any]) -> CceError:
    with pytest.raises(CceError) as info:
        await call
    assert info.value.reason is reason, info.value
    return info.value


async def wait_status(api: VpcApi, eni_id: str, status: EniState, timeout_s: float = 5.0) -> CloudEni:
    deadline = time.monotonic() + timeout_s
    while True:
        eni = await api.get_eni(eni_id)
        if eni.status is status:
            return eni
        assert time.monotonic() < deadline, f"{eni_id} still {eni.status} after {timeout_s}s, not {status}"
        await asyncio.sleep(0.01)


async def new_eni(api: VpcApi, subnet_id: str, name: str = "contract") -> str:
    return await api.create_eni(name=name, subnet_id=subnet_id, security_group_ids=SG, description="contract test")


async def attached_eni(api: VpcApi, setup: CloudSetup, *, memory_mib: int = 8192, cpus: int = 4) -> tuple[str, str]:
    """(instance id, ENI id) of a new instance with one ENI in use in the default subnet."""
    vm = await setup.instance(cpus=cpus, memory_mib=memory_mib)
    eni_id = await new_eni(api, setup.subnet_id)
    await api.attach_eni(eni_id, vm)
    await wait_status(api, eni_id, EniState.INUSE)
    return vm, eni_id


def in_subnet(ips: list[str], cidr: str) -> bool:
    net = ipaddress.ip_network(cidr)
    return all(ipaddress.ip_address(ip) in net for ip in ips)


# ---- ENI lifecycle ---------------------------------------------------------------------------------------------


async def test_an_eni_is_created_attached_in_use_detached_and_deleted(api: VpcApi, cloud_setup: CloudSetup) -> None:
    delay = 0.3
    await cloud_setup.eni_delays(delay, delay)
    vm = await cloud_setup.instance()
    subnet = await api.get_subnet(cloud_setup.subnet_id)
    eni_id = await new_eni(api, subnet.subnet_id, name="lifecycle")
    assert (await api.get_eni(eni_id)).status is EniState.AVAILABLE

    started = time.monotonic()
    await api.attach_eni(eni_id, vm)
    assert (await api.get_eni(eni_id)).status is EniState.ATTACHING
    eni = await wait_status(api, eni_id, EniState.INUSE)
    assert time.monotonic() - started >= delay * 0.9
    assert (eni.name, eni.subnet_id, eni.vpc_id, eni.zone, eni.instance_id) == \
        ("lifecycle", subnet.subnet_id, cloud_setup.vpc_id, subnet.zone, vm)
    assert MAC.match(eni.mac), eni.mac
    assert eni.primary_ip is not None and in_subnet([eni.primary_ip], subnet.cidr)
    assert (eni.secondary_ips, eni.security_group_ids, eni.description) == ([], tuple(SG), "contract test")
    assert eni.created_at
    assert await api.list_enis(vpc_id=cloud_setup.vpc_id, instance_id=vm) == [eni]
    await fails(ErrorReason.CLOUD_INVALID_STATE, api.delete_eni(eni_id))
    await fails(ErrorReason.CLOUD_INVALID_STATE, api.attach_eni(eni_id, vm))

    started = time.monotonic()
    await api.detach_eni(eni_id, vm)
    assert (await api.get_eni(eni_id)).status is EniState.DETACHING
    eni = await wait_status(api, eni_id, EniState.AVAILABLE)
    assert time.monotonic() - started >= delay * 0.9
    assert eni.instance_id is None
    assert await api.list_enis(vpc_id=cloud_setup.vpc_id, instance_id=vm) == []

    await api.delete_eni(eni_id)
    error = await fails(ErrorReason.CLOUD_NOT_FOUND, api.get_eni(eni_id))
    assert (error.details["api"], error.details["eni_id"], error.details["attempts"]) == ("get_eni", eni_id, 1)


async def test_an_eni_gets_the_primary_ip_it_asks_for_unless_that_ip_is_taken(api: VpcApi,
                                                                               cloud_setup: CloudSetup) -> None:
    hosts = list(ipaddress.ip_network((await api.get_subnet(cloud_setup.subnet_id)).cidr).hosts())
    wanted = str(hosts[-2])
    eni_id = await api.create_eni(name="fixed", subnet_id=cloud_setup.subnet_id, security_group_ids=SG,
                                  primary_ip=wanted)
    assert (await api.get_eni(eni_id)).primary_ip == wanted
    error = await fails(ErrorReason.IP_IN_USE, api.create_eni(name="again", subnet_id=cloud_setup.subnet_id,
                                                              security_group_ids=SG, primary_ip=wanted))
    assert (error.details["api"], error.details["attempts"]) == ("create_eni", 1)
    assert [e.eni_id for e in await api.list_enis(vpc_id=cloud_setup.vpc_id, name="fixed")] == [eni_id]
    assert await api.list_enis(vpc_id=cloud_setup.vpc_id, name="again") == []


UNKNOWN: dict[str, Callable[[VpcApi], Awaitable[Any]]] = {
    "get_eni": lambda api: api.get_eni("eni-unknown"),
    "delete_eni": lambda api: api.delete_eni("eni-unknown"),
    "get_instance": lambda api: api.get_instance("i-unknown"),
    "get_subnet": lambda api: api.get_subnet("sbn-unknown"),
    "list_route_rules": lambda api: api.list_route_rules("rt-unknown"),
}


@pytest.mark.parametrize("call", UNKNOWN)
async def test_asking_about_an_unknown_id_is_cloud_not_found(api: VpcApi, call: str) -> None:
    error = await fails(ErrorReason.CLOUD_NOT_FOUND, UNKNOWN[call](api))
    assert (error.details["api"], error.details["status"], error.details["attempts"]) == (call, 404, 1)


# ---- secondary IPs ---------------------------------------------------------------------------------------------


async def test_ten_ips_are_added_in_one_batch_distinct_and_inside_the_subnet(api: VpcApi,
                                                                            cloud_setup: CloudSetup) -> None:
    _, eni_id = await attached_eni(api, cloud_setup, memory_mib=32768)
    added = await api.add_private_ips(eni_id, count=MAX_IPS_PER_BATCH)
    eni = await api.get_eni(eni_id)
    assert len(added) == len(set(added)) == 10 and eni.primary_ip not in added
    assert in_subnet(added, (await api.get_subnet(eni.subnet_id)).cidr)
    assert sorted(eni.secondary_ips) == sorted(added)


async def test_fifteen_ips_are_split_into_batches_and_all_land(api: VpcApi, cloud_setup: CloudSetup) -> None:
    _, eni_id = await attached_eni(api, cloud_setup, memory_mib=32768)  # 16 IPs per ENI: exactly room for 15
    added = await api.add_private_ips(eni_id, count=15)
    assert len(set(added)) == 15
    assert sorted((await api.get_eni(eni_id)).secondary_ips) == sorted(added)


async def test_explicit_ips_are_added_as_asked(api: VpcApi, cloud_setup: CloudSetup) -> None:
    _, eni_id = await attached_eni(api, cloud_setup)
    hosts = list(ipaddress.ip_network((await api.get_subnet(cloud_setup.subnet_id)).cidr).hosts())
    wanted = [str(ip) for ip in hosts[-4:-1]]
    assert await api.add_private_ips(eni_id, ips=wanted) == wanted
    assert (await api.get_eni(eni_id)).secondary_ips == wanted
    error = await fails(ErrorReason.IP_IN_USE, api.add_private_ips(eni_id, ips=wanted[:1]))
    assert (error.details["cloud_code"], error.details["attempts"]) == ("PrivateIpInUseException", 1)
    await fails(ErrorReason.CLOUD_NOT_FOUND, api.remove_private_ips(eni_id, [str(hosts[-1])]))
    assert (await api.get_eni(eni_id)).secondary_ips == wanted


async def test_a_failed_batch_names_the_ips_the_batches_before_it_added(api: VpcApi,
                                                                       cloud_setup: CloudSetup) -> None:
    _, eni_id = await attached_eni(api, cloud_setup, memory_mib=32768)  # 16 IPs: the second batch of 10 fails
    error = await fails(ErrorReason.ENI_CAPACITY_EXCEED, api.add_private_ips(eni_id, count=20))
    added = error.details["added_ips"]
    assert len(added) == 10
    assert sorted((await api.get_eni(eni_id)).secondary_ips) == sorted(added)


async def test_removed_ips_leave_the_eni_and_go_back_to_the_subnet(api: VpcApi, cloud_setup: CloudSetup) -> None:
    _, eni_id = await attached_eni(api, cloud_setup, memory_mib=65536)
    before = (await api.get_subnet(cloud_setup.subnet_id)).available_ips
    added = await api.add_private_ips(eni_id, count=25)
    assert (await api.get_subnet(cloud_setup.subnet_id)).available_ips == before - 25
    await api.remove_private_ips(eni_id, added[:5])
    assert sorted((await api.get_eni(eni_id)).secondary_ips) == sorted(added[5:])
    await api.remove_private_ips(eni_id, added[5:])  # 20: two batches
    assert (await api.get_eni(eni_id)).secondary_ips == []
    assert (await api.get_subnet(cloud_setup.subnet_id)).available_ips == before


# ---- quotas ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("memory_mib", "ips_per_eni"), [
    (1024, 2), (2048, 8), (8192, 8), (32768, 16), (65536, 30), (131072, 40),
])
async def test_the_ips_an_eni_holds_follow_the_instance_memory(api: VpcApi, cloud_setup: CloudSetup,
                                                              memory_mib: int, ips_per_eni: int) -> None:
    _, eni_id = await attached_eni(api, cloud_setup, memory_mib=memory_mib)
    added = await api.add_private_ips(eni_id, count=ips_per_eni - 1)  # the primary IP counts
    assert len(added) == ips_per_eni - 1
    error = await fails(ErrorReason.ENI_CAPACITY_EXCEED, api.add_private_ips(eni_id, count=1))
    assert (error.details["cloud_code"], error.details["attempts"], error.details["added_ips"]) == \
        ("VmMemoryCanNotAttachMoreIpException", 1, [])
    assert len((await api.get_eni(eni_id)).private_ips) == ips_per_eni


async def test_an_instance_with_two_cpus_takes_two_enis_and_refuses_a_third(api: VpcApi,
                                                                           cloud_setup: CloudSetup) -> None:
    vm = await cloud_setup.instance(cpus=2)
    assert (await api.get_instance(vm)).eni_quota == 2
    enis = [await new_eni(api, cloud_setup.subnet_id) for _ in range(3)]
    for eni_id in enis[:2]:
        await api.attach_eni(eni_id, vm)
    error = await fails(ErrorReason.ENI_CAPACITY_EXCEED, api.attach_eni(enis[2], vm))
    assert (error.details["cloud_code"], error.details["attempts"]) == ("EniQuotaExceeded", 1)
    assert (await api.get_eni(enis[2])).status is EniState.AVAILABLE


async def test_get_instance_describes_the_instance(api: VpcApi, cloud_setup: CloudSetup) -> None:
    vm = await cloud_setup.instance(cpus=4, memory_mib=16384)
    instance = await api.get_instance(vm)
    subnet = await api.get_subnet(instance.subnet_id)
    assert (instance.instance_id, instance.instance_type, instance.cpus, instance.memory_mib, instance.zone,
            instance.vpc_id, instance.status, instance.secondary_ips) == \
        (vm, InstanceType.BCC, 4, 16384, cloud_setup.zone, cloud_setup.vpc_id, "Running", ())
    assert subnet.zone == cloud_setup.zone and in_subnet([instance.primary_ip], subnet.cidr)
    assert MAC.match(instance.primary_mac), instance.primary_mac


@pytest.mark.parametrize("cpus", [1, 4, 8, 16])
async def test_the_eni_quota_of_an_instance_is_its_cpus_up_to_eight(api: VpcApi, cloud_setup: CloudSetup,
                                                                   cpus: int) -> None:
    instance = await api.get_instance(await cloud_setup.instance(cpus=cpus))
    assert (instance.cpus, instance.eni_quota) == (cpus, min(cpus, 8))


async def test_a_full_subnet_answers_subnet_no_more_ip_without_retrying(api: VpcApi,
                                                                        cloud_setup: CloudSetup) -> None:
    subnet_id = await cloud_setup.subnet("10.1.0.0/29")  # 5 usable addresses
    assert (await api.get_subnet(subnet_id)).available_ips == 5
    eni_id = await new_eni(api, subnet_id)
    await api.add_private_ips(eni_id, count=4)
    assert (await api.get_subnet(subnet_id)).available_ips == 0
    error = await fails(ErrorReason.SUBNET_NO_MORE_IP, api.add_private_ips(eni_id, count=1))
    assert (error.details["cloud_code"], error.details["attempts"]) == ("SubnetHasNoMoreIpException", 1)
    error = await fails(ErrorReason.SUBNET_NO_MORE_IP, new_eni(api, subnet_id))
    assert (error.details["api"], error.details["attempts"]) == ("create_eni", 1)


# ---- throttling, credentials, faults ---------------------------------------------------------------------------


async def test_a_burst_over_the_cloud_rate_limit_succeeds_by_waiting_and_retrying(
        make_api: ApiFactory, cloud_setup: CloudSetup, sim_admin: SimAdmin) -> None:
    patient = make_api(rate_limits={CloudApi.ADD_PRIVATE_IPS: (1000, 1000)}, max_attempts=20,
                       backoff_base_s=0.1, backoff_max_s=0.5, retry_budget_s=20)
    eni_id = await new_eni(patient, cloud_setup.subnet_id)
    await sim_admin.set_faults(FaultConfig(rate_limits={"batch_add_private_ips": RateLimitSpec(rate_per_s=2,
                                                                                               burst=1)}))
    started = time.monotonic()
    added = await asyncio.gather(*(patient.add_private_ips(eni_id, count=1) for _ in range(4)))
    assert time.monotonic() - started >= 1.0  # 1 token at once, then one every 0.5 s: the cloud's limit bit
    ips = [ip for batch in added for ip in batch]
    assert len(set(ips)) == 4
    assert sorted((await patient.get_eni(eni_id)).secondary_ips) == sorted(ips)


async def test_throttling_beyond_the_retry_budget_surfaces_cloud_throttled(
        make_api: ApiFactory, cloud_setup: CloudSetup, sim_admin: SimAdmin) -> None:
    hurried = make_api(rate_limits={CloudApi.ADD_PRIVATE_IPS: (1000, 1000)}, max_attempts=3, retry_budget_s=0.5)
    eni_id = await new_eni(hurried, cloud_setup.subnet_id)
    await sim_admin.set_faults(FaultConfig(rate_limits={"batch_add_private_ips": RateLimitSpec(rate_per_s=0.1,
                                                                                               burst=1)}))
    await hurried.add_private_ips(eni_id, count=1)
    error = await fails(ErrorReason.CLOUD_THROTTLED, hurried.add_private_ips(eni_id, count=1))
    assert (error.details["cloud_code"], error.details["status"]) == ("RateLimit", 429)
    assert 1 < error.details["attempts"] <= 3


@pytest.mark.parametrize("wrong", ["secret_key", "access_key"])
async def test_wrong_credentials_fail_every_call_with_cloud_auth_failed(make_api: ApiFactory,
                                                                        cloud_setup: CloudSetup, wrong: str) -> None:
    intruder = make_api(**{wrong: "not-ours"})
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: intruder.get_subnet(cloud_setup.subnet_id), lambda: intruder.list_enis(vpc_id=cloud_setup.vpc_id),
        lambda: new_eni(intruder, cloud_setup.subnet_id), lambda: intruder.get_instance("i-00000001"),
        lambda: intruder.list_route_rules(cloud_setup.route_table_id)]
    for call in calls:
        error = await fails(ErrorReason.CLOUD_AUTH_FAILED, call())
        assert (error.details["cloud_code"], error.details["status"], error.details["attempts"]) == \
            ("AccessDenied", 403, 1)


@dataclass
class Scene:
    """Something to call every API on: an instance, an available ENI in the default subnet."""

    setup: CloudSetup
    vm: str
    eni_id: str


Call = Callable[[VpcApi, Scene], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "create_eni": lambda api, s: new_eni(api, s.setup.subnet_id),
    "batch_add_private_ips": lambda api, s: api.add_private_ips(s.eni_id, count=1),
    "attach_eni": lambda api, s: api.attach_eni(s.eni_id, s.vm),
    "get_eni": lambda api, s: api.get_eni(s.eni_id),
    "list_enis": lambda api, s: api.list_enis(vpc_id=s.setup.vpc_id),
    "get_subnet": lambda api, s: api.get_subnet(s.setup.subnet_id),
    "create_route_rule": lambda api, s: api.create_route_rule(
        route_table_id=s.setup.route_table_id, destination="172.16.9.0/24", next_hop_instance=s.vm,
        description="contract"),
}


@pytest.fixture
async def scene(api: VpcApi, cloud_setup: CloudSetup) -> Scene:
    return Scene(cloud_setup, await cloud_setup.instance(), await new_eni(api, cloud_setup.subnet_id))


@pytest.mark.parametrize(("sim_api", "code", "status", "reason"), [
    ("create_eni", "SubnetHasNoMoreIpException", 400, ErrorReason.SUBNET_NO_MORE_IP),
    ("batch_add_private_ips", "VmMemoryCanNotAttachMoreIpException", 400, ErrorReason.ENI_CAPACITY_EXCEED),
    ("attach_eni", "EniQuotaExceeded", 400, ErrorReason.ENI_CAPACITY_EXCEED),
    ("get_eni", "NoSuchObject", 404, ErrorReason.CLOUD_NOT_FOUND),
    ("attach_eni", "EniStatusInvalid", 409, ErrorReason.CLOUD_INVALID_STATE),
    ("batch_add_private_ips", "PrivateIpInUseException", 409, ErrorReason.IP_IN_USE),
    ("create_route_rule", "RouteRuleRepeated", 400, ErrorReason.ROUTE_RULE_REPEATED),
    ("create_route_rule", "RouteRuleQuotaExceeded", 400, ErrorReason.ROUTE_QUOTA_EXCEEDED),
    ("list_enis", "AccessDenied", 403, ErrorReason.CLOUD_AUTH_FAILED),
    ("get_subnet", "InvalidParameter", 400, ErrorReason.CLOUD_ERROR),
])
async def test_an_injected_cloud_error_surfaces_as_its_coded_reason(
        api: VpcApi, scene: Scene, sim_admin: SimAdmin, sim_api: str, code: str, status: int,
        reason: ErrorReason) -> None:
    await sim_admin.fail_next(sim_api, 1, code, status)
    error = await fails(reason, CALLS[sim_api](api, scene))
    assert (error.details["cloud_code"], error.details["status"], error.details["attempts"]) == (code, status, 1)
    assert error.details["request_id"]
    await CALLS[sim_api](api, scene)  # the fault was for one call only


@pytest.mark.parametrize("sim_api", ["get_eni", "create_eni", "list_enis"])
async def test_internal_errors_fewer_than_the_attempts_are_retried_away(
        make_api: ApiFactory, scene: Scene, sim_admin: SimAdmin, sim_api: str) -> None:
    api = make_api(max_attempts=4)
    await sim_admin.fail_next(sim_api, 3, "InternalError", 500)
    await CALLS[sim_api](api, scene)
    assert (await sim_admin.get_faults()).fail_next == []


async def test_internal_errors_on_every_attempt_surface_as_cloud_error(make_api: ApiFactory, scene: Scene,
                                                                      sim_admin: SimAdmin) -> None:
    api = make_api(max_attempts=4)
    await sim_admin.fail_next("get_eni", 4, "InternalError", 500)
    error = await fails(ErrorReason.CLOUD_ERROR, api.get_eni(scene.eni_id))
    assert (error.details["cloud_code"], error.details["status"], error.details["attempts"]) == \
        ("InternalError", 500, 4)
    assert (await sim_admin.get_faults()).fail_next == []
    assert (await api.get_eni(scene.eni_id)).eni_id == scene.eni_id


# ---- route rules -----------------------------------------------------------------------------------------------


async def test_a_created_route_rule_is_listed_with_its_next_hop_and_description(api: VpcApi,
                                                                              cloud_setup: CloudSetup) -> None:
    vm = await cloud_setup.instance()
    rt = cloud_setup.route_table_id
    rule_id = await api.create_route_rule(route_table_id=rt, destination="172.16.1.0/24", next_hop_instance=vm,
                                          description="pods of node-1")
    rules = await api.list_route_rules(rt)
    assert [(r.rule_id, r.route_table_id, r.destination, r.next_hop_id, r.next_hop_type, r.description)
            for r in rules] == [(rule_id, rt, "172.16.1.0/24", vm, "custom", "pods of node-1")]
    await api.delete_route_rule(rule_id)
    assert await api.list_route_rules(rt) == []


async def test_a_second_rule_for_the_same_destination_is_route_rule_repeated(api: VpcApi,
                                                                             cloud_setup: CloudSetup) -> None:
    vm, other = await cloud_setup.instance(), await cloud_setup.instance()
    rt = cloud_setup.route_table_id
    await api.create_route_rule(route_table_id=rt, destination="172.16.1.0/24", next_hop_instance=vm,
                                description="first")
    error = await fails(ErrorReason.ROUTE_RULE_REPEATED, api.create_route_rule(
        route_table_id=rt, destination="172.16.1.0/24", next_hop_instance=other, description="second"))
    assert error.details["attempts"] == 1
    assert [r.next_hop_id for r in await api.list_route_rules(rt)] == [vm]


async def test_the_route_quota_refuses_a_rule_until_one_is_deleted(api: VpcApi, cloud_setup: CloudSetup,
                                                                   sim_admin: SimAdmin) -> None:
    await sim_admin.set_settings(route_quota=2)
    vm = await cloud_setup.instance()
    rt = cloud_setup.route_table_id

    def create(n: int) -> Awaitable[str]:
        return api.create_route_rule(route_table_id=rt, destination=f"172.16.{n}.0/24", next_hop_instance=vm,
                                     description=f"node-{n}")

    first, _ = await create(1), await create(2)
    await fails(ErrorReason.ROUTE_QUOTA_EXCEEDED, create(3))
    await api.delete_route_rule(first)
    await create(3)
    assert sorted(r.destination for r in await api.list_route_rules(rt)) == ["172.16.2.0/24", "172.16.3.0/24"]


async def test_deleting_an_unknown_route_rule_is_cloud_not_found(api: VpcApi) -> None:
    await fails(ErrorReason.CLOUD_NOT_FOUND, api.delete_route_rule("rr-doesnotexist"))


# ---- the primary NIC of a BBC ----------------------------------------------------------------------------------


async def test_a_bbc_primary_nic_takes_39_secondary_ips_and_gives_them_back(api: VpcApi,
                                                                            cloud_setup: CloudSetup) -> None:
    bbc = await cloud_setup.instance(instance_type="BBC", cpus=48, memory_mib=262144)
    instance = await api.get_instance(bbc)
    assert (instance.secondary_ips, instance.eni_quota) == ((), 0)
    subnet_before = (await api.get_subnet(instance.subnet_id)).available_ips
    five = await api.add_primary_nic_ips(bbc, count=5)
    assert len(set(five)) == 5 and instance.primary_ip not in five
    assert (await api.get_instance(bbc)).secondary_ips == tuple(five)
    rest = await api.add_primary_nic_ips(bbc, count=34)  # 40 including the instance's own address
    error = await fails(ErrorReason.ENI_CAPACITY_EXCEED, api.add_primary_nic_ips(bbc, count=1))
    assert (error.details["cloud_code"], error.details["attempts"]) == ("VmMemoryCanNotAttachMoreIpException", 1)
    assert len((await api.get_instance(bbc)).secondary_ips) == 39
    await api.remove_primary_nic_ips(bbc, five)
    assert (await api.get_instance(bbc)).secondary_ips == tuple(rest)
    await api.remove_primary_nic_ips(bbc, rest)
    assert (await api.get_instance(bbc)).secondary_ips == ()
    assert (await api.get_subnet(instance.subnet_id)).available_ips == subnet_before


# ---- subnets and paging ----------------------------------------------------------------------------------------


async def test_subnets_are_listed_by_zone_and_match_get_subnet(api: VpcApi, cloud_setup: CloudSetup) -> None:
    subnet_id = await cloud_setup.subnet("10.2.0.0/24", zone="zoneB")
    in_b = await api.list_subnets(vpc_id=cloud_setup.vpc_id, zone="zoneB")
    assert [(s.subnet_id, s.cidr, s.zone, s.vpc_id, s.available_ips) for s in in_b] == \
        [(subnet_id, "10.2.0.0/24", "zoneB", cloud_setup.vpc_id, 253)]  # network, gateway, broadcast kept
    assert await api.get_subnet(subnet_id) == in_b[0]
    assert subnet_id not in [s.subnet_id for s in await api.list_subnets(vpc_id=cloud_setup.vpc_id, zone="zoneA")]
    everything = await api.list_subnets(vpc_id=cloud_setup.vpc_id)
    assert {s.subnet_id for s in everything} == {cloud_setup.subnet_id, subnet_id}


async def test_lists_longer_than_a_page_come_back_whole(make_api: ApiFactory, cloud_setup: CloudSetup) -> None:
    api = make_api(page_size=2)
    enis = {await new_eni(api, cloud_setup.subnet_id) for _ in range(5)}
    assert {e.eni_id for e in await api.list_enis(vpc_id=cloud_setup.vpc_id)} == enis
    subnets = {await cloud_setup.subnet(f"10.3.{n}.0/24") for n in range(3)}
    listed = await api.list_subnets(vpc_id=cloud_setup.vpc_id)
    assert {s.subnet_id for s in listed} == {cloud_setup.subnet_id, *subnets}
    vm = await cloud_setup.instance()
    rules = {await api.create_route_rule(route_table_id=cloud_setup.route_table_id, destination=f"172.16.{n}.0/24",
                                         next_hop_instance=vm, description="") for n in range(5)}
    assert {r.rule_id for r in await api.list_route_rules(cloud_setup.route_table_id)} == rules


# ---- restart ---------------------------------------------------------------------------------------------------


async def test_a_restarted_cloud_answers_exactly_as_before_and_never_reuses_an_id(
        api: VpcApi, make_api: ApiFactory, cloud_setup: CloudSetup, vpc_sim: SimServer, tmp_path: Path) -> None:
    vm, eni_id = await attached_eni(api, cloud_setup, memory_mib=16384)
    await api.add_private_ips(eni_id, count=4)
    spare = await new_eni(api, await cloud_setup.subnet("10.4.0.0/24"))
    gone = await new_eni(api, cloud_setup.subnet_id)
    await api.delete_eni(gone)
    await api.create_route_rule(route_table_id=cloud_setup.route_table_id, destination="172.16.1.0/24",
                                next_hop_instance=vm, description="node-1")

    async def snapshot(cloud: VpcApi) -> list[Any]:
        return [await cloud.list_enis(vpc_id=cloud_setup.vpc_id), await cloud.get_eni(eni_id),
                await cloud.get_eni(spare), await cloud.get_instance(vm),
                await cloud.list_subnets(vpc_id=cloud_setup.vpc_id),
                await cloud.list_route_rules(cloud_setup.route_table_id)]

    before = await snapshot(api)
    await vpc_sim.stop()
    async with SimServer(sim_fixtures.sim_settings(tmp_path)) as restarted:
        again = make_api(server=restarted)
        assert await snapshot(again) == before
        new_id = await new_eni(again, cloud_setup.subnet_id)
        assert new_id not in {eni_id, spare, gone}

"""Integration tier: the cloud calls route_manager adds to the port (`get_vpc`, `get_route_table`), through the
production adapter against the simulator over HTTP."""

from __future__ import annotations

import pytest

from cloud.bce import BceSettings, BceVpcApi
from schemas.errors import CceError, ErrorReason
from services.vpc_sim.server import SimServer

pytestmark = pytest.mark.integration


def api_for(sim: SimServer) -> BceVpcApi:
    return BceVpcApi(BceSettings(endpoint=sim.url, access_key=sim.access_key, secret_key=sim.secret_key,
                                 backoff_base_s=0.01, backoff_max_s=0.02))


async def test_the_vpc_reports_its_cidr_and_its_route_table(vpc_sim: SimServer) -> None:
    api = api_for(vpc_sim)
    vpc = await api.get_vpc(vpc_sim.vpc_id)
    assert (vpc.vpc_id, vpc.cidr) == (vpc_sim.vpc_id, "10.0.0.0/8")
    table = await api.get_route_table(vpc_id=vpc_sim.vpc_id)
    assert table.startswith("rt-")
    assert await api.list_route_rules(table) == []


async def test_an_unknown_vpc_is_not_found(vpc_sim: SimServer) -> None:
    with pytest.raises(CceError) as info:
        await api_for(vpc_sim).get_vpc("vpc-nope")
    assert info.value.reason is ErrorReason.CLOUD_NOT_FOUND

"""Component tier: the eni_manager double that ipam's tests rely on writes records as the contract says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chassis.bus import Bus
from chassis.kv import Store
from schemas.base import subject_token
from schemas.errors import ErrorReason
from schemas.records import (
    Eni,
    EniProvision,
    EniState,
    NetResourceSet,
    NodePool,
    NodeSpec,
    PoolDemand,
    ReleaseMark,
    ReleaseState,
)
from schemas.subjects import ENIS, NODES, POOLS, PROVISION
from tests.eni_double import EniDouble, ips_per_eni_for, wait_until

pytestmark = pytest.mark.integration
NODE = "node-1"


@pytest.fixture
async def double(bus: Bus) -> AsyncIterator[EniDouble]:
    d = await EniDouble(bus, max_enis=2, ips_per_eni=4).start()
    yield d
    await d.close()


async def test_an_attached_eni_is_recorded_in_use_with_a_primary_and_its_secondaries(double: EniDouble,
                                                                                    bus: Bus) -> None:
    first = await double.attach_eni(NODE, 3)
    second = await double.attach_eni(NODE, 1, state=EniState.ATTACHING)
    store = Store(await bus.bucket(ENIS), Eni, ENIS.name)
    stored = (await store.get(first.eni_id))
    assert stored is not None and stored.value == first
    assert first.state is EniState.INUSE and first.primary_ip is not None and len(first.secondary_ips) == 3
    assert (first.index, second.index) == (1, 2)
    every = [p.ip for e in (first, second) for p in e.private_ips]
    assert len(every) == len(set(every)) == 6
    assert double.secondaries(NODE) == [str(ip) for ip in first.secondary_ips]  # attaching ENIs do not count


async def test_ips_go_to_enis_with_room_then_new_enis_up_to_the_quota(double: EniDouble, bus: Bus) -> None:
    await double.attach_eni(NODE, 1)
    assert await double.add_ips(NODE, 4) == 4  # 2 fill ENI 1 (4 IPs per ENI, primary included), 2 on a new one
    assert [len(e.secondary_ips) for e in double.enis_of(NODE)] == [3, 2]
    assert await double.add_ips(NODE, 5) == 1  # the quota of 2 ENIs is reached
    provisions = Store(await bus.bucket(PROVISION), EniProvision, PROVISION.name)
    prov = await provisions.get(subject_token(NODE))
    assert prov is not None and prov.value.last_error is ErrorReason.ENI_CAPACITY_EXCEED


def test_the_double_uses_the_memory_table() -> None:
    assert [ips_per_eni_for(m) for m in (1024, 8192, 16384, 65536, 131072)] == [2, 8, 16, 30, 40]


async def test_following_demand_tops_up_deletes_confirmed_ips_and_removes_a_leaving_node(bus: Bus) -> None:
    double = await EniDouble(bus, batch=3).start()
    nodes = Store(await bus.bucket(NODES), NetResourceSet, NODES.name)
    pools = Store(await bus.bucket(POOLS), NodePool, POOLS.name)
    spec = NodeSpec(instance_id="i-1", instance_type="BCC", zone="zoneA", cpus=4, memory_mib=8192)
    await nodes.create(subject_token(NODE), NetResourceSet(name=NODE, spec=spec))
    await pools.create(subject_token(NODE), NodePool(node=NODE, demand=PoolDemand(target_ips=10)))
    double.follow_demand()
    try:
        await wait_until(lambda: len(double.secondaries(NODE)) == 10, what="10 secondaries")
        assert double.quota(NODE) == (4, 8)  # from the node's spec: min(cpus, 8) ENIs, 8 IPs at 8 GiB
        victim = double.secondaries(NODE)[0]
        eni_id = double.enis_of(NODE)[0].eni_id
        await pools.mutate(subject_token(NODE), lambda p: p and p.model_copy(update={
            "releasing": {victim: ReleaseMark(eni_id=eni_id, state=ReleaseState.CONFIRMED)},
            "demand": PoolDemand(target_ips=9)}))
        await wait_until(lambda: victim not in double.secondaries(NODE), what="confirmed IP deleted")
        assert double.deleted_ips == [victim] and len(double.secondaries(NODE)) == 9
        await nodes.mutate(subject_token(NODE), lambda n: n and n.model_copy(
            update={"status": n.status.model_copy(update={"removing": True})}))
        provisions = Store(await bus.bucket(PROVISION), EniProvision, PROVISION.name)
        enis = Store(await bus.bucket(ENIS), Eni, ENIS.name)

        async def gone() -> bool:
            return not await enis.keys() and await provisions.get(subject_token(NODE)) is None

        await wait_until(gone, what="ENIs and provisioning record removed")
    finally:
        await double.close()

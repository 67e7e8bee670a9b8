"""Integration tier: leader election on a KV lease, in-process and across real processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
from nats.js.kv import KeyValue

from chassis.bus import Bus
from chassis.kv import Store
from chassis.leader import LeaderElector
from schemas.records import Lease
from schemas.subjects import ENI_MANAGER, LEASES
from tests.kv_gates import FirstReadWaits

pytestmark = pytest.mark.integration
TTL = 1.5


async def lease_store(bus: Bus) -> Store[Lease]:
    return Store(await bus.bucket(LEASES), Lease, LEASES.name)


async def test_one_leader_among_many_and_it_stays(bus: Bus) -> None:
    store = await lease_store(bus)
    electors = [LeaderElector(store, "svc", f"r{i}", TTL) for i in range(3)]
    tasks = [asyncio.create_task(e.run()) for e in electors]
    try:
        await asyncio.wait_for(_any_leader(electors), 5)
        first = [e.holder for e in electors if e.is_leader]
        await asyncio.sleep(TTL * 3)  # several renewals: nobody else takes over a live leader
        assert [e.holder for e in electors if e.is_leader] == first
        assert len(first) == 1
    finally:
        for t in tasks:
            t.cancel()


async def test_a_candidate_that_found_no_lease_never_overwrites_one_taken_meanwhile(bus: Bus) -> None:
    """Replicas started at once all find no lease; one takes it while another is between its read and its write:
    that one stays a standby. (A second read of the key's revision after finding it empty let the late candidate
    overwrite the winner's fresh lease: two eni_manager leaders created two ENIs for one need.)"""
    late_kv = FirstReadWaits(await bus.bucket(LEASES))
    late = LeaderElector(Store(cast(KeyValue, late_kv), Lease, LEASES.name), "svc", "late", TTL)
    early = LeaderElector(await lease_store(bus), "svc", "early", TTL)
    step = asyncio.create_task(late.step())
    await late_kv.read.wait()
    assert await early.step()
    late_kv.go.set()
    assert not await step
    assert (early.is_leader, late.is_leader) == (True, False)
    assert await early.step()  # and the winner's next renewal finds its own lease


async def _any_leader(electors: list[LeaderElector]) -> None:
    while not any(e.is_leader for e in electors):
        await asyncio.sleep(0.02)


async def test_standby_takes_over_a_silent_leader_after_the_ttl(bus: Bus) -> None:
    store = await lease_store(bus)
    leader = LeaderElector(store, "svc", "a", TTL)
    standby = LeaderElector(store, "svc", "b", TTL)
    assert await leader.step()
    assert not await standby.step()
    loop = asyncio.get_running_loop()
    silent_since = loop.time()
    task = asyncio.create_task(standby.run())
    await asyncio.wait_for(standby.wait_leader(), TTL * 3)
    took = loop.time() - silent_since
    task.cancel()
    assert TTL <= took < TTL * 1.5
    # the old leader finds out at its next renewal and steps down
    assert not await leader.step()
    assert not leader.is_leader


async def test_resign_hands_over_at_once(bus: Bus) -> None:
    store = await lease_store(bus)
    leader = LeaderElector(store, "svc", "a", TTL)
    standby = LeaderElector(store, "svc", "b", TTL)
    assert await leader.step()
    await leader.resign()
    assert await standby.step()


async def test_restarted_holder_takes_its_own_lease_back(bus: Bus) -> None:
    store = await lease_store(bus)
    assert await LeaderElector(store, "svc", "a", TTL).step()
    assert await LeaderElector(store, "svc", "a", TTL).step()


def _spawn(url: str, sid: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CCE_NATS_URL": url, "CCE_SERVICE_ID": sid, "CCE_LEASE_TTL_S": str(TTL),
           "CCE_HTTP_PORT": "0", "CCE_LOG_LEVEL": "info",
           # a local port nothing listens on: the election is under test, not the cloud
           "CCE_CLOUD_ENDPOINT": "http://127.0.0.1:9", "CCE_CLOUD_ACCESS_KEY": "ak", "CCE_CLOUD_SECRET_KEY": "sk"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "services.eni_manager"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def _holder(store: Store[Lease]) -> str | None:
    item = await store.get(ENI_MANAGER)
    return item.value.holder if item else None


async def test_leader_killed_with_sigkill_is_replaced_within_the_lease_ttl(
    bus: Bus, clean_nats: str, tmp_path: Path
) -> None:
    store = await lease_store(bus)
    procs = {sid: _spawn(clean_nats, sid, tmp_path / f"{sid}.log") for sid in ("em-a", "em-b")}
    try:
        deadline = time.monotonic() + 30
        while (holder := await _holder(store)) is None:
            assert time.monotonic() < deadline, "no leader elected"
            await asyncio.sleep(0.05)
        # wait until the standby is up too (it has logged its start)
        other = "em-b" if holder == "em-a" else "em-a"
        while b"service started" not in (tmp_path / f"{other}.log").read_bytes():
            assert time.monotonic() < deadline, "standby did not start"
            await asyncio.sleep(0.05)
        before = await store.get(ENI_MANAGER)
        assert before is not None
        procs[holder].send_signal(signal.SIGKILL)
        procs[holder].wait()
        killed_at = time.monotonic()
        while (await _holder(store)) != other:
            assert time.monotonic() - killed_at < TTL * 3, "standby did not take over"
            await asyncio.sleep(0.02)
        took = time.monotonic() - killed_at
        # the lease was renewed at most TTL/3 before the kill, so the takeover lands within one TTL
        # of the kill (plus the standby's poll step and process scheduling on a loaded machine)
        assert took < TTL * 2, f"handover took {took:.2f}s"
        while b"became leader" not in (tmp_path / f"{other}.log").read_bytes():  # logged after the lease write
            assert time.monotonic() - killed_at < TTL * 3, "the new leader did not log its election"
            await asyncio.sleep(0.02)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

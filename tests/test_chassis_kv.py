"""Integration tier: typed KV records with compare-and-set, read-modify-write retries, and the watch cache."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from nats.js.api import DiscardPolicy
from nats.js.kv import KeyValue
from pydantic import Field

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import KEEP, KvCache, Store
from schemas.base import Contract
from schemas.errors import CceError, ErrorReason
from schemas.subjects import NODES, Bucket
from tests.kv_gates import FirstReadWaits

pytestmark = pytest.mark.integration


class Counter(Contract):
    value: int = Field(ge=0)
    writers: list[str] = Field(default_factory=list)


COUNTERS = Bucket("test_counters", Counter, "test", "<name>")


@pytest.fixture
async def store(bus: Bus) -> Store[Counter]:
    return Store(await bus.bucket(COUNTERS), Counter, COUNTERS.name)


async def test_create_refuses_an_existing_key(store: Store[Counter]) -> None:
    await store.create("a", Counter(value=1))
    with pytest.raises(CceError) as info:
        await store.create("a", Counter(value=2))
    assert info.value.reason is ErrorReason.CONFLICT
    assert (await store.get("a")).value.value == 1  # type: ignore[union-attr]


async def test_stale_revision_is_a_conflict_never_an_overwrite(store: Store[Counter]) -> None:
    first = await store.create("a", Counter(value=1))
    await store.update("a", Counter(value=2), first.revision)
    with pytest.raises(CceError) as info:
        await store.update("a", Counter(value=99), first.revision)
    assert info.value.reason is ErrorReason.CONFLICT
    assert (await store.get("a")).value.value == 2  # type: ignore[union-attr]


async def test_concurrent_mutations_all_land_through_retries(bus: Bus, store: Store[Counter]) -> None:
    await store.create("hits", Counter(value=0))
    # separate Store handles, as separate replicas would have
    stores = [Store(await bus.bucket(COUNTERS), Counter, COUNTERS.name) for _ in range(4)]

    def bump(name: str):  # type: ignore[no-untyped-def]
        def change(cur: Counter | None) -> Counter:
            assert cur is not None
            return Counter(value=cur.value + 1, writers=[*cur.writers, name])
        return change

    await asyncio.gather(*(stores[i % 4].mutate("hits", bump(f"w{i}")) for i in range(40)))
    final = await store.get("hits")
    assert final is not None
    assert final.value.value == 40
    assert sorted(final.value.writers) == sorted(f"w{i}" for i in range(40))


@pytest.mark.parametrize("deleted_before", [False, True])
async def test_a_key_created_between_a_writers_read_and_write_is_never_overwritten(
        bus: Bus, store: Store[Counter], deleted_before: bool) -> None:
    """Two writers find the key absent (new, or deleted: a tombstone); one creates it while the other is between
    its read and its write: that one conflicts and retries on the record it never read, never overwrites it."""
    if deleted_before:
        await store.create("fresh", Counter(value=100))
        await store.delete("fresh")
    late_kv = FirstReadWaits(await bus.bucket(COUNTERS))
    late = Store(cast(KeyValue, late_kv), Counter, COUNTERS.name)

    def bump(name: str):  # type: ignore[no-untyped-def]
        def change(cur: Counter | None) -> Counter:
            cur = cur or Counter(value=0)
            return Counter(value=cur.value + 1, writers=[*cur.writers, name])
        return change

    slow = asyncio.create_task(late.mutate("fresh", bump("late")))
    await late_kv.read.wait()
    await store.mutate("fresh", bump("early"))
    late_kv.go.set()
    await slow
    final = await store.get("fresh")
    assert final is not None
    assert (final.value.value, final.value.writers) == (2, ["early", "late"])


async def test_mutate_can_keep_delete_and_create(store: Store[Counter]) -> None:
    created = await store.mutate("k", lambda cur: cur or Counter(value=5))
    assert created is not None and created.value.value == 5
    kept = await store.mutate("k", lambda cur: KEEP)
    assert kept is not None and kept.revision == created.revision
    assert await store.mutate("k", lambda cur: None) is None
    assert await store.get("k") is None
    again = await store.mutate("k", lambda cur: cur or Counter(value=7))
    assert again is not None and again.value.value == 7


async def test_delete_of_a_missing_key_succeeds(store: Store[Counter]) -> None:
    await store.delete("never-there")


async def test_corrupt_record_is_reported_not_fatal(bus: Bus, store: Store[Counter]) -> None:
    kv = await bus.bucket(COUNTERS)
    await kv.put("bad", b"{not json")
    assert await store.get("bad") is None
    fixed = await store.mutate("bad", lambda cur: cur or Counter(value=1))
    assert fixed is not None and fixed.value.value == 1


async def test_list_returns_records_under_a_prefix(store: Store[Counter]) -> None:
    for key in ("node-1.a", "node-1.b", "node-2.a"):
        await store.create(key, Counter(value=1))
    assert sorted(await store.list("node-1.")) == ["node-1.a", "node-1.b"]
    assert len(await store.list()) == 3


async def test_cache_follows_writes_and_deletes(store: Store[Counter]) -> None:
    seen: list[tuple[str, int | None]] = []
    await store.create("pre", Counter(value=1))
    cache = KvCache(store, on_change=lambda k, v: seen.append((k, v.value.value if v else None)))
    await cache.start()
    assert cache.get("pre") == Counter(value=1)
    await store.create("x", Counter(value=2))
    await cache.wait_for(lambda items: "x" in items, 3)
    await store.delete("pre")
    await cache.wait_for(lambda items: "pre" not in items, 3)
    assert seen == [("x", 2), ("pre", None)]
    await cache.stop()


async def test_cache_restart_rebuilds_and_reports_what_changed_meanwhile(store: Store[Counter]) -> None:
    seen: list[tuple[str, int | None]] = []
    await store.create("a", Counter(value=1))
    await store.create("b", Counter(value=1))
    cache = KvCache(store, on_change=lambda k, v: seen.append((k, v.value.value if v else None)))
    await cache.start()
    await cache.stop()
    await store.delete("a")
    current = await store.get("b")
    assert current is not None
    await store.update("b", Counter(value=2), current.revision)
    await cache.restart()
    await cache.wait_for(lambda items: "a" not in items and items["b"].value.value == 2, 3)
    assert sorted(seen, key=str) == [("a", None), ("b", 2)]
    await cache.stop()


async def test_a_filtered_cache_holds_only_its_keys_and_the_records_it_keeps(store: Store[Counter]) -> None:
    """A node's view: only `node-1.>` keys, and only records it accepts; one that stops being accepted is a deletion
    to it, and another node's writes never reach its handler."""
    seen: list[tuple[str, int | None]] = []
    for key, value in (("node-1.a", 1), ("node-1.b", 50), ("node-2.a", 1), ("node-10.a", 1)):
        await store.create(key, Counter(value=value))
    cache = KvCache(store, on_change=lambda k, v: seen.append((k, v.value.value if v else None)), keys="node-1.>",
                    keep=lambda c: c.value < 10)
    await cache.start()
    assert set(cache.items) == {"node-1.a"}
    await store.create("node-2.b", Counter(value=3))
    await store.create("node-1.c", Counter(value=3))
    await cache.wait_for(lambda items: "node-1.c" in items, 3)
    current = await store.get("node-1.a")
    assert current is not None
    await store.update("node-1.a", Counter(value=99), current.revision)  # no longer one it keeps
    await cache.wait_for(lambda items: "node-1.a" not in items, 3)
    assert seen == [("node-1.c", 3), ("node-1.a", None)] and set(cache.items) == {"node-1.c"}
    await cache.stop()


async def test_opening_a_bucket_again_leaves_its_kv_layout_alone(settings: ChassisSettings) -> None:
    """Bringing a bucket to the contract touches only what the contract says (history, replicas, description):
    never nats-py's KV layout (discard new, duplicate window), which an update would break."""
    first = await Bus.connect(settings, name="first")
    second = await Bus.connect(settings, name="second")
    try:
        await first.bucket(NODES)
        before = (await first.js.stream_info(NODES.stream)).config
        await second.bucket(NODES)
        after = (await second.js.stream_info(NODES.stream)).config
        assert after.discard == before.discard == DiscardPolicy.NEW
        assert after.duplicate_window == before.duplicate_window
    finally:
        await first.close()
        await second.close()


async def test_a_stream_the_server_cannot_store_yet_is_asked_for_again_and_other_server_errors_are_raised(
        settings: ChassisSettings) -> None:
    """JetStream answers 'error creating store for stream' (10049) while a deleted stream of the same name is still
    being removed: the bus asks again. Any other server error is the caller's."""
    from nats.js.errors import ServerError

    bus = await Bus.connect(settings, name="test")
    try:
        real, calls = bus.js.add_stream, []

        async def flaky(config: object = None, **params: object) -> object:
            calls.append(config)
            if len(calls) == 1:
                raise ServerError(code=500, err_code=10049, description="error creating store for stream")
            return await real(config, **params)  # type: ignore[arg-type]

        bus.js.add_stream = flaky  # type: ignore[method-assign]
        await bus.ensure_events_stream()
        assert len(calls) == 2
        assert await bus.js.stream_info(cast(str, calls[1].name))  # type: ignore[attr-defined]

        async def broken(config: object = None, **params: object) -> object:
            raise ServerError(code=500, err_code=10077, description="insufficient resources")

        bus.js.add_stream = broken  # type: ignore[method-assign]
        with pytest.raises(ServerError):
            await bus.bucket(Bucket("cce_test_unmade", Counter, "test", "<key>"))
    finally:
        await bus.close()

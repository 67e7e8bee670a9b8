"""Integration tier: typed KV records with compare-and-set, read-modify-write retries, and the watch cache."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import Field

from chassis.bus import Bus
from chassis.kv import KEEP, KvCache, Store
from schemas.base import Contract
from schemas.errors import CceError, ErrorReason
from schemas.subjects import Bucket

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

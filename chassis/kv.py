"""Typed records in JetStream KV buckets: compare-and-set writes, read-modify-write with retry, a watch cache."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from prometheus_client import Counter
from pydantic import ValidationError

from chassis.logs import get_logger
from schemas.base import Contract
from schemas.errors import CceError, ErrorReason

log = get_logger("chassis.kv")
CAS_CONFLICTS = Counter("cce_kv_cas_conflicts_total", "compare-and-set writes refused because the record had "
                        "changed (the writer re-reads and decides again)", ["bucket"])

T = TypeVar("T", bound=Contract)


@dataclass(frozen=True)
class Versioned(Generic[T]):
    key: str
    value: T
    revision: int


# What the bus says when it cannot answer now: no connection, no JetStream leader yet, no reply in time.
BUS_TROUBLE: tuple[type[BaseException], ...] = (
    TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.ConnectionDrainingError, nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError, nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
)
READ_RETRIES = 8  # a direct get nobody answers, asked again over ~2 s


class _Keep:
    """Returned by a mutate function to leave the record as it is."""


KEEP = _Keep()


def conflict(bucket: str, key: str, detail: str = "") -> CceError:
    return CceError(ErrorReason.CONFLICT, f"{bucket}/{key} changed concurrently {detail}".strip(),
                    bucket=bucket, key=key)


def cas_conflict(bucket: str, key: str, detail: str = "") -> CceError:
    """A compare-and-set the server refused (someone wrote first): counted, then reported as Conflict."""
    CAS_CONFLICTS.labels(bucket).inc()
    return conflict(bucket, key, detail)


class Store(Generic[T]):
    """A bucket holding records of one contract type. Every write is compare-and-set on the revision."""

    def __init__(self, kv: KeyValue, model: type[T], bucket: str) -> None:
        self.kv = kv
        self.model = model
        self.bucket = bucket

    def _decode(self, key: str, data: bytes | None, revision: int) -> Versioned[T] | None:
        try:
            return Versioned(key, self.model.model_validate_json(data or b""), revision)
        except ValidationError as err:
            # A corrupt record is reported, never fatal: the writer will overwrite it by CAS.
            log.error("undecodable record", bucket=self.bucket, key=key, revision=revision,
                      error=str(err).splitlines()[0])
            return None

    async def _read(self, key: str) -> KeyValue.Entry | None:
        """The key's latest entry. A direct get nobody answers (a replicated bucket's members are electing a
        leader or catching up: for a moment no member serves reads) is asked again for a short while; a read
        changes nothing, so asking again is safe."""
        for attempt in range(READ_RETRIES):
            try:
                return await self.kv.get(key)
            except KeyNotFoundError:
                return None
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05 * (attempt + 1))
            except BUS_TROUBLE:
                break
        try:
            with self._bus_trouble("get", key):
                return await self.kv.get(key)
        except KeyNotFoundError:
            return None

    async def get(self, key: str) -> Versioned[T] | None:
        entry = await self._read(key)
        return None if entry is None else self._decode(key, entry.value, entry.revision or 0)

    async def latest(self, key: str) -> tuple[Versioned[T] | None, int | None]:
        """The key's record and latest revision from one read: a record that does not decode is (None, revision),
        so a writer can overwrite it by CAS; an absent or deleted key is (None, None), written with `create`. (Two
        reads, the record then the revision, would let a writer in between be overwritten unseen.)"""
        entry = await self._read(key)
        if entry is None:
            return None, None
        revision = entry.revision or 0
        return self._decode(key, entry.value, revision), revision

    async def last_revision(self) -> int:
        """The bucket's latest revision (its stream's last sequence): every record written so far has a revision
        at most this, every later write one above it."""
        with self._bus_trouble("status", "-"):
            status = await self.kv.status()
        return int(status.stream_info.state.last_seq or 0)

    async def create(self, key: str, value: T) -> Versioned[T]:
        """Write only when the key does not exist (or was deleted); else Conflict."""
        try:
            with self._bus_trouble("create", key):
                rev = await self.kv.create(key, value.model_dump_json().encode())
        except KeyWrongLastSequenceError as err:
            raise cas_conflict(self.bucket, key, "(exists)") from err
        return Versioned(key, value, rev)

    async def update(self, key: str, value: T, revision: int) -> Versioned[T]:
        """Write only when the key's latest revision is `revision`; else Conflict."""
        try:
            with self._bus_trouble("update", key):
                rev = await self.kv.update(key, value.model_dump_json().encode(), last=revision)
        except KeyWrongLastSequenceError as err:
            raise cas_conflict(self.bucket, key) from err
        return Versioned(key, value, rev)

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete; with `revision`, only if unchanged since. Deleting a missing key succeeds."""
        try:
            with self._bus_trouble("delete", key):
                await self.kv.delete(key, last=revision)
        except KeyWrongLastSequenceError as err:
            raise cas_conflict(self.bucket, key) from err

    @contextlib.contextmanager
    def _bus_trouble(self, what: str, key: str) -> Iterator[None]:
        """The bus not answering (a reconnect, a JetStream leader being elected) is a coded, retryable Timeout: the
        write may or may not have happened, so callers repeat it with the same idempotency key."""
        try:
            yield
        except BUS_TROUBLE as err:
            raise CceError(ErrorReason.TIMEOUT, f"{self.bucket}/{key}: {what} not answered ({type(err).__name__})",
                           bucket=self.bucket, key=key) from None

    async def mutate(
        self,
        key: str,
        change: Callable[[T | None], T | _Keep | None],
        attempts: int = 30,
    ) -> Versioned[T] | None:
        """Read-modify-write: `change` gets a private copy of the current value (None if absent) and
        returns the new value, None to delete, or KEEP. A conflict re-reads and calls `change` again."""
        for attempt in range(attempts):
            current, revision = await self.latest(key)
            proposed = change(current.value.model_copy(deep=True) if current else None)
            try:
                if isinstance(proposed, _Keep):
                    return current
                if proposed is None:
                    if revision is not None:
                        await self.delete(key, revision)
                    return None
                if revision is None:
                    return await self.create(key, proposed)
                return await self.update(key, proposed, revision)
            except CceError as err:
                if err.reason is not ErrorReason.CONFLICT:
                    raise
                log.debug("cas conflict, re-reading", bucket=self.bucket, key=key, attempt=attempt)
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise conflict(self.bucket, key, f"after {attempts} attempts")

    async def list(self, prefix: str = "") -> dict[str, Versioned[T]]:
        """Every decodable record, optionally under a key prefix ending in '.'."""
        pattern = f"{prefix}>" if prefix else ">"
        # a short inactivity threshold: the server drops this one-shot consumer soon after we stop reading
        watcher = await self.kv.watch(pattern, inactive_threshold=2.0)
        out: dict[str, Versioned[T]] = {}
        seen = 0  # messages read, delete markers included (each one the consumer delivered)
        try:
            while True:
                entry = await watcher.updates(timeout=5.0)
                if entry is None:
                    if await initial_values_read(watcher, seen):
                        break
                    continue
                seen += 1
                if entry.operation not in ("DEL", "PURGE"):
                    item = self._decode(entry.key, entry.value, entry.revision or 0)
                    if item is not None:
                        out[entry.key] = item
                if not entry.delta:
                    break
        finally:
            await watcher.stop()
        return out

    async def keys(self) -> builtins.list[str]:
        try:
            return builtins.list(await self.kv.keys())
        except NoKeysError:
            return []


async def initial_values_read(watcher: Any, seen: int) -> bool:
    """Whether a watch's "no more initial values" marker means it. nats-py queues the marker when the consumer
    reports nothing pending, which is also true when the server has delivered messages this client has not
    processed yet: the marker can come first. The end is only the end when every delivered message was read."""
    sub = watcher._sub  # the watcher exposes no other way to ask
    return sub is None or seen >= (await sub.consumer_info()).delivered.consumer_seq


ChangeHandler = Callable[[str, "Versioned[T] | None"], Awaitable[None] | None]


class KvCache(Generic[T]):
    """An in-memory view of a bucket kept current by a watch; rebuilt from scratch after a reconnect.

    `on_change(key, item_or_None)` is called for every change after the first full load. `keys` watches only the
    keys that filter names (`node-1.>`, `node-1`: a node's own records, so what a node holds does not grow with
    the cluster); `keep` holds only the records it accepts (one that stops being accepted is a deletion here).
    """

    def __init__(self, store: Store[T], on_change: ChangeHandler[T] | None = None, *, keys: str | None = None,
                 keep: Callable[[T], bool] | None = None) -> None:
        self.store = store
        self.items: dict[str, Versioned[T]] = {}
        self.keys = keys
        self._keep = keep
        self._on_change = on_change
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def get(self, key: str) -> T | None:
        item = self.items.get(key)
        return item.value if item else None

    def values(self) -> list[T]:
        return [v.value for v in self.items.values()]

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kv-cache-{self.store.bucket}")
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    async def restart(self) -> None:
        """Re-watch from scratch (after a reconnect): the next initial load replaces the view."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = asyncio.create_task(self._run(), name=f"kv-cache-{self.store.bucket}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_for(self, predicate: Callable[[dict[str, Versioned[T]]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.items))

    async def _emit(self, key: str, item: Versioned[T] | None) -> None:
        if self._on_change is not None:
            result = self._on_change(key, item)
            if result is not None:
                await result
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("kv watch failed, re-watching", bucket=self.store.bucket, error=repr(err))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _watch_once(self) -> None:
        watcher = await (self.store.kv.watch(self.keys) if self.keys else self.store.kv.watchall())
        loading: dict[str, Versioned[T]] | None = {}
        seen = 0  # messages read while loading (delete markers included)
        marker = False  # nats-py said "no more initial values" (maybe too early: see initial_values_read)
        try:
            while True:
                # no wait_for here: on Python 3.11 it can swallow the cancellation that stops this loop
                entry = await anext(watcher)
                if loading is not None:
                    if entry is None:
                        marker = True
                    else:
                        seen += 1
                        self._load(loading, entry)
                    if marker and (entry is None or not entry.delta) and await initial_values_read(watcher, seen):
                        await self._replace(loading)
                        loading = None
                    continue
                if entry is None:
                    continue
                item = self._decode(entry)
                if item is None:
                    if self.items.pop(entry.key, None) is not None:
                        await self._emit(entry.key, None)
                else:
                    self.items[entry.key] = item
                    await self._emit(entry.key, item)
        finally:
            await watcher.stop()

    def _decode(self, entry: Any) -> Versioned[T] | None:
        """The entry's record; None when deleted, undecodable or not one this view keeps."""
        if entry.operation in (KV_DEL, KV_PURGE):
            return None
        item = self.store._decode(entry.key, entry.value, entry.revision or 0)
        return None if item is None or (self._keep is not None and not self._keep(item.value)) else item

    def _load(self, loading: dict[str, Versioned[T]], entry: Any) -> None:
        item = self._decode(entry)
        if item is not None:
            loading[entry.key] = item
        else:
            loading.pop(entry.key, None)

    async def _replace(self, snapshot: dict[str, Versioned[T]]) -> None:
        previous, self.items = self.items, dict(snapshot)
        first = not self._synced.is_set()
        self._synced.set()
        if first:
            async with self._changed:
                self._changed.notify_all()
            return
        for key in previous.keys() - snapshot.keys():
            await self._emit(key, None)
        for key, item in snapshot.items():
            old = previous.get(key)
            if old is None or old.revision != item.revision:
                await self._emit(key, item)
        async with self._changed:
            self._changed.notify_all()

"""The cluster CIDR pool as the leader holds it: node CIDR records, each created once by compare-and-set.

A node CIDR is handed out only by creating its key (`<cidr with / as _>`) in the node-CIDR bucket; a key that
exists belongs to its node until it is deleted (by revision), so neither a restarted leader with an empty view nor
a deposed leader with a stale one can give one CIDR to two nodes: their create fails and they pick the next.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from ipaddress import IPv4Network
from typing import Protocol

from chassis.kv import Versioned
from schemas.errors import CceError, ErrorReason
from schemas.records import NodeCidr, NodeCidrState
from schemas.subjects import cidr_key
from services.route_manager.domain import next_free_cidr, pool_size

MAX_RACES = 64  # creates lost to another writer before one allocation gives up (only a runaway writer gets here)


class CidrStore(Protocol):
    """What the allocator needs of the node-CIDR bucket (chassis.kv.Store has it)."""

    async def get(self, key: str) -> Versioned[NodeCidr] | None: ...

    async def create(self, key: str, value: NodeCidr) -> Versioned[NodeCidr]: ...

    async def update(self, key: str, value: NodeCidr, revision: int) -> Versioned[NodeCidr]: ...

    async def delete(self, key: str, revision: int | None = None) -> None: ...

    async def list(self, prefix: str = "") -> dict[str, Versioned[NodeCidr]]: ...


def _is_conflict(err: CceError) -> bool:
    return err.reason is ErrorReason.CONFLICT


class CidrAllocator:
    def __init__(self, store: CidrStore, blocks: Sequence[IPv4Network], node_mask: int) -> None:
        self.store = store
        self.blocks = list(blocks)
        self.node_mask = node_mask
        self.items: dict[str, Versioned[NodeCidr]] = {}
        self._by_node: dict[str, set[str]] = {}

    async def load(self) -> None:
        self.items = {}
        self._by_node = {}
        for key, item in (await self.store.list()).items():
            self._put(key, item)

    def _put(self, key: str, item: Versioned[NodeCidr]) -> None:
        self._drop(key)
        self.items[key] = item
        self._by_node.setdefault(item.value.node, set()).add(key)

    def _drop(self, key: str) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            keys = self._by_node.get(old.value.node, set())
            keys.discard(key)
            if not keys:
                self._by_node.pop(old.value.node, None)

    # ---- reads -------------------------------------------------------------------------------------------------

    def all(self) -> list[NodeCidr]:
        return [v.value for v in self.items.values()]

    def of(self, node: str) -> list[NodeCidr]:
        mine = [self.items[key].value for key in self._by_node.get(node, ())]
        return sorted(mine, key=lambda c: (c.allocated_at, int(c.cidr.network_address)))

    def active_of(self, node: str) -> list[NodeCidr]:
        return [c for c in self.of(node) if c.state is NodeCidrState.ACTIVE]

    def nodes(self) -> set[str]:
        return set(self._by_node)

    def free_count(self) -> int:
        return pool_size(self.blocks, self.node_mask) - len(self.items)

    # ---- writes ------------------------------------------------------------------------------------------------

    async def allocate(self, node: str, request_id: str, now: datetime,
                       avoid: Collection[IPv4Network] = ()) -> NodeCidr:
        """Create the first free CIDR for `node`; a key someone else created meanwhile is learnt and skipped."""
        lost: set[IPv4Network] = set()
        reread = False
        for _ in range(MAX_RACES):
            used = {v.value.cidr for v in self.items.values()} | lost
            cidr = next_free_cidr(self.blocks, self.node_mask, used, avoid)
            if cidr is None and not reread:  # our view may be stale (a CIDR given back elsewhere): look again
                reread, lost = True, set()
                await self.load()
                continue
            if cidr is None:
                raise CceError(ErrorReason.CIDR_POOL_EXHAUSTED,
                               f"no free /{self.node_mask} left in {', '.join(map(str, self.blocks))} for {node}",
                               node=node, blocks=[str(b) for b in self.blocks])
            record = NodeCidr(cidr=cidr, node=node, state=NodeCidrState.ACTIVE, allocated_at=now,
                              request_id=request_id, state_since=now)
            key = cidr_key(cidr)
            try:
                self._put(key, await self.store.create(key, record))
                return record
            except CceError as err:
                if not _is_conflict(err):
                    raise
            held = await self.store.get(key)  # taken by another writer: learn who holds it
            if held is not None:
                self._put(key, held)
            lost.add(cidr)
        raise CceError(ErrorReason.CONFLICT, f"gave up allocating a CIDR for {node}: every candidate was raced",
                       node=node)

    async def set_state(self, cidr: IPv4Network, state: NodeCidrState, now: datetime) -> NodeCidr | None:
        """Move a CIDR to `state` by compare-and-set; None (view refreshed) when it changed under us or is gone."""
        key = cidr_key(cidr)
        item = self.items.get(key)
        if item is None:
            return None
        record = item.value.model_copy(update={"state": state, "state_since": now})
        try:
            self._put(key, await self.store.update(key, record, item.revision))
        except CceError as err:
            if not _is_conflict(err):
                raise
            await self.refresh(key)
            return None
        return record

    async def release(self, cidr: IPv4Network) -> bool:
        """Return a CIDR to the pool: delete its record if it is unchanged since we read it."""
        key = cidr_key(cidr)
        item = self.items.get(key)
        if item is None:
            return True
        try:
            await self.store.delete(key, item.revision)
        except CceError as err:
            if not _is_conflict(err):
                raise
            await self.refresh(key)
            return False
        self._drop(key)
        return True

    async def refresh(self, key: str) -> None:
        held = await self.store.get(key)
        if held is None:
            self._drop(key)
        else:
            self._put(key, held)

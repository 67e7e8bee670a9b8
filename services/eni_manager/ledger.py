"""The records eni_manager alone writes (ENIs, provision, subnets), as the leader sees them.

The leader loads each bucket when it is elected and then updates its view with every write it makes, so a plan
never runs on a view that lags the leader's own last write (a watch could).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from chassis.kv import Store
from schemas.base import Contract, subject_token
from schemas.records import Eni, EniProvision, Subnet

T = TypeVar("T", bound=Contract)


class Owned(Generic[T]):
    """One bucket this service is the only writer of."""

    def __init__(self, store: Store[T]) -> None:
        self.store = store
        self.items: dict[str, T] = {}

    async def load(self) -> None:
        self.items = {key: item.value for key, item in (await self.store.list()).items()}

    def get(self, key: str) -> T | None:
        return self.items.get(key)

    def values(self) -> list[T]:
        return list(self.items.values())

    async def put(self, key: str, value: T) -> None:
        await self.store.mutate(key, lambda _current: value)
        self.items[key] = value

    async def drop(self, key: str) -> None:
        await self.store.delete(key)
        self.items.pop(key, None)


@dataclass
class Ledger:
    enis: Owned[Eni]
    provision: Owned[EniProvision]
    subnets: Owned[Subnet]

    async def load(self) -> None:
        await self.enis.load()
        await self.provision.load()
        await self.subnets.load()

    def enis_of(self, node: str) -> list[Eni]:
        return sorted((e for e in self.enis.values() if e.node == node), key=lambda e: (e.index, e.eni_id))

    def provision_of(self, node: str) -> EniProvision | None:
        return self.provision.get(subject_token(node))

    async def put_provision(self, record: EniProvision) -> None:
        await self.provision.put(subject_token(record.node), record)

    async def drop_provision(self, node: str) -> None:
        await self.provision.drop(subject_token(node))

    def nodes(self) -> set[str]:
        """Every node some record of ours names."""
        return {e.node for e in self.enis.values()} | {p.node for p in self.provision.values()}

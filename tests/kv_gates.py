"""A test helper: a KV bucket handle that holds a writer between its read and its write, so a test can let another
writer in at exactly that moment (the interleaving a loaded machine produces now and then)."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.kv import KeyValue


class FirstReadWaits:
    """A bucket handle whose first read, once answered, waits for `go`: the moment a writer has read the key and
    another writes it before the first one writes."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.read = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._kv.get(key, *args, **kwargs)
        finally:
            if not self.read.is_set():
                self.read.set()
                await self.go.wait()

"""Releases that could not reach the control plane on DEL, kept on disk until a retry succeeds.

One small JSON file per (container id, ifname), written atomically; the gateway retries them in the background
and on start, so a DEL that succeeded for the runtime while the bus was down still gives its IP back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from chassis.logs import get_logger

log = get_logger("cni_gateway.journal")
PREFIX = "release."


@dataclass(frozen=True)
class PendingRelease:
    container_id: str
    ifname: str
    reason: str = ""


class ReleaseJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.directory / f"{PREFIX}{container_id}.{ifname}.json"

    def add(self, item: PendingRelease) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(item.container_id, item.ifname)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        body = {"container_id": item.container_id, "ifname": item.ifname, "reason": item.reason}
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, container_id: str, ifname: str) -> bool:
        try:
            self._path(container_id, ifname).unlink()
            return True
        except FileNotFoundError:
            return False

    def has(self, container_id: str, ifname: str) -> bool:
        return self._path(container_id, ifname).exists()

    def pending(self) -> list[PendingRelease]:
        if not self.directory.is_dir():
            return []
        items: list[PendingRelease] = []
        for path in sorted(self.directory.glob(f"{PREFIX}*.json")):
            try:
                body = json.loads(path.read_text())
                items.append(PendingRelease(str(body["container_id"]), str(body["ifname"]),
                                            str(body.get("reason", ""))))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("unreadable journal entry dropped", path=str(path), error=repr(err))
                path.unlink(missing_ok=True)
        return items

"""The simulator's state file: atomic JSON saves and strict loads.

A save writes a temporary file beside the target, fsyncs it, renames it over the target and fsyncs the
directory, so a crash leaves either the old or the new state, never a torn one. A missing file means a fresh
state; an unreadable or corrupt one raises `StateFileError` naming the file (never a silent reset).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATE_FILE_MODE = 0o644


class StateFileError(Exception):
    """The state file exists but cannot be used."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"simulator state file {path}: {reason}")
        self.path = path
        self.reason = reason


def save_state(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, indent=1, sort_keys=False)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, STATE_FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no file yet."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise StateFileError(path, f"cannot be read: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StateFileError(path, f"is not valid JSON ({err}); fix or remove it") from err
    if not isinstance(data, dict):
        raise StateFileError(path, f"holds a {type(data).__name__}, expected a JSON object; fix or remove it")
    return data


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

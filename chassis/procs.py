"""Process helpers shared by launchers: children die with their parent, never orphaned."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def parent_death_signal() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), so no orphan outlives a launcher."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass

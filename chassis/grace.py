"""Two-phase collection ("mark, then act after a grace"): a candidate is acted on only once it has stayed a candidate
for the whole grace period; one that stops being a candidate is forgotten, so it starts over if it comes back."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta


class Grace:
    def __init__(self) -> None:
        self._seen: dict[Hashable, dict[str, datetime]] = {}

    def due(self, scope: Hashable, candidates: set[str], now: datetime, grace_s: float) -> list[str]:
        """The candidates of `scope` that have been candidates for `grace_s` (all of them are remembered)."""
        previous = self._seen.get(scope, {})
        seen = {c: previous.get(c, now) for c in candidates}
        if seen:
            self._seen[scope] = seen
        else:
            self._seen.pop(scope, None)
        return sorted(c for c, since in seen.items() if since + timedelta(seconds=grace_s) <= now)

    def forget(self, match: Hashable) -> None:
        """Drop every scope equal to `match` or whose first part is `match` (e.g. all scopes of one node)."""
        for scope in [s for s in self._seen if s == match or (isinstance(s, tuple) and s and s[0] == match)]:
            del self._seen[scope]

    def reset(self) -> None:
        self._seen.clear()

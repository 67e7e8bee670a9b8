"""What every benchmark here shares: latency results and the plain table they are printed as."""

from __future__ import annotations

import math


def pct(sorted_ns: list[int], q: float) -> int:
    return sorted_ns[max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))]


class Result:
    """Latencies of one operation by one variant: p50/p99/mean in µs and operations per second of wall time."""

    def __init__(self, op: str, variant: str, lat_ns: list[int], wall_ns: int) -> None:
        self.op, self.variant, self.n = op, variant, len(lat_ns)
        lat = sorted(lat_ns)
        self.p50 = pct(lat, 0.50) / 1000
        self.p99 = pct(lat, 0.99) / 1000
        self.mean = sum(lat) / len(lat) / 1000
        self.ops = len(lat) / (wall_ns / 1e9)


def print_table(results: list[Result], rate: str = "ops/s") -> dict[str, dict[str, Result]]:
    """Print one row per result; returns them by operation and variant for the summary lines."""
    head = ("operation", "variant", "n", "p50 µs", "p99 µs", "mean µs", rate)
    rows = [(r.op, r.variant, str(r.n), f"{r.p50:.1f}", f"{r.p99:.1f}", f"{r.mean:.1f}", f"{r.ops:.0f}")
            for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))

    print(line(head))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    by_op: dict[str, dict[str, Result]] = {}
    for r in results:
        by_op.setdefault(r.op, {})[r.variant] = r
    return by_op

"""What the fuzz suites share: how many inputs per surface (a few hundred; CCE_FUZZ_LONG=1 for the long run of
10,000), Hypothesis settings for suites that drive real processes, strategies for hostile values, and the kept
corpus of the nastiest cases (tests/fuzz_corpus/<surface>.json), replayed on every run."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
LONG = os.environ.get("CCE_FUZZ_LONG", "") == "1"
EXAMPLES = int(os.environ.get("CCE_FUZZ_EXAMPLES") or (10_000 if LONG else 200))
FUZZ_TIMEOUT = pytest.mark.timeout(6 * 3600 if LONG else 300)  # a Hypothesis suite is one test for pytest-timeout
COUNTS: Counter[str] = Counter()  # inputs answered per surface (printed in pytest's summary: conftest.py)


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    """Generation only (no shrinking of real-process runs, no example database in the repo)."""
    return settings(max_examples=examples, deadline=None, database=None, phases=(Phase.generate,),
                    suppress_health_check=list(HealthCheck), print_blob=True)


def corpus(surface: str) -> list[Any]:
    data: list[Any] = json.loads((CORPUS / f"{surface}.json").read_text())
    return data


# text a process may choke on: control characters, other scripts, path tricks, very long runs (no NUL: it cannot
# be in an environment variable or a C string)
nasty_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.sampled_from(["", " ", "..", "../../etc/passwd", "/dev/null", "-1", "0", "NaN", "null", "true", "{}", "[]",
                     "%s%s%n", "\u202e", "eth0\n", "a" * 16, "a;b=c;d", "K8S_POD_NAME=", "=", "\\x00"]),
    st.integers(1, 20).map(lambda n: "x" * (1 << n)),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), nasty_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)), max_leaves=12)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with some of its fields given hostile values, some dropped, and unknown ones added."""
    keys = sorted(base)
    return st.builds(_mutate, st.just(base), st.dictionaries(st.sampled_from(keys), json_values, max_size=3),
                     st.sets(st.sampled_from(keys), max_size=2), st.dictionaries(nasty_text, json_values, max_size=2))


def _mutate(base: dict[str, Any], changed: dict[str, Any], dropped: set[str], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in dropped}
    out.update(changed)
    for k, v in extra.items():
        out.setdefault(k, v)
    return out

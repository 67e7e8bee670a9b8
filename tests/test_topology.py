"""Unit tier: `cce-net up` and compose/docker-compose.yml come from one topology and cannot drift."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from cce_net.stack import LocalStack
from cce_net.topology import COMPOSE_FILE, NODES_SERVICE, SERVICES, compose_name, compose_text

pytestmark = pytest.mark.unit


def test_committed_compose_file_is_generated_from_the_topology() -> None:
    assert COMPOSE_FILE.read_text() == compose_text(), "run `cce-net compose`"


def test_local_stack_runs_the_same_services_and_replicas_as_compose(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    planned = Counter(compose_name(p.service.name) for p in LocalStack(tmp_path).plan())
    in_compose = {name: spec["deploy"]["replicas"] for name, spec in compose.items()
                  if name not in ("nats", NODES_SERVICE)}  # `nodes`: the one-shot that plays the nodes' agents
    assert dict(planned) == in_compose
    for proc in LocalStack(tmp_path).plan():
        assert compose[compose_name(proc.service.name)]["command"][-1] == proc.service.module


def test_every_service_module_has_an_entry_point() -> None:
    root = Path(__file__).resolve().parent.parent
    for svc in SERVICES:
        assert (root / svc.module.replace(".", "/") / "__main__.py").exists()


def test_compose_services_use_one_image_and_reach_nats_by_name() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    images = {spec["image"] for spec in compose.values()}
    assert len(images) == 1
    for name, spec in compose.items():
        if "nats" in spec.get("depends_on", {}) and name != NODES_SERVICE:
            assert spec["environment"]["CCE_NATS_URL"] == "nats://nats:4222"
    assert "nats://nats:4222" in compose[NODES_SERVICE]["command"]
    assert "--jetstream" in compose["nats"]["command"]

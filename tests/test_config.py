"""Unit tier: settings come from CCE_* variables and an optional file, the environment winning."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chassis.config import ChassisSettings

pytestmark = pytest.mark.unit


def test_environment_sets_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCE_NATS_URL", "nats://10.1.1.1:4222")
    monkeypatch.setenv("CCE_LEASE_TTL_S", "3.5")
    s = ChassisSettings()
    assert s.nats_url == "nats://10.1.1.1:4222"
    assert s.lease_ttl_s == 3.5


def test_file_values_apply_and_the_environment_overrides_them(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "cce.yaml"
    path.write_text("nats_url: nats://file:4222\nhttp_port: 9100\nlog_level: debug\n")
    monkeypatch.setenv("CCE_CONFIG_FILE", str(path))
    monkeypatch.setenv("CCE_LOG_LEVEL", "warning")
    s = ChassisSettings()
    assert (s.nats_url, s.http_port, s.log_level) == ("nats://file:4222", 9100, "warning")


def test_bad_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCE_HTTP_PORT", "70000")
    with pytest.raises(ValidationError, match="http_port"):
        ChassisSettings()


def test_a_settings_file_that_is_not_a_mapping_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "cce.yaml"
    path.write_text("- just\n- a list\n")
    monkeypatch.setenv("CCE_CONFIG_FILE", str(path))
    with pytest.raises(ValueError, match="mapping"):
        ChassisSettings()

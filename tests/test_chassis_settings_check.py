"""Bad settings stop a service at start, with one line naming the setting (its `CCE_*` variable): an unknown
network mode, a value that does not parse, a credentials or TLS file that is not there, an unreadable settings
file. Unit tests of the check, then the real service processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chassis.config import ChassisSettings
from chassis.settings_check import EXIT_BAD_SETTINGS, SettingsError, load_settings
from services.k8s_bridge.settings import BridgeSettings
from services.route_manager.settings import RouteManagerSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [k for k in os.environ if k.startswith("CCE_") or k == "KUBECONFIG"]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.unit
def test_an_unknown_network_mode_names_the_variable_and_the_modes(env: pytest.MonkeyPatch) -> None:
    env.setenv("CCE_DEFAULT_MODE", "vpc-magic")
    with pytest.raises(SettingsError) as err:
        load_settings(BridgeSettings)
    assert str(err.value).startswith("CCE_DEFAULT_MODE='vpc-magic': ")
    assert "vpc-eni" in str(err.value) and "vpc-route" in str(err.value)


@pytest.mark.unit
def test_a_value_that_does_not_parse_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("CCE_CLUSTER_CIDRS", "172.16.0.0/16,not-a-cidr")
    with pytest.raises(SettingsError, match=r"^CCE_CLUSTER_CIDRS\[1\]='not-a-cidr': "):
        load_settings(RouteManagerSettings)
    env.setenv("CCE_CLUSTER_CIDRS", "172.16.0.0/16")
    env.setenv("CCE_HTTP_PORT", "eighty")
    with pytest.raises(SettingsError, match=r"^CCE_HTTP_PORT='eighty': "):
        load_settings(RouteManagerSettings)


@pytest.mark.unit
@pytest.mark.parametrize("variable", ["CCE_NATS_CREDS", "CCE_NATS_TLS_CA", "CCE_NATS_TLS_CERT", "CCE_NATS_TLS_KEY"])
def test_a_missing_credentials_or_tls_file_names_the_variable(env: pytest.MonkeyPatch, tmp_path: Path,
                                                             variable: str) -> None:
    missing = tmp_path / "secret" / "not-mounted"
    env.setenv(variable, str(missing))
    with pytest.raises(SettingsError) as err:
        load_settings(ChassisSettings)
    assert str(err.value) == f"{variable}={str(missing)!r}: no such file"


@pytest.mark.unit
def test_a_directory_where_the_credentials_file_should_be_is_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CCE_NATS_CREDS", str(tmp_path))
    with pytest.raises(SettingsError, match=r"^CCE_NATS_CREDS=.*: not a file$"):
        load_settings(ChassisSettings)


@pytest.mark.unit
def test_a_missing_or_malformed_settings_file_names_cce_config_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CCE_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    with pytest.raises(SettingsError, match=r"^CCE_CONFIG_FILE='.*absent\.yaml': No such file or directory$"):
        load_settings(ChassisSettings)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    env.setenv("CCE_CONFIG_FILE", str(tmp_path / "list.yaml"))
    with pytest.raises(SettingsError, match=r"^CCE_CONFIG_FILE='.*list\.yaml': .*must hold a mapping"):
        load_settings(ChassisSettings)


@pytest.mark.unit
def test_good_settings_and_present_files_load(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "ipam.creds"
    creds.write_text("x")
    env.setenv("CCE_NATS_CREDS", str(creds))
    env.setenv("CCE_DEFAULT_MODE", "vpc-route")
    assert load_settings(BridgeSettings).nats_creds == creds


def start_service(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CCE_")}
    return subprocess.run([sys.executable, "-m", module], env={**clean, "CCE_LOG_JSON": "false", **env},
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


@pytest.mark.integration
@pytest.mark.parametrize(("module", "setting", "value"), [
    ("services.k8s_bridge", "CCE_DEFAULT_MODE", "vpc-magic"),
    ("services.ipam", "CCE_NATS_CREDS", "/run/secrets/cce/ipam.creds"),
    ("services.eni_manager", "CCE_NATS_TLS_CA", "/run/secrets/cce/ca.pem"),
    ("services.route_manager", "CCE_CONFLICT_POLICY", "overwrite"),
])
def test_a_service_with_a_bad_setting_exits_at_start_naming_it(module: str, setting: str, value: str) -> None:
    done = start_service(module, **{setting: value, "CCE_NATS_URL": "nats://127.0.0.1:1"})
    assert done.returncode == EXIT_BAD_SETTINGS, done.stderr
    assert f"cannot start: {setting}={value!r}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("module", ["services.eni_manager", "services.route_manager"])
def test_a_cloud_service_without_its_endpoint_stops_naming_cce_cloud_endpoint(clean_nats: str, module: str) -> None:
    done = start_service(module, CCE_NATS_URL=clean_nats, CCE_HTTP_PORT="0")
    assert done.returncode != 0
    assert "CCE_CLOUD_ENDPOINT is not set" in done.stderr

"""The two CNI plugins the conformance tests run against, as a parametrised fixture: the Python plugin
(services/cni_gateway/plugin.py) and the native one (cni/, Go). The native binary is built once per session by
`make cni-plugin` into the session's temporary directory (Go's own build cache makes rebuilding unchanged sources
take about a second), so the repository's build/cni/cce, which `auto` installs, is left as the developer made it.
Without Go the native variants skip, saying so."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGINS = ("python", "native")


@dataclass(frozen=True)
class PluginChoice:
    """Which plugin the gateway (or install-cni) installs."""

    kind: str
    binary: Path | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """GatewaySettings overrides."""
        return {"cni_plugin": self.kind, "cni_plugin_binary": self.binary}

    @property
    def env(self) -> dict[str, str]:
        """The same, as the environment of a gateway process."""
        return {"CCE_CNI_PLUGIN": self.kind, **({"CCE_CNI_PLUGIN_BINARY": str(self.binary)} if self.binary else {})}


def go_tool() -> str | None:
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")


@pytest.fixture(scope="session")
def native_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native plugin, built from this checkout's cni/ with `make cni-plugin`."""
    go = go_tool()
    if go is None:
        pytest.skip("needs Go to build the native CNI plugin (make cni-plugin); only the Python plugin is tested")
    binary = tmp_path_factory.mktemp("cni-plugin") / "cce"
    build = subprocess.run(["make", "-s", "cni-plugin", f"CNI_PLUGIN={binary}", f"GO={go}"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"make cni-plugin failed:\n{build.stdout}{build.stderr}"
    return binary


@pytest.fixture(params=PLUGINS)
def cni_plugin(request: pytest.FixtureRequest) -> PluginChoice:
    if request.param == "native":
        return PluginChoice("native", request.getfixturevalue("native_plugin"))
    return PluginChoice("python")

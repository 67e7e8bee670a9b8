"""Install the CNI plugin binary and the network configuration list, as a node agent does on start.

The plugin goes to `<bin_dir>/cce` (mode 0755), one of two that speak the same protocol to the gateway:
- native: the static Go executable built by `make cni-plugin` (`build/cni/cce` of this checkout, or the file named
  by `CCE_CNI_PLUGIN_BINARY` / `--plugin-binary`), copied as it is;
- python: `plugin.py` with the shebang `#!<absolute interpreter> -IS` (isolated, no site: a Linux shebang passes
  everything after the interpreter as one argument, so the flags are joined).
`auto` (the default) installs the native one when it has been built (or named) and the Python one otherwise.
The conflist goes to `<conf_dir>/10-cce.conflist`:

    {"cniVersion": "1.1.0", "name": "cce",       # 1.0.0 when other plugins are listed (see build_conflist)
     "plugins": [{"type": "cce", "socket": "/run/cce-net/cni.sock", "node": "node-1",
                  "capabilities": {"bandwidth": true}},  # `"bandwidth": "chained"` instead with a bandwidth plugin
                 ...plugins already listed after ours (user-added), kept in order...,
                 {"type": "portmap", "capabilities": {"portMappings": true}},
                 {"type": "bandwidth", "capabilities": {"bandwidth": true}}]}

Both are written atomically (temporary file + rename) and only when their content changes, so installing twice
is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.cni_gateway.bandwidth import CHAINED
from services.cni_gateway.settings import DEFAULT_SOCKET

PLUGIN_NAME = "cce"
CONFLIST_NAME = "10-cce.conflist"
NETWORK_NAME = "cce"
CONF_VERSION = "1.1.0"  # STATUS and GC: the runtime may ask whether the network is ready and collect leftovers
CHAINED_CONF_VERSION = "1.0.0"  # with other plugins listed: the newest the reference plugins packaged here take
CONF_VERSIONS = ("1.0.0", "1.1.0")  # a conflist's cniVersion may be set to one of these
PLUGIN_SOURCE = Path(__file__).with_name("plugin.py")
NATIVE_BUILD = Path(__file__).resolve().parents[2] / "build" / "cni" / "cce"  # `make cni-plugin` in this checkout
PLUGIN_KINDS = ("auto", "native", "python")
# Chained plugins we know how to configure: their capabilities (the runtime fills runtimeConfig from them).
CHAINABLE: dict[str, dict[str, Any]] = {
    "portmap": {"type": "portmap", "capabilities": {"portMappings": True}},
    "bandwidth": {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    "tuning": {"type": "tuning"},
    "firewall": {"type": "firewall"},
}


class InstallError(Exception):
    pass


@dataclass(frozen=True)
class Installed:
    plugin: Path
    conflist: Path
    plugin_changed: bool
    conflist_changed: bool
    kind: str  # which plugin went to `plugin`: native or python

    @property
    def changed(self) -> bool:
        return self.plugin_changed or self.conflist_changed


def default_interpreter() -> str:
    """The real interpreter behind this process (a venv's python is a symlink; the plugin needs only the stdlib)."""
    return os.path.realpath(sys.executable)


def plugin_text(interpreter: str) -> str:
    if not os.path.isabs(interpreter) or any(c.isspace() for c in interpreter):
        raise InstallError(f"the plugin's interpreter must be an absolute path without spaces: {interpreter!r}")
    source = PLUGIN_SOURCE.read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    return f"#!{interpreter} -IS\n{body}"


def plugin_content(kind: str = "auto", binary: Path | None = None,
                   interpreter: str | None = None) -> tuple[str, bytes]:
    """The plugin to install, as (native or python, the file's bytes); `binary` defaults to NATIVE_BUILD."""
    if kind not in PLUGIN_KINDS:
        raise InstallError(f"unknown plugin {kind!r}; one of {', '.join(PLUGIN_KINDS)}")
    if kind == "python" or (kind == "auto" and binary is None and not NATIVE_BUILD.is_file()):
        return "python", plugin_text(interpreter or default_interpreter()).encode()
    native = binary or NATIVE_BUILD
    try:
        content = native.read_bytes()
    except OSError as err:
        hint = "" if binary else " (build it with `make cni-plugin`, which needs Go)"
        raise InstallError(f"the native CNI plugin {native} cannot be read{hint}: {err.strerror}") from None
    if not content.startswith(b"\x7fELF"):
        raise InstallError(f"the native CNI plugin {native} is not an executable (ELF) file")
    return "native", content


def write_atomically(path: Path, content: str | bytes, mode: int) -> bool:
    """Write `content` to `path` (mode `mode`) unless it is already there; True when the file changed."""
    data = content.encode() if isinstance(content, str) else content
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def chain_entry(name: str) -> dict[str, Any]:
    if name not in CHAINABLE:
        raise InstallError(f"unknown chained plugin {name!r}; known: {', '.join(sorted(CHAINABLE))}")
    copy: dict[str, Any] = json.loads(json.dumps(CHAINABLE[name]))
    return copy


def build_conflist(existing: dict[str, Any] | None, node: str, socket: Path | str,
                   chain: Sequence[str], version: str = "") -> dict[str, Any]:
    """Our plugin first (with its socket and node), then the plugins already listed after it, then the chained
    plugins asked for that are not there yet. `version` is the list's cniVersion; empty: 1.1.0 when ours is alone,
    1.0.0 when chained (containerd 1.6 and 1.7 take nothing newer than 1.0.0: a node on them sets 1.0.0)."""
    conflist = dict(existing or {})
    plugins = [p for p in conflist.get("plugins", []) if isinstance(p, dict)]
    ours_before = next((p for p in plugins if p.get("type") == PLUGIN_NAME), {})
    others = [p for p in plugins if p.get("type") != PLUGIN_NAME]
    ours = {**ours_before, "type": PLUGIN_NAME, "socket": str(socket), "node": node}
    present = {p.get("type") for p in others}
    added = [chain_entry(name) for name in dict.fromkeys(chain) if name not in present]
    # we shape the pod's bandwidth ourselves (the runtime passes the limits to the plugin declaring the capability)
    # unless a chained `bandwidth` plugin is there to do it: then ours leaves it to that one
    capabilities = {k: v for k, v in (ours.get("capabilities") or {}).items() if k != "bandwidth"}
    ours.pop("bandwidth", None)
    if any(p.get("type") == "bandwidth" for p in (*others, *added)):
        ours["bandwidth"] = CHAINED
    else:
        capabilities["bandwidth"] = True
    ours.pop("capabilities", None)
    if capabilities:
        ours["capabilities"] = capabilities
    # a runtime hands the list's version to every plugin in it: 1.1.0 only where ours is alone (chained plugins of
    # CNI plugins < 1.5, such as Debian 12's, refuse it and the whole ADD would fail)
    version = version or (CONF_VERSION if not (others or added) else CHAINED_CONF_VERSION)
    conflist.update(cniVersion=version, name=conflist.get("name") or NETWORK_NAME,
                    plugins=[ours, *others, *added])
    return {"cniVersion": conflist.pop("cniVersion"), "name": conflist.pop("name"), **conflist}


def read_conflist(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        broken = path.with_name(path.name + ".invalid")
        os.replace(path, broken)  # kept for the operator, replaced by a valid one
        return None
    return loaded if isinstance(loaded, dict) else None


def install_cni(bin_dir: Path, conf_dir: Path, node: str, socket: Path | str = DEFAULT_SOCKET,
                chain: Sequence[str] = (), interpreter: str | None = None, plugin_kind: str = "auto",
                plugin_binary: Path | None = None, version: str = "") -> Installed:
    """Install (or update) `<bin_dir>/cce` and `<conf_dir>/10-cce.conflist`; idempotent. `plugin_kind` and
    `plugin_binary` choose the plugin (see plugin_content), `version` the conflist's cniVersion (see
    build_conflist)."""
    if not node:
        raise InstallError("the node name is required")
    if version and version not in CONF_VERSIONS:
        raise InstallError(f"cniVersion {version!r} is not one the plugin speaks in a conflist "
                           f"({', '.join(CONF_VERSIONS)})")
    for name in chain:
        chain_entry(name)
    kind, content = plugin_content(plugin_kind, plugin_binary, interpreter)
    plugin = Path(bin_dir) / PLUGIN_NAME
    plugin_changed = write_atomically(plugin, content, 0o755)
    conflist_path = Path(conf_dir) / CONFLIST_NAME
    conflist = build_conflist(read_conflist(conflist_path), node, socket, chain, version)
    conflist_changed = write_atomically(conflist_path, json.dumps(conflist, indent=2) + "\n", 0o644)
    return Installed(plugin, conflist_path, plugin_changed, conflist_changed, kind)

"""A libcni-like harness: what a container runtime does with a CNI network configuration list.

    runtime = CniRuntime(["/opt/cni/bin", "/usr/lib/cni"], cache_dir=Path("/var/lib/cni"))
    conflist = load_conflist(Path("/etc/cni/net.d/10-cce.conflist"))
    pod = RuntimeConf(container_id="abc", netns="/run/netns/p1", ifname="eth0",
                      args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "p1"},
                      capability_args={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    result = runtime.add(conflist, pod)   # plugins in order, each given the previous one's result
    runtime.check(conflist, pod)          # plugins in order, each given the cached ADD result
    runtime.delete(conflist, pod)         # plugins in reverse order, each given the cached ADD result (if any)

Every plugin gets the list's `name` and `cniVersion`, `prevResult` where there is one, and a `runtimeConfig` with
the capability arguments it declares in `capabilities`. The binary is looked up in the CNI_PATH directories and
exec-ed with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/CNI_IFNAME/CNI_ARGS/CNI_PATH in its environment (optionally
inside another network namespace via nsenter, as a node's runtime runs in the node's). A failing plugin raises
`CniError` carrying the CNI error object. Each exec's wall time (exec to exit) is recorded for benchmarks.
The ADD result is cached on disk (`<cache_dir>/results/<network>-<container id>-<ifname>`) like libcni's, so CHECK
and DEL in another process find it.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Json = dict[str, Any]


class CniError(Exception):
    """A plugin failed: `error` is its CNI error object ({cniVersion, code, msg, details})."""

    def __init__(self, plugin: str, command: str, error: Json, stderr: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.error = error
        self.stderr = stderr
        super().__init__(f"{plugin} {command} failed: code {error.get('code')}: {error.get('msg', '')}"
                         + (f" ({error['details']})" if error.get("details") else ""))

    @property
    def code(self) -> int:
        code = self.error.get("code")
        return code if isinstance(code, int) else 999


@dataclass(frozen=True)
class ConfList:
    name: str
    cni_version: str
    plugins: list[Json]
    raw: Json = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeConf:
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Mapping[str, str] | str = field(default_factory=dict)
    capability_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecTiming:
    plugin: str
    command: str
    container_id: str
    seconds: float
    ok: bool


def load_conflist(path: Path) -> ConfList:
    return conflist_from(json.loads(Path(path).read_text()))


def conflist_from(raw: Json) -> ConfList:
    plugins = raw.get("plugins")
    if not isinstance(raw.get("name"), str) or not isinstance(plugins, list) or not plugins:
        raise ValueError("a conflist needs a name and a non-empty plugins list")
    if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        raise ValueError("every plugin of a conflist needs a type")
    return ConfList(raw["name"], str(raw.get("cniVersion", "1.0.0")), plugins, raw)


def plugin_config(conflist: ConfList, plugin: Json, prev_result: Json | None,
                  capability_args: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Json:
    """One plugin's stdin: its configuration with name, cniVersion, prevResult and runtimeConfig injected."""
    config = {**plugin, "name": conflist.name, "cniVersion": conflist.cni_version}
    if prev_result is not None:
        config["prevResult"] = prev_result
    capabilities = plugin.get("capabilities") or {}
    runtime_config = {k: v for k, v in capability_args.items() if capabilities.get(k)}
    if runtime_config:
        config["runtimeConfig"] = {**(plugin.get("runtimeConfig") or {}), **runtime_config}
    config.update(extra or {})
    return config


def cni_args(args: Mapping[str, str] | str) -> str:
    """CNI_ARGS from a mapping (or an already formatted `K=V;K=V` string)."""
    return args if isinstance(args, str) else ";".join(f"{k}={v}" for k, v in args.items())


class CniRuntime:
    def __init__(self, cni_path: Sequence[Path | str], cache_dir: Path | None = None, timeout_s: float = 120.0,
                 exec_netns: str | None = None) -> None:
        """`cni_path`: directories searched for plugin binaries, in order. `cache_dir`: where ADD results are kept
        for CHECK/DEL (None: in memory only). `exec_netns`: run every plugin inside this network namespace (a path;
        through `nsenter --net=`), as the runtime of a node that is itself a namespace does."""
        self.cni_path = [Path(p) for p in cni_path]
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s
        self.exec_netns = exec_netns
        self.timings: list[ExecTiming] = []
        self._lock = threading.Lock()
        self._memory_cache: dict[str, Json] = {}

    # ---- the commands of a whole list ----------------------------------------------------------------------------

    def add(self, conflist: ConfList, rt: RuntimeConf) -> Json:
        """Run every plugin's ADD in order, each given the previous result; returns and caches the last result."""
        result = self.run_add(conflist, rt)
        self._cache_put(conflist, rt, result)
        return result

    def check(self, conflist: ConfList, rt: RuntimeConf) -> None:
        """Run every plugin's CHECK in order with the cached ADD result."""
        cached = self.cached_result(conflist, rt)
        if cached is None:
            raise CniError(conflist.name, "CHECK", {"code": 7, "msg": "no cached ADD result to CHECK against"})
        self.run_check(conflist, rt, cached)

    def delete(self, conflist: ConfList, rt: RuntimeConf) -> None:
        """Run every plugin's DEL in reverse order with the cached ADD result (none if there is no cache); the
        cache entry goes once all succeeded."""
        self.run_delete(conflist, rt, self.cached_result(conflist, rt))
        self._cache_drop(conflist, rt)

    def run_add(self, conflist: ConfList, rt: RuntimeConf) -> Json:
        result: Json | None = None
        for plugin in conflist.plugins:
            config = plugin_config(conflist, plugin, result, rt.capability_args)
            result = self.exec_plugin(plugin["type"], "ADD", config, rt)
        assert result is not None
        return result

    def run_check(self, conflist: ConfList, rt: RuntimeConf, prev_result: Json) -> None:
        for plugin in conflist.plugins:
            self.exec_plugin(plugin["type"], "CHECK", plugin_config(conflist, plugin, prev_result, rt.capability_args),
                             rt)

    def run_delete(self, conflist: ConfList, rt: RuntimeConf, prev_result: Json | None) -> None:
        for plugin in reversed(conflist.plugins):
            self.exec_plugin(plugin["type"], "DEL", plugin_config(conflist, plugin, prev_result, rt.capability_args),
                             rt)

    def status(self, conflist: ConfList) -> None:
        """CNI 1.1 STATUS of every plugin (the list must be 1.1.0 or later)."""
        rt = RuntimeConf(container_id="", netns="", ifname="")
        for plugin in conflist.plugins:
            self.exec_plugin(plugin["type"], "STATUS", plugin_config(conflist, plugin, None, {}), rt)

    def gc(self, conflist: ConfList, valid: Sequence[tuple[str, str]]) -> None:
        """CNI 1.1 GC: every plugin is told the (container id, ifname) attachments that are still valid."""
        rt = RuntimeConf(container_id="", netns="", ifname="")
        attachments = {"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]}
        for plugin in conflist.plugins:
            self.exec_plugin(plugin["type"], "GC", plugin_config(conflist, plugin, None, {}, attachments), rt)

    def version(self, plugin_type: str, cni_version: str = "1.0.0") -> Json:
        rt = RuntimeConf(container_id="", netns="", ifname="")
        return self.exec_plugin(plugin_type, "VERSION", {"cniVersion": cni_version}, rt) or {}

    # ---- one exec ------------------------------------------------------------------------------------------------

    def find_plugin(self, plugin_type: str) -> Path:
        if "/" in plugin_type or plugin_type in ("", ".", ".."):
            raise CniError(plugin_type, "", {"code": 7, "msg": f"invalid plugin type {plugin_type!r}"})
        for directory in self.cni_path:
            candidate = directory / plugin_type
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CniError(plugin_type, "", {"code": 7, "msg": f"plugin {plugin_type!r} not found in CNI_PATH "
                                                            f"{os.pathsep.join(map(str, self.cni_path))}"})

    def environment(self, command: str, rt: RuntimeConf) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=rt.container_id, CNI_NETNS=rt.netns, CNI_IFNAME=rt.ifname,
                   CNI_ARGS=cni_args(rt.args), CNI_PATH=os.pathsep.join(map(str, self.cni_path)))
        return env

    def exec_plugin(self, plugin_type: str, command: str, config: Json, rt: RuntimeConf) -> Json:
        """Exec one plugin; returns its parsed stdout ({} when empty) or raises CniError."""
        binary = self.find_plugin(plugin_type)
        argv = [str(binary)]
        if self.exec_netns:
            argv = ["nsenter", f"--net={self.exec_netns}", "--", *argv]
        started = time.perf_counter()
        try:
            proc = subprocess.run(argv, input=json.dumps(config).encode(), capture_output=True,
                                  env=self.environment(command, rt), timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            self._record(plugin_type, command, rt, started, ok=False)
            raise CniError(plugin_type, command, {"code": 11, "msg": f"no answer within {self.timeout_s}s"}) from None
        self._record(plugin_type, command, rt, started, ok=proc.returncode == 0)
        stderr = proc.stderr.decode(errors="replace")
        try:
            output = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            output = None
        if proc.returncode != 0:
            error = output if isinstance(output, dict) and "code" in output else {
                "code": 999, "msg": f"exit status {proc.returncode}",
                "details": (proc.stdout.decode(errors="replace") + stderr)[-2000:]}
            raise CniError(plugin_type, command, error, stderr)
        if not isinstance(output, dict):
            raise CniError(plugin_type, command, {"code": 6, "msg": "plugin output is not a JSON object",
                                                  "details": proc.stdout.decode(errors="replace")[:2000]}, stderr)
        return output

    def _record(self, plugin: str, command: str, rt: RuntimeConf, started: float, ok: bool) -> None:
        timing = ExecTiming(plugin, command, rt.container_id, time.perf_counter() - started, ok)
        with self._lock:
            self.timings.append(timing)

    # ---- the result cache ----------------------------------------------------------------------------------------

    def _cache_key(self, conflist: ConfList, rt: RuntimeConf) -> str:
        return f"{conflist.name}-{rt.container_id}-{rt.ifname}"

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "results" / key

    def cached_result(self, conflist: ConfList, rt: RuntimeConf) -> Json | None:
        key = self._cache_key(conflist, rt)
        path = self._cache_path(key)
        if path is None:
            return self._memory_cache.get(key)
        try:
            entry = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        result = entry.get("result") if isinstance(entry, dict) else None
        return result if isinstance(result, dict) else None

    def _cache_put(self, conflist: ConfList, rt: RuntimeConf, result: Json) -> None:
        key = self._cache_key(conflist, rt)
        path = self._cache_path(key)
        if path is None:
            self._memory_cache[key] = result
            return
        entry = {"kind": "cniCacheV1", "containerId": rt.container_id, "ifName": rt.ifname,
                 "networkName": conflist.name, "cniArgs": [p.split("=", 1) for p in cni_args(rt.args).split(";") if p],
                 "capabilityArgs": dict(rt.capability_args), "result": result}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)

    def _cache_drop(self, conflist: ConfList, rt: RuntimeConf) -> None:
        key = self._cache_key(conflist, rt)
        path = self._cache_path(key)
        if path is None:
            self._memory_cache.pop(key, None)
        else:
            path.unlink(missing_ok=True)


class CniNetwork:
    """A conflist bound to a runtime, for callers that keep the ADD result themselves (as kubelet's runtime does in
    its sandbox record): `add` returns it, `check` and `delete` are given it back (None on a DEL without one)."""

    def __init__(self, conflist: ConfList, runtime: CniRuntime) -> None:
        self.conflist = conflist
        self.runtime = runtime

    @classmethod
    def load(cls, path: Path, cni_path: Sequence[Path | str], exec_netns: str | None = None,
             timeout_s: float = 120.0) -> CniNetwork:
        return cls(load_conflist(path), CniRuntime(cni_path, timeout_s=timeout_s, exec_netns=exec_netns))

    @property
    def timings(self) -> list[ExecTiming]:
        return self.runtime.timings

    def add(self, container_id: str, netns: str, ifname: str = "eth0", args: Mapping[str, str] | str = "",
            capability_args: Mapping[str, Any] | None = None) -> Json:
        return self.runtime.run_add(self.conflist, RuntimeConf(container_id, netns, ifname, args,
                                                               capability_args or {}))

    def check(self, container_id: str, netns: str, ifname: str, args: Mapping[str, str] | str,
              prev_result: Json | None, capability_args: Mapping[str, Any] | None = None) -> None:
        if prev_result is None:
            raise CniError(self.conflist.name, "CHECK", {"code": 7, "msg": "no ADD result to CHECK against"})
        self.runtime.run_check(self.conflist, RuntimeConf(container_id, netns, ifname, args, capability_args or {}),
                               prev_result)

    def delete(self, container_id: str, netns: str, ifname: str, args: Mapping[str, str] | str,
               prev_result: Json | None, capability_args: Mapping[str, Any] | None = None) -> None:
        self.runtime.run_delete(self.conflist, RuntimeConf(container_id, netns, ifname, args, capability_args or {}),
                                prev_result)

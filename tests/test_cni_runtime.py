"""The libcni-like harness (cce_net/cni_runtime.py) and the install-cni command.

Component tier (no root): the harness against tiny recording plugins (order, prevResult, runtimeConfig, errors,
cache), and `cce-net install-cni` (idempotent, keeps user plugins, installs the chosen plugin).
Privileged tier (root, /usr/lib/cni from Debian's containernetworking-plugins): our plugin chained with the
reference portmap and bandwidth on real network namespaces, through the in-process gateway on a real nats-server
with a stand-in datapath that really creates the pod's veth. Tests of our plugin run against both plugins, the
Python one and the native one (tests/cni_plugins.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cce_net.cli import app
from cce_net.cni_runtime import CniError, CniNetwork, CniRuntime, RuntimeConf, conflist_from, load_conflist
from cce_net.stack import REFERENCE_PLUGINS
from chassis.bus import Bus
from chassis.config import ChassisSettings
from services.cni_gateway import install
from tests.cni_plugins import PluginChoice
from tests.privileged import NEEDS_CHAIN_PLUGINS
from tests.test_cni_fakes import Cni, cni_stack

RECORDER = """#!{python} -IS
import json, os, sys
config = json.load(sys.stdin)
name = os.path.basename(sys.argv[0])
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"plugin": name, "command": os.environ["CNI_COMMAND"], "config": config,
                         "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}) + "\\n")
if name == "failing":
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "try later"}}))
    sys.exit(1)
if os.environ["CNI_COMMAND"] == "ADD":
    result = config.get("prevResult") or {{"cniVersion": config["cniVersion"], "ips": []}}
    result.setdefault("seen", []).append(name)
    print(json.dumps(result))
"""


@pytest.fixture
def recorders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("first", "second", "failing"):
        path = bin_dir / name
        path.write_text(RECORDER.format(python=os.path.realpath(sys.executable)))
        path.chmod(0o755)
    monkeypatch.setenv("RECORD", str(tmp_path / "record.jsonl"))
    return bin_dir


def records(bin_dir: Path) -> list[dict[str, Any]]:
    path = bin_dir.parent / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


CHAIN = conflist_from({"cniVersion": "1.0.0", "name": "net", "plugins": [
    {"type": "first", "capabilities": {"portMappings": True}},
    {"type": "second", "capabilities": {"bandwidth": True, "portMappings": False}}]})
POD = RuntimeConf("c1", "/run/netns/p", "eth0", {"K8S_POD_NAME": "p"},
                  {"portMappings": [{"hostPort": 1}], "bandwidth": {"ingressRate": 1}})


def test_add_runs_in_order_passing_prev_result_and_declared_capabilities(recorders: Path, tmp_path: Path) -> None:
    runtime = CniRuntime([tmp_path / "missing", recorders], cache_dir=tmp_path / "cache")
    result = runtime.add(CHAIN, POD)
    assert result["seen"] == ["first", "second"]
    first, second = records(recorders)
    assert (first["plugin"], second["plugin"]) == ("first", "second")
    assert "prevResult" not in first["config"] and second["config"]["prevResult"]["seen"] == ["first"]
    assert first["config"]["name"] == "net" and first["config"]["cniVersion"] == "1.0.0"
    assert first["config"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert second["config"]["runtimeConfig"] == {"bandwidth": {"ingressRate": 1}}
    assert first["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p",
                            "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAME=p",
                            "CNI_PATH": f"{tmp_path / 'missing'}:{recorders}"}
    assert [(t.plugin, t.command, t.ok) for t in runtime.timings] == [("first", "ADD", True), ("second", "ADD", True)]
    assert all(t.seconds > 0 for t in runtime.timings)


def test_check_in_order_and_del_in_reverse_with_the_cached_result(recorders: Path, tmp_path: Path) -> None:
    runtime = CniRuntime([recorders], cache_dir=tmp_path / "cache")
    result = runtime.add(CHAIN, POD)
    other_process = CniRuntime([recorders], cache_dir=tmp_path / "cache")  # the cache is on disk
    other_process.check(CHAIN, POD)
    other_process.delete(CHAIN, POD)
    calls = [(r["plugin"], r["command"]) for r in records(recorders)][2:]
    assert calls == [("first", "CHECK"), ("second", "CHECK"), ("second", "DEL"), ("first", "DEL")]
    assert all(r["config"]["prevResult"] == result for r in records(recorders)[2:])
    assert other_process.cached_result(CHAIN, POD) is None
    runtime.delete(CHAIN, POD)  # no cache: DEL without prevResult
    assert all("prevResult" not in r["config"] for r in records(recorders)[-2:])


def test_a_failing_plugin_raises_with_its_cni_error(recorders: Path) -> None:
    runtime = CniRuntime([recorders])
    chain = conflist_from({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "first"},
                                                                             {"type": "failing"}]})
    with pytest.raises(CniError) as info:
        runtime.add(chain, POD)
    assert info.value.code == 11 and info.value.error["msg"] == "busy" and info.value.plugin == "failing"
    with pytest.raises(CniError) as missing:
        runtime.add(conflist_from({"name": "n", "plugins": [{"type": "nope"}]}), POD)
    assert "not found in CNI_PATH" in str(missing.value)


def test_cni_network_lets_the_caller_keep_the_result(recorders: Path, tmp_path: Path) -> None:
    path = tmp_path / "net.conflist"
    path.write_text(json.dumps(CHAIN.raw))
    network = CniNetwork.load(path, [recorders])
    result = network.add("c9", "/run/netns/p", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p")
    network.check("c9", "/run/netns/p", "eth0", "K8S_POD_NAME=p", result)
    network.delete("c9", "", "eth0", "K8S_POD_NAME=p", None)
    seen = records(recorders)
    assert seen[0]["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert seen[2]["config"]["prevResult"] == result and "prevResult" not in seen[-1]["config"]
    assert len(network.timings) == 6


def test_install_cni_is_idempotent_and_keeps_user_plugins(tmp_path: Path, cni_plugin: PluginChoice) -> None:
    runner = CliRunner()
    chosen = ["--plugin", cni_plugin.kind, *(["--plugin-binary", str(cni_plugin.binary)] if cni_plugin.binary else [])]
    args = ["install-cni", "--node", "node-1", "--bin-dir", str(tmp_path / "bin"), "--conf-dir",
            str(tmp_path / "conf"), *chosen, "--chain", "portmap,bandwidth"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    conflist_path = tmp_path / "conf" / "10-cce.conflist"
    conflist = json.loads(conflist_path.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["cce", "portmap", "bandwidth"]
    assert conflist["plugins"][0] == {"type": "cce", "socket": "/run/cce-net/cni.sock", "node": "node-1",
                                      "bandwidth": "chained"}  # the chained reference plugin shapes
    assert conflist["plugins"][1]["capabilities"] == {"portMappings": True}
    assert conflist["plugins"][2]["capabilities"] == {"bandwidth": True}
    plugin = tmp_path / "bin" / "cce"
    assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
    if cni_plugin.binary is None:
        assert plugin.read_text().startswith(f"#!{os.path.realpath(sys.executable)} -IS\n")
    else:
        assert plugin.read_bytes() == cni_plugin.binary.read_bytes()
    assert f"({cni_plugin.kind})" in first.output

    conflist["plugins"].insert(2, {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}})
    conflist_path.write_text(json.dumps(conflist))
    again = runner.invoke(app, [*args[:-2], "--socket", "/run/other.sock", "--chain", "portmap,bandwidth"])
    assert again.exit_code == 0, again.output
    updated = json.loads(conflist_path.read_text())
    assert [p["type"] for p in updated["plugins"]] == ["cce", "portmap", "tuning", "bandwidth"]
    assert updated["plugins"][0]["socket"] == "/run/other.sock"
    before = (conflist_path.stat().st_mtime_ns, plugin.stat().st_mtime_ns)
    third = runner.invoke(app, [*args[:-2], "--socket", "/run/other.sock", "--chain", "portmap,bandwidth"])
    assert third.exit_code == 0 and third.output.count("unchanged") == 2
    assert (conflist_path.stat().st_mtime_ns, plugin.stat().st_mtime_ns) == before
    bad = runner.invoke(app, [*args[:-2], "--chain", "nosuch"])
    assert bad.exit_code == 1


def test_auto_installs_the_native_plugin_when_built_and_python_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native_plugin: Path) -> None:
    built = tmp_path / "build" / "cce"
    monkeypatch.setattr(install, "NATIVE_BUILD", built)
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "conf"
    without = install.install_cni(bin_dir, conf_dir, "node-1")
    assert (without.kind, without.plugin_changed) == ("python", True)
    with pytest.raises(install.InstallError, match="make cni-plugin"):
        install.install_cni(bin_dir, conf_dir, "node-1", plugin_kind="native")

    built.parent.mkdir()
    built.write_bytes(native_plugin.read_bytes())
    switched = install.install_cni(bin_dir, conf_dir, "node-1")
    assert (switched.kind, switched.plugin_changed) == ("native", True)
    assert switched.plugin.read_bytes() == native_plugin.read_bytes()
    inode = switched.plugin.stat().st_ino
    again = install.install_cni(bin_dir, conf_dir, "node-1", plugin_kind="native")
    assert (again.kind, again.changed) == ("native", False) and again.plugin.stat().st_ino == inode
    back = install.install_cni(bin_dir, conf_dir, "node-1", plugin_kind="python")
    assert (back.kind, back.plugin_changed) == ("python", True) and back.plugin.read_bytes().startswith(b"#!")

    not_elf = tmp_path / "not-a-binary"
    not_elf.write_text("#!/bin/sh\n")
    with pytest.raises(install.InstallError, match="not an executable"):
        install.install_cni(bin_dir, conf_dir, "node-1", plugin_binary=not_elf)
    with pytest.raises(install.InstallError, match="cannot be read"):
        install.install_cni(bin_dir, conf_dir, "node-1", plugin_binary=tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------
# Privileged: chained with the reference portmap and bandwidth plugins on real namespaces.



def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(3)
    node, pod = f"cce-cnit-n{suffix}", f"cce-cnit-p{suffix}"
    for name in (node, pod):
        ip("netns", "add", name)
    ip("-n", node, "link", "set", "lo", "up")
    try:
        yield node, pod
    finally:
        for name in (pod, node):
            ip("netns", "del", name, check=False)


@pytest.fixture
async def chained(settings: ChassisSettings, bus: Bus, namespaces: tuple[str, str],
                  cni_plugin: PluginChoice) -> AsyncIterator[Cni]:
    node, _ = namespaces
    async with cni_stack(settings, bus, node_netns=node, cni_chain="portmap,bandwidth", call_timeout_s=5.0,
                         **cni_plugin.settings) as stack:
        yield stack


def in_node(node: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{node}", "--", *argv], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.integration
@NEEDS_CHAIN_PLUGINS
async def test_chained_with_portmap_and_bandwidth_add_check_del(chained: Cni, namespaces: tuple[str, str]) -> None:
    node, pod = namespaces
    conf_dir = chained.gw.settings.cni_conf_dir
    assert conf_dir is not None
    conflist = load_conflist(conf_dir / "10-cce.conflist")
    assert [p["type"] for p in conflist.plugins] == ["cce", "portmap", "bandwidth"]
    runtime = CniRuntime([chained.gw.plugin.parent, REFERENCE_PLUGINS], exec_netns=f"/run/netns/{node}")
    rt = RuntimeConf("chain1", f"/run/netns/{pod}", "eth0",
                     {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web", "IgnoreUnknown": "1"},
                     {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
                      "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000_000,
                                    "egressRate": 8_000_000, "egressBurst": 80_000_000}})

    result = await asyncio.to_thread(runtime.add, conflist, rt)
    veth = result["interfaces"][0]["name"]
    assert result["ips"][0]["address"].endswith("/32")
    assert "18080" in in_node(node, "iptables-save", "-t", "nat")
    assert "tbf" in in_node(node, "tc", "qdisc", "show", "dev", veth)
    failure: CniError | None = None
    try:
        await asyncio.to_thread(runtime.check, conflist, rt)
    except CniError as err:
        failure = err
    if failure is None:
        assert [t.plugin for t in runtime.timings if t.command == "CHECK"] == ["cce", "portmap", "bandwidth"]
    else:
        # Debian's portmap 1.1.1 fails CHECK for IPv4-only pods looking for ip6tables rules it never created
        # (containernetworking/plugins#819, fixed upstream later); the rest of the chain must pass CHECK.
        assert failure.plugin == "portmap" and "ipv6" in failure.error["msg"], failure
        without_portmap = conflist_from({**conflist.raw, "plugins": [p for p in conflist.plugins
                                                                     if p["type"] != "portmap"]})
        await asyncio.to_thread(runtime.check, without_portmap, rt)
    chained.datapath.problems = ["pod route missing"]
    with pytest.raises(CniError) as broken:
        await asyncio.to_thread(runtime.check, conflist, rt)
    assert broken.value.plugin == "cce" and broken.value.code == 101
    chained.datapath.problems = []

    await asyncio.to_thread(runtime.delete, conflist, rt)
    assert [t.plugin for t in runtime.timings if t.command == "DEL"] == ["bandwidth", "portmap", "cce"]
    assert "18080" not in in_node(node, "iptables-save", "-t", "nat")
    assert ip("-n", node, "link", "show", veth, check=False).returncode != 0
    assert await chained.ipam.keys() == []
    await asyncio.to_thread(runtime.delete, conflist, rt)  # a second DEL, without cache or netns problems

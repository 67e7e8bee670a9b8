"""Fuzzing (integration tier): the native CNI plugin exec-ed with hostile stdin and environment, and raw bytes on
the gateway's unix socket, against the real cni_gateway with stateful stand-ins for ipam and the datapath
(tests/test_cni_fakes.py). Every input ends, in bounded time, in a CNI result or a CNI error object (never a crash,
a panic, a non-JSON answer or an `Internal` error), and a refused input changes no endpoint record.
A few hundred inputs per surface; CCE_FUZZ_LONG=1 runs 10,000 (tests/fuzzing.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chassis.bus import Bus
from chassis.config import ChassisSettings
from tests.cni_plugins import PluginChoice
from tests.fuzzing import COUNTS, FUZZ_TIMEOUT, corpus, fuzz_settings, mutated, nasty_text
from tests.test_cni_fakes import Cni, cni_stack, own_netns

pytestmark = pytest.mark.integration
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")


@pytest.fixture
async def cni(settings: ChassisSettings, bus: Bus, native_plugin: Path) -> AsyncIterator[Cni]:
    async with cni_stack(settings, bus, **PluginChoice("native", native_plugin).settings) as stack:
        yield stack


def base_env(cni: Cni, command: str = "ADD", container_id: str = "") -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id or secrets.token_hex(8), "CNI_NETNS": own_netns(), "CNI_IFNAME": "eth0",
            "CNI_PATH": str(cni.gw.plugin.parent), "CNI_NETNS_OVERRIDE": "1",
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=fuzz;K8S_POD_UID=u1"}


async def run_plugin(cni: Cni, env: dict[str, str], stdin: bytes) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(str(cni.gw.plugin), env=env, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"the plugin hung for 30 s on env={env!r} stdin={stdin[:300]!r}") from None
    assert proc.returncode is not None
    return proc.returncode, out, err


def assert_cni_answer(code: int, out: bytes, err: bytes, what: str) -> dict[str, Any] | None:
    """A result (exit 0) or a CNI error object (non-zero) on stdout; never a panic or an Internal error."""
    assert b"panic" not in err and b"goroutine" not in err, f"the plugin panicked on {what}:\n{err.decode()[:2000]}"
    if not out.strip():
        assert code == 0, f"exit {code} with nothing on stdout for {what}; stderr: {err[:500]!r}"
        return None
    try:
        answer: dict[str, Any] = json.loads(out)
    except ValueError:
        raise AssertionError(f"stdout is not JSON for {what}: {out[:500]!r}") from None
    if code != 0:
        assert isinstance(answer.get("code"), int) and isinstance(answer.get("msg"), str), (what, answer)
        assert not str(answer.get("details", "")).startswith("Internal"), f"an Internal error for {what}: {answer}"
    return answer


async def plugin_case(cni: Cni, env: dict[str, str], stdin: bytes) -> None:
    """One input; a refused one leaves the endpoint records as they were, an accepted ADD is deleted again."""
    before = sorted(await cni.ipam.store.list())
    code, out, err = await run_plugin(cni, env, stdin)
    what = f"env={ {k: v[:80] for k, v in env.items()} } stdin={stdin[:200]!r}"
    assert_cni_answer(code, out, err, what)
    COUNTS["cni-plugin"] += 1
    if code != 0:
        assert sorted(await cni.ipam.store.list()) == before, f"a refused input changed the endpoints: {what}"
    elif env.get("CNI_COMMAND") == "ADD":
        code, out, err = await run_plugin(cni, {**env, "CNI_COMMAND": "DEL"}, stdin)
        assert code == 0, (what, out, err)
    cni.ipam._next = 10  # the stand-in's addresses come round again (its subnet is small)


def env_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(text, st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "eth0",
                                            "c0ffee01", "/proc/self/ns/net", "/run/netns/none"]))


STDIN_KIND = st.sampled_from(["config", "json", "bytes", "huge"])


@FUZZ_TIMEOUT
@given(data=st.data())
@fuzz_settings()
async def test_the_plugin_answers_hostile_stdin_and_environment_with_a_cni_result_or_error(
        cni: Cni, data: st.DataObject) -> None:
    env = base_env(cni, data.draw(st.sampled_from(COMMANDS)))
    for key in data.draw(st.sets(st.sampled_from(sorted(env.keys() - {"PATH"})), max_size=3)):
        env[key] = data.draw(env_values(nasty_text)).encode()[:65536].decode(errors="ignore")  # the kernel's cap
    kind = data.draw(STDIN_KIND)
    config = {**cni.gw.config(), "prevResult": {"cniVersion": "1.0.0", "ips": []}}
    if kind == "config":
        stdin = json.dumps(data.draw(mutated(config))).encode()
    elif kind == "json":
        stdin = json.dumps(data.draw(st.one_of(st.lists(nasty_text), nasty_text, st.integers()))).encode()
    elif kind == "bytes":
        stdin = data.draw(st.binary(max_size=512))
    else:
        stdin = json.dumps({**config, "pad": "x" * data.draw(st.integers(1 << 16, 1 << 21))}).encode()
    await plugin_case(cni, env, stdin)


@pytest.mark.parametrize("case", corpus("cni"), ids=lambda c: c["why"][:40])
async def test_the_plugin_corpus_of_nasty_cases(cni: Cni, case: dict[str, Any]) -> None:
    env = {**base_env(cni), **case.get("env", {})}
    stdin = base64.b64decode(case["stdin_b64"]) if "stdin_b64" in case else json.dumps(
        {**cni.gw.config(), **case.get("config", {})}).encode()
    await plugin_case(cni, env, stdin)


# ---- raw bytes on the gateway's socket -----------------------------------------------------------------------------


OVER_LIMIT = {"ok": False, "error": {"code": 6, "msg": "connection reset: request over the size limit"}}


async def exchange(path: Path, data: bytes, close_write: bool, limit: int = 64 * 1024) -> dict[str, Any]:
    """One request on its own connection; a request over the gateway's size limit may be cut off by a reset (the
    gateway stops reading it), which counts as its refusal."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        try:
            writer.write(data)
            await writer.drain()
            if close_write:
                writer.write_eof()
            line = await asyncio.wait_for(reader.readline(), 10)
        except ConnectionError:
            if len(data) > limit:
                return OVER_LIMIT
            raise
        assert line.endswith(b"\n"), f"no complete answer line for {data[:200]!r}: {line[:200]!r}"
        reply: dict[str, Any] = json.loads(line)
        return reply
    finally:
        writer.close()


async def socket_case(cni: Cni, data: bytes, close_write: bool = True) -> None:
    before = sorted(await cni.ipam.store.list())
    reply = await exchange(cni.gw.socket, data, close_write)
    COUNTS["gateway-socket"] += 1
    assert reply.get("ok") in (True, False), reply
    if reply["ok"]:
        request = json.loads(data)
        env = request["env"]
        if request.get("command") == "ADD":
            undo = {"command": "DEL", "env": env, "config": request["config"]}
            assert (await exchange(cni.gw.socket, json.dumps(undo).encode() + b"\n", True))["ok"]
    else:
        error = reply["error"]
        assert isinstance(error.get("code"), int) and isinstance(error.get("msg"), str), reply
        assert not str(error.get("details", "")).startswith("Internal"), f"Internal error for {data[:300]!r}: {reply}"
        assert sorted(await cni.ipam.store.list()) == before, f"a refused request changed the endpoints: {data[:300]!r}"
    cni.ipam._next = 10


@FUZZ_TIMEOUT
@given(data=st.data())
@fuzz_settings()
async def test_the_gateway_socket_answers_any_bytes_with_one_json_line(cni: Cni, data: st.DataObject) -> None:
    request = {"command": data.draw(st.sampled_from(COMMANDS)),
               "env": {k: v for k, v in base_env(cni).items() if k.startswith("CNI_") and k != "CNI_COMMAND"},
               "config": {**cni.gw.config(), "prevResult": {"cniVersion": "1.0.0"}}}
    kind = data.draw(st.sampled_from(["request", "env", "bytes", "huge", "unterminated"]))
    if kind == "request":
        line = json.dumps(data.draw(mutated(request))).encode() + b"\n"
    elif kind == "env":
        line = json.dumps({**request, "env": data.draw(mutated(request["env"]))}).encode() + b"\n"
    elif kind == "bytes":
        line = data.draw(st.binary(max_size=1024))
    elif kind == "huge":
        line = json.dumps({**request, "pad": "y" * data.draw(st.integers(1 << 15, 1 << 20))}).encode() + b"\n"
    else:
        line = json.dumps(request).encode()[: data.draw(st.integers(0, 60))]
    await socket_case(cni, line, close_write=data.draw(st.booleans()) or kind != "unterminated")


@pytest.mark.parametrize("case", corpus("socket"), ids=lambda c: c["why"][:40])
async def test_the_gateway_socket_corpus_of_nasty_cases(cni: Cni, case: dict[str, Any]) -> None:
    await socket_case(cni, base64.b64decode(case["b64"]) if "b64" in case else case["text"].encode(),
                      close_write=case.get("close_write", True))

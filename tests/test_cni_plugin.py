"""Component tier: the installed CNI plugin exec-ed like a runtime does, against the cni_gateway started in-process
on a real nats-server, with stateful stand-ins for ipam and node_datapath on their bus subjects
(tests/test_cni_fakes.py). Needs no root: the pod netns is the test process's own.

Every test that execs the plugin runs against both plugins (tests/cni_plugins.py): the Python one and the native
one (cni/, Go). Where the CNI library's skel (native) rejects bad input before the gateway sees it, the code is the
same and the message is the library's. As root, the native plugin also runs in a chroot holding nothing but itself
and the gateway's socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog.testing

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import Store
from schemas.errors import CceError, ErrorReason
from schemas.records import CceEndpoint, EndpointAddress
from schemas.subjects import ENDPOINTS, endpoint_key
from services.cni_gateway.plugin import SUPPORTED_VERSIONS
from tests.cni_plugins import PluginChoice
from tests.privileged import NEEDS_ROOT
from tests.test_cni_fakes import GATEWAY_IP, NODE, SUBNET, Cni, cni_stack, own_netns, register_node, short_tmpdir

pytestmark = pytest.mark.integration


@pytest.fixture
async def cni(settings: ChassisSettings, bus: Bus, cni_plugin: PluginChoice) -> AsyncIterator[Cni]:
    async with cni_stack(settings, bus, **cni_plugin.settings) as stack:
        yield stack


async def exchange_raw(path: Path, data: bytes, close_write: bool = True) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), 5)
        reply: dict[str, Any] = json.loads(line)
        return reply
    finally:
        writer.close()


# ---- VERSION and the install -------------------------------------------------------------------------------------


async def test_version_is_answered_by_the_plugin_itself(cni: Cni) -> None:
    await cni.gw.stop()  # no gateway needed
    code, out = await cni.gw.exec("VERSION", stdin=b'{"cniVersion": "1.0.0"}')
    assert code == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(SUPPORTED_VERSIONS)


async def test_the_plugin_is_installed_as_chosen(cni: Cni, cni_plugin: PluginChoice) -> None:
    if cni_plugin.binary is None:  # python: an isolated absolute interpreter in the shebang
        first_line = cni.gw.plugin.read_text().splitlines()[0]
        interpreter, flags = first_line[2:].split(" ")
        assert os.path.isabs(interpreter) and os.access(interpreter, os.X_OK) and flags == "-IS"
    else:  # native: the built executable, as it is
        assert cni.gw.plugin.read_bytes() == cni_plugin.binary.read_bytes()
    assert stat.S_IMODE(cni.gw.plugin.stat().st_mode) == 0o755
    conflist = json.loads((cni.gw.dir / "conf" / "10-cce.conflist").read_text())
    assert conflist["plugins"][0] == {"type": "cce", "socket": str(cni.gw.socket), "node": NODE,
                                      "capabilities": {"bandwidth": True}}


async def test_the_socket_is_private_to_root(cni: Cni) -> None:
    mode = cni.gw.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


# ---- ADD ---------------------------------------------------------------------------------------------------------


async def test_add_returns_a_100_result_and_records_a_ready_endpoint(cni: Cni) -> None:
    code, result = await cni.gw.exec("ADD", container_id="c1")
    assert code == 0, result
    assert result is not None and result["cniVersion"] == "1.0.0"
    assert [i["name"] for i in result["interfaces"]] == [cni.datapath.host_veth("c1", "eth0"), "eth0"]
    assert result["interfaces"][1]["sandbox"] == own_netns()
    assert result["ips"] == [{"address": f"{SUBNET[11]}/32", "gateway": str(GATEWAY_IP), "interface": 1}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": str(GATEWAY_IP)}]
    assert cni.ipam.verbs("confirm") == ["c1"]
    item = await cni.ipam.store.get(endpoint_key(NODE, "c1", "eth0"))
    assert item is not None and item.value.pod == "pod-c1" and item.value.host_veth.startswith("cce")


async def test_add_twice_for_the_same_container_returns_the_same_result(cni: Cni) -> None:
    first = await cni.gw.exec("ADD", container_id="c2")
    again = await cni.gw.exec("ADD", container_id="c2")
    assert first[0] == 0 and first == again
    assert len(await cni.ipam.keys()) == 1


async def test_a_040_configuration_gets_a_040_result(cni: Cni) -> None:
    code, result = await cni.gw.exec("ADD", container_id="c3", config=cni.gw.config("0.4.0"))
    assert code == 0 and result is not None
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4" and result["ips"][0]["interface"] == 1


async def test_without_kubernetes_args_the_pod_is_named_after_the_container(cni: Cni) -> None:
    code, _ = await cni.gw.exec("ADD", container_id="0123456789abcdef0123", env={"CNI_ARGS": None})
    assert code == 0
    item = await cni.ipam.store.get(endpoint_key(NODE, "0123456789abcdef0123", "eth0"))
    assert item is not None and (item.value.namespace, item.value.pod) == ("default", "0123456789ab")


class BadInput(NamedTuple):
    case: str
    how: dict[str, Any]
    code: int
    words: str  # in the msg
    native_words: str | None = None  # when the native plugin's skel answers before the gateway, in its words


BAD_INPUTS = [
    BadInput("malformed stdin", {"stdin": b"{not json"}, 6, "not JSON", "error unmarshall network config"),
    BadInput("stdin not an object", {"stdin": b"[1]"}, 6, "not a JSON object", "cannot unmarshal array"),
    BadInput("unknown cniVersion", {"version": "9.0.0"}, 1, "not supported", "incompatible CNI versions"),
    BadInput("no CNI_CONTAINERID", {"env": {"CNI_CONTAINERID": None}}, 4, "CNI_CONTAINERID is missing",
             "[CNI_CONTAINERID] missing"),
    BadInput("no CNI_NETNS", {"env": {"CNI_NETNS": None}}, 4, "CNI_NETNS is missing", "[CNI_NETNS] missing"),
    BadInput("no CNI_IFNAME", {"env": {"CNI_IFNAME": None}}, 4, "CNI_IFNAME is missing", "[CNI_IFNAME] missing"),
    BadInput("netns does not exist", {"netns": "/run/netns/cce-no-such-netns"}, 3, "does not exist"),
    BadInput("netns is a plain file", {"netns": "FILE"}, 4, "is not a namespace"),
    BadInput("netns is a uts namespace", {"netns": f"/proc/{os.getpid()}/ns/uts"}, 4, "another kind"),
    BadInput("ifname over 15 chars", {"ifname": "eth0123456789abc"}, 4, "at most 15", "interface name is too long"),
    BadInput("no CNI_COMMAND", {"command": ""}, 4, "CNI_COMMAND"),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[c.case for c in BAD_INPUTS])
async def test_bad_input_gets_its_cni_code_and_allocates_nothing(cni: Cni, cni_plugin: PluginChoice,
                                                                 tmp_path: Path, bad: BadInput) -> None:
    how, code = bad.how, bad.code
    words = bad.native_words if cni_plugin.kind == "native" and bad.native_words else bad.words
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    netns = how.get("netns")
    rc, error = await cni.gw.exec(
        how.get("command", "ADD"), container_id="bad1", netns=str(plain) if netns == "FILE" else netns,
        ifname=how.get("ifname", "eth0"), env=how.get("env"), stdin=how.get("stdin"),
        config=cni.gw.config(how["version"]) if "version" in how else None)
    assert rc == 1
    assert error is not None and error["code"] == code, error
    assert words in error["msg"]
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert cni.ipam.calls == [] and cni.datapath.calls == []
    assert await cni.ipam.keys() == []


async def test_garbage_on_the_socket_gets_a_decode_error_and_the_server_keeps_serving(cni: Cni) -> None:
    reply = await exchange_raw(cni.gw.socket, b"\x00\xffgarbage\n")
    assert reply["ok"] is False and reply["error"]["code"] == 6
    reply = await exchange_raw(cni.gw.socket, b'{"command": "ADD"}\n')  # no env, no config
    assert reply["ok"] is False and reply["error"]["code"] == 6
    too_big = b'{"pad": "' + b"x" * (cni.gw.settings.max_request_bytes + 10) + b'"}\n'
    reply = await exchange_raw(cni.gw.socket, too_big)
    assert reply["error"]["code"] == 6 and "larger than" in reply["error"]["msg"]
    reply = await exchange_raw(cni.gw.socket, b'{"command": "STATUS"', close_write=False)  # never finished
    assert reply["error"]["code"] == 6 and "within" in reply["error"]["msg"]
    assert cni.ipam.calls == []
    code, _ = await cni.gw.exec("ADD", container_id="after-garbage")
    assert code == 0


async def test_a_failed_setup_leaves_nothing_behind(cni: Cni) -> None:
    cni.datapath.fail_setup = CceError(ErrorReason.DATAPATH_FAILED, "veth creation failed")
    code, error = await cni.gw.exec("ADD", container_id="c4")
    assert code == 1 and error is not None
    assert error["code"] == 101 and error["msg"].startswith("DatapathFailed: ")
    assert error["details"].startswith("DatapathFailed")
    assert cni.datapath.verbs("teardown") == ["c4"] and cni.ipam.verbs("release") == ["c4"]
    assert await cni.ipam.keys() == []


async def test_a_failed_confirm_leaves_nothing_behind(cni: Cni) -> None:
    """The confirm runs while the datapath sets the pod up: its failure undoes the setup and the allocation."""
    cni.ipam.fail_confirm = CceError(ErrorReason.ENDPOINT_NOT_FOUND, "released meanwhile")
    code, error = await cni.gw.exec("ADD", container_id="c4c")
    assert code == 1 and error is not None
    assert error["msg"].startswith("EndpointNotFound: ") and "confirm" in error["msg"], error
    assert cni.datapath.verbs("setup") == ["c4c"] and cni.datapath.verbs("teardown") == ["c4c"]
    assert cni.ipam.verbs("release") == ["c4c"] and await cni.ipam.keys() == []


async def test_the_confirm_names_the_pods_host_veth(cni: Cni) -> None:
    assert (await cni.gw.exec("ADD", container_id="c4d"))[0] == 0
    item = await cni.ipam.store.get(endpoint_key(NODE, "c4d", "eth0"))
    assert item is not None and cni.ipam.confirmed["c4d"] == item.value.veth_name == item.value.host_veth
    assert item.value.veth_name.startswith("cce") and len(item.value.veth_name) == 14


async def test_an_empty_pool_is_try_again_later_with_the_coded_reason(cni: Cni) -> None:
    cni.ipam.fail_allocate = CceError(ErrorReason.IP_POOL_EXHAUSTED, "node-1 has no free IP")
    code, error = await cni.gw.exec("ADD", container_id="c5")
    assert code == 1 and error is not None
    assert error["code"] == 11 and error["msg"].startswith("IPPoolExhausted: ")
    assert cni.datapath.calls == []


async def test_a_gateway_that_is_not_running_is_try_again_later(cni: Cni) -> None:
    await cni.gw.stop()
    assert not cni.gw.socket.exists()
    for command in ("ADD", "DEL", "CHECK"):
        config = cni.gw.config(prevResult={"cniVersion": "1.0.0", "ips": []})
        code, error = await cni.gw.exec(command, config=config)
        assert code == 1 and error is not None and error["code"] == 11, (command, error)
        assert "not running" in error["msg"]
    code, error = await cni.gw.exec("STATUS", config=cni.gw.config("1.1.0"))
    assert code == 1 and error is not None and error["code"] == 50


# ---- what the plugin sends and makes of the gateway's replies (the same for both plugins) ------------------------


@contextlib.asynccontextmanager
async def fake_gateway(path: Path, reply: bytes) -> AsyncIterator[list[dict[str, Any]]]:
    """A socket at `path` that records each request line and answers `reply`, then closes the connection."""
    requests: list[dict[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(json.loads(await reader.readline()))
            writer.write(reply)
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield requests
    finally:
        server.close()
        await server.wait_closed()


async def test_the_request_and_the_gateways_answers_pass_through_unchanged(cni: Cni) -> None:
    path = cni.gw.dir / "fake.sock"
    config = cni.gw.config(socket=str(path), extra={"nested": [1, 2.5, None, "\u00fc<&>"]})
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.9/32", "interface": 0}], "dns": {}}
    async with fake_gateway(path, json.dumps({"ok": True, "result": result}).encode() + b"\n") as requests:
        assert await cni.gw.exec("ADD", container_id="pass1", config=config) == (0, result)
    env = {"CNI_CONTAINERID": "pass1", "CNI_NETNS": own_netns(), "CNI_IFNAME": "eth0",
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-pass1;K8S_POD_UID=u1",
           "CNI_PATH": str(cni.gw.plugin.parent)}
    assert requests == [{"command": "ADD", "env": env, "config": config}]
    error = {"code": 104, "msg": "ENICapacityExceed: no ENI left", "details": 'ENICapacityExceed {"node": "n"}'}
    async with fake_gateway(path, json.dumps({"ok": False, "error": error}).encode() + b"\n"):
        assert await cni.gw.exec("DEL", container_id="pass1", config=config) == (1, {"cniVersion": "1.0.0", **error})
    async with fake_gateway(path, b'{"ok": true, "result": [1]}\n'):
        assert await cni.gw.exec("ADD", container_id="pass1", config=config) == (0, {})
    async with fake_gateway(path, b'{"ok": true}\n') as requests:
        assert await cni.gw.exec("CHECK", container_id="pass1", config={**config, "prevResult": result}) == (0, None)
    assert requests[0]["command"] == "CHECK" and requests[0]["config"]["prevResult"] == result


BAD_REPLIES = [
    ("no reply", b"", "closed the connection without a reply"),
    ("not JSON", b"<html>\n", "not JSON"),
    ("not an object", b"[1]\n", "not a JSON object"),
    ("an error without a code", b'{"ok": false}\n', "without a code"),
    ("a code that is not an integer", b'{"ok": false, "error": {"code": 1.5, "msg": "x"}}\n', "without a code"),
]


@pytest.mark.parametrize(("case", "reply", "words"), BAD_REPLIES, ids=[c[0] for c in BAD_REPLIES])
async def test_a_reply_the_plugin_cannot_read_is_an_io_failure(cni: Cni, case: str, reply: bytes,
                                                               words: str) -> None:
    path = cni.gw.dir / "fake.sock"
    async with fake_gateway(path, reply):
        code, error = await cni.gw.exec("ADD", container_id="bad-reply", config=cni.gw.config(socket=str(path)))
    assert code == 1 and error is not None
    assert (error["cniVersion"], error["code"]) == ("1.0.0", 5) and words in error["msg"], error
    assert set(error) == {"cniVersion", "code", "msg", "details"}


async def test_a_gateway_gone_mid_request_is_a_coded_service_unavailable(cni: Cni) -> None:
    """A gateway killed while serving closes the connection without a reply: the CNI error still carries a coded
    reason (found by the chaos run: kubelet saw code 5 with nothing to look up)."""
    path = cni.gw.dir / "fake.sock"
    async with fake_gateway(path, b""):
        code, error = await cni.gw.exec("DEL", container_id="gone", config=cni.gw.config(socket=str(path)))
    assert code == 1 and error is not None
    assert error["code"] == 5 and error["msg"].startswith("ServiceUnavailable: ") and \
        error["details"].split()[0] == "ServiceUnavailable", error


# ---- DEL ---------------------------------------------------------------------------------------------------------


async def test_del_removes_the_pod_network_and_releases_the_ip(cni: Cni) -> None:
    code, result = await cni.gw.exec("ADD", container_id="d1")
    assert code == 0
    code, out = await cni.gw.exec("DEL", container_id="d1", config=cni.gw.config(prevResult=result))
    assert (code, out) == (0, None)
    assert cni.datapath.verbs("teardown") == ["d1"] and cni.ipam.verbs("release") == ["d1"]
    assert await cni.ipam.keys() == []


@pytest.mark.parametrize("netns", ["", "/run/netns/cce-gone-already"], ids=["empty CNI_NETNS", "netns gone"])
async def test_del_succeeds_without_netns_and_without_prev_result(cni: Cni, netns: str) -> None:
    assert (await cni.gw.exec("ADD", container_id="d2"))[0] == 0
    code, out = await cni.gw.exec("DEL", container_id="d2", netns=netns)
    assert (code, out) == (0, None)
    assert cni.datapath.calls[-1] == ("teardown", "d2", "")
    assert await cni.ipam.keys() == []
    code, _ = await cni.gw.exec("DEL", container_id="d2", netns=netns)  # the second DEL (CRI sends two)
    assert code == 0


async def test_del_of_an_unknown_pod_succeeds(cni: Cni) -> None:
    code, out = await cni.gw.exec("DEL", container_id="never-added", netns="")
    assert (code, out) == (0, None)


async def test_del_without_control_plane_is_journaled_and_released_later(cni: Cni) -> None:
    assert (await cni.gw.exec("ADD", container_id="d3"))[0] == 0
    await cni.ipam.stop()
    await cni.datapath.stop()
    code, _ = await cni.gw.exec("DEL", container_id="d3", netns="")
    assert code == 0
    journal = cni.gw.settings.state_dir
    assert [p.name for p in journal.glob("release.*")] == ["release.d3.eth0.json"]
    await cni.ipam.start()
    await wait_until(lambda: not list(journal.glob("release.*")))
    assert await cni.ipam.keys() == []


async def test_a_journaled_release_survives_a_gateway_restart(cni: Cni) -> None:
    assert (await cni.gw.exec("ADD", container_id="d4"))[0] == 0
    await cni.ipam.stop()
    assert (await cni.gw.exec("DEL", container_id="d4", netns=""))[0] == 0
    await cni.gw.stop()
    journal = cni.gw.settings.state_dir
    assert [p.name for p in journal.glob("release.*")] == ["release.d4.eth0.json"]
    await cni.ipam.start()
    await cni.new_gateway()
    await wait_until(lambda: not list(journal.glob("release.*")))
    assert cni.ipam.verbs("release") == ["d4"] and await cni.ipam.keys() == []


async def test_an_add_supersedes_a_pending_release_of_the_same_attachment(cni: Cni) -> None:
    assert (await cni.gw.exec("ADD", container_id="d5"))[0] == 0
    await cni.ipam.stop()
    assert (await cni.gw.exec("DEL", container_id="d5", netns=""))[0] == 0
    await cni.ipam.start()
    code, _ = await cni.gw.exec("ADD", container_id="d5")
    assert code == 0
    await asyncio.sleep(3 * cni.gw.settings.journal_retry_s)
    assert await cni.ipam.keys() == [endpoint_key(NODE, "d5", "eth0")]



async def test_an_add_waits_for_a_journaled_release_already_in_flight(cni: Cni) -> None:
    """The retry has sent the release when the ADD arrives: the ADD must not be handed the endpoint being removed."""
    assert (await cni.gw.exec("ADD", container_id="d6"))[0] == 0
    await cni.ipam.stop()
    assert (await cni.gw.exec("DEL", container_id="d6", netns=""))[0] == 0
    cni.ipam.release_gate = asyncio.Event()
    await cni.ipam.start()
    await wait_until(lambda: "d6" in cni.ipam.verbs("release"))  # the journal's retry reached ipam and is held
    add = asyncio.ensure_future(cni.gw.exec("ADD", container_id="d6"))
    await asyncio.sleep(0.3)
    assert not add.done()
    cni.ipam.release_gate.set()
    code, _ = await add
    assert code == 0
    await asyncio.sleep(3 * cni.gw.settings.journal_retry_s)
    assert await cni.ipam.keys() == [endpoint_key(NODE, "d6", "eth0")]
    assert cni.ipam.verbs("release") == ["d6"] and cni.ipam.verbs("confirm") == ["d6", "d6"]

# ---- CHECK -------------------------------------------------------------------------------------------------------


async def test_check_passes_after_add_and_fails_on_datapath_problems(cni: Cni) -> None:
    code, result = await cni.gw.exec("ADD", container_id="k1")
    assert code == 0
    config = cni.gw.config(prevResult=result)
    assert await cni.gw.exec("CHECK", container_id="k1", config=config) == (0, None)
    cni.datapath.problems = ["route 0.0.0.0/0 via 10.9.0.1 missing in the pod"]
    code, error = await cni.gw.exec("CHECK", container_id="k1", config=config)
    assert code == 1 and error is not None and error["code"] == 101
    assert "route 0.0.0.0/0 via 10.9.0.1 missing" in error["msg"]


async def test_check_needs_a_prev_result_with_the_endpoints_ip(cni: Cni) -> None:
    code, result = await cni.gw.exec("ADD", container_id="k2")
    assert code == 0 and result is not None
    code, error = await cni.gw.exec("CHECK", container_id="k2")
    assert code == 1 and error is not None and error["code"] == 7 and "prevResult" in error["msg"]
    result["ips"][0]["address"] = "10.9.0.200/32"
    code, error = await cni.gw.exec("CHECK", container_id="k2", config=cni.gw.config(prevResult=result))
    assert code == 1 and error is not None and error["code"] == 103 and "10.9.0.200" in error["msg"]
    code, error = await cni.gw.exec("CHECK", container_id="k-unknown", config=cni.gw.config(prevResult=result))
    assert code == 1 and error is not None and error["msg"].startswith("EndpointNotFound")


# ---- STATUS and GC (1.1.0) ---------------------------------------------------------------------------------------


async def test_status_is_unavailable_until_the_node_registers(cni: Cni) -> None:
    code, error = await cni.gw.exec("STATUS", config=cni.gw.config("1.1.0"))
    assert code == 1 and error is not None and error["code"] == 50 and "NodeNotRegistered" in error["msg"]
    await register_node(cni.bus)
    assert await cni.gw.exec("STATUS", config=cni.gw.config("1.1.0")) == (0, None)
    code, error = await cni.gw.exec("STATUS", config=cni.gw.config("1.0.0"))
    assert code == 1 and error is not None and error["code"] == 1


async def test_gc_releases_this_nodes_attachments_the_runtime_does_not_list(cni: Cni) -> None:
    store: Store[CceEndpoint] = Store(await cni.bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)
    other = CceEndpoint(node="node-2", container_id="g-other", ifname="eth0", namespace="d", pod="p",
                        addresses=[EndpointAddress(ip=SUBNET[99], gateway=GATEWAY_IP)])
    await store.create(endpoint_key("node-2", "g-other", "eth0"), other)  # written first: the watch is in order
    for cid in ("g-keep", "g-gone"):
        assert (await cni.gw.exec("ADD", container_id=cid))[0] == 0
    gateway = cni.gw.gateway
    assert gateway is not None
    # the gateway's view holds this node's endpoints only: node-2's record, older than both, never arrives
    await wait_until(lambda: len(gateway.gateway.endpoints.values()) == 2)
    assert {e.node for e in gateway.gateway.endpoints.values()} == {NODE}
    config = cni.gw.config("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "g-keep", "ifname": "eth0"}]})
    assert await cni.gw.exec("GC", config=config) == (0, None)
    assert cni.ipam.verbs("release") == ["g-gone"] and cni.datapath.verbs("teardown") == ["g-gone"]
    assert [k for k in await cni.ipam.keys() if k.startswith("node-1.")] == [endpoint_key(NODE, "g-keep", "eth0")]
    assert await store.get(endpoint_key("node-2", "g-other", "eth0")) is not None


async def test_each_request_is_logged_with_its_container_id_and_duration(cni: Cni) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    with structlog.testing.capture_logs() as logs:
        assert (await cni.gw.exec("ADD", container_id="log1"))[0] == 0
        assert (await cni.gw.exec("DEL", container_id="log1", env={"CNI_ARGS": "not-a-pair"}))[0] == 1
    done = [e for e in logs if e["event"] == "cni request"]
    failed = [e for e in logs if e["event"] == "cni request failed"]
    assert done[-1]["container_id"] == "log1" and done[-1]["command"] == "ADD" and done[-1]["duration_ms"] > 0
    assert failed[-1]["container_id"] == "log1" and failed[-1]["code"] == 4


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ---- the gateway as a process --------------------------------------------------------------------------------------


async def test_the_gateway_process_installs_on_start_serves_and_stops_cleanly(
        settings: ChassisSettings, bus: Bus, cni_plugin: PluginChoice) -> None:
    import signal
    import sys

    from tests.test_cni_fakes import FakeDatapath, FakeIpam, GatewayUnderTest, gateway_settings, short_tmpdir

    root = short_tmpdir()
    gw = GatewayUnderTest(gateway_settings(settings, root), root)
    env = {**os.environ, "CCE_NATS_URL": settings.nats_url, "CCE_NODE": NODE, "CCE_CNI_SOCKET": str(gw.socket),
           "CCE_CNI_BIN_DIR": str(root / "bin"), "CCE_CNI_CONF_DIR": str(root / "conf"),
           "CCE_CNI_STATE_DIR": str(root / "state"), "CCE_CNI_CHAIN": "portmap", "CCE_LOG_LEVEL": "warning",
           **cni_plugin.env}
    ipam, datapath = FakeIpam(bus), FakeDatapath(bus)
    await ipam.start()
    await datapath.start()
    log_path = root / "gateway.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cni_gateway", env=env,
                                                    stderr=log_fd)
    finally:
        os.close(log_fd)
    try:
        await wait_until(lambda: gw.socket.exists() or proc.returncode is not None, timeout=20)
        assert proc.returncode is None, log_path.read_text()
        assert stat.S_IMODE(gw.socket.stat().st_mode) == 0o600
        conflist = json.loads((root / "conf" / "10-cce.conflist").read_text())
        assert [p["type"] for p in conflist["plugins"]] == ["cce", "portmap"]
        assert gw.plugin.read_bytes().startswith(b"\x7fELF" if cni_plugin.kind == "native" else b"#!")
        code, result = await gw.exec("ADD", container_id="proc1")
        assert code == 0 and result is not None and result["ips"][0]["address"] == f"{SUBNET[11]}/32"
        assert await gw.exec("DEL", container_id="proc1", netns="") == (0, None)
        assert await ipam.keys() == []
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log_path.read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await ipam.stop()
            await datapath.stop()
    assert not gw.socket.exists()
    shutil.rmtree(root, ignore_errors=True)


def test_the_gateway_refuses_to_start_without_a_node() -> None:
    import pydantic

    from services.cni_gateway.settings import GatewaySettings

    with pytest.raises(pydantic.ValidationError, match="CCE_NODE is required"):
        GatewaySettings(node="")


# ---- the native plugin needs nothing but itself and the gateway's socket ------------------------------------------


@pytest.fixture
def pod_netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip) for the pod's network namespace")
    name = f"cce-jail-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@NEEDS_ROOT
async def test_the_native_plugin_adds_a_pod_from_a_chroot_holding_only_itself_and_the_socket(
        settings: ChassisSettings, bus: Bus, native_plugin: Path, pod_netns: str) -> None:
    """No Python, no libc, no /proc, no /dev: a static executable and the gateway's socket, nothing else."""
    chroot = shutil.which("chroot")
    if chroot is None:
        pytest.skip("needs chroot (coreutils)")
    jail = short_tmpdir()
    try:
        async with cni_stack(settings, bus, cni_socket=jail / "run" / "cni.sock", cni_plugin="native",
                             cni_plugin_binary=native_plugin) as cni:
            shutil.copy2(native_plugin, jail / "cce")
            assert sorted(str(p.relative_to(jail)) for p in jail.rglob("*")) == ["cce", "run", "run/cni.sock"]
            inside = [chroot, str(jail), "/cce"]
            config = cni.gw.config(socket="/run/cni.sock")  # the gateway's socket, as seen from inside
            code, version = await cni.gw.exec("VERSION", argv=inside)
            assert code == 0 and version == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}

            code, result = await cni.gw.exec("ADD", container_id="jailed1", netns=pod_netns, config=config,
                                             argv=inside)
            assert code == 0, result
            assert result is not None and result["ips"][0]["address"] == f"{SUBNET[11]}/32"
            assert result["interfaces"][1]["sandbox"] == pod_netns
            assert cni.ipam.verbs("confirm") == ["jailed1"]
            code, out = await cni.gw.exec("DEL", container_id="jailed1", netns=pod_netns,
                                          config={**config, "prevResult": result}, argv=inside)
            assert (code, out) == (0, None)
            assert await cni.ipam.keys() == []
    finally:
        shutil.rmtree(jail, ignore_errors=True)

"""Unit tier: CNI request validation, result building per cniVersion, error codes and the GC choice
(services/cni_gateway/domain.py), and the conflist merge of the installer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import CceError, ErrorReason
from schemas.messages import SetupReply
from schemas.records import CceEndpoint, EndpointAddress
from services.cni_gateway import domain
from services.cni_gateway.domain import Attachment, CniCode, CniFailure
from services.cni_gateway.install import InstallError, build_conflist, install_cni

pytestmark = pytest.mark.unit

ENV = {"CNI_CONTAINERID": "abc123def4567890", "CNI_NETNS": "/run/netns/p1", "CNI_IFNAME": "eth0",
       "CNI_ARGS": "K8S_POD_NAMESPACE=web;K8S_POD_NAME=nginx-1;K8S_POD_UID=u-1;IgnoreUnknown=1",
       "CNI_PATH": "/opt/cni/bin"}
CONFIG = {"cniVersion": "1.0.0", "name": "cce", "type": "cce", "socket": "/run/cce-net/cni.sock"}


def body(command: str = "ADD", env: dict[str, str] | None = None, **config: Any) -> dict[str, Any]:
    return {"command": command, "env": {**ENV, **(env or {})}, "config": {**CONFIG, **config}}


def code_of(b: dict[str, Any]) -> int:
    with pytest.raises(CniFailure) as info:
        domain.parse_request(b)
    return info.value.code


def test_a_kubelet_add_is_parsed_with_its_pod() -> None:
    req = domain.parse_request(body())
    assert (req.command, req.version, req.network) == ("ADD", "1.0.0", "cce")
    assert (req.container_id, req.netns, req.ifname) == ("abc123def4567890", "/run/netns/p1", "eth0")
    assert req.pod is not None
    assert (req.pod.namespace, req.pod.name, req.pod.uid) == ("web", "nginx-1", "u-1")


def test_without_kubernetes_args_the_pod_is_default_and_the_short_container_id() -> None:
    req = domain.parse_request(body(env={"CNI_ARGS": ""}))
    assert req.pod is not None
    assert (req.pod.namespace, req.pod.name) == ("default", "abc123def456")


def test_decode_rejects_garbage_with_code_6() -> None:
    for data in (b"not json", b"[1,2]", b"\xff\xfe"):
        with pytest.raises(CniFailure) as info:
            domain.decode_request(data)
        assert info.value.code == CniCode.DECODE_FAILED


@pytest.mark.parametrize(("change", "code"), [
    ({"cniVersion": "9.9.9"}, CniCode.INCOMPATIBLE_VERSION),
    ({"cniVersion": ""}, CniCode.INVALID_CONFIG),
    ({"name": ""}, CniCode.INVALID_CONFIG),
    ({"type": None}, CniCode.INVALID_CONFIG),
    ({"prevResult": "x"}, CniCode.INVALID_CONFIG),
])
def test_bad_configurations_get_their_cni_code(change: dict[str, Any], code: int) -> None:
    assert code_of(body(**change)) == code


@pytest.mark.parametrize(("env", "code"), [
    ({"CNI_CONTAINERID": ""}, CniCode.INVALID_ENV),
    ({"CNI_CONTAINERID": "bad/id"}, CniCode.INVALID_ENV),
    ({"CNI_NETNS": ""}, CniCode.INVALID_ENV),
    ({"CNI_NETNS": "relative/path"}, CniCode.INVALID_ENV),
    ({"CNI_IFNAME": ""}, CniCode.INVALID_ENV),
    ({"CNI_IFNAME": "a" * 16}, CniCode.INVALID_ENV),
    ({"CNI_IFNAME": "eth/0"}, CniCode.INVALID_ENV),
    ({"CNI_IFNAME": "eth 0"}, CniCode.INVALID_ENV),
    ({"CNI_ARGS": "novalue"}, CniCode.INVALID_ENV),
])
def test_bad_environments_get_code_4(env: dict[str, str], code: int) -> None:
    assert code_of(body(env=env)) == code


def test_over_long_ifname_message_says_how_long() -> None:
    with pytest.raises(CniFailure) as info:
        domain.parse_request(body(env={"CNI_IFNAME": "x" * 20}))
    assert "20 characters" in info.value.msg and "at most 15" in info.value.msg


def test_unknown_command_is_an_environment_error() -> None:
    assert code_of(body(command="FROB")) == CniCode.INVALID_ENV


def test_del_needs_no_netns_and_no_prev_result() -> None:
    req = domain.parse_request(body("DEL", env={"CNI_NETNS": ""}))
    assert req.netns == "" and req.prev_result is None


def test_check_needs_prev_result_and_version_040() -> None:
    assert code_of(body("CHECK")) == CniCode.INVALID_CONFIG
    assert code_of(body("CHECK", cniVersion="0.3.1", prevResult={})) == CniCode.INCOMPATIBLE_VERSION
    assert domain.parse_request(body("CHECK", cniVersion="0.4.0", prevResult={"ips": []})).prev_result == {"ips": []}


def test_status_and_gc_need_version_110() -> None:
    assert code_of(body("STATUS")) == CniCode.INCOMPATIBLE_VERSION
    assert domain.parse_request(body("STATUS", env={}, cniVersion="1.1.0")).command == "STATUS"


def test_gc_reads_valid_attachments_and_refuses_without_them() -> None:
    assert code_of(body("GC", cniVersion="1.1.0")) == CniCode.INVALID_CONFIG
    req = domain.parse_request(body("GC", cniVersion="1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}))
    assert req.valid_attachments == frozenset({Attachment("c1", "eth0")})


def test_request_version_falls_back_to_ours_for_unknown_versions() -> None:
    assert domain.request_version(body(cniVersion="0.4.0")) == "0.4.0"
    assert domain.request_version(body(cniVersion="7.0")) == domain.CURRENT_VERSION
    assert domain.request_version({"config": "x"}) == domain.CURRENT_VERSION


SETUP = SetupReply.model_validate({
    "interfaces": [{"name": "cce0123456789a", "mac": "02:00:00:00:00:01"},
                   {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p1"}],
    "ips": [{"address": "10.0.1.5/32", "gateway": "10.0.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}],
    "host_veth": "cce0123456789a"})


def test_result_100_has_no_ip_version_and_keeps_sandbox_only_on_the_pod_side() -> None:
    result = domain.build_result("1.0.0", SETUP)
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cce0123456789a", "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p1"}],
        "ips": [{"address": "10.0.1.5/32", "gateway": "10.0.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}],
        "dns": {}}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_results_mark_ips_as_version_4(version: str) -> None:
    result = domain.build_result(version, SETUP)
    assert result["cniVersion"] == version
    assert result["ips"] == [{"version": "4", "address": "10.0.1.5/32", "gateway": "10.0.1.1", "interface": 1}]


def endpoint(ip: str = "10.0.1.5", container_id: str = "c1", ifname: str = "eth0", node: str = "node-1",
             created_at: datetime | None = None) -> CceEndpoint:
    return CceEndpoint(node=node, container_id=container_id, ifname=ifname, namespace="default", pod="p",
                       addresses=[EndpointAddress(ip=IPv4Address(ip), gateway=IPv4Address("10.0.1.1"))],
                       created_at=created_at or datetime(2024, 1, 1, tzinfo=UTC))


def test_check_addresses_compares_the_prev_result_with_the_endpoint() -> None:
    prev = domain.build_result("0.4.0", SETUP)
    assert domain.check_addresses(prev, endpoint()) is None
    problem = domain.check_addresses(prev, endpoint("10.0.1.6"))
    assert problem is not None and "10.0.1.6" in problem
    with pytest.raises(CniFailure):
        domain.check_addresses({"ips": [{"address": "nonsense"}]}, endpoint())


def test_retryable_reasons_are_try_again_later_and_others_have_our_codes() -> None:
    assert domain.code_of(ErrorReason.IP_POOL_EXHAUSTED) == CniCode.TRY_AGAIN_LATER
    assert domain.code_of(ErrorReason.TIMEOUT) == CniCode.TRY_AGAIN_LATER
    assert domain.code_of(ErrorReason.NODE_NOT_REGISTERED) == CniCode.TRY_AGAIN_LATER
    assert domain.code_of(ErrorReason.DATAPATH_FAILED) >= 100
    assert len(set(domain.REASON_CODES.values())) == len(domain.REASON_CODES)
    failure = domain.failure_of(CceError(ErrorReason.IP_POOL_EXHAUSTED, "no IP", node="node-1"), "allocate")
    assert failure.msg == "IPPoolExhausted: allocate: no IP"
    assert failure.details.startswith("IPPoolExhausted ")
    assert json.loads(failure.details.split(" ", 1)[1]) == {"node": "node-1"}
    assert failure.error("0.4.0") == {"cniVersion": "0.4.0", "code": 11, "msg": failure.msg,
                                      "details": failure.details}


def test_gc_picks_this_nodes_unknown_old_endpoints_only() -> None:
    now = datetime(2024, 1, 2, tzinfo=UTC)
    eps = [endpoint(container_id="keep"), endpoint(container_id="gone"), endpoint(container_id="gone", ifname="net1"),
           endpoint(container_id="other-node", node="node-2"), endpoint(container_id="busy"),
           endpoint(container_id="young", created_at=now - timedelta(seconds=1))]
    chosen = domain.gc_candidates(eps, "node-1", frozenset({Attachment("keep", "eth0")}),
                                  busy={Attachment("busy", "eth0")}, created_before=now - timedelta(seconds=30))
    assert [(e.container_id, e.ifname) for e in chosen] == [("gone", "eth0"), ("gone", "net1")]


def test_conflist_puts_ours_first_keeps_user_plugins_and_adds_chained_once() -> None:
    existing = {"cniVersion": "0.4.0", "name": "cce", "plugins": [
        {"type": "cce", "socket": "/old.sock", "node": "node-1", "extra": 1},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False}]}
    conflist = build_conflist(existing, "node-1", "/run/cce-net/cni.sock", ["portmap", "bandwidth"])
    assert conflist["cniVersion"] == "1.0.0" and conflist["name"] == "cce"
    assert conflist["plugins"] == [
        {"type": "cce", "socket": "/run/cce-net/cni.sock", "node": "node-1", "extra": 1, "bandwidth": "chained"},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    assert build_conflist(conflist, "node-1", "/run/cce-net/cni.sock", ["portmap", "bandwidth"]) == conflist
    alone = build_conflist(None, "node-1", "/run/cce-net/cni.sock", ["portmap"])
    assert alone["plugins"][0]["capabilities"] == {"bandwidth": True} and "bandwidth" not in alone["plugins"][0]


def test_conflist_version_is_1_1_alone_1_0_chained_or_what_the_node_sets() -> None:
    assert build_conflist(None, "node-1", "/s", [])["cniVersion"] == "1.1.0"  # GC and STATUS
    assert build_conflist(None, "node-1", "/s", ["portmap"])["cniVersion"] == "1.0.0"
    assert build_conflist(None, "node-1", "/s", [], "1.0.0")["cniVersion"] == "1.0.0"  # containerd 1.6/1.7


def test_install_refuses_a_cni_version_the_conflist_cannot_have(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"0\.9\.9"):
        install_cni(tmp_path / "bin", tmp_path / "conf", "node-1", version="0.9.9", plugin_kind="python")
    assert not (tmp_path / "conf").exists()


# ---- the plugin's own JSON codec (json's C halves, without importing re/enum) ------------------------------------

CODEC_VALUES: list[Any] = [
    {"cniVersion": "1.0.0", "name": "cce", "plugins": [{"type": "cce", "n": 1, "f": 1.5, "t": True, "x": None}]},
    [], {}, "héllo \u2603 \"quoted\" \\ \n", 0, -12, 3.25e10, [1, [2, [3, {"a": []}]]],
]


@pytest.mark.parametrize("value", CODEC_VALUES)
def test_the_plugin_codec_matches_json(value: Any) -> None:
    from services.cni_gateway import plugin

    text = json.dumps(value)
    assert plugin.dumps(value) == text
    assert plugin.loads(text) == value
    assert plugin.loads(f" \n{text}\n ".encode()) == value


@pytest.mark.parametrize("text", ["", "{", "{not json", "[1,]", "{} {}", "nul", "\"unterminated", b"\xff"])
def test_the_plugin_codec_rejects_what_json_rejects(text: str | bytes) -> None:
    from services.cni_gateway import plugin

    words = r"Expecting|Extra data|Unterminated|codec"
    with pytest.raises(ValueError, match=words):
        json.loads(text)
    with pytest.raises(ValueError, match=words):
        plugin.loads(text)


def test_the_plugin_imports_neither_re_nor_enum() -> None:
    import os
    import subprocess
    import sys

    from services.cni_gateway import plugin

    run = subprocess.run([os.path.realpath(sys.executable), "-IS", "-X", "importtime", plugin.__file__],
                         env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert {"_json", "_socket"} <= imported
    assert not imported & {"re", "enum", "json", "socket", "selectors", "typing"}
    assert json.loads(run.stdout)["supportedVersions"] == plugin.SUPPORTED_VERSIONS


@pytest.mark.parametrize("stdin", ["{not json", "[1,]", "\"abc", "{\"a\": 1", "{}x", ""])
def test_the_plugin_reports_malformed_stdin_as_code_6_in_a_fresh_interpreter(stdin: str) -> None:
    import os
    import subprocess
    import sys

    from services.cni_gateway import plugin

    run = subprocess.run([os.path.realpath(sys.executable), "-IS", plugin.__file__], input=stdin,
                         env={"CNI_COMMAND": "ADD"}, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr == ""
    assert json.loads(run.stdout)["code"] == 6

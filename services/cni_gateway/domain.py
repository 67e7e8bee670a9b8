"""CNI requests and results, as pure functions: validation of a plugin's request, CNI result building in the
configuration's version, CNI error codes for our coded reasons, and the GC choice. No I/O, no asyncio."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from schemas.errors import RETRYABLE, CceError, ErrorReason
from schemas.messages import PodRef, SetupReply
from schemas.records import CceEndpoint, PodInfo
from services.cni_gateway.plugin import CURRENT_VERSION, SUPPORTED_VERSIONS

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$")
IFNAME_MAX = 15  # IFNAMSIZ - 1
ARGS_MAX = 64


class CniCode(IntEnum):
    """The well-known CNI error codes (spec 1.0.0 and 1.1.0); ours are 100 and up."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILED = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    NOT_AVAILABLE_LIMITED = 51


# Our codes for reasons a retry will not fix by itself (retryable reasons are CNI code 11).
REASON_CODES: dict[ErrorReason, int] = {
    ErrorReason.INTERNAL: 100,
    ErrorReason.DATAPATH_FAILED: 101,
    ErrorReason.INVALID_REQUEST: 102,
    ErrorReason.ENDPOINT_NOT_FOUND: 103,
    ErrorReason.ENI_CAPACITY_EXCEED: 104,
    ErrorReason.SUBNET_NO_MORE_IP: 105,
    ErrorReason.NO_AVAILABLE_SUBNET: 106,
    ErrorReason.CIDR_POOL_EXHAUSTED: 107,
    ErrorReason.CLOUD_ERROR: 108,
    ErrorReason.CLOUD_NOT_FOUND: 109,
    ErrorReason.CLOUD_INVALID_STATE: 110,
    ErrorReason.CLOUD_AUTH_FAILED: 111,
    ErrorReason.IP_IN_USE: 112,
}
# Transient even though the bus does not call them retryable: a node registers shortly after it boots.
TRANSIENT: frozenset[ErrorReason] = RETRYABLE | {ErrorReason.NODE_NOT_REGISTERED}


class CniFailure(Exception):
    """A failure the plugin prints as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "", reason: ErrorReason | None = None) -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details
        self.reason = reason  # the coded reason, when the failure came from one

    def error(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


def code_of(reason: ErrorReason) -> int:
    if reason in TRANSIENT:
        return int(CniCode.TRY_AGAIN_LATER)
    return REASON_CODES.get(reason, 100)


def failure_of(err: CceError, doing: str = "") -> CniFailure:
    """A coded bus error as a CNI error: the reason prefixes `msg` and leads `details`."""
    prefix = f"{doing}: " if doing else ""
    details = err.reason.value
    if err.details:
        details += " " + json.dumps(err.details, default=str, sort_keys=True)
    return CniFailure(code_of(err.reason), f"{err.reason.value}: {prefix}{err.message}", details, err.reason)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


# ---------------------------------------------------------------------------------------------------------------
# Requests.


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str


@dataclass(frozen=True)
class CniRequest:
    command: str
    version: str
    network: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    pod: PodRef | None = None
    prev_result: dict[str, Any] | None = None
    valid_attachments: frozenset[Attachment] = frozenset()

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.container_id, self.ifname)



def decode_request(data: bytes) -> dict[str, Any]:
    """The socket's request line as a JSON object, or CNI code 6."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise CniFailure(CniCode.DECODE_FAILED, f"request is not JSON: {err}", "DecodeFailed") from None
    except RecursionError:  # a line within the size limit can nest deeper than the parser goes
        raise CniFailure(CniCode.DECODE_FAILED, "request is nested too deeply", "DecodeFailed") from None
    if not isinstance(body, dict):
        raise CniFailure(CniCode.DECODE_FAILED, "request is not a JSON object", "DecodeFailed")
    return body


def request_version(body: Mapping[str, Any]) -> str:
    """The version to answer in: the configuration's when we support it, else ours."""
    config = body.get("config")
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else CURRENT_VERSION


def parse_request(body: Mapping[str, Any]) -> CniRequest:
    """Validate a plugin request (command, environment, network configuration) before anything is done."""
    command = body.get("command")
    if command not in COMMANDS:
        raise CniFailure(CniCode.INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    env = body.get("env")
    config = body.get("config")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise CniFailure(CniCode.DECODE_FAILED, "request field 'env' must be an object of strings")
    if not isinstance(config, dict):
        raise CniFailure(CniCode.DECODE_FAILED, "request field 'config' must be the network configuration object")
    version = _config_version(config, command)
    network = _config_name(config)
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniFailure(CniCode.INVALID_CONFIG, "prevResult must be an object")
    if command == "STATUS":
        return CniRequest(command, version, network, config)
    if command == "GC":
        return CniRequest(command, version, network, config, valid_attachments=_valid_attachments(config))
    if command == "CHECK" and prev is None:
        raise CniFailure(CniCode.INVALID_CONFIG, "CHECK needs the prevResult of the ADD in the configuration")
    container_id = _container_id(env)
    ifname = _ifname(env)
    netns = _netns(env, required=command != "DEL")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return CniRequest(command, version, network, config, container_id=container_id, netns=netns, ifname=ifname,
                      args=args, pod=pod_of(args, container_id), prev_result=prev)


def _config_version(config: Mapping[str, Any], command: str) -> str:
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniFailure(CniCode.INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniFailure(CniCode.INCOMPATIBLE_VERSION,
                         f"cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})")
    needs = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}.get(command)
    if needs and not version_at_least(version, needs):
        raise CniFailure(CniCode.INCOMPATIBLE_VERSION, f"cniVersion {version} does not allow {command}"
                                                       f" (needs {needs} or later)")
    return version


def _config_name(config: Mapping[str, Any]) -> str:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniFailure(CniCode.INVALID_CONFIG, "network configuration has no name")
    kind = config.get("type")
    if not isinstance(kind, str) or not kind:
        raise CniFailure(CniCode.INVALID_CONFIG, "network configuration has no type")
    return name


def _container_id(env: Mapping[str, str]) -> str:
    value = env.get("CNI_CONTAINERID", "")
    if not value:
        raise CniFailure(CniCode.INVALID_ENV, "CNI_CONTAINERID is missing")
    if not CONTAINER_ID.match(value):
        raise CniFailure(CniCode.INVALID_ENV, f"CNI_CONTAINERID {value[:64]!r} is not a valid container id"
                                              " (letters, digits, '-', '_', '.'; at most 128)")
    return value


KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=")


def is_valid_ifname(name: str) -> bool:
    """A name the kernel takes that can also be part of the endpoint's record key (`<node>.<container>.<ifname>`):
    ASCII letters, digits and `-_.=` (a non-ASCII name was an Internal error from the KV store; found by fuzzing)."""
    return 0 < len(name) <= IFNAME_MAX and name not in (".", "..") and set(name) <= KEY_SAFE


def _ifname(env: Mapping[str, str]) -> str:
    value = env.get("CNI_IFNAME", "")
    if not value:
        raise CniFailure(CniCode.INVALID_ENV, "CNI_IFNAME is missing")
    if len(value) > IFNAME_MAX:
        raise CniFailure(CniCode.INVALID_ENV,
                         f"CNI_IFNAME {value[:64]!r} is {len(value)} characters long; at most {IFNAME_MAX}")
    if not is_valid_ifname(value):
        raise CniFailure(CniCode.INVALID_ENV, f"CNI_IFNAME {value!r} is not a valid interface name")
    return value


def _netns(env: Mapping[str, str], required: bool) -> str:
    value = env.get("CNI_NETNS", "")
    if not value:
        if required:
            raise CniFailure(CniCode.INVALID_ENV, "CNI_NETNS is missing")
        return ""
    if not value.startswith("/"):
        raise CniFailure(CniCode.INVALID_ENV, f"CNI_NETNS {value[:200]!r} is not an absolute path")
    return value


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `KEY=VALUE` pairs separated by ';'."""
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniFailure(CniCode.INVALID_ENV, f"CNI_ARGS: {pair[:100]!r} is not KEY=VALUE")
        args[key] = value
    if len(args) > ARGS_MAX:
        raise CniFailure(CniCode.INVALID_ENV, f"CNI_ARGS has more than {ARGS_MAX} pairs")
    return args


# The pod's opt-in to a whole ENI (nodes with allow_exclusive): a CNI_ARGS key, or the pod annotation as a runtime
# passes annotations (K8S_POD_ANNOTATION_<key>=<value>).
EXCLUSIVE_ARG = "CCE_EXCLUSIVE_ENI"
EXCLUSIVE_ANNOTATION_ARG = "K8S_POD_ANNOTATION_cce.io/exclusive-eni"
TRUE_WORDS = frozenset({"true", "1", "yes"})


EXCLUSIVE_ANNOTATION = "cce.io/exclusive-eni"


def wants_exclusive_eni(args: Mapping[str, str], pod: PodInfo | None = None) -> bool:
    """Whether the pod asks for an exclusive ENI: `CCE_EXCLUSIVE_ENI=true`, or the annotation `cce.io/exclusive-eni`
    as a runtime passes it in CNI_ARGS or as the pod's record (from its object) carries it."""
    said = [args.get(name, "") for name in (EXCLUSIVE_ARG, EXCLUSIVE_ANNOTATION_ARG)]
    if pod is not None:
        said.append(pod.annotations.get(EXCLUSIVE_ANNOTATION, ""))
    return any(word.strip().lower() in TRUE_WORDS for word in said)


def pod_of(args: Mapping[str, str], container_id: str) -> PodRef:
    """The pod from kubelet's CNI_ARGS; runtimes without them (podman, ctr) get default/<container id[:12]>."""
    namespace = args.get("K8S_POD_NAMESPACE", "")
    name = args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return PodRef(namespace="default", name=container_id[:12], uid=args.get("K8S_POD_UID", ""))
    if len(namespace) > 253 or len(name) > 253:
        raise CniFailure(CniCode.INVALID_ENV, "CNI_ARGS: K8S_POD_NAMESPACE/K8S_POD_NAME longer than 253")
    return PodRef(namespace=namespace, name=name, uid=args.get("K8S_POD_UID", ""))


def _valid_attachments(config: Mapping[str, Any]) -> frozenset[Attachment]:
    raw = config.get(VALID_ATTACHMENTS)
    if not isinstance(raw, list):
        raise CniFailure(CniCode.INVALID_CONFIG, f"GC needs '{VALID_ATTACHMENTS}' (a list) in the configuration")
    found: set[Attachment] = set()
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniFailure(CniCode.INVALID_CONFIG,
                             f"'{VALID_ATTACHMENTS}' entries need string containerID and ifname")
        found.add(Attachment(item["containerID"], item["ifname"]))
    return frozenset(found)


# ---------------------------------------------------------------------------------------------------------------
# Results.


def build_result(version: str, setup: SetupReply) -> dict[str, Any]:
    """The CNI result of an ADD, in the configuration's version (0.3.x/0.4.0 ips carry "version": "4")."""
    legacy = not version_at_least(version, "1.0.0")
    interfaces = [{"name": i.name, "mac": i.mac, **({"sandbox": i.sandbox} if i.sandbox else {})}
                  for i in setup.interfaces]
    ips: list[dict[str, Any]] = []
    for ip in setup.ips:
        entry: dict[str, Any] = {"version": "4"} if legacy else {}
        entry.update(address=str(ip.address), gateway=str(ip.gateway), interface=ip.interface)
        ips.append(entry)
    routes = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})} for r in setup.routes]
    return {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": {}}


def result_ips(result: Mapping[str, Any]) -> set[IPv4Address]:
    """The IPv4 addresses of a CNI result (any version); malformed entries are invalid configuration."""
    found: set[IPv4Address] = set()
    ips = result.get("ips", [])
    if not isinstance(ips, list):
        raise CniFailure(CniCode.INVALID_CONFIG, "prevResult.ips must be a list")
    for entry in ips:
        address = entry.get("address") if isinstance(entry, dict) else None
        try:
            interface = IPv4Interface(str(address))
        except ValueError:
            if isinstance(address, str) and ":" in address:
                continue  # IPv6 from another plugin: not ours to check
            raise CniFailure(CniCode.INVALID_CONFIG, f"prevResult has an invalid address {address!r}") from None
        found.add(interface.ip)
    return found


def endpoint_ips(endpoint: CceEndpoint) -> set[IPv4Address]:
    return {a.ip for a in endpoint.addresses}


def check_addresses(prev: Mapping[str, Any], endpoint: CceEndpoint) -> str | None:
    """A problem when the endpoint's addresses are not the ones the ADD reported, else None."""
    reported, recorded = result_ips(prev), endpoint_ips(endpoint)
    if not recorded:
        return "the endpoint has no address"
    if reported != recorded:
        return (f"prevResult reports {sorted(map(str, reported))} but the endpoint has "
                f"{sorted(map(str, recorded))}")
    return None


def gc_candidates(endpoints: Iterable[CceEndpoint], node: str, valid: frozenset[Attachment],
                  busy: Iterable[Attachment] = (), created_before: datetime | None = None) -> list[CceEndpoint]:
    """This node's endpoints the runtime no longer knows about, that no request is working on and that are older
    than `created_before` (an ADD racing the runtime's GC is not collected)."""
    keep = set(valid) | set(busy)
    return sorted((e for e in endpoints
                   if e.node == node and Attachment(e.container_id, e.ifname) not in keep
                   and (created_before is None or e.created_at < created_before)),
                  key=lambda e: (e.container_id, e.ifname))

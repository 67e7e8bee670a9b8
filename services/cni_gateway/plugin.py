#!/usr/bin/env python3
"""The cce CNI plugin: the binary a container runtime execs for every pod (CNI spec 1.0.0, STATUS/GC of 1.1.0).

A thin shim: VERSION is answered here; every other command is forwarded to the node's cni_gateway over its unix
socket (one JSON request line, one JSON reply line) and the reply is printed as the CNI result or CNI error.
It runs once per pod, so it imports only what it needs from the standard library; installed copies carry the
shebang `#!<absolute interpreter> -IS` (isolated, no site). Start-up matters (kubelet execs it for every pod):
the C halves of `json` and `socket` are used directly, which skips importing `re`, `enum` and `selectors`
(about half of the plugin's start-up); the public modules are the fallback.
"""

import os
import sys

try:
    import _socket as socket
except ImportError:  # pragma: no cover - every CPython has it
    import socket  # type: ignore[no-redef]


class _Decoding:
    """The context json's C scanner reads (what json.JSONDecoder would give it)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.lower().replace("infinity", "inf"))


def _no_default(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


try:
    import _json

    _scan = _json.make_scanner(_Decoding)  # type: ignore[arg-type]
    _encode = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None, ": ", ", ", False, False,
                                 True)

    def loads(text: "str | bytes") -> object:
        data = (text.decode("utf-8") if isinstance(text, bytes) else text).strip(" \t\n\r")
        try:
            value, end = _scan(data, 0)
        except StopIteration as err:
            raise ValueError(f"Expecting value: char {err.value}") from None
        except SystemError:  # the C scanner reports errors only once json.decoder is imported: let json say it
            import json

            return json.loads(data)
        if end != len(data):
            raise ValueError(f"Extra data: char {end}")
        return value

    def dumps(value: object) -> str:
        return "".join(_encode(value, 0))

except (ImportError, AttributeError, TypeError):  # pragma: no cover - another Python: the public module
    import json

    def loads(text: "str | bytes") -> object:
        return json.loads(text)

    def dumps(value: object) -> str:
        return json.dumps(value)

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CURRENT_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
ENV_KEYS = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
DEFAULT_SOCKET = "/run/cce-net/cni.sock"
CONNECT_TIMEOUT_S = 2.0
# How long the gateway may take: an ADD may wait for the node's pool to refill, then program the node.
REPLY_TIMEOUT_S = {"ADD": 90.0, "DEL": 60.0, "CHECK": 30.0, "STATUS": 10.0, "GC": 120.0}
MAX_REPLY_BYTES = 1 << 20
Json = dict[str, object]


# CNI well-known error codes (spec 1.0.0 / 1.1.0).
INCOMPATIBLE_VERSION = 1
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILED = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50


class PluginError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def error_object(version: str, code: int, msg: str, details: str = "") -> Json:
    return {"cniVersion": version, "code": code, "msg": msg, "details": details}


def read_config(raw: str) -> Json:
    try:
        config = loads(raw)
    except ValueError as err:
        raise PluginError(DECODE_FAILED, "network configuration on stdin is not JSON", str(err)) from None
    if not isinstance(config, dict):
        raise PluginError(DECODE_FAILED, "network configuration on stdin is not a JSON object")
    return config


def version_reply() -> Json:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS}


def exchange(path: str, request: Json, timeout_s: float) -> Json:
    """Send one request line to the gateway and return its decoded reply line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        sock.settimeout(timeout_s)
        sock.sendall(dumps(request).encode() + b"\n")
        chunks = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n") or size > MAX_REPLY_BYTES:
                break
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data:
        # the gateway went away mid-request (killed, restarting): retryable, and coded as such
        raise PluginError(IO_FAILURE, "ServiceUnavailable: the cni gateway closed the connection without a reply",
                          "ServiceUnavailable")
    try:
        reply = loads(data)
    except ValueError as err:
        raise PluginError(IO_FAILURE, "the cni gateway sent a reply that is not JSON", str(err)) from None
    if not isinstance(reply, dict):
        raise PluginError(IO_FAILURE, "the cni gateway sent a reply that is not a JSON object")
    return reply


def forward(command: str, config: Json, environ: dict[str, str]) -> Json:
    """Run `command` through the gateway; returns the result object (empty for DEL/CHECK/STATUS/GC)."""
    path = config.get("socket") or DEFAULT_SOCKET
    request: Json = {"command": command, "env": {k: environ[k] for k in ENV_KEYS if k in environ}, "config": config}
    try:
        reply = exchange(str(path), request, REPLY_TIMEOUT_S[command])
    except (FileNotFoundError, ConnectionRefusedError) as err:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise PluginError(code, f"ServiceUnavailable: the cni gateway is not running (socket {path})",
                          f"ServiceUnavailable: {err}") from None
    except TimeoutError:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise PluginError(code, f"Timeout: no reply from the cni gateway at {path}", "Timeout") from None
    except OSError as err:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise PluginError(code, f"ServiceUnavailable: cannot talk to the cni gateway at {path}: {err}",
                          "ServiceUnavailable") from None
    if reply.get("ok") is True:
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
    error = reply.get("error")
    error_code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(error_code, int):
        raise PluginError(IO_FAILURE, "the cni gateway sent an error reply without a code", dumps(reply)[:500])
    raise PluginError(error_code, str(error.get("msg", "")), str(error.get("details", "")))


def run(environ: dict[str, str], stdin: str) -> tuple[int, str]:
    """The plugin's whole life: (exit code, what to print on stdout)."""
    command = environ.get("CNI_COMMAND", "")
    version = CURRENT_VERSION
    try:
        if command == "VERSION":
            return 0, dumps(version_reply())
        if command not in COMMANDS:
            raise PluginError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of VERSION, {', '.join(COMMANDS)}")
        config = read_config(stdin)
        requested = config.get("cniVersion")
        if isinstance(requested, str) and requested in SUPPORTED_VERSIONS:
            version = requested
        result = forward(command, config, environ)
        return 0, dumps(result) if command == "ADD" else ""
    except PluginError as err:
        return 1, dumps(error_object(version, err.code, err.msg, err.details))


def main() -> int:
    if not os.environ.get("CNI_COMMAND"):
        sys.stderr.write(f"cce CNI plugin; CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
    stdin = "" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.read()
    code, output = run(dict(os.environ), stdin)
    sys.stdout.write(output)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

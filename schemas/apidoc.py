"""Generate the machine-readable bus API: a JSON Schema per message and record, and an AsyncAPI 3.0 document.

`python -m schemas.apidoc` rewrites `schemas/api/`; `python -m schemas.apidoc --check` exits 1 when it is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from schemas.base import SCHEMA_VERSION, Contract
from schemas.errors import DESCRIPTIONS, ErrorReply
from schemas.permissions import table
from schemas.subjects import BUCKETS, EVENT_PAYLOAD, EVENTS_STREAM, REQUESTS, STREAMS

API_DIR = Path(__file__).parent / "api"
ASYNCAPI_FILE = API_DIR / "asyncapi.json"
PERMISSIONS_FILE = API_DIR / "permissions.md"
MESSAGES_DIR = API_DIR / "messages"


def _contracts() -> list[type[Contract]]:
    seen: dict[str, type[Contract]] = {}
    for req in REQUESTS:
        seen.setdefault(req.request.__name__, req.request)
        seen.setdefault(req.reply.__name__, req.reply)
    seen.setdefault(ErrorReply.__name__, ErrorReply)
    seen.setdefault(EVENT_PAYLOAD.__name__, EVENT_PAYLOAD)
    for bucket in BUCKETS:
        seen.setdefault(bucket.record.__name__, bucket.record)
    for stream in STREAMS:
        for record in stream.records:
            seen.setdefault(record.__name__, record)
    return [seen[name] for name in sorted(seen)]


def message_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema (draft 2020-12) per contract."""
    out: dict[str, dict[str, Any]] = {}
    for model in _contracts():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://cce-network.local/schemas/v{SCHEMA_VERSION}/{model.__name__}.json"
        out[model.__name__] = schema
    return out


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/{kind}/{name}"}


def _channel_id(prefix: str) -> str:
    parts = prefix.split(".")[1:]  # drop "cce"
    return "".join(p if i == 0 else p[:1].upper() + p[1:] for i, p in enumerate(parts))


def asyncapi() -> dict[str, Any]:
    models = _contracts()
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = defs.get("$defs", {})
    messages = {
        m.__name__: {
            "name": m.__name__,
            "title": m.__name__,
            "summary": (m.__doc__ or m.__name__).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": _ref("components/schemas", m.__name__),
        }
        for m in models
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    node_param = {"description": "the node name, '.' written as '_' (one subject token)"}
    for req in REQUESTS:
        cid = _channel_id(req.prefix)
        channels[cid] = {
            "address": f"{req.prefix}.{{node}}",
            "parameters": {"node": node_param},
            "messages": {req.request.__name__: _ref("components/messages", req.request.__name__)},
        }
        channels[f"{cid}Reply"] = {
            "address": None,
            "messages": {
                req.reply.__name__: _ref("components/messages", req.reply.__name__),
                "ErrorReply": _ref("components/messages", "ErrorReply"),
            },
        }
        operations[cid] = {
            "action": "receive",
            "title": req.name,
            "summary": req.summary,
            "channel": _ref("channels", cid),
            "messages": [_ref(f"channels/{cid}/messages", req.request.__name__)],
            "reply": {
                "address": {"location": "$message.header#/reply_to"},
                "channel": _ref("channels", f"{cid}Reply"),
            },
            "x-service": req.service,
            "x-queue-group": req.service,
            "x-callers": list(req.callers),
        }
    channels["events"] = {
        "address": "cce.events.{kind}.{node}.{what}",
        "parameters": {
            "kind": {"description": "node, endpoint, eni, ip, subnet, route, cidr, datapath, service"},
            "node": node_param,
            "what": {"description": "what happened, e.g. allocated, attached, conflict"},
        },
        "messages": {"Event": _ref("components/messages", "Event")},
        "x-jetstream-stream": EVENTS_STREAM,
    }
    operations["publishEvent"] = {
        "action": "send",
        "summary": f"every service publishes events to the JetStream stream {EVENTS_STREAM}",
        "channel": _ref("channels", "events"),
        "messages": [_ref("channels/events/messages", "Event")],
    }
    for stream in STREAMS:
        cid = _channel_id(stream.prefix)
        channels[cid] = {
            "address": f"{stream.prefix}.{{node}}.{{rest}}",
            "parameters": {"node": node_param, "rest": {"description": stream.summary}},
            "messages": {r.__name__: _ref("components/messages", r.__name__) for r in stream.records},
            "x-jetstream-stream": stream.name,
        }
        operations[f"publish{cid[:1].upper()}{cid[1:]}"] = {
            "action": "send",
            "summary": f"{', '.join(stream.writers)} publish to the JetStream stream {stream.name}",
            "channel": _ref("channels", cid),
            "messages": [_ref(f"channels/{cid}/messages", r.__name__) for r in stream.records],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cce-network bus API",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Requests, replies and events of cce-network on NATS. Error replies carry a coded "
            "reason; see x-error-reasons.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
        "x-error-reasons": {reason.value: text for reason, text in DESCRIPTIONS.items()},
        "x-buckets": {
            b.name: {"record": b.record.__name__, "writer": b.writer, "readers": list(b.readers), "key": b.key,
                     "node_scoped": b.node_scoped} for b in BUCKETS
        },
        "x-streams": {
            s.name: {"subjects": s.wildcard, "records": [r.__name__ for r in s.records], "writers": list(s.writers),
                     "readers": list(s.readers), "max_age_s": s.max_age_s, "max_bytes": s.max_bytes,
                     "max_msgs": s.max_msgs} for s in STREAMS
        },
    }


def render() -> dict[Path, str]:
    files = {ASYNCAPI_FILE: json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n", PERMISSIONS_FILE: table()}
    for name, schema in message_schemas().items():
        files[MESSAGES_DIR / f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def stale_files() -> list[Path]:
    """Files that differ from what the contracts generate, plus generated files no contract produces."""
    files = render()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if MESSAGES_DIR.exists():
        stale += [p for p in MESSAGES_DIR.glob("*.json") if p not in files]
    return stale


def write() -> None:
    files = render()
    MESSAGES_DIR.mkdir(parents=True, exist_ok=True)
    for p in MESSAGES_DIR.glob("*.json"):
        if p not in files:
            p.unlink()
    for path, text in files.items():
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p}", file=sys.stderr)
        if stale:
            print("run `python -m schemas.apidoc` to regenerate", file=sys.stderr)
        return 1 if stale else 0
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Who may do what on the bus, derived from the subject registry (`schemas/subjects.py`): the requests each service
serves and asks, the buckets it writes and reads, the leases it campaigns for. Nothing here is written by hand per
identity, so permissions cannot drift from the contract.

Identities: one per control-plane service (`ipam`, `eni_manager`, `route_manager`, `k8s_bridge`); one per node
(`node.<node>`, shared by that node's node_datapath and cni_gateway: both run as root on the node, so either can
already do anything the other can through the kernel; the boundary that matters is the node); and `admin`, the
operator's tools. The simulated cloud (vpc_sim) has no bus connection and no identity.

A node identity publishes only its own node's requests (`….<node>`), events (`cce.events.*.<node>.*`) and keys
(`$KV.<bucket>.<node>.>` of the node-scoped buckets it writes) and trace records
(`cce.traces.<node>.>`), reads the buckets it needs, and can neither change a
stream's or bucket's configuration nor touch a lease. Each identity has its own inbox prefix (`_INBOX.<identity>`),
so no one can listen to another's replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import subject_token
from schemas.subjects import (
    ADMIN,
    BRIDGE_EVENTS_CONSUMER,
    BUCKETS,
    CNI_GATEWAY,
    ENI_MANAGER,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    IPAM,
    K8S_BRIDGE,
    LEASE_KEYS,
    LEASES,
    NODE_DATAPATH,
    REQUESTS,
    ROUTE_MANAGER,
    STREAMS,
    Bucket,
    Stream,
)

CONTROL_PLANE = (IPAM, ENI_MANAGER, ROUTE_MANAGER, K8S_BRIDGE)
NODE_SERVICES = (NODE_DATAPATH, CNI_GATEWAY)
JS_API = "$JS.API"


@dataclass(frozen=True)
class Identity:
    name: str  # `ipam`, `node.node-1`, `admin`
    services: tuple[str, ...]
    node: str = ""  # node identities: the node's subject token

    @property
    def inbox(self) -> str:
        """The prefix of this identity's reply subjects (the client connects with it)."""
        return f"_INBOX.{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.name == ADMIN


def service_identity(service: str) -> Identity:
    if service not in CONTROL_PLANE:
        raise ValueError(f"{service!r} is not a control-plane service ({', '.join(CONTROL_PLANE)})")
    return Identity(service, (service,))


def node_identity(node: str) -> Identity:
    token = subject_token(node)
    return Identity(f"node.{token}", NODE_SERVICES, node=token)


ADMIN_IDENTITY = Identity(ADMIN, (ADMIN,))


@dataclass(frozen=True)
class Permissions:
    """What the server lets one identity publish and subscribe to (everything else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True  # may answer requests it received (on their reply subject, once)

    def may_publish(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self.publish)

    def may_subscribe(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self.subscribe)


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def permissions(identity: Identity) -> Permissions:
    if identity.is_admin:
        return Permissions(publish=(">",), subscribe=(">",))
    pub: list[str] = [f"{JS_API}.INFO", f"{JS_API}.STREAM.INFO.{EVENTS_STREAM}"]
    sub: list[str] = [f"{identity.inbox}.>", "$SRV.>"]
    node = identity.node
    for req in REQUESTS:
        scope = node or "*"
        if any(s in req.callers for s in identity.services):
            pub.append(f"{req.prefix}.{scope}")
        if req.service in identity.services:
            sub.append(f"{req.prefix}.{scope}")
    pub.append(f"{EVENTS_PREFIX}.*.{node}.*" if node else f"{EVENTS_PREFIX}.>")
    if not node:  # any control-plane service may create the event stream and bring its limits to the contract
        pub += [f"{JS_API}.STREAM.CREATE.{EVENTS_STREAM}", f"{JS_API}.STREAM.UPDATE.{EVENTS_STREAM}"]
    for bucket in BUCKETS:
        if bucket is LEASES:
            continue
        writes = bucket.writer in identity.services
        if writes:
            pub += _writes(bucket, node)
        if writes or any(s in bucket.readers for s in identity.services):
            pub += _reads(bucket, node)
    pub += _lease(identity)
    for stream in STREAMS:
        pub += _stream(stream, identity)
    if K8S_BRIDGE in identity.services:
        pub += _events_consumer()
    return Permissions(publish=tuple(dict.fromkeys(pub)), subscribe=tuple(dict.fromkeys(sub)))


def _writes(bucket: Bucket, node: str) -> list[str]:
    if node:  # a node writes only its own keys, and never a bucket's configuration
        assert bucket.node_scoped, f"{bucket.name}: a node may write only a node-scoped bucket"
        return [f"$KV.{bucket.name}.{node}.>"]
    return [f"$KV.{bucket.name}.>", f"{JS_API}.STREAM.CREATE.{bucket.stream}",
            f"{JS_API}.STREAM.UPDATE.{bucket.stream}"]


def _reads(bucket: Bucket, node: str) -> list[str]:
    """Looking a bucket up, getting keys (a node: its own keys of a node-scoped bucket) and watching it (an ordered
    consumer, which the server names itself: its filter is not in the subject, so a watch cannot be narrowed)."""
    stream = bucket.stream
    own = f".$KV.{bucket.name}.{node}.>" if node and bucket.node_scoped else ".>"
    return [f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.DIRECT.GET.{stream}{own}",
            f"{JS_API}.CONSUMER.CREATE.{stream}", f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.*", f"{JS_API}.CONSUMER.DELETE.{stream}.*", f"$JS.FC.{stream}.>"]


def _lease(identity: Identity) -> list[str]:
    keys = [LEASE_KEYS[s] for s in identity.services if s in LEASE_KEYS]
    if not keys:
        return []
    stream = LEASES.stream
    out = [f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}", f"{JS_API}.STREAM.UPDATE.{stream}"]
    for key in keys:
        out += [f"$KV.{LEASES.name}.{key}", f"{JS_API}.DIRECT.GET.{stream}.$KV.{LEASES.name}.{key}"]
    return out


def _stream(stream: Stream, identity: Identity) -> list[str]:
    """A shared stream: its writers publish (a node only under its own node), control-plane writers may create it
    and bring its limits to the contract; its readers read it with consumers of their own."""
    out: list[str] = []
    name = stream.name
    if any(s in stream.writers for s in identity.services):
        if identity.node:
            out.append(f"{stream.prefix}.{identity.node}.>")
        else:
            out += [stream.wildcard, f"{JS_API}.STREAM.INFO.{name}", f"{JS_API}.STREAM.CREATE.{name}",
                    f"{JS_API}.STREAM.UPDATE.{name}"]
    if any(s in stream.readers for s in identity.services):
        out += [f"{JS_API}.STREAM.INFO.{name}", f"{JS_API}.CONSUMER.CREATE.{name}",
                f"{JS_API}.CONSUMER.CREATE.{name}.>", f"{JS_API}.CONSUMER.INFO.{name}.*",
                f"{JS_API}.CONSUMER.DELETE.{name}.*", f"$JS.FC.{name}.>"]
    return out


def _events_consumer() -> list[str]:
    """k8s_bridge's durable pull consumer on the event stream."""
    c = f"{EVENTS_STREAM}.{BRIDGE_EVENTS_CONSUMER}"
    return [f"{JS_API}.CONSUMER.DURABLE.CREATE.{c}", f"{JS_API}.CONSUMER.INFO.{c}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{c}", f"$JS.ACK.{c}.>"]


def identities(nodes: tuple[str, ...] = ("<node>",)) -> list[Identity]:
    out = [service_identity(s) for s in CONTROL_PLANE]
    out += [Identity(f"node.{n}", NODE_SERVICES, node=n) if n.startswith("<") else node_identity(n) for n in nodes]
    return [*out, ADMIN_IDENTITY]


def table() -> str:
    """The permissions of every identity as a Markdown table (schemas/api/permissions.md is generated from it)."""
    lines = [
        "# Bus permissions of each identity",
        "",
        "Generated from `schemas/subjects.py` by `python -m schemas.apidoc` (`schemas/permissions.py` derives them);",
        "do not edit. Everything not listed is denied. `<node>` is the node's subject token. Every identity except",
        "`admin` may also answer requests it received (`allow_responses`). Clients connect with the inbox prefix",
        "`_INBOX.<identity>`.",
        "",
        "| identity | runs | may publish | may subscribe |",
        "|---|---|---|---|",
    ]
    for identity in identities():
        perms = permissions(identity)
        lines.append(f"| `{identity.name}` | {', '.join(identity.services)} | "
                     f"{'<br>'.join(f'`{p}`' for p in perms.publish)} | "
                     f"{'<br>'.join(f'`{s}`' for s in perms.subscribe)} |")
    return "\n".join(lines) + "\n"

"""Read-only views of a running cluster for the `cce-net` CLI: the records in the buckets, the event stream,
and the micro services on the bus. Nothing here creates or changes anything on the server (beyond the
ephemeral consumer and inbox subscriptions that reading needs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from chassis.bus import Bus
from chassis.kv import Store
from schemas.events import Event
from schemas.subjects import (
    CIDR_POOL,
    ENDPOINTS,
    ENI_ON_NODE,
    ENIS,
    EVENTS_STREAM,
    EVENTS_WILDCARD,
    FIXED_IPS,
    LEASES,
    NODE_CIDRS,
    NODES,
    POOLS,
    PROVISION,
    ROUTES,
    SPREADS,
    SUBNETS,
    Bucket,
    psts_key,
)

PushSubscription = JetStreamContext.PushSubscription

# The sections of `status_data`, each read from one bucket.
SECTIONS: dict[str, Bucket] = {
    "nodes": NODES,
    "enis": ENIS,
    "eni_on_node": ENI_ON_NODE,
    "endpoints": ENDPOINTS,
    "subnets": SUBNETS,
    "node_cidrs": NODE_CIDRS,
    "routes": ROUTES,
    "leaders": LEASES,
    "cidr_pool": CIDR_POOL,
    "node_pools": POOLS,
    "provision": PROVISION,
    "fixed_ips": FIXED_IPS,
    "spreads": SPREADS,
}

# ------------------------------------------------------------------------------------------------------------
# Status: the records in the buckets.


async def _read_bucket(bus: Bus, bucket: Bucket) -> list[dict[str, Any]]:
    """A bucket's records as JSON-ready dicts with their key; a missing bucket is empty, not created."""
    try:
        kv = await bus.js.key_value(bucket.name)
    except BucketNotFoundError:
        return []
    items = await Store(kv, bucket.record, bucket.name).list()
    return [{"key": key, **item.value.model_dump(mode="json")} for key, item in sorted(items.items())]


def _pools(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per node: its mode, pool counts (from ipam's NodePool), quotas (from eni_manager) and ENIs with their IPs
    (exclusive ENIs: their use, primary IP and the endpoint holding them)."""
    pools = {p["node"]: p for p in data["node_pools"]}
    provision = {p["node"]: p for p in data["provision"]}
    out = []
    for node in data["nodes"]:
        name = node["name"]
        demand = pools.get(name, {}).get("demand", {})
        held = pools.get(name, {}).get("exclusive", {})
        prov = provision.get(name, {})
        enis = [{"eni_id": e["eni_id"], "state": e["state"], "subnet_id": e["subnet_id"],
                 "use": e.get("use", "secondary-ips"),
                 "primary_ip": next((p["ip"] for p in e["private_ips"] if p["primary"]), None),
                 "held_by": held.get(e["eni_id"]),
                 "ips": [p["ip"] for p in e["private_ips"] if not p["primary"]]}
                for e in data["enis"] if e["node"] == name]
        out.append({
            "node": name,
            "mode": node["spec"]["mode"],
            "used": demand.get("used", 0),
            "free": demand.get("free", 0),
            "pending": demand.get("pending", 0),
            "cooling": demand.get("cooling", 0),
            "releasing": demand.get("releasing", 0),
            "target": demand.get("target_ips", 0),
            "attachable_ips": node["status"]["capacity"]["attachable_ips"],
            "free_enis": node["status"]["capacity"].get("free_enis", 0),
            "exclusive_used": demand.get("enis_used", 0),
            "exclusive_target": demand.get("target_enis", 0),
            "max_enis": prov.get("max_enis", 0),
            "ips_per_eni": prov.get("ips_per_eni", 0),
            "provisioning": "creating ENI" if prov.get("creating_eni") else (prov.get("last_error") or "idle"),
            "enis": enis,
        })
    return out


async def status_data(bus: Bus) -> dict[str, Any]:
    """A JSON-serialisable snapshot of every bucket, plus a `pools` section derived per node."""
    lists = await asyncio.gather(*(_read_bucket(bus, bucket) for bucket in SECTIONS.values()))
    data: dict[str, Any] = dict(zip(SECTIONS, lists, strict=True))
    data["pools"] = _pools(data)
    return data


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if cell is None or cell == "" else str(cell) for cell in row))
    if not table.row_count:
        table.caption = "(none)"
    return table


def _node_rows(data: dict[str, Any]) -> list[list[Any]]:
    enis = {p["node"]: len(p["enis"]) for p in data.get("pools", [])}
    return [
        [n["name"], _mode_of(n), n["spec"]["instance_id"], n["spec"]["zone"],
         "yes" if n["status"]["ready"] else "no", enis.get(n["name"], len(n["status"]["enis"])),
         f"{n['status']['capacity']['free_ips']}/{n['status']['capacity']['used_ips']}",
         n["status"]["capacity"].get("free_enis", 0)]
        for n in data.get("nodes", [])
    ]


def _mode_of(node: dict[str, Any]) -> str:
    """The node's mode, with `+exclusive` when its pods may opt in to a whole ENI."""
    mode = str(node["spec"]["mode"])
    return f"{mode}+exclusive" if node["spec"].get("allow_exclusive") and mode == "vpc-eni" else mode


def _eni_rows(data: dict[str, Any]) -> list[list[Any]]:
    held = {eni_id: key for p in data.get("node_pools", []) for eni_id, key in p.get("exclusive", {}).items()}
    return [[e["eni_id"], e["node"], e.get("use", "secondary-ips"), e["state"], e["subnet_id"], e["mac"],
             len(e["private_ips"]), held.get(e["eni_id"])]
            for e in data.get("enis", [])]


def _endpoint_rows(data: dict[str, Any]) -> list[list[Any]]:
    return [
        [f"{e['namespace']}/{e['pod']}", e["node"], e["container_id"][:12], e["ifname"], e.get("mode"), e["state"],
         ", ".join(a["ip"] for a in e["addresses"])]
        for e in data.get("endpoints", [])
    ]


def _fixed_rows(data: dict[str, Any]) -> list[list[Any]]:
    """Each fixed IP: whose, where, held or waiting for its pod, and when it goes."""
    out = []
    for r in data.get("fixed_ips", []):
        ttl = r.get("ttl_s")
        strategy = r["release_strategy"] if r["release_strategy"] == "Never" else f"TTL {ttl:g}s"
        release_at = None
        if r.get("idle_since") and ttl is not None and r["release_strategy"] != "Never":
            at = datetime.fromisoformat(r["idle_since"]) + timedelta(seconds=ttl)
            release_at = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append([f"{r['namespace']}/{r['name']}", r["ip"], r["node"], r["eni_id"],
                    "in use" if r.get("endpoint") else "reserved", strategy, release_at])
    return out


def _range_free(sub: dict[str, Any], held: set[str]) -> int:
    cidr = ip_network(sub["cidr"])
    reserved = {cidr.network_address, next(cidr.hosts()), cidr.broadcast_address}
    return sum(1 for r in sub["ranges"] for ip in ip_network(r) if ip in cidr and ip not in reserved
               and str(ip) not in held)


def _spread_rows(data: dict[str, Any]) -> list[list[Any]]:
    """Each PodSubnetTopologySpread's subnet: valid or why not, IPs its pods use there, IPs free (in its ranges)."""
    available = {s["subnet_id"]: s["available_ips"] for s in data.get("subnets", [])}
    held = {p["ip"] for e in data.get("enis", []) for p in e["private_ips"]}
    used: dict[tuple[str, str], int] = {}
    for ep in data.get("endpoints", []):
        for a in ep["addresses"] if ep.get("psts") else []:
            used[(ep["psts"], a.get("subnet_id"))] = used.get((ep["psts"], a.get("subnet_id")), 0) + 1
    out = []
    for r in data.get("spreads", []):
        key = psts_key(r["namespace"], r["name"])
        for sub in r["subnets"]:
            free = available.get(sub["subnet_id"])
            if sub["ranges"] and sub.get("cidr"):
                in_ranges = _range_free(sub, held)
                free = in_ranges if free is None else min(free, in_ranges)
            out.append([key if r["namespace"] else f"cluster/{r['name']}", r["priority"], sub["subnet_id"],
                        sub.get("zone"), ", ".join(sub["ranges"]), used.get((key, sub["subnet_id"]), 0), free,
                        sub.get("error") or ("ok" if not r["errors"] else "spread invalid")])
    return out


def _status_tables(data: dict[str, Any]) -> list[Table]:
    def rows(section: str, *fields: str) -> list[list[Any]]:
        return [[item.get(f) for f in fields] for item in data.get(section, [])]

    return [
        _table("Nodes", ["name", "mode", "instance", "zone", "ready", "ENIs", "free/used IPs", "free ENIs"],
               _node_rows(data)),
        _table("Pools", ["node", "mode", "used", "free", "pending", "cooling", "releasing", "target",
                         "attachable", "max ENIs", "IPs/ENI", "provisioning"],
               rows("pools", "node", "mode", "used", "free", "pending", "cooling", "releasing", "target",
                    "attachable_ips", "max_enis", "ips_per_eni", "provisioning")),
        _table("ENIs", ["id", "node", "use", "state", "subnet", "mac", "IPs", "held by"], _eni_rows(data)),
        _table("Endpoints", ["pod", "node", "container", "ifname", "mode", "state", "IPs"], _endpoint_rows(data)),
        _table("Fixed IPs", ["pod", "IP", "node", "ENI", "state", "release", "released at"], _fixed_rows(data)),
        _table("Subnet spreads (PSTS)", ["spread", "priority", "subnet", "zone", "ranges", "used", "free", "state"],
               _spread_rows(data)),
        _table("Subnets", ["id", "zone", "cidr", "available IPs", "excluded"],
               rows("subnets", "subnet_id", "zone", "cidr", "available_ips", "excluded")),
        _table("Routes", ["destination", "node", "next hop", "state"],
               rows("routes", "destination", "node", "next_hop_instance", "state")),
        _table("Node CIDRs", ["cidr", "node", "state"], rows("node_cidrs", "cidr", "node", "state")),
        _table("Leaders", ["service", "holder", "renewed"],
               rows("leaders", "service", "holder", "renewed_at")),
    ]


def render_status(data: dict[str, Any], console: Console) -> None:
    """Print `status_data` as one table per kind of record."""
    for table in _status_tables(data):
        console.print(table)


# ------------------------------------------------------------------------------------------------------------
# Events: the stream CCE_EVENTS, read like `nats sub`.


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def format_event(msg: Msg, as_json: bool = False) -> str:
    """One line per event; a payload that is not an Event is shown as its raw text."""
    text = msg.data.decode(errors="replace")
    if as_json:
        return text
    try:
        event = Event.model_validate_json(msg.data)
    except ValidationError:
        return f"{_ts(msg.metadata.timestamp)} {msg.subject} (undecodable) {text}"
    reason = event.reason.value if event.reason else "-"
    return (f"{_ts(event.time)} {msg.subject} {event.severity.value} {reason} {event.object or '-'} "
            f"{event.message}").rstrip()


async def _events_stream(bus: Bus) -> StreamInfo | None:
    try:
        return await bus.js.stream_info(EVENTS_STREAM)
    except NotFoundError:
        return None


def _consumer_config(info: StreamInfo, subject_filter: str, last: int | None) -> ConsumerConfig:
    """Where to start: everything, only new events (last=0), or the last N. The last N of the whole stream
    start at a computed sequence; under a narrower filter the loop skips to them by num_pending instead."""
    if last is None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if last == 0:
        return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    if subject_filter in (EVENTS_WILDCARD, *(info.config.subjects or [])):
        start = max(info.state.first_seq, info.state.last_seq - last + 1, 1)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)


async def _nothing_matches(sub: PushSubscription) -> bool:
    info = await sub.consumer_info()
    return not info.num_pending and not (info.delivered and info.delivered.consumer_seq)


async def _print_events(sub: PushSubscription, *, follow: bool, last: int | None, as_json: bool,
                        out: Callable[[str], None], idle_exit_s: float | None) -> int:
    count, caught_up = 0, False
    wait = idle_exit_s if follow else 1.0  # follow without idle_exit_s: wait forever
    while True:
        try:
            msg = await sub.next_msg(timeout=wait)
        except nats.errors.TimeoutError:
            if follow or (await sub.consumer_info()).num_pending == 0:
                return count  # follow: idle for idle_exit_s; else: caught up (the tail was deleted meanwhile)
            continue
        pending = msg.metadata.num_pending
        if caught_up or last is None or pending < last:
            out(format_event(msg, as_json))
            count += 1
        caught_up = caught_up or pending == 0
        if caught_up and not follow:
            return count


async def tail_events(
    bus: Bus,
    *,
    follow: bool,
    subject_filter: str = EVENTS_WILDCARD,
    last: int | None = None,
    as_json: bool = False,
    out: Callable[[str], None] = print,
    idle_exit_s: float | None = None,
) -> int:
    """Print the events under `subject_filter` (all, or the last `last`), then with `follow` new ones until
    cancelled (or idle for `idle_exit_s`). Returns how many were printed."""
    if last is not None and last < 0:
        raise ValueError("last must be >= 0")
    info = await _events_stream(bus)
    if info is None:
        out(f"no event stream {EVENTS_STREAM} on this server (no service has started yet?)")
        return 0
    if not follow and (info.state.messages == 0 or last == 0):
        return 0
    config = _consumer_config(info, subject_filter, last)
    try:
        sub = await bus.js.subscribe(subject_filter, stream=EVENTS_STREAM, ordered_consumer=True,
                                     deliver_policy=config.deliver_policy, config=config)
    except APIError as err:
        out(f"cannot read {subject_filter} from {EVENTS_STREAM}: {err.description or err}")
        return 0
    try:
        if not follow and await _nothing_matches(sub):
            return 0
        return await _print_events(sub, follow=follow, last=last, as_json=as_json, out=out,
                                   idle_exit_s=idle_exit_s)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


# ------------------------------------------------------------------------------------------------------------
# Services: the micro services on the bus, found like `nats micro ls`.


async def _ask_all(bus: Bus, subject: str, wait_s: float) -> list[dict[str, Any]]:
    """Publish to a `$SRV` subject and gather every (JSON object) reply for `wait_s` seconds."""
    replies: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            reply = json.loads(msg.data)
            if isinstance(reply, dict) and "id" in reply:
                replies.append(reply)

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=collect)
    try:
        await bus.nc.publish(subject, b"", reply=inbox)
        await bus.settled()
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return replies


def _endpoints(info: dict[str, Any], stats: dict[str, Any]) -> list[dict[str, Any]]:
    by_name = {e.get("name"): e for e in stats.get("endpoints") or []}
    out = []
    for endpoint in info.get("endpoints") or stats.get("endpoints") or []:
        st = by_name.get(endpoint.get("name"), {})
        out.append({
            "name": endpoint.get("name", ""),
            "subject": endpoint.get("subject", ""),
            "queue_group": endpoint.get("queue_group", ""),
            "num_requests": st.get("num_requests", 0),
            "num_errors": st.get("num_errors", 0),
            "last_error": st.get("last_error", ""),
            "data": st.get("data"),
        })
    return out


def _service(info: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    base = info or stats
    return {
        "name": base.get("name", ""),
        "id": base.get("id", ""),
        "version": base.get("version", ""),
        "description": info.get("description") or "",
        "metadata": base.get("metadata") or {},
        "started": stats.get("started"),
        "endpoints": _endpoints(info, stats),
    }


async def list_services(bus: Bus, timeout: float = 0.5) -> list[dict[str, Any]]:
    """Every micro service instance answering `$SRV.INFO` / `$SRV.STATS` within `timeout`, sorted."""
    infos, stats = await asyncio.gather(_ask_all(bus, "$SRV.INFO", timeout),
                                        _ask_all(bus, "$SRV.STATS", timeout))
    info_by_id = {i["id"]: i for i in infos}
    stats_by_id = {s["id"]: s for s in stats}
    services = [_service(info_by_id.get(sid, {}), stats_by_id.get(sid, {}))
                for sid in info_by_id | stats_by_id]
    return sorted(services, key=lambda s: (s["name"], s["id"]))


def render_services(services: list[dict[str, Any]], console: Console) -> None:
    """Print `list_services` as one table, a row per service instance."""
    rows = [
        [s["name"], s["id"], s["version"], s["metadata"].get("node"), s["metadata"].get("http"),
         "\n".join(e["subject"] for e in s["endpoints"]),
         sum(e["num_requests"] for e in s["endpoints"]), sum(e["num_errors"] for e in s["endpoints"])]
        for s in services
    ]
    console.print(_table("Services", ["service", "id", "version", "node", "http", "endpoints", "requests",
                                      "errors"], rows))

"""Benchmark: what the chassis costs on top of raw nats-py, measured in one run against one nats-server.

Measured (sequential calls after a warm-up, latency per call with time.perf_counter_ns):

* request/reply: `chassis.rpc.call` against a `ServiceProcess` endpoint (pydantic validation on both
  ends, a task per request, metrics) versus `nc.request` against a plain `nc.subscribe` echo responder
  that answers `msg.respond(msg.data)`, with the same JSON bytes;
* request/reply x64: the same with 64 concurrent callers (throughput under load);
* KV compare-and-set: `Store.update(key, model, revision)` versus `kv.update(key, bytes, last=rev)`;
* KV read + compare-and-set: `Store.mutate(key, fn)` versus `kv.get` + `kv.update`.
* the cost of security: chassis request/reply (sequential and x64) against a second nats-server running the
  configuration `cce-net up` generates (TLS, an identity per service and node with its least-privilege
  permissions), a node's identity asking on `cce.ipam.v1.confirm.<node>` and ipam's serving it, next to the same
  calls on the plain server.
Each KV variant writes to a fresh bucket of its own. Client and server use separate connections.

Run:  .venv/bin/python bench/bus.py [--n 2000] [--nats-url nats://host:4222]
Without --nats-url it starts its own nats-server (JetStream) in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from _table import Result, print_table  # bench/, first on sys.path when run as a script
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError

from chassis.bus import Bus, settled
from chassis.config import ChassisSettings
from chassis.embedded_nats import EmbeddedNats
from chassis.kv import Store
from chassis.rpc import call
from chassis.service import ServiceProcess
from schemas.base import Contract
from schemas.subjects import Bucket, RequestSubject

NODE = "bench-node"
CONCURRENCY = 64


class EchoRequest(Contract):
    node: str
    container_id: str
    n: int


class EchoReply(Contract):
    n: int
    ip: str


class Counter(Contract):
    n: int = 0
    owner: str = "bench"


ECHO = RequestSubject("echo", "cce.bench.v1.echo", EchoRequest, EchoReply, "benchsvc", "bench echo")
RAW_SUBJECT = f"bench.raw.echo.{NODE}"
BUCKETS = ("bench_chassis_update", "bench_chassis_mutate", "bench_raw_update", "bench_raw_getupdate")

Op = Callable[[int], Awaitable[object]]


async def measure(op: str, variant: str, fn: Op, n: int, warmup: int, concurrency: int = 1) -> Result:
    for i in range(warmup):
        await fn(i)
    lat: list[int] = []

    async def worker(start: int, count: int) -> None:
        for i in range(start, start + count):
            t0 = time.perf_counter_ns()
            await fn(i)
            lat.append(time.perf_counter_ns() - t0)

    per = n // concurrency
    started = time.perf_counter_ns()
    await asyncio.gather(*(worker(warmup + w * per, per) for w in range(concurrency)))
    return Result(op, variant, lat, time.perf_counter_ns() - started)


async def bench_rpc(url: str, client: Bus, raw_nc: Client, n: int, warmup: int) -> list[Result]:
    proc = ServiceProcess("benchsvc", ChassisSettings(nats_url=url, log_level="warning"))
    await proc.start()

    async def handler(req: EchoRequest) -> EchoReply:
        return EchoReply(n=req.n, ip="10.0.0.1")

    await proc.rpc.add(ECHO, handler)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    responder = await nats.connect(url, name="bench-raw-responder")
    await responder.subscribe(RAW_SUBJECT, cb=echo)
    await settled(responder)
    payload = EchoRequest(node=NODE, container_id="c0ffee", n=0).model_dump_json().encode()

    async def chassis_call(i: int) -> object:
        reply = await call(client, ECHO, EchoRequest(node=NODE, container_id="c0ffee", n=i))
        assert reply.n == i
        return reply

    async def raw_call(i: int) -> object:
        return await raw_nc.request(RAW_SUBJECT, payload, timeout=5.0)

    results = [
        await measure("request/reply", "chassis", chassis_call, n, warmup),
        await measure("request/reply", "raw", raw_call, n, warmup),
        await measure(f"request/reply x{CONCURRENCY}", "chassis", chassis_call, n, warmup, CONCURRENCY),
        await measure(f"request/reply x{CONCURRENCY}", "raw", raw_call, n, warmup, CONCURRENCY),
    ]
    await responder.drain()
    await proc.shutdown()
    return results


async def drop_buckets(bus: Bus) -> None:
    for name in BUCKETS:
        with contextlib.suppress(BucketNotFoundError, NotFoundError):
            await bus.js.delete_key_value(name)


async def bench_kv(bus: Bus, n: int, warmup: int) -> list[Result]:
    await drop_buckets(bus)
    key = "k"
    results: list[Result] = []

    # chassis Store.update: typed, pydantic-encoded compare-and-set on the last revision
    store: Store[Counter] = Store(await bus.bucket(Bucket(BUCKETS[0], Counter, "bench", "<k>")), Counter,
                                  BUCKETS[0])
    rev = (await store.create(key, Counter())).revision

    async def chassis_update(i: int) -> object:
        nonlocal rev
        rev = (await store.update(key, Counter(n=i), rev)).revision
        return rev

    results.append(await measure("kv CAS update", "chassis", chassis_update, n, warmup))

    # chassis Store.mutate: read, decode, change a copy, CAS write
    mstore: Store[Counter] = Store(await bus.bucket(Bucket(BUCKETS[1], Counter, "bench", "<k>")), Counter,
                                   BUCKETS[1])
    await mstore.create(key, Counter())

    def bump(c: Counter | None) -> Counter:
        assert c is not None
        c.n += 1
        return c

    results.append(await measure("kv get+CAS", "chassis", lambda _i: mstore.mutate(key, bump), n, warmup))

    # raw nats-py, same bytes
    def raw_config(name: str) -> KeyValueConfig:
        return KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, direct=True)

    kv = await bus.js.create_key_value(raw_config(BUCKETS[2]))
    data = Counter(n=1).model_dump_json().encode()
    raw_rev = await kv.create(key, data)

    async def raw_update(i: int) -> object:
        nonlocal raw_rev
        raw_rev = await kv.update(key, data, last=raw_rev)
        return raw_rev

    results.append(await measure("kv CAS update", "raw", raw_update, n, warmup))

    kv2 = await bus.js.create_key_value(raw_config(BUCKETS[3]))
    await kv2.create(key, data)

    async def raw_get_update(i: int) -> object:
        entry = await kv2.get(key)
        return await kv2.update(key, data, last=entry.revision)

    results.append(await measure("kv get+CAS", "raw", raw_get_update, n, warmup))
    await drop_buckets(bus)
    return results


def report(results: list[Result]) -> None:
    by_op = print_table(results)
    print()
    for op, v in by_op.items():
        c, raw = v["chassis"], v["raw"]
        print(f"{op:<18}  chassis/raw  p50 x{c.p50 / raw.p50:.2f}  p99 x{c.p99 / raw.p99:.2f}"
              f"  ops/s x{c.ops / raw.ops:.2f}")


SECURED_ECHO = RequestSubject("confirm", "cce.ipam.v1.confirm", EchoRequest, EchoReply, "ipam", "bench echo")


async def bench_security(plain_url: str, tmp: Path, n: int, warmup: int) -> None:
    """Request/reply through the chassis with TLS and per-identity permissions, next to the plain server's."""
    from cce_net.natsauth import BusSecurity
    from schemas.permissions import node_identity, service_identity

    security = BusSecurity(tmp / "bus")
    security.ensure([NODE])

    def config(host: str, port: int, store: Path) -> str:
        return security.server_config(host=host, port=port, store_dir=store, name="bench-secure")

    results: list[Result] = []
    with EmbeddedNats(tmp / "secure-nats", config=config, tls=True) as secure:
        for variant, url, server_creds, client_creds, ca in (
                ("plain", plain_url, None, None, None),
                ("tls+auth", secure.url, security.creds_path(service_identity("ipam")),
                 security.creds_path(node_identity(NODE)), security.ca_file)):
            proc = ServiceProcess("ipam", ChassisSettings(nats_url=url, nats_creds=server_creds, nats_tls_ca=ca,
                                                          log_level="warning"))
            await proc.start()

            async def handler(req: EchoRequest) -> EchoReply:
                return EchoReply(n=req.n, ip="10.0.0.1")

            await proc.rpc.add(SECURED_ECHO, handler)
            client = await Bus.connect(ChassisSettings(nats_url=url, nats_creds=client_creds, nats_tls_ca=ca),
                                       name="bench-secure-client")

            async def chassis_call(i: int, client: Bus = client) -> object:
                return await call(client, SECURED_ECHO, EchoRequest(node=NODE, container_id="c0ffee", n=i))

            results.append(await measure("request/reply", variant, chassis_call, n, warmup))
            results.append(await measure(f"request/reply x{CONCURRENCY}", variant, chassis_call, n, warmup,
                                         CONCURRENCY))
            await client.close()
            await proc.shutdown()
    print("\nthe cost of security (chassis request/reply, a node asking ipam):")
    by_op = print_table(results)
    for op, v in by_op.items():
        s, p = v["tls+auth"], v["plain"]
        print(f"{op:<18}  tls+auth/plain  p50 x{s.p50 / p.p50:.2f}  p99 x{s.p99 / p.p99:.2f}"
              f"  ops/s x{s.ops / p.ops:.2f}")


async def run(url: str, n: int) -> None:
    warmup = max(50, n // 10)
    client = await Bus.connect(ChassisSettings(nats_url=url), name="bench-client")
    raw_nc = await nats.connect(url, name="bench-raw-client")
    try:
        results = await bench_rpc(url, client, raw_nc, n, warmup)
        results += await bench_kv(client, n, warmup)
    finally:
        await raw_nc.drain()
        await client.close()
    order = ["request/reply", f"request/reply x{CONCURRENCY}", "kv CAS update", "kv get+CAS"]
    report(sorted(results, key=lambda r: (order.index(r.op), r.variant)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="measured operations per variant")
    parser.add_argument("--nats-url", default=None, help="use this server instead of starting one")
    args = parser.parse_args()
    if args.nats_url:
        asyncio.run(run(args.nats_url, args.n))
        return
    with tempfile.TemporaryDirectory(prefix="cce-bench-") as tmp, EmbeddedNats(Path(tmp)) as server:
        print(f"nats-server {server.url} (state in {tmp})")
        asyncio.run(run(server.url, args.n))
        asyncio.run(bench_security(server.url, Path(tmp), args.n, max(50, args.n // 10)))


if __name__ == "__main__":
    main()

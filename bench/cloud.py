"""Benchmark: the simulated VPC's capacity and what the cloud adapter costs per call, measured in one run.

An in-process `SimServer` (no state file, no fabric, no attach/detach delay, no latency, errors or rate limits)
serves three kinds of client, each sequentially and with `--concurrency` concurrent callers:

* raw http: aiohttp over one keep-alive session, every request signed with the SDK's own `bce_v1_signer.sign`:
  the simulator's ceiling without SDK overhead;
* raw sdk: the official bce-python-sdk clients (`SubnetClient`, `EniClient`, `NoRetryPolicy`) in
  `asyncio.to_thread`; the SDK opens a new connection per request;
* adapter: `cloud.bce.BceVpcApi` (token-bucket limiter, retry loop, metrics, reply parsing), its rate limits
  raised out of the way.

Operations: `get_subnet` (GET /v1/subnet/{id}) and "add+del 1 IP": batchAdd of one private IP to an ENI then
batchDel of it (two HTTP requests; one measured call = the pair). Latency per call with time.perf_counter_ns after
a warm-up, the three variants taking turns in 5 rounds; calls/s is calls over wall time. Client and simulator
share one process and event loop, and the to_thread variants share the default thread pool (min(32, cores + 4)
threads), so the figures are lower bounds.
Last, `add_private_ips` through an adapter with its DEFAULT limits (5/s, burst 10) shows the limiter pacing.

Run:  .venv/bin/python bench/cloud.py [--n 500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from _table import Result, print_table  # bench/ comes first on sys.path when run as a script...
from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.retry.retry_policy import NoRetryPolicy
from baidubce.services.eni.eni_client import EniClient
from baidubce.services.subnet.subnet_client import SubnetClient

# ...where this file's name would shadow the `cloud` package: drop bench/ before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


from chassis.logs import configure_logging  # noqa: E402
from cloud.bce import BceSettings, BceVpcApi  # noqa: E402
from cloud.port import CloudApi  # noqa: E402
from services.vpc_sim.admin import SimAdmin  # noqa: E402
from services.vpc_sim.server import SimServer, SimSettings  # noqa: E402

IPS_PER_ENI = 39  # secondary IPs of an ENI on an instance with > 64 GiB (quota 40, the primary included)
PACED_CALLS = 30
ROUNDS = 5
VARIANTS = ("raw http", "raw sdk", "adapter")

Op = Callable[[int], Awaitable[object]]  # called with the worker's index


async def measure(fn: Op, n: int, concurrency: int) -> tuple[list[int], int]:
    """`n` calls of `fn` by `concurrency` workers: (latency of each call, wall time), in ns."""
    lat: list[int] = []

    async def worker(w: int) -> None:
        for _ in range(n // concurrency):
            t0 = time.perf_counter_ns()
            await fn(w)
            lat.append(time.perf_counter_ns() - t0)

    started = time.perf_counter_ns()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return lat, time.perf_counter_ns() - started


async def compare(op: str, fns: dict[str, Op], n: int, warmup: int, concurrency: int) -> list[Result]:
    """Warm every variant up, then measure them in ROUNDS interleaved rounds so background load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            await fn(0)
    lat: dict[str, list[int]] = {v: [] for v in fns}
    wall = dict.fromkeys(fns, 0)
    for _ in range(ROUNDS):
        for variant, fn in fns.items():
            round_lat, round_wall = await measure(fn, n // ROUNDS, concurrency)
            lat[variant] += round_lat
            wall[variant] += round_wall
    return [Result(op, v, lat[v], wall[v]) for v in fns]


class RawHttp:
    """Signed BCE requests over aiohttp, signed exactly as the SDK signs them (default header set)."""

    def __init__(self, sim: SimServer) -> None:
        self.url = sim.url
        self.host = sim.url.removeprefix("http://")
        self.creds = BceCredentials(sim.access_key, sim.secret_key)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def call(self, method: str, path: str, body: Any = None, mutation: bool = False) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        token = uuid.uuid4().hex if mutation else None
        headers: dict[bytes, Any] = {b"Host": self.host, b"Content-Type": b"application/json;charset=utf-8",
                                     b"Content-Length": len(data), b"x-bce-date": bce_utils.get_canonical_time()}
        params = {b"clientToken": token.encode()} if token else None
        headers[b"Authorization"] = bce_v1_signer.sign(self.creds, method.encode(), path.encode(), headers, params)
        wire = {k.decode(): bce_utils.convert_to_standard_string(v).decode() for k, v in headers.items()}
        url = self.url + path + (f"?clientToken={token}" if token else "")
        async with self.session.request(method, url, data=data or None, headers=wire) as resp:
            reply = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {reply}")
            return reply


async def bench(sim: SimServer, n: int, concurrency: int) -> tuple[list[Result], float]:
    warmup = max(50, n // 10)
    eni_count = math.ceil(concurrency / IPS_PER_ENI)
    admin = SimAdmin(sim.url)
    info = await admin.info()
    subnet_id = info["subnets"][0]["subnetId"]
    instance = await admin.create_instance(cpus=8, memory_mib=128 * 1024, eni_quota=eni_count)
    await admin.close()

    settings = BceSettings(endpoint=sim.url, access_key=sim.access_key, secret_key=sim.secret_key,
                           vpc_id=sim.vpc_id)
    fast = BceVpcApi(settings.model_copy(update={"rate_limits": {api: (1e6, 1_000_000) for api in CloudApi}}))
    enis = [await fast.create_eni(name=f"bench-{i}", subnet_id=subnet_id, security_group_ids=["sg-bench"])
            for i in range(eni_count)]
    for eni in enis:
        await fast.attach_eni(eni, instance["id"])

    config = BceClientConfiguration(credentials=BceCredentials(sim.access_key, sim.secret_key), endpoint=sim.url,
                                    retry_policy=NoRetryPolicy())
    subnet_client, eni_client = SubnetClient(config), EniClient(config)
    raw = RawHttp(sim)

    async def http_get(_w: int) -> object:
        return await raw.call("GET", f"/v1/subnet/{subnet_id}")

    async def http_pair(w: int) -> object:
        eni = enis[w % eni_count]
        added = await raw.call("POST", f"/v1/eni/{eni}/privateIp/batchAdd", {"privateIpAddressCount": 1}, True)
        return await raw.call("POST", f"/v1/eni/{eni}/privateIp/batchDel",
                              {"privateIpAddresses": added["privateIpAddresses"]}, True)

    async def sdk_get(_w: int) -> object:
        return await asyncio.to_thread(subnet_client.get_subnet, subnet_id)

    async def sdk_pair(w: int) -> object:
        eni = enis[w % eni_count]
        added = await asyncio.to_thread(eni_client.batch_add_private_ip, eni, private_ip_address_count=1)
        return await asyncio.to_thread(eni_client.batch_delete_private_ip, eni, added.private_ip_addresses)

    async def adapter_get(_w: int) -> object:
        return await fast.get_subnet(subnet_id)

    async def adapter_pair(w: int) -> object:
        eni = enis[w % eni_count]
        return await fast.remove_private_ips(eni, await fast.add_private_ips(eni, count=1))

    ops = {"get_subnet": (http_get, sdk_get, adapter_get), "add+del 1 IP": (http_pair, sdk_pair, adapter_pair)}
    results: list[Result] = []
    try:
        for name, fns in ops.items():
            for c in (1, concurrency):
                variants = dict(zip(VARIANTS, fns, strict=True))
                results += await compare(name if c == 1 else f"{name} x{c}", variants, n, warmup, c)
    finally:
        await raw.session.close()

    # the adapter with its default limits: PACED_CALLS concurrent add_private_ips at 5/s, burst 10
    paced = BceVpcApi(settings)
    started = time.perf_counter()
    added = await asyncio.gather(*(paced.add_private_ips(enis[i % eni_count], count=1)
                                   for i in range(PACED_CALLS)))
    paced_s = time.perf_counter() - started
    for i, ips in enumerate(added):
        await fast.remove_private_ips(enis[i % eni_count], ips)
    return results, paced_s


def report(results: list[Result], concurrency: int, paced_s: float) -> None:
    by_op = print_table(results, rate="calls/s")
    print("(one add+del call = batchAdd + batchDel: 2 HTTP requests)")
    print()
    for op, v in by_op.items():
        http, sdk, adapter = (v[name] for name in VARIANTS)
        print(f"{op:<18}  adapter overhead per call: {adapter.mean - sdk.mean:+.1f} µs vs raw sdk,"
              f" {adapter.mean - http.mean:+.1f} µs vs raw http  (sdk vs http {sdk.mean - http.mean:+.1f} µs)")
    get, pair = by_op[f"get_subnet x{concurrency}"]["raw http"], by_op[f"add+del 1 IP x{concurrency}"]["raw http"]
    print(f"simulator ceiling (raw http x{concurrency}): get_subnet {get.ops:.0f} calls/s,"
          f" add+del {pair.ops:.0f} pairs/s = {2 * pair.ops:.0f} mutations/s")
    expected = (PACED_CALLS - 10) / 5
    print(f"limiter: {PACED_CALLS} concurrent add_private_ips at the default 5/s burst 10 took {paced_s:.2f} s"
          f" (expected ({PACED_CALLS}-10)/5 = {expected:.2f} s)")


async def run(n: int, concurrency: int) -> None:
    configure_logging("warning")
    sim = await SimServer(SimSettings(port=0, state_file=None, fabric="off", attach_delay_s=0,
                                      detach_delay_s=0)).start()
    print(f"vpc_sim {sim.url} (in-process, no faults), n={n}, concurrency={concurrency}")
    try:
        results, paced_s = await bench(sim, n, concurrency)
    finally:
        await sim.stop()
    report(results, concurrency, paced_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="measured calls per variant")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers of the xN rows")
    args = parser.parse_args()
    if args.n < args.concurrency * ROUNDS:
        parser.error(f"--n must be at least concurrency x {ROUNDS} rounds = {args.concurrency * ROUNDS}")
    asyncio.run(run(args.n, args.concurrency))


if __name__ == "__main__":
    main()

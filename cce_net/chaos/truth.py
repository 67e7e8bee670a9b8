"""Reading the truth a chaos run checks, each from its own witness: the KV buckets (as the admin), the simulated
cloud's state (its admin API, which no injected fault touches), and the nodes' kernels (`ip -json`, not the
datapath's own netlink adapter)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from cce_net.chaos.invariants import NodeKernel, Truth
from chassis.bus import Bus
from chassis.kv import Store
from schemas.subjects import ENDPOINTS, ENIS, NODES, POOLS, Bucket
from services.vpc_sim.admin import SimAdmin

ENI_LINK_PREFIX = "cce-eni-"  # node_datapath's names for ENI links; pod veths are `cce` + 11 hex digits


async def read_bucket(bus: Bus, bucket: Bucket) -> dict[str, Any]:
    store: Store[Any] = Store(await bus.bucket(bucket, create=False), bucket.record, bucket.name)
    return {key: item.value for key, item in (await store.list()).items()}


async def read_records(bus: Bus) -> Truth:
    async with asyncio.TaskGroup() as group:  # one read failing cancels the others: none fails unheard
        reads = [group.create_task(read_bucket(bus, b)) for b in (ENDPOINTS, POOLS, ENIS, NODES)]
    endpoints, pools, enis, nodes = (read.result() for read in reads)
    return Truth(endpoints=endpoints, pools={p.node: p for p in pools.values()}, enis=enis,
                 nodes={n.name: n for n in nodes.values()})


async def read_cloud(sim_url: str, token: str) -> list[dict[str, Any]]:
    async with SimAdmin(sim_url, token=token) as admin:
        info = await admin.info()
    return list(info.get("enis", []))


def _ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-n", netns, "-json", *args], capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        return []
    data: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return data


def read_node_kernel(netns: str) -> NodeKernel:
    links = _ip_json(netns, "-details", "link", "show", "type", "veth")
    veths = {link["ifname"]: str(link.get("ifalias", "")) for link in links
             if link["ifname"].startswith("cce") and not link["ifname"].startswith(ENI_LINK_PREFIX)}
    routes = frozenset(r["dst"] for r in _ip_json(netns, "route", "show", "table", "main")
                       if r.get("dst", "").count(".") == 3 and "/" not in r["dst"])
    return NodeKernel(veths, routes)


def read_pod_addrs(netns: str) -> frozenset[str]:
    return frozenset(a["local"] for link in _ip_json(netns, "addr", "show", "dev", "eth0")
                     for a in link.get("addr_info", []) if a.get("family") == "inet")


async def read_truth(bus: Bus, sim_url: str, token: str, node_netns: dict[str, str] | None = None,
                     pod_netns: list[str] | None = None) -> Truth:
    """Records, then the cloud, then (with the fabric) the kernels: each read once, from its own witness."""
    truth = await read_records(bus)
    truth.cloud_enis = await read_cloud(sim_url, token)
    if node_netns is not None:
        kernels = await asyncio.gather(*(asyncio.to_thread(read_node_kernel, ns) for ns in node_netns.values()))
        truth.kernel = dict(zip(node_netns, kernels, strict=True))
    if pod_netns is not None:
        addrs = await asyncio.gather(*(asyncio.to_thread(read_pod_addrs, ns) for ns in pod_netns))
        truth.pod_addrs = dict(zip(pod_netns, addrs, strict=True))
    return truth

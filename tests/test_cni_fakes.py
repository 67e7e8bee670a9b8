"""Component tier: stateful stand-ins for ipam and node_datapath on their real bus subjects (used by the CNI
gateway tests), the gateway started in-process, the installed plugin exec-ed; and tests of the fakes themselves.

`FakeIpam` writes endpoints to the real cce_endpoints bucket like ipam does; `FakeDatapath` answers
setup/teardown/check deterministically per (container id, ifname), and optionally really creates the pod's veth
(host side in a node namespace, peer inside the pod namespace) for the privileged chaining tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from chassis.bus import Bus
from chassis.config import ChassisSettings
from chassis.kv import Store
from chassis.rpc import RpcServer, call
from chassis.service import ServiceProcess
from schemas.base import InstanceType, subject_token
from schemas.errors import CceError, ErrorReason
from schemas.messages import (
    AllocateReply,
    AllocateRequest,
    CheckReply,
    CheckRequest,
    ConfirmReply,
    ConfirmRequest,
    InterfaceResult,
    IpResult,
    PodRef,
    ReleaseReply,
    ReleaseRequest,
    RouteResult,
    SetupReply,
    SetupRequest,
    TeardownReply,
    TeardownRequest,
)
from schemas.records import CceEndpoint, EndpointAddress, EndpointState, NetResourceSet, NodeSpec
from schemas.subjects import (
    CNI_GATEWAY,
    DATAPATH_CHECK,
    DATAPATH_SETUP,
    DATAPATH_TEARDOWN,
    ENDPOINTS,
    IPAM,
    IPAM_ALLOCATE,
    IPAM_CONFIRM,
    IPAM_RELEASE,
    NODE_DATAPATH,
    NODES,
    endpoint_key,
)
from services.cni_gateway.main import CniGateway, build
from services.cni_gateway.settings import GatewaySettings

NODE = "node-1"
SUBNET = IPv4Network("10.9.0.0/24")
GATEWAY_IP = IPv4Address("10.9.0.1")


def mac_of(seed: str) -> str:
    digest = hashlib.sha1(seed.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class FakeIpam:
    """ipam's allocate/confirm/release for one node: endpoints live in the real bucket, IPs from one subnet."""

    def __init__(self, bus: Bus, node: str = NODE) -> None:
        self.bus = bus
        self.node = node
        self.calls: list[tuple[str, str]] = []  # (verb, container id)
        self.fail_allocate: CceError | None = None
        self.fail_confirm: CceError | None = None
        self.confirmed: dict[str, str] = {}  # container id -> the host veth its confirm named
        self.release_gate: asyncio.Event | None = None  # when set: a release waits for it before deleting
        self.rpc: RpcServer | None = None
        self._next = 10

    async def start(self) -> None:
        self.store: Store[CceEndpoint] = Store(await self.bus.bucket(ENDPOINTS), CceEndpoint, ENDPOINTS.name)
        self.rpc = RpcServer(self.bus, IPAM, "0.0.0")
        await self.rpc.start()
        for spec, handler in ((IPAM_ALLOCATE, self.allocate), (IPAM_CONFIRM, self.confirm),
                              (IPAM_RELEASE, self.release)):
            await self.rpc.add(spec, handler, subject=spec.for_node(self.node))

    async def stop(self) -> None:
        if self.rpc is not None:
            await self.rpc.stop(1.0)
            self.rpc = None

    def verbs(self, verb: str) -> list[str]:
        return [cid for v, cid in self.calls if v == verb]

    async def allocate(self, req: AllocateRequest) -> AllocateReply:
        self.calls.append(("allocate", req.container_id))
        if self.fail_allocate is not None:
            raise self.fail_allocate
        key = endpoint_key(req.node, req.container_id, req.ifname)
        existing = await self.store.get(key)
        if existing is not None:
            return AllocateReply(endpoint=existing.value, reused=True)
        self._next += 1
        endpoint = CceEndpoint(node=req.node, container_id=req.container_id, ifname=req.ifname,
                               namespace=req.pod.namespace, pod=req.pod.name, pod_uid=req.pod.uid,
                               addresses=[EndpointAddress(ip=SUBNET[self._next], gateway=GATEWAY_IP,
                                                          subnet_cidr=SUBNET, route_table=128)])
        await self.store.create(key, endpoint)
        return AllocateReply(endpoint=endpoint)

    async def confirm(self, req: ConfirmRequest) -> ConfirmReply:
        self.calls.append(("confirm", req.container_id))
        if self.fail_confirm is not None:
            raise self.fail_confirm
        self.confirmed[req.container_id] = req.host_veth
        key = endpoint_key(req.node, req.container_id, req.ifname)
        item = await self.store.get(key)
        if item is None:
            raise CceError(ErrorReason.ENDPOINT_NOT_FOUND, f"no endpoint {key}")
        endpoint = item.value.model_copy(update={"state": EndpointState.READY, "host_veth": req.host_veth})
        await self.store.update(key, endpoint, item.revision)
        return ConfirmReply(endpoint=endpoint)

    async def release(self, req: ReleaseRequest) -> ReleaseReply:
        self.calls.append(("release", req.container_id))
        if self.release_gate is not None:
            await self.release_gate.wait()
        key = endpoint_key(req.node, req.container_id, req.ifname)
        item = await self.store.get(key)
        if item is None:
            return ReleaseReply(released=False)
        await self.store.delete(key)
        return ReleaseReply(released=True, ips=[a.ip for a in item.value.addresses])

    async def keys(self) -> list[str]:
        return sorted(await self.store.keys())


class FakeDatapath:
    """node_datapath's setup/teardown/check for one node. With `node_netns` set it really creates the pod's veth
    (host side in that namespace, `ifname` inside the pod's) so chained plugins find real links."""

    def __init__(self, bus: Bus, node: str = NODE, node_netns: str | None = None) -> None:
        self.bus = bus
        self.node = node
        self.node_netns = node_netns
        self.calls: list[tuple[str, str, str]] = []  # (verb, container id, netns)
        self.fail_setup: CceError | None = None
        self.problems: list[str] = []
        self.rpc: RpcServer | None = None

    async def start(self) -> None:
        self.rpc = RpcServer(self.bus, NODE_DATAPATH, "0.0.0")
        await self.rpc.start()
        for spec, handler in ((DATAPATH_SETUP, self.setup), (DATAPATH_TEARDOWN, self.teardown),
                              (DATAPATH_CHECK, self.check)):
            await self.rpc.add(spec, handler, subject=spec.for_node(self.node))

    async def stop(self) -> None:
        if self.rpc is not None:
            await self.rpc.stop(1.0)
            self.rpc = None

    def verbs(self, verb: str) -> list[str]:
        return [cid for v, cid, _ in self.calls if v == verb]

    @staticmethod
    def host_veth(container_id: str, ifname: str) -> str:
        return "cce" + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]

    async def setup(self, req: SetupRequest) -> SetupReply:
        self.calls.append(("setup", req.container_id, req.netns))
        if self.fail_setup is not None:
            raise self.fail_setup
        veth = self.host_veth(req.container_id, req.ifname)
        host_mac, pod_mac = mac_of(veth), mac_of(f"{veth}/pod")
        address = req.endpoint.addresses[0]
        if self.node_netns is not None:
            await asyncio.to_thread(self._create_veth, veth, host_mac, pod_mac, req.ifname, req.netns,
                                    str(address.ip), str(address.gateway))
        return SetupReply(
            interfaces=[InterfaceResult(name=veth, mac=host_mac),
                        InterfaceResult(name=req.ifname, mac=pod_mac, sandbox=req.netns)],
            ips=[IpResult(address=IPv4Network(f"{address.ip}/32"), gateway=address.gateway, interface=1)],
            routes=[RouteResult(dst=IPv4Network("0.0.0.0/0"), gw=address.gateway)],
            host_veth=veth)

    def _create_veth(self, veth: str, host_mac: str, pod_mac: str, ifname: str, netns: str, ip: str,
                     gw: str) -> None:
        assert self.node_netns is not None
        host = ["ip", "-n", self.node_netns]
        if subprocess.run([*host, "link", "show", veth], capture_output=True).returncode == 0:
            return
        pid_ns = os.path.basename(netns)
        subprocess.run([*host, "link", "add", veth, "address", host_mac, "type", "veth", "peer", "name", ifname,
                        "address", pod_mac, "netns", pid_ns], check=True, capture_output=True)
        subprocess.run([*host, "link", "set", veth, "up"], check=True)
        subprocess.run([*host, "route", "replace", f"{ip}/32", "dev", veth, "scope", "link"], check=True)
        pod = ["ip", "-n", pid_ns]
        subprocess.run([*pod, "link", "set", "lo", "up"], check=True)
        subprocess.run([*pod, "link", "set", ifname, "up"], check=True)
        subprocess.run([*pod, "addr", "add", f"{ip}/32", "dev", ifname], check=True)
        subprocess.run([*pod, "route", "add", f"{gw}/32", "dev", ifname, "scope", "link"], check=True)
        subprocess.run([*pod, "route", "add", "default", "via", gw, "dev", ifname], check=True)

    async def teardown(self, req: TeardownRequest) -> TeardownReply:
        self.calls.append(("teardown", req.container_id, req.netns))
        veth = self.host_veth(req.container_id, req.ifname)
        if self.node_netns is not None:
            await asyncio.to_thread(subprocess.run, ["ip", "-n", self.node_netns, "link", "del", veth],
                                    capture_output=True)
        return TeardownReply(removed=[veth])

    async def check(self, req: CheckRequest) -> CheckReply:
        self.calls.append(("check", req.container_id, req.netns))
        return CheckReply(ok=not self.problems, problems=list(self.problems))


@dataclass
class GatewayUnderTest:
    settings: GatewaySettings
    dir: Path
    proc: ServiceProcess | None = None
    gateway: CniGateway | None = None
    stopped: bool = field(default=False)

    @property
    def socket(self) -> Path:
        return self.settings.cni_socket

    @property
    def plugin(self) -> Path:
        assert self.settings.cni_bin_dir is not None
        return self.settings.cni_bin_dir / "cce"

    async def start(self) -> None:
        self.proc = ServiceProcess(CNI_GATEWAY, self.settings)
        await self.proc.start()
        self.gateway = await build(self.proc)
        self.proc.ready = True
        self.stopped = False

    async def stop(self) -> None:
        if self.proc is not None and not self.stopped:
            self.stopped = True
            await self.proc.shutdown()

    def config(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "cce", "type": "cce", "socket": str(self.socket), "node": NODE,
                **extra}

    async def exec(self, command: str, container_id: str = "c0ffee01", netns: str | None = None,
                   ifname: str = "eth0", config: dict[str, Any] | None = None, stdin: bytes | None = None,
                   env: dict[str, str | None] | None = None, argv: Sequence[str] = (),
                   ) -> tuple[int, dict[str, Any] | None]:
        """Exec the installed plugin (or `argv`) like a runtime; returns (exit code, parsed stdout or None when
        empty). The pod netns defaults to the test process's own, which is the plugin's too: a plugin built on the
        CNI library refuses that after ADD and DEL unless CNI_NETNS_OVERRIDE says it is meant."""
        netns = own_netns() if netns is None else netns
        base: dict[str, str | None] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": str(self.plugin.parent),
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-" + container_id[:6] + ";K8S_POD_UID=u1",
            "CNI_NETNS_OVERRIDE": "1" if netns == own_netns() else None}
        merged = {k: v for k, v in {**base, **(env or {})}.items() if v is not None}
        data = stdin if stdin is not None else json.dumps(config or self.config()).encode()
        proc = await asyncio.create_subprocess_exec(*(argv or [str(self.plugin)]), env=merged,
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(data), 30)
        assert proc.returncode is not None
        return proc.returncode, (json.loads(out) if out.strip() else None)


def own_netns() -> str:
    """A real network namespace path any test process can open: its own."""
    return f"/proc/{os.getpid()}/ns/net"


def short_tmpdir() -> Path:
    """Unix socket paths are limited to 107 bytes: keep test directories short."""
    return Path(tempfile.mkdtemp(prefix="cce-cni-", dir="/tmp"))


def gateway_settings(settings: ChassisSettings, root: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        **settings.model_dump(), "node": NODE, "cni_socket": root / "run" / "cni.sock", "cni_bin_dir": root / "bin",
        "cni_conf_dir": root / "conf", "cni_state_dir": root / "state", "journal_retry_s": 0.1, "gc_grace_s": 0.0,
        "call_timeout_s": 1.0, "allocate_wait_s": 0.0, "read_timeout_s": 0.5, "max_request_bytes": 64 * 1024,
        **overrides}
    return GatewaySettings(**values)


async def register_node(bus: Bus, node: str = NODE) -> None:
    store: Store[NetResourceSet] = Store(await bus.bucket(NODES), NetResourceSet, NODES.name)
    await store.create(subject_token(node), NetResourceSet(name=node, spec=NodeSpec(
        instance_id="i-test", instance_type=InstanceType.BCC, zone="zone-a", cpus=2, memory_mib=4096)))


@dataclass
class Cni:
    """A gateway in-process with its fakes, all on the real nats-server."""

    bus: Bus
    ipam: FakeIpam
    datapath: FakeDatapath
    gw: GatewayUnderTest

    async def new_gateway(self) -> GatewayUnderTest:
        await self.gw.stop()
        self.gw = GatewayUnderTest(self.gw.settings, self.gw.dir)
        await self.gw.start()
        return self.gw


@contextlib.asynccontextmanager
async def cni_stack(settings: ChassisSettings, bus: Bus, node_netns: str | None = None,
                    **overrides: Any) -> AsyncIterator[Cni]:
    root = short_tmpdir()
    ipam, datapath = FakeIpam(bus), FakeDatapath(bus, node_netns=node_netns)
    await ipam.start()
    await datapath.start()
    gw = GatewayUnderTest(gateway_settings(settings, root, **overrides), root)
    stack = Cni(bus, ipam, datapath, gw)
    try:
        await gw.start()
        yield stack
    finally:
        await stack.gw.stop()
        await ipam.stop()
        await datapath.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The fakes, tested.

pytestmark = pytest.mark.integration


async def test_fake_ipam_allocates_once_per_key_and_releases(bus: Bus) -> None:
    ipam = FakeIpam(bus)
    await ipam.start()
    try:
        req = AllocateRequest(node=NODE, container_id="c1", pod=PodRef(namespace="default", name="p"))
        first: AllocateReply = await call(bus, IPAM_ALLOCATE, req)
        again: AllocateReply = await call(bus, IPAM_ALLOCATE, req)
        assert again.reused and again.endpoint.addresses == first.endpoint.addresses
        await call(bus, IPAM_CONFIRM, ConfirmRequest(node=NODE, container_id="c1", host_veth="v"))
        assert await ipam.keys() == [endpoint_key(NODE, "c1", "eth0")]
        released: ReleaseReply = await call(bus, IPAM_RELEASE, ReleaseRequest(node=NODE, container_id="c1"))
        assert released.released and await ipam.keys() == []
        unknown: ReleaseReply = await call(bus, IPAM_RELEASE, ReleaseRequest(node=NODE, container_id="c1"))
        assert not unknown.released
    finally:
        await ipam.stop()


async def test_fake_datapath_answers_the_same_setup_for_the_same_key(bus: Bus) -> None:
    datapath = FakeDatapath(bus)
    await datapath.start()
    try:
        endpoint = CceEndpoint(node=NODE, container_id="c1", ifname="eth0", namespace="d", pod="p",
                               addresses=[EndpointAddress(ip=SUBNET[5], gateway=GATEWAY_IP)])
        req = SetupRequest(node=NODE, container_id="c1", netns="/x", endpoint=endpoint)
        assert await call(bus, DATAPATH_SETUP, req) == await call(bus, DATAPATH_SETUP, req)
        datapath.problems = ["route missing"]
        reply: CheckReply = await call(bus, DATAPATH_CHECK, CheckRequest(node=NODE, container_id="c1", netns="/x",
                                                                          endpoint=endpoint))
        assert not reply.ok and reply.problems == ["route missing"]
    finally:
        await datapath.stop()

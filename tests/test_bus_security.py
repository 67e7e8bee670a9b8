"""Integration tier: a real nats-server running the configuration `cce-net up` generates (an identity per service
and per node, permissions derived from the subject registry, TLS), and clients with each identity's credentials:
what each may do, and that what it may not is refused by the server and changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from cce_net import natsauth
from cce_net.natsauth import BusSecurity, make_ca_and_server_cert
from chassis.bus import Bus, settled
from chassis.config import ChassisSettings
from chassis.creds import creds_claims
from chassis.embedded_nats import EmbeddedNats
from chassis.kv import Store
from schemas.permissions import (
    ADMIN_IDENTITY,
    CONTROL_PLANE,
    Identity,
    identities,
    node_identity,
    permissions,
    service_identity,
)
from schemas.records import EniOnNode, Lease
from schemas.subjects import ENI_ON_NODE, EVENTS_STREAM, LEASES, NODES, REQUESTS, eni_on_node_key
from tests.cluster import until

pytestmark = pytest.mark.integration
NODES_ = ("node-1", "node-2")


@dataclass
class SecuredBus:
    server: EmbeddedNats
    security: BusSecurity
    clients: list[Any] = field(default_factory=list)

    def settings(self, identity: Identity) -> ChassisSettings:
        return ChassisSettings(nats_url=self.server.url, nats_creds=self.security.creds_path(identity),
                               nats_tls_ca=self.security.ca_file, nats_connect_timeout_s=2.0)

    async def bus(self, identity: Identity) -> Bus:
        bus = await Bus.connect(self.settings(identity), name=f"test-{identity.name}", wait_s=5.0)
        self.clients.append(bus)
        return bus

    async def raw(self, identity: Identity, errors: list[str]) -> nats.NATS:
        """A plain nats-py client with the identity's credentials, collecting the server's refusals."""
        async def on_error(err: Exception) -> None:
            errors.append(str(err))

        nc = await nats.connect(self.server.url, user_credentials=str(self.security.creds_path(identity)),
                                tls=ssl.create_default_context(cafile=str(self.security.ca_file)),
                                inbox_prefix=identity.inbox, error_cb=on_error, allow_reconnect=False)
        self.clients.append(nc)
        return nc


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, BusSecurity]]:
    tmp = tmp_path_factory.mktemp("secure-bus")
    security = BusSecurity(tmp / "bus")
    security.ensure(list(NODES_))

    def config(host: str, port: int, store: Path) -> str:
        return security.server_config(host=host, port=port, store_dir=store, name="test")

    with EmbeddedNats(tmp / "nats", config=config, tls=True) as server:
        yield server, security


@pytest.fixture
async def secured(secured_server: tuple[EmbeddedNats, BusSecurity]) -> AsyncIterator[SecuredBus]:
    server, security = secured_server
    world = SecuredBus(server, security)
    admin = await world.bus(ADMIN_IDENTITY)
    await admin.ensure_contract()
    try:
        yield world
    finally:
        for client in world.clients:
            await client.close()


def collect(into: Any, what: Any = lambda msg: msg.subject) -> Any:
    """A subscription callback (nats-py wants a coroutine) that keeps `what(msg)` of every message."""
    async def cb(msg: Any) -> None:
        (into.add if isinstance(into, set) else into.append)(what(msg))

    return cb


async def refused(errors: list[str], words: str) -> None:
    await until(lambda: any(words.lower() in e.lower() for e in errors), 5, f"the server's refusal ({words})")


# ---- each identity may do what its service does -------------------------------------------------------------------


async def test_a_node_writes_its_own_keys_and_reads_what_it_needs(secured: SecuredBus) -> None:
    node = await secured.bus(node_identity("node-1"))
    own = Store(await node.bucket(ENI_ON_NODE, create=False), EniOnNode, ENI_ON_NODE.name)
    record = EniOnNode(eni_id="eni-1", node="node-1")
    await own.create(eni_on_node_key("node-1", "eni-1"), record)
    item = await own.get(eni_on_node_key("node-1", "eni-1"))
    assert item is not None and item.value == record
    nodes = await node.bucket(NODES, create=False)
    with pytest.raises(KeyNotFoundError):
        await nodes.get("node-1")  # may read: the key is just not there


async def test_a_control_plane_service_writes_its_buckets_and_its_lease(secured: SecuredBus) -> None:
    ipam = await secured.bus(service_identity("ipam"))
    await (await ipam.bucket(NODES)).put("node-1", b"{}")
    leases = Store(await ipam.bucket(LEASES), Lease, LEASES.name)
    await leases.create("ipam-maintenance", Lease(holder="ipam-1", service="ipam", ttl_s=6))
    await ipam.ensure_events_stream()


# ---- and what it may not -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_name", [r.name for r in REQUESTS])
async def test_a_node_cannot_publish_another_nodes_requests(secured: SecuredBus, request_name: str) -> None:
    spec = next(r for r in REQUESTS if r.name == request_name)
    errors: list[str] = []
    admin_seen: list[str] = []
    admin = await secured.raw(ADMIN_IDENTITY, [])
    await admin.subscribe(f"{spec.prefix}.*", cb=collect(admin_seen))
    await settled(admin)
    node1 = await secured.raw(node_identity("node-1"), errors)
    await node1.publish(spec.for_node("node-2"), b"{}")
    await settled(node1)
    await refused(errors, f'Permissions Violation for Publish to "{spec.for_node("node-2")}"')
    await settled(admin)
    assert admin_seen == []


async def test_a_node_cannot_write_another_nodes_keys_nor_leases(secured: SecuredBus) -> None:
    errors: list[str] = []
    node1 = await secured.raw(node_identity("node-1"), errors)
    js = node1.jetstream(timeout=1.0)
    for subject in (f"$KV.{ENI_ON_NODE.name}.{eni_on_node_key('node-2', 'eni-9')}",
                    f"$KV.{LEASES.name}.eni_manager", f"$KV.{NODES.name}.node-1"):
        with pytest.raises(Exception):  # noqa: B017,PT011  (dropped by the server: no ack ever comes)
            await js.publish(subject, b"forged")
        await refused(errors, f'Publish to "{subject}"')
    admin = await secured.bus(ADMIN_IDENTITY)
    kv = await admin.bucket(ENI_ON_NODE)
    with pytest.raises(KeyNotFoundError):
        await kv.get(eni_on_node_key("node-2", "eni-9"))
    with pytest.raises(KeyNotFoundError):
        await (await admin.bucket(LEASES)).get("eni_manager")


async def test_a_node_cannot_delete_or_purge_the_event_stream_nor_change_a_bucket(secured: SecuredBus) -> None:
    errors: list[str] = []
    node1 = await secured.raw(node_identity("node-1"), errors)
    js = node1.jetstream(timeout=1.0)
    for attempt in (js.delete_stream(EVENTS_STREAM), js.purge_stream(EVENTS_STREAM),
                    js.delete_stream(ENI_ON_NODE.stream)):
        with pytest.raises(Exception):  # noqa: B017,PT011  (refused: no reply)
            await attempt
    await refused(errors, f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}")
    admin = await secured.raw(ADMIN_IDENTITY, [])
    info = await admin.jetstream().stream_info(EVENTS_STREAM)
    assert info.config.name == EVENTS_STREAM
    assert (await admin.jetstream().stream_info(ENI_ON_NODE.stream)).config.name == ENI_ON_NODE.stream


async def test_a_node_cannot_listen_to_another_nodes_datapath_requests(secured: SecuredBus) -> None:
    errors: list[str] = []
    got: list[str] = []
    node1 = await secured.raw(node_identity("node-1"), errors)
    await node1.subscribe("cce.datapath.v1.setup.node-2", cb=collect(got))
    await node1.subscribe("_INBOX.node.node-2.>", cb=collect(got))
    await settled(node1)
    await refused(errors, 'Subscription to "cce.datapath.v1.setup.node-2"')
    await refused(errors, 'Subscription to "_INBOX.node.node-2.>"')
    admin = await secured.raw(ADMIN_IDENTITY, [])
    await admin.publish("cce.datapath.v1.setup.node-2", b"{}")
    await admin.publish("_INBOX.node.node-2.x", b"{}")
    await settled(admin)
    await settled(node1)
    assert got == []


async def test_who_may_not_connect_cannot(secured: SecuredBus, tmp_path: Path) -> None:
    url = secured.server.url
    ca = ssl.create_default_context(cafile=str(secured.security.ca_file))
    with pytest.raises(Exception, match=r"[Aa]uthorization"):
        await nats.connect(url, tls=ca, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    make_ca_and_server_cert(tmp_path, ("127.0.0.1",))  # another CA: it did not sign our server's certificate
    other = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await nats.connect(url, tls=other, user_credentials=str(secured.security.creds_path(ADMIN_IDENTITY)),
                           allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def rejected(server: EmbeddedNats, security: BusSecurity, creds: Path) -> str:
    """Why the server will not serve these credentials ("" if it does): at CONNECT, or right after it."""
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = Client()
    try:
        await nc.connect(server.url, user_credentials=str(creds), allow_reconnect=False,
                         max_reconnect_attempts=0, connect_timeout=2, error_cb=on_error,
                         tls=ssl.create_default_context(cafile=str(security.ca_file)))
    except Exception as err:
        # without reconnects, nats-py raises and leaves the connection's socket open (a ResourceWarning later, in
        # whichever test collects it): closed here
        with contextlib.suppress(Exception):
            await nc.close()
        return str(err) or type(err).__name__
    try:
        await nc.flush(timeout=2)
        await asyncio.sleep(0)
    except Exception as err:
        errors.append(str(err) or type(err).__name__)
    finally:
        await nc.close()
    return "; ".join(errors)


async def test_expired_and_revoked_credentials_are_refused(secured: SecuredBus) -> None:
    security = secured.security
    expiring = security.issue(node_identity("node-9"), validity_s=5)
    assert await rejected(secured.server, security, expiring) == ""  # good until it expires...
    await until(lambda: time.time() > security_expiry(expiring), 10, "the credentials to expire")
    assert await rejected(secured.server, security, expiring)  # ...and refused after
    victim = node_identity("node-8")
    creds = security.issue(victim)
    assert await rejected(secured.server, security, creds) == ""
    security.revoke(victim)
    secured.server.reload()

    async def refused_now() -> bool:
        return bool(await rejected(secured.server, security, creds))

    await until(refused_now, 10, "the revoked credentials refused after the reload")
    await until(lambda: time.time() >= security.revoked[security.user_of(victim)], 5, "a later second")
    fresh = security.issue(victim)  # issued after the revocation: a new identity's credentials work
    assert await rejected(secured.server, security, fresh) == ""


def security_expiry(creds: Path) -> float:
    return float(creds_claims(creds)["exp"])


# ---- the table: every subject of the registry x every identity, as the server enforces it --------------------------


def expected(identity: Identity, subject: str) -> bool:
    """The contract in words: a node asks ipam and its own datapath about itself; ipam asks route_manager (CIDRs)
    and eni_manager (fixed IPs moving); the bridge registers and removes nodes and releases endpoints; the admin may
    do anything."""
    prefix, node = subject.rsplit(".", 1)
    spec = next(r for r in REQUESTS if r.prefix == prefix)
    if identity.is_admin:
        return True
    if identity.node:
        return node == identity.node and spec.name in ("allocate", "confirm", "release", "setup", "teardown",
                                                        "check")
    return {"ipam": ("expand", "assign"), "k8s_bridge": ("register", "remove", "release")}.get(
        identity.name, ()).__contains__(spec.name)


def every_subject() -> list[str]:
    return [r.for_node(n) for r in REQUESTS for n in NODES_]


def every_identity() -> list[Identity]:
    return [*(service_identity(s) for s in CONTROL_PLANE), *(node_identity(n) for n in NODES_), ADMIN_IDENTITY]


def test_the_generated_permissions_say_what_the_contract_says() -> None:
    for identity in every_identity():
        perms = permissions(identity)
        for subject in every_subject():
            assert perms.may_publish(subject) is expected(identity, subject), (identity.name, subject)


async def test_the_server_enforces_the_generated_permissions_for_every_subject(secured: SecuredBus) -> None:
    seen: set[tuple[str, str]] = set()
    admin = await secured.raw(ADMIN_IDENTITY, [])
    await admin.subscribe("cce.*.v1.*.*", cb=collect(seen, lambda msg: (msg.data.decode(), msg.subject)))
    await settled(admin)
    for identity in every_identity():
        nc = await secured.raw(identity, [])
        for subject in every_subject():
            await nc.publish(subject, identity.name.encode())
        await settled(nc)
    await settled(admin)
    await until(lambda: len(seen) >= sum(expected(i, s) for i in every_identity() for s in every_subject()), 5,
                "every allowed publish to arrive")
    for identity in every_identity():
        for subject in every_subject():
            assert ((identity.name, subject) in seen) is expected(identity, subject), (identity.name, subject)


# ---- secrets --------------------------------------------------------------------------------------------------------


async def test_the_simulators_admin_api_wants_the_admins_token(tmp_path: Path) -> None:
    from services.vpc_sim.admin import SimAdmin, SimAdminError
    from services.vpc_sim.server import SimServer
    from tests.sim_fixtures import sim_settings

    (tmp_path / "token").write_text("s3cret\n")
    async with SimServer(sim_settings(tmp_path, admin_token_file=tmp_path / "token")) as sim:
        for token in ("", "wrong"):
            async with SimAdmin(sim.url, token=token) as anyone:
                with pytest.raises(SimAdminError) as err:
                    await anyone.info()
                assert err.value.status == 401
        async with SimAdmin(sim.url, token="s3cret") as admin:
            assert (await admin.info())["accessKey"] == sim.access_key


def test_cloud_keys_come_from_files_and_a_missing_one_names_its_setting(tmp_path: Path) -> None:
    from cloud.bce import BceSettings

    (tmp_path / "ak").write_text("AK-from-file\n")
    (tmp_path / "sk").write_text("SK-from-file")
    settings = BceSettings(access_key_file=tmp_path / "ak", secret_key_file=tmp_path / "sk")
    assert (settings.access_key, settings.secret_key.get_secret_value()) == ("AK-from-file", "SK-from-file")
    assert "SK-from-file" not in repr(settings)
    with pytest.raises(ValueError, match="CCE_CLOUD_SECRET_KEY_FILE"):
        BceSettings(secret_key_file=tmp_path / "missing")


def test_urls_are_logged_without_their_credentials() -> None:
    from chassis.creds import redact_url

    assert redact_url("nats://user:pass@h1:4222,tls://token@h2:4222") == "nats://***@h1:4222,tls://***@h2:4222"
    assert redact_url("tls://127.0.0.1:4222") == "tls://127.0.0.1:4222"


def test_credentials_whose_permissions_are_out_of_date_are_issued_again(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """unit: a stack started again after an upgrade that added a bucket re-issues the credentials it changes."""
    security = BusSecurity(tmp_path / "bus")
    real = natsauth.permissions

    def before_the_upgrade(identity: Identity) -> Any:
        perms = real(identity)
        return dataclasses.replace(perms, publish=perms.publish[:-1]) if identity.name == "ipam" else perms

    monkeypatch.setattr(natsauth, "permissions", before_the_upgrade)
    security.ensure(["node-1"])
    issued = {p.name: p.read_text() for p in (tmp_path / "bus").glob("*.creds")}
    monkeypatch.setattr(natsauth, "permissions", real)
    assert not security.current(next(i for i in identities(()) if i.name == "ipam"))
    security.ensure(["node-1"])
    again = {p.name: p.read_text() for p in (tmp_path / "bus").glob("*.creds")}
    assert [name for name in issued if issued[name] != again[name]] == ["ipam.creds"]
    assert all(security.current(i) for i in [*identities(()), node_identity("node-1")])

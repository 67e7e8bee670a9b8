"""Integration tier, real API server: the bridge's informer (list + watch, relist on 410 Gone, back-off while the
server is away) and its REST adapter, with the bridge's own least-privilege identity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from cce_net.kubelocal import LocalKube, apply_manifests, free_port, missing_parts
from services.k8s_bridge.kube import Informer, Key, KubeApi, KubeError, Resource, api_client
from services.k8s_bridge.manifests import BRIDGE_USER
from services.k8s_bridge.nodesync import NODES_PATH, slim_node
from tests.cluster import until
from tests.kube import Kube, manifests

pytestmark = pytest.mark.integration


class ExpiringInformer(Informer):
    """Its first watch starts from a version the server has compacted away, as after a long partition."""

    expired_once = False

    def _list(self) -> str:
        version = super()._list()
        if not self.expired_once:
            self.expired_once = True
            return "1"
        return version


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[KubeApi]:
    client = KubeApi(api_client(kube.bridge_kubeconfig, 8), workers=4)
    try:
        yield client
    finally:
        client.close()


@asynccontextmanager
async def watched(informer: Informer) -> AsyncIterator[list[tuple[Key, Any, Any]]]:
    changes: list[tuple[Key, Any, Any]] = []
    informer.handlers.append(lambda key, old, new: changes.append((key, old, new)))
    await informer.start()
    try:
        yield changes
    finally:
        await informer.stop()


@pytest.fixture(scope="module")
def uncached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKube]:
    """An API server of its own that watches etcd directly (no watch cache), so a compacted version is 410 Gone."""
    missing = missing_parts()
    if missing:
        pytest.skip("no local Kubernetes API server: " + "; ".join(missing))
    with LocalKube(tmp_path_factory.mktemp("kube-nocache"), service_users=(BRIDGE_USER,),
                   extra_args=("--watch-cache=false",)) as server:
        apply_manifests(server.kubeconfig, manifests())
        yield server


async def test_a_watch_from_a_compacted_version_relists_and_misses_nothing(uncached_server: LocalKube) -> None:
    kube = Kube(uncached_server)
    api = KubeApi(api_client(kube.bridge_kubeconfig, 8), workers=4)
    kube.create_node("n-1", "cce://i-1")
    uncached_server.compact_etcd()
    informer = ExpiringInformer(api, Resource("nodes", NODES_PATH), watch_timeout_s=30, transform=slim_node,
                                backoff=(0.05, 0.5))
    try:
        await expire_and_recover(kube, informer)
    finally:
        api.close()
        kube.close()


async def expire_and_recover(kube: Kube, informer: ExpiringInformer) -> None:
    async with watched(informer) as changes:
        await informer.wait_synced(20)
        kube.create_node("n-2", "cce://i-2")  # made while the informer's first watch is being refused
        await until(lambda: informer.relists >= 2 and ("", "n-2") in informer.store, 20, "a relist that sees n-2")
        assert informer.expired >= 1  # the server said 410 Gone, and that relisted
        assert set(informer.store) == {("", "n-1"), ("", "n-2")}
        assert informer.store[("", "n-2")]["spec"]["providerID"] == "cce://i-2"
        assert "images" not in informer.store[("", "n-2")]["status"]  # only what the bridge reads is kept
        kube.delete_node("n-1")
        await until(lambda: ("", "n-1") not in informer.store, 20, "n-1's deletion seen by the watch")
        assert any(key == ("", "n-1") and new is None for key, _old, new in changes)
        assert informer.healthy


async def test_the_informer_is_stale_while_the_server_is_away_and_catches_up_after(kube: Kube, api: KubeApi) -> None:
    informer = Informer(api, Resource("nodes", NODES_PATH), watch_timeout_s=30, transform=slim_node,
                        backoff=(0.05, 0.5))
    async with watched(informer):
        await informer.wait_synced(20)
        assert informer.healthy
        kube.server.stop_apiserver()
        try:
            await until(lambda: not informer.healthy, 20, "the informer to notice the server is gone")
            assert informer.synced.is_set()  # what it had stays: stale, not empty
        finally:
            kube.server.restart_apiserver()  # not from a thread: it would die with the thread (PR_SET_PDEATHSIG)
        kube.create_node("n-3", "cce://i-3")
        await until(lambda: informer.healthy and ("", "n-3") in informer.store, 30, "n-3 after the server is back")


async def test_requests_the_bridge_may_not_make_are_refused_with_their_status(api: KubeApi) -> None:
    with pytest.raises(KubeError) as err:
        await api.get("/api/v1/secrets")
    assert err.value.status == 403
    with pytest.raises(KubeError) as err:
        await api.write("DELETE", "/api/v1/nodes/nope")  # it may patch Nodes (its taint), never delete one
    assert err.value.status == 403
    with pytest.raises(KubeError) as err:
        await api.get("/apis/cce.io/v1/netresourcesets/nope")
    assert err.value.not_found


async def test_an_unreachable_server_is_status_zero(kube: Kube, tmp_path: Path) -> None:
    config = yaml.safe_load(kube.bridge_kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    client = KubeApi(api_client(tmp_path / "kubeconfig", 2), workers=1)
    try:
        with pytest.raises(KubeError) as err:
            await asyncio.wait_for(client.get("/api/v1/nodes"), 30)
        assert err.value.status == 0
    finally:
        client.close()

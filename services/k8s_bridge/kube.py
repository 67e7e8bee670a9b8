"""The Kubernetes API, the bridge's only way to it: the official `kubernetes` client's configuration, authentication
and transport, used for plain JSON requests (no model objects: the bridge reads a few fields and writes patches),
run on a pool of threads so the event loop never blocks; writes go through a token bucket.

`Informer` keeps a local copy of one kind of object: list (paged), then watch from the list's resourceVersion with
bookmarks; a watch that ends is resumed from the last version seen, a `410 Gone` (the version is too old) relists,
any other failure relists after a bounded back-off. Handlers see every change as (key, old, new) on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from prometheus_client import Counter, Histogram

from chassis.logs import get_logger
from cloud.limiter import TokenBucket

log = get_logger("k8s_bridge.kube")

REQUESTS = Counter("cce_kube_requests_total", "Kubernetes API requests by method, resource and HTTP status "
                   "(0: the API server was not reached)", ["method", "resource", "code"])
REQUEST_SECONDS = Histogram("cce_kube_request_seconds", "time of one Kubernetes API request (watches: to the "
                            "first byte)", ["method", "resource"],
                            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
WRITE_WAIT = Histogram("cce_kube_write_wait_seconds", "time a write waited for the client-side rate limit",
                       buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 5.0))

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read


class KubeError(Exception):
    """A failed API call: `status` is the HTTP status (0: the server was not reached), `reason` Kubernetes' word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def _error(status: int, data: bytes | str | None) -> KubeError:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return KubeError(status, str(body.get("reason", "")), str(body.get("message", data or ""))[:500])


def resource_of(path: str) -> str:
    """`/apis/cce.io/v1/namespaces/ns/cceendpoints/web-1/status` -> `cceendpoints/status` (a bounded label)."""
    parts = [p for p in path.split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(parts) > 2 and parts[0] == "namespaces":
        parts = parts[2:]
    if not parts:
        return "-"
    return f"{parts[0]}/{parts[2]}" if len(parts) > 2 else parts[0]


def api_client(kubeconfig: Path | None, pool_size: int) -> kclient.ApiClient:
    """An authenticated client: from a kubeconfig file, or the pod's service account in a cluster."""
    configuration = kclient.Configuration()
    if kubeconfig is not None:
        kconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        kconfig.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False  # our loops retry with their own back-off
    return kclient.ApiClient(configuration)


class KubeApi:
    """JSON requests to the API server on a thread pool; writes wait their turn in a token bucket."""

    def __init__(self, client: kclient.ApiClient, workers: int = 8, qps: float = 100.0, burst: int = 200) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="kube-api")
        self.writes = TokenBucket(qps, burst)
        self.calls = 0

    def request_sync(self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None,
                     content_type: str | None = None, timeout: Any = REQUEST_TIMEOUT) -> Any:
        response = self.open(method, path, query, body, content_type, timeout)
        try:
            data = response.read()
        finally:
            response.release_conn()
        if not 200 <= response.status < 300:
            raise _error(response.status, data)
        return json.loads(data) if data else None

    def open(self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None,
             content_type: str | None = None, timeout: Any = REQUEST_TIMEOUT) -> Any:
        """The raw urllib3 response (for streams); connection failures become KubeError(0)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        self.calls += 1
        resource = resource_of(path)
        started = time.perf_counter()
        try:
            serialized = self.client.param_serialize(method, path, query_params=params, header_params=headers,
                                                     body=body, auth_settings=["BearerToken"])
            response = self.client.call_api(*serialized, _request_timeout=timeout).response
        except ApiException as err:
            REQUESTS.labels(method, resource, str(err.status or 0)).inc()
            raise KubeError(err.status or 0, str(err.reason or ""), str(err.body or err)) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            REQUESTS.labels(method, resource, "0").inc()
            raise KubeError(0, "Unreachable", repr(err)) from None
        REQUEST_SECONDS.labels(method, resource).observe(time.perf_counter() - started)
        REQUESTS.labels(method, resource, str(response.status)).inc()
        return response

    async def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: self.request_sync("GET", path, query))

    async def write(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                    query: Mapping[str, Any] | None = None) -> Any:
        with WRITE_WAIT.time():
            await self.writes.acquire()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, lambda: self.request_sync(method, path, query, body, content_type))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.client.close()


# ---- informers ---------------------------------------------------------------------------------------------------

Key = tuple[str, str]  # (namespace or "", name)
Handler = Callable[[Key, dict[str, Any] | None, dict[str, Any] | None], Awaitable[None] | None]


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass(frozen=True)
class Resource:
    """A list/watch endpoint, e.g. `/api/v1/nodes` or `/apis/cce.io/v1/cceendpoints` (all namespaces)."""

    name: str
    path: str
    page_size: int = 500


class Informer:
    """A local copy of one kind of object kept current by list + watch on a thread; changes reach `handlers` on the
    event loop. `transform` keeps only what the bridge reads of each object (nodes carry image lists, pods a lot)."""

    def __init__(self, api: KubeApi, resource: Resource, watch_timeout_s: int = 300,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: o,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.api = api
        self.resource = resource
        self.watch_timeout_s = watch_timeout_s
        self.transform = transform
        self.backoff = backoff
        self.store: dict[Key, dict[str, Any]] = {}
        self.handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self.healthy = False  # listed and watching since; False from a failure until the next good list
        self.relists = 0
        self.expired = 0  # watches the server refused as too old (410 Gone): each one relists
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._consumer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = asyncio.create_task(self._consume(), name=f"informer-{self.resource.name}")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.resource.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the thread's read
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)

    # ---- the thread: list, watch, relist -----------------------------------------------------------------------

    def _emit(self, kind: str, payload: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed while we were stopping
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, payload))

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                version = self._list()
                delay = self.backoff[0]
                while not self._stop.is_set():
                    version = self._watch(version)
            except KubeError as err:
                if self._stop.is_set():
                    return
                self._emit("unhealthy", None)
                if err.gone:
                    self.expired += 1
                    log.info("watch expired; relisting", resource=self.resource.name)
                    continue
                log.warning("list/watch failed; relisting after a back-off", resource=self.resource.name,
                            error=str(err), retry_in=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            except Exception as err:  # a bug or a garbled stream: never kill the thread
                if self._stop.is_set():
                    return
                self._emit("unhealthy", None)
                log.warning("list/watch broke; relisting", resource=self.resource.name, error=repr(err))
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    def _list(self) -> str:
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            page = self.api.request_sync("GET", self.resource.path,
                                         {"limit": self.resource.page_size, "continue": cont})
            items.extend(self.transform(o) for o in page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or None
            if not cont:
                version = str((page.get("metadata") or {}).get("resourceVersion") or "")
                break
        self._emit("list", items)
        return version

    def _watch(self, version: str) -> str:
        query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": self.watch_timeout_s}
        response = self.api.open("GET", self.resource.path, query,
                                 timeout=(REQUEST_TIMEOUT[0], self.watch_timeout_s + 30))
        self._response = response
        try:
            if not 200 <= response.status < 300:
                raise _error(response.status, response.read())
            for line in _lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code") or 0), str(obj.get("reason", "")), str(obj.get("message")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._emit(kind, self.transform(obj))
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return version

    # ---- the loop side: the store and the handlers ---------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            kind, payload = await self._queue.get()
            try:
                if kind == "unhealthy":
                    self.healthy = False
                elif kind == "list":
                    await self._replace(payload)
                else:
                    await self._apply(kind, payload)
            except Exception:
                log.exception("informer handler failed", resource=self.resource.name)

    async def _replace(self, items: list[dict[str, Any]]) -> None:
        fresh = {object_key(o): o for o in items}
        old, self.store = self.store, fresh
        self.healthy = True
        self.relists += 1
        first = not self.synced.is_set()
        self.synced.set()
        if first:
            return
        for key in old.keys() - fresh.keys():
            await self._notify(key, old[key], None)
        for key, obj in fresh.items():
            if _version(old.get(key)) != _version(obj):
                await self._notify(key, old.get(key), obj)

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        old = self.store.get(key)
        if kind == "DELETED":
            if self.store.pop(key, None) is not None:
                await self._notify(key, old, None)
            return
        if old is not None and _version(old) == _version(obj):
            return
        self.store[key] = obj
        await self._notify(key, old, obj)

    async def _notify(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for handler in self.handlers:
            result = handler(key, old, new)
            if result is not None:
                await result

    async def wait_synced(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.synced.wait()


def _version(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def _lines(response: Any) -> Iterator[str]:
    for line in iter_resp_lines(response):
        if line:
            yield line

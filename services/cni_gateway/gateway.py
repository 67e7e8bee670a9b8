"""CNI commands turned into bus requests: ADD -> ipam allocate -> datapath setup -> ipam confirm; DEL -> datapath
teardown -> ipam release (best effort, journaled when the control plane is unreachable); CHECK; STATUS; GC."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Histogram

from chassis import tracing
from chassis.bus import Bus
from chassis.events import EventPublisher
from chassis.kv import KvCache, Store
from chassis.logs import get_logger
from chassis.rpc import call
from schemas.base import subject_token, utcnow
from schemas.errors import CceError, ErrorReason
from schemas.events import EventKind
from schemas.messages import (
    AllocateReply,
    AllocateRequest,
    CheckReply,
    CheckRequest,
    ConfirmRequest,
    ReleaseRequest,
    SetupRequest,
    TeardownRequest,
)
from schemas.records import CceEndpoint, NetResourceSet, PodInfo
from schemas.subjects import (
    DATAPATH_CHECK,
    DATAPATH_SETUP,
    DATAPATH_TEARDOWN,
    IPAM_ALLOCATE,
    IPAM_CONFIRM,
    IPAM_RELEASE,
    endpoint_key,
    pod_key,
)
from services.cni_gateway import domain
from services.cni_gateway.bandwidth import BandwidthError, bandwidth_of
from services.cni_gateway.domain import Attachment, CniCode, CniFailure, CniRequest
from services.cni_gateway.fixed_ip import FixedIpError, fixed_ip_of
from services.cni_gateway.journal import PendingRelease, ReleaseJournal
from services.cni_gateway.netns import NetnsState, netns_state
from services.cni_gateway.plugin import CURRENT_VERSION
from services.cni_gateway.server import error_reply
from services.cni_gateway.settings import GatewaySettings

log = get_logger("cni_gateway")

UNREACHABLE = frozenset({ErrorReason.TIMEOUT, ErrorReason.SERVICE_UNAVAILABLE})
COMMANDS = frozenset({"ADD", "DEL", "CHECK", "STATUS", "GC"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUEST_SECONDS = Histogram(
    "cce_cni_request_seconds", "CNI commands served by the gateway, from the plugin's request to the reply, by "
    "command, the pod's network mode (unknown before the node's is known) and outcome (success or failure)",
    ["command", "mode", "outcome"], buckets=_LATENCY_BUCKETS)
FAILURES = Counter("cce_cni_failures_total", "failed CNI commands by command and coded reason (IPPoolExhausted, "
                   "SubnetNoMoreIP, Timeout...)", ["command", "reason"])
_REASON_WORD = re.compile(r"^[A-Za-z]{1,40}$")
# the mode of the command being served, once its endpoint is known (each CNI request is served in its own task)
_request_mode: contextvars.ContextVar[str] = contextvars.ContextVar("cce_cni_mode", default="")


def failure_reason(reply: dict[str, Any]) -> str:
    """The coded reason of a failed command's reply: the first word of its CNI error's details (bounded)."""
    error = reply.get("error")
    if not isinstance(error, dict):
        error = {}
    words = str(error.get("details") or "").split()
    word = words[0] if words else ""
    if word in ErrorReason._value2member_map_ or _REASON_WORD.match(word):
        return word
    return "Other"


class Gateway:
    def __init__(self, bus: Bus, settings: GatewaySettings, endpoints: KvCache[CceEndpoint],
                 nodes: Store[NetResourceSet], journal: ReleaseJournal,
                 netns_of: Callable[[str], NetnsState] = netns_state,
                 clock: Callable[[], datetime] = utcnow, *, events: EventPublisher | None = None,
                 pods: KvCache[PodInfo] | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.node = settings.node
        self.endpoints = endpoints
        self.nodes = nodes
        self.journal = journal
        self.netns_of = netns_of
        self.clock = clock
        self.events = events  # ADD failures are told on the bus (k8s_bridge makes them Events on the pod)
        self.pods = pods  # this node's pods' facts k8s_bridge keeps (a watched view): what a pod's ADD honours
        self.busy: dict[Attachment, asyncio.Lock] = {}
        self.node_mode = "unknown"  # the node's network mode (learn_mode)
        self._users: dict[Attachment, int] = {}

    # ---- one request ---------------------------------------------------------------------------------------------

    async def handle(self, data: bytes) -> dict[str, Any]:
        """A socket request line -> the reply object; every request is logged with its container id and duration."""
        started = time.perf_counter()
        version = CURRENT_VERSION
        command = container_id = ifname = ""
        code = 0
        try:
            body = domain.decode_request(data)
            version = domain.request_version(body)
            command = str(body.get("command", ""))
            env = body.get("env")
            env = env if isinstance(env, dict) else {}
            container_id, ifname = str(env.get("CNI_CONTAINERID", ""))[:128], str(env.get("CNI_IFNAME", ""))[:64]
            request = domain.parse_request(body)
            result = await self.dispatch(request)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except CniFailure as failure:
            code = failure.code
            reply = error_reply(failure, version)
        except Exception as err:
            log.exception("cni request failed unexpectedly", command=command, container_id=container_id)
            code = domain.REASON_CODES[ErrorReason.INTERNAL]
            reply = error_reply(CniFailure(code, f"Internal: {err!r}", "Internal"), version)
        elapsed = time.perf_counter() - started
        self._observe(command, code, reply, elapsed)
        elapsed_ms = round(elapsed * 1000, 2)
        fields = {"command": command, "container_id": container_id, "ifname": ifname, "duration_ms": elapsed_ms}
        if code:
            log.warning("cni request failed", **fields, code=code, error=reply["error"]["msg"])
        else:
            log.info("cni request", **fields)
        return reply

    def _observe(self, command: str, code: int, reply: dict[str, Any], seconds: float) -> None:
        """The command's latency by mode and outcome; a failure also by its coded reason (bounded labels only)."""
        command = command if command in COMMANDS else "other"
        mode = _request_mode.get() or self.node_mode
        _request_mode.set("")
        REQUEST_SECONDS.labels(command, mode, "failure" if code else "success").observe(seconds)
        if code:
            FAILURES.labels(command, failure_reason(reply)).inc()

    async def learn_mode(self) -> None:
        """The node's network mode from its record (the mode label of commands that never reach an endpoint)."""
        try:
            item = await self.nodes.get(subject_token(self.node))
        except Exception as err:
            log.debug("node record unreadable; mode unknown for now", error=repr(err))
            return
        if item is not None:
            self.node_mode = item.value.spec.mode.value

    async def dispatch(self, req: CniRequest) -> dict[str, Any]:
        if req.command == "STATUS":
            await self.status()
            return {}
        if req.command == "GC":
            await self.gc(req)
            return {}
        with tracing.root_span(f"cni.{req.command}", self._trace_attributes(req)) as span:
            try:
                return await self._dispatch_one(req)
            except CniFailure as failure:
                tracing.fail(span, failure.reason.value if failure.reason else failure_reason(
                    {"error": {"details": failure.details}}))
                raise

    def _trace_attributes(self, req: CniRequest) -> dict[str, Any]:
        attrs: dict[str, Any] = {"cni.command": req.command, "cni.container_id": req.container_id,
                                 "cni.ifname": req.ifname, tracing.NODE: self.node, tracing.INDEX: True}
        if req.pod is not None:
            attrs["k8s.namespace.name"], attrs["k8s.pod.name"] = req.pod.namespace, req.pod.name
        return attrs

    async def _dispatch_one(self, req: CniRequest) -> dict[str, Any]:
        async with self._serialized(req.attachment):
            if req.command == "ADD":
                try:
                    return await self.add(req)
                except CniFailure as failure:
                    await self._tell_add_failed(req, failure)
                    raise
            if req.command == "DEL":
                await self.delete(req)
            else:
                await self.check(req)
            return {}

    @asynccontextmanager
    async def _serialized(self, key: Attachment) -> AsyncIterator[None]:
        """Requests for one (container id, ifname) run one after the other; GC leaves them alone meanwhile."""
        lock = self.busy.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self.busy[key]

    def _key(self, req: CniRequest) -> str:
        return endpoint_key(self.node, req.container_id, req.ifname)

    def _require_netns(self, path: str) -> None:
        state = self.netns_of(path)
        if state is NetnsState.NETNS:
            return
        code = CniCode.UNKNOWN_CONTAINER if state is NetnsState.MISSING else CniCode.INVALID_ENV
        raise CniFailure(code, f"CNI_NETNS {path!r} {state.value}", "InvalidNetns")

    # ---- ADD -----------------------------------------------------------------------------------------------------

    async def add(self, req: CniRequest) -> dict[str, Any]:
        self._require_netns(req.netns)
        assert req.pod is not None
        if self.journal.remove(req.container_id, req.ifname):
            log.info("pending release superseded by a new ADD", container_id=req.container_id, ifname=req.ifname)
        info = await self._pod_info(req)
        try:
            bandwidth = bandwidth_of(req.config, info.annotations if info else {})
            fixed = fixed_ip_of(info)
        except (BandwidthError, FixedIpError) as err:
            raise CniFailure(domain.code_of(ErrorReason.INVALID_REQUEST), f"InvalidRequest: {err}", "InvalidRequest",
                             ErrorReason.INVALID_REQUEST) from None
        wait_s = self.settings.allocate_wait_s
        try:
            allocated: AllocateReply = await call(
                self.bus, IPAM_ALLOCATE,
                AllocateRequest(node=self.node, container_id=req.container_id, ifname=req.ifname, pod=req.pod,
                                wait_s=wait_s, exclusive=domain.wants_exclusive_eni(req.args, info), netns=req.netns,
                                bandwidth=bandwidth, fixed_ip=fixed),
                timeout=wait_s + self.settings.call_timeout_s)
        except CceError as err:
            raise domain.failure_of(err, "allocate") from None
        endpoint = allocated.endpoint
        _request_mode.set(endpoint.mode.value)
        # The node programs the pod while ipam confirms the allocation (the confirm names the veth the datapath is
        # making): one round trip less. Either failing undoes both; a crash in between leaves a confirmed endpoint
        # for the runtime's DEL of the failed ADD (as a crash after both, before the reply, always did).
        setup_call = asyncio.ensure_future(call(
            self.bus, DATAPATH_SETUP,
            SetupRequest(node=self.node, container_id=req.container_id, ifname=req.ifname, netns=req.netns,
                         endpoint=endpoint),
            timeout=self.settings.setup_timeout_s))
        confirm_call = asyncio.ensure_future(call(
            self.bus, IPAM_CONFIRM,
            ConfirmRequest(node=self.node, container_id=req.container_id, ifname=req.ifname,
                           host_veth=endpoint.veth_name),
            timeout=self.settings.call_timeout_s))
        steps = {"datapath setup": setup_call, "confirm": confirm_call}
        try:
            await asyncio.wait(steps.values())
        except BaseException:
            for step in steps.values():
                step.cancel()
            await asyncio.shield(self._undo(req, endpoint))
            raise
        failed = [(doing, error) for doing, step in steps.items() if (error := step.exception()) is not None]
        if failed:
            doing, error = failed[0]
            if isinstance(error, CceError):
                log.warning("ADD failed after allocation, undoing", container_id=req.container_id, step=doing,
                            reason=error.reason.value, error=error.message)
            await asyncio.shield(self._undo(req, endpoint))
            if not isinstance(error, CceError):
                raise error
            raise domain.failure_of(error, doing) from None
        return domain.build_result(req.version, setup_call.result())

    async def _pod_info(self, req: CniRequest) -> PodInfo | None:
        """The pod's facts from k8s_bridge (None without them), as this node's watched view of them holds them. A pod
        just created may not be there yet: with `pod_info_wait_s`, the ADD waits that long for its record (of the
        same uid, when the runtime gave one) to arrive in the view."""
        if self.pods is None or req.pod is None or not req.args.get("K8S_POD_NAME"):
            return None
        pods, pod = self.pods, req.pod
        key = pod_key(self.node, pod.namespace, pod.name)

        def found() -> PodInfo | None:
            info = pods.get(key)
            return info if info is not None and (not pod.uid or info.uid == pod.uid) else None

        if (info := found()) is not None or self.settings.pod_info_wait_s <= 0:
            return info
        with contextlib.suppress(TimeoutError):
            await pods.wait_for(lambda _items: found() is not None, self.settings.pod_info_wait_s)
        return found()

    async def _tell_add_failed(self, req: CniRequest, failure: CniFailure) -> None:
        if self.events is None or req.pod is None:
            return
        await self.events.publish(
            EventKind.ENDPOINT, "add-failed", node=self.node, object=self._key(req), message=failure.msg,
            reason=failure.reason or ErrorReason.INTERNAL, namespace=req.pod.namespace, pod=req.pod.name,
            pod_uid=req.pod.uid, container_id=req.container_id, cni_code=failure.code)

    async def _undo(self, req: CniRequest, endpoint: CceEndpoint) -> None:
        """Nothing of a failed ADD is left behind: tear the pod's network down and give the IP back."""
        await self._teardown(req, endpoint, strict=False)
        await self._release(req.container_id, req.ifname, why="ADD failed")

    # ---- DEL -----------------------------------------------------------------------------------------------------

    async def delete(self, req: CniRequest) -> None:
        """Best effort: succeeds without a netns, without prevResult, for unknown pods and without a control plane
        (the release is then journaled and retried until ipam takes it)."""
        endpoint = self.endpoints.get(self._key(req))
        if endpoint is not None:
            _request_mode.set(endpoint.mode.value)
        await self._teardown(req, endpoint, strict=True)
        await self._release(req.container_id, req.ifname, why="DEL")

    async def _teardown(self, req: CniRequest, endpoint: CceEndpoint | None, strict: bool) -> None:
        netns = req.netns if req.netns and self.netns_of(req.netns) is NetnsState.NETNS else ""
        try:
            reply = await call(self.bus, DATAPATH_TEARDOWN,
                               TeardownRequest(node=self.node, container_id=req.container_id, ifname=req.ifname,
                                               netns=netns, endpoint=endpoint),
                               timeout=self.settings.call_timeout_s)
            log.debug("pod network removed", container_id=req.container_id, removed=reply.removed)
        except CceError as err:
            if strict and err.reason not in UNREACHABLE:
                raise domain.failure_of(err, "datapath teardown") from None
            log.warning("datapath teardown skipped; resync will clean up", container_id=req.container_id,
                        reason=err.reason.value, error=err.message)

    async def _release(self, container_id: str, ifname: str, why: str) -> bool:
        try:
            await self.release_now(container_id, ifname)
            return True
        except CceError as err:
            self.journal.add(PendingRelease(container_id, ifname, f"{why}: {err.reason.value}"))
            log.warning("release journaled; it is retried until ipam takes it", container_id=container_id,
                        ifname=ifname, reason=err.reason.value, error=err.message)
            return False

    async def release_now(self, container_id: str, ifname: str) -> None:
        await call(self.bus, IPAM_RELEASE, ReleaseRequest(node=self.node, container_id=container_id, ifname=ifname),
                   timeout=self.settings.call_timeout_s)
        self.journal.remove(container_id, ifname)

    async def retry_journal(self) -> int:
        """One pass over the pending releases; returns how many are still pending."""
        left = 0
        for item in self.journal.pending():
            key = Attachment(item.container_id, item.ifname)
            if key in self.busy:
                left += 1
                continue
            # Held like a CNI request: an ADD of the same attachment arriving now waits for this release (and then
            # allocates afresh) instead of being handed the endpoint this release is about to remove.
            async with self._serialized(key):
                if not self.journal.has(item.container_id, item.ifname):
                    continue  # an ADD superseded it while we waited
                try:
                    await self.release_now(item.container_id, item.ifname)
                    log.info("journaled release done", container_id=item.container_id, ifname=item.ifname)
                except CceError as err:
                    left += 1
                    log.debug("journaled release still failing", container_id=item.container_id,
                              reason=err.reason.value)
        return left

    async def run_journal(self) -> None:
        while True:
            await self.retry_journal()
            await asyncio.sleep(self.settings.journal_retry_s)

    # ---- CHECK ---------------------------------------------------------------------------------------------------

    async def check(self, req: CniRequest) -> None:
        self._require_netns(req.netns)
        assert req.prev_result is not None
        endpoint = await self._fresh_endpoint(self._key(req))
        if endpoint is not None:
            _request_mode.set(endpoint.mode.value)
        if endpoint is None:
            raise CniFailure(domain.code_of(ErrorReason.ENDPOINT_NOT_FOUND),
                             f"EndpointNotFound: no endpoint for container {req.container_id} {req.ifname}"
                             f" on {self.node}", "EndpointNotFound")
        problem = domain.check_addresses(req.prev_result, endpoint)
        if problem:
            raise CniFailure(domain.code_of(ErrorReason.ENDPOINT_NOT_FOUND), f"EndpointNotFound: {problem}",
                             "EndpointNotFound")
        try:
            reply: CheckReply = await call(
                self.bus, DATAPATH_CHECK,
                CheckRequest(node=self.node, container_id=req.container_id, ifname=req.ifname, netns=req.netns,
                             endpoint=endpoint),
                timeout=self.settings.call_timeout_s)
        except CceError as err:
            raise domain.failure_of(err, "datapath check") from None
        if not reply.ok:
            raise CniFailure(domain.code_of(ErrorReason.DATAPATH_FAILED),
                             "DatapathFailed: " + "; ".join(reply.problems or ["the datapath check failed"]),
                             "DatapathFailed " + "; ".join(reply.problems))

    async def _fresh_endpoint(self, key: str) -> CceEndpoint | None:
        try:
            async with asyncio.timeout(self.settings.call_timeout_s):
                item = await self.endpoints.store.get(key)
        except (TimeoutError, CceError) as err:
            raise CniFailure(CniCode.TRY_AGAIN_LATER, f"Timeout: cannot read endpoint {key}: {err!r}",
                             "Timeout") from None
        return item.value if item else None

    # ---- STATUS and GC (CNI 1.1) ---------------------------------------------------------------------------------

    async def status(self) -> None:
        if not self.bus.connected:
            raise CniFailure(CniCode.NOT_AVAILABLE, "ServiceUnavailable: the gateway is not connected to the bus",
                             "ServiceUnavailable")
        try:
            async with asyncio.timeout(self.settings.call_timeout_s):
                item = await self.nodes.get(subject_token(self.node))
        except Exception as err:
            raise CniFailure(CniCode.NOT_AVAILABLE, f"ServiceUnavailable: cannot read node {self.node}: {err!r}",
                             "ServiceUnavailable") from None
        if item is None or item.value.status.removing:
            why = "has not registered" if item is None else "is being removed"
            raise CniFailure(CniCode.NOT_AVAILABLE, f"NodeNotRegistered: node {self.node} {why}",
                             "NodeNotRegistered")
        self.node_mode = item.value.spec.mode.value

    async def gc(self, req: CniRequest) -> None:
        created_before = self.clock() - timedelta(seconds=self.settings.gc_grace_s)
        stale = domain.gc_candidates(self.endpoints.values(), self.node, req.valid_attachments,
                                     busy=set(self.busy), created_before=created_before)
        for endpoint in stale:
            log.info("GC: releasing an attachment the runtime no longer knows", container_id=endpoint.container_id,
                     ifname=endpoint.ifname, pod=f"{endpoint.namespace}/{endpoint.pod}")
            stale_req = CniRequest("DEL", req.version, req.network, req.config,
                                   container_id=endpoint.container_id, ifname=endpoint.ifname)
            async with self._serialized(stale_req.attachment):
                await self._teardown(stale_req, endpoint, strict=False)
                await self._release(endpoint.container_id, endpoint.ifname, why="GC")

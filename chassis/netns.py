"""Network-namespace primitives shared by everything that programs namespaces (the simulator's fabric, the node
datapath): enter a namespace in a throw-away thread, open rtnetlink sockets inside namespaces and hand them to
pyroute2's `AsyncIPRoute`, read and write sysctls there, create/remove/list named namespaces, and turn netlink
errors into `NetnsError`s that say what was being done.

A namespace is named either by a name under /run/netns (`ip netns add` names) or by an absolute path (e.g.
/proc/<pid>/ns/net, or a runtime's /var/run/netns/cni-...); "" means the process's own namespace.

Nothing forks: setns/unshare move only the calling thread, so the work runs in a new thread that then dies and
nothing else ever runs in a namespace it entered. A netlink socket stays in the namespace it was created in, so a
socket opened there can be driven from the event loop. pyroute2 is imported lazily: importing this module is
cheap and works where pyroute2 is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

NETNS_RUN_DIR = "/run/netns"
NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000

GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})  # "already gone" on delete
EXISTS = frozenset({errno.EEXIST})  # "already there" on add

IFF_UP = 0x1

_T = TypeVar("_T")
_libc: ctypes.CDLL | None = None


@dataclass(frozen=True)
class Link:
    """A network link as a link dump reports it."""

    index: int
    name: str
    mac: str
    up: bool
    alias: str = ""
    kind: str = ""


def link_of(msg: Any) -> Link:
    """A link from one RTM_NEWLINK message of pyroute2."""
    return Link(
        index=int(msg["index"]),
        name=str(msg.get("ifname") or ""),
        mac=str(msg.get("address") or "").lower(),
        up=bool(msg["flags"] & IFF_UP),
        alias=str(msg.get("ifalias") or ""),
        kind=str(msg.get(("linkinfo", "kind")) or ""),
    )


class NetnsError(Exception):
    """A namespace or netlink operation failed; the message says what was being done and why. `errno` is the
    kernel's error number when there was one (ENOENT: the namespace does not exist; EINVAL: the path is not a
    network namespace)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def netns_path(ns: str) -> str:
    """The file of a namespace given by name (under /run/netns) or by absolute path."""
    if ns.startswith("/"):
        return ns
    if not ns or "/" in ns or ns in (".", ".."):
        raise NetnsError(f"invalid network namespace name {ns!r}", code=errno.EINVAL)
    return f"{NETNS_RUN_DIR}/{ns}"


def enter(ns: str) -> None:
    """Move the calling thread into network namespace `ns` ("" = stay). Only for threads that die afterwards:
    use it inside `in_fresh_thread`."""
    if not ns:
        return
    path = netns_path(ns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {ns} does not exist", code=errno.ENOENT) from None
    except OSError as exc:
        raise NetnsError(f"open network namespace {ns}: {exc.strerror}", code=exc.errno) from None
    try:
        if libc().setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            if code == errno.EINVAL:
                raise NetnsError(f"{path} is not a network namespace", code=code)
            raise NetnsError(f"enter network namespace {ns}: {os.strerror(code)}", code=code)
    finally:
        os.close(fd)


def in_fresh_thread(work: Callable[[], _T], what: str) -> _T:
    """Run `work` in a new thread and return its result (blocks the caller for the thread's life). Namespace
    changes (setns/unshare) affect only the calling thread, and /proc/sys/net follows the thread's namespace; the
    thread then dies, so nothing else ever runs in a namespace it entered. A NetnsError from `work` passes as is;
    anything else becomes a NetnsError naming `what`."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{what}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        if isinstance(failure[0], NetnsError):
            raise failure[0]
        raise NetnsError(f"{what}: {failure[0]}", code=getattr(failure[0], "errno", None)) from failure[0]
    return result[0]


SELF = "/proc/self/ns/net"  # the calling process's own network namespace
HOST = "/proc/1/ns/net"  # the host's (init's) network namespace


def same_namespace(a: str, b: str) -> bool:
    """Whether two namespace names or paths are the same namespace (same inode on nsfs); False if either is gone."""
    try:
        sa, sb = os.stat(netns_path(a)), os.stat(netns_path(b))
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_namespace(ns: str) -> None:
    """Raise NetnsError (errno ENOENT or EINVAL) unless `ns` names an existing network namespace."""
    in_fresh_thread(lambda: enter(ns), f"enter {ns}")


def open_socket_fds(namespaces: Iterable[str]) -> dict[str, int]:
    """File descriptors of rtnetlink sockets living in each namespace."""
    names = list(namespaces)

    def work() -> dict[str, int]:
        fds: dict[str, int] = {}
        try:
            for ns in names:
                enter(ns)
                fds[ns] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return fds

    return in_fresh_thread(work, "open netlink sockets")


def adopt(fds: Mapping[str, int], stack: contextlib.AsyncExitStack | contextlib.ExitStack) -> dict[str, Any]:
    """An AsyncIPRoute per socket fd, closed by `stack`. pyroute2 adopts a `fileno` lazily, on first access of
    `.socket` (it dups the fd and closes the original); touching it at once makes ipr.close() the only release.
    Must be called with a running event loop."""
    from pyroute2 import AsyncIPRoute

    handles: dict[str, Any] = {}
    pending = dict(fds)
    try:
        for ns, fd in fds.items():
            ipr = AsyncIPRoute(fileno=fd)
            stack.callback(ipr.close)
            ipr.socket  # noqa: B018 -- adopt the fd now
            del pending[ns]
            handles[ns] = ipr
    finally:
        for fd in pending.values():
            os.close(fd)
    return handles


def iproute_in(ns: str) -> Any:
    """An AsyncIPRoute whose socket lives in `ns`; the caller closes it (`ipr.close()`)."""
    stack = contextlib.ExitStack()
    handle = adopt(open_socket_fds([ns]), stack)[ns]
    stack.pop_all()
    return handle


@contextlib.asynccontextmanager
async def iproute(ns: str) -> AsyncIterator[Any]:
    """`async with iproute("pod-ns") as ipr:` an AsyncIPRoute inside `ns`, closed on exit."""
    ipr = iproute_in(ns)
    try:
        yield ipr
    finally:
        ipr.close()


def write_sysctls(ns: str, values: Mapping[str, str]) -> list[str]:
    """Write /proc/sys/<key> values inside `ns` where they differ; returns what changed."""

    def work() -> list[str]:
        enter(ns)
        changed: list[str] = []
        for key, value in values.items():
            path = f"/proc/sys/{key}"
            with open(path) as fh:
                current = fh.read().strip()
            if current != value:
                with open(path, "w") as fh:
                    fh.write(value)
                changed.append(f"{ns or 'own namespace'}: sysctl {key}={value}")
        return changed

    return in_fresh_thread(work, f"sysctls in {ns or 'own namespace'}")


def read_sysctls(ns: str, keys: Iterable[str]) -> dict[str, str | None]:
    """/proc/sys/<key> values inside `ns` (None where the key does not exist)."""
    wanted = list(keys)

    def work() -> dict[str, str | None]:
        enter(ns)
        out: dict[str, str | None] = {}
        for key in wanted:
            try:
                with open(f"/proc/sys/{key}") as fh:
                    out[key] = fh.read().strip()
            except FileNotFoundError:
                out[key] = None
        return out

    return in_fresh_thread(work, f"read sysctls in {ns or 'own namespace'}")


def list_namespaces(prefix: str = "") -> list[str]:
    """Named namespaces (under /run/netns) starting with `prefix`."""
    from pyroute2 import netns

    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def create_namespaces(names: Iterable[str]) -> None:
    """Create named network namespaces like `ip netns add` (an existing one is left as is): the thread unshares a
    new network namespace and pyroute2 bind-mounts it (via /proc/thread-self) onto /run/netns/<name>."""
    from pyroute2 import netns

    wanted = list(names)
    for name in wanted:
        netns_path(name)  # a valid name
    lib = libc()

    def work() -> None:
        for name in wanted:
            if lib.unshare(CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise NetnsError(f"create network namespace {name}: unshare: {os.strerror(code)}", code=code)
            try:
                netns.attach(name, "thread-self", libc=lib)
            except FileExistsError:
                continue  # its mount point appeared meanwhile (created concurrently): it exists, as wanted
            except OSError as exc:
                with contextlib.suppress(OSError):
                    netns.remove(name)  # do not leave an unmounted mount point behind
                raise NetnsError(f"create network namespace {name}: {exc}", code=exc.errno) from exc

    in_fresh_thread(work, "create network namespaces")


def remove_namespace(name: str) -> None:
    """Remove a named namespace like `ip netns del`; a missing one is fine."""
    from pyroute2 import netns

    netns_path(name)
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetnsError(f"remove network namespace {name}: {exc}", code=exc.errno) from exc


def delete_link(ns: str, index: int, what: str) -> bool:
    """Delete the link `index` of `ns` from a thread of its own; False when it was already gone. The kernel deletes a
    link inside the sender's sendmsg, RCU grace periods included (~20 ms here): an event loop sending it itself
    would stall that long, every request of the process with it. Call it with `asyncio.to_thread`."""

    def work() -> bool:
        from pyroute2 import AsyncIPRoute

        enter(ns)

        async def delete() -> bool:
            async with AsyncIPRoute() as ipr:
                return await nl(what, done(ipr.link("del", index=index)), ok=GONE) is not None

        return asyncio.run(delete())

    return in_fresh_thread(work, what)


async def done(aw: Awaitable[Any]) -> bool:
    """A netlink call whose reply carries nothing needed, as True once made: `nl` then returns None only for an
    errno it was told is fine ("already gone")."""
    await aw
    return True


async def nl(what: str, aw: Awaitable[Any], ok: frozenset[int] = frozenset()) -> Any:
    """Await a netlink call; an errno in `ok` is success (returns None); anything else becomes a NetnsError."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return await aw
    except NetlinkError as exc:
        if exc.code in ok:
            return None
        raise NetnsError(f"{what}: {os.strerror(exc.code)} (errno {exc.code})", code=exc.code) from exc
    except OSError as exc:
        if exc.errno in ok:
            return None
        raise NetnsError(f"{what}: {exc}", code=exc.errno) from exc


async def dump(what: str, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Every message of a netlink dump (`call` returns the awaitable of e.g. `ipr.link("dump")`)."""

    async def collect() -> list[Any]:
        return [msg async for msg in await call()]

    result: list[Any] = await nl(what, collect())
    return result

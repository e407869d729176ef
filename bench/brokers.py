"""Brokers under test, started as child processes on free loopback ports.

``Mosquitto`` writes its own configuration (no drops under load, Nagle off, no persistence)
and installs Debian's package when ``/usr/sbin/mosquitto`` is missing; ``Shardmq`` runs
``python -m shardmq serve``. Both can be pinned to CPUs and expose ``pid`` so the load
generator can sample their CPU and memory. With ``ws=True`` both also serve MQTT over
WebSocket on ``ws_port`` (path ``/mqtt``, subprotocol ``mqtt``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parent.parent


class BrokerError(RuntimeError):
    """The broker did not start (bad option, crash, or port never opened)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free loopback port whose Redis Cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout:.0f}s")


class Broker:
    """A broker child process; use as a context manager."""

    name = "broker"

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        cpus: list[int] | None = None,
        ws: bool = False,
    ):
        self.host = host
        self.port = port or free_port(host)
        #: MQTT over WebSocket port (0: no WebSocket listener)
        self.ws_port = free_port(host) if ws else 0
        self.cpus = cpus or []
        self.proc: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.log_path = self.workdir / "broker.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Broker:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        cpus = set(self.cpus)
        # Pinned between fork and exec (like taskset), so every worker it forks inherits it.
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        log.close()
        try:
            wait_listening(self.host, self.port, self.proc)
            if self.ws_port:
                wait_listening(self.host, self.ws_port, self.proc)
        except BrokerError as exc:
            tail = self.log_tail()
            self.stop()
            raise BrokerError(f"{self.name}: {exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # The broker leads its own session; signal the group so workers go too.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def version(self) -> str:
        return "unknown"

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mosquitto(Broker):
    name = "mosquitto"

    #: mosquitto.conf(5) settings for a benchmark: unlimited per-client queue and in-flight
    #: (the defaults, 1000 queued and 20 in flight, silently drop QoS 1/2 messages under
    #: load), no persistence, Nagle off like the generator, no $SYS traffic.
    SETTINGS = (
        "allow_anonymous true",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "max_inflight_messages 0",
        "max_inflight_bytes 0",
        "set_tcp_nodelay true",
        "persistence false",
        "sys_interval 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "connection_messages false",
    )

    def command(self) -> list[str]:
        ensure_mosquitto()
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} {self.host}", *self.SETTINGS]
        if self.ws_port:
            # Debian builds Mosquitto with libwebsockets; a build without it refuses this.
            lines += [f"listener {self.ws_port} {self.host}", "protocol websockets"]
        conf.write_text("\n".join(lines) + "\n")
        return [MOSQUITTO, "-c", str(conf)]

    def version(self) -> str:
        return mosquitto_version()


def ensure_mosquitto() -> None:
    """Install Debian's mosquitto package when the binary is missing (needs root)."""
    if os.path.exists(MOSQUITTO):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise BrokerError(f"{MOSQUITTO} is missing and apt-get is not available")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, apt, "update"], check=True, env=env)
    subprocess.run([*sudo, apt, "install", "-y", "mosquitto"], check=True, env=env)
    # Debian's package enables a system service on :1883; benchmarks use their own instance.
    if shutil.which("systemctl"):
        subprocess.run([*sudo, "systemctl", "disable", "--now", "mosquitto"], check=False)


def mosquitto_version() -> str:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
    except OSError:
        return "not installed"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].replace("mosquitto version ", "") if first else "unknown"


class Shardmq(Broker):
    name = "shardmq"

    def __init__(self, workers: str = "1", extra: tuple[str, ...] = (), **kwargs: object) -> None:
        self.workers = workers
        #: more `shardmq serve` flags (a store, limits)
        self.extra = extra
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "shardmq", "serve", "--port", str(self.port)]
        if serve_accepts("--host"):
            cmd += ["--host", self.host]
        if self.workers != "1":
            cmd += ["--workers", self.workers]
        if self.ws_port:
            cmd += ["--ws-port", str(self.ws_port)]
        # Like the Mosquitto configuration: no $SYS traffic, only warnings logged.
        if serve_accepts("--sys-interval"):
            cmd += ["--sys-interval", "0"]
        if serve_accepts("--log-level"):
            cmd += ["--log-level", "warning"]
        return cmd + list(self.extra)

    def version(self) -> str:
        return shardmq_version()


def shardmq_version() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import shardmq; print(shardmq.__version__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.stdout.strip() or "unknown"


_serve_help: str | None = None


def serve_accepts(option: str) -> bool:
    """Whether ``shardmq serve --help`` lists ``option``."""
    global _serve_help
    if _serve_help is None:
        out = subprocess.run(
            [sys.executable, "-m", "shardmq", "serve", "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        _serve_help = out.stdout if out.returncode == 0 else ""
    return option in _serve_help

"""`shardmq serve` as a subprocess, raw MQTT clients: what the storage tests share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
)
from tests.helpers import WAIT, Client

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`shardmq serve` as a subprocess that can be stopped and started again."""

    def __init__(self, store: Path | list[str], workers: int = 1, *extra: str) -> None:
        self.port = free_port()
        #: a snapshot file (memory store) or the store's flags
        self.store = ["--persistence-file", str(store)] if isinstance(store, Path) else store
        self.workers = workers
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="shardmq-snapshot-", suffix=".log", delete=False
        )

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shardmq",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--sys-interval",
            "0",
            *self.store,
            *self.extra,
        ]

    def start(self) -> Serve:
        """Start it and return once every worker serves: the supervisor's
        sockets accept before the workers run, and a worker still booting when
        a test stops the broker would neither serve nor save anything."""
        before = len(self.log_text())
        # the broker writes through its own append-mode handle: sharing
        # self.log's file offset, the seek(0) in log_text would let a write
        # land over the start of the log
        with open(self.log.name, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        ready = "serving (generation" if self.workers > 1 else "shardmq listening"
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                if self.log_text()[before:].count(ready) >= self.workers:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"broker did not start:\n{self.log_text()}") from None
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            kill_tree(self.proc.pid)  # the whole broker: supervisor and workers
        else:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def log_text(self) -> str:
        with open(self.log.name, errors="replace") as log:  # an offset of its own
            return log.read()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait(10)
        self.log.close()
        if os.environ.get("SHARDMQ_TEST_KEEP_LOGS"):
            print(f"broker log kept: {self.log.name}")
        else:
            os.unlink(self.log.name)


def worker_serving(b: Serve, local: tuple[str, int]) -> Any:
    """The worker process (psutil) holding the connection from ``local``."""
    import psutil

    assert b.proc is not None
    for proc in psutil.Process(b.proc.pid).children():
        # net_connections since psutil 6; connections before (the project allows 5.9)
        listing = getattr(proc, "net_connections", None) or proc.connections
        for conn in listing(kind="tcp"):
            if conn.raddr and (conn.raddr.ip, conn.raddr.port) == tuple(local[:2]):
                return proc
    raise AssertionError("no worker holds the connection")


def kill_tree(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*parent.children(recursive=True), parent]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    # every process gone, so no dying worker still holds a listening socket
    # that the kernel could hand the next broker's connections to
    psutil.wait_procs(procs, timeout=10)


class Raw:
    def __init__(self, port: int, version: int = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.version = version
        self.decoder = Decoder(server=False, version=version)
        self.pending: list[Any] = []

    def send(self, packet: Any) -> None:
        self.sock.sendall(encode(packet, self.version))

    def recv(self) -> Any:
        while not self.pending:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def connect(self, cid: str, clean: bool = False, **kw: Any) -> Connack:
        props = Properties(session_expiry_interval=300) if self.version == 5 else None
        self.send(
            Connect(cid, protocol_version=self.version, clean_start=clean, properties=props, **kw)
        )
        ack = self.recv()
        assert isinstance(ack, Connack) and ack.reason_code == 0, ack
        return ack

    def close(self) -> None:
        self.sock.close()


def persistent(port: int, cid: str, version: int) -> Client:
    return Client(port, client_id=cid, version=version, clean_start=False, session_expiry=300)


def fill_session(port: int, version: int) -> None:
    """A persistent session "keeper" subscribed to keep/#, two messages queued
    for it while offline (QoS 1 and 2), and a retained message with binary
    payload."""
    sub = persistent(port, "keeper", version)
    sub.connect()
    sub.subscribe("keep/#", qos=2)
    sub.disconnect()
    pub = Client(port, version=version)
    pub.connect()
    pub.publish("keep/a", b"queued 1", qos=1)
    pub.publish("keep/b", b"queued 2", qos=2)
    pub.publish("ret/t", b"retained \x00\xff", qos=1, retain=True)
    pub.disconnect()


def check_session(port: int, version: int) -> None:
    """What ``fill_session`` left is all there: session present, both queued
    messages, the retained message, and the subscription still routes."""
    again = persistent(port, "keeper", version)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    got = sorted((m.topic, m.payload, m.qos) for m in (again.get(), again.get()))
    assert got == [("keep/a", b"queued 1", 1), ("keep/b", b"queued 2", 2)]
    late = Client(port, version=version)
    late.connect()
    late.subscribe("ret/#", qos=1)
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == ("ret/t", b"retained \x00\xff", True)
    late.publish("keep/c", b"subscription kept", qos=1)
    assert again.get().payload == b"subscription kept"
    again.disconnect()
    late.disconnect()


def check_inbound_qos2_kept(port: int, version: int, sub: Raw, marker: str) -> None:
    """Publisher "p1" left QoS 2 packet id 7 ("once" on q/1) PUBREC'd but not
    released: its resend after the restart is acknowledged and not routed
    again, so the next message ``sub`` receives is a fresh one on ``marker``."""
    pub = Raw(port, version)
    assert pub.connect("p1").session_present is True
    pub.send(Publish("q/1", b"once", qos=2, packet_id=7, dup=True))
    assert isinstance(pub.recv(), Pubrec)
    pub.send(Pubrel(7))
    assert isinstance(pub.recv(), Pubcomp)
    pub.send(Publish(marker, b"after", qos=1, packet_id=10))
    assert isinstance(pub.recv(), Puback)
    nxt = sub.recv()
    assert isinstance(nxt, Publish) and (nxt.topic, nxt.payload) == (marker, b"after")
    sub.close()
    pub.close()

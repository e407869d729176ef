"""A multi-worker broker (`shardmq serve --workers N`) behaves as one broker.

The broker runs as a real subprocess (supervisor + N worker processes); paho
clients connect to the shared port and land wherever the kernel's
SO_REUSEPORT hash sends them. A test app (`where_app`) publishes
`where/<client id>` with the worker id on each CONNECT, so the tests can steer
clients onto chosen workers by reconnecting until they land there.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import WAIT, Client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, workers: int, extra: list[str] | None = None) -> None:
        self.workers = workers
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix=f"shardmq-cluster-{self.port}-", suffix=".log", delete=False
        )
        out = open(self.log.name, "ab")  # noqa: SIM115 (append, its own offset: see log_text)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardmq",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--sys-interval",
                "0.5",
                "--app",
                "tests.cluster.where_app:setup",
                "--log-level",
                "info",
                *(extra or []),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()  # the broker has its copy
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.clients: list[Client] = []
        self.watcher = self.client(client_id="watcher")
        self.watcher.connect()
        self.watcher.subscribe("where/#", qos=1)
        self.where: dict[str, int] = {}
        self.worker_of("watcher")

    def client(self, **kwargs: Any) -> Client:
        c = Client(self.port, **kwargs)
        self.clients.append(c)
        return c

    def worker_of(self, client_id: str) -> int:
        """The worker the latest connection of ``client_id`` landed on."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                msg = self.watcher.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no where/ report for {client_id}; broker log:\n{self.log_text()}"
                ) from None
            cid = msg.topic.split("/", 1)[1]
            self.where[cid] = int(msg.payload)
            if cid == client_id:
                return self.where[cid]

    def connect_on(self, worker: int | None, exclude: int | None = None, **kwargs: Any) -> Client:
        """A connected client on ``worker`` (or on any worker but ``exclude``)."""
        for _ in range(60):
            c = self.client(**kwargs)
            c.connect()
            w = self.worker_of(c.client_id)
            if (worker is None or w == worker) and w != exclude:
                return c
            c.disconnect()
        raise AssertionError(f"could not land a client on worker {worker}")

    def log_text(self) -> str:
        # its own handle: seeking the one the broker writes through would let
        # a write land over the start of the log
        with open(self.log.name, errors="replace") as log:
            return log.read()

    def close(self) -> None:
        for c in self.clients:
            try:
                c.paho.disconnect()
            except Exception:
                pass
            c.paho.loop_stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def cluster2() -> Iterator[Cluster]:
    c = Cluster(2)
    yield c
    c.close()


@pytest.mark.parametrize("workers", [2, 4])
def test_clients_land_on_several_workers_and_see_each_other(workers: int) -> None:
    cluster = Cluster(workers)
    try:
        seen: dict[int, Client] = {}
        for _ in range(40):
            c = cluster.client()
            c.connect()
            seen.setdefault(cluster.worker_of(c.client_id), c)
            if len(seen) == workers:
                break
        assert len(seen) >= 2, f"all clients landed on {set(seen)}"
        # the broker's own per-worker figures show the spread
        mon = cluster.client()
        mon.connect()
        mon.subscribe("$SYS/broker/workers/+/clients/connected")
        busy: set[int] = set()
        deadline = time.monotonic() + WAIT
        while len(busy) < len(seen) and time.monotonic() < deadline:
            msg = mon.get()
            if int(msg.payload) > 0:
                busy.add(int(msg.topic.split("/")[3]))
        assert busy >= set(seen)
        # every subscriber, wherever it is, gets every publish exactly once
        subs = list(seen.values())
        for i, s in enumerate(subs):
            s.subscribe("x/+/y", qos=1)
            s.subscribe(f"x/{i}/#", qos=1)  # overlapping: still one copy
        pub = cluster.client()
        pub.connect()
        for i in range(len(subs)):
            pub.publish(f"x/{i}/y", f"m{i}".encode(), qos=1)
        for s in subs:
            got = sorted(m.payload.decode() for m in [s.get() for _ in range(len(subs))])
            assert got == sorted(f"m{j}" for j in range(len(subs)))
            s.expect_nothing(0.3)
    finally:
        cluster.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pubsub_across_shards(cluster2: Cluster, qos: int) -> None:
    sub = cluster2.connect_on(0)
    sub.subscribe("t/#", qos=qos)
    pub = cluster2.connect_on(1)
    for i in range(20):
        pub.publish(f"t/{i}", str(i).encode(), qos=qos)
    got = [int(sub.get().payload) for _ in range(20)]
    assert sorted(got) == list(range(20))
    sub.expect_nothing(0.3)


def test_shared_subscription_once_across_shards(cluster2: Cluster) -> None:
    a = cluster2.connect_on(0)
    b = cluster2.connect_on(1)
    a.subscribe("$share/g/jobs/#", qos=1)
    b.subscribe("$share/g/jobs/#", qos=1)
    pub = cluster2.connect_on(None)
    n = 20
    for i in range(n):
        pub.publish(f"jobs/{i}", str(i).encode(), qos=1)
    got_a = [int(m.payload) for m in a.drain(0.5)]
    got_b = [int(m.payload) for m in b.drain(0.5)]
    assert sorted(got_a + got_b) == list(range(n))
    assert got_a and got_b  # both members took a share


def test_persistent_session_moves_to_another_worker(cluster2: Cluster) -> None:
    """Queue a message while the session is offline, reconnect; repeat until
    a reconnect lands on another worker than the one holding the session:
    that connection must find its session and the queued message there."""
    cid = "roamer"
    conn = cluster2.connect_on(None, client_id=cid, clean_start=False, session_expiry=300)
    conn.subscribe("inbox/roamer", qos=1)
    pub = cluster2.connect_on(None)
    moved = False
    for k in range(30):
        owner = cluster2.where[cid]
        conn.disconnect()
        pub.publish("inbox/roamer", f"q{k}".encode(), qos=1)
        conn = cluster2.client(client_id=cid, clean_start=False, session_expiry=300)
        flags, _, _ = conn.connect()
        assert flags.session_present
        assert conn.get().payload == f"q{k}".encode()
        if cluster2.worker_of(cid) != owner:
            moved = True
            break
    assert moved, "every reconnect landed on the same worker"
    conn.expect_nothing(0.3)


def test_takeover_across_shards(cluster2: Cluster) -> None:
    old = cluster2.connect_on(0, client_id="dup", clean_start=False, session_expiry=300)
    old.subscribe("dup/t", qos=1)
    new = cluster2.connect_on(1, client_id="dup", clean_start=False, session_expiry=300)
    rc, _ = old.wait_disconnect()
    assert rc == 0x8E
    pub = cluster2.connect_on(None)
    pub.publish("dup/t", b"hello", qos=1)
    assert new.get().payload == b"hello"


def test_retained_across_shards(cluster2: Cluster) -> None:
    pub = cluster2.connect_on(0)
    assert not pub.publish("ret/a", b"kept", qos=1, retain=True).is_failure
    sub = cluster2.connect_on(1)
    sub.subscribe("ret/#", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.retain) == ("ret/a", b"kept", True)


def test_the_embedding_apis_retained_changes_reach_every_worker(cluster2: Cluster) -> None:
    """``broker.retained.add`` and ``delete`` called on one worker (by a hook)
    act on every worker's retained messages, as a retained PUBLISH does."""
    ctl = cluster2.connect_on(0)
    ctl.publish("ctl/retained/add", b"ret/api=from the api", qos=1)
    # a retained PUBLISH after it, on the same worker, follows it over the link
    assert not ctl.publish("ret/zz", b"marker 1", qos=1, retain=True).is_failure
    sub = cluster2.connect_on(1)
    sub.subscribe("ret/#", qos=1)
    got = {m.topic: m.payload for m in (sub.get(), sub.get())}
    assert got == {"ret/api": b"from the api", "ret/zz": b"marker 1"}
    ctl.publish("ctl/retained/delete", b"ret/api", qos=1)
    assert not ctl.publish("ret/zz", b"marker 2", qos=1, retain=True).is_failure
    sub.get()  # marker 2, live
    late = cluster2.connect_on(1)
    late.subscribe("ret/#", qos=1)
    msg = late.get()
    assert (msg.topic, msg.payload) == ("ret/zz", b"marker 2")
    late.expect_nothing(0.3)  # ret/api is gone on worker 1 too


def test_will_across_shards(cluster2: Cluster) -> None:
    sub = cluster2.connect_on(1)
    sub.subscribe("wills/#", qos=1)
    dying = cluster2.connect_on(0, will={"topic": "wills/x", "payload": b"gone", "qos": 1})
    dying.drop()
    assert sub.get().payload == b"gone"


def test_killed_worker_is_restarted_and_rejoins(cluster2: Cluster) -> None:
    keep = cluster2.where["watcher"]
    victim = 1 - keep
    sub = cluster2.connect_on(keep)
    sub.subscribe("k/#", qos=1)
    pub = cluster2.connect_on(keep)
    # the victim's pid, from the supervisor's log
    pids = {}
    for line in cluster2.log_text().splitlines():
        if "started (generation" in line and "worker " in line:
            parts = line.split("worker ", 1)[1].split()
            pids[int(parts[0])] = int(parts[2].rstrip(")"))
    os.kill(pids[victim], signal.SIGKILL)
    # traffic on the surviving worker goes on without loss
    for i in range(50):
        pub.publish(f"k/{i}", str(i).encode(), qos=1)
    assert sorted(int(sub.get().payload) for _ in range(50)) == list(range(50))
    # the victim comes back and takes part in cross-shard routing again
    deadline = time.monotonic() + 15
    while f"worker {victim} (pid" not in cluster2.log_text().split("SIGKILL")[-1]:
        assert time.monotonic() < deadline, cluster2.log_text()
        time.sleep(0.1)
    late = cluster2.connect_on(victim)
    late.subscribe("k/#", qos=1)
    pub.publish("k/late", b"late", qos=1)
    assert late.get().payload == b"late"
    assert sub.get().payload == b"late"


def test_sigterm_stops_everything_with_0x8b(cluster2: Cluster) -> None:
    a = cluster2.connect_on(0)
    b = cluster2.connect_on(1)
    cluster2.proc.send_signal(signal.SIGTERM)
    assert a.wait_disconnect(10)[0] == 0x8B
    assert b.wait_disconnect(10)[0] == 0x8B
    assert cluster2.proc.wait(20) == 0


def test_tcp_and_websocket_clients_through_workers() -> None:
    """Every worker serves the WebSocket listener too, and its clients reach
    TCP clients on any worker."""
    ws_port = free_port()
    cluster = Cluster(2, ["--ws-port", str(ws_port)])
    try:
        import paho.mqtt.client as paho

        received: queue.Queue[bytes] = queue.Queue()
        subacks: queue.Queue[int] = queue.Queue()
        spread = set()
        ws_clients = []
        for i in range(12):
            ws = paho.Client(
                paho.CallbackAPIVersion.VERSION2,
                client_id=f"ws-{i}",
                transport="websockets",
                protocol=paho.MQTTv5,
            )
            ws.on_message = lambda c, u, msg: received.put(msg.payload)
            ws.on_subscribe = lambda c, u, mid, rcs, props: subacks.put(mid)
            ws.connect("127.0.0.1", ws_port)
            ws.loop_start()
            ws_clients.append(ws)
            spread.add(cluster.worker_of(f"ws-{i}"))
            if len(spread) == 2:
                break
        assert spread == {0, 1}, "WebSocket clients all landed on one worker"
        for ws in ws_clients:
            ws.subscribe("mixed/t", qos=1)
        for _ in ws_clients:
            subacks.get(timeout=WAIT)
        tcp = cluster.connect_on(None)
        tcp.publish("mixed/t", b"from tcp", qos=1)
        got = [received.get(timeout=WAIT) for _ in ws_clients]
        assert got == [b"from tcp"] * len(ws_clients)
        for ws in ws_clients:
            ws.disconnect()
            ws.loop_stop()
    finally:
        cluster.close()


def test_no_loss_while_a_session_moves_between_workers(cluster2: Cluster) -> None:
    """A QoS 1 stream keeps flowing while its subscriber reconnects again and
    again, its session moving between workers: messages already on their way
    to the old owner are forwarded to the new one, none is lost."""
    import threading

    cid = "mover"
    sub = cluster2.client(client_id=cid, clean_start=False, session_expiry=300)
    sub.connect()
    cluster2.worker_of(cid)
    sub.subscribe("stream/t", qos=1)
    pub = cluster2.connect_on(None)
    stop = threading.Event()
    sent = [0]

    def publish() -> None:
        while not stop.is_set():
            pub.publish("stream/t", str(sent[0]).encode(), qos=1, wait=False)
            sent[0] += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=publish)
    thread.start()
    got: list[int] = []
    moves = 0
    try:
        for _ in range(14):
            owner = cluster2.where[cid]
            got += [int(m.payload) for m in sub.drain(0.05)]
            sub.disconnect()
            got += [int(m.payload) for m in sub.drain(0.05)]  # arrived before the close
            sub = cluster2.client(client_id=cid, clean_start=False, session_expiry=300)
            sub.connect()
            if cluster2.worker_of(cid) != owner:
                moves += 1
    finally:
        stop.set()
        thread.join()
    # every publish before the marker was accepted once the marker's PUBACK is in
    assert not pub.publish("stream/t", b"end", qos=1).is_failure
    while True:
        payload = sub.get().payload
        if payload == b"end":
            break
        got.append(int(payload))
    got += [int(m.payload) for m in sub.drain(0.5) if m.payload != b"end"]
    assert moves > 0, "the session never moved"
    missing = sorted(set(range(sent[0])) - set(got))
    assert missing == [], f"{len(missing)} of {sent[0]} lost over {moves} moves: {missing[:10]}"

"""The redis store: what `kill -9` of the broker (or of one worker) and a Redis
outage keep, through a real `shardmq serve` and a real redis-server on free
ports, with real clients. One worker and two."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shardmq.protocol.packets import (
    Connack,
    Connect,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers import WAIT, Client, wait_for
from tests.redis_server import (
    RedisClusterServer,
    RedisServer,
    both_kinds,
    redis_for,
    redis_server_path,
)
from tests.storage.serve import (
    ROOT,
    Raw,
    Serve,
    check_inbound_qos2_kept,
    check_session,
    fill_session,
    persistent,
    worker_serving,
)

DEBUG = ["--log-level", "debug"] if os.environ.get("SHARDMQ_TEST_KEEP_LOGS") else []

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_for(request, tmp_path)


def serve(redis_server: RedisServer, brokers: list[Serve], workers: int = 1, *extra: str) -> Serve:
    b = Serve(["--store", "redis", "--redis-url", redis_server.url], workers, *extra, *DEBUG)
    brokers.append(b)
    return b.start()


@both_kinds
@pytest.mark.parametrize("workers", [1, 2])
def test_sessions_queue_and_retained_survive_kill_9(
    redis_server: RedisServer, brokers: list[Serve], version: int, workers: int
) -> None:
    """Subscriptions, queued QoS 1/2 messages and retained messages of a
    persistent session are back after kill -9 of every broker process: what was
    acknowledged was in Redis."""
    b = serve(redis_server, brokers, workers)
    fill_session(b.port, version)
    if isinstance(redis_server, RedisClusterServer):
        # each session's keys on one primary (hash tag), the keys as a whole
        # spread over several
        by_node = redis_server.keys_by_node()
        assert sum(1 for keys in by_node.values() if keys) >= 2, by_node
        holders = [port for port, keys in by_node.items() if "shardmq:s:{keeper}:h" in keys]
        assert len(holders) == 1, by_node
        assert {k for k in by_node[holders[0]] if "{keeper}" in k} == {
            f"shardmq:s:{{keeper}}:{part}" for part in ("h", "sub", "q")
        }
    b.stop(signal.SIGKILL)

    b.start()
    check_session(b.port, version)


@pytest.mark.parametrize("redis_server", ["redis-cluster"], indirect=True)
def test_a_session_whose_slot_moves_to_another_primary_is_written_there(
    redis_server: RedisClusterServer, brokers: list[Serve], version: int
) -> None:
    """Resharding under a running broker: the slot of a persistent session moves
    to another primary; the store's next write meets MOVED, follows it, and
    what it acknowledged afterwards is there after kill -9 of the broker."""
    from redis.crc import key_slot

    b = serve(redis_server, brokers)
    fill_session(b.port, version)
    slot = key_slot(b"shardmq:s:{keeper}:q")
    before = redis_server.owner(slot)
    redis_server.move_slot(slot, next(p for p in redis_server.ports if p != before))
    pub = Client(b.port, version=version)
    pub.connect()
    assert not pub.publish("keep/after", b"after the move", qos=1).is_failure
    pub.disconnect()
    b.stop(signal.SIGKILL)
    held = redis_server.keys_by_node()[redis_server.owner(slot)]
    assert "shardmq:s:{keeper}:q" in held and redis_server.owner(slot) != before

    b.start()
    again = persistent(b.port, "keeper", version)
    assert again.connect()[0].session_present is True
    got = sorted(m.payload for m in (again.get(), again.get(), again.get()))
    assert got == [b"after the move", b"queued 1", b"queued 2"]
    again.disconnect()


@both_kinds
@pytest.mark.parametrize("workers", [1, 2])
def test_unacknowledged_and_inbound_qos2_survive_kill_9(
    redis_server: RedisServer, brokers: list[Serve], version: int, workers: int
) -> None:
    """An outbound QoS 2 message sent but not acknowledged is resent with DUP
    after kill -9 and a restart, and an inbound QoS 2 PUBLISH answered with
    PUBREC but not yet released is not routed a second time when resent."""
    b = serve(redis_server, brokers, workers)
    sub = Raw(b.port, version)
    sub.connect("s1")
    sub.send(Subscribe(1, [Subscription("q/#", 2)]))
    assert isinstance(sub.recv(), Suback)
    pub = Raw(b.port, version)
    pub.connect("p1")
    pub.send(Publish("q/1", b"once", qos=2, packet_id=7))
    assert isinstance(pub.recv(), Pubrec)  # no PUBREL yet
    first = sub.recv()
    assert isinstance(first, Publish) and first.payload == b"once"  # not acknowledged
    # a second one whose PUBREC arrived: only PUBCOMP is due after the restart
    pub.send(Publish("q/2", b"released", qos=2, packet_id=8))
    assert isinstance(pub.recv(), Pubrec)
    pub.send(Pubrel(8))
    assert isinstance(pub.recv(), Pubcomp)
    second = sub.recv()
    assert isinstance(second, Publish) and second.payload == b"released"
    sub.send(Pubrec(second.packet_id))
    assert isinstance(sub.recv(), Pubrel)
    # the PUBREC reached the store once the PUBREL is out; a marker round trip
    # through the same connection orders it
    pub.send(Publish("q/3", b"marker", qos=1, packet_id=9))
    assert isinstance(pub.recv(), Puback)
    assert sub.recv().payload == b"marker"
    sub.close()
    pub.close()
    b.stop(signal.SIGKILL)

    b.start()
    sub = Raw(b.port, version)
    assert sub.connect("s1").session_present is True
    resent = [sub.recv(), sub.recv(), sub.recv()]
    publishes = [p for p in resent if isinstance(p, Publish)]
    pubrels = [p for p in resent if isinstance(p, Pubrel)]
    assert [(p.packet_id, p.payload, p.dup) for p in publishes] == [
        (first.packet_id, b"once", True),
        (publishes[1].packet_id, b"marker", True),
    ]
    assert [p.packet_id for p in pubrels] == [second.packet_id]
    sub.send(Pubrec(first.packet_id))
    assert isinstance(sub.recv(), Pubrel)
    sub.send(Pubcomp(first.packet_id))
    sub.send(Pubcomp(second.packet_id))
    check_inbound_qos2_kept(b.port, version, sub, "q/4")


@both_kinds
def test_a_killed_worker_gets_its_sessions_back(
    redis_server: RedisServer, brokers: list[Serve], version: int
) -> None:
    """kill -9 of the one worker that owns a session (the others keep serving):
    restarted by the supervisor, it loads the session from Redis, its queued
    message and its message in flight (resent with DUP)."""
    b = serve(redis_server, brokers, 2)
    sub = Raw(b.port, version)
    sub.connect("owned")
    sub.send(Subscribe(1, [Subscription("w/#", 1)]))
    assert isinstance(sub.recv(), Suback)
    pub = Client(b.port, version=version)
    pub.connect()
    pub.publish("w/1", b"in flight", qos=1)
    first = sub.recv()
    assert isinstance(first, Publish) and first.payload == b"in flight"
    # its worker wrote it as in flight (the publisher may be on the other one)
    wait_for(lambda: redis_server.client().hlen("shardmq:s:{owned}:f") == 1)
    worker = worker_serving(b, sub.sock.getsockname())
    others = {p.pid for p in psutil.Process(b.proc.pid).children()} - {worker.pid}  # type: ignore[union-attr]
    worker.kill()
    assert sub.recv() is None  # its connection died with it
    pub.disconnect()

    def restarted() -> bool:
        assert b.proc is not None
        now = {p.pid for p in psutil.Process(b.proc.pid).children()}
        return len(now) == 2 and now != others | {worker.pid}

    wait_for(restarted, timeout=20)
    wait_for(lambda: b.log_text().count("restored 1 sessions") >= 1, timeout=20)
    sub = Raw(b.port, version)
    assert sub.connect("owned").session_present is True
    again = sub.recv()
    assert isinstance(again, Publish)
    assert (again.packet_id, again.payload, again.dup) == (first.packet_id, b"in flight", True)
    sub.send(Puback(again.packet_id))
    sub.close()


def test_expiry_and_will_delay_that_pass_while_down_are_honoured(
    redis_server: RedisServer, brokers: list[Serve]
) -> None:
    """A session online when the broker was killed counts its expiry (2 s) and
    will delay (1 s) from the restart: both pass, so the session is gone and the
    will is published to a persistent watcher (queued for it)."""
    b = serve(redis_server, brokers)
    watcher = persistent(b.port, "watcher", 5)
    watcher.connect()
    watcher.subscribe("will/#", qos=1)
    watcher.disconnect()
    owner = Raw(b.port)
    will = Will("will/t", b"gone while down", 1, properties=Properties(will_delay_interval=1))
    owner.send(
        Connect(
            "short", clean_start=False, will=will, properties=Properties(session_expiry_interval=2)
        )
    )
    assert isinstance(owner.recv(), Connack)
    owner.send(Subscribe(1, [Subscription("short/t", 1)]))
    assert isinstance(owner.recv(), Suback)
    b.stop(signal.SIGKILL)
    b.start()
    wait_for(lambda: "session short expired" in b.log_text() or _gone(redis_server), timeout=10)
    watcher = persistent(b.port, "watcher", 5)
    watcher.connect()
    assert watcher.get().payload == b"gone while down"
    back = Client(b.port, client_id="short", clean_start=False, session_expiry=60)
    flags, _, _ = back.connect()
    assert flags.session_present is False
    back.disconnect()
    watcher.disconnect()


def _gone(redis_server: RedisServer) -> bool:
    return not redis_server.client().exists("shardmq:s:{short}:h")


@both_kinds
def test_redis_restart_under_traffic_loses_nothing_acknowledged(
    redis_server: RedisServer, brokers: list[Serve], version: int
) -> None:
    """Redis killed and started again while a publisher streams QoS 1 messages to
    an offline persistent session: every message acknowledged with success is
    delivered after a kill -9 of the broker; those Redis could not take in time
    were answered with 0x80 (3.1.1: the connection closed), not acknowledged.
    The outage and the recovery are logged once each."""
    b = serve(redis_server, brokers, 1, "--store-timeout", "0.5")
    sub = persistent(b.port, "drain", version)
    sub.connect()
    sub.subscribe("stream/#", qos=1)
    sub.disconnect()

    acked: set[bytes] = set()
    refused = 0
    stop = threading.Event()

    def publish() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            pub = Raw(b.port, version)
            try:
                pub.connect(f"pub-{n}", clean=True)
                while not stop.is_set():
                    n += 1
                    payload = b"m%d" % n
                    pub.send(Publish("stream/x", payload, qos=1, packet_id=n % 65535 + 1))
                    ack = pub.recv()
                    if ack is None:
                        refused += 1  # 3.1.1: closed instead of acknowledged
                        break
                    assert isinstance(ack, Puback)
                    if ack.reason_code == 0:
                        acked.add(payload)
                    else:
                        assert ack.reason_code == 0x80
                        assert ack.properties.reason_string == "store unavailable"
                        refused += 1
            except OSError:
                refused += 1
            finally:
                pub.close()

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    wait_for(lambda: len(acked) > 200)
    redis_server.stop()
    wait_for(lambda: refused > 0, timeout=20)
    redis_server.start()
    before = len(acked)
    wait_for(lambda: len(acked) > before + 200, timeout=20)
    stop.set()
    t.join(WAIT)
    b.stop(signal.SIGKILL)
    text = b.log_text()
    assert text.count("unavailable:") == 1, text
    assert text.count("reachable again") == 1, text

    b.start()
    again = persistent(b.port, "drain", version)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    got: set[bytes] = set()
    while True:
        try:
            got.add(again.get(timeout=2).payload)
        except Exception:
            break
    assert acked <= got, f"{len(acked - got)} acknowledged messages lost"
    again.disconnect()


@both_kinds
def test_during_an_outage_stored_sessions_are_refused_and_others_work(
    redis_server: RedisServer, brokers: list[Serve], version: int
) -> None:
    """With Redis down, a CONNECT that needs a stored session gets 0x88 Server
    unavailable (3.1.1: return code 3) rather than a fresh one; a client that
    needs no stored state connects, subscribes and gets its messages."""
    b = serve(redis_server, brokers)
    redis_server.stop()

    def persistent_connack() -> int:
        c = Raw(b.port, version)
        props = Properties(session_expiry_interval=60) if version == 5 else None
        c.send(
            Connect("needs-store", protocol_version=version, clean_start=False, properties=props)
        )
        ack = c.recv()
        c.close()
        assert isinstance(ack, Connack)
        return int(ack.reason_code)

    # the decoder reads 3.1.1's return code 3 as 0x88
    wait_for(lambda: persistent_connack() == 0x88, timeout=10)
    plain = Client(b.port, version=version)
    plain.connect()
    plain.subscribe("live/#", qos=1)
    plain.publish("live/1", b"no store needed", qos=0)
    assert plain.get().payload == b"no store needed"
    plain.disconnect()
    redis_server.start()

    wait_for(lambda: persistent_connack() == 0, timeout=15)


def test_retained_wildcard_subscribe_does_not_scan(
    redis_server: RedisServer, brokers: list[Serve]
) -> None:
    """Retained messages are served from memory: a wildcard subscribe sends no
    SCAN or KEYS to Redis, and a restart reads them with one HGETALL."""
    b = serve(redis_server, brokers)
    c = Client(b.port)
    c.connect()
    for n in range(20):
        c.publish(f"r/{n}", b"x", qos=1, retain=True)
    b.stop(signal.SIGKILL)
    b.start()
    r = redis_server.client()
    r.config_resetstat()
    c = Client(b.port)
    c.connect()
    c.subscribe("r/#", qos=1)
    assert len({c.get().topic for _ in range(20)}) == 20
    stats = r.info("commandstats")
    assert not any(k in stats for k in ("cmdstat_scan", "cmdstat_keys")), stats
    c.disconnect()


def test_no_password_is_written_to_redis(redis_server: RedisServer, brokers: list[Serve]) -> None:
    """A persistent session of a client that logged in with a password: nothing
    Redis holds contains the password or the username."""
    b = serve(redis_server, brokers)
    c = Client(
        b.port,
        client_id="who",
        clean_start=False,
        session_expiry=60,
        username="alice-user",
        password="s3cret-passw0rd",
    )
    c.connect()
    c.subscribe("a/#", qos=1)
    c.disconnect()
    p = Client(b.port)
    p.connect()
    p.publish("a/1", b"queued", qos=1)
    p.disconnect()
    r = redis_server.client()
    keys = r.keys("*")
    assert any(k.startswith(b"shardmq:s:{who}") for k in keys), keys
    for key in keys:
        blob = r.dump(key) or b""
        assert b"s3cret-passw0rd" not in blob and b"alice-user" not in blob, key


def test_unreachable_redis_stops_serve_with_one_line_naming_the_url(
    brokers: list[Serve],
) -> None:
    """No Redis at the URL: serve retries for redis_connect_timeout, then exits
    with one line naming the URL (its password masked)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://user:hunter2@127.0.0.1:{port}/0"
    argv = Serve(["--store", "redis", "--redis-url", url]).argv()
    argv += ["--redis-connect-timeout", "0.5"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "redis_url" in lines[0] and f"127.0.0.1:{port}" in lines[0], lines[0]
    assert "hunter2" not in proc.stderr


def test_outage_past_the_backlog_limit_rewrites_everything(
    redis_server: RedisServer, brokers: list[Serve]
) -> None:
    """Redis down for longer than redis_backlog_limit holds: the backlog is
    dropped and, once Redis is back, the broker rewrites every session from
    memory: what was queued meanwhile survives a kill -9 after that, and a
    session that ended during the outage does not come back."""
    b = serve(redis_server, brokers, 1, "--store-timeout", "0.5", "--redis-backlog-limit", "65536")
    kept = persistent(b.port, "kept", 5)
    kept.connect()
    kept.subscribe("bulk/#", qos=1)
    kept.disconnect()
    gone = persistent(b.port, "gone", 5)
    gone.connect()
    gone.disconnect()
    r = redis_server.client()
    wait_for(lambda: r.exists("shardmq:s:{kept}:sub", "shardmq:s:{gone}:h") == 2)
    redis_server.stop()

    pub = Raw(b.port)
    pub.connect("bulk-pub", clean=True)
    payloads = [b"%04d" % n + bytes(200) for n in range(800)]  # ~200 KiB of changes
    for n, payload in enumerate(payloads):
        pub.send(Publish("bulk/t", payload, qos=1, packet_id=n + 1))
    codes = [pub.recv().reason_code for _ in payloads]
    assert set(codes) <= {0, 0x80} and 0x80 in codes  # nothing stored is claimed
    pub.close()
    ended = Client(b.port, client_id="gone", clean_start=True, session_expiry=0)
    ended.connect()  # ends the stored session while Redis is down
    ended.disconnect()
    wait_for(lambda: "dropped; every session" in b.log_text(), timeout=10)

    redis_server.start()
    # kept, and the publisher's own (Raw asks for an expiry): not "gone"
    wait_for(lambda: "rewrote 2 sessions" in b.log_text(), timeout=15)
    wait_for(lambda: r.hlen("shardmq:s:{kept}:q") == len(payloads))
    b.stop(signal.SIGKILL)
    b.start()
    again = persistent(b.port, "kept", 5)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    got = [again.get().payload for _ in payloads]
    assert got == payloads
    again.disconnect()
    back = Client(b.port, client_id="gone", clean_start=False, session_expiry=60)
    flags, _, _ = back.connect()
    assert flags.session_present is False
    back.disconnect()


@both_kinds
def test_worker_restarted_while_redis_is_down_serves_and_loads_later(
    redis_server: RedisServer, brokers: list[Serve]
) -> None:
    """A worker killed while Redis is away cannot load its sessions. That is not
    a configuration error: it serves at once (its share of new connections does
    not wait), refusing persistent sessions, and once Redis answers it loads
    its sessions."""
    b = serve(redis_server, brokers, 2, "--redis-connect-timeout", "0.3")
    sub = Raw(b.port)
    sub.connect("patient")
    sub.send(Subscribe(1, [Subscription("p/#", 1)]))
    assert isinstance(sub.recv(), Suback)
    r = redis_server.client()
    wait_for(lambda: r.exists("shardmq:s:{patient}:sub") == 1)
    worker = worker_serving(b, sub.sock.getsockname())
    redis_server.stop()
    worker.kill()
    assert sub.recv() is None
    wait_for(lambda: "serving without stored sessions" in b.log_text(), timeout=20)
    for n in range(8):  # some land on the restarted worker: all are answered
        plain = Client(b.port, client_id=f"plain-{n}")
        plain.connect()
        plain.disconnect()
    assert b.proc is not None and b.proc.poll() is None
    redis_server.start()
    wait_for(lambda: "stored sessions loaded" in b.log_text(), timeout=30)
    sub = Raw(b.port)
    assert sub.connect("patient").session_present is True
    sub.close()

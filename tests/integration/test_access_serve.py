"""Access control in `shardmq serve` with one and two workers: login, ACL,
Redis auth and SIGHUP reload, through real sockets to a real subprocess."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmq.auth.passwd import PasswordFile
from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)
from tests.redis_server import RedisServer, redis_server_path
from tests.storage.serve import Raw, Serve

USERS = {"alice": "wonderland", "bob": "builder"}
ACL = """\
topic read public/#
user alice
topic readwrite sensors/#
user bob
topic write sensors/bob/#
"""
#: connections per test: with two workers, enough that both get some
CONNECTIONS = 6


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    pw = PasswordFile()
    for user, password in USERS.items():
        pw.set(user, password, iterations=1000)
    pw.save(tmp_path / "passwd")
    (tmp_path / "acl").write_text(ACL)
    return tmp_path / "passwd", tmp_path / "acl"


@pytest.fixture
def serve(files: tuple[Path, Path], workers: int) -> Iterator[Serve]:
    passwd, acl = files
    broker = Serve([], workers, "--password-file", str(passwd), "--acl-file", str(acl))
    try:
        yield broker.start()
    finally:
        broker.close()


def login(port: int, version: int, user: str | None, password: bytes | None, cid: str) -> Raw:
    raw = Raw(port, version)
    raw.send(Connect(cid, protocol_version=version, username=user, password=password))
    ack = raw.recv()
    assert isinstance(ack, Connack)
    raw.connack = ack  # type: ignore[attr-defined]
    return raw


def publish_code(raw: Raw, topic: str, pid: int) -> int:
    raw.send(Publish(topic, b"x", qos=1, packet_id=pid))
    ack = raw.recv()
    assert isinstance(ack, Puback) and ack.packet_id == pid, ack
    return int(ack.reason_code)


def wait_log(broker: Serve, text: str, count: int, since: int) -> None:
    deadline = time.monotonic() + 15
    while broker.log_text()[since:].count(text) < count:
        assert time.monotonic() < deadline, broker.log_text()[since:]
        time.sleep(0.05)


@pytest.mark.parametrize("version", [5, 4], ids=["v5", "v311"])
def test_login_and_acl_in_every_worker(serve: Serve, version: int) -> None:
    for i in range(CONNECTIONS):
        ok = login(serve.port, version, "alice", b"wonderland", f"a{i}")
        assert ok.connack.reason_code == 0  # type: ignore[attr-defined]
        ok.send(Subscribe(1, [Subscription("sensors/#", 1), Subscription("other/#", 1)]))
        suback = ok.recv()
        assert isinstance(suback, Suback)
        assert suback.reason_codes == [1, ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80]
        ok.close()
        wrong = login(serve.port, version, "alice", b"nope", f"w{i}")
        unknown = login(serve.port, version, "mallory", b"wonderland", f"u{i}")
        anonymous = login(serve.port, version, None, None, f"n{i}")
        assert (
            wrong.connack.reason_code  # type: ignore[attr-defined]
            == unknown.connack.reason_code  # type: ignore[attr-defined]
            == ReasonCode.BAD_USER_NAME_OR_PASSWORD  # 3.1.1: return code 4
        )
        assert anonymous.connack.reason_code == ReasonCode.NOT_AUTHORIZED  # type: ignore[attr-defined]
        for raw in (wrong, unknown, anonymous):
            raw.close()


def test_sighup_applies_new_rules_to_open_connections(
    serve: Serve, files: tuple[Path, Path], workers: int
) -> None:
    """Every worker re-reads the files; the connections stay open and are
    held to the new rules; a new password works, the old one no longer."""
    passwd, acl = files
    bobs = [login(serve.port, 5, "bob", b"builder", f"b{i}") for i in range(CONNECTIONS)]
    for i, bob in enumerate(bobs):
        assert publish_code(bob, "sensors/bob/1", 1 + i) == ReasonCode.NO_MATCHING_SUBSCRIBERS
    acl.write_text(ACL.replace("topic write sensors/bob/#", "topic write elsewhere/#"))
    pw = PasswordFile.load(passwd)
    pw.set("alice", "changed", iterations=1000)
    pw.save(passwd)
    since = len(serve.log_text())
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGHUP)
    wait_log(serve, "password and ACL files reloaded", workers, since)
    for i, bob in enumerate(bobs):
        assert publish_code(bob, "sensors/bob/1", 20 + i) == ReasonCode.NOT_AUTHORIZED
        assert publish_code(bob, "elsewhere/1", 40 + i) == ReasonCode.NO_MATCHING_SUBSCRIBERS
        bob.close()
    for i in range(CONNECTIONS):
        old = login(serve.port, 5, "alice", b"wonderland", f"o{i}")
        new = login(serve.port, 5, "alice", b"changed", f"c{i}")
        assert old.connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD  # type: ignore[attr-defined]
        assert new.connack.reason_code == 0  # type: ignore[attr-defined]
        old.close()
        new.close()


def test_sighup_with_a_broken_file_keeps_the_previous_rules(
    serve: Serve, files: tuple[Path, Path], workers: int
) -> None:
    passwd, acl = files
    bobs = [login(serve.port, 5, "bob", b"builder", f"b{i}") for i in range(CONNECTIONS)]
    acl.write_text(ACL + "topic sometimes x/#\n")  # line 6: an unknown access word
    since = len(serve.log_text())
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGHUP)
    wait_log(serve, f"{acl}:6: unknown access 'sometimes'", workers, since)
    assert "the previous ACL stays in force" in serve.log_text()[since:]
    for i, bob in enumerate(bobs):
        assert publish_code(bob, "sensors/bob/1", 1 + i) == ReasonCode.NO_MATCHING_SUBSCRIBERS
        bob.close()
    assert serve.proc.poll() is None


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")
def test_redis_auth_in_every_worker(tmp_path: Path, workers: int) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    # the cache (auth_cache_ttl, 30 s by default) outlives the test: only
    # the invalidation can make the new password work in time
    broker = Serve([], workers, "--auth-redis", "--redis-url", redis.url)
    try:
        client = redis.client()
        stored = hashlib.sha256(b"s3cret" + b"NaCl").hexdigest()  # salt suffix: the default
        client.hset("mqtt_user:alice", mapping={"password_hash": stored, "salt": "NaCl"})
        client.hset("mqtt_acl:alice", mapping={"alice/#": "all"})
        broker.start()
        for version in (5, 4):
            for i in range(CONNECTIONS):
                ok = login(broker.port, version, "alice", b"s3cret", f"a{i}")
                assert ok.connack.reason_code == 0  # type: ignore[attr-defined]
                assert publish_code(ok, "alice/x", 1) in (0, ReasonCode.NO_MATCHING_SUBSCRIBERS)
                ok.send(Publish("bob/x", b"x", qos=1, packet_id=2))
                denied = ok.recv()
                assert isinstance(denied, Puback)
                if version == 5:
                    assert denied.reason_code == ReasonCode.NOT_AUTHORIZED
                ok.close()
                bad = login(broker.port, version, "alice", b"wrong", f"x{i}")
                assert bad.connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD  # type: ignore[attr-defined]
                bad.close()
        # a changed password, announced on the invalidation channel, reaches
        # every worker's cache (each listens: the publish counts them)
        stored = hashlib.sha256(b"fresh" + b"NaCl").hexdigest()
        client.hset("mqtt_user:alice", "password_hash", stored)
        deadline = time.monotonic() + 15
        while client.pubsub_numsub("shardmq:auth:invalidate")[0][1] < workers:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.publish("shardmq:auth:invalidate", "alice") == workers
        deadline = time.monotonic() + 15
        for i in range(CONNECTIONS):
            while True:
                raw = login(broker.port, 5, "alice", b"fresh", f"f{i}")
                code = raw.connack.reason_code  # type: ignore[attr-defined]
                raw.close()
                if code == 0:
                    break
                # the message may still be on its way to this worker
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        broker.close()
        redis.stop()


def test_limits_per_client_in_every_worker(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_subscriptions and publish_rate hold whichever worker a client
    lands on (set through the environment, as an operator might)."""
    monkeypatch.setenv("SHARDMQ_MAX_SUBSCRIPTIONS", "1")
    monkeypatch.setenv("SHARDMQ_PUBLISH_RATE", "0.01")  # the second message is over
    broker = Serve([], workers)
    try:
        broker.start()
        for i in range(CONNECTIONS):
            raw = login(broker.port, 5, None, None, f"l{i}")
            raw.send(Subscribe(1, [Subscription("a", 1), Subscription("b", 1)]))
            suback = raw.recv()
            assert isinstance(suback, Suback)
            assert suback.reason_codes == [1, ReasonCode.QUOTA_EXCEEDED]
            assert publish_code(raw, "x", 2) == ReasonCode.NO_MATCHING_SUBSCRIBERS
            raw.send(Publish("x", b"x", qos=1, packet_id=3))
            disconnect = raw.recv()
            assert isinstance(disconnect, Disconnect)
            assert disconnect.reason_code == ReasonCode.MESSAGE_RATE_TOO_HIGH
            raw.close()
    finally:
        broker.close()

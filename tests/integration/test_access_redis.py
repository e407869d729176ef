"""Redis-backed auth in the broker: EMQX's layout in a real redis-server,
clients through real sockets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shardmq.auth.hashing import bcrypt_available
from shardmq.auth.redis import invalidation_channel
from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import Connack, Connect
from tests.helpers import BrokerThread, Client, RawClient, expect, wait_for
from tests.redis_server import RedisClusterServer, RedisServer, redis_for, redis_server_path

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")

Factory = Callable[..., BrokerThread]


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One redis-server, and a Redis Cluster of three primaries."""
    yield from redis_for(request, tmp_path_factory.mktemp("redis-access"))


@pytest.fixture
def redis_url(server: RedisServer) -> str:
    if isinstance(server, RedisClusterServer):
        server.flushall()
    else:
        server.client().flushall()
    return server.url


def stored_hash(algorithm: str, password: bytes, salt: bytes) -> bytes:
    """The stored form with the salt as suffix, the default position."""
    if algorithm == "pbkdf2":
        return hashlib.pbkdf2_hmac("sha256", password, salt, 1000).hex().encode()
    if algorithm == "bcrypt":
        import bcrypt

        return bytes(bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)))
    data = password + salt
    if algorithm == "plain":
        return data
    return hashlib.new(algorithm, data).hexdigest().encode()


def add_user(server: RedisServer, name: str, password_hash: bytes, salt: bytes = b"") -> None:
    server.client().hset(
        f"mqtt_user:{name}", mapping={"password_hash": password_hash, "salt": salt}
    )


def connack(port: int, version: int, username: str | None, password: bytes | None) -> int:
    raw = RawClient(port, version)
    raw.send_packet(Connect("c", protocol_version=version, username=username, password=password))
    code = int(expect(raw, Connack).reason_code)
    raw.sock.close()
    return code


ALGORITHMS = ["plain", "md5", "sha256", "sha512", "pbkdf2", "bcrypt"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_logs_in_with_the_default_salt_suffix(
    make_broker: Factory, server: RedisServer, redis_url: str, algorithm: str, version: int
) -> None:
    if algorithm == "bcrypt" and not bcrypt_available():
        pytest.skip("bcrypt is not installed (the auth-bcrypt extra)")
    add_user(server, "alice", stored_hash(algorithm, b"s3cret", b"NaCl"), b"NaCl")
    settings: dict[str, Any] = {"auth_redis_algorithm": algorithm}
    if algorithm == "pbkdf2":
        settings["auth_redis_pbkdf2_iterations"] = 1000
    bt = make_broker(auth_redis=True, redis_url=redis_url, **settings)
    assert connack(bt.port, version, "alice", b"s3cret") == ReasonCode.SUCCESS
    wrong = connack(bt.port, version, "alice", b"S3cret")
    unknown = connack(bt.port, version, "mallory", b"s3cret")
    assert wrong == unknown == ReasonCode.BAD_USER_NAME_OR_PASSWORD  # 3.1.1: return code 4
    assert connack(bt.port, version, None, None) == ReasonCode.NOT_AUTHORIZED  # 3.1.1: 5


def test_redis_acl_hash_decides_publish_and_subscribe(
    make_broker: Factory, server: RedisServer, redis_url: str, clients: Callable[..., Client]
) -> None:
    add_user(server, "alice", stored_hash("sha256", b"pw", b"s"), b"s")
    add_user(server, "root", stored_hash("sha256", b"pw", b"s"), b"s")
    server.client().hset("mqtt_user:root", "is_superuser", "1")
    server.client().hset(
        "mqtt_acl:alice",
        mapping={"out/${username}/#": "publish", "in/#": "subscribe", "both/${clientid}": "all"},
    )
    bt = make_broker(auth_redis=True, redis_url=redis_url)
    alice = clients(bt.port, client_id="a1", username="alice", password="pw")
    alice.connect()
    assert alice.subscribe("in/#", 1)[0].value == 1
    assert alice.subscribe("out/alice/#", 1)[0].value == ReasonCode.NOT_AUTHORIZED
    assert alice.subscribe("both/a1", 1)[0].value == 1
    assert alice.publish("in/x", b"no", qos=1).value == ReasonCode.NOT_AUTHORIZED
    root = clients(bt.port, username="root", password="pw")
    root.connect()
    assert root.subscribe("#", 1)[0].value == 1  # a superuser: no ACL
    assert alice.publish("out/alice/x", b"yes", qos=1).value == 0
    assert root.get().payload == b"yes"
    root.publish("in/x", b"for alice", qos=1)
    got = alice.get()
    assert (got.topic, got.payload) == ("in/x", b"for alice")


def test_cache_holds_for_its_ttl_then_reads_redis_again(
    make_broker: Factory, server: RedisServer, redis_url: str
) -> None:
    add_user(server, "alice", stored_hash("sha256", b"old", b"s"), b"s")
    bt = make_broker(auth_redis=True, redis_url=redis_url, auth_cache_ttl=60)
    assert connack(bt.port, 5, "alice", b"old") == ReasonCode.SUCCESS
    add_user(server, "alice", stored_hash("sha256", b"new", b"s"), b"s")  # no invalidation
    assert connack(bt.port, 5, "alice", b"old") == ReasonCode.SUCCESS  # cached
    bt.advance(61)
    assert connack(bt.port, 5, "alice", b"old") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert connack(bt.port, 5, "alice", b"new") == ReasonCode.SUCCESS


def test_an_invalidation_message_drops_the_cached_user(
    make_broker: Factory, server: RedisServer, redis_url: str
) -> None:
    """A change published on <redis_prefix>:auth:invalidate (PUBLISH from
    redis-cli or any tool) takes effect at the next CONNECT, cache or not."""
    add_user(server, "alice", stored_hash("sha256", b"old", b"s"), b"s")
    bt = make_broker(auth_redis=True, redis_url=redis_url, auth_cache_ttl=3600)
    redis_auth = bt.broker._shard.access.redis
    wait_for(lambda: bt.call(redis_auth.listening.is_set))
    assert connack(bt.port, 5, "alice", b"old") == ReasonCode.SUCCESS
    add_user(server, "alice", stored_hash("sha256", b"new", b"s"), b"s")
    channel = invalidation_channel(bt.broker.config.redis_prefix)
    receivers = server.client().publish(channel, "alice")
    if not isinstance(server, RedisClusterServer):  # a cluster counts one node's
        assert receivers == 1
    wait_for(lambda: not bt.call(lambda: redis_auth.is_cached("alice")))
    assert connack(bt.port, 5, "alice", b"new") == ReasonCode.SUCCESS


def test_password_file_users_first_then_redis(
    make_broker: Factory, server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    from shardmq.auth.passwd import PasswordFile

    pw = PasswordFile()
    pw.set("filed", "fpw")
    pw.save(tmp_path / "passwd")
    add_user(server, "redised", stored_hash("sha256", b"rpw", b""))
    bt = make_broker(auth_redis=True, redis_url=redis_url, password_file=str(tmp_path / "passwd"))
    assert connack(bt.port, 5, "filed", b"fpw") == ReasonCode.SUCCESS
    assert connack(bt.port, 5, "redised", b"rpw") == ReasonCode.SUCCESS
    assert connack(bt.port, 5, "nobody", b"x") == ReasonCode.BAD_USER_NAME_OR_PASSWORD

"""RedisAuth against a real redis-server, in EMQX's layout."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from shardmq.auth.acl import Access, AclRule
from shardmq.auth.hashing import PasswordHasher, bcrypt_available
from shardmq.auth.redis import AuthResult, RedisAuth, invalidation_channel, publish_invalidation
from shardmq.config import Config
from tests.auth.mosquitto import free_port
from tests.redis_server import RedisServer, redis_server_path

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")

T = TypeVar("T")

#: Seconds a test may wait for Redis to act.
DEADLINE = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis-auth")).start()
    yield started
    started.stop()


@pytest.fixture
def url(server: RedisServer) -> str:
    server.client().flushall()
    return server.url


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(url: str, body: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(url)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# -- algorithms -----------------------------------------------------------------

SIMPLE = {
    "md5": hashlib.md5,
    "sha": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


def emqx_hash(algorithm: str, position: str, password: bytes, salt: bytes) -> bytes:
    """The stored form, straight from EMQX's rules (emqx_passwd:hash/2)."""
    data = {"prefix": salt + password, "suffix": password + salt, "disable": password}[position]
    if algorithm == "plain":
        return data
    return SIMPLE[algorithm](data).hexdigest().encode()


@pytest.mark.parametrize("position", ["prefix", "suffix", "disable"])
@pytest.mark.parametrize("algorithm", ["plain", "md5", "sha", "sha256", "sha512"])
def test_simple_algorithms(url: str, algorithm: str, position: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        stored = emqx_hash(algorithm, position, b"s3cret", b"NaCl")
        await client.hset("mqtt_user:alice", mapping={"password_hash": stored, "salt": "NaCl"})
        auth = RedisAuth(client, PasswordHasher(algorithm, position))
        assert await auth.authenticate("alice", "s3cret") == AuthResult(True, False)
        assert await auth.authenticate("alice", b"s3cret") == AuthResult(True, False)
        assert await auth.authenticate("alice", "s3cret!") == AuthResult(False)
        if position != "disable":
            # the other position does not accept the same record
            other = "suffix" if position == "prefix" else "prefix"
            wrong_side = RedisAuth(client, PasswordHasher(algorithm, other))
            assert not (await wrong_side.authenticate("alice", "s3cret")).ok

    run(url, body)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_pbkdf2(url: str, position: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        salt = b"0123456789abcdef"
        stored = hashlib.pbkdf2_hmac("sha256", b"s3cret", salt, 1000).hex()
        await client.hset("mqtt_user:alice", mapping={"password_hash": stored, "salt": salt})
        hasher = PasswordHasher("pbkdf2", position, pbkdf2_mac_fun="sha256", pbkdf2_iterations=1000)
        auth = RedisAuth(client, hasher)
        assert (await auth.authenticate("alice", "s3cret")).ok
        assert not (await auth.authenticate("alice", "S3cret")).ok
        fewer = RedisAuth(
            client, PasswordHasher("pbkdf2", pbkdf2_mac_fun="sha256", pbkdf2_iterations=999)
        )
        assert not (await fewer.authenticate("alice", "s3cret")).ok

    run(url, body)


@pytest.mark.skipif(not bcrypt_available(), reason="bcrypt package not installed")
@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_bcrypt(url: str, position: str) -> None:
    import bcrypt

    async def body(client: aioredis.Redis) -> None:
        stored = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))
        # as EMQX writes it: the hash in both fields
        await client.hset("mqtt_user:alice", mapping={"password_hash": stored, "salt": stored})
        await client.hset("mqtt_user:bob", mapping={"password_hash": stored})  # no salt field
        auth = RedisAuth(client, PasswordHasher("bcrypt", position))
        assert (await auth.authenticate("alice", "s3cret")).ok
        assert (await auth.authenticate("bob", "s3cret")).ok
        assert not (await auth.authenticate("alice", "nope")).ok
        assert not (await auth.authenticate("nobody", "s3cret")).ok

    run(url, body)


# -- outcomes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "superuser"),
    [("1", True), ("true", True), ("TRUE", True), ("0", False), ("false", False), (None, False)],
)
def test_superuser_flag(url: str, flag: str | None, superuser: bool) -> None:
    async def body(client: aioredis.Redis) -> None:
        record = {"password_hash": emqx_hash("sha256", "prefix", b"pw", b"")}
        if flag is not None:
            record["is_superuser"] = flag.encode()
        await client.hset("mqtt_user:root", mapping=record)
        auth = RedisAuth(client)
        assert await auth.authenticate("root", "pw") == AuthResult(True, superuser)
        # a wrong password never makes anyone a superuser
        assert await auth.authenticate("root", "px") == AuthResult(False, False)

    run(url, body)


def test_missing_user_is_a_wrong_password(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await client.hset("mqtt_user:alice", mapping={"password_hash": b"pw", "salt": b""})
        auth = RedisAuth(client, PasswordHasher("plain", "disable"))
        wrong = await auth.authenticate("alice", "nope")
        missing = await auth.authenticate("mallory", "pw")
        assert wrong == missing == AuthResult(False, False)
        assert await auth.authenticate("alice", None) == AuthResult(False)
        assert await auth.authenticate(None, "pw") == AuthResult(False)
        # a key without password_hash (nor EMQX 4's password) is no user either
        await client.hset("mqtt_user:half", mapping={"salt": b"x"})
        assert await auth.authenticate("half", "") == AuthResult(False)

    run(url, body)


def test_emqx4_password_field(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await client.hset("mqtt_user:old", mapping={"password": b"legacy"})
        auth = RedisAuth(client, PasswordHasher("plain", "disable"))
        assert (await auth.authenticate("old", "legacy")).ok

    run(url, body)


def test_redis_unreachable_raises_rather_than_refusing() -> None:
    async def body() -> None:
        client = aioredis.Redis(
            host="127.0.0.1",
            port=free_port(),
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),  # fail at once; the default retries with backoff
        )
        try:
            with pytest.raises(RedisConnectionError):
                await RedisAuth(client).authenticate("alice", "pw")
        finally:
            await client.aclose()

    asyncio.run(body())


# -- ACL --------------------------------------------------------------------------


def test_acl_rules_and_placeholders(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await client.hset(
            "mqtt_acl:alice",
            mapping={
                "out/#": "publish",
                "in/+": "subscribe",
                "both/${username}/${clientid}": "all",
                "json/#": '{"action": "subscribe"}',
                "limited/#": '{"action": "publish", "qos": [1, 2]}',  # fail closed
                "eq exact/#": "subscribe",  # fail closed
                "odd/#": "sometimes",  # fail closed
                "bad/#/x": "all",  # not a filter
            },
        )
        acl = await RedisAuth(client).acl_for("alice")
        assert set(acl.rules) == {
            AclRule(Access.WRITE, "out/#"),
            AclRule(Access.READ, "in/+"),
            AclRule(Access.READWRITE, "both/${username}/${clientid}"),
            AclRule(Access.READ, "json/#"),
        }
        checks = acl.for_client("dev1")
        assert checks.may_publish("out/a/b") and not checks.may_read("out/a")
        assert checks.may_subscribe("in/+") and checks.may_read("in/x")
        assert not checks.may_publish("in/x") and not checks.may_subscribe("in/#")
        assert checks.may_publish("both/alice/dev1") and checks.may_read("both/alice/dev1")
        assert not checks.may_publish("both/alice/dev2")
        assert checks.may_subscribe("json/#")
        assert not checks.may_publish("limited/x")
        assert not checks.may_subscribe("exact/#") and not checks.may_read("exact/x")
        assert not checks.may_publish("odd/x")

    run(url, body)


def test_no_acl_key_allows_nothing(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        checks = (await RedisAuth(client).acl_for("nobody")).for_client("c")
        assert not checks.may_publish("a") and not checks.may_subscribe("a")

    run(url, body)


def test_placeholder_with_a_wildcard_value_is_skipped(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await client.hset(
            "mqtt_acl:ev+il", mapping={"u/${username}": "all", "c/${clientid}": "all"}
        )
        acl = await RedisAuth(client).acl_for("ev+il")
        checks = acl.for_client("c#")
        assert not checks.may_subscribe("u/ev+il") and not checks.may_read("u/x")
        assert not checks.may_read("c/anything")
        assert acl.for_client("c1").may_read("c/c1")  # the client id is harmless here

    run(url, body)


# -- cache and invalidation ----------------------------------------------------------


async def hmget_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_hmget", {})
    return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0


def test_cache_serves_until_the_ttl_then_reads_again(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        clock = FakeClock()
        await client.hset("mqtt_user:alice", mapping={"password_hash": b"old"})
        await client.hset("mqtt_acl:alice", mapping={"a/#": "all"})
        auth = RedisAuth(client, PasswordHasher("plain", "disable"), cache_ttl=30, clock=clock)
        await client.config_resetstat()
        assert (await auth.authenticate("alice", "old")).ok
        assert (await auth.authenticate("alice", "old")).ok
        assert await hmget_calls(client) == 1  # the second answer came from the cache
        assert (await auth.acl_for("alice")).for_client("c").may_read("a/x")

        await client.hset("mqtt_user:alice", mapping={"password_hash": b"new"})
        await client.delete("mqtt_acl:alice")
        clock.now += 29.9
        assert (await auth.authenticate("alice", "old")).ok  # still cached
        assert (await auth.acl_for("alice")).for_client("c").may_read("a/x")
        clock.now += 0.2
        assert not (await auth.authenticate("alice", "old")).ok  # expired: read again
        assert (await auth.authenticate("alice", "new")).ok
        assert not (await auth.acl_for("alice")).for_client("c").may_read("a/x")

    run(url, body)


def test_unknown_users_are_cached_too(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        clock = FakeClock()
        auth = RedisAuth(client, PasswordHasher("plain", "disable"), cache_ttl=30, clock=clock)
        assert not (await auth.authenticate("late", "pw")).ok
        await client.hset("mqtt_user:late", mapping={"password_hash": b"pw"})
        assert not (await auth.authenticate("late", "pw")).ok
        auth.invalidate("late")
        assert (await auth.authenticate("late", "pw")).ok

    run(url, body)


def test_invalidate_one_user_or_everyone(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        for name in ("alice", "bob"):
            await client.hset(f"mqtt_user:{name}", mapping={"password_hash": b"old"})
        auth = RedisAuth(client, PasswordHasher("plain", "disable"), clock=FakeClock())
        for name in ("alice", "bob"):
            assert (await auth.authenticate(name, "old")).ok
            await client.hset(f"mqtt_user:{name}", mapping={"password_hash": b"new"})
        auth.invalidate("alice")
        assert (await auth.authenticate("alice", "new")).ok
        assert (await auth.authenticate("bob", "old")).ok  # bob untouched
        auth.invalidate()
        assert (await auth.authenticate("bob", "new")).ok

    run(url, body)


def test_ttl_zero_disables_the_cache(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        await client.hset("mqtt_user:alice", mapping={"password_hash": b"old"})
        auth = RedisAuth(client, PasswordHasher("plain", "disable"), cache_ttl=0)
        assert (await auth.authenticate("alice", "old")).ok
        await client.hset("mqtt_user:alice", mapping={"password_hash": b"new"})
        assert (await auth.authenticate("alice", "new")).ok
        assert not auth.is_cached("alice")

    run(url, body)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on the loop until it holds, for at most DEADLINE."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_invalidation_channel(url: str) -> None:
    async def body(client: aioredis.Redis) -> None:
        for name in ("alice", "bob"):
            await client.hset(f"mqtt_user:{name}", mapping={"password_hash": b"pw"})
        auth = RedisAuth(
            client, PasswordHasher("plain", "disable"), prefix="test", clock=FakeClock()
        )
        assert auth.channel == invalidation_channel("test") == "test:auth:invalidate"
        listener = asyncio.create_task(auth.listen_invalidations())
        try:
            await asyncio.wait_for(auth.listening.wait(), DEADLINE)
            for name in ("alice", "bob"):
                await auth.authenticate(name, "pw")
            assert auth.is_cached("alice") and auth.is_cached("bob")

            assert await publish_invalidation(client, "test", "alice") == 1
            await wait_until(lambda: not auth.is_cached("alice"))
            assert auth.is_cached("bob")

            await publish_invalidation(client, "test", None)  # everyone
            await wait_until(lambda: not auth.is_cached("bob"))
        finally:
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener

    run(url, body)


def test_from_config(url: str) -> None:
    config = Config(
        auth_redis=True,
        redis_url=url,
        redis_prefix="cfg",
        auth_redis_algorithm="sha512",
        auth_redis_salt_position="suffix",
        auth_cache_ttl=5,
    )

    async def body(client: aioredis.Redis) -> None:
        stored = hashlib.sha512(b"pw" + b"s").hexdigest()
        await client.hset("mqtt_user:alice", mapping={"password_hash": stored, "salt": "s"})
        auth = RedisAuth.from_config(config)
        try:
            assert auth.channel == "cfg:auth:invalidate"
            assert auth.cache_ttl == 5.0
            assert (await auth.authenticate("alice", "pw")).ok
        finally:
            await auth.client.aclose()

    run(url, body)

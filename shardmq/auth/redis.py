"""Credentials and ACLs in Redis, in EMQX's layout (asyncio, ``redis.asyncio``).

Layout (EMQX 5 docs, "Integrate with Redis", authentication and
authorization; hashing as EMQX's ``emqx_passwd`` and
``emqx_authn_password_hashing``)::

    HSET mqtt_user:<username> password_hash <hash> salt <salt> is_superuser 1
    HSET mqtt_acl:<username> <topic filter> publish|subscribe|all

- ``password_hash`` (or EMQX 4's ``password``) is compared with the hash of
  the password the client sent. ``salt`` is optional (empty: no salt);
  ``is_superuser`` is true for ``1`` or ``true`` and lifts every ACL.
- The password check is ``hashing.PasswordHasher``'s: EMQX's algorithms
  (``plain``, ``md5``, ``sha``, ``sha256``, ``sha512``, ``pbkdf2``, ``bcrypt``)
  and salt positions; shardmq's default is ``sha256`` with the salt as
  suffix (EMQX 5's is prefix: ``auth_redis_salt_position`` says which).
- ACL values are ``publish`` (our write), ``subscribe`` (our read: subscribe
  and delivery) or ``all``; EMQX's JSON form ``{"action": ...}`` is read for
  its action. Every rule grants: the layout has no deny, so a user without
  rules may do nothing. ``${username}`` and ``${clientid}`` in a filter are
  filled in per client. Fail closed, with a warning, on what we cannot
  honour: a JSON rule limited by ``qos`` or ``retain``, an ``eq`` filter, an
  unknown action, or a placeholder whose value holds ``+`` or ``#``.

Caching and invalidation
------------------------
User records and ACLs are cached per username for ``cache_ttl`` seconds (by
``clock``, ``time.monotonic`` unless given), absent users too, so a CONNECT
storm costs Redis one read per user and TTL. The password check itself runs
on every CONNECT (in a thread for pbkdf2 and bcrypt); only the stored record
is cached, never a verdict.

A change is seen within the TTL. To see it at once, admin tooling publishes
the username on the channel ``<prefix>:auth:invalidate`` (empty or ``*``:
everyone; ``publish_invalidation`` does it) and every broker process running
``listen_invalidations`` drops that user from its cache. Redis keyspace
notifications would need ``notify-keyspace-events`` set on the server, which
is off by default and server-wide, so they are not relied on; a message lost
while a listener reconnects is bounded by the TTL (and the listener empties
its cache when it reconnects).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..protocol.topics import is_valid_topic_filter
from .acl import Access, AclRule, ClientAcl
from .hashing import PasswordHasher

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "AuthResult",
    "RedisAcl",
    "RedisAuth",
    "invalidation_channel",
    "parse_acl_hash",
    "publish_invalidation",
]

log = logging.getLogger(__name__)

USER_KEY_PREFIX = "mqtt_user:"
ACL_KEY_PREFIX = "mqtt_acl:"

_TRUE = frozenset({b"1", b"true"})


def invalidation_channel(prefix: str) -> str:
    """The pub/sub channel that carries invalidations: ``<prefix>:auth:invalidate``."""
    return f"{prefix}:auth:invalidate"


async def publish_invalidation(client: aioredis.Redis, prefix: str, username: str | None) -> int:
    """Tell every listening broker to forget ``username`` (None: everyone).

    Returns the number of listeners that got it. Admin tooling calls this
    after changing ``mqtt_user:*`` or ``mqtt_acl:*``.
    """
    return int(await client.publish(invalidation_channel(prefix), username or "*"))


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    superuser: bool = False


@dataclass(frozen=True, slots=True)
class _UserRecord:
    password_hash: bytes
    salt: bytes
    superuser: bool


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The client is made without decode_responses, but its types allow str.
    return value.encode("utf-8") if isinstance(value, str) else value


_PLACEHOLDER = re.compile(r"\$\{(username|clientid)\}")


@dataclass(frozen=True, slots=True)
class RedisAcl:
    """One user's ACL rules from ``mqtt_acl:<username>`` (all grants)."""

    username: str
    rules: tuple[AclRule, ...] = ()

    def for_client(self, client_id: str) -> ClientAcl:
        """The compiled checks, with ``${username}``/``${clientid}`` filled in."""
        values = {"username": self.username, "clientid": client_id}
        compiled: list[AclRule] = []
        for rule in self.rules:
            names = set(_PLACEHOLDER.findall(rule.topic))
            if any("+" in values[n] or "#" in values[n] for n in names):
                log.warning(
                    "redis acl for %r: %r skipped, the %s holds a wildcard",
                    self.username,
                    rule.topic,
                    "/".join(sorted(names)),
                )
                continue
            topic = _PLACEHOLDER.sub(lambda m: values[m.group(1)], rule.topic)
            compiled.append(AclRule(rule.access, topic))
        return ClientAcl(compiled)


_ACTIONS = {"publish": Access.WRITE, "subscribe": Access.READ, "all": Access.READWRITE}


def parse_acl_hash(username: str, entries: dict[bytes, bytes]) -> RedisAcl:
    """Rules from an ``HGETALL mqtt_acl:<username>`` reply; unusable ones are skipped."""
    rules: list[AclRule] = []
    for raw_topic, raw_value in sorted(entries.items()):
        topic = raw_topic.decode("utf-8", "replace")
        value = raw_value.decode("utf-8", "replace").strip()
        action = value
        if value.startswith("{"):
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                log.warning("redis acl for %r: %r: value is not a JSON object", username, topic)
                continue
            if "qos" in parsed or "retain" in parsed:
                log.warning(
                    "redis acl for %r: %r skipped: qos/retain limits are not supported",
                    username,
                    topic,
                )
                continue
            action = str(parsed.get("action", ""))
        if topic.startswith("eq "):
            log.warning("redis acl for %r: %r skipped: 'eq' filters not supported", username, topic)
            continue
        access = _ACTIONS.get(action.lower())
        if access is None:
            log.warning("redis acl for %r: %r: unknown action %r", username, topic, action)
            continue
        probe = _PLACEHOLDER.sub("x", topic)
        if not is_valid_topic_filter(probe):
            log.warning("redis acl for %r: %r is not a valid topic filter", username, topic)
            continue
        rules.append(AclRule(access, topic))
    return RedisAcl(username, tuple(rules))


class RedisAuth:
    """Authenticate and authorise clients against EMQX's Redis layout.

    ``authenticate`` answers a CONNECT; ``acl_for`` gives the user's rules
    (compile them per client with ``RedisAcl.for_client``; a superuser
    needs none: use ``ClientAcl.allow_all()``). Both read through a TTL
    cache that ``invalidate`` and ``listen_invalidations`` empty early.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        hasher: PasswordHasher | None = None,
        *,
        cache_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "shardmq",
        user_key_prefix: str = USER_KEY_PREFIX,
        acl_key_prefix: str = ACL_KEY_PREFIX,
    ) -> None:
        self.client = client
        self.hasher = hasher if hasher is not None else PasswordHasher()
        self.cache_ttl = cache_ttl
        self.clock = clock
        self.channel = invalidation_channel(prefix)
        self.user_key_prefix = user_key_prefix
        self.acl_key_prefix = acl_key_prefix
        # username -> (expires at, record or None for "no such user")
        self._users: dict[str, tuple[float, _UserRecord | None]] = {}
        self._acls: dict[str, tuple[float, RedisAcl]] = {}
        #: Set once ``listen_invalidations`` is subscribed (tests wait on it).
        self.listening = asyncio.Event()

    @classmethod
    def from_config(
        cls,
        config: Config,
        client: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> RedisAuth:
        hasher = PasswordHasher(
            config.auth_redis_algorithm,
            config.auth_redis_salt_position,
            pbkdf2_mac_fun=config.auth_redis_pbkdf2_mac_fun,
            pbkdf2_iterations=config.auth_redis_pbkdf2_iterations,
            pbkdf2_dk_length=config.auth_redis_pbkdf2_dk_length,
        )
        if client is None:
            client = aioredis.Redis.from_url(config.redis_url)
        return cls(
            client, hasher, cache_ttl=config.auth_cache_ttl, clock=clock, prefix=config.redis_prefix
        )

    # -- authentication ----------------------------------------------------

    async def authenticate(self, username: str | None, password: str | bytes | None) -> AuthResult:
        """Check a CONNECT's credentials. A missing user, a missing password
        and a wrong password are all ``AuthResult(False)``, and an unknown
        user costs a hash like a known one. Raises RedisError when Redis
        cannot be reached (the caller answers "server unavailable")."""
        if username is None or password is None:
            return AuthResult(False)
        data = password.encode("utf-8") if isinstance(password, str) else password
        record = await self._user(username)
        if record is None:
            await self._run(self.hasher.check_dummy, data)
            return AuthResult(False)
        ok = bool(await self._run(self.hasher.check, data, record.password_hash, record.salt))
        return AuthResult(ok, record.superuser and ok)

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.hasher.expensive:
            # PBKDF2 and bcrypt take milliseconds to tens of them: not on the loop.
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)
        return func(*args)

    async def _user(self, username: str) -> _UserRecord | None:
        now = self.clock()
        cached = self._users.get(username)
        if cached is not None and cached[0] > now:
            return cached[1]
        reply = await self.client.hmget(
            self.user_key_prefix + username, ["password_hash", "password", "salt", "is_superuser"]
        )
        password_hash, legacy, salt, superuser = (_as_bytes(value) for value in reply)
        stored = password_hash if password_hash is not None else legacy
        record = (
            None
            if stored is None
            else _UserRecord(stored, salt or b"", (superuser or b"").strip().lower() in _TRUE)
        )
        self._remember(self._users, username, record, now)
        return record

    # -- authorisation -----------------------------------------------------

    async def acl_for(self, username: str) -> RedisAcl:
        """The rules of ``mqtt_acl:<username>`` (no key: no rules, nothing allowed)."""
        now = self.clock()
        cached = self._acls.get(username)
        if cached is not None and cached[0] > now:
            return cached[1]
        entries = await self.client.hgetall(self.acl_key_prefix + username)
        acl = parse_acl_hash(
            username, {_as_bytes(k) or b"": _as_bytes(v) or b"" for k, v in entries.items()}
        )
        self._remember(self._acls, username, acl, now)
        return acl

    def _remember(
        self, cache: dict[str, tuple[float, Any]], key: str, value: Any, now: float
    ) -> None:
        if self.cache_ttl > 0:
            cache[key] = (now + self.cache_ttl, value)

    # -- invalidation ------------------------------------------------------

    def invalidate(self, username: str | None = None) -> None:
        """Forget ``username`` (None: everyone); the next check reads Redis."""
        if username is None:
            self._users.clear()
            self._acls.clear()
        else:
            self._users.pop(username, None)
            self._acls.pop(username, None)

    def is_cached(self, username: str) -> bool:
        """True while a record or ACL of ``username`` is in the cache, expired or not."""
        return username in self._users or username in self._acls

    def handle_invalidation(self, payload: bytes | str) -> None:
        """Apply one message of the invalidation channel."""
        name = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        self.invalidate(None if name in ("", "*") else name)

    async def listen_invalidations(self, retry_delay: float = 1.0) -> None:
        """Apply invalidation messages until cancelled, reconnecting on errors.

        Run it as a task beside the broker; it sets ``listening`` once
        subscribed. After a lost connection the whole cache is dropped,
        since messages may have been missed meanwhile.
        """
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "message":
                        self.handle_invalidation(message["data"])
                    elif kind == "subscribe":
                        # Redis has confirmed: from now on nothing published is missed.
                        self.listening.set()
            except RedisError as exc:
                self.listening.clear()
                self.invalidate()
                log.warning("auth invalidation listener: %s; retrying", exc)
                await asyncio.sleep(retry_delay)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

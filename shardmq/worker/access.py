"""Access control in one worker: who may connect, publish, subscribe and read.

Theory of operation
-------------------
:class:`Access` is built once per worker from the settings (``password_file``,
``acl_file``, ``auth_redis``, ``allow_anonymous``). With none of them set the
shard holds no Access at all, so a connection pays one attribute test.

- CONNECT: :meth:`admit` checks the username and password against the
  password file (a PBKDF2 of more than ``INLINE_ITERATIONS`` runs in the
  loop's thread executor, so a costly hash never stalls the other clients;
  a cheaper one, mosquitto_passwd's default, runs inline) and, for a user the file does not list,
  Redis (EMQX's layout, ``auth/redis.py``, cached for ``auth_cache_ttl``).
  An unknown user and a wrong password get the same answer, CONNACK 0x86
  (3.1.1: return code 4); Redis unreachable gets 0x88 (3.1.1: 3). A client
  without a username is refused once credentials are configured, unless
  ``allow_anonymous`` is set explicitly.
- The client's rules: the ACL file's when one is configured, else, for a
  user Redis admitted, its ``mqtt_acl:<username>`` hash; none for a Redis
  superuser or when no ACL is configured. They are compiled once per
  connection (``ClientAcl``: cached per topic, no await on the hot path).
  PUBLISH is checked with ``may_publish`` (denied: PUBACK/PUBREC 0x87, a QoS
  0 message dropped and counted), SUBSCRIBE with ``may_subscribe`` (SUBACK
  0x87, 3.1.1 0x80), and every delivery with ``may_read``, so a wildcard
  subscription never delivers a topic the client may not read (``$SYS``
  included).
- SIGHUP: :meth:`reload` re-reads both files; a file that fails to parse is
  logged with its name and line and the previous rules stay in force. The
  broker then gives every open connection its rules anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth.acl import AclFile, ClientAcl
from ..auth.files import AuthFileError
from ..auth.passwd import PasswordFile
from ..errors import MQTTError
from ..protocol.constants import ReasonCode

if TYPE_CHECKING:
    from ..auth.redis import RedisAuth
    from ..config import Config

log = logging.getLogger("shardmq.access")

#: PBKDF2 iterations up to which a password is checked on the event loop:
#: mosquitto_passwd's 101 take about 45 us of CPU here, less than the trip to
#: a thread and back (which halved the login rate in bench/RESULTS.md); 1000
#: bound a stall at about half a millisecond. Costlier hashes go to a thread.
INLINE_ITERATIONS = 1000


class Access:
    __slots__ = ("config", "passwords", "acl", "anonymous", "redis", "_listener")

    def __init__(self, config: Config) -> None:
        self.config = config
        #: None: no password file configured
        self.passwords: PasswordFile | None = None
        #: None: no ACL file configured
        self.acl: AclFile | None = None
        #: Redis-backed credentials and ACLs (None: auth_redis is off)
        self.redis: RedisAuth | None = None
        self._listener: asyncio.Task[None] | None = None
        # a client without a username: Config resolved an unset
        # allow_anonymous to "no" when credentials are configured
        self.anonymous = config.allow_anonymous is not False
        self._load()

    @staticmethod
    def wanted(config: Config) -> bool:
        """Whether the settings ask for access control at all."""
        return bool(
            config.password_file
            or config.acl_file
            or config.auth_redis
            or config.allow_anonymous is False
        )

    def start(self, clock: Callable[[], float]) -> None:
        """On the event loop: the Redis client and its invalidation listener;
        ``clock`` times the cache (the shard's, which tests can advance)."""
        if self.config.auth_redis and self.redis is None:
            from ..auth.redis import RedisAuth
            from ..storage.redis import connect

            client = connect(self.config.redis_url, self.config.redis_cluster)
            self.redis = RedisAuth.from_config(self.config, client, clock=clock)
            self._listener = asyncio.get_running_loop().create_task(
                self.redis.listen_invalidations()
            )

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self.redis is not None:
            await self.redis.client.aclose()
            self.redis = None

    def _load(self) -> None:
        """Read the files (at start: an error stops the worker)."""
        cfg = self.config
        if cfg.password_file:
            self.passwords = PasswordFile.load(cfg.password_file)
        if cfg.acl_file:
            self.acl = AclFile.load(cfg.acl_file)

    def reload(self) -> bool:
        """Re-read the password and ACL files; on an error keep what was in
        force and log one line naming the file and line. True when both were
        read."""
        cfg = self.config
        ok = True
        if cfg.password_file:
            try:
                self.passwords = PasswordFile.load(cfg.password_file)
            except AuthFileError as exc:
                log.error("reload: %s; the previous passwords stay in force", exc)
                ok = False
        if cfg.acl_file:
            try:
                self.acl = AclFile.load(cfg.acl_file)
            except AuthFileError as exc:
                log.error("reload: %s; the previous ACL stays in force", exc)
                ok = False
        return ok

    async def admit(
        self, username: str | None, password: bytes | None, client_id: str
    ) -> tuple[bool, ClientAcl | None]:
        """(may the client connect, its rules); raises MQTTError 0x88 when
        Redis cannot be asked."""
        if username is None:
            return self.anonymous, self.rules_for(None, client_id)
        passwords = self.passwords
        redis = self.redis
        if passwords is not None and (redis is None or username in passwords):
            if passwords.iterations_for(username) <= INLINE_ITERATIONS:
                ok = passwords.verify(username, password or b"")
            else:
                loop = asyncio.get_running_loop()
                ok = await loop.run_in_executor(None, passwords.verify, username, password or b"")
            return ok, self.rules_for(username, client_id) if ok else None
        if redis is None:
            # no credentials configured (an ACL file alone): any name will do
            return True, self.rules_for(username, client_id)
        from redis.exceptions import RedisError

        try:
            result = await redis.authenticate(username, password)
            if not result.ok:
                return False, None
            if self.acl is not None:
                return True, self.acl.for_client(username, client_id)
            if result.superuser:
                return True, None
            return True, (await redis.acl_for(username)).for_client(client_id)
        except RedisError as exc:
            log.warning("auth: Redis unavailable for %r: %s", username, exc)
            raise MQTTError(ReasonCode.SERVER_UNAVAILABLE, "authentication unavailable") from None

    def rules_for(self, username: str | None, client_id: str) -> ClientAcl | None:
        """The client's rules from the ACL file; None when there is none."""
        if self.acl is None:
            return None
        return self.acl.for_client(username, client_id)

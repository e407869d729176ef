"""Membership: which nodes make up the broker, and which of them are alive.

Theory of operation
-------------------
Nodes meet in one Redis under one prefix ``P`` (``redis_prefix``). A node is
alive while its heartbeat key exists:

=======================  ======  =================================================
``P:{nodes}:<node id>``  string  ``"<token> <workers>"``, with a TTL of
                                 ``node_timeout``, refreshed every
                                 ``node_timeout / 3``
``P:{nodes}``            set     the ids of the nodes that joined and are not
                                 known to be gone
=======================  ======  =================================================

The ``{nodes}`` hash tag puts them in one slot of a Redis Cluster: the beat
script reads them all.

The token is drawn once when a node starts. Joining and every refresh run one
script (:data:`BEAT`): it sets the heartbeat if it is absent, extends it if it
holds this node's token, and otherwise changes nothing and reports the key
held: a second live node started under the same id is refused at start, and a
node whose heartbeat lapsed (it stalled for ``node_timeout``) never extends a
key another process has taken since. The same script adds this node to
``P:{nodes}`` and returns every member whose heartbeat exists, with its worker
count, removing from the set those whose heartbeat is gone (checked inside the
script, so a node that is joining, heartbeat first, is never removed). A node
silent for ``node_timeout`` is therefore dead for the others at their next
beat: at most ``node_timeout * 4 / 3`` after its last refresh.

Who beats, with ``--workers N``. Every worker process of the node runs the beat
with the node's one token, drawn by the parent process (``broker.serve``),
which also makes the first claim before forking, so a refused start is one line
from the command and no worker is forked. Why every worker and not one of them,
or the supervisor: the node counts as alive while any of its workers runs, so a
worker restarted after a crash (the supervisor's backoff, its store loading)
never makes the others drop the whole node's interest; the supervisor stays free
of network I/O (its loop only reaps and signals, as ``supervisor/arbiter.py``
says); and each worker already has an event loop and a Redis client. The cost is
N small scripts per node every ``node_timeout / 3``. With ``--workers 1`` the
broker process beats, and claims when it starts.

A node stopped gracefully deletes its heartbeat (if it still holds its token):
the others drop it at their next beat instead of after ``node_timeout``. A node
killed and started again within ``node_timeout`` is refused until its old
heartbeat expires.
"""

from __future__ import annotations

import secrets
import socket
import time
from typing import Any

from ..config import Config
from ..errors import ConfigError

#: KEYS: this node's heartbeat, the nodes set. ARGV: the heartbeat value, its
#: TTL in ms, this node's id, the heartbeat key prefix. Returns
#: {held (1/0), id, value, id, value...} for every live member.
BEAT = """local mine = redis.call('GET', KEYS[1])
local held = 1
if mine == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif mine == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  held = 0
end
if held == 1 then
  redis.call('SADD', KEYS[2], ARGV[3])
end
local out = {held}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local value = redis.call('GET', ARGV[4] .. id)
  if value then
    out[#out + 1] = id
    out[#out + 1] = value
  else
    redis.call('SREM', KEYS[2], id)
  end
end
return out
"""

#: KEYS: this node's heartbeat. ARGV: its value. Deletes it only if it is ours.
LEAVE = """if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def node_id_of(config: Config) -> str:
    """``node_id``, or ``<hostname>:<port>`` when it is not set."""
    return config.node_id or f"{socket.gethostname()}:{config.port}"


def new_token() -> str:
    return secrets.token_hex(8)


def refused(node_id: str, key: str) -> ConfigError:
    return ConfigError(
        "node_id",
        f"node {node_id!r} is already running: its heartbeat {key} is held by another "
        "process (a node stopped less than node_timeout ago counts as running)",
    )


class Membership:
    """The keys and scripts of one node's membership (the client is the caller's)."""

    def __init__(self, prefix: str, node_id: str, token: str, workers: int, timeout: float):
        self.prefix = prefix
        self.node_id = node_id
        self.value = f"{token} {workers}"
        self.ttl_ms = max(1, int(timeout * 1000))
        self.key = self.heartbeat_key(node_id)
        self.members_key = f"{prefix}:{{nodes}}"

    def heartbeat_key(self, node_id: str) -> str:
        return f"{self.prefix}:{{nodes}}:{node_id}"

    def beat_args(self) -> list[Any]:
        return [
            BEAT,
            2,
            self.key,
            self.members_key,
            self.value,
            self.ttl_ms,
            self.node_id,
            f"{self.prefix}:{{nodes}}:",
        ]

    @staticmethod
    def parse(reply: list[Any]) -> tuple[bool, dict[str, int]]:
        """(our heartbeat is ours, live node id -> its worker count)."""
        held = int(reply[0]) == 1
        live: dict[str, int] = {}
        for i in range(1, len(reply) - 1, 2):
            node = _text(reply[i])
            _token, _, workers = _text(reply[i + 1]).partition(" ")
            live[node] = int(workers) if workers.isdigit() else 1
        return held, live

    async def beat(self, redis: Any) -> tuple[bool, dict[str, int]]:
        """Join or refresh; returns what :meth:`parse` does."""
        return self.parse(await redis.eval(*self.beat_args()))

    async def leave(self, redis: Any) -> None:
        await redis.eval(LEAVE, 1, self.key, self.value)


def claim_before_fork(config: Config, token: str, workers: int) -> None:
    """The first claim of a node with several workers, made by the parent before
    it forks them (a blocking client, closed before returning: no socket is
    inherited). Raises ConfigError when the id is held or Redis cannot be reached
    within ``redis_connect_timeout``."""
    import redis

    from ..storage.redis import UNREACHABLE, cluster_target, mask_url

    node_id = node_id_of(config)
    membership = Membership(config.redis_prefix, node_id, token, workers, config.node_timeout)
    deadline = time.monotonic() + config.redis_connect_timeout
    delay = 0.05
    url, cluster = cluster_target(config.redis_url, config.redis_cluster)
    kind: Any = redis.RedisCluster if cluster else redis.Redis
    while True:
        client: Any = None
        try:
            client = kind.from_url(
                url,
                socket_timeout=config.store_timeout,
                socket_connect_timeout=min(config.store_timeout, config.redis_connect_timeout),
            )
            held, _live = membership.parse(client.eval(*membership.beat_args()))
            break
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise ConfigError(
                    "redis_url",
                    f"cannot reach Redis at {mask_url(config.redis_url)} within "
                    f"{config.redis_connect_timeout:g} s: {exc}",
                ) from None
        finally:
            if client is not None:
                client.close()
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    if not held:
        raise refused(node_id, membership.key)


def _text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)

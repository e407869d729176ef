"""The ``redis`` store: every persistent session and retained message in Redis.

Theory of operation
-------------------
The shard serves from memory; this store keeps a durable copy in Redis,
written from the events of ``base.Store`` and read back once, at start.

Key layout (``P`` is ``redis_prefix``; ``{cid}`` is the client id inside a
hash tag, so one session's keys share one Redis Cluster slot):

=============================  =====  ============================================
``P:s:{cid}:h``                string the session header: expiry, wall-clock
                                      deadlines, pending will, owner shard
``P:s:{cid}:sub``              hash   full filter -> subscription options
``P:s:{cid}:q``                hash   sequence number -> queued delivery
``P:s:{cid}:f``                hash   packet id -> [sequence, delivery] in flight
``P:s:{cid}:r``                set    packet ids whose PUBREC arrived (QoS 2)
``P:s:{cid}:i``                set    inbound QoS 2 packet ids not yet released
``P:shard:<n>``                set    client ids of the sessions shard n owns
``P:shards``                   set    shard numbers that ever owned a session
``P:retained``                 hash   topic -> retained message
=============================  =====  ============================================

Values are the ``codec`` serialisation (msgpack with a format version). Only
persistent sessions are written; no password or authentication data ever is.

Writes. Events append commands to a buffer; once per event-loop iteration the
buffer becomes a batch, written as one ``MULTI``/``EXEC`` pipeline, so a
session's change is applied whole or not at all. Batches are written one
after the other, in order, by one task; ``flush`` returns the future of the
batch that will hold what is buffered now. Every command assigns
(``SET``, ``HSET``, ``HDEL``, ``SADD``, ``SREM``, ``DEL``; no ``RPUSH`` or
``LPOP``), so a batch whose reply was lost can be written again without
changing its effect: the queue is a hash keyed by a sequence number that only
grows, and the store keeps, per session, the numbers of what is queued.

Failures. A batch that cannot be written is retried with backoff, and the
batches after it wait behind it, so what Redis ends up holding is what the
broker did, in order. A batch still unwritten ``store_timeout`` seconds after
it was closed fails its future with ``StoreUnavailable`` (the broker answers
the PUBLISH it held with 0x80) but stays queued: once Redis is back the
backlog is written. While Redis cannot be reached ``available`` is False (a
ping every second notices an outage when nothing is written); the outage and
the recovery are logged once each.

Redis Cluster (``redis_cluster``, or a ``redis+cluster://`` URL). The client
is redis-py's ``RedisCluster``, which learns the slot map from the seed node
and routes each command by its key. A script may only touch the keys of one
slot, so a batch bound for a cluster is split by the slot of each command's
key, keeping their order: one ``EVAL`` per slot, the ``EVAL`` scripts for one
primary pipelined on one connection, those for different primaries at once.
A session's keys share a slot (the ``{cid}`` hash tag), so its change is
still applied whole; what spans slots (the session index, ``P:retained``,
another session) is not atomic with it, but every command assigns and a
batch not written whole is written again, so Redis ends up as the broker
left it. The scripts that carry an ``XADD`` (a cluster node's entries for
another node, ``cluster/streams.py``) are sent only once the rest of the
batch is written: a node that reads an entry finds what it refers to. A ``MOVED``
reply (a slot moved, a failover) updates the slot map and the batch is
written again after a short pause; ``ASK``, ``TRYAGAIN`` and ``CLUSTERDOWN`` count as an
outage and are retried with backoff.

Start. ``load`` reads the sessions listed in ``P:shard:<n>`` for the shards
this one now stands for (its own number, and those of a broker that had more
workers), keeping those whose header still names that shard as owner (a
session that moved is listed under its old owner until then), and the
retained messages: a few commands per session, never a ``SCAN``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from ..protocol.session import Delivery, Message, Outbound, Session, Subscription
from . import codec
from .base import StoredState, StoreUnavailable

log = logging.getLogger("shardmq.store")

#: what a Redis (or Redis Cluster) that cannot be reached raises: the cluster
#: client's own errors (no node reachable, a slot not covered) are not
#: ``RedisError`` subclasses
UNREACHABLE = (RedisError, RedisClusterException, OSError, TimeoutError)

HEADER = "header"
RETAINED = "retained"

#: how often an idle store checks that Redis answers
PING_INTERVAL = 1.0
#: script arguments per EVAL when a backlog is written
MAX_ARGS = 200_000
#: arguments per command of a big change (a whole session saved)
CHUNK = 512
#: reconnect backoff bounds (seconds)
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

#: the commands a batch uses, pre-encoded as RESP bulk strings
DEL, SET, HSET, HDEL, SADD, SREM, XADD = (
    b"$%d\r\n%s\r\n" % (len(c), c)
    for c in (b"DEL", b"SET", b"HSET", b"HDEL", b"SADD", b"SREM", b"XADD")
)
#: HSET key field value / HDEL key field: the command and its argument count
_HSET_3 = HSET + b"$1\r\n3\r\n"
_HDEL_2 = HDEL + b"$1\r\n2\r\n"

#: A batch is one EVAL of this script: ARGV holds the commands one after the
#: other as [command, number of arguments, arguments...]; a script runs
#: atomically, like MULTI/EXEC, and is answered with one reply.
BATCH_SCRIPT = b"""local a = ARGV
local i = 1
local n = #a
while i <= n do
  local c = tonumber(a[i + 1])
  redis.call(a[i], unpack(a, i + 2, i + 1 + c))
  i = i + 2 + c
end
return n
"""


#: the schemes that name a Redis Cluster (``redis_cluster`` says it too)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_target(url: str, cluster: bool = False) -> tuple[str, bool]:
    """(the URL redis-py reads, whether it names a Redis Cluster): a
    ``redis+cluster://`` (``rediss+cluster://``) URL does, as does any URL
    with ``redis_cluster`` set."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if sep and plain is not None:
        return f"{plain}://{rest}", True
    return url, cluster


def connect(url: str, cluster: bool = False, **options: Any) -> Any:
    """An asyncio client of the Redis (or, with ``cluster``, the Redis Cluster
    whose seed node) ``url`` names: redis-py's ``Redis`` or ``RedisCluster``,
    which route each command to the node holding its key's slot."""
    url, cluster = cluster_target(url, cluster)
    if cluster:
        # the cluster client retries a command on another node itself
        options.pop("retry_on_timeout", None)
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


#: a command's place in a batch bound for a Redis Cluster: (hash slot of its
#: key, the key, offset of its end in the batch's data, its argument count,
#: whether it is an XADD: a notification to another node)
Segment = tuple[int, str, int, int, bool]


class _Batch:
    __slots__ = ("data", "args", "future", "closed_at", "segments")

    def __init__(
        self,
        data: bytearray,
        args: int,
        future: asyncio.Future[None],
        closed_at: float,
        segments: list[Segment] | None,
    ) -> None:
        #: the encoded script arguments and how many there are
        self.data = data
        self.args = args
        self.future = future
        self.closed_at = closed_at
        #: Redis Cluster: where each command's key lives
        self.segments = segments


class RedisStore:
    """A ``base.Store`` on Redis (redis-py's asyncio client)."""

    durable = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "shardmq",
        shard_id: int = 0,
        workers: int = 1,
        connect_timeout: float = 10.0,
        store_timeout: float = 5.0,
        backlog_limit: int = 256 * 1024 * 1024,
        node: str | None = None,
        cluster: bool = False,
    ) -> None:
        self.url, self.cluster = cluster_target(url, cluster)
        self.shown_url = mask_url(url)
        self.prefix = prefix
        self.shard_id = shard_id
        self.workers = workers
        self.connect_timeout = connect_timeout
        self.store_timeout = store_timeout
        self.available = False
        self._redis: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: commands of the open batch, and its future once someone waits on it
        self._buf = bytearray()
        self._buf_args = 0
        self._buf_future: asyncio.Future[None] | None = None
        #: Redis Cluster: the slot of each command of the open batch
        self._segments: list[Segment] | None = [] if self.cluster else None
        self._scheduled = False
        #: closed batches, oldest first, not yet written
        self._batches: deque[_Batch] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._starter: asyncio.Task[None] | None = None
        self._pinger: asyncio.TimerHandle | None = None
        self._timeouts: asyncio.TimerHandle | None = None
        self._last: asyncio.Future[None] | None = None
        self._closing = False
        #: per session: the sequence numbers of its queued deliveries, oldest first
        self._queued: dict[str, deque[int]] = {}
        #: per session: its in-flight hash's key, encoded
        self._fkeys: dict[str, bytes] = {}
        #: per session: the packet ids in flight whose PUBREC arrived
        self._released: dict[str, set[int]] = {}
        self._seq = 0
        #: a message packed once per batch, however many sessions it goes to
        self._packed: dict[int, tuple[Message, bytes]] = {}
        self.outage_started: float | None = None
        #: bytes of unwritten batches kept while Redis is unreachable; past
        #: ``backlog_limit`` they are dropped and, once Redis is back, the shard
        #: rewrites everything through ``resync`` instead of replaying them
        self.backlog_limit = backlog_limit
        self._backlog = 0
        self._resync_needed = False
        self.resync: Callable[[], int] | None = None
        #: called as each batch closes, to add what it should carry (the
        #: cluster's stream entries for the loop iteration, ``cluster/streams.py``)
        self.before_close: Callable[[], None] | None = None
        #: cluster: the node whose session index this store keeps; nodes share
        #: the session keys (one client id, one session) but not the indexes
        self._index_prefix = f"{prefix}:shard" if node is None else f"{prefix}:shard:{node}"
        self._shards_key = f"{prefix}:shards" if node is None else f"{prefix}:shards:{node}"

    # -- keys ------------------------------------------------------------------------

    def _key(self, client_id: str, part: str) -> str:
        return f"{self.prefix}:s:{{{client_id}}}:{part}"

    def _keys(self, client_id: str) -> list[str]:
        return [self._key(client_id, p) for p in ("h", "sub", "q", "f", "r", "i")]

    def _index(self, shard: int) -> str:
        return f"{self._index_prefix}:{shard}"

    @property
    def _retained_key(self) -> str:
        return f"{self.prefix}:retained"

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        self._client()
        assert self._redis is not None
        deadline = time.monotonic() + self.connect_timeout
        delay = BACKOFF_MIN
        while True:
            try:
                await asyncio.wait_for(self._redis.ping(), self.store_timeout)
                break
            except UNREACHABLE as exc:
                if time.monotonic() + delay > deadline:
                    await self._redis.aclose()
                    self._redis = None
                    raise StoreUnavailable(
                        f"cannot reach Redis at {self.shown_url} within "
                        f"{self.connect_timeout:g} s: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._begin()

    def open_later(self, ready: Callable[[StoredState], None]) -> None:
        """For a worker restarted while Redis is away: serve at once (with
        ``available`` False, so persistent sessions are refused), and once Redis
        answers load what was saved, hand it to ``ready`` and start writing."""
        self._client()
        assert self._loop is not None
        self._starter = self._loop.create_task(self._start_later(ready))

    async def _start_later(self, ready: Callable[[StoredState], None]) -> None:
        delay = BACKOFF_MIN
        while not self._closing:
            assert self._redis is not None
            try:
                await asyncio.wait_for(self._redis.ping(), self.store_timeout)
                state = await self.load()
            except (*UNREACHABLE, StoreUnavailable):
                # retried often: until this worker has loaded its sessions, a
                # claim of one of them from another worker finds nothing
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MIN * 4)
                continue
            ready(state)
            self._begin()
            log.warning("store: Redis at %s answers: stored sessions loaded", self.shown_url)
            return

    def _begin(self) -> None:
        assert self._loop is not None and self._wake is not None
        self.available = True
        self._writer = self._loop.create_task(self._write_batches())
        self._pinger = self._loop.call_later(PING_INTERVAL, self._ping_due)
        if self._batches:
            self._wake.set()
        log.info("store: Redis at %s, prefix %r", self.shown_url, self.prefix)

    def _client(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = asyncio.Event()
        try:
            self._redis = connect(
                self.url,
                self.cluster,
                # no timeout per reply (a batch is bounded as a whole)
                socket_timeout=None,
                socket_connect_timeout=min(self.store_timeout, self.connect_timeout),
                retry_on_timeout=False,
            )
        except (ValueError, *UNREACHABLE) as exc:
            raise StoreUnavailable(f"redis_url {self.shown_url}: {exc}") from None

    async def close(self) -> None:
        """Write what is buffered (within ``store_timeout``) and disconnect."""
        if self._loop is None:
            return
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
        self._close_batch()  # what is buffered, and what before_close adds
        if self._batches:
            assert self._wake is not None
            done = self._batches[-1].future
            try:
                await asyncio.wait_for(asyncio.shield(done), self.store_timeout)
            except (TimeoutError, StoreUnavailable):
                log.error("store: %d batches not written at shutdown", len(self._batches))
            except Exception:
                pass
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
        if self._timeouts is not None:
            self._timeouts.cancel()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._loop = None

    # -- load ----------------------------------------------------------------------------

    async def load(self) -> StoredState:
        r = self._redis
        assert r is not None
        try:
            shards = {int(s) for s in await r.smembers(self._shards_key)}
            mine = sorted(
                s for s in shards if s == self.shard_id or s % self.workers == self.shard_id
            )
            state = StoredState()
            for shard in mine:
                cids = [_text(c) for c in await r.smembers(self._index(shard))]
                state.sessions.extend(await self._load_sessions(shard, cids))
            for packed in (await r.hgetall(self._retained_key)).values():
                state.retained.append(codec.unpack_message(codec.loads(_raw(packed), RETAINED)))
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"cannot read from Redis at {self.shown_url}: {exc}") from None
        if state.sessions:
            self._seq = max(self._seq, int(time.time() * 1000))
        return state

    async def _load_sessions(self, shard: int, cids: list[str]) -> list[codec.SessionRecord]:
        r = self._redis
        assert r is not None
        out: list[codec.SessionRecord] = []
        stale: list[str] = []
        for start in range(0, len(cids), 200):
            chunk = cids[start : start + 200]
            pipe = r.pipeline(transaction=False)
            for cid in chunk:
                pipe.get(self._key(cid, "h"))
                pipe.hgetall(self._key(cid, "sub"))
                pipe.hgetall(self._key(cid, "q"))
                pipe.hgetall(self._key(cid, "f"))
                pipe.smembers(self._key(cid, "r"))
                pipe.smembers(self._key(cid, "i"))
            replies = await pipe.execute()
            for n, cid in enumerate(chunk):
                head, subs, queue, flight, released, inbound = replies[6 * n : 6 * n + 6]
                if head is None:
                    stale.append(cid)
                    continue
                body = codec.loads(head, HEADER)
                if body.get("owner") != shard:
                    stale.append(cid)  # moved to another shard since
                    continue
                out.append(self._record(body, subs, queue, flight, released, inbound))
        if stale:
            await r.srem(self._index(shard), *stale)
        return out

    async def load_session(self, client_id: str) -> dict[str, Any] | None:
        """One session as this store holds it, whoever wrote it, in the hand-over
        form (``Shard.install_session``), or None: a cluster node taking a
        session over from another node reads it here."""
        r = self._redis
        assert r is not None
        head_key, subs_key, queue_key, flight_key, released_key, inbound_key = self._keys(client_id)
        pipe = r.pipeline(transaction=False)
        pipe.get(head_key)
        pipe.hgetall(subs_key)
        pipe.hgetall(queue_key)
        pipe.hgetall(flight_key)
        pipe.smembers(released_key)
        pipe.smembers(inbound_key)
        try:
            head, subs, queue, flight, released, inbound = await pipe.execute()
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"cannot read from Redis at {self.shown_url}: {exc}") from None
        if head is None:
            return None
        body = codec.loads(head, HEADER)
        return self._body(body, subs, queue, flight, released, inbound)

    async def session_ids_of(self, node: str) -> list[tuple[int, str]]:
        """(shard, client id) of every session node ``node`` indexed: what the
        survivor adopting a dead node's sessions reads."""
        r = self._redis
        assert r is not None
        shards = sorted(int(s) for s in await r.smembers(f"{self.prefix}:shards:{node}"))
        out: list[tuple[int, str]] = []
        for shard in shards:
            for cid in await r.smembers(f"{self.prefix}:shard:{node}:{shard}"):
                out.append((shard, _text(cid)))
        return out

    async def forget_index_of(self, node: str, ids: list[tuple[int, str]]) -> None:
        """Drop ``ids`` from node ``node``'s index (its sessions moved elsewhere)."""
        r = self._redis
        assert r is not None
        pipe = r.pipeline(transaction=False)
        for shard, cid in ids:
            pipe.srem(f"{self.prefix}:shard:{node}:{shard}", cid)
        await pipe.execute()

    def session_released(self, client_id: str) -> None:
        """The session went to another node, which reads it from its keys: they
        stay; it leaves this shard's index and bookkeeping."""
        self._add(SREM, self._index(self.shard_id), client_id)
        self._forget(client_id)

    def _forget(self, client_id: str) -> None:
        """This store's bookkeeping of a session it writes no more."""
        self._queued.pop(client_id, None)
        self._fkeys.pop(client_id, None)
        self._released.pop(client_id, None)

    def _record(
        self,
        body: dict[str, Any],
        subs: dict[bytes, bytes],
        queue: dict[bytes, bytes],
        flight: dict[bytes, bytes],
        released: set[bytes],
        inbound: set[bytes],
    ) -> codec.SessionRecord:
        return codec.unpack_session(self._body(body, subs, queue, flight, released, inbound))

    def _body(
        self,
        body: dict[str, Any],
        subs: dict[bytes, bytes],
        queue: dict[bytes, bytes],
        flight: dict[bytes, bytes],
        released: set[bytes],
        inbound: set[bytes],
    ) -> dict[str, Any]:
        """A stored session's keys read back as the body ``codec.unpack_session``
        takes; this store's bookkeeping of its queue and releases set from it."""
        cid = body["cid"]
        order = sorted((int(k), v) for k, v in queue.items())
        body["subs"] = [_unpackb(v) for v in subs.values()]
        body["pending"] = [_unpackb(v) for _k, v in order]
        rel = {int(p) for p in released}
        entries = sorted((_unpackb(v), int(k)) for k, v in flight.items())
        body["inflight"] = [[pid, delivery, pid in rel] for (_seq, delivery), pid in entries]
        body["qos2"] = sorted(int(p) for p in inbound)
        self._queued[cid] = deque(seq for seq, _v in order)
        self._released[cid] = rel
        top = max([s for s, _v in order] + [s for (s, _d), _p in entries], default=0)
        self._seq = max(self._seq, top)
        return body

    # -- events ---------------------------------------------------------------------------

    def _add(self, command: bytes, key: str, *args: Any) -> None:
        """Buffer one command, encoded at once as the batch script reads it:
        the command, its argument count, the key and the arguments."""
        buf = self._buf
        buf += command
        buf += _bulk(str(1 + len(args)))
        buf += _bulk(key)
        for arg in args:
            buf += _bulk(arg)
        self._buf_args += 3 + len(args)
        if self._segments is not None:
            self._segments.append(
                (key_slot(key.encode()), key, len(buf), 3 + len(args), command == XADD)
            )
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._close_batch)

    def _add_many(self, command: bytes, key: str, args: list[Any], step: int) -> None:
        """A command with many arguments, in chunks of ``step`` (the script's
        ``unpack`` has a bounded stack)."""
        for start in range(0, len(args), step):
            self._add(command, key, *args[start : start + step])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _delivery(self, delivery: Delivery) -> bytes:
        msg, qos, retain, ids = delivery
        cached = self._packed.get(id(msg))
        if cached is None or cached[0] is not msg:
            cached = (msg, msgpack.packb(codec.pack_message(msg), use_bin_type=True))
            self._packed[id(msg)] = cached
        # [packed message, qos, retain, ids] with the message spliced in as raw bytes
        return _ext_delivery(cached[1], qos, retain, ids)

    def session_saved(self, session: Session) -> None:
        cid = session.client_id
        keys = self._keys(cid)
        self._add(DEL, keys[0], *keys[1:])
        self._add(SET, keys[0], self._header(session))
        if session.subscriptions:
            args: list[Any] = []
            for rec in codec.subscription_records(session):
                args += [rec[0], _packb(list(rec))]
            self._add_many(HSET, keys[1], args, CHUNK)
        seqs: deque[int] = deque()
        if session.pending:
            args = []
            for delivery in session.pending:
                seq = self._next_seq()
                seqs.append(seq)
                args += [seq, self._delivery(delivery)]
            self._add_many(HSET, keys[2], args, CHUNK)
        self._queued[cid] = seqs
        released: list[int] = []
        if session.inflight:
            args = []
            for pid, out in session.inflight.items():
                args += [pid, self._flight_value(self._next_seq(), out)]
                if out.released:
                    released.append(pid)
            self._add_many(HSET, keys[3], args, CHUNK)
            if released:
                self._add_many(SADD, keys[4], released, CHUNK)
        self._released[cid] = set(released)
        if session.inbound_qos2:
            self._add_many(SADD, keys[5], sorted(session.inbound_qos2), CHUNK)
        self._add(SADD, self._index(self.shard_id), cid)
        self._add(SADD, self._shards_key, self.shard_id)

    def _header(self, session: Session) -> bytes:
        return codec.dumps(HEADER, codec.pack_session_header(session, self.shard_id))

    def session_updated(self, session: Session) -> None:
        self._add(
            SET,
            self._key(session.client_id, "h"),
            self._header(session),
        )

    def session_deleted(self, client_id: str) -> None:
        keys = self._keys(client_id)
        self._add(DEL, keys[0], *keys[1:])
        self._add(SREM, self._index(self.shard_id), client_id)
        self._forget(client_id)

    def subscription_added(self, session: Session, full_filter: str, sub: Subscription) -> None:
        rec = [
            full_filter,
            sub.qos,
            sub.no_local,
            sub.retain_as_published,
            sub.retain_handling,
            sub.identifier,
        ]
        self._add(HSET, self._key(session.client_id, "sub"), full_filter, _packb(rec))

    def subscription_removed(self, session: Session, full_filter: str) -> None:
        self._add(HDEL, self._key(session.client_id, "sub"), full_filter)

    def retained_set(self, message: Message) -> None:
        value = codec.dumps(RETAINED, codec.pack_message(message))
        self._add(HSET, self._retained_key, message.topic, value)

    def retained_deleted(self, topic: str) -> None:
        self._add(HDEL, self._retained_key, topic)

    # SessionJournal: the queue and flight state

    def queued(self, session: Session, delivery: Delivery) -> None:
        seq = self._next_seq()
        self._queued.setdefault(session.client_id, deque()).append(seq)
        self._add(HSET, self._key(session.client_id, "q"), seq, self._delivery(delivery))

    def unqueued(self, session: Session) -> None:
        seqs = self._queued.get(session.client_id)
        if seqs:
            self._add(HDEL, self._key(session.client_id, "q"), seqs.popleft())

    # sent and acknowledged happen for every QoS 1/2 message to a persistent
    # session: encoded directly, the key's encoding cached per session

    def sent(self, session: Session, packet_id: int, out: Outbound) -> None:
        self._seq += 1
        value = self._flight_value(self._seq, out)
        if self._segments is not None:
            self._add(HSET, self._key(session.client_id, "f"), packet_id, value)
            return
        buf = self._buf
        buf += _HSET_3
        buf += self._flight_key(session.client_id)
        buf += _bulk_int(packet_id)
        buf += b"$%d\r\n" % len(value)
        buf += value
        buf += b"\r\n"
        self._buf_args += 5
        if not self._scheduled:
            self._schedule()

    def _flight_key(self, client_id: str) -> bytes:
        key = self._fkeys.get(client_id)
        if key is None:
            key = self._fkeys[client_id] = _bulk(self._key(client_id, "f"))
        return key

    def _schedule(self) -> None:
        if self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._close_batch)

    def released(self, session: Session, packet_id: int) -> None:
        self._released.setdefault(session.client_id, set()).add(packet_id)
        self._add(SADD, self._key(session.client_id, "r"), packet_id)

    def acknowledged(self, session: Session, packet_id: int) -> None:
        cid = session.client_id
        if self._segments is not None:
            self._add(HDEL, self._key(cid, "f"), packet_id)
        else:
            buf = self._buf
            buf += _HDEL_2
            buf += self._flight_key(cid)
            buf += _bulk_int(packet_id)
            self._buf_args += 4
            if not self._scheduled:
                self._schedule()
        released = self._released.get(cid)
        if released and packet_id in released:
            released.discard(packet_id)
            self._add(SREM, self._key(cid, "r"), packet_id)

    def inbound_added(self, session: Session, packet_id: int) -> None:
        self._add(SADD, self._key(session.client_id, "i"), packet_id)

    def inbound_released(self, session: Session, packet_id: int) -> None:
        self._add(SREM, self._key(session.client_id, "i"), packet_id)

    def _flight_value(self, seq: int, out: Outbound) -> bytes:
        """[sequence number, delivery] (``codec.pack_delivery``), the message
        packed once per batch however many sessions it is in flight to."""
        delivery = self._delivery((out.message, out.qos, out.retain, out.subscription_ids))
        return b"\x92" + _packb(seq) + delivery

    # -- writing -------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self._buf)

    def append(self, command: str, key: str, *args: Any, last: bool = False) -> None:
        """Add a command of another kind (``XADD``, ``PEXPIRE``...) to the open
        batch: it is written with the store's changes, in order, retried as
        they are. It must be safe to run twice (a batch whose reply was lost
        is written again): an ``XADD`` entry carries a number its reader
        checks. ``last`` (an ``XADD`` is so anyway): on a Redis Cluster, sent
        only once the rest of the batch is written (a record of what the rest
        did)."""
        self._add(_bulk(command), key, *args)
        if last and self._segments:
            slot, key_, end, args_, _notify = self._segments[-1]
            self._segments[-1] = (slot, key_, end, args_, True)

    def schedule(self) -> None:
        """Close the open batch at the end of this loop iteration even while it
        is empty, so that ``before_close`` can fill it."""
        if not self._scheduled:
            self._schedule()

    def flush(self) -> asyncio.Future[None]:
        """The future of the batch that holds what is buffered now (written at
        the end of this loop iteration), or of the last batch when nothing is."""
        if self._buf:
            fut = self._buf_future
            if fut is None:
                assert self._loop is not None
                fut = self._buf_future = self._loop.create_future()
            return fut
        if self._last is not None and not self._last.done():
            return self._last
        return _done(self._loop)

    def _close_batch(self) -> None:
        if self.before_close is not None:
            self.before_close()  # while _scheduled holds, its commands join this batch
        self._scheduled = False
        if not self._buf:
            return
        loop = self._loop
        assert loop is not None
        fut = self._buf_future or loop.create_future()
        self._buf_future = None
        if self._resync_needed:
            # everything is rewritten once Redis is back: nothing to keep
            _fail(fut, "store unavailable")
        else:
            self._batches.append(
                _Batch(self._buf, self._buf_args, fut, loop.time(), self._segments)
            )
            self._backlog += len(self._buf)
        self._buf = bytearray()
        self._buf_args = 0
        if self._segments is not None:
            self._segments = []
        self._packed.clear()
        self._last = fut
        if self._backlog > self.backlog_limit and not self.available:
            self._drop_backlog()
        if self._wake is not None:
            self._wake.set()
        if self._timeouts is None:
            self._timeouts = loop.call_later(self.store_timeout, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """Fail the futures of batches unwritten for ``store_timeout`` (they stay queued)."""
        self._timeouts = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for batch in self._batches:
            if now - batch.closed_at < self.store_timeout:
                break
            if not batch.future.done():
                batch.future.set_exception(StoreUnavailable("store unavailable"))
                batch.future.exception()  # retrieved: nobody else may be waiting
        for batch in self._batches:
            if not batch.future.done():
                delay = batch.closed_at + self.store_timeout - now
                self._timeouts = loop.call_later(max(delay, 0.01), self._check_timeouts)
                break

    async def _write_batches(self) -> None:
        wake = self._wake
        assert wake is not None
        delay = BACKOFF_MIN
        while True:
            if not self._batches:
                wake.clear()
                await wake.wait()
                continue
            batches: list[_Batch] = []
            args = 0
            for batch in self._batches:
                if batches and args + batch.args > MAX_ARGS:
                    break
                batches.append(batch)
                args += batch.args
            try:
                await self._execute(batches, args)
            except asyncio.CancelledError:
                raise
            except MovedError:
                # a slot moved (resharding, a failover): the slot map is
                # updated, and the batches are written again, soon
                await asyncio.sleep(BACKOFF_MIN)
                continue
            except (AskError, ClusterDownError, TryAgainError) as exc:
                # a slot migrating, a failover, a cluster forming: it passes
                self._outage(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except ResponseError as exc:
                # Redis refused a command (not an outage): retrying cannot help
                log.error("store: Redis refused a batch (%d arguments): %s", args, exc)
                for batch in batches:
                    self._batches.popleft()
                    if not batch.future.done():
                        batch.future.set_exception(StoreUnavailable(str(exc)))
                        batch.future.exception()
                continue
            except Exception as exc:  # RedisError, OSError, timeouts
                self._outage(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_MIN
            self._recovered()
            for batch in batches:
                self._batches.popleft()
                self._backlog -= len(batch.data)
                if not batch.future.done():
                    batch.future.set_result(None)

    async def _execute(self, batches: list[_Batch], args: int) -> None:
        """One EVAL of BATCH_SCRIPT over the batches' commands, encoded here and
        sent whole: redis-py's per-command packing and per-reply parsing (and
        its timeout per reply) would cost more than everything else a QoS 1
        message costs the broker."""
        r = self._redis
        assert r is not None
        if self.cluster:
            await self._execute_on_cluster(batches)
            return
        head = b"*%d\r\n$4\r\nEVAL\r\n%s$1\r\n0\r\n" % (3 + args, _bulk(BATCH_SCRIPT))
        pool = r.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self.store_timeout):
                await conn.send_packed_command([head, *(b.data for b in batches)])
                reply = await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        if isinstance(reply, ResponseError):
            raise reply

    async def _execute_on_cluster(self, batches: list[_Batch]) -> None:
        """Redis Cluster: a script may only touch the keys of one slot, so the
        batches' commands are split by slot, in order, into one EVAL per slot
        (routed by one of its keys) and the EVALs bound for one node are sent
        together. A session's keys share a slot, so each session's change is
        still applied whole. The EVALs that carry an XADD, which tells another
        node about what the rest wrote, go after the others have succeeded.
        A MOVED reply updates the slot map and the batches are written again
        (every command assigns, so writing twice changes nothing)."""
        groups: dict[int, list[Any]] = {}  # slot -> [key, parts, args, notifies]
        for batch in batches:
            assert batch.segments is not None
            data = memoryview(batch.data)
            start = 0
            for slot, key, end, args, notify in batch.segments:
                group = groups.get(slot)
                if group is None:
                    groups[slot] = [key, [data[start:end]], args, notify]
                else:
                    group[1].append(data[start:end])
                    group[2] += args
                    group[3] = group[3] or notify
                start = end
        for notify in (False, True):
            phase = [(slot, g) for slot, g in groups.items() if g[3] is notify]
            if phase:
                await self._eval_slots(phase)

    async def _eval_slots(self, groups: list[tuple[int, list[Any]]]) -> None:
        r = self._redis
        assert isinstance(r, RedisCluster)
        if not r.nodes_manager.slots_cache:
            await r.initialize()
        by_node: dict[str, tuple[Any, list[bytes | memoryview], list[int]]] = {}
        for slot, (key, parts, args, _notify) in groups:
            node = r.nodes_manager.get_node_from_slot(slot)
            head = b"*%d\r\n$4\r\nEVAL\r\n%s$1\r\n1\r\n%s" % (
                4 + args,
                _bulk(BATCH_SCRIPT),
                _bulk(key),
            )
            entry = by_node.get(node.name)
            if entry is None:
                entry = by_node[node.name] = (node, [], [0])
            entry[1].append(head)
            entry[1].extend(parts)
            entry[2][0] += 1
        replies = await asyncio.gather(
            *(self._send_to_node(node, parts, n[0]) for node, parts, n in by_node.values()),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, MovedError):
                await r.nodes_manager.move_slot(reply)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply

    async def _send_to_node(self, node: Any, parts: list[bytes | memoryview], count: int) -> None:
        """``count`` EVALs, pipelined on one connection to ``node``."""
        conn = node.acquire_connection()
        error: BaseException | None = None
        try:
            if conn.is_connected:
                # closed by a restart of that node since its last use? (the
                # check redis-py's own pool makes before handing one out)
                try:
                    stale = await conn.can_read_destructive()
                except UNREACHABLE:
                    stale = True
                if stale:
                    await conn.disconnect()
            async with asyncio.timeout(self.store_timeout):
                await conn.send_packed_command(parts)
                for _ in range(count):
                    try:
                        await conn.read_response()
                    except ResponseError as exc:  # read on: the replies are in order
                        error = error or exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        if error is not None:
            raise error

    def _outage(self, exc: BaseException) -> None:
        if self.available:
            self.available = False
            self.outage_started = time.monotonic()
            log.error(
                "store: Redis at %s unavailable: %s", self.shown_url, exc or type(exc).__name__
            )

    def _drop_backlog(self) -> None:
        """The backlog passed its limit: drop it, stop keeping changes, and
        rewrite everything when Redis is back (``_resync``)."""
        log.error(
            "store: %d bytes unwritten while Redis at %s is unavailable (limit %d): "
            "dropped; every session and retained message is rewritten once it is back",
            self._backlog,
            self.shown_url,
            self.backlog_limit,
        )
        for batch in self._batches:
            _fail(batch.future, "store unavailable")
        self._batches.clear()
        self._backlog = 0
        self._resync_needed = True

    def _resync(self) -> None:
        """Redis is back after the backlog was dropped: this shard's index and the
        retained hash are rebuilt from what the shard holds now (sessions that
        ended meanwhile are no longer listed, so never loaded again)."""
        if not self._resync_needed:
            return
        self._resync_needed = False
        self._queued.clear()
        self._released.clear()
        self._add(DEL, self._index(self.shard_id))
        self._add(DEL, self._retained_key)
        count = self.resync() if self.resync is not None else 0
        log.warning("store: rewrote %d sessions and the retained messages to Redis", count)

    def _recovered(self) -> None:
        if self._resync_needed and self._loop is not None:
            self._loop.call_soon(self._resync)
        if not self.available:
            self.available = True
            took = 0.0 if self.outage_started is None else time.monotonic() - self.outage_started
            log.warning(
                "store: Redis at %s reachable again after %.1f s; %d batches written",
                self.shown_url,
                took,
                len(self._batches),
            )

    def _ping_due(self) -> None:
        self._pinger = None
        if self._closing or self._loop is None:
            return
        if self._batches:  # the writer finds out by writing
            self._pinger = self._loop.call_later(PING_INTERVAL, self._ping_due)
            return
        self._loop.create_task(self._ping())

    async def _ping(self) -> None:
        try:
            assert self._redis is not None
            await asyncio.wait_for(self._redis.ping(), self.store_timeout)
        except Exception as exc:
            self._outage(exc)
        else:
            self._recovered()
        if not self._closing and self._loop is not None:
            self._pinger = self._loop.call_later(PING_INTERVAL, self._ping_due)


# -- helpers ---------------------------------------------------------------------------------


def _bulk(value: Any) -> bytes:
    """One RESP bulk string."""
    if isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes | bytearray):
        value = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _bulk_int(value: int) -> bytes:
    digits = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(digits), digits)


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _ext_delivery(packed_message: bytes, qos: int, retain: bool, ids: list[int] | None) -> bytes:
    """A packed ``codec.pack_delivery`` list built around an already packed message."""
    return b"\x94" + packed_message + _packb(qos) + _packb(retain) + _packb(ids)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _fail(fut: asyncio.Future[None], why: str) -> None:
    if not fut.done():
        fut.set_exception(StoreUnavailable(why))
        fut.exception()  # retrieved here: waiters read it themselves


def _done(loop: asyncio.AbstractEventLoop | None) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = (loop or asyncio.get_event_loop()).create_future()
    fut.set_result(None)
    return fut

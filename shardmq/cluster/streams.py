"""Routing between nodes over Redis Streams: one worker process's link to the others.

Theory of operation
-------------------
Every worker process of every node runs one :class:`NodeLink`. Besides the
membership keys (``nodes.py``) it uses, with ``P`` the ``redis_prefix``:

==============================  ======  ============================================
``P:stream:<node id>``          stream  what the other nodes send this node: one
                                        entry per sending process per loop iteration
                                        (``messages.N_*`` frames), ``MAXLEN ~``
                                        :data:`STREAM_MAXLEN` entries
``P:read:<node id>``            hash    worker -> id of the last entry of the
                                        node's stream that worker applied
``P:interest:<node>:<worker>``  hash    full filter -> how many of that process's
                                        sessions hold it; field ``""`` (never a
                                        filter [MQTT-4.7.3-1]) -> [epoch, version]
==============================  ======  ============================================

Sending. Frames bound for a node collect in one buffer per destination during
a loop iteration. As the redis store closes the iteration's batch
(``RedisStore.before_close``) each buffer becomes one ``XADD`` appended to that
batch, so one ``EVAL`` carries the store's writes and every node's entries,
written in order and retried as the store's are (``storage/redis.py``; on a
Redis Cluster the batch is split by slot, and the scripts carrying the
``XADD`` commands go once the rest is written). A publish goes once to each
node whose interest matches (one trie match), never once per remote
subscriber. A batch resent after its reply was lost adds its entries twice;
each entry carries a number that grows per sending process and destination,
and the reader drops one it has seen.

Acknowledgements. A QoS 1/2 PUBLISH forwarded to another node, and a retained
change (sent to every node), make :meth:`stored` return the future of the batch
that will carry them; the connection sends PUBACK/PUBREC once it completes, and
0x80 "store unavailable" if the batch is not written within ``store_timeout``.
Once acknowledged, a message is in the destination's stream.

Receiving. One task per process ``XREAD BLOCK``s its node's stream from the last
entry id it read, kept in memory: after a lost connection it reads on from
there, so nothing added meanwhile is missed (unless ``STREAM_MAXLEN`` entries
came in between: then the loss is logged). It routes each message to its own
connections only (``route_local``, never forwarding it again) and never waits on
delivery, so a slow client cannot make it fall behind. With ``--workers N``
every worker of a node reads the whole stream and delivers to its own
connections: a message reaches a node once in Redis and is read N times, but no
worker waits on another, a worker restarting loses nothing for the others,
and there is no extra hop through the Unix-socket links.

Resuming. A process records the id of the last entry it applied in
``P:read:<node id>`` (field: its worker number) in the next store batch,
which also holds what applying the entries stored (queued messages,
messages in flight), so the two are written together; it never sends a
batch of its own for it: while no batch goes, the stored sessions did not
change (on a Redis Cluster,
where they live in different slots, the record goes after the rest: a
process killed in between delivers an entry twice, never loses one). A process that starts
(a worker the supervisor restarted, a node started again) reads its stream on
from there, before it links up with its node's other workers so that none of
its sessions moves meanwhile (``catch_up``): the messages, shared deliveries and
retained changes of those entries go to the sessions it loaded; their interest
deltas, barriers, takeovers and goodbyes are stale and skipped. A process with
no record reads from the end the stream had before it announced itself.

Interest. Each process replicates the filters its sessions hold (``$SYS``
filters stay on their node) to every other node: for a plain filter a delta
(``N_SUB_ADD``/``N_SUB_DEL``) when its count goes 0 -> 1 or back, for a shared
``$share/g/f`` one an ``N_SHARE`` with its member count at every change,
numbered by the process's epoch (drawn at start) and version (one up per
delta), in each node's stream, so a delta is ordered with the barrier that
follows it (a dedicated interest stream would not be). The full copy is the
process's interest hash, written in the same batch as its deltas. A receiver
(``interest.NodeInterest``) reloads the hash when a delta does not follow the
last one it applied, when told to (``N_INTEREST``: a process started, or met
a node it did not know), when it meets a node, every :data:`RESYNC_INTERVAL`
seconds if the hash's version differs from its own, and at start. A node whose
heartbeat is gone is dropped with all its interest; one that stops gracefully
says so (``N_BYE``).

Shared subscriptions. A publisher picks one member of each matching group
among all members of the cluster, round-robin weighted by each process's
count (``Shard._route_shared_everywhere``); one held by another node's process
gets an ``N_SHARE_PUBLISH`` naming that worker, which delivers it to one of
its members (``Shard.deliver_shared``). So each message reaches one member
per group, and a QoS 1/2 one is acknowledged once it is in that node's stream.

Barriers. :meth:`barrier` sends ``N_PING`` behind everything sent to each live
node; every worker of that node answers ``N_PONG`` once it has applied what came
before. SUBACK waits for it, so once a client holds its SUBACK a publish on any
node reaches it; so does the acknowledgement of a retained QoS 1/2 PUBLISH, so
a subscriber on any node then sees it. A barrier waits for the batch carrying
its PINGs, then at most :data:`BARRIER_TIMEOUT` for the answers.

Admin. The admin API of a node (``worker/admin.py``) asks the other nodes with
an ``N_ADMIN_ASK`` in each live node's stream; every process of that node reads
it and answers for its own clients with an ``N_ADMIN`` naming the asking
worker, so the asker knows whose answers are still missing when it stops
waiting.

Retained. A retained change is sent to every live node with the time it was
made; a node applies it to its in-memory retained store unless it holds a
newer one for the topic. The publishing node's store writes ``P:retained``, and
a node starting later loads it from there.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgpack
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import ConfigError
from ..protocol.session import Message
from ..storage.base import StoreUnavailable
from ..storage.redis import UNREACHABLE, RedisStore, connect, mask_url
from . import messages as m
from .fabric import FabricShard
from .interest import NodeInterest, Process
from .nodes import Membership, refused
from .owners import Owners

log = logging.getLogger("shardmq.nodes")

#: entries kept in a node's stream (``XADD ... MAXLEN ~``): a reader this far
#: behind (disconnected while this many loop iterations' worth of entries came
#: in) loses the oldest; each entry holds one sending process's frames of one
#: loop iteration
STREAM_MAXLEN = 100_000
#: the frames of an entry from before a process joined that still apply (its
#: messages, deliveries and retained changes; the rest is stale: ``NodeLink._read``)
REPLAYED = frozenset({m.N_PUBLISH, m.N_SHARE_PUBLISH, m.N_DELIVER, m.N_RETAIN, m.N_RETAINED_FULL})
#: entries per XREAD, and how long one blocks (ms)
READ_COUNT = 256
BLOCK_MS = 2000
#: seconds between version checks of the other processes' interest hashes
RESYNC_INTERVAL = 30.0
#: seconds a barrier waits for its answers once its PINGs are written
BARRIER_TIMEOUT = 2.0
#: seconds between reads of a dead node's stream while following it (follow_dead)
FOLLOW_POLL = 0.05
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

_packb = msgpack.Packer(use_bin_type=True).pack
_INTEREST = _packb([m.N_INTEREST])
_BYE = _packb([m.N_BYE])


def _nothing() -> None:
    pass


class NodeLink:
    """The Redis side of one worker process of a node (see the module docstring)."""

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        node_id: str,
        worker: int,
        workers: int,
        token: str,
        node_timeout: float,
        store_timeout: float,
        cluster: bool = False,
    ) -> None:
        self.url = url
        #: ``url`` names a Redis Cluster (``storage/redis.py``'s ``connect``)
        self.cluster = cluster
        self.prefix = prefix
        self.node_id = node_id
        self.worker = worker
        self.workers = workers
        self.node_timeout = node_timeout
        self.store_timeout = store_timeout
        self.membership = Membership(prefix, node_id, token, workers, node_timeout)
        #: this process's incarnation: its interest versions count from here
        self.epoch = random.getrandbits(62)
        self.interest = NodeInterest()
        #: node -> filter -> processes holding it (the interest's own table, read
        #: by ``forward`` so that a publish nobody elsewhere wants costs one test)
        self._held = self.interest.nodes.by_shard
        #: the other live nodes -> their worker count
        self.live: dict[str, int] = {}
        #: this process: filter (plain or shared) -> sessions holding it
        self.local_counts: dict[str, int] = {}
        #: called when the other nodes' shared groups may have changed
        #: (``NodeFabric`` keeps its ``remote_shared`` flag with it)
        self.shared_changed: Callable[[], None] = _nothing
        self._dirty: set[str] = set()
        self._version = 0
        #: destination node -> frames of this loop iteration
        self._out: dict[str, bytearray] = {}
        self._scheduled = False
        #: destination node -> number of the last entry sent to it
        self._numbers: dict[str, int] = {}
        #: number of the last message forwarded (``N_PUBLISH``)
        self._mid = 0
        #: messages a replay for adopted sessions delivered ((node, worker,
        #: epoch, number) of each), and the id of the entry of this node's
        #: stream after which none of them can come in any more (``replay_adopted``)
        self._replayed: set[tuple[str, int, int, int]] = set()
        self._replayed_until = (0, 0)
        self._adopted: set[str] = set()
        #: the future of the batch that will carry this iteration's QoS 1/2
        #: messages and retained changes
        self._durable: asyncio.Future[None] | None = None
        #: a barrier whose batch failed: what the acknowledgement after it gets
        self._refused: asyncio.Future[None] | None = None
        #: sending process -> (epoch, number of the last entry read from it)
        self._seen: dict[Process, tuple[int, int]] = {}
        #: barrier token -> what it waits for
        self._barriers: dict[int, _Barrier] = {}
        self._token = 0
        #: node -> its workers that said goodbye (N_BYE)
        self._leaving: dict[str, set[int]] = {}
        #: processes whose interest hash must be reloaded
        self._stale: set[Process] = set()
        self._stale_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        #: redis-py ``Redis`` or, on a Redis Cluster, ``RedisCluster``
        self._ctl: Any = None
        self._reader: Any = None
        self._closing = False
        self._joined = False
        #: the last entry ``catch_up`` applied (None: it did not run)
        self._caught_up: bytes | None = None
        #: the last entry of this node's stream applied, and the last one
        #: recorded in ``P:read:<node>``
        self._applied = b""
        self._marked = b""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shard: FabricShard
        self.store: RedisStore
        self.retained_stamps: dict[str, float] = {}
        #: (live nodes, $SYS figures summed over every worker of every live
        #: node), read at each beat by worker 0 (``P:sys:<node>`` hashes)
        self.cluster_figures: tuple[int, dict[str, int]] | None = None
        #: the client ids this process owns in the cluster (``owners.py``)
        self.owners = Owners(self)
        #: traffic with the other nodes (``/metrics``): frames queued for them,
        #: bytes of the entries handed to Redis, bytes of the entries read
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        #: what this process answers N_ADMIN_ASK with: (op, args) -> result
        #: (set by the broker; ``worker/admin.py``)
        self.admin_source: Callable[[str, dict[str, Any]], Any] | None = None
        #: admin token -> (processes still to answer, answers, future)
        self._admin_asks: dict[int, tuple[set[Process], list[Any], asyncio.Future[None]]] = {}

    # -- keys ------------------------------------------------------------------------

    def stream_key(self, node_id: str) -> str:
        return f"{self.prefix}:stream:{node_id}"

    def interest_key(self, proc: Process) -> str:
        return f"{self.prefix}:interest:{proc[0]}:{proc[1]}"

    @property
    def read_key(self) -> str:
        """Hash: worker -> id of the last entry of this node's stream it applied."""
        return f"{self.prefix}:read:{self.node_id}"

    # -- lifecycle -------------------------------------------------------------------

    async def start(
        self, shard: FabricShard, store: RedisStore, retained_stamps: dict[str, float]
    ) -> None:
        """Join the other nodes: claim the heartbeat (ConfigError if another live
        node holds this id), publish this process's interest, load theirs, and
        start reading. A worker restarted while Redis is away joins once it
        answers."""
        self._open(shard, store, retained_stamps)
        store.before_close = self._close_batch
        if store.available:
            try:
                await self._join()
            except ConfigError:
                await self._close_clients()
                raise
        else:
            assert self.loop is not None
            self._tasks.append(self.loop.create_task(self._join_later()))

    async def catch_up(
        self, shard: FabricShard, store: RedisStore, retained_stamps: dict[str, float]
    ) -> None:
        """Before the worker links up with the others of its node (so that none
        of its sessions moves meanwhile): apply what came into the node's
        stream after the last entry an earlier life of this process applied
        (``_resume_point``), to the sessions it loaded from the store. The
        heartbeat is claimed first: a node refused for a live id changes
        nothing. With Redis away it is left to the reader (``_read``)."""
        self._open(shard, store, retained_stamps)
        if not store.available:
            return
        try:
            held, _live = await self.membership.beat(self._ctl)
            if not held:
                raise refused(self.node_id, self.membership.key)
            end = await self._stream_end()
            last = await self._resume_point(end)
            key = self.stream_key(self.node_id)
            while _entry_id(last) < _entry_id(end):
                entries: Any = await self._ctl.xrange(
                    key, min=b"(" + last, max=end, count=READ_COUNT
                )
                if not entries:
                    break
                for entry_id, fields in entries:
                    last = _raw(entry_id)
                    self._apply(fields, last, replay=True)
            # with what applying them stored, as ``_close_batch`` records it
            self._applied = self._marked = last
            store.append("HSET", self.read_key, str(self.worker), last, last=True)
            self._caught_up = last
        except UNREACHABLE as exc:
            log.warning("node %s: stream not read on yet: %s", self.node_id, exc)

    def _open(
        self, shard: FabricShard, store: RedisStore, retained_stamps: dict[str, float]
    ) -> None:
        if self._ctl is not None:
            return
        self.loop = asyncio.get_running_loop()
        self.shard = shard
        self.store = store
        self.retained_stamps = retained_stamps
        self._stale_wake = asyncio.Event()
        name = f"shardmq:{self.node_id}:{self.worker}"
        self._ctl = connect(
            self.url,
            self.cluster,
            socket_timeout=self.store_timeout,
            socket_connect_timeout=self.store_timeout,
            client_name=f"{name}:ctl",
        )
        self._reader = connect(
            self.url,
            self.cluster,
            socket_timeout=None,  # XREAD BLOCK: each read is bounded by a timeout of its own
            socket_connect_timeout=self.store_timeout,
            client_name=f"{name}:reader",
            retry=Retry(NoBackoff(), 0),  # _read reconnects, and logs it
        )

    async def _join(self) -> None:
        assert self._ctl is not None and self.loop is not None
        try:
            held, live = await self.membership.beat(self._ctl)
            if not held:
                raise refused(self.node_id, self.membership.key)
            end = await self._stream_end()
            if self._caught_up is not None:
                # what came after catch_up's last entry came once this process
                # had claimed its heartbeat: current, every frame applies
                start = replayed = self._caught_up
            else:
                start, replayed = await self._resume_point(end), end
        except UNREACHABLE as exc:
            raise ConfigError(
                "redis_url", f"cannot join the cluster at {mask_url(self.url)}: {exc}"
            ) from None
        self._write_interest(whole=True)
        live.pop(self.node_id, None)
        for node, workers in live.items():
            self._met(node, workers)
        # the others' interest before the first client: a publish right after
        # start goes where it should
        stale = list(self._stale)
        self._stale.clear()
        try:
            await asyncio.wait_for(self._reload(stale), self.store_timeout)
        except Exception as exc:
            log.warning(
                "node %s: interest of the other nodes not loaded yet: %s", self.node_id, exc
            )
            self._stale.update(stale)
        self._joined = True
        self.owners.check_restored()
        loop = self.loop
        self._tasks.append(loop.create_task(self._read(start, replayed)))
        self._tasks.append(loop.create_task(self._beat()))
        self._tasks.append(loop.create_task(self._reloader()))
        assert self._stale_wake is not None
        if self._stale:
            self._stale_wake.set()
        log.info(
            "node %s (worker %d) joined the cluster: %d other nodes %s",
            self.node_id,
            self.worker,
            len(self.live),
            sorted(self.live),
        )

    async def _join_later(self) -> None:
        delay = BACKOFF_MIN
        while not self._closing:
            if not self.store.available:
                # its stored sessions first: what is read on from the stream is for them
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            try:
                await self._join()
                return
            except ConfigError as exc:
                if exc.setting == "node_id":
                    log.error("%s; not joining the cluster", exc)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _resume_point(self, end: bytes) -> bytes:
        """Where this process reads from: after the last entry it applied in an
        earlier life (a worker restarted, a node started again), which its
        store batches recorded with what applying it wrote; else ``end``."""
        assert self._ctl is not None
        applied: Any = await self._ctl.hget(self.read_key, str(self.worker))
        if applied is None or _entry_id(applied) >= _entry_id(end):
            return end
        resume = _raw(applied)
        key = self.stream_key(self.node_id)
        first: Any = await self._ctl.xrange(key, count=1)
        if first and _entry_id(first[0][0]) > _entry_id(resume):
            await self._check_trimmed(key, resume)
        log.info(
            "node %s (worker %d): reading its stream on from %s, the last entry it applied",
            self.node_id,
            self.worker,
            resume.decode(),
        )
        return resume

    async def _stream_end(self) -> bytes:
        """The id of the last entry in this node's stream (where reading starts)."""
        assert self._ctl is not None
        last: Any = await self._ctl.xrevrange(self.stream_key(self.node_id), count=1)
        return _raw(last[0][0]) if last else b"0-0"

    async def stop(self) -> None:
        """Leave: stop reading, tell the others (``N_BYE``), drop the heartbeat.
        The store is closed before (it wrote what was buffered)."""
        self._closing = True
        await self.owners.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        store = getattr(self, "store", None)  # None: start never got that far
        if store is not None and store.before_close == self._close_batch:
            store.before_close = None
        for token in list(self._barriers):
            self._resolve(token)
        if self._joined and self._ctl is not None:
            try:
                async with asyncio.timeout(self.store_timeout):
                    pipe = self._ctl.pipeline(transaction=False)
                    for node in self.live:
                        pipe.xadd(
                            self.stream_key(node),
                            {"e": self._entry_for(node, _BYE)},
                            maxlen=STREAM_MAXLEN,
                            approximate=True,
                        )
                    pipe.delete(self.interest_key((self.node_id, self.worker)))
                    await pipe.execute()
                    await self.membership.leave(self._ctl)
            except Exception as exc:
                log.warning("node %s: could not say goodbye: %s", self.node_id, exc)
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self._ctl, self._reader):
            if client is not None:
                try:
                    await client.aclose()
                except Exception:
                    pass
        self._ctl = self._reader = None

    # -- sending ---------------------------------------------------------------------

    def _send(self, node: str, frame: bytes) -> None:
        self.frames_sent += 1
        buf = self._out.get(node)
        if buf is None:
            buf = self._out[node] = bytearray()
        buf += frame
        self._wake()

    def send_take(self, node: str, args: list[Any]) -> None:
        """``N_TAKE`` to a process of ``node`` (this one's own included)."""
        self._send(node, _packb([m.N_TAKE, *args]))

    def send_taken(self, node: str, args: list[Any]) -> None:
        self._send(node, _packb([m.N_TAKEN, *args]))

    def _broadcast(self, frame: bytes) -> None:
        for node in self.live:
            self._send(node, frame)

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.store.schedule()

    def _mark_durable(self) -> asyncio.Future[None]:
        fut = self._durable
        if fut is None:
            assert self.loop is not None
            fut = self._durable = self.loop.create_future()
            self._wake()
        return fut

    def _entry_for(self, node: str, frames: bytes) -> bytes:
        number = self._numbers.get(node, 0) + 1
        self._numbers[node] = number
        head: bytes = _packb(
            [m.NODE_FORMAT, self.node_id, self.worker, self.workers, self.epoch, number]
        )
        return head + frames

    def _close_batch(self) -> None:
        """The store closes its batch: this iteration's entries join it."""
        self._scheduled = False
        store = self.store
        if self._applied != self._marked:
            # the read mark rides with a batch that is written anyway (one
            # holding what applying the entries stored, if they stored
            # anything): while no batch goes, the stored sessions did not
            # change, so entries read again after a restart do what they did
            self._marked = self._applied
            store.append("HSET", self.read_key, str(self.worker), self._applied, last=True)
        if self._dirty:
            self._write_interest()
        out = self._out
        if out:
            self._out = {}
            for node, frames in out.items():
                entry = self._entry_for(node, bytes(frames))
                self.bytes_sent += len(entry)
                store.append(
                    "XADD",
                    self.stream_key(node),
                    "MAXLEN",
                    "~",
                    STREAM_MAXLEN,
                    "*",
                    "e",
                    entry,
                )
        fut = self._durable
        if fut is not None:
            self._durable = None
            _chain(store.flush(), fut)

    # -- routing -----------------------------------------------------------------------

    def forward(self, message: Message) -> int:
        """Send ``message`` once to every other node with a matching subscription."""
        if not self._held:  # no other node wants anything: one dict test
            return 0
        nodes = self.interest.nodes_for(message.topic)
        if not nodes:
            return 0
        # one number per message, whatever its destinations: a survivor that
        # replays a dead node's stream knows a copy it also got itself
        self._mid += 1
        message.nid = (self.node_id, self.worker, self.epoch, self._mid)
        frame = _packb([m.N_PUBLISH, self.shard.pack_message(message, time.time()), self._mid])
        for node in nodes:
            self._send(node, frame)
        if message.qos:
            self._mark_durable()
        return len(nodes)

    def forward_shared(
        self, proc: Process, message: Message, group: str, topic_filter: str
    ) -> None:
        """``message`` for one member of ``$share/group/topic_filter`` held by ``proc``."""
        packed = self.shard.pack_message(message, time.time())
        self._send(proc[0], _packb([m.N_SHARE_PUBLISH, proc[1], packed, group, topic_filter]))
        if message.qos:
            self._mark_durable()

    def deliver_to(
        self,
        proc: Process,
        client_id: str,
        message: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
    ) -> None:
        """One delivery for ``client_id``, taken over by ``proc`` (``N_DELIVER``)."""
        packed = self.shard.pack_message(message, time.time())
        frame = [m.N_DELIVER, proc[1], client_id, packed, qos, retain, ids, message.nid]
        self._send(proc[0], _packb(frame))
        if qos:
            self._mark_durable()

    def stored(self) -> asyncio.Future[None] | None:
        """The future a QoS 1/2 acknowledgement waits for (``Fabric.stored``)."""
        if self._refused is not None:
            return self._refused
        return self._durable

    def retained_changed(self, topic: str, message: Message | None, stamp: float) -> None:
        if topic.startswith("$SYS") or not self.live:
            return  # $SYS is each node's own
        packed = None if message is None else self.shard.pack_message(message, time.time())
        self._broadcast(_packb([m.N_RETAIN, topic, packed, stamp]))
        self._mark_durable()

    # -- interest ------------------------------------------------------------------------

    @staticmethod
    def _replicated(full_filter: str) -> bool:
        # $SYS stays on its node (README "Cluster"), in a shared group too
        if full_filter.startswith("$share/"):
            inner = full_filter.split("/", 2)[2]
            return not inner.startswith("$SYS")
        return not full_filter.startswith("$SYS")

    def subscription_added(self, full_filter: str) -> None:
        if not self._replicated(full_filter):
            return
        count = self.local_counts.get(full_filter, 0) + 1
        self.local_counts[full_filter] = count
        self._dirty.add(full_filter)
        if full_filter.startswith("$share/"):
            self._version += 1
            self._broadcast(_packb([m.N_SHARE, self._version, full_filter, count]))
        elif count == 1:
            self._version += 1
            self._broadcast(_packb([m.N_SUB_ADD, self._version, full_filter]))
        if self.loop is not None:
            self._wake()

    def subscription_removed(self, full_filter: str) -> None:
        if not self._replicated(full_filter):
            return
        count = self.local_counts.get(full_filter, 0) - 1
        if count > 0:
            self.local_counts[full_filter] = count
        else:
            self.local_counts.pop(full_filter, None)
        self._dirty.add(full_filter)
        if full_filter.startswith("$share/"):
            # every member counts: the others weigh their picks by it
            self._version += 1
            self._broadcast(_packb([m.N_SHARE, self._version, full_filter, max(count, 0)]))
        elif count == 0:
            self._version += 1
            self._broadcast(_packb([m.N_SUB_DEL, self._version, full_filter]))
        if self.loop is not None:
            self._wake()

    def _write_interest(self, whole: bool = False) -> None:
        """This process's interest hash, in the batch that carries its deltas."""
        store = self.store
        key = self.interest_key((self.node_id, self.worker))
        counts = self.local_counts
        names = list(counts) if whole else list(self._dirty)
        self._dirty.clear()
        if whole:
            store.append("DEL", key)
        held: list[Any] = []
        gone: list[str] = []
        for full_filter in names:
            count = counts.get(full_filter)
            if count:
                held += [full_filter, count]
            else:
                gone.append(full_filter)
        for start in range(0, len(held), 512):
            store.append("HSET", key, *held[start : start + 512])
        for start in range(0, len(gone), 256):
            store.append("HDEL", key, *gone[start : start + 256])
        store.append("HSET", key, "", _packb([self.epoch, self._version]))

    def rewritten(self) -> None:
        """The store dropped what it could not write and rewrote everything: the
        entries in it are gone too, so the others reload this process's interest
        and get its retained messages again."""
        self._write_interest(whole=True)
        self._broadcast(_INTEREST)
        now = time.time()
        items = [
            [topic, self.shard.pack_message(msg, now), self.retained_stamps.get(topic, 0.0)]
            for topic, msg in self.shard.retained.items()
            if not topic.startswith("$SYS")
        ]
        if items:
            self._broadcast(_packb([m.N_RETAINED_FULL, items]))
        self._wake()

    def _met(self, node: str, workers: int) -> None:
        """A node this process did not know is alive: it reloads our interest, we
        reload its."""
        if node not in self.live:
            log.info("node %s: node %s is alive (%d workers)", self.node_id, node, workers)
        self.live[node] = workers
        self._leaving.pop(node, None)
        self._send(node, _INTEREST)
        for worker in range(workers):
            self._stale.add((node, worker))
        if self._stale_wake is not None:
            self._stale_wake.set()

    def _lost(self, node: str) -> None:
        log.warning(
            "node %s: node %s is gone (its heartbeat expired or it left): its interest is dropped",
            self.node_id,
            node,
        )
        self.live.pop(node, None)
        self._leaving.pop(node, None)
        self.interest.drop_node(node)
        self.shared_changed()
        if not self._closing:
            self.owners.node_lost(node)
        self._out.pop(node, None)
        for proc in [p for p in self._seen if p[0] == node]:
            del self._seen[proc]
        for token, barrier in list(self._barriers.items()):
            barrier.waiting = {p for p in barrier.waiting if p[0] != node}
            if not barrier.waiting and barrier.written:
                self._answered(token)

    async def _reload(self, procs: list[Process]) -> None:
        """Read the interest hashes of ``procs`` (one round trip) and apply them."""
        if not procs:
            return
        assert self._ctl is not None
        pipe = self._ctl.pipeline(transaction=False)
        for proc in procs:
            pipe.hgetall(self.interest_key(proc))
        replies = await pipe.execute()
        for proc, fields in zip(procs, replies, strict=True):
            if proc[0] not in self.live:
                continue  # gone meanwhile
            version = fields.pop(b"", None)
            if version is None:
                continue  # not written yet: its first entry will have us reload it
            epoch, number = msgpack.unpackb(version)
            counts = {f.decode(): int(c) for f, c in fields.items()}
            self.interest.load(proc, epoch, number, counts)
        self.shared_changed()

    async def _reloader(self) -> None:
        wake = self._stale_wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            procs = list(self._stale)
            self._stale.clear()
            try:
                await self._reload(procs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node %s: cannot reload interest: %s", self.node_id, exc)
                self._stale.update(procs)
                await asyncio.sleep(BACKOFF_MAX)
                wake.set()

    async def _check_versions(self) -> None:
        """The periodic resync: reload every process whose hash moved on without us."""
        assert self._ctl is not None
        procs = [(node, w) for node, workers in self.live.items() for w in range(workers)]
        if not procs:
            return
        pipe = self._ctl.pipeline(transaction=False)
        for proc in procs:
            pipe.hget(self.interest_key(proc), "")
        for proc, version in zip(procs, await pipe.execute(), strict=True):
            if version is None:
                continue
            epoch, number = msgpack.unpackb(version)
            if self.interest.versions.get(proc) != (epoch, number):
                self._stale.add(proc)
        if self._stale and self._stale_wake is not None:
            self._stale_wake.set()

    # -- $SYS figures -------------------------------------------------------------------

    def publish_stats(self, figures: dict[str, int]) -> None:
        """This process's $SYS figures into ``P:sys:<node>`` (field: worker), in
        the next batch; the key lapses if no worker of the node refreshes it."""
        if not self._joined or self.loop is None:
            return
        key = f"{self.prefix}:sys:{self.node_id}"
        self.store.append("HSET", key, str(self.worker), _packb(figures))
        self.store.append("PEXPIRE", key, int(self.node_timeout * 3000))
        self._wake()

    async def _read_figures(self, nodes: list[str]) -> None:
        assert self._ctl is not None
        pipe = self._ctl.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(f"{self.prefix}:sys:{node}")
        sums: dict[str, int] = {}
        for fields in await pipe.execute():
            for packed in fields.values():
                for name, value in msgpack.unpackb(packed).items():
                    sums[name] = sums.get(name, 0) + value
        self.cluster_figures = (len(nodes), sums)

    # -- the admin API across nodes ---------------------------------------------------------

    async def ask_admin(
        self, op: str, args: dict[str, Any], timeout: float
    ) -> tuple[list[Any], list[str]]:
        """Every process of every other live node answers ``op`` for its own
        clients (``admin_source``): their answers, and the nodes of which some
        process did not answer within ``timeout``."""
        if not self._joined or self.loop is None or not self.live:
            return [], []
        self._token += 1
        token = self._token
        waiting = {(node, w) for node, workers in self.live.items() for w in range(workers)}
        answers: list[Any] = []
        done: asyncio.Future[None] = self.loop.create_future()
        self._admin_asks[token] = (waiting, answers, done)
        frame = _packb([m.N_ADMIN_ASK, token, op, args])
        for node in list(self.live):
            self._send(node, frame)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            pass
        finally:
            self._admin_asks.pop(token, None)
        return answers, sorted({node for node, _w in waiting})

    def _admin_asked(self, node: str, worker: int, token: int, op: str, args: Any) -> None:
        source = self.admin_source
        result = None
        if source is not None:
            try:
                result = source(op, args)
            except Exception:
                log.exception("node %s: admin %r from %s failed", self.node_id, op, node)
        self._send(node, _packb([m.N_ADMIN, worker, token, result]))

    def _admin_answered(self, proc: Process, token: int, result: Any) -> None:
        entry = self._admin_asks.get(token)
        if entry is None or proc not in entry[0]:
            return  # late, or written twice
        waiting, answers, done = entry
        waiting.discard(proc)
        answers.append(result)
        if not waiting and not done.done():
            done.set_result(None)

    # -- membership ------------------------------------------------------------------------

    async def _beat(self) -> None:
        assert self._ctl is not None and self.loop is not None
        loop = self.loop
        interval = self.node_timeout / 3
        resync_at = loop.time() + RESYNC_INTERVAL
        failing = False
        lost = False
        pause = interval
        while True:
            await asyncio.sleep(pause)
            # a beat that failed is tried again soon: one more miss may be the
            # node_timeout the others count
            pause = min(interval, BACKOFF_MIN * 2)
            try:
                held, live = await self.membership.beat(self._ctl)
                if loop.time() >= resync_at:
                    resync_at = loop.time() + RESYNC_INTERVAL
                    await self._check_versions()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.error("node %s: heartbeat not written: %s", self.node_id, exc)
                    failing = True
                continue
            pause = interval
            if failing:
                log.warning("node %s: heartbeat written again", self.node_id)
                failing = False
            if not held:
                if not lost:
                    log.error(
                        "node %s: its heartbeat lapsed and another process holds the id now",
                        self.node_id,
                    )
                    lost = True
                continue
            lost = False
            if self.worker == 0:
                try:
                    await self._read_figures(sorted(live))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("node %s: cluster figures not read: %s", self.node_id, exc)
            live.pop(self.node_id, None)
            for node in list(self.live):
                if node not in live:
                    self._lost(node)
            for node, workers in live.items():
                if node not in self.live:
                    self._met(node, workers)
                else:
                    self.live[node] = workers

    # -- barriers --------------------------------------------------------------------------

    def barrier(self, local: Awaitable[None] | None) -> asyncio.Future[None] | None:
        """Resolves once every worker of every live node has applied what this
        process sent it before, and ``local`` (this node's other workers) is
        done; None when there is no other node. The waiter is the one to
        resume first once it resolves (see ``_resolve``)."""
        if not self.live or not self.store.available:
            # alone, or Redis is away: nothing to wait for (what this process
            # sent reaches the others once Redis is back, before what follows)
            return None
        loop = self.loop
        assert loop is not None
        self._token += 1
        token = self._token
        waiting = {(node, w) for node, workers in self.live.items() for w in range(workers)}
        frame = _packb([m.N_PING, token])
        for node in self.live:
            self._send(node, frame)
        written = self._mark_durable()  # the batch with the PINGs and all before them
        done: asyncio.Future[None] = loop.create_future()
        barrier = self._barriers[token] = _Barrier(waiting, done, 1 if local is None else 2)
        written.add_done_callback(lambda fut: self._pings_written(token, fut))
        # Redis may have gone away with nobody noticing yet: once the store
        # knows, a barrier whose PINGs are still unwritten waits no longer
        barrier.timer = loop.call_later(BARRIER_TIMEOUT, self._unwritten, token)
        if local is not None:
            asyncio.ensure_future(local).add_done_callback(lambda _f: self._part_done(token))
        return done

    def _pings_written(self, token: int, fut: asyncio.Future[None]) -> None:
        barrier = self._barriers.get(token)
        if barrier is None:
            return
        if fut.cancelled() or fut.exception() is not None:
            # the PINGs, and what came before them (a retained change), are not
            # in the streams: the acknowledgement that follows is refused
            self._resolve(token, refused=fut)
            return
        barrier.written = True
        if barrier.timer is not None:
            barrier.timer.cancel()
            barrier.timer = None
        if not barrier.waiting:
            self._answered(token)
        else:
            assert self.loop is not None
            barrier.timer = self.loop.call_later(BARRIER_TIMEOUT, self._late, token)

    def _unwritten(self, token: int) -> None:
        barrier = self._barriers.get(token)
        if barrier is None or barrier.written:
            return
        if self.store.available:
            assert self.loop is not None
            barrier.timer = self.loop.call_later(BARRIER_TIMEOUT, self._unwritten, token)
            return
        barrier.timer = None
        barrier.waiting.clear()
        self._answered(token)

    def _ponged(self, token: int, proc: Process) -> None:
        barrier = self._barriers.get(token)
        if barrier is not None:
            barrier.waiting.discard(proc)
            if not barrier.waiting and barrier.written:
                self._answered(token)

    def _late(self, token: int) -> None:
        barrier = self._barriers.get(token)
        if barrier is not None and barrier.waiting:
            log.warning(
                "node %s: a barrier was not answered in time by %s",
                self.node_id,
                sorted(barrier.waiting),
            )
            barrier.waiting.clear()
            self._answered(token)

    def _answered(self, token: int) -> None:
        barrier = self._barriers.get(token)
        if barrier is None or barrier.answered:
            return
        barrier.answered = True
        if barrier.timer is not None:
            barrier.timer.cancel()
        self._part_done(token)

    def _part_done(self, token: int) -> None:
        barrier = self._barriers.get(token)
        if barrier is not None:
            barrier.parts -= 1
            if barrier.parts == 0:
                self._resolve(token)

    def _resolve(self, token: int, refused: asyncio.Future[None] | None = None) -> None:
        barrier = self._barriers.pop(token, None)
        if barrier is None or barrier.done.done():
            return
        if barrier.timer is not None:
            barrier.timer.cancel()
        barrier.done.set_result(None)
        if refused is not None and self.loop is not None:
            # The waiter (a connection acknowledging a retained QoS 1/2 PUBLISH)
            # resumes in the callback set_result just scheduled, and asks
            # ``stored`` for the acknowledgement it sends then: until the
            # callback scheduled after it runs, it gets this failure.
            self._refused = refused
            self.loop.call_soon(self._unrefuse, refused)

    def _unrefuse(self, refused: asyncio.Future[None]) -> None:
        if self._refused is refused:
            self._refused = None

    # -- receiving -----------------------------------------------------------------------

    async def _read(self, last: bytes, replayed: bytes = b"0-0") -> None:
        """Read this node's stream from ``last`` on, for ever. Entries up to
        ``replayed`` came in before this process joined (it resumes where an
        earlier life stopped): only their messages and retained changes apply,
        their control frames are stale. After each read the id of the last
        entry goes into the store's batch, which also holds what applying the
        entries wrote (queued messages, messages in flight), so a process
        killed at any point resumes from what its stored sessions reflect."""
        reader = self._reader
        assert reader is not None
        key = self.stream_key(self.node_id)
        replay_to = _entry_id(replayed)
        delay = BACKOFF_MIN
        lost_at: float | None = None
        while True:
            try:
                async with asyncio.timeout(BLOCK_MS / 1000 + self.store_timeout):
                    reply: Any = await reader.xread({key: last}, count=READ_COUNT, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, TimeoutError
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "node %s: stream reader lost Redis (%s); it reads on from %s",
                        self.node_id,
                        exc or type(exc).__name__,
                        last.decode(),
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if lost_at is not None:
                log.warning(
                    "node %s: stream reader reconnected after %.1f s, reading from %s",
                    self.node_id,
                    time.monotonic() - lost_at,
                    last.decode(),
                )
                lost_at = None
                delay = BACKOFF_MIN
                await self._check_trimmed(key, last)
            if not reply:
                continue
            streams = reply.items() if isinstance(reply, dict) else reply
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    last = _raw(entry_id)
                    self._apply(fields, last, replay_to >= _entry_id(last))
            self._applied = last  # recorded by the next batch (_close_batch)
            if self._replayed and _entry_id(last) >= self._replayed_until:
                self._replayed.clear()
                self._adopted.clear()

    def _apply(self, fields: dict[bytes, bytes], entry_id: bytes, replay: bool) -> None:
        try:
            self._entry(fields, replay)
        except Exception:
            log.exception("node %s: bad stream entry %s", self.node_id, entry_id.decode())

    async def _check_trimmed(self, key: str, last: bytes) -> None:
        """After a reconnection: did trimming (MAXLEN) remove entries not read yet?"""
        try:
            assert self._ctl is not None
            info: Any = await self._ctl.xinfo_stream(key)
        except Exception:
            return
        deleted = info.get("max-deleted-entry-id") or info.get(b"max-deleted-entry-id")
        if deleted is not None and _entry_id(deleted) > _entry_id(last):
            log.error(
                "node %s: entries up to %s were trimmed before they were read "
                "(more than %d behind): messages from other nodes were lost",
                self.node_id,
                _text(deleted),
                STREAM_MAXLEN,
            )

    def _entry(self, fields: dict[bytes, bytes], replay: bool = False) -> None:
        data = fields.get(b"e")
        if data is None:
            return
        self.bytes_received += len(data)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data)
        head = unpacker.unpack()
        if head[0] != m.NODE_FORMAT:
            log.error("node %s: stream entry in format %r, not read", self.node_id, head[0])
            return
        _fmt, node, worker, workers, epoch, number = head
        proc = (node, worker)
        seen = self._seen.get(proc)
        if seen is not None and seen[0] == epoch and number <= seen[1]:
            return  # written twice (a batch resent): read already
        self._seen[proc] = (epoch, number)
        shard = self.shard
        now = time.time()
        bye = shared = False
        for frame in unpacker:
            kind = frame[0]
            if replay and kind not in REPLAYED:
                continue
            if kind == m.N_PUBLISH:
                msg = _foreign(shard, frame[1], now)
                if len(frame) > 2:
                    msg.nid = (node, worker, epoch, frame[2])
                if self._replayed and msg.nid in self._replayed:
                    # sent to a dead node too, and replayed to the sessions
                    # adopted from it: the others get it
                    shard.route_to(msg, self._not_adopted)
                else:
                    shard.route_local(msg)
                if shard.moved:
                    shard.forward_moved(msg, remote_only=True)
            elif kind == m.N_DELIVER:
                if frame[1] == self.worker:
                    msg = _foreign(shard, frame[3], now)
                    if frame[7] is not None:
                        msg.nid = tuple(frame[7])
                    shard.deliver_direct(frame[2], msg, frame[4], frame[5], frame[6])
            elif kind == m.N_SUB_ADD or kind == m.N_SUB_DEL:
                held = kind == m.N_SUB_ADD
                if not self.interest.apply(proc, epoch, frame[1], frame[2], held):
                    self._reload_later(proc)
            elif kind == m.N_SHARE_PUBLISH:
                if frame[1] == self.worker:
                    shard.deliver_shared(_foreign(shard, frame[2], now), frame[3], frame[4])
            elif kind == m.N_SHARE:
                if not self.interest.apply(proc, epoch, frame[1], frame[2], frame[3]):
                    self._reload_later(proc)
                shared = True
            elif kind == m.N_PING:
                self._send(node, _packb([m.N_PONG, worker, frame[1]]))
            elif kind == m.N_PONG:
                if frame[1] == self.worker:
                    self._ponged(frame[2], proc)
            elif kind == m.N_RETAIN:
                self._apply_retained(frame[1], frame[2], frame[3], now)
            elif kind == m.N_RETAINED_FULL:
                for topic, packed, stamp in frame[1]:
                    self._apply_retained(topic, packed, stamp, now)
            elif kind == m.N_INTEREST:
                self._reload_later(proc)
            elif kind == m.N_TAKE:
                if frame[1] == self.worker:
                    self.owners.on_take([node, worker, *frame[2:]])
            elif kind == m.N_TAKEN:
                if frame[1] == self.worker:
                    self.owners.on_taken(frame[2], frame[3], frame[4])
            elif kind == m.N_ADMIN_ASK:
                self._admin_asked(node, worker, frame[1], frame[2], frame[3])
            elif kind == m.N_ADMIN:
                if frame[1] == self.worker:
                    self._admin_answered(proc, frame[2], frame[3])
            elif kind == m.N_BYE:
                bye = True
                self._left(proc)
            else:
                log.warning("node %s: unknown frame %r from %s", self.node_id, kind, proc)
        if replay:
            return
        if shared or bye:
            self.shared_changed()
        if not bye and node not in self.live and node != self.node_id:
            self._met(node, workers)

    # -- a dead node's stream -----------------------------------------------------------

    async def unread_of(self, node: str) -> tuple[dict[int, bytes], list[Any], bytes, bytes]:
        """What dead node ``node``'s workers had not applied: (worker -> the
        last entry it applied, the entries after the oldest of those, the
        last entry of this node's own stream, the last entry of the dead
        node's stream read). Read before the survivor installs the sessions
        it adopts (``reaper.reap``)."""
        ctl = self._ctl
        assert ctl is not None
        key = self.stream_key(node)
        tip: Any = await ctl.xrevrange(key, count=1)
        last = _raw(tip[0][0]) if tip else b"0-0"
        marks: Any = await ctl.hgetall(f"{self.prefix}:read:{node}")
        applied = {int(w): _raw(v) for w, v in marks.items()}
        entries: list[Any] = []
        if applied:
            last = min(applied.values(), key=_entry_id)
            while True:
                chunk: Any = await ctl.xrange(key, min=b"(" + last, count=READ_COUNT * 4)
                if not chunk:
                    break
                entries.extend(chunk)
                last = _raw(chunk[-1][0])
        own: Any = await ctl.xrevrange(self.stream_key(self.node_id), count=1)
        return applied, entries, _raw(own[0][0]) if own else b"0-0", last

    def replay_adopted(
        self,
        applied: dict[int, bytes],
        entries: list[Any],
        own_end: bytes,
        _dead_end: bytes,
        adopted: dict[int, set[str]],
    ) -> int:
        """Deliver the messages of a dead node's unread ``entries`` to the
        sessions adopted from it (``adopted``: its worker -> their client ids),
        each entry to the sessions of the workers that had not applied it, in
        stream order. Called in the same step as the sessions are installed,
        so nothing reaches them in between. A message the sender also sent
        this node, not read here yet (up to ``own_end``), is then kept from the
        adopted sessions when it comes (``_replayed``). A shared delivery to a
        member on the dead node goes to one of this process's members of the
        group. Returns the deliveries."""
        now = time.time()
        count = 0
        self._adopted.update(*adopted.values())
        for entry_id, fields in entries:
            at = _entry_id(entry_id)
            workers = {w for w in adopted if w in applied and at > _entry_id(applied[w])}
            cids = set().union(*(adopted[w] for w in workers))
            data = fields.get(b"e")
            if not cids or data is None:
                continue
            count += self._deliver_entry(data, cids, now, self._replayed, workers)
        if self._replayed:
            self._replayed_until = max(self._replayed_until, _entry_id(own_end))
        else:
            self._adopted.clear()
        return count

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` until it ends or this link stops."""
        assert self.loop is not None
        task = self.loop.create_task(work)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def follow_dead(self, node: str, last: bytes, cids: set[str]) -> int:
        """For ``node_timeout`` after adopting dead node ``node``'s sessions
        (``cids``), deliver to them what is still appended to its stream
        after ``last``: other nodes send there until their own beat finds it
        dead. Adopted sessions carry a ``MoveDedupe``, so a message also sent
        here directly is delivered once. Returns the deliveries."""
        ctl = self._ctl
        assert ctl is not None and self.loop is not None
        key = self.stream_key(node)
        count = 0
        until = self.loop.time() + self.node_timeout
        while self.loop.time() < until and not self._closing:
            try:
                entries: Any = await ctl.xrange(key, min=b"(" + last, count=READ_COUNT)
            except UNREACHABLE:
                entries = ()
            if not entries:
                await asyncio.sleep(FOLLOW_POLL)
                continue
            now = time.time()
            for entry_id, fields in entries:
                last = _raw(entry_id)
                data = fields.get(b"e")
                if data is not None:
                    count += self._deliver_entry(data, cids, now)
        log.debug(
            "node %s: followed dead node %s's stream: %d deliveries to its sessions",
            self.node_id,
            node,
            count,
        )
        return count

    def _deliver_entry(
        self,
        data: bytes,
        cids: set[str],
        now: float,
        record: set[tuple[str, int, int, int]] | None = None,
        workers: set[int] | None = None,
    ) -> int:
        """The messages of one entry of a dead node's stream, to the sessions
        ``cids`` adopted from it (forwarded if one moved on since), and the
        shared deliveries addressed to its ``workers`` (None: all) to one of
        this process's members of their group, adopted or not; ``record``
        gets the number of each message delivered. Returns the deliveries."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data)
        head = unpacker.unpack()
        if head[0] != m.NODE_FORMAT:
            return 0
        _fmt, sender, worker, _workers, epoch, _number = head
        shard = self.shard
        count = 0
        for frame in unpacker:
            if frame[0] == m.N_PUBLISH:
                msg = _foreign(shard, frame[1], now)
                if len(frame) > 2:
                    msg.nid = (sender, worker, epoch, frame[2])
                n = shard.route_to(msg, cids.__contains__)
                if shard.moved:  # adopted, then taken over already
                    n += shard.forward_moved(msg, remote_only=True, only=cids)
                if n and record is not None and msg.nid is not None:
                    record.add(msg.nid)
                count += n
            elif frame[0] == m.N_SHARE_PUBLISH and (workers is None or frame[1] in workers):
                msg = _foreign(shard, frame[2], now)
                count += shard.deliver_shared(msg, frame[3], frame[4])
            elif frame[0] == m.N_DELIVER and frame[2] in cids:
                # for a session that had moved to the dead node
                msg = _foreign(shard, frame[3], now)
                if frame[7] is not None:
                    msg.nid = tuple(frame[7])
                shard.deliver_direct(frame[2], msg, frame[4], frame[5], frame[6])
                count += 1
        return count

    def _not_adopted(self, client_id: str) -> bool:
        return client_id not in self._adopted

    def _left(self, proc: Process) -> None:
        """A process of another node stopped gracefully: forget it now rather
        than at the beat that finds its node's heartbeat gone."""
        self.interest.drop_process(proc)
        self._seen.pop(proc, None)
        node = proc[0]
        for token, barrier in list(self._barriers.items()):
            barrier.waiting.discard(proc)
            if not barrier.waiting and barrier.written:
                self._answered(token)
        gone = self._leaving.setdefault(node, set())
        gone.add(proc[1])
        if node in self.live and len(gone) >= self.live[node]:
            self._lost(node)

    def _reload_later(self, proc: Process) -> None:
        self._stale.add(proc)
        if self._stale_wake is not None:
            self._stale_wake.set()

    def _apply_retained(self, topic: str, packed: Any, stamp: float, now: float) -> None:
        if stamp < self.retained_stamps.get(topic, 0.0):
            return  # older than the one held
        self.retained_stamps[topic] = stamp
        retained = self.shard.retained
        if packed is None:
            retained.delete(topic)
        else:
            msg = self.shard.unpack_message(packed, now)
            msg.src = -1
            msg.dests = ()
            retained.set(topic, msg)


class _Barrier:
    __slots__ = ("waiting", "done", "parts", "written", "answered", "timer")

    def __init__(self, waiting: set[Process], done: asyncio.Future[None], parts: int) -> None:
        #: the processes of other nodes still to answer
        self.waiting = waiting
        self.done = done
        #: the other nodes' answers, and this node's other workers (if any)
        self.parts = parts
        #: the batch with the PINGs is written
        self.written = False
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    """Complete ``target`` as ``source`` completes."""

    def copy(fut: asyncio.Future[None]) -> None:
        if target.done():
            return
        if fut.cancelled() or fut.exception() is not None:
            target.set_exception(StoreUnavailable("cluster entries not written"))
            target.exception()  # retrieved here: the waiters read it themselves
        else:
            target.set_result(None)

    source.add_done_callback(copy)


def _foreign(shard: FabricShard, packed: Any, now: float) -> Message:
    """A message another node sent: numbered by that node's shards, so none
    of this node's move marks apply to it (its ``nid`` does)."""
    msg = shard.unpack_message(packed, now)
    msg.src = -1
    msg.seq = 0
    msg.dests = ()
    return msg


def _entry_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()

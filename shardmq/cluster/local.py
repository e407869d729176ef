"""LocalFabric: the shards of one host linked by Unix-domain sockets.

Theory of operation
-------------------
Every worker listens on ``<run_dir>/shard-<id>.sock`` and opens two links to
every peer: ``ctl`` (interest deltas, retained updates, session claims,
barriers, replies) and ``data`` (forwarded publishes), so control frames never
wait behind bulk traffic. Frames are msgpack lists (``messages.py``); many are
packed into one write per loop iteration. A link whose socket buffer fills up
counts as a congested writer, which pauses the publishers feeding it (see
``Shard.writer_paused``): a slow shard slows its senders.

When an outgoing ctl link comes up (first start, or the peer restarted) this
shard sends the peer its whole interest, its retained messages and the
sessions it owns whose home is that peer. When an incoming ctl link drops, the
peer is gone: its interest is forgotten and requests waiting on it fail.

Sessions: a client id's *home* shard (crc32 of the id modulo the worker count)
records which shard owns the session and under which epoch. A connecting
shard CLAIMs the id at home (getting a new, larger epoch and the previous
owner), then asks the previous owner to TAKE: that shard disconnects its
connection with 0x8E, settles the will, and sends the session state over
(SESSION). An owner that learns of a newer epoch than its own never resumes
that session, so a superseded worker cannot deliver to a stale session or
publish the will of a connection already taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from ..protocol.session import Message, Session
from ..socketinfo import unsent_bytes
from ..storage.base import StoreUnavailable
from . import messages as m
from .fabric import Fabric, FabricShard, SessionState
from .interest import Interest

log = logging.getLogger("shardmq.fabric")

REQUEST_TIMEOUT = 2.0
#: a claim may wait at home behind others for the same id (a takeover storm)
CLAIM_TIMEOUT = 10.0
#: longest a granted claim holds the next one back (a claimant that vanished)
CLAIM_HOLD = 5.0
#: durable store: how long a claim waits for a restarting worker to rejoin
RECOVER_WAIT = 10.0
_NONE: frozenset[int] = frozenset()
READY_TIMEOUT = 5.0
_HIGH_WATER = 1024 * 1024


class _Link(asyncio.Protocol):
    """One direction of one link kind to or from a peer."""

    def __init__(self, fabric: LocalFabric, peer: int | None, kind: str, outgoing: bool) -> None:
        self.fabric = fabric
        self.peer = peer
        self.kind = kind
        self.outgoing = outgoing
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._scheduled = False
        self._packer = msgpack.Packer()
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.client_id = f"<shard link {kind} {peer}>"
        self.closed = False
        #: bytes handed to the transport (flow control measures progress by it)
        self.written = 0
        #: frames written (counted per write, not per frame sent) and bytes read
        self.frames = 0
        self.read = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.read += len(data)
        unpacker = self._unpacker
        unpacker.feed(data)
        fabric = self.fabric
        for frame in unpacker:
            if self.peer is None:
                if frame[0] != m.HELLO:
                    log.warning("shard link: frame before HELLO, closing")
                    self.close()
                    return
                self.peer = frame[1]
                self.kind = frame[2]
                self.client_id = f"<shard link {self.kind} {self.peer}>"
                fabric.incoming_up(self)
                continue
            try:
                fabric.handle(self.peer, frame)
            except Exception:
                log.exception("shard %d: bad frame from shard %s", fabric.shard_id, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        shard = self.fabric.shard
        if shard is not None:
            shard.writer_resumed(self)
        self.fabric.link_lost(self)

    def pause_writing(self) -> None:
        shard = self.fabric.shard
        if shard is not None:
            shard.writer_paused(self)

    def resume_writing(self) -> None:
        shard = self.fabric.shard
        if shard is not None:
            shard.writer_resumed(self)

    def buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def delivered(self) -> int:
        """Bytes the peer shard has read off the link (flow control's progress)."""
        transport = self.transport
        if transport is None:
            return self.written
        taken = self.written - transport.get_write_buffer_size()
        queued = unsent_bytes(transport.get_extra_info("socket"))
        return taken - queued if queued is not None else taken

    # output
    def send(self, frame: list[Any]) -> None:
        if self.closed:
            return
        self._out.append(self._packer.pack(frame))
        if not self._scheduled:
            self._scheduled = True
            self.fabric.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        out = self._out
        if out and self.transport is not None and not self.closed:
            self._out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            self.frames += len(out)
            self.written += len(data)
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LocalFabric(Fabric):
    distributed = True

    def __init__(self, shard_id: int, workers: int, run_dir: str) -> None:
        self.shard_id = shard_id
        self.workers = workers
        self.run_dir = run_dir
        self.shard: FabricShard
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.interest: Interest[int] = Interest()
        self.local_counts: dict[str, int] = {}
        #: peer -> {"ctl": link, "data": link} (outgoing)
        self.out: dict[int, dict[str, _Link]] = {}
        #: peers whose incoming ctl link is up (they are alive)
        self.alive: set[int] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._req = 0
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._closing = False
        # home-shard table: client id -> (owner shard, epoch)
        self.owners: dict[str, tuple[int, int]] = {}
        #: client id -> epoch this shard owns it under
        self.epochs: dict[str, int] = {}
        #: client id -> newest epoch seen for a take-over (fencing)
        self.fence: dict[str, int] = {}
        #: home side: the claim of each id being settled (shard, epoch, since)
        #: and the claims waiting for it, granted one at a time
        self.claiming: dict[str, tuple[int, int, float]] = {}
        self.claim_queue: dict[str, deque[tuple[int, Callable[[int, int | None], None]]]] = {}
        self.retained_stamps: dict[str, float] = {}
        self.stats_by_peer: dict[int, dict[str, int]] = {}
        self._share_rr: dict[tuple[str, str], int] = {}
        #: durable store (set by the broker): QoS 1/2 messages handed to other
        #: workers are acknowledged once those workers have stored them
        self.store_sync = False
        self.sync_timeout = 5.0
        #: this loop iteration's peers to SYNC and the future of their answers
        self._sync_peers: set[int] = set()
        self._sync_future: asyncio.Future[None] | None = None
        #: token -> (peers still to answer, future)
        self._syncing: dict[int, tuple[set[int], asyncio.Future[None]]] = {}
        self._sync_token = 0

        #: what this worker answers FIGURES_ASK with (set by the worker)
        self.figures_source: Callable[[], dict[str, Any]] = dict
        #: what this worker answers ADMIN_ASK with: (op, args) -> result
        self.admin_source: Callable[[str, dict[str, Any]], Any] = lambda op, args: None
        self._incoming: set[_Link] = set()
        self._read_gone = 0  # bytes read on incoming links since closed

    def path(self, shard_id: int) -> str:
        return os.path.join(self.run_dir, f"shard-{shard_id}.sock")

    def home(self, client_id: str) -> int:
        return zlib.crc32(client_id.encode()) % self.workers

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        path = self.path(self.shard_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await self.loop.create_unix_server(
            lambda: _Link(self, None, "?", outgoing=False), path
        )
        for peer in range(self.workers):
            if peer == self.shard_id:
                continue
            self.out[peer] = {}
            for kind in ("ctl", "data"):
                self._tasks.append(self.loop.create_task(self._connect(peer, kind)))
        # Wait (bounded) until every peer is linked both ways, so the first
        # clients already see the whole broker; a peer that is restarting
        # joins later.
        deadline = self.loop.time() + READY_TIMEOUT
        while self.loop.time() < deadline and not self.ready():
            await asyncio.sleep(0.01)

    def ready(self) -> bool:
        return all(
            len(links) == 2 and all(not link.closed for link in links.values())
            for links in self.out.values()
        ) and len(self.alive) == len(self.out)

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for links in self.out.values():
            for link in links.values():
                link.flush()
                link.close()
        if self._server is not None:
            self._server.close()
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_result(None)

    async def _connect(self, peer: int, kind: str) -> None:
        delay = 0.02
        path = self.path(peer)
        while not self._closing:
            link = self.out[peer].get(kind)
            if link is None or link.closed:
                try:
                    _, proto = await self.loop.create_unix_connection(
                        lambda: _Link(self, peer, kind, outgoing=True), path
                    )
                except OSError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                delay = 0.02
                link = proto
                self.out[peer][kind] = link
                link.send([m.HELLO, self.shard_id, kind])
                if kind == "ctl":
                    self._teach(peer, link)
            await asyncio.sleep(0.05)

    def _teach(self, peer: int, link: _Link) -> None:
        """A link to ``peer`` came up: send it everything it must know from us."""
        link.send([m.INTEREST_FULL, [[f, c] for f, c in self.local_counts.items()]])
        shard = self.shard
        if shard is not None and len(shard.retained):
            now = time.time()
            items = []
            for topic, msg in shard.retained.items():
                items.append(
                    [topic, self.shard.pack_message(msg, now), self.retained_stamps.get(topic, 0.0)]
                )
            link.send([m.RETAINED_FULL, items])
        owned = [[cid, e] for cid, e in self.epochs.items() if self.home(cid) == peer]
        if owned:
            link.send([m.OWNED, owned])

    def incoming_up(self, link: _Link) -> None:
        self._incoming.add(link)
        if link.kind == "ctl" and link.peer is not None:
            self.alive.add(link.peer)

    def link_lost(self, link: _Link) -> None:
        if link in self._incoming:
            self._incoming.discard(link)
            self._read_gone += link.read
        peer = link.peer
        if peer is None or self._closing:
            return
        if not link.outgoing and link.kind == "ctl":
            log.warning("shard %d: lost shard %d, forgetting its interest", self.shard_id, peer)
            self.alive.discard(peer)
            self._forget_claims_of(peer)
            self.interest.drop_shard(peer)
            self._shared_changed()
            for req, (target, fut) in list(self._pending.items()):
                if target == peer and not fut.done():
                    fut.set_result(None)
                    del self._pending[req]
            for token, (_peers, sync) in list(self._syncs_of(peer)):
                del self._syncing[token]
                _fail(sync, f"worker {peer} went away")

    def _send(self, peer: int, kind: str, frame: list[Any]) -> bool:
        link = self.out.get(peer, {}).get(kind)
        if link is None or link.closed:
            return False
        link.send(frame)
        return True

    def _broadcast(self, frame: list[Any]) -> None:
        for peer in self.out:
            self._send(peer, "ctl", frame)

    def _ask(self, peer: int, frame: list[Any]) -> asyncio.Future[Any] | None:
        """Send a request frame now (its item 1 becomes the request id); the
        future gets the reply, or None if the peer goes away. None when the
        peer is not reachable."""
        self._req += 1
        req = self._req
        frame[1] = req
        if peer not in self.alive or not self._send(peer, "ctl", frame):
            return None
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._pending[req] = (peer, fut)
        fut.add_done_callback(lambda _f: self._pending.pop(req, None))
        return fut

    async def _request(self, peer: int, frame: list[Any], timeout: float = REQUEST_TIMEOUT) -> Any:
        """Send a request frame and await the reply (None on timeout or loss)."""
        fut = self._ask(peer, frame)
        if fut is None:
            return None
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            log.warning("shard %d: no answer from shard %d", self.shard_id, peer)
            return None

    def flush_now(self) -> None:
        """Write what is queued on the control links at once rather than at the
        end of the loop iteration: interest deltas reach the other workers while
        this one is still busy with the rest of what it read (README "Several
        workers": how soon a subscription is seen everywhere)."""
        for links in self.out.values():
            link = links.get("ctl")
            if link is not None and link._out:
                link.flush()

    # -- routing -----------------------------------------------------------------------

    def forward(self, message: Message) -> int:
        if not self.interest:
            self.last_dests = _NONE
            return 0
        shards = self.interest.shards_for(message.topic)
        self.last_dests = shards
        if not shards:
            return 0
        # the message names every shard that routes it (MoveDedupe)
        message.dests = (*shards, self.shard_id)
        frame = [m.PUBLISH, self.shard.pack_message(message, time.time())]
        if message.nid is not None:  # a cluster node sent it to other nodes too
            frame.append(message.nid)
        n = 0
        sync = self.store_sync and message.qos
        for peer in shards:
            if self._send(peer, "data", frame):
                n += 1
                if sync:
                    self._need_sync(peer)
        return n

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[Any, int]]:
        if not self.interest:
            return {}
        return self.interest.shared_for(topic)

    def _shared_changed(self) -> None:
        self.remote_shared = self.interest.has_shared()

    def deliver_to(
        self,
        shard_id: int,
        client_id: str,
        message: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
    ) -> None:
        packed = self.shard.pack_message(message, time.time())
        frame = [m.DELIVER, client_id, packed, qos, retain, ids]
        if message.nid is not None:
            frame.append(message.nid)
        sent = self._send(shard_id, "data", frame)
        if sent and self.store_sync and qos:
            self._need_sync(shard_id)

    def forward_shared(
        self, shard_id: Any, message: Message, group: str, topic_filter: str
    ) -> None:
        frame = [
            m.PUBLISH_SHARED,
            self.shard.pack_message(message, time.time()),
            group,
            topic_filter,
        ]
        if self._send(shard_id, "data", frame) and self.store_sync and message.qos:
            self._need_sync(shard_id)

    # -- durable acknowledgements across workers ------------------------------------------
    #
    # A QoS 1/2 PUBLISH is acknowledged once it is stored for every persistent
    # session it is bound for, and some of those live on other workers. Each
    # loop iteration that hands such messages to other workers ends with one
    # SYNC per peer, on the data link behind them; the peer answers SYNCED
    # once its store has written the batch holding what they delivered
    # (links are ordered, so that batch holds all of them). The
    # acknowledgements of the iteration wait for ``stored()``; a peer that
    # goes away, cannot store, or does not answer within ``sync_timeout``
    # fails it, and they are answered as the store's own failures are.

    def _syncs_of(self, peer: int) -> list[tuple[int, tuple[set[int], asyncio.Future[None]]]]:
        return [(t, e) for t, e in self._syncing.items() if peer in e[0]]

    def _need_sync(self, peer: int) -> None:
        peers = self._sync_peers
        if not peers:
            self._sync_future = self.loop.create_future()
            self.loop.call_soon(self._send_syncs)
        peers.add(peer)

    def stored(self) -> asyncio.Future[None] | None:
        return self._sync_future if self._sync_peers else None

    def _send_syncs(self) -> None:
        peers = self._sync_peers
        fut = self._sync_future
        self._sync_peers = set()
        self._sync_future = None
        if fut is None:
            return
        self._sync_token += 1
        token = self._sync_token
        waiting = {p for p in peers if self._send(p, "data", [m.SYNC, token])}
        if len(waiting) < len(peers):
            _fail(fut, "a worker is unreachable")
        if not waiting or fut.done():
            if not fut.done():
                fut.set_result(None)
            return
        self._syncing[token] = (waiting, fut)
        self.loop.call_later(self.sync_timeout, self._sync_expired, token)

    def _sync_expired(self, token: int) -> None:
        entry = self._syncing.pop(token, None)
        if entry is not None:
            _fail(entry[1], "no answer from a worker's store")

    def _synced(self, peer: int, token: int, ok: bool) -> None:
        entry = self._syncing.get(token)
        if entry is None:
            return
        peers, fut = entry
        if not ok:
            del self._syncing[token]
            _fail(fut, "store unavailable")
            return
        peers.discard(peer)
        if not peers:
            del self._syncing[token]
            if not fut.done():
                fut.set_result(None)

    def _answer_sync(self, peer: int, token: int) -> None:
        store = self.shard.store
        written = store.flush() if store is not None else None
        if written is None or (written.done() and not written.cancelled()):
            ok = written is None or written.exception() is None
            self._send(peer, "ctl", [m.SYNCED, token, ok])
            return

        def answer(fut: asyncio.Future[None]) -> None:
            ok = not fut.cancelled() and fut.exception() is None
            self._send(peer, "ctl", [m.SYNCED, token, ok])
            link = self.out.get(peer, {}).get("ctl")
            if link is not None:
                link.flush()

        written.add_done_callback(answer)

    def subscription_added(self, full_filter: str) -> None:
        n = self.local_counts.get(full_filter, 0) + 1
        self.local_counts[full_filter] = n
        if n == 1 or full_filter.startswith("$share/"):
            self._broadcast([m.SUB_ADD, full_filter])

    def subscription_removed(self, full_filter: str) -> None:
        n = self.local_counts.get(full_filter, 0) - 1
        if n <= 0:
            self.local_counts.pop(full_filter, None)
        else:
            self.local_counts[full_filter] = n
        if n <= 0 or full_filter.startswith("$share/"):
            self._broadcast([m.SUB_DEL, full_filter])

    def barrier(self) -> Awaitable[None]:
        """PING every live peer now; the future resolves once each has answered
        (so has applied everything sent before), or after REQUEST_TIMEOUT. Call
        ``flush_now`` after it to send the PINGs without waiting for the end of
        the loop iteration. A plain future, not a coroutine: a waiter that goes
        away leaves nothing behind to warn about."""
        done: asyncio.Future[None] = self.loop.create_future()
        futures = [f for p in self.out if p in self.alive if (f := self._ask(p, [m.PING, 0]))]
        if not futures:
            done.set_result(None)
            return done
        left = [len(futures)]

        def answered(_fut: asyncio.Future[Any]) -> None:
            left[0] -= 1
            if left[0] == 0 and not done.done():
                done.set_result(None)

        for fut in futures:
            fut.add_done_callback(answered)
        timer = self.loop.call_later(REQUEST_TIMEOUT, self._resolve_late, futures, self.shard_id)
        done.add_done_callback(lambda _d: timer.cancel() if left[0] == 0 else None)
        return done

    @staticmethod
    def _resolve_late(futures: list[asyncio.Future[Any]], shard_id: int) -> None:
        late = [f for f in futures if not f.done()]
        if late:
            log.warning("shard %d: a barrier was not answered in time", shard_id)
            for fut in late:
                fut.set_result(None)

    # -- retained ------------------------------------------------------------------------

    def retained_changed(self, topic: str, message: Message | None) -> None:
        stamp = time.time()
        self.retained_stamps[topic] = stamp
        packed = None if message is None else self.shard.pack_message(message, time.time())
        self._broadcast([m.RETAIN, topic, packed, stamp])

    def _apply_retained(self, topic: str, packed: Any, stamp: float) -> None:
        if stamp < self.retained_stamps.get(topic, 0.0):
            return  # an older update than the one we hold
        self.retained_stamps[topic] = stamp
        shard = self.shard
        if packed is None:
            shard.retained.delete(topic)
        else:
            shard.retained.set(topic, self.shard.unpack_message(packed, time.time()))

    # -- sessions -------------------------------------------------------------------------

    async def acquire(self, client_id: str, clean_start: bool) -> tuple[int, SessionState | None]:
        """Claim ``client_id`` at its home shard, then take the session from the
        previous owner. The home grants one claim of an id at a time, so the
        previous owner has settled (accepted its connection, or kept the session
        offline) before it is asked; the caller must report with ``claim_done``."""
        home = self.home(client_id)
        if home != self.shard_id:
            await self._until_back(home)
        if home == self.shard_id:
            fut: asyncio.Future[tuple[int, int | None]] = self.loop.create_future()

            def answer(epoch: int, previous: int | None) -> None:
                if not fut.done():
                    fut.set_result((epoch, previous))

            self._claim(client_id, self.shard_id, answer)
            epoch, previous = await fut
        else:
            reply = await self._request(home, [m.CLAIM, 0, client_id, self.shard_id], CLAIM_TIMEOUT)
            if reply is None:
                # the home shard is down (restarting): go on locally
                epoch, previous = int(time.time() * 1000), None
            else:
                epoch, previous = reply
        self.epochs[client_id] = epoch
        state = None
        if previous is not None and previous != self.shard_id:
            await self._until_back(previous)
            state = await self._request(
                previous, [m.TAKE, 0, client_id, epoch, clean_start], CLAIM_TIMEOUT
            )
        return epoch, state

    async def _until_back(self, peer: int) -> None:
        """Durable store: a worker that is down (being restarted) gets its sessions
        back from the store, so a claim that needs it waits for it to rejoin,
        for up to RECOVER_WAIT, rather than handing out a fresh session that
        the restarted worker's would then contend with."""
        if not self.store_sync or self._reachable(peer):
            return
        deadline = self.loop.time() + RECOVER_WAIT
        while not self._reachable(peer) and self.loop.time() < deadline and not self._closing:
            await asyncio.sleep(0.02)

    def _reachable(self, peer: int) -> bool:
        """It talks to us and we to it (both control links up)."""
        link = self.out.get(peer, {}).get("ctl")
        return peer in self.alive and link is not None and not link.closed

    def claim_done(self, client_id: str, epoch: int) -> None:
        """The claim under ``epoch`` is settled: the home may grant the next one."""
        home = self.home(client_id)
        if home == self.shard_id:
            self._done(client_id, epoch)
        else:
            self._send(home, "ctl", [m.DONE, client_id, epoch])

    # home side

    def _claim(
        self, client_id: str, shard_id: int, answer: Callable[[int, int | None], None]
    ) -> None:
        current = self.claiming.get(client_id)
        if current is not None and self.loop.time() - current[2] < CLAIM_HOLD:
            waiting = self.claim_queue.setdefault(client_id, deque())
            waiting.append((shard_id, answer))
            if len(waiting) == 1:
                self.loop.call_later(CLAIM_HOLD, self._claim_overdue, client_id, current[1])
            return
        self._grant(client_id, shard_id, answer)

    def _grant(
        self, client_id: str, shard_id: int, answer: Callable[[int, int | None], None]
    ) -> None:
        prev = self.owners.get(client_id)
        epoch = int(time.time() * 1000)
        if prev is not None and epoch <= prev[1]:
            epoch = prev[1] + 1
        self.owners[client_id] = (shard_id, epoch)
        self.claiming[client_id] = (shard_id, epoch, self.loop.time())
        answer(epoch, prev[0] if prev is not None else None)

    def _done(self, client_id: str, epoch: int) -> None:
        current = self.claiming.get(client_id)
        if current is None or current[1] != epoch:
            return
        del self.claiming[client_id]
        waiting = self.claim_queue.get(client_id)
        if waiting:
            shard_id, answer = waiting.popleft()
            if not waiting:
                del self.claim_queue[client_id]
            self._grant(client_id, shard_id, answer)

    def _claim_overdue(self, client_id: str, epoch: int) -> None:
        current = self.claiming.get(client_id)
        if current is not None and current[1] == epoch:
            log.warning(
                "shard %d: claim of %r by shard %d not settled in %.0f s, granting the next",
                self.shard_id,
                client_id,
                current[0],
                CLAIM_HOLD,
            )
            self._done(client_id, epoch)
        waiting = self.claim_queue.get(client_id)
        current = self.claiming.get(client_id)
        if waiting and current is not None:
            self.loop.call_later(CLAIM_HOLD, self._claim_overdue, client_id, current[1])

    def _forget_claims_of(self, peer: int) -> None:
        """A peer went away: its claims in progress are settled as they stand."""
        for client_id, waiting in list(self.claim_queue.items()):
            kept = deque(w for w in waiting if w[0] != peer)
            if kept:
                self.claim_queue[client_id] = kept
            else:
                del self.claim_queue[client_id]
        for client_id, (shard_id, epoch, _since) in list(self.claiming.items()):
            if shard_id == peer:
                self._done(client_id, epoch)

    def release(self, client_id: str, epoch: int) -> None:
        if self.epochs.get(client_id) == epoch:
            del self.epochs[client_id]
        home = self.home(client_id)
        if home == self.shard_id:
            self._release(client_id, epoch)
        else:
            self._send(home, "ctl", [m.RELEASE, client_id, epoch])

    def restored(self, client_id: str, session: Session) -> None:
        """Own a session restored at start: the home shard learns of it (here,
        or from OWNED when the link to it comes up)."""
        epoch = int(time.time() * 1000)
        session.epoch = epoch
        self.epochs[client_id] = epoch
        if self.home(client_id) == self.shard_id:
            self.owners[client_id] = (self.shard_id, epoch)
        else:
            self._send(self.home(client_id), "ctl", [m.OWNED, [[client_id, epoch]]])

    def _release(self, client_id: str, epoch: int) -> None:
        owner = self.owners.get(client_id)
        if owner is not None and owner[1] == epoch:
            del self.owners[client_id]

    # -- figures -------------------------------------------------------------------------

    def link_traffic(self) -> dict[str, int]:
        """Frames and bytes this worker wrote to its peers, bytes it read."""
        frames = sent = 0
        for links in self.out.values():
            for link in links.values():
                frames += link.frames
                sent += link.written
        received = self._read_gone + sum(link.read for link in self._incoming)
        return {"frames_sent": frames, "bytes_sent": sent, "bytes_received": received}

    async def ask_figures(self, peer: int, timeout: float) -> dict[str, Any] | None:
        """``peer``'s figures (``figures_source``), answered from inside its
        loop; None when it is down or does not answer within ``timeout``."""
        result = await self._ask_now(peer, [m.FIGURES_ASK, 0], timeout)
        return result if isinstance(result, dict) else None

    async def ask_admin(
        self, peer: int, op: str, args: dict[str, Any], timeout: float
    ) -> tuple[bool, Any]:
        """``peer``'s answer to the admin operation ``op`` (``admin_source``):
        (True, result), or (False, None) when it is down or silent."""
        fut = self._ask(peer, [m.ADMIN_ASK, 0, op, args])
        if fut is None:
            return False, None
        return await self._flushed_wait(peer, fut, timeout)

    async def _ask_now(self, peer: int, frame: list[Any], timeout: float) -> Any:
        fut = self._ask(peer, frame)
        if fut is None:
            return None
        return (await self._flushed_wait(peer, fut, timeout))[1]

    async def _flushed_wait(
        self, peer: int, fut: asyncio.Future[Any], timeout: float
    ) -> tuple[bool, Any]:
        """Flush the request out now (an operator is waiting, not a batch) and
        wait for its reply."""
        link = self.out.get(peer, {}).get("ctl")
        if link is not None:
            link.flush()
        try:
            return True, await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False, None

    def publish_stats(self, figures: dict[str, int]) -> None:
        self._broadcast([m.STATS, self.shard_id, figures])

    def peer_stats(self) -> dict[int, dict[str, int]]:
        return {p: s for p, s in self.stats_by_peer.items() if p in self.alive}

    # -- inbound frames ----------------------------------------------------------------------

    def handle(self, peer: int, frame: list[Any]) -> None:
        kind = frame[0]
        shard = self.shard
        if kind == m.PUBLISH:
            msg = self.shard.unpack_message(frame[1], time.time())
            if len(frame) > 2:
                msg.nid = tuple(frame[2])
            shard.seen[msg.src] = msg.seq
            shard.route_local(msg)
            if shard.moved:
                shard.forward_moved(msg)
        elif kind == m.DELIVER:
            msg = self.shard.unpack_message(frame[2], time.time())
            if len(frame) > 6:
                msg.nid = tuple(frame[6])
            shard.deliver_direct(frame[1], msg, frame[3], frame[4], frame[5])
        elif kind == m.PUBLISH_SHARED:
            shard.deliver_shared(
                self.shard.unpack_message(frame[1], time.time()), frame[2], frame[3]
            )
        elif kind == m.SUB_ADD:
            self.interest.add(peer, frame[1])
            self._shared_changed()
        elif kind == m.SUB_DEL:
            self.interest.remove(peer, frame[1])
            self._shared_changed()
        elif kind == m.INTEREST_FULL:
            self.interest.set_full(peer, [(f, c) for f, c in frame[1]])
            self._shared_changed()
        elif kind == m.RETAIN:
            self._apply_retained(frame[1], frame[2], frame[3])
        elif kind == m.RETAINED_FULL:
            for topic, packed, stamp in frame[1]:
                self._apply_retained(topic, packed, stamp)
        elif kind == m.PING:
            self._send(peer, "ctl", [m.PONG, frame[1]])
        elif kind == m.SYNC:
            self._answer_sync(peer, frame[1])
        elif kind == m.SYNCED:
            self._synced(peer, frame[1], frame[2])
        elif kind == m.CLAIM:
            req = frame[1]

            def answer(epoch: int, previous: int | None) -> None:
                self._send(peer, "ctl", [m.CLAIMED, req, [epoch, previous]])
                link = self.out.get(peer, {}).get("ctl")
                if link is not None:
                    link.flush()  # a claimant may be queued behind it: no delay

            self._claim(frame[2], frame[3], answer)
        elif kind == m.DONE:
            self._done(frame[1], frame[2])
        elif kind == m.TAKE:
            client_id, epoch, clean_start = frame[2], frame[3], frame[4]
            if epoch > self.fence.get(client_id, 0):
                self.fence[client_id] = epoch
            state = shard.surrender(client_id, clean_start, new_owner=peer)
            self.epochs.pop(client_id, None)
            self._send(peer, "ctl", [m.SESSION, frame[1], state])
        elif kind in m.REPLY:
            entry = self._pending.pop(frame[1], None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(frame[2] if len(frame) > 2 else True)
        elif kind == m.RELEASE:
            self._release(frame[1], frame[2])
        elif kind == m.OWNED:
            for client_id, epoch in frame[1]:
                current = self.owners.get(client_id)
                if current is None or current[1] < epoch:
                    self.owners[client_id] = (peer, epoch)
        elif kind == m.FIGURES_ASK:
            self._send(peer, "ctl", [m.FIGURES, frame[1], self.figures_source()])
        elif kind == m.ADMIN_ASK:
            try:
                result = self.admin_source(frame[2], frame[3])
            except Exception:
                log.exception("shard %d: admin %r failed", self.shard_id, frame[2])
                result = None
            self._send(peer, "ctl", [m.ADMIN, frame[1], result])
        elif kind == m.STATS:
            self.stats_by_peer[frame[1]] = frame[2]
        else:
            log.warning("shard %d: unknown frame kind %r from %d", self.shard_id, kind, peer)


def _fail(fut: asyncio.Future[None], why: str) -> None:
    if not fut.done():
        fut.set_exception(StoreUnavailable(why))
        fut.exception()  # retrieved here: the waiters read it themselves

"""Client ids across nodes: one owner in the whole cluster, kept in Redis.

Theory of operation
-------------------
Each client id has an owner record, the hash ``P:s:{<client id>}:o`` (in the
hash slot of the session's own keys): field ``o`` names the worker process
that owns the id, ``<node id>/<worker>``, and field ``e`` is the id's epoch.
A claim is one script (:data:`CLAIM`): it reads the owner, raises the epoch by
one (HINCRBY, the INCR of a hash field) and names the claimant. Claims of one
id are so totally ordered by their epochs, with no clock anywhere.

The claimant of epoch ``e`` then takes the session from the owner of epoch
``e - 1``, and from no one else:

- that owner is this process: it waits until its own claim ``e - 1`` (if one
  is still running) is settled, then the connection takes the session over as
  on a single broker (``Connection._accept``);
- another process of a live node: ``N_TAKE`` in that node's stream. The owner
  answers once *its* claim ``e - 1`` is settled (a TAKE waits for nothing
  else, so a chain of claims never waits in a circle): it closes the old
  connection (DISCONNECT 0x8E; 3.1.1: closed), settles the will, lets the
  session go and answers ``N_TAKEN`` in the claimant's node's stream. Its
  answer is written in the same ``EVAL`` as its store's last writes of the
  session (``RedisStore.before_close``), so by the time the claimant reads it
  the session's keys hold everything: subscriptions, queue, messages in flight
  and inbound QoS 2 state. The claimant reads the session from those keys
  (``RedisStore.load_session``) and installs it; its store writes it again
  under its own index;
- a node that is dead (its heartbeat gone), a process that does not answer
  within ``node_timeout``, or one that no longer holds epoch ``e - 1``:
  the claimant reads the session from the store all the same. A dead node's
  persistent sessions so resume on whichever node the client reconnects to.

Messages on their way. Other nodes route to the previous owner until they
read that the claimant holds the session's filters. So the owner that lets a
session go keeps its filters announced for ``Shard.MOVED_GRACE`` seconds and
sends on (``N_DELIVER``, ``Shard.forward_moved``) what still reaches it for
the session; the claimant installs the session with a ``MoveDedupe`` that
drops the second copy of a message it got both ways (by ``Message.nid``),
and does not deliver what was routed to it while it claimed the session:
the previous owner read those from its own ordered stream before or after
its answer, so delivered them itself or sends them on.

A TAKE that arrives while the claim it names is still running marks the id
fenced (``Fabric.fence``): that claim, once settled, parks the session instead
of accepting its connection (the connection is told 0x8E), and the session
goes on at once to the newer claim. A storm of connections with one id, over
any number of nodes, so ends with the last claim's connection alone.

An owner whose session ends (expired, or a clean session closed) clears ``o``
if the epoch is still its own (:data:`RELEASE`, a compare-and-set), so the
next claim of the id asks nobody. Sessions a process restores from the store
at start are checked against the owner records (:data:`ADOPT`): one that
another process claimed meanwhile (the node was declared dead, or a worker
was restarted) is dropped here and left in the store for its owner.

While Redis cannot be reached, claims are made on this node alone (the host
fabric's way): the node keeps serving its clients, and two nodes may then
each hold a session for one id until the next claim.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..protocol.session import Session
from ..storage.base import StoreUnavailable
from .reaper import reap

if TYPE_CHECKING:
    from .streams import NodeLink

log = logging.getLogger("shardmq.nodes")


#: KEYS[1] owner record, ARGV[1] the claimant -> {previous owner or '', epoch}
CLAIM = """
local prev = redis.call('HGET', KEYS[1], 'o')
local e = redis.call('HINCRBY', KEYS[1], 'e', 1)
redis.call('HSET', KEYS[1], 'o', ARGV[1])
return {prev or '', e}
"""

#: KEYS[1] owner record, ARGV[1] the owner, ARGV[2] its epoch -> 1 if cleared
RELEASE = """
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] and redis.call('HGET', KEYS[1], 'e') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'o')
  return 1
end
return 0
"""

#: KEYS[1] owner record, ARGV[1] the process restoring the session -> its epoch
#: (the record names it, or no one: then it claims it), or -1 (another owns it)
ADOPT = """
local o = redis.call('HGET', KEYS[1], 'o')
if o == ARGV[1] then
  return tonumber(redis.call('HGET', KEYS[1], 'e'))
end
if o then
  return -1
end
local e = redis.call('HINCRBY', KEYS[1], 'e', 1)
redis.call('HSET', KEYS[1], 'o', ARGV[1])
return e
"""


class OwnersUnavailable(Exception):
    """The owner record could not be read or written (Redis unreachable)."""


class Owners:
    """The owner records as one worker process sees them (see the module docstring)."""

    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.me = f"{link.node_id}/{link.worker}"
        #: client id -> epoch under which this process holds it (settled claims)
        self.owned: dict[str, int] = {}
        #: client id -> epoch -> settled once that claim here is settled
        self.pending: dict[str, dict[int, asyncio.Future[None]]] = {}
        #: (client id, epoch of a claim running here) -> the TAKEs waiting for it
        self.waiting: dict[tuple[str, int], list[list[Any]]] = {}
        #: (client id, epoch of our claim) -> resolved with the owner's answer
        self.answers: dict[tuple[str, int], asyncio.Future[bool]] = {}
        #: sessions restored at start, not yet checked against their records
        self.unverified: dict[str, Session] = {}
        #: a dead node's sessions being installed here -> their epochs
        self.adopting: dict[str, int] = {}
        #: client id -> CLAIMs of ours sent whose replies are not read yet
        self.unanswered: dict[str, int] = {}
        #: TAKEs that may want such a claim, and claims waiting for one
        self.deferred: dict[str, list[list[Any]]] = {}
        self.reply_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._failing = False
        self._verifying: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        #: claims of this loop iteration, sent together (``_claim_script``)
        self._claims: list[tuple[str, asyncio.Future[Any]]] = []

    def key(self, client_id: str) -> str:
        return f"{self.link.prefix}:s:{{{client_id}}}:o"

    # -- claiming --------------------------------------------------------------------

    async def claim(self, client_id: str, clean_start: bool) -> tuple[int, dict[str, Any] | None]:
        """Claim ``client_id`` for this process: (epoch, the session moved from
        its previous owner or None). OwnersUnavailable if Redis cannot be
        reached; the caller must settle the claim with :meth:`settled`."""
        link = self.link
        ctl = link._ctl
        if ctl is None or not link._joined:
            raise self._unavailable("not joined yet")
        if not link.store.available:
            raise self._unavailable("the store cannot reach it")  # no waiting
        self.unanswered[client_id] = self.unanswered.get(client_id, 0) + 1
        try:
            async with asyncio.timeout(link.store_timeout):
                reply: Any = await self._claim_script(client_id)
        except Exception as exc:  # RedisError, OSError, TimeoutError
            self._answered(client_id)
            raise self._unavailable(str(exc) or type(exc).__name__) from None
        if self._failing:
            self._failing = False
            log.warning("node %s: client ids claimed through Redis again", link.node_id)
        prev = _text(reply[0])
        epoch = int(reply[1])
        loop = asyncio.get_running_loop()
        self.pending.setdefault(client_id, {})[epoch] = loop.create_future()
        self._answered(client_id)
        try:
            state = await self._take(client_id, prev, epoch, clean_start)
        except BaseException:
            self.settled(client_id, epoch)
            raise
        return epoch, state

    def _claim_script(self, client_id: str) -> asyncio.Future[Any]:
        """The CLAIM of ``client_id``, sent with every other claim of this loop
        iteration in one pipeline (one round trip for a burst of CONNECTs)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._claims:
            asyncio.get_running_loop().call_soon(self._send_claims)
        self._claims.append((client_id, fut))
        return fut

    def _send_claims(self) -> None:
        claims, self._claims = self._claims, []
        task = asyncio.ensure_future(self._run_claims(claims))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_claims(self, claims: list[tuple[str, asyncio.Future[Any]]]) -> None:
        ctl = self.link._ctl
        try:
            assert ctl is not None
            pipe = ctl.pipeline(transaction=False)
            for client_id, _fut in claims:
                pipe.eval(CLAIM, 1, self.key(client_id), self.me)
            replies = await pipe.execute()
        except BaseException as exc:
            for _cid, fut in claims:
                if not fut.done():
                    fut.set_exception(OwnersUnavailable(str(exc) or type(exc).__name__))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_cid, fut), reply in zip(claims, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)

    def _unavailable(self, why: str) -> OwnersUnavailable:
        if not self._failing:
            self._failing = True
            log.warning(
                "node %s: client ids claimed on this node alone while Redis is away: %s",
                self.link.node_id,
                why,
            )
        return OwnersUnavailable(why)

    async def _take(
        self, client_id: str, prev: str, epoch: int, clean_start: bool
    ) -> dict[str, Any] | None:
        link = self.link
        if not prev:
            return None  # nobody holds it
        if prev == self.me:
            while True:
                before = self.pending.get(client_id, {}).get(epoch - 1)
                if before is not None:
                    await asyncio.shield(before)
                    break
                if not self.unanswered.get(client_id):
                    break
                # our claim epoch - 1 is made, its reply not read yet
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.reply_waiters.setdefault(client_id, []).append(waiter)
                await waiter
            return None  # here: the connection takes it over as on one broker
        node, _, worker = prev.rpartition("/")
        handed = False
        if node == link.node_id or node in link.live:
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.answers[(client_id, epoch)] = fut
            link.send_take(node, [int(worker), client_id, epoch - 1, epoch, clean_start])
            try:
                # a live process answers in a few round trips; one silent for
                # node_timeout is dead to the other nodes too
                async with asyncio.timeout(link.node_timeout):
                    handed = await fut
            except TimeoutError:
                log.warning(
                    "node %s: %s did not hand over %r within %.1f s: read from the store",
                    link.node_id,
                    prev,
                    client_id,
                    link.node_timeout,
                )
            finally:
                self.answers.pop((client_id, epoch), None)
        if clean_start:
            return None
        try:
            state = await link.store.load_session(client_id)
        except StoreUnavailable as exc:
            log.warning("node %s: session %r not read: %s", link.node_id, client_id, exc)
            return None
        if handed and state is not None:
            # handed over by a live owner, which forwards what still reaches
            # it: installed with MoveDedupe, no marks (``Shard.install_session``)
            state["handled"] = {}
        return state

    def settled(self, client_id: str, epoch: int) -> bool:
        """The claim under ``epoch`` is settled (its session installed here, or
        parked, or it failed): TAKEs waiting for it go on. False: not a claim
        made through :meth:`claim`."""
        claims = self.pending.get(client_id)
        fut = claims.pop(epoch, None) if claims is not None else None
        if fut is None:
            return False
        if not claims:
            del self.pending[client_id]
        fut.set_result(None)
        held = self.owned.get(client_id, 0)
        if epoch > held:
            self.owned[client_id] = epoch
            if client_id not in self.link.shard.sessions:
                self.release(client_id, epoch)
        for take in self.waiting.pop((client_id, epoch), ()):
            self.on_take(take)
        if client_id not in self.pending:
            self.link.shard.fabric.fence.pop(client_id, None)  # no claim left to fence
        return True

    # -- the previous owner's side --------------------------------------------------

    def on_take(self, take: list[Any]) -> None:
        """``N_TAKE`` for this process: [node, worker, client id, epoch wanted,
        claimant's epoch, clean start]."""
        node, worker, client_id, wanted, epoch, clean_start = take
        claims = self.pending.get(client_id)
        if (claims is None or wanted not in claims) and self.unanswered.get(client_id):
            # the claim it wants may be ours, made but its reply not read yet
            self.deferred.setdefault(client_id, []).append(take)
            return
        if claims is not None and wanted in claims:
            fence = self.link.shard.fabric.fence
            fence[client_id] = max(fence.get(client_id, 0), epoch)
            self.waiting.setdefault((client_id, wanted), []).append(take)
            return
        found = False
        if self.owned.get(client_id) == wanted or client_id in self.unverified:
            found = True
            self.owned.pop(client_id, None)
            self.unverified.pop(client_id, None)
            shard = self.link.shard
            session = shard.sessions.get(client_id)
            keep = session is not None and not clean_start and session.expiry_interval != 0
            if session is not None:
                # what still reaches this process for the session goes on to
                # the claimant for MOVED_GRACE (``Shard.forward_moved``)
                shard.surrender(client_id, clean_start, (node, worker))
            if keep:
                self.link.store.session_released(client_id)
        self.link.send_taken(node, [worker, client_id, epoch, found])

    def _answered(self, client_id: str) -> None:
        """A CLAIM reply of ours for ``client_id`` is read: what waited for it goes on."""
        left = self.unanswered.get(client_id, 0) - 1
        if left > 0:
            self.unanswered[client_id] = left
        else:
            self.unanswered.pop(client_id, None)
        for waiter in self.reply_waiters.pop(client_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        for take in self.deferred.pop(client_id, ()):
            self.on_take(take)

    def on_taken(self, client_id: str, epoch: int, found: bool) -> None:
        fut = self.answers.get((client_id, epoch))
        if fut is not None and not fut.done():
            fut.set_result(found)

    # -- releasing and restoring ----------------------------------------------------

    def release(self, client_id: str, epoch: int) -> None:
        """The session ``client_id`` ended here: clear the owner record if it is
        still ours (a compare-and-set)."""
        if self.owned.get(client_id) != epoch:
            return
        del self.owned[client_id]
        if self.link._ctl is not None:
            task = asyncio.ensure_future(self._release(client_id, epoch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, client_id: str, epoch: int) -> None:
        ctl = self.link._ctl
        if ctl is None:
            return
        try:
            async with asyncio.timeout(self.link.store_timeout):
                await ctl.eval(RELEASE, 1, self.key(client_id), self.me, str(epoch))
        except Exception:
            pass  # the next claim asks us, and we answer that we hold nothing

    def restored(self, client_id: str, session: Session) -> None:
        epoch = self.adopting.pop(client_id, None)
        if epoch is not None:  # a dead node's, moved here by reaper.py
            self.owned[client_id] = epoch
            session.epoch = epoch
            return
        self.unverified[client_id] = session
        if self.link._joined:
            self.check_restored()

    def check_restored(self) -> None:
        """Verify the restored sessions (soon, and until Redis answers)."""
        if self.unverified and self._verifying is None:
            self._verifying = asyncio.ensure_future(self._verify_until_done())

    async def _verify_until_done(self) -> None:
        delay = 0.05
        try:
            while self.unverified:
                try:
                    await self.verify()
                except Exception as exc:
                    log.warning(
                        "node %s: restored sessions not checked yet: %s", self.link.node_id, exc
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._verifying = None

    def node_lost(self, node: str) -> None:
        """Node ``node`` is dead: adopt its sessions if this process gets its lock."""
        task = asyncio.ensure_future(self._reap(node))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, node: str) -> None:
        try:
            await reap(self.link, node)
        except Exception as exc:
            log.error(
                "node %s: sessions of dead node %s not adopted: %s", self.link.node_id, node, exc
            )

    async def stop(self) -> None:
        tasks = list(self._tasks)
        if self._verifying is not None:
            tasks.append(self._verifying)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def verify(self) -> None:
        """Check the sessions restored at start against their owner records:
        keep (and own) those naming this process or no one, drop the others."""
        while self.unverified:
            ctl = self.link._ctl
            assert ctl is not None
            batch = list(self.unverified.items())[:500]
            pipe = ctl.pipeline(transaction=False)
            for client_id, _session in batch:
                pipe.eval(ADOPT, 1, self.key(client_id), self.me)
            replies = await pipe.execute()
            shard = self.link.shard
            for (client_id, session), epoch in zip(batch, replies, strict=True):
                if self.unverified.get(client_id) is not session:
                    continue  # taken meanwhile
                del self.unverified[client_id]
                epoch = int(epoch)
                if epoch > 0:
                    self.owned[client_id] = epoch
                    session.epoch = epoch
                    continue
                log.info(
                    "node %s: session %r is owned by another process now: dropped here",
                    self.link.node_id,
                    client_id,
                )
                if shard.sessions.get(client_id) is session and session.connection is None:
                    session.will = None  # its owner settles it
                    shard.end_session(session, forget=False)
                    self.link.store.session_released(client_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""A dead node's sessions: adopted by exactly one survivor.

When a process finds a node gone (its heartbeat expired, or every one of its
workers said goodbye), it tries to take the node's reaping lock,
``P:reap:<node id>`` (``SET NX PX``). The one that gets it reads the node's
session index (``P:shards:<node>``, ``P:shard:<node>:<n>``) and moves each
session whose owner record still names a process of that node to itself, one
compare-and-set per session (:data:`ADOPT_FROM`: a client that reconnected
elsewhere meanwhile has claimed its session already, and keeps it). It then
installs those sessions as offline sessions of its own, as it would restore
them at start: a session that was online when its node died is offline from
now, so its will is published once its will delay has passed (at once without
one), its expiry counts from now, and one that had expired ends. In the same
step it delivers to them the messages in the dead node's stream that its
workers had not applied (``P:read:<node>``; ``NodeLink.unread_of`` and
``replay_adopted``), so what another node acknowledged for them, the dead
node's stream holding it, is not lost (a shared delivery addressed to one
of the dead node's members goes to one of the group's members here); and
for ``node_timeout`` it delivers
to them what is still appended there (``follow_dead``: the other nodes send
to the dead node until their own beat finds it gone), each message once
(``MoveDedupe``: a message sent there and here carries one number). From then on
they are sessions of this process: they queue what their subscriptions match,
and a client reconnecting anywhere takes its session from here
(``owners.py``). The lock is dropped once done; the compare-and-set, not the
lock, is what makes each session move once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..protocol.session import MoveDedupe
from ..storage import codec
from ..storage.base import StoredState
from ..storage.redis import UNREACHABLE

if TYPE_CHECKING:
    from .streams import NodeLink

log = logging.getLogger("shardmq.nodes")

#: milliseconds the reaping lock lasts if its holder dies while reaping
REAP_LOCK_MS = 60_000
#: owner records moved per round trip
CHUNK = 256

#: KEYS[1] owner record, ARGV[1] "<dead node>/", ARGV[2] the adopter -> its
#: epoch, or -1 (no process of the dead node owns it any more)
ADOPT_FROM = """
local o = redis.call('HGET', KEYS[1], 'o')
if not o or string.sub(o, 1, string.len(ARGV[1])) ~= ARGV[1] then
  return -1
end
local e = redis.call('HINCRBY', KEYS[1], 'e', 1)
redis.call('HSET', KEYS[1], 'o', ARGV[2])
return e
"""


async def reap(link: NodeLink, node: str) -> int:
    """Adopt the sessions of dead node ``node`` if this process gets its lock;
    returns how many were adopted."""
    ctl = link._ctl
    if ctl is None:
        return 0
    lock = f"{link.prefix}:reap:{node}"
    owners = link.owners
    if not await ctl.set(lock, owners.me, nx=True, px=REAP_LOCK_MS):
        return 0  # another survivor reaps it
    try:
        store = link.store
        ids = await store.session_ids_of(node)
        adopted: list[tuple[Any, int]] = []
        moved: list[tuple[int, str]] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            pipe = ctl.pipeline(transaction=False)
            for _shard, client_id in chunk:
                pipe.eval(ADOPT_FROM, 1, owners.key(client_id), f"{node}/", owners.me)
            epochs = await pipe.execute()
            for (shard_id, client_id), epoch in zip(chunk, epochs, strict=True):
                if int(epoch) <= 0:
                    continue  # claimed elsewhere: the node drops it if it comes back
                moved.append((shard_id, client_id))
                body = await store.load_session(client_id)
                if body is not None:
                    adopted.append((codec.unpack_session(body), int(epoch)))
        if moved:
            await store.forget_index_of(node, moved)
        shard = link.shard
        records = [rec for rec, _epoch in adopted if rec.client_id not in shard.sessions]
        replayed = 0
        if records:
            try:
                unread = await link.unread_of(node)
            except UNREACHABLE as exc:
                log.error(
                    "node %s: the stream of dead node %s not read (%s): what it had "
                    "not applied is not delivered to its sessions",
                    link.node_id,
                    node,
                    exc,
                )
                unread = None
            # from here to the end of the replay: no await, so nothing reaches
            # the adopted sessions before what was sent to the dead node
            for rec, epoch in adopted:
                owners.adopting[rec.client_id] = epoch
            shard.restore(StoredState(sessions=records))
            installed = {rec.client_id for rec in records}
            # a message sent both to the dead node and here is delivered once
            until = asyncio.get_running_loop().time() + 2 * link.node_timeout
            for client_id in installed:
                session = shard.sessions.get(client_id)
                if session is not None and session.dedupe is None:
                    session.dedupe = MoveDedupe({}, set(), until)
            if unread is not None:
                by_worker: dict[int, set[str]] = {}
                for shard_id, client_id in moved:
                    if client_id in installed:
                        by_worker.setdefault(shard_id, set()).add(client_id)
                replayed = link.replay_adopted(*unread, by_worker)
                link.spawn(link.follow_dead(node, unread[3], installed))
        log.log(
            logging.WARNING if records else logging.DEBUG,
            "node %s: node %s is dead: %d of its %d sessions adopted here, "
            "%d deliveries to them of messages it had not applied",
            link.node_id,
            node,
            len(records),
            len(ids),
            replayed,
        )
        return len(records)
    finally:
        try:
            await ctl.delete(lock)
        except Exception:
            pass

"""The cross-shard fabric interface, and the single-process implementation.

The shard (``shardmq/worker/shard.py``) talks to other shards only through
these methods. :class:`Fabric` is the broker with one shard: every method is
a no-op and ``distributed`` is False, so the single-process hot path pays one
attribute test. ``local.LocalFabric`` implements it over Unix-domain sockets
between the workers of one host; ``node_fabric`` layers the other nodes of a
cluster (Redis Streams, ``streams.py``) over either.

Consistency the fabric gives the shard (what the tests rely on):

- interest deltas, retained updates and session claims travel on a control
  link, publishes on a data link, so control frames are never queued behind
  bulk traffic;
- :meth:`barrier` resolves once every live peer has applied everything this
  shard sent it before: SUBACK waits for it, so once a client holds its SUBACK
  a publish on any worker reaches it; a retained PUBLISH at QoS 1/2 waits for
  it before its PUBACK, so a subscriber on any worker then sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Container
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from ..protocol.session import Message, Session, Subscription
from ..routing.retained import RetainedStore
from ..storage.base import Store, StoredState

#: a session as handed between shards (``storage.codec.pack_session`` and the
#: move's dedupe marks): a msgpack body
SessionState = dict[str, Any]


class Writer(Protocol):
    """Anything whose outgoing buffer takes part in flow control: a client
    connection or a link to another shard."""

    client_id: str

    def buffer_size(self) -> int: ...

    def delivered(self) -> int:
        """A count that grows while the peer takes data off the socket (see
        ``socketinfo``): bytes acknowledged, or bytes read by the peer."""
        ...


class FabricShard(Protocol):
    """What a fabric needs of the shard it serves (``worker/shard.py``)."""

    shard_id: int
    store: Store | None
    #: the last message number received from each origin shard
    seen: dict[int, int]
    #: sessions that left for another shard: (new owner, subscriptions, until)
    moved: dict[str, tuple[int | tuple[str, int], list[Subscription], float]]
    retained: RetainedStore[Message]
    #: client id -> its session on this shard
    sessions: dict[str, Session]
    fabric: Fabric

    def end_session(self, session: Session, forget: bool = True) -> None: ...

    def restore(self, state: StoredState, from_store: bool = False) -> None: ...

    def route_local(self, msg: Message) -> int: ...

    def route_to(self, msg: Message, keep: Callable[[str], bool]) -> int: ...

    def forward_moved(
        self, msg: Message, remote_only: bool = False, only: Container[str] | None = None
    ) -> int: ...

    def deliver_direct(
        self, client_id: str, msg: Message, qos: int, retain: bool, ids: list[int] | None
    ) -> None: ...

    def deliver_shared(self, msg: Message, group_name: str, topic_filter: str) -> int: ...

    def surrender(
        self, client_id: str, clean_start: bool, new_owner: int | tuple[str, int] | None = None
    ) -> SessionState | None: ...

    def pack_message(self, msg: Message, now: float) -> list[Any]: ...

    def unpack_message(self, data: list[Any], now: float) -> Message: ...

    def writer_paused(self, conn: Writer) -> None: ...

    def writer_resumed(self, conn: Writer) -> None: ...


async def _done() -> None:
    return None


class Fabric:
    """No other shards: the single-process broker."""

    distributed = False
    shard_id = 0
    workers = 1
    #: True while another shard holds a shared subscription
    remote_shared = False

    def attach(self, shard: FabricShard) -> None:
        self.shard = shard

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # -- routing -------------------------------------------------------------------

    def forward(self, message: Message) -> int:
        """Send ``message`` once to every other shard with matching subscribers."""
        return 0

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[Any, int]]:
        """Members others hold in the shared groups matching ``topic``:
        (group, filter) -> {holder: members}, a holder being a shard of this
        host or, in a cluster, a worker process of another node."""
        return {}

    def forward_shared(self, holder: Any, message: Message, group: str, topic_filter: str) -> None:
        """``message`` for one member of ``$share/group/topic_filter`` at ``holder``
        (a key of :meth:`shared_for`)."""

    def deliver_to(
        self,
        shard_id: Any,
        client_id: str,
        message: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
    ) -> None:
        """Hand one delivery to the session ``client_id`` now owned by
        ``shard_id`` (in a cluster, (node, worker) for another node's process)."""

    #: the shards the last :meth:`forward` sent to
    last_dests: AbstractSet[int] = frozenset()

    def subscription_added(self, full_filter: str) -> None:
        pass

    def subscription_removed(self, full_filter: str) -> None:
        pass

    def barrier(self) -> Awaitable[None]:
        """Resolves once every live peer has applied what this shard sent it
        before the call (the requests go out with the next ``flush_now``, or
        at the end of the loop iteration)."""
        return _done()

    def stored(self) -> asyncio.Future[None] | None:
        """Durable store: the future that completes once every worker that was
        handed a QoS 1/2 message in this loop iteration has stored what it
        delivered (None: no such message). One worker: always None."""
        return None

    def flush_now(self) -> None:
        """Write queued control frames now instead of at the end of the iteration."""

    def store_rewritten(self) -> None:
        """The durable store dropped changes it could not write and rewrote this
        shard's state whole: what the fabric kept in the store must be too."""

    # -- retained --------------------------------------------------------------------

    def retained_changed(self, topic: str, message: Message | None) -> None:
        pass

    # -- sessions --------------------------------------------------------------------

    async def acquire(self, client_id: str, clean_start: bool) -> tuple[int, SessionState | None]:
        """Claim ``client_id`` for this shard; returns (epoch, session state moved
        from another shard or None)."""
        return 0, None

    def claim_done(self, client_id: str, epoch: int) -> None:
        """The claim ``acquire`` made under ``epoch`` is settled (the session is
        installed, or kept offline): the next claim of the id may proceed."""

    def release(self, client_id: str, epoch: int) -> None:
        pass

    def restored(self, client_id: str, session: Session) -> None:
        """A session restored from a store at start is owned by this shard."""

    # -- figures -----------------------------------------------------------------------

    def peer_stats(self) -> dict[int, dict[str, int]]:
        return {}

    def publish_stats(self, figures: dict[str, int]) -> None:
        """Share this shard's $SYS figures with the others."""

    def cluster_stats(self) -> tuple[int, dict[str, int]] | None:
        """Several nodes: (live nodes, the $SYS figures summed over all their
        workers), as last read; None when not a cluster node."""
        return None

    #: client id -> newest epoch seen for a take-over (fencing)
    fence: dict[str, int] = {}

"""The cross-shard fabric interface, and the single-process implementation.

The shard (``shardmq/worker/shard.py``) talks to other shards only through
these methods. :class:`Fabric` is the broker with one shard: every method is
a no-op and ``distributed`` is False, so the single-process hot path pays one
attribute test. ``local.LocalFabric`` implements it over Unix-domain sockets
between the workers of one host; a Redis pub/sub implementation for several
hosts fits the same interface.

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

from collections.abc import Awaitable
from typing import Any


async def _done() -> None:
    return None


class Fabric:
    """No other shards: the single-process broker."""

    distributed = False
    shard_id = 0
    workers = 1
    #: True while another shard holds a shared subscription
    remote_shared = False

    def attach(self, shard: Any) -> None:
        self.shard = shard

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # -- routing -------------------------------------------------------------------

    def forward(self, message: Any) -> int:
        """Send ``message`` once to every other shard with matching subscribers."""
        return 0

    def shared_for(self, topic: str) -> dict[tuple[str, str], dict[int, int]]:
        """Members other shards hold in the shared groups matching ``topic``."""
        return {}

    def forward_shared(self, shard_id: int, message: Any, group: str, topic_filter: str) -> None:
        pass

    def deliver_to(
        self, shard_id: int, client_id: str, message: Any, qos: int, retain: bool, ids: Any
    ) -> None:
        """Hand one delivery to the session ``client_id`` now owned by ``shard_id``."""

    #: the shards the last :meth:`forward` sent to
    last_dests: Any = frozenset()

    def subscription_added(self, full_filter: str) -> None:
        pass

    def subscription_removed(self, full_filter: str) -> None:
        pass

    def barrier(self) -> Awaitable[None]:
        """Resolves once every live peer has applied what this shard sent it
        before the call (the requests go out with the next ``flush_now``, or
        at the end of the loop iteration)."""
        return _done()

    def stored(self) -> Awaitable[None] | None:
        """Durable store: the future that completes once every worker that was
        handed a QoS 1/2 message in this loop iteration has stored what it
        delivered (None: no such message). One worker: always None."""
        return None

    def flush_now(self) -> None:
        """Write queued control frames now instead of at the end of the iteration."""

    # -- retained --------------------------------------------------------------------

    def retained_changed(self, topic: str, message: Any) -> None:
        pass

    # -- sessions --------------------------------------------------------------------

    async def acquire(self, client_id: str, clean_start: bool) -> tuple[int, Any]:
        """Claim ``client_id`` for this shard; returns (epoch, session state moved
        from another shard or None)."""
        return 0, None

    def claim_done(self, client_id: str, epoch: int) -> None:
        """The claim ``acquire`` made under ``epoch`` is settled (the session is
        installed, or kept offline): the next claim of the id may proceed."""

    def release(self, client_id: str, epoch: int) -> None:
        pass

    def restored(self, client_id: str, session: Any) -> None:
        """A session restored from a store at start is owned by this shard."""

    # -- figures -----------------------------------------------------------------------

    def peer_stats(self) -> dict[int, dict[str, int]]:
        return {}

"""The store interface: every change of session and retained state, as events.

Theory of operation
-------------------
The shard's in-memory state is what the broker serves from; a store keeps a
durable copy. Every change goes to the store as one of the events below, in
the order it happened: the session's own changes through its journal
(``SessionJournal``, called by the ``Session`` methods that make them), the
shard's through ``Store``. A store buffers what it is told and writes it in
one batch per event-loop iteration; ``flush`` starts the write of what is
buffered and returns an awaitable that completes once it is written (or
fails with ``StoreUnavailable``). The broker acknowledges a QoS 1/2 PUBLISH
only after the batch holding its effects is written, when the store is
``durable``.

At start, ``load`` returns what was saved: the sessions this shard owned and
the retained messages. Only persistent sessions (session expiry above 0, or a
3.1.1 Clean Session 0) are journalled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.session import Message, Session, SessionJournal, Subscription
from .codec import SessionRecord


class StoreUnavailable(Exception):
    """The store could not write (or read) in time."""


@dataclass
class StoredState:
    sessions: list[SessionRecord] = field(default_factory=list)
    retained: list[Message] = field(default_factory=list)


class Store(SessionJournal, Protocol):
    #: QoS 1/2 acknowledgements wait until the batch holding their effects is written
    durable: bool

    async def open(self) -> None:
        """Connect (retrying within the configured time) or raise StoreUnavailable."""

    async def close(self) -> None:
        """Write what is buffered and disconnect."""

    async def load(self) -> StoredState:
        """What was saved for this shard."""

    def session_saved(self, session: Session) -> None:
        """A whole persistent session (header, subscriptions, queue, flight), as it
        is now: created, resumed, moved here, or its expiry, will or deadlines
        changed."""

    def session_updated(self, session: Session) -> None:
        """The session's header changed (expiry, will, deadlines, online or
        not); subscriptions, queue and flight state are told as they change."""

    def session_deleted(self, client_id: str) -> None:
        """The session ended: everything kept for it goes."""

    def subscription_added(self, session: Session, full_filter: str, sub: Subscription) -> None:
        pass

    def subscription_removed(self, session: Session, full_filter: str) -> None:
        pass

    def retained_set(self, message: Message) -> None:
        pass

    def retained_deleted(self, topic: str) -> None:
        pass

    #: False while the store cannot be reached: sessions that need it are refused
    available: bool

    def pending(self) -> bool:
        """True while written-but-not-yet-flushed events are buffered."""

    def flush(self) -> asyncio.Future[None]:
        """Write what is buffered; completes once it is written."""


def all_done(a: asyncio.Future[Any], b: asyncio.Future[Any]) -> asyncio.Future[None]:
    """A future done once ``a`` and ``b`` are; it fails (StoreUnavailable) if either
    fails or is cancelled: what an acknowledgement waiting on two writes awaits."""
    out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = [2]

    def one(fut: asyncio.Future[Any]) -> None:
        if out.done():
            return
        if fut.cancelled() or fut.exception() is not None:
            out.set_exception(StoreUnavailable("store unavailable"))
            out.exception()  # retrieved here: the waiters read it themselves
            return
        left[0] -= 1
        if left[0] == 0:
            out.set_result(None)

    a.add_done_callback(one)
    b.add_done_callback(one)
    return out

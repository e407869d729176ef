"""Messages, subscriptions and sessions: the state a client's id owns.

Theory of operation
-------------------
A :class:`Message` is created once per PUBLISH that enters the broker and is
shared, never copied, by every session it is delivered to; its
:class:`~shardmq.protocol.fanout.PublishTemplate` holds the encoded topic,
properties and payload, so a fan-out encodes once.

A :class:`Session` outlives its connection when its expiry interval is not 0.
It holds the client's subscriptions, the outbound QoS 1/2 messages in flight
(``inflight``: packet id -> :class:`Outbound`, in send order, resent with DUP
only when the client reconnects [MQTT-4.4.0-1]), the messages waiting for a
free slot in the client's receive window or for the client to come back
(``pending``, bounded by ``max_queued_messages``; the drop policy is counted
in ``dropped``), and the inbound QoS 2 packet ids received but not yet
released (exactly-once on the inbound side: a PUBLISH whose id is still in
``inbound_qos2`` is acknowledged again but not routed again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Protocol

from ..protocol.fanout import PublishTemplate
from ..protocol.packets import Properties, Will


class Message:
    """One application message, shared by all its deliveries."""

    __slots__ = (
        "topic",
        "payload",
        "qos",
        "retain",
        "properties",
        "expiry_at",
        "origin",
        "template",
        "src",
        "seq",
        "dests",
        "nid",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None,
        expiry_at: float | None,
        origin: str | None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        #: wall-clock (epoch seconds) deadline after which it is never delivered
        self.expiry_at = expiry_at
        #: client id of the publisher (for No Local), None for server messages
        self.origin = origin
        #: built on first delivery (a message only handed to other shards never needs it)
        self.template: PublishTemplate | None = None
        #: multi-worker broker: the shard that routed it first and its number
        #: there (strictly growing per shard), and every shard it was sent to;
        #: a session that moves between shards uses them to deliver it once
        self.src = -1
        self.seq = 0
        self.dests: tuple[int, ...] = ()
        #: cluster: (node, worker, epoch, number) of the process that sent it
        #: to other nodes, the same on every copy (a session moving between
        #: nodes gets it once: MoveDedupe); None while it stayed on its node
        self.nid: tuple[str, int, int, int] | None = None

    def encoder(self) -> PublishTemplate:
        """The message's fan-out encoder (topic, properties and payload encoded once)."""
        tmpl = self.template
        if tmpl is None:
            tmpl = self.template = PublishTemplate(self.topic, self.payload, self.properties)
        return tmpl


class Subscription:
    """One topic filter a session subscribed to, with its options."""

    __slots__ = (
        "session",
        "topic_filter",
        "qos",
        "no_local",
        "retain_as_published",
        "retain_handling",
        "identifier",
        "group",
    )

    def __init__(
        self,
        session: Session,
        topic_filter: str,
        qos: int,
        no_local: bool,
        retain_as_published: bool,
        retain_handling: int,
        identifier: int | None,
        group: str | None,
    ) -> None:
        self.session = session
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.identifier = identifier
        self.group = group


class Outbound:
    """A QoS 1/2 message sent to the client and not yet fully acknowledged."""

    __slots__ = ("message", "qos", "retain", "subscription_ids", "released")

    def __init__(
        self, message: Message, qos: int, retain: bool, subscription_ids: list[int] | None
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_ids = subscription_ids
        #: QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is awaited
        self.released = False


#: Session Expiry Interval meaning "never"; also what a 3.1.1 Clean Session 0 gets
NEVER_EXPIRES = 0xFFFFFFFF

#: A queued delivery: (message, qos, retain, subscription ids)
Delivery = tuple[Message, int, bool, list[int] | None]


class Subscriber(Protocol):
    """A session's live connection, as the shard sees it."""

    client_id: str

    def send_message(self, msg: Message, qos: int, retain: bool, ids: list[int] | None) -> None:
        """Deliver one message now (or queue it in the session's window)."""

    def take_over(self) -> None:
        """Another connection claimed the client id: close with 0x8E."""


#: the inbound QoS 2 ids of a session that has none (shared, never changed)
NO_IDS: frozenset[int] = frozenset()


class _NoneYet(dict):  # type: ignore[type-arg]
    """The empty dict a session starts with instead of one of its own (most
    sessions of a crowd of idle clients never subscribe or have a message in
    flight): shared, so it refuses writes; the first write replaces it
    (``Session.own_subscriptions``, ``Session.put_inflight``)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a session's shared empty dict is read-only: replace it first")

    __setitem__ = _refuse
    setdefault = _refuse
    update = _refuse


NO_SUBSCRIPTIONS: dict[str, Subscription] = _NoneYet()
NO_FLIGHT: dict[int, Outbound] = _NoneYet()


class SessionJournal(Protocol):
    """Told of every change of a session's queue and flight state, in order
    (a store keeps a durable copy from it; see ``storage/base.py``). The
    ``Session`` methods below call it, so no change can bypass it."""

    def queued(self, session: Session, delivery: Delivery) -> None:
        """``delivery`` was appended to the session's queue."""

    def unqueued(self, session: Session) -> None:
        """The head of the queue left it (sent, expired or dropped)."""

    def sent(self, session: Session, packet_id: int, out: Outbound) -> None:
        """An outbound QoS 1/2 message is in flight under ``packet_id``."""

    def released(self, session: Session, packet_id: int) -> None:
        """QoS 2: PUBREC received, PUBREL sent."""

    def acknowledged(self, session: Session, packet_id: int) -> None:
        """The outbound flow of ``packet_id`` ended (PUBACK, PUBCOMP, dropped)."""

    def inbound_added(self, session: Session, packet_id: int) -> None:
        """An inbound QoS 2 PUBLISH was routed and PUBREC'd (not yet released)."""

    def inbound_released(self, session: Session, packet_id: int) -> None:
        """Its PUBREL arrived: the inbound flow ended."""


class Session:
    __slots__ = (
        "client_id",
        "subscriptions",
        "expiry_interval",
        "connection",
        "inflight",
        "pending",
        "inbound_qos2",
        "next_packet_id",
        "will",
        "will_at",
        "expires_at",
        "dropped",
        "max_queued",
        "drop_oldest",
        "queue_qos0",
        "epoch",
        "dedupe",
        "journal",
    )

    def __init__(
        self, client_id: str, max_queued: int, drop_oldest: bool, queue_qos0: bool
    ) -> None:
        self.client_id = client_id
        #: full filter (``$share/g/f`` included) -> Subscription
        #: (NO_SUBSCRIPTIONS, shared, until the first: ``own_subscriptions``)
        self.subscriptions: dict[str, Subscription] = NO_SUBSCRIPTIONS
        self.expiry_interval = 0
        self.connection: Subscriber | None = None
        #: packet id -> delivery in flight (NO_FLIGHT, shared, until the first)
        self.inflight: dict[int, Outbound] = NO_FLIGHT
        #: queued deliveries, oldest first; the empty tuple until the first
        #: one (an empty deque costs 760 bytes, and most sessions never queue)
        self.pending: deque[Delivery] | tuple[()] = ()
        #: inbound QoS 2 packet ids answered with PUBREC, not yet released
        #: (a shared empty frozenset until the first: most sessions have none)
        self.inbound_qos2: set[int] | frozenset[int] = NO_IDS
        self.next_packet_id = 1
        self.will: Will | None = None
        #: wall-clock time the delayed will is due, while it waits
        self.will_at: float | None = None
        #: wall-clock time the session expires, while it is offline
        self.expires_at: float | None = None
        self.dropped = 0
        self.max_queued = max_queued
        self.drop_oldest = drop_oldest
        self.queue_qos0 = queue_qos0
        #: ownership epoch on a multi-worker broker (see cluster/local.py)
        self.epoch = 0
        #: for a while after moving here from another shard: what was already
        #: delivered elsewhere (see MoveDedupe)
        self.dedupe: MoveDedupe | None = None
        #: set while the session is persistent and a store keeps it
        self.journal: SessionJournal | None = None

    def allocate_packet_id(self) -> int:
        """The next free outbound packet id (1..65535)."""
        pid = self.next_packet_id
        inflight = self.inflight
        for _ in range(65535):
            if pid not in inflight:
                break
            pid = pid % 65535 + 1
        else:
            raise RuntimeError("no free packet identifier")
        self.next_packet_id = pid % 65535 + 1
        return pid

    def enqueue(self, delivery: Delivery) -> bool:
        """Queue a delivery; returns False (and counts it) when one was dropped."""
        pending = self.pending
        if not pending:
            pending = self.pending = deque()
        journal = self.journal
        if len(pending) >= self.max_queued:
            self.dropped += 1
            if not self.drop_oldest or not pending:
                return False
            pending.popleft()
            pending.append(delivery)
            if journal is not None:
                journal.unqueued(self)
                journal.queued(self, delivery)
            return False
        pending.append(delivery)
        if journal is not None:
            journal.queued(self, delivery)
        return True

    def pop_pending(self) -> Delivery:
        """Take the head of the queue (to send it, or because it expired)."""
        pending = self.pending
        assert pending, "pop_pending on an empty queue"
        delivery = pending.popleft()
        if self.journal is not None:
            self.journal.unqueued(self)
        return delivery

    def own_subscriptions(self) -> dict[str, Subscription]:
        """The session's subscriptions, as a dict of its own to write to."""
        subs = self.subscriptions
        if subs is NO_SUBSCRIPTIONS:
            subs = self.subscriptions = {}
        return subs

    def put_inflight(self, packet_id: int, out: Outbound) -> None:
        inflight = self.inflight
        if inflight is NO_FLIGHT:
            inflight = self.inflight = {}
        inflight[packet_id] = out
        if self.journal is not None:
            self.journal.sent(self, packet_id, out)

    def release(self, packet_id: int, out: Outbound) -> None:
        """QoS 2 outbound: the PUBREC arrived; only PUBCOMP is awaited now."""
        out.released = True
        if self.journal is not None:
            self.journal.released(self, packet_id)

    def end_flight(self, packet_id: int) -> Outbound | None:
        """The outbound flow of ``packet_id`` is over; returns what it carried."""
        out = self.inflight.pop(packet_id, None)
        if out is not None and self.journal is not None:
            self.journal.acknowledged(self, packet_id)
        return out

    def add_inbound(self, packet_id: int) -> None:
        ids = self.inbound_qos2
        if isinstance(ids, set):
            ids.add(packet_id)
        else:
            self.inbound_qos2 = {packet_id}
        if self.journal is not None:
            self.journal.inbound_added(self, packet_id)

    def release_inbound(self, packet_id: int) -> bool:
        """The PUBREL of an inbound QoS 2 flow; False when the id was not known."""
        ids = self.inbound_qos2
        if packet_id not in ids:
            return False
        assert isinstance(ids, set)
        ids.discard(packet_id)
        if self.journal is not None:
            self.journal.inbound_released(self, packet_id)
        return True


class MoveDedupe:
    """Exactly-once delivery for a session that just moved between shards.

    Theory of operation. Every message routed on a multi-worker broker carries
    its origin shard ``src``, a number ``seq`` strictly growing per origin, and
    ``dests``, the shards the origin sent it to. Links are ordered, so each
    shard receives one origin's messages in ``seq`` order. When a shard hands
    a session over it reports ``handled[shard][src]``: the last number it
    received from each origin; every message it received up to there that
    matched the session was delivered to the session (or is in the state
    handed over). The new owner then receives each remaining message at most
    twice: routed to itself, and forwarded by the previous owner, which
    forwards what reaches it for the session during ``MOVED_GRACE``. A
    message is a duplicate when a shard in its ``dests`` already handled its
    number, or when its id is among those delivered since the move. Both
    tables live only for the move's window, so steady-state delivery pays one
    attribute test.

    Between nodes (``cluster/owners.py``) there are no marks: the previous
    owner keeps its interest and forwards, for ``MOVED_GRACE``, what reaches
    it for the session, and the new owner installs the session with empty
    ``handled`` and drops what it routed to itself while claiming it (the
    old owner delivered those, or forwards them: each node reads one ordered
    stream, which also carries the old owner's answer). A message sent to
    other nodes carries ``nid``, its number in the cluster, on every copy:
    the second copy to arrive is the duplicate.
    """

    __slots__ = ("handled", "ids", "until")

    def __init__(
        self, handled: dict[int, dict[int, int]], ids: set[Hashable], until: float
    ) -> None:
        self.handled = handled
        self.ids = ids
        self.until = until

    def duplicate(self, msg: Message) -> bool:
        src = msg.src
        if src >= 0:
            seq = msg.seq
            handled = self.handled
            for shard in msg.dests:
                marks = handled.get(shard)
                if marks is not None and marks.get(src, -1) >= seq:
                    return True
        # a message that went to other nodes is known by its node-wide number
        # on every copy (routed here, forwarded by the old owner)
        key: Hashable = msg.nid
        if key is None:
            if src < 0:
                return False
            key = (src << 48) | msg.seq
        ids = self.ids
        if key in ids:
            return True
        if len(ids) < MAX_MOVE_IDS:
            ids.add(key)
        return False


#: ids remembered per moving session (bounds the memory a move can pin)
MAX_MOVE_IDS = 200_000

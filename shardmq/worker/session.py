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
        #: loop-clock deadline after which the message is never delivered
        self.expiry_at = expiry_at
        #: client id of the publisher (for No Local), None for server messages
        self.origin = origin
        #: built on first delivery (a message only handed to other shards never needs it)
        self.template: PublishTemplate | None = None

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


#: A queued delivery: (message, qos, retain, subscription ids)
Delivery = tuple[Message, int, bool, list[int] | None]


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
        "will_timer",
        "expiry_timer",
        "dropped",
        "max_queued",
        "drop_oldest",
        "queue_qos0",
        "epoch",
    )

    def __init__(
        self, client_id: str, max_queued: int, drop_oldest: bool, queue_qos0: bool
    ) -> None:
        self.client_id = client_id
        #: full filter (``$share/g/f`` included) -> Subscription
        self.subscriptions: dict[str, Subscription] = {}
        self.expiry_interval = 0
        self.connection: object | None = None
        self.inflight: dict[int, Outbound] = {}
        self.pending: deque[Delivery] = deque()
        self.inbound_qos2: set[int] = set()
        self.next_packet_id = 1
        self.will: Will | None = None
        self.will_timer: object | None = None
        self.expiry_timer: object | None = None
        self.dropped = 0
        self.max_queued = max_queued
        self.drop_oldest = drop_oldest
        self.queue_qos0 = queue_qos0
        #: ownership epoch on a multi-worker broker (see cluster/local.py)
        self.epoch = 0

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
        if len(pending) >= self.max_queued:
            self.dropped += 1
            if not self.drop_oldest or not pending:
                return False
            pending.popleft()
            pending.append(delivery)
            return False
        pending.append(delivery)
        return True

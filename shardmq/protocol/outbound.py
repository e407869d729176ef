"""The outbound engine of one connection: what the broker sends a client (sans-I/O).

Theory of operation
-------------------
An :class:`Outbox` holds the terms the client set in its CONNECT (protocol
version, Receive Maximum, Maximum Packet Size, Topic Alias Maximum) and the
state they imply (the topic aliases given so far, the in-flight packet ids
still to resend after a reconnect). It turns deliveries into PUBLISH bytes:

- a QoS 0 delivery is encoded (from the message's shared template) and
  written at once, or discarded when it exceeds the client's Maximum Packet
  Size [MQTT-3.1.2-25];
- a QoS 1/2 delivery takes a packet id and a slot of the client's receive
  window, or waits in the session's queue while the window is full
  [MQTT-3.3.4-9]; :meth:`window_freed` and :meth:`drain` send what waits once
  an acknowledgement frees a slot;
- after a reconnect to an existing session, :meth:`resend` sends the
  unacknowledged PUBLISHes again with DUP set and the PUBRELs, in their
  original order [MQTT-4.4.0-1], no more at once than the new window allows;
- a topic alias is assigned to each new topic while the client's maximum
  allows, and kept only once the PUBLISH carrying it was sent.

Every call that can deliver takes ``now`` (wall-clock seconds, the clock of
``Message.expiry_at``): a message whose expiry has passed is never sent
[MQTT-3.3.2-5], one still valid carries the remaining interval
[MQTT-3.3.2-6]. The engine reads no clock and does no I/O: bytes go to the
``write`` callable it was given (the connection's output buffer), counts to
the ``stats`` object. Control packets (acknowledgements, DISCONNECT, AUTH)
go through :meth:`control`, which drops their Reason String and then their
User Properties when that is what it takes to fit the client's limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .codec import encode
from .constants import MQTT5, MQTT311
from .packets import Pubrel
from .session import Message, Outbound, Session


class Counters(Protocol):
    """Where the engine counts what it sent and what it had to discard."""

    messages_sent: int
    messages_dropped: int
    #: deliveries by QoS; only QoS 1 and 2 are counted here
    sent_qos: list[int]
    dropped_queue_full: int
    dropped_acl: int
    dropped_expired: int


def remaining_expiry(msg: Message, now: float) -> int | None:
    """Seconds left of a message's expiry, rounded up [MQTT-3.3.2-6]; -1 when
    it has expired; None when it never expires."""
    if msg.expiry_at is None:
        return None
    left = msg.expiry_at - now
    if left <= 0:
        return -1
    # expiry_at = arrival + interval in floats: the difference can come back a
    # hair above the interval (60.000000000000004), which must not round up
    # to a second more than the publisher gave [MQTT-3.3.2-6], nor past the
    # four bytes the property has
    return min(math.ceil(left - 1e-6), 0xFFFFFFFF)


def fit(packet: Any, version: int, limit: int) -> bytes | None:
    """``packet`` without its Reason String, then without its User
    Properties, whichever first fits ``limit`` [MQTT-3.2.2-19, -20],
    [MQTT-3.4.2-2, -3] and their siblings for PUBREC, PUBREL, PUBCOMP,
    SUBACK, UNSUBACK, DISCONNECT [MQTT-3.14.2-3, -4] and AUTH; None when
    neither is enough. The packet is left as it was."""
    props = getattr(packet, "properties", None)
    if props is None or (props.reason_string is None and not props.user_properties):
        return None
    original = props
    props = props.copy()
    packet.properties = props
    try:
        for name in ("reason_string", "user_properties"):
            if getattr(props, name) is None:
                continue
            setattr(props, name, None)
            data = encode(packet, version)
            if len(data) <= limit:
                return data
        return None
    finally:
        packet.properties = original


#: the topic aliases of an Outbox that gave none yet (shared, never written)
_NO_ALIASES: dict[str, int] = {}


class Outbox:
    __slots__ = (
        "readable",
        "version",
        "window",
        "max_packet",
        "alias_max",
        "aliases",
        "unsent",
        "stats",
        "write",
    )

    def __init__(self, write: Callable[[bytes], None], stats: Counters) -> None:
        self.write = write
        self.stats = stats
        self.version = MQTT5
        #: the client's Receive Maximum, capped by the broker's max_inflight
        self.window = 65535
        #: the client's Maximum Packet Size; 0: none announced
        self.max_packet = 0
        #: the client's Topic Alias Maximum; 0: no aliases
        self.alias_max = 0
        #: topic -> the alias the client knows it by
        #: made at the first alias given (most clients ask for none)
        self.aliases: dict[str, int] = _NO_ALIASES
        #: in-flight packet ids still to resend after a reconnect (the empty
        #: tuple until there are some: most connections never have any)
        self.unsent: deque[int] | tuple[()] = ()
        #: access control: whether the client may read a topic (None: it may
        #: read everything it subscribed to); a wildcard subscription must not
        #: deliver a topic the rules deny it
        self.readable: Callable[[str], bool] | None = None

    def configure(
        self,
        version: int,
        receive_maximum: int | None,
        max_packet: int | None,
        alias_max: int | None,
        max_inflight: int,
    ) -> None:
        """The client's terms from its CONNECT (None: the property was absent)."""
        self.version = version
        window = 65535
        if version == MQTT5:
            if receive_maximum is not None:
                window = receive_maximum
            if max_packet is not None:
                self.max_packet = max_packet
            if alias_max:
                self.alias_max = alias_max
        self.window = min(window, max_inflight)

    # -- control packets ---------------------------------------------------------

    def control(self, packet: Any) -> bool:
        """Encode and write a control packet; False when even its smallest
        form exceeds the client's Maximum Packet Size (nothing is written: the
        caller must close the connection [MQTT-3.1.2-24])."""
        data = encode(packet, self.version)
        limit = self.max_packet
        if limit and len(data) > limit:
            fitted = fit(packet, self.version, limit)
            if fitted is None:
                return False
            data = fitted
        self.write(data)
        return True

    # -- deliveries --------------------------------------------------------------

    def deliver(
        self,
        session: Session,
        msg: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
        now: float,
    ) -> None:
        """Deliver one message to the connected client (the shard's fan-out)."""
        readable = self.readable
        if readable is not None and not readable(msg.topic):
            self.stats.messages_dropped += 1
            self.stats.dropped_acl += 1
            return
        expiry = remaining_expiry(msg, now)
        if expiry == -1:
            self.stats.dropped_expired += 1
            return  # expired: never delivered [MQTT-3.3.2-5]
        if qos == 0:
            tmpl = msg.template or msg.encoder()
            data: bytes | None
            if self.version == MQTT311:
                data = tmpl.encode_simple(MQTT311, retain)
            elif ids is None and expiry is None and not self.alias_max:
                data = tmpl.encode_simple(MQTT5, retain)
            else:
                data = self.encode(msg, 0, retain, False, 0, ids, expiry)
            if data is None or (self.max_packet and len(data) > self.max_packet):
                # [MQTT-3.1.2-25] never send more than the client accepts
                self.stats.messages_dropped += 1
                return
            self.stats.messages_sent += 1
            self.write(data)
            return
        if session.pending or len(session.inflight) >= self.window:
            if not session.enqueue((msg, qos, retain, ids)):
                self.stats.messages_dropped += 1
                self.stats.dropped_queue_full += 1
            return
        self._send_qos(session, msg, qos, retain, ids, expiry)

    def _send_qos(
        self,
        session: Session,
        msg: Message,
        qos: int,
        retain: bool,
        ids: list[int] | None,
        expiry: int | None,
    ) -> None:
        pid = session.allocate_packet_id()
        data = self.encode(msg, qos, retain, False, pid, ids, expiry)
        if data is None:
            # too large for this client: discarded as if delivered [MQTT-3.1.2-25]
            self.stats.messages_dropped += 1
            return
        session.put_inflight(pid, Outbound(msg, qos, retain, ids))
        self.stats.messages_sent += 1
        self.stats.sent_qos[qos] += 1
        self.write(data)

    def encode(
        self,
        msg: Message,
        qos: int,
        retain: bool,
        dup: bool,
        pid: int,
        ids: list[int] | None,
        expiry: int | None,
    ) -> bytes | None:
        """One delivery for this client; None when it exceeds the client's
        Maximum Packet Size (a new topic alias is only kept when sent)."""
        tmpl = msg.template or msg.encoder()
        limit = self.max_packet
        if self.version == MQTT311:
            data = tmpl.encode(MQTT311, qos, retain, dup, pid, None, 0, True, None)
            return None if limit and len(data) > limit else data
        alias_no = 0
        send_topic = True
        new_alias = False
        if self.alias_max:
            aliases = self.aliases
            alias_no = aliases.get(msg.topic, 0)
            if alias_no:
                send_topic = False
            elif len(aliases) < self.alias_max:
                alias_no = len(aliases) + 1
                new_alias = True
        data = tmpl.encode(MQTT5, qos, retain, dup, pid, ids, alias_no, send_topic, expiry)
        if limit and len(data) > limit:
            if not new_alias:
                return None
            # the alias property made it too big: send the plain topic instead
            data = tmpl.encode(MQTT5, qos, retain, dup, pid, ids, 0, True, expiry)
            return None if len(data) > limit else data
        if new_alias:
            aliases = self.aliases
            if aliases is _NO_ALIASES:
                aliases = self.aliases = {}
            aliases[msg.topic] = alias_no
        return data

    # -- the receive window --------------------------------------------------------

    def resend(self, session: Session, now: float) -> None:
        """Reconnected to an existing session: resend unacknowledged messages
        with DUP, and PUBRELs, in their original order [MQTT-4.4.0-1], no more
        at once than the client's new Receive Maximum allows [MQTT-3.3.4-9];
        the rest follow as acknowledgements free the window."""
        sent = 0
        later: deque[int] = deque()
        for pid in list(session.inflight):
            if sent >= self.window:
                later.append(pid)
            elif self._resend_one(session, pid, now):
                sent += 1
        if later:
            self.unsent = deque([*self.unsent, *later])

    def _resend_one(self, session: Session, pid: int, now: float) -> bool:
        out = session.inflight.get(pid)
        if out is None:
            return False
        if out.released:
            # a PUBREL without properties is 4 bytes: only an absurd
            # Maximum Packet Size (< 4) refuses it, and then nothing is sent
            self.control(Pubrel(pid))
            return True
        msg = out.message
        expiry = remaining_expiry(msg, now)
        if expiry == -1:
            session.end_flight(pid)  # expired while waiting: drop it
            return False
        data = self.encode(msg, out.qos, out.retain, True, pid, out.subscription_ids, expiry)
        if data is None:
            session.end_flight(pid)
            return False
        self.stats.messages_sent += 1
        self.stats.sent_qos[out.qos] += 1
        self.write(data)
        return True

    def window_freed(self, session: Session, now: float) -> None:
        """An outbound QoS 1/2 flow ended: resend or send what waits for the slot."""
        unsent = self.unsent
        while unsent:
            assert isinstance(unsent, deque)
            if self._resend_one(session, unsent.popleft(), now):
                return
        if session.pending:
            self.drain(session, now)

    def drain(self, session: Session, now: float) -> None:
        """Send queued messages while the client's receive window has room."""
        pending = session.pending
        inflight = session.inflight
        while pending:
            msg, qos, retain, ids = pending[0]
            if qos and len(inflight) >= self.window:
                return
            session.pop_pending()
            expiry = remaining_expiry(msg, now)
            if expiry == -1:
                self.stats.dropped_expired += 1
                continue
            if self.readable is not None and not self.readable(msg.topic):
                # queued while the rules allowed it, or before a reload denied it
                self.stats.messages_dropped += 1
                self.stats.dropped_acl += 1
                continue
            if qos == 0:
                data = self.encode(msg, 0, retain, False, 0, ids, expiry)
                if data is not None:
                    self.stats.messages_sent += 1
                    self.write(data)
            else:
                self._send_qos(session, msg, qos, retain, ids, expiry)

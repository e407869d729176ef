"""The shard: one worker's routing domain and the broker semantics over it.

Theory of operation
-------------------
A shard owns the sessions of the clients connected to its worker, the
subscription trie of those sessions, the shared-subscription groups and the
retained store. Connections (``connection.py``) decode packets and call in
here; the shard decides who gets a message and hands each delivery to the
receiving session's connection, or queues it while the client is away.

Routing goes through :meth:`Shard.route`: it delivers to the local
subscribers and hands the message to the fabric (``shardmq.cluster``), whose
single-process implementation does nothing. A shard-per-core broker plugs a
real fabric in without touching the connection code.

Writes are coalesced: a connection with output registers itself once in
``dirty`` and one ``call_soon`` per loop iteration flushes every dirty
connection with a single ``transport.write`` each.

Timers: sessions with an expiry and wills with a delay each hold one
``call_later`` handle, cancelled when the client comes back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import Config
from ..hooks import Hooks
from ..protocol.constants import ReasonCode
from ..protocol.packets import Connect, Properties, Will
from ..protocol.topics import has_wildcard, is_valid_topic_filter, parse_shared
from ..routing.retained import RetainedStore
from ..routing.shared import SharedSubscriptions
from ..routing.trie import SubscriptionTrie
from .session import Message, Session, Subscription

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("shardmq.shard")

NEVER_EXPIRES = 0xFFFFFFFF


class Fabric:
    """Hand-off to other shards. The single-process broker has none."""

    def forward(self, message: Message) -> int:
        """Send ``message`` to every other shard with matching subscribers; returns how many."""
        return 0

    def subscription_added(self, topic_filter: str) -> None:
        pass

    def subscription_removed(self, topic_filter: str) -> None:
        pass


class Stats:
    __slots__ = (
        "messages_received",
        "messages_sent",
        "bytes_received",
        "bytes_sent",
        "messages_dropped",
        "connections_total",
    )

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_dropped = 0
        self.connections_total = 0


class Shard:
    def __init__(
        self,
        config: Config,
        hooks: Hooks,
        loop: asyncio.AbstractEventLoop,
        broker: Any = None,
        shard_id: int = 0,
        fabric: Fabric | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.loop = loop
        self.broker = broker
        self.shard_id = shard_id
        self.fabric = fabric or Fabric()
        self.sessions: dict[str, Session] = {}
        self.trie: SubscriptionTrie[str, Subscription] = SubscriptionTrie()
        self.shared: SharedSubscriptions[str, Subscription] = SharedSubscriptions()
        self.retained: RetainedStore[Message] = RetainedStore()
        self.connections: set[Connection] = set()
        self.stats = Stats()
        self.started = time.time()
        # write coalescing
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        #: bytes written by connections since the last flush; a publisher is
        #: paused for the rest of the loop iteration once it passes the budget
        #: (libuv reads a socket up to 32 times per iteration, so without it
        #: one publisher could queue megabytes before any flush)
        self.unflushed = 0
        self.flush_budget = min(1024 * 1024, config.max_outgoing_buffer // 4)
        # flow control: connections whose transport asked us to stop writing
        self.congested: dict[Connection, int] = {}
        self.paused_readers: set[Connection] = set()
        self._stall_handle: asyncio.TimerHandle | None = None
        self._sys_handle: asyncio.TimerHandle | None = None
        self.closing = False
        self._id_counter = 0

    # -- write coalescing ------------------------------------------------------

    def mark_dirty(self, conn: Connection) -> None:
        self.dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self.unflushed = 0
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            conn.flush()
        if self.paused_readers and not self.congested:
            self.resume_readers()

    # -- flow control ------------------------------------------------------------
    #
    # A connection whose transport buffer passes its high-water mark is
    # "congested". While any connection is congested, publishers are paused
    # after each chunk they send, so a fast publisher is slowed to the pace of
    # its slowest reading subscriber instead of growing that subscriber's
    # buffer. A congested connection whose buffer has not shrunk in
    # STALL_CHECK seconds is declared stalled: it stops counting (publishers
    # run again) and, as its buffer keeps growing, it is disconnected once it
    # passes max_outgoing_buffer. So a stuck client cannot stall the broker,
    # and a slow one cannot exhaust its memory.

    STALL_CHECK = 0.5

    def writer_paused(self, conn: Connection) -> None:
        self.congested[conn] = conn.buffer_size()
        if self._stall_handle is None:
            self._stall_handle = self.loop.call_later(self.STALL_CHECK, self._check_stalled)

    def writer_resumed(self, conn: Connection) -> None:
        if self.congested.pop(conn, None) is not None and not self.congested:
            self.resume_readers()

    def _check_stalled(self) -> None:
        self._stall_handle = None
        congested = self.congested
        for conn, size in list(congested.items()):
            now = conn.buffer_size()
            if now >= size:
                del congested[conn]
                log.info("client %s stopped reading; not waiting for it", conn.client_id)
            else:
                congested[conn] = now
        if congested:
            self._stall_handle = self.loop.call_later(self.STALL_CHECK, self._check_stalled)
        else:
            self.resume_readers()

    def pause_reader(self, conn: Connection) -> None:
        """Stop reading a publisher until no subscriber is congested."""
        self.paused_readers.add(conn)
        conn.pause_reading()

    def resume_readers(self) -> None:
        readers = self.paused_readers
        self.paused_readers = set()
        for conn in readers:
            conn.resume_reading()

    # -- sessions --------------------------------------------------------------

    def assign_client_id(self) -> str:
        self._id_counter += 1
        return (
            f"shardmq-{self.shard_id}-{int(self.started * 1000) & 0xFFFFFFF:x}-{self._id_counter}"
        )

    def attach(
        self, conn: Connection, connect: Connect, expiry_interval: int
    ) -> tuple[Session, bool]:
        """Bind ``conn`` to its client id's session: take over, resume or create.

        Called only once the CONNECT has been accepted (authentication and
        hooks decided), so a refused CONNECT never touches a session.
        """
        cid = conn.client_id
        session = self.sessions.get(cid)
        if session is not None and session.connection is not None:
            old = session.connection
            # [MQTT-3.1.4-3] the existing connection is closed with 0x8E
            old.take_over()  # type: ignore[attr-defined]
            self._connection_ended(old, session, publish_will_now=connect.clean_start)
        present = False
        if session is not None:
            if connect.clean_start:
                self.end_session(session)
                session = None
            else:
                present = True
                if session.expiry_timer is not None:
                    session.expiry_timer.cancel()  # type: ignore[attr-defined]
                    session.expiry_timer = None
                if session.will_timer is not None:
                    # reconnected within the will delay [MQTT-3.1.3-9]
                    session.will_timer.cancel()  # type: ignore[attr-defined]
                    session.will_timer = None
                    session.will = None
        if session is None:
            cfg = self.config
            session = Session(
                cid,
                cfg.max_queued_messages,
                cfg.queue_drop_policy == "oldest",
                cfg.queue_qos0_offline,
            )
            self.sessions[cid] = session
        session.expiry_interval = expiry_interval
        session.connection = conn
        session.will = connect.will
        return session, present

    def detach(self, conn: Connection, session: Session, send_will: bool) -> None:
        """The connection of ``session`` ended (network close or DISCONNECT)."""
        if session.connection is not conn:
            return
        if not send_will:
            session.will = None
        self._connection_ended(conn, session, publish_will_now=False)
        if session.expiry_interval == 0:
            self.end_session(session)
        elif session.expiry_interval != NEVER_EXPIRES:
            session.expiry_timer = self.loop.call_later(
                session.expiry_interval, self._expire_session, session
            )

    def _connection_ended(self, conn: Connection, session: Session, publish_will_now: bool) -> None:
        session.connection = None
        will = session.will
        if will is None:
            return
        delay = will.properties.will_delay_interval or 0
        if publish_will_now or delay == 0:
            session.will = None
            self.publish_will(will)
        else:
            session.will_timer = self.loop.call_later(delay, self._will_delay_elapsed, session)

    def _will_delay_elapsed(self, session: Session) -> None:
        session.will_timer = None
        will = session.will
        session.will = None
        if will is not None:
            self.publish_will(will)

    def _expire_session(self, session: Session) -> None:
        session.expiry_timer = None
        if session.connection is None and self.sessions.get(session.client_id) is session:
            log.debug("session %s expired", session.client_id)
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        """Discard a session; a will still waiting for its delay is sent now [MQTT-3.1.3-9]."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for timer in (session.expiry_timer, session.will_timer):
            if timer is not None:
                timer.cancel()  # type: ignore[attr-defined]
        session.expiry_timer = session.will_timer = None
        if session.will is not None and session.connection is None:
            will = session.will
            session.will = None
            self.publish_will(will)
        for full_filter, sub in list(session.subscriptions.items()):
            self._remove_subscription(session.client_id, full_filter, sub)
        session.subscriptions.clear()
        session.pending.clear()
        session.inflight.clear()

    def publish_will(self, will: Will) -> None:
        props = will.properties
        expiry = props.message_expiry_interval
        fwd = props.copy() if props else None
        if fwd is not None:
            fwd.will_delay_interval = None
        msg = Message(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            fwd,
            self.loop.time() + expiry if expiry is not None else None,
            None,
        )
        self.publish(msg)

    # -- subscriptions -----------------------------------------------------------

    def subscribe(
        self,
        session: Session,
        topic_filter: str,
        qos: int,
        no_local: bool,
        retain_as_published: bool,
        retain_handling: int,
        identifier: int | None,
    ) -> tuple[int, list[Message]]:
        """Add one subscription; returns (reason code, retained messages to send)."""
        cfg = self.config
        if not is_valid_topic_filter(topic_filter):
            return ReasonCode.TOPIC_FILTER_INVALID, []
        try:
            group, inner = parse_shared(topic_filter)
        except ValueError:
            return ReasonCode.TOPIC_FILTER_INVALID, []
        if group is not None and not cfg.shared_subscription_available:
            return ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, []
        if not cfg.wildcard_subscription_available and has_wildcard(inner):
            return ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, []
        granted = min(qos, cfg.maximum_qos)
        existed = topic_filter in session.subscriptions
        sub = Subscription(
            session,
            inner,
            granted,
            no_local,
            retain_as_published,
            retain_handling,
            identifier,
            group,
        )
        session.subscriptions[topic_filter] = sub
        if group is None:
            self.trie.add(inner, session.client_id, sub)
        else:
            self.shared.add(group, inner, session.client_id, sub)
        if not existed:
            self.fabric.subscription_added(topic_filter)
        retained: list[Message] = []
        # [MQTT-3.3.1-10] retain handling; no retained messages for shared
        # subscriptions [MQTT-3.8.4-?] (spec 4.8.2: "retained messages are not sent")
        if (
            group is None
            and cfg.retain_available
            and (retain_handling == 0 or (retain_handling == 1 and not existed))
        ):
            now = self.loop.time()
            for topic, msg in self.retained.match(inner):
                if msg.expiry_at is not None and msg.expiry_at <= now:
                    self.retained.delete(topic)
                    continue
                retained.append(msg)
        return granted, retained

    def unsubscribe(self, session: Session, topic_filter: str) -> int:
        sub = session.subscriptions.pop(topic_filter, None)
        if sub is None:
            return ReasonCode.NO_SUBSCRIPTION_EXISTED
        self._remove_subscription(session.client_id, topic_filter, sub)
        return ReasonCode.SUCCESS

    def _remove_subscription(self, cid: str, full_filter: str, sub: Subscription) -> None:
        if sub.group is None:
            self.trie.remove(sub.topic_filter, cid)
        else:
            self.shared.remove(sub.group, sub.topic_filter, cid)
        self.fabric.subscription_removed(full_filter)

    # -- routing -------------------------------------------------------------------

    def publish(self, msg: Message) -> int:
        """Store a retained message and route ``msg``; returns the matching subscriptions."""
        if msg.retain:
            if msg.payload:
                self.retained.set(msg.topic, msg)
            else:
                # [MQTT-3.3.1-6] an empty retained payload clears the topic
                self.retained.delete(msg.topic)
        return self.route(msg)

    def route(self, msg: Message) -> int:
        matched = 0
        nodes = self.trie.match(msg.topic)
        if nodes:
            origin = msg.origin
            mqos = msg.qos
            if len(nodes) == 1:
                for cid, sub in nodes[0].items():
                    if sub.no_local and cid == origin:
                        continue  # [MQTT-3.8.3-3]
                    matched += 1
                    self.deliver(
                        sub.session,
                        msg,
                        sub.qos if sub.qos < mqos else mqos,
                        msg.retain if sub.retain_as_published else False,
                        None if sub.identifier is None else [sub.identifier],
                    )
            else:
                matched += self._route_overlapping(msg, nodes)
        if self.shared:
            matched += self._route_shared(msg)
        return matched + self.fabric.forward(msg)

    def _route_overlapping(self, msg: Message, nodes: list[dict[str, Subscription]]) -> int:
        """Several filters matched: one copy per client at the highest QoS,
        carrying every matching subscription identifier [MQTT-3.3.4-2, -3, -5]."""
        merged: dict[str, list[Any]] = {}
        origin = msg.origin
        for subs in nodes:
            for cid, sub in subs.items():
                if sub.no_local and cid == origin:
                    continue
                entry = merged.get(cid)
                if entry is None:
                    merged[cid] = entry = [sub.session, sub.qos, sub.retain_as_published, None]
                else:
                    if sub.qos > entry[1]:
                        entry[1] = sub.qos
                    if sub.retain_as_published:
                        entry[2] = True
                if sub.identifier is not None:
                    if entry[3] is None:
                        entry[3] = [sub.identifier]
                    else:
                        entry[3].append(sub.identifier)
        mqos = msg.qos
        for session, qos, rap, ids in merged.values():
            self.deliver(
                session,
                msg,
                qos if qos < mqos else mqos,
                msg.retain if rap else False,
                ids,
            )
        return len(merged)

    def _route_shared(self, msg: Message) -> int:
        n = 0
        for group in self.shared.match(msg.topic):
            picked = group.pick(_online) or group.pick()
            if picked is None:
                continue
            cid, sub = picked
            if sub.no_local and cid == msg.origin:
                continue
            n += 1
            qos = sub.qos if sub.qos < msg.qos else msg.qos
            ids = None if sub.identifier is None else [sub.identifier]
            self.deliver(
                sub.session, msg, qos, msg.retain if sub.retain_as_published else False, ids
            )
        return n

    def deliver(
        self, session: Session, msg: Message, qos: int, retain: bool, ids: list[int] | None
    ) -> None:
        conn = session.connection
        if conn is None:
            if qos == 0 and not session.queue_qos0:
                return
            if not session.enqueue((msg, qos, retain, ids)):
                self.stats.messages_dropped += 1
            return
        conn.send_message(msg, qos, retain, ids)  # type: ignore[attr-defined]

    # -- retained API ----------------------------------------------------------------

    def retained_messages(self, topic_filter: str) -> list[Message]:
        now = self.loop.time()
        out = []
        for topic, msg in self.retained.match(topic_filter):
            if msg.expiry_at is not None and msg.expiry_at <= now:
                self.retained.delete(topic)
                continue
            out.append(msg)
        return out

    # -- $SYS ------------------------------------------------------------------------

    def start_sys(self) -> None:
        if self.config.sys_interval > 0:
            self.publish_sys()

    def publish_sys(self) -> None:
        st = self.stats
        figures = {
            "version": f"shardmq {__version__}",
            "uptime": f"{int(time.time() - self.started)} seconds",
            "clients/connected": len(self.connections),
            "clients/total": len(self.sessions),
            "clients/maximum": self.config.max_connections,
            "messages/received": st.messages_received,
            "messages/sent": st.messages_sent,
            "messages/dropped": st.messages_dropped,
            "bytes/received": st.bytes_received,
            "bytes/sent": st.bytes_sent,
            "subscriptions/count": len(self.trie) + len(self.shared),
            "retained messages/count": len(self.retained),
        }
        for name, value in figures.items():
            msg = Message(f"$SYS/broker/{name}", str(value).encode(), 0, True, None, None, None)
            self.publish(msg)
        self._sys_handle = self.loop.call_later(self.config.sys_interval, self.publish_sys)

    def stop(self) -> None:
        if self._sys_handle is not None:
            self._sys_handle.cancel()
        if self._stall_handle is not None:
            self._stall_handle.cancel()
        for session in self.sessions.values():
            for timer in (session.expiry_timer, session.will_timer):
                if timer is not None:
                    timer.cancel()  # type: ignore[attr-defined]


def _online(cid: str, sub: Subscription) -> bool:
    return sub.session.connection is not None


def remaining_expiry(msg: Message, now: float) -> int | None:
    """Seconds left of a message's expiry, rounded up; -1 when expired."""
    if msg.expiry_at is None:
        return None
    left = msg.expiry_at - now
    if left <= 0:
        return -1
    return math.ceil(left)


def make_properties_for_connack(**kwargs: Any) -> Properties:
    return Properties(**{k: v for k, v in kwargs.items() if v is not None})

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

Deadlines: session expiry and will delay are absolute wall-clock times kept
with the session (``expires_at``, ``will_at``) and in one heap per shard
(``routing/deadlines.py``) with a single timer on the earliest, so they can be
saved and restored with the state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..cluster import messages as wire
from ..cluster.fabric import Fabric, Writer
from ..config import Config
from ..hooks import Hooks
from ..protocol.bucket import TokenBucket
from ..protocol.codec import encode
from ..protocol.constants import ReasonCode
from ..protocol.handlers.connect import server_properties
from ..protocol.packets import Connack, Connect, Properties, Will
from ..protocol.session import (
    NEVER_EXPIRES,
    Message,
    MoveDedupe,
    Outbound,
    Session,
    Subscription,
)
from ..protocol.topics import has_wildcard, is_valid_topic_filter, parse_shared, topic_matches
from ..routing.deadlines import DeadlineHeap, TimerWheel
from ..routing.retained import RetainedStore
from ..routing.shared import SharedSubscriptions
from ..routing.trie import SubscriptionTrie
from ..storage import codec
from ..storage.base import Store, StoredState
from .access import Access

if TYPE_CHECKING:
    from .connection import Connection


log = logging.getLogger("shardmq.shard")

#: Seconds between two log lines for the same limit and client or address.
_REFUSAL_LOG_INTERVAL = 60.0
#: Source addresses (and logged refusals) remembered before pruning.
_MAX_BUCKETS = 10_000

#: messages kept while sessions are being acquired from other shards (a claim
#: waits at most a few seconds; this bounds the memory it can pin)
HELD_LIMIT = 100_000


class Stats:
    __slots__ = (
        "received_qos",
        "messages_sent",
        "sent_qos",
        "dropped_queue_full",
        "dropped_slow_consumer",
        "dropped_acl",
        "dropped_expired",
        "bytes_received",
        "bytes_sent",
        "messages_dropped",
        "connections_total",
        "auth_failures",
        "acl_denied",
        "rate_limited",
        "subscriptions_refused",
        "connections_refused",
    )

    def __init__(self) -> None:
        #: PUBLISH packets received, by QoS (messages_received is their sum)
        self.received_qos = [0, 0, 0]
        self.messages_sent = 0
        #: deliveries at QoS 1 and 2 (messages_sent counts every QoS; only the
        #: QoS 1/2 path pays for this split)
        self.sent_qos = [0, 0, 0]
        #: the reasons of some of messages_dropped (the rest: too large for
        #: the client); expired messages are counted apart from it
        self.dropped_queue_full = 0
        self.dropped_slow_consumer = 0
        self.dropped_acl = 0
        self.dropped_expired = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_dropped = 0
        self.connections_total = 0
        #: CONNECTs refused for their credentials
        self.auth_failures = 0
        #: PUBLISH and SUBSCRIBE refused by the ACL
        self.acl_denied = 0
        #: PUBLISH packets over a client's publish_rate or publish_byte_rate
        self.rate_limited = 0
        #: subscriptions refused by max_subscriptions
        self.subscriptions_refused = 0
        #: connections closed unread by connection_rate
        self.connections_refused = 0

    @property
    def messages_received(self) -> int:
        return sum(self.received_qos)


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
        self.fabric.attach(self)
        self._share_rr: dict[tuple[str, str], int] = {}
        self._connacks: dict[int, bytes] = {}
        #: client id -> (new owner shard, plain subscriptions, deadline) for
        #: sessions handed to another shard in the last MOVED_GRACE seconds
        self.moved: dict[str, tuple[int | tuple[str, int], list[Any], float]] = {}
        #: client ids being claimed (with how many claims of each are under
        #: way here), and deliveries for them that arrived before their session did
        self.acquiring: dict[str, int] = {}
        #: messages routed here while a session was being acquired; held[0] is
        #: message number held_base since the shard started
        self.held: list[Message] = []
        self.held_base = 0
        #: multi-worker: the number of the last message this shard routed first,
        #: and of the last one it received from each other shard (MoveDedupe)
        self.seq = 0
        self.seen: dict[int, int] = {}
        self.early: dict[str, list[tuple[Message, int, bool, list[int] | None]]] = {}
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
        #: bytes read from clients since the last flush; a publisher is paused
        #: until the next one past this budget, so a flood (even to a topic
        #: nobody reads) cannot make one loop iteration last seconds and
        #: starve the worker's other clients (libuv reads a socket up to 32
        #: times per iteration, 256 KiB each)
        self.received = 0
        self.read_budget = 256 * 1024
        # flow control: connections whose transport asked us to stop writing
        self.congested: dict[Writer, list[int]] = {}
        #: congested writers that drained nothing for a while: not waited for
        self.stalled: dict[Writer, list[int]] = {}
        self.paused_readers: set[Connection] = set()
        self._stall_handle: asyncio.TimerHandle | None = None
        self._sys_handle: asyncio.TimerHandle | None = None
        #: session expiry and will delay, as wall-clock deadlines; one timer
        self.clock: Callable[[], float] = time.time
        #: the durable store (None: memory only); told of every state change
        self.store: Store | None = None
        #: access control (password file, ACL, Redis auth); None: none configured
        self.access: Access | None = Access(config) if Access.wanted(config) else None
        #: connection_rate: a bucket per source address (pruned when large)
        self.connection_buckets: dict[str, TokenBucket] = {}
        #: (kind, who) -> loop time of the last refusal logged for it
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self.deadlines: DeadlineHeap[tuple[str, str]] = DeadlineHeap()
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None
        #: the connections' CONNECT and keep-alive deadlines (loop time), and
        #: the one timer on its earliest second
        self.wheel: TimerWheel[Any] = TimerWheel()
        self._wheel_handle: asyncio.TimerHandle | None = None
        self._wheel_at: int | None = None
        self.closing = False
        self._id_counter = 0

    # -- CONNACK -------------------------------------------------------------------

    def connack_properties(self) -> Properties:
        """The CONNACK properties every v5 client gets (a new object each call)."""
        return server_properties(self.config)

    def connack_bytes(self, version: int, session_present: bool) -> bytes:
        key = version * 2 + session_present
        data = self._connacks.get(key)
        if data is None:
            props = self.connack_properties() if version == 5 else None
            data = encode(Connack(session_present, ReasonCode.SUCCESS, props), version)
            self._connacks[key] = data
        return data

    # -- write coalescing ------------------------------------------------------

    def mark_dirty(self, conn: Connection) -> None:
        self.dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self.unflushed = 0
        self.received = 0
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            try:
                conn.flush()
            except Exception:
                # one connection's failure must not leave the others unflushed
                log.exception("client %s: flush failed", conn.client_id)
        if self.paused_readers and not self.congested:
            self.resume_readers()

    # -- flow control ------------------------------------------------------------
    #
    # A connection whose transport buffer passes its high-water mark is
    # "congested". While any connection is congested, publishers are paused
    # after each chunk they send, so a fast publisher is slowed to the pace of
    # its slowest reading subscriber instead of growing that subscriber's
    # buffer. Progress is what the peer took off the socket, as the kernel
    # counts it (``Writer.delivered``; the transport's own buffer drains in
    # bursts seconds apart even while the peer reads). A congested connection
    # whose peer took nothing for STALL_CHECKS checks is declared stalled: it stops
    # counting (publishers run again) and, as its buffer keeps growing, it is
    # disconnected once it passes max_outgoing_buffer; one that starts
    # draining again counts again. So a reading client is never cut off
    # while it makes progress, a stuck one cannot stall the broker, and
    # neither can exhaust its memory.

    STALL_CHECK = 0.5
    #: checks in a row without progress before a congested writer is stalled
    STALL_CHECKS = 2

    def writer_paused(self, conn: Writer) -> None:
        self.stalled.pop(conn, None)
        self.congested[conn] = [conn.delivered(), 0]
        if self._stall_handle is None:
            self._stall_handle = self.loop.call_later(self.STALL_CHECK, self._check_stalled)

    def writer_resumed(self, conn: Writer) -> None:
        self.stalled.pop(conn, None)
        if self.congested.pop(conn, None) is not None and not self.congested:
            self.resume_readers()

    def _check_stalled(self) -> None:
        self._stall_handle = None
        congested = self.congested
        for conn, mark in list(congested.items()):
            delivered = conn.delivered()
            if delivered > mark[0]:
                mark[0], mark[1] = delivered, 0
                continue
            mark[1] += 1
            if mark[1] >= self.STALL_CHECKS:
                del congested[conn]
                self.stalled[conn] = [delivered, 0]
                log.info("client %s stopped reading; not waiting for it", conn.client_id)
        for conn, mark in list(self.stalled.items()):
            delivered = conn.delivered()
            if delivered > mark[0]:
                # reading again: publishers wait for it once more
                del self.stalled[conn]
                congested[conn] = [delivered, 0]
        if congested or self.stalled:
            self._stall_handle = self.loop.call_later(self.STALL_CHECK, self._check_stalled)
        if not congested:
            self.resume_readers()

    def pause_reader(self, conn: Connection) -> None:
        """Stop reading a publisher until no subscriber is congested, or until
        the next flush once this iteration's read budget is spent."""
        self.paused_readers.add(conn)
        conn.pause_reading()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    # -- limits ------------------------------------------------------------------

    def admit_connection(self, address: str) -> bool:
        """connection_rate: whether a new connection from ``address`` is within
        the rate (a bucket per address, on the shard's clock)."""
        now = self.clock()
        buckets = self.connection_buckets
        bucket = buckets.get(address)
        if bucket is None:
            if len(buckets) >= _MAX_BUCKETS:
                # forget the addresses that have been quiet for a second or more
                for addr in [a for a, b in buckets.items() if b.full(now)]:
                    del buckets[addr]
            bucket = buckets[address] = TokenBucket(self.config.connection_rate, now)
        return bucket.take(1, now)

    def log_refusal(self, kind: str, who: str, message: str, *args: object) -> None:
        """Log a limit's refusal at most once a minute per (kind, client or
        address); the counters in $SYS count every one."""
        now = self.loop.time()
        logged = self._refusals_logged
        last = logged.get((kind, who))
        if last is not None and now - last < _REFUSAL_LOG_INTERVAL:
            return
        if len(logged) >= _MAX_BUCKETS:
            for key in [k for k, t in logged.items() if now - t >= _REFUSAL_LOG_INTERVAL]:
                del logged[key]
        logged[(kind, who)] = now
        log.warning(message, *args)

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
        self._drop_moved(cid)  # the session is (back) here
        session = self.sessions.get(cid)
        present = False
        if session is not None:
            self._claimed_by_new_connection(session)
            if connect.clean_start or session.expiry_interval == 0:
                # Clean Start 1 discards it; a session with expiry 0 (3.1.1:
                # Clean Session 1) ended with the connection just taken over
                # and is never reused [MQTT-3.1.2-6], [MQTT-3.2.2-2]
                self.end_session(session)
                session = None
            else:
                present = True
                self._clear_deadline("expiry", session)
        if session is None:
            session = self.new_session(cid)
        session.expiry_interval = expiry_interval
        session.connection = conn
        session.will = connect.will
        self._persist(session, whole=not present)
        return session, present

    def _persist(self, session: Session, whole: bool = False) -> None:
        """Tell the store about ``session`` as it is now: the whole of it
        (``whole``: created, installed here) or its header (expiry, will,
        deadlines). A session that stopped being persistent is deleted."""
        store = self.store
        if store is None:
            return
        if session.expiry_interval:
            if session.journal is None:
                session.journal = store
                whole = True
            if whole:
                store.session_saved(session)
            else:
                store.session_updated(session)
        elif session.journal is not None:
            session.journal = None
            store.session_deleted(session.client_id)

    def _claimed_by_new_connection(self, session: Session) -> None:
        """A new connection for this client id was accepted: close the one it
        replaces (0x8E [MQTT-3.1.4-3]) and settle the will. A will without a
        delay is published as the old connection closes; a delayed will,
        pending or not, is cancelled: the client is back within the delay
        [MQTT-3.1.3-9], whatever its Clean Start (as Mosquitto does)."""
        old = session.connection
        if old is not None:
            old.take_over()
            session.connection = None
            will = session.will
            if will is not None and not will.properties.will_delay_interval:
                session.will = None
                self.publish_will(will)
        self._clear_deadline("will", session)
        session.will = None

    def new_session(self, client_id: str) -> Session:
        cfg = self.config
        session = Session(
            client_id,
            cfg.max_queued_messages,
            cfg.queue_drop_policy == "oldest",
            cfg.queue_qos0_offline,
        )
        self.sessions[client_id] = session
        return session

    def detach(self, conn: Connection, session: Session, send_will: bool) -> None:
        """The connection of ``session`` ended (network close or DISCONNECT)."""
        if session.connection is not conn:
            return
        session.connection = None
        will = session.will
        if will is not None:
            if not send_will:
                session.will = None
            elif will.properties.will_delay_interval:
                delay = will.properties.will_delay_interval
                self._set_deadline("will", session, self.clock() + delay)
            else:
                session.will = None
                self.publish_will(will)
        if session.expiry_interval == 0:
            # the session ends with the connection; a delayed will goes out now
            self.end_session(session)
            return
        if session.expiry_interval != NEVER_EXPIRES:
            self._set_deadline("expiry", session, self.clock() + session.expiry_interval)
        self._persist(session)

    # -- deadlines: one heap per shard, absolute wall-clock times -------------------

    def _set_deadline(self, kind: str, session: Session, when: float) -> None:
        if kind == "will":
            session.will_at = when
        else:
            session.expires_at = when
        self.deadlines.set((kind, session.client_id), when)
        self._rearm()

    def _clear_deadline(self, kind: str, session: Session) -> None:
        if kind == "will":
            if session.will_at is None:
                return
            session.will_at = None
        else:
            if session.expires_at is None:
                return
            session.expires_at = None
        self.deadlines.cancel((kind, session.client_id))

    def _rearm(self) -> None:
        """Keep the one timer on the earliest deadline (re-armed only when it moves)."""
        nxt = self.deadlines.next()
        if nxt == self._deadline_at:
            return
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        self._deadline_at = nxt
        if nxt is not None:
            delay = max(0.0, nxt - self.clock())
            self._deadline_handle = self.loop.call_later(delay, self._deadlines_due)

    def watch(self, conn: Any, when: float) -> dict[Any, None]:
        """Call ``conn.on_deadline()`` at ``when`` (loop time) or up to a
        second later; returns the bucket to pop ``conn`` from to cancel."""
        wheel = self.wheel
        bucket = wheel.add(conn, when)
        if wheel.earliest != self._wheel_at:
            self._arm_wheel()
        return bucket

    def _arm_wheel(self) -> None:
        if self._wheel_handle is not None:
            self._wheel_handle.cancel()
            self._wheel_handle = None
        at = self._wheel_at = self.wheel.earliest
        if at is not None:
            self._wheel_handle = self.loop.call_at(at, self._wheel_due)

    def _wheel_due(self) -> None:
        self._wheel_handle = None
        self._wheel_at = None
        for conn in self.wheel.pop_due(self.loop.time()):
            conn.on_deadline()
        if self.wheel.earliest != self._wheel_at:
            self._arm_wheel()

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Read wall-clock time from ``clock`` from now on (a simulation's or a
        test's clock) for session expiry, will delay and message expiry; what
        is due by the new clock runs now, the rest is re-armed against it."""
        self.clock = clock
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        self._deadline_at = None
        nxt = self.deadlines.next()
        if nxt is not None and nxt <= clock():
            self._deadlines_due()
        else:
            self._rearm()

    def _deadlines_due(self) -> None:
        self._deadline_handle = None
        self._deadline_at = None
        now = self.clock()
        for kind, cid in self.deadlines.pop_due(now):
            session = self.sessions.get(cid)
            if session is None:
                continue
            if kind == "will":
                session.will_at = None
                will = session.will
                session.will = None
                if will is not None and session.connection is None:
                    self.publish_will(will)
                self._persist(session)
            else:
                session.expires_at = None
                if session.connection is None:
                    log.debug("session %s expired", cid)
                    self.end_session(session)
        self._rearm()

    def end_session(self, session: Session, forget: bool = True) -> None:
        """Discard a session; a will still waiting for its delay is sent now
        [MQTT-3.1.3-9]. ``forget=False``: it moved to another shard, whose
        store writes replace ours, so nothing is deleted from the store."""
        if session.journal is not None:
            if forget and self.store is not None:
                self.store.session_deleted(session.client_id)
            session.journal = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            if self.fabric.distributed:
                self.fabric.release(session.client_id, session.epoch)
        self._clear_deadline("expiry", session)
        self._clear_deadline("will", session)
        if session.will is not None and session.connection is None:
            will = session.will
            session.will = None
            self.publish_will(will)
        for full_filter, sub in list(session.subscriptions.items()):
            self._remove_subscription(session.client_id, full_filter, sub)
        session.subscriptions.clear()
        session.pending = ()
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
            self.clock() + expiry if expiry is not None else None,
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
        want_retained: bool = True,
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
        session.own_subscriptions()[topic_filter] = sub
        if group is None:
            self.trie.add(inner, session.client_id, sub)
        else:
            self.shared.add(group, inner, session.client_id, sub)
        if session.journal is not None and self.store is not None:
            self.store.subscription_added(session, topic_filter, sub)
        if not existed:
            self.fabric.subscription_added(topic_filter)
        retained: list[Message] = []
        # [MQTT-3.3.1-10] retain handling; no retained messages for shared
        # subscriptions [MQTT-3.8.4-?] (spec 4.8.2: "retained messages are not sent")
        if (
            want_retained
            and group is None
            and cfg.retain_available
            and (retain_handling == 0 or (retain_handling == 1 and not existed))
        ):
            retained = self.retained_messages(inner)
        return granted, retained

    def unsubscribe(self, session: Session, topic_filter: str) -> int:
        sub = session.subscriptions.pop(topic_filter, None)
        if sub is None:
            return ReasonCode.NO_SUBSCRIPTION_EXISTED
        self._remove_subscription(session.client_id, topic_filter, sub)
        if session.journal is not None and self.store is not None:
            self.store.subscription_removed(session, topic_filter)
        return ReasonCode.SUCCESS

    def _remove_subscription(self, cid: str, full_filter: str, sub: Subscription) -> None:
        if sub.group is None:
            self.trie.remove(sub.topic_filter, cid)
        else:
            self.shared.remove(sub.group, sub.topic_filter, cid)
        self.fabric.subscription_removed(full_filter)

    # -- routing -------------------------------------------------------------------

    def publish_as_server(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None
    ) -> int:
        """Publish from the broker itself (the embedding API, the admin API):
        message expiry counts from now; returns the matching subscriptions."""
        expiry = props.message_expiry_interval if props is not None else None
        expiry_at = self.clock() + expiry if expiry is not None else None
        return self.publish(Message(topic, payload, qos, retain, props, expiry_at, None))

    def publish(self, msg: Message) -> int:
        """Store a retained message and route ``msg``; returns the matching subscriptions."""
        if msg.retain:
            self.set_retained(msg.topic, msg if msg.payload else None)
        return self.route(msg)

    def set_retained(self, topic: str, msg: Message | None) -> None:
        """Set (``msg``) or clear (None) ``topic``'s retained message here, in
        the store and on every other worker and node."""
        store = self.store
        if msg is not None:
            self.retained.set(topic, msg)
            if store is not None:
                store.retained_set(msg)
        else:
            # [MQTT-3.3.1-6] an empty retained payload clears the topic
            self.retained.delete(topic)
            if store is not None:
                store.retained_deleted(topic)
        if self.fabric.distributed:
            self.fabric.retained_changed(topic, msg)

    def route(self, msg: Message) -> int:
        """Deliver to this shard's subscribers and hand to the other shards."""
        fabric = self.fabric
        if fabric.distributed:
            if msg.src < 0:
                self.seq += 1
                msg.src = self.shard_id
                msg.seq = self.seq
            # forwarded first: a message sent to other nodes is numbered
            # there (``nid``) before any local delivery sees it
            matched = fabric.forward(msg)
            matched += self.route_local(msg)
            if self.shared or fabric.remote_shared:
                matched += self._route_shared_everywhere(msg)
            if self.moved:
                matched += self.forward_moved(msg)
            return matched
        matched = self.route_local(msg)
        if self.shared:
            matched += self._route_shared(msg)
        return matched

    def route_local(self, msg: Message) -> int:
        """Deliver to this shard's plain (non-shared) subscribers."""
        if self.acquiring and len(self.held) < HELD_LIMIT:
            self.held.append(msg)
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
        return matched

    def route_to(self, msg: Message, keep: Callable[[str], bool]) -> int:
        """``route_local`` to the sessions whose client id ``keep`` accepts
        (a dead node's messages replayed to the sessions adopted from it)."""
        nodes = [
            picked
            for subs in self.trie.match(msg.topic)
            if (picked := {cid: sub for cid, sub in subs.items() if keep(cid)})
        ]
        return self._route_overlapping(msg, nodes) if nodes else 0

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
                ident = sub.identifier
                if ident is not None:
                    if entry[3] is None:
                        entry[3] = [ident]
                    elif ident not in entry[3]:
                        # one identifier once, however many filters carry it
                        entry[3].append(ident)
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
        return sum(self._deliver_to_group(msg, group) for group in self.shared.match(msg.topic))

    def _route_shared_everywhere(self, msg: Message) -> int:
        """Each shared group gets the message once broker-wide: round-robin over
        all members, wherever they live (weighted by each shard's members)."""
        local = (
            {(g.name, g.topic_filter): g for g in self.shared.match(msg.topic)}
            if self.shared
            else {}
        )
        remote = self.fabric.shared_for(msg.topic)
        if not local and not remote:
            return 0
        n = 0
        for key in local.keys() | remote.keys():
            group = local.get(key)
            local_n = len(group) if group is not None else 0
            members = remote.get(key, {})
            total = local_n + sum(members.values())
            if not total:
                continue
            turn = self._share_rr.get(key, 0)
            self._share_rr[key] = turn + 1
            slot = turn % total
            if slot < local_n and group is not None:
                n += self._deliver_to_group(msg, group)
                continue
            slot -= local_n
            for holder, count in members.items():
                if slot < count:
                    self.fabric.forward_shared(holder, msg, key[0], key[1])
                    n += 1
                    break
                slot -= count
        return n

    def deliver_shared(self, msg: Message, group_name: str, topic_filter: str) -> int:
        """Another shard chose one of our members of ``$share/group/filter``;
        returns 1 if a member here got it."""
        msg.dests = ()  # chosen for one member: no other shard delivers it to the group
        for group in self.shared.match(msg.topic):
            if group.name == group_name and group.topic_filter == topic_filter:
                return self._deliver_to_group(msg, group)
        return 0

    def _deliver_to_group(self, msg: Message, group: Any) -> int:
        picked = group.pick(_online) or group.pick()
        if picked is None:
            return 0
        cid, sub = picked
        qos = sub.qos if sub.qos < msg.qos else msg.qos
        ids = None if sub.identifier is None else [sub.identifier]
        self.deliver(sub.session, msg, qos, msg.retain if sub.retain_as_published else False, ids)
        return 1

    # -- sessions moving between shards -------------------------------------------------

    #: seconds a shard that handed a session over keeps forwarding to it the
    #: messages that were already on their way here (see forward_moved)
    MOVED_GRACE = 5.0

    def forward_moved(
        self, msg: Message, remote_only: bool = False, only: Container[str] | None = None
    ) -> int:
        """A message routed here after a session moved to another shard: other
        shards sent it before they learned of the move. Forward it to the new
        owner, which delivers it once (MoveDedupe) whether or not it was also
        sent there directly. ``remote_only``: read from this node's stream,
        which this node's shards read too: only to owners on other nodes;
        ``only``: for these sessions only. Returns the deliveries forwarded
        (a publisher's acknowledgement counts them as matching subscribers)."""
        n = 0
        for cid, (owner, subs, _deadline) in self.moved.items():
            if remote_only and not isinstance(owner, tuple):
                continue
            if only is not None and cid not in only:
                continue
            qos, retain, ids = _best_match(subs, msg, cid)
            if qos >= 0:
                self.fabric.deliver_to(owner, cid, msg, qos, retain, ids)
                n += 1
        return n

    def _moved_expired(self, client_id: str, deadline: float) -> None:
        entry = self.moved.get(client_id)
        if entry is not None and entry[2] == deadline:
            self._drop_moved(client_id)

    def _drop_moved(self, client_id: str) -> None:
        """Stop forwarding for a moved session and withdraw the interest kept for it."""
        entry = self.moved.pop(client_id, None)
        if entry is not None:
            for sub in entry[1]:
                self.fabric.subscription_removed(sub.topic_filter)

    def begin_acquire(self, client_id: str) -> int:
        """A claim of ``client_id`` starts here; returns its place in ``held``."""
        self.acquiring[client_id] = self.acquiring.get(client_id, 0) + 1
        return self.held_base + len(self.held)

    def acquired(self, client_id: str, start: int) -> None:
        """The claim that began at ``start`` is over: if it brought the session
        here from another shard, deliver what came early and what was routed
        here meanwhile (MoveDedupe drops what the old owner handled)."""
        left = self.acquiring.get(client_id, 0) - 1
        if left > 0:
            self.acquiring[client_id] = left
        else:
            self.acquiring.pop(client_id, None)
        early = self.early.pop(client_id, None) if not left else None
        held = self.held[max(0, start - self.held_base) :]
        if not self.acquiring:
            self.held_base += len(self.held)
            self.held = []
        session = self.sessions.get(client_id)
        if session is None or session.dedupe is None:
            return  # no session, or one that never left: it saw these itself
        if early:
            for msg, qos, retain, ids in early:
                self.deliver(session, msg, qos, retain, ids)
        if not session.dedupe.handled:
            # from another node: what was routed here meanwhile, its old owner
            # delivered or forwards (``MoveDedupe``)
            return
        subs = [sub for sub in session.subscriptions.values() if sub.group is None]
        for msg in held:
            qos, retain, ids = _best_match(subs, msg, client_id)
            if qos >= 0:
                self.deliver(session, msg, qos, retain, ids)

    def park(self, session: Session) -> None:
        """A session installed here without a connection (its claimant went
        away): it waits for its client, or for expiry, like a detached one."""
        if session.connection is not None:
            return
        if session.expiry_interval == 0:
            self.end_session(session)
        elif session.expiry_interval != NEVER_EXPIRES and session.expires_at is None:
            self._set_deadline("expiry", session, self.clock() + session.expiry_interval)

    def deliver_direct(
        self, client_id: str, msg: Message, qos: int, retain: bool, ids: list[int] | None
    ) -> None:
        """A delivery forwarded by the shard this session moved from."""
        if client_id in self.acquiring:
            # forwarded on the data link, it overtook the session itself
            # (SESSION on the control link): hold it until the session is here
            self.early.setdefault(client_id, []).append((msg, qos, retain, ids))
            return
        session = self.sessions.get(client_id)
        if session is not None:
            self.deliver(session, msg, qos, retain, ids)
            return
        moved = self.moved.get(client_id)
        if moved is not None:  # it moved on again: pass it along
            self.fabric.deliver_to(moved[0], client_id, msg, qos, retain, ids)

    def surrender(
        self, client_id: str, clean_start: bool, new_owner: int | tuple[str, int] | None = None
    ) -> dict[str, Any] | None:
        """Another shard took ``client_id`` over: close our connection (0x8E),
        settle the will, and return the session's state (None for a clean start).
        ``new_owner``: its shard, or (node, worker) in a cluster; what reaches
        this shard for the session for ``MOVED_GRACE`` goes on there."""
        session = self.sessions.get(client_id)
        if session is None:
            return None
        self._claimed_by_new_connection(session)
        # a session with expiry 0 ended with its connection [MQTT-3.1.2-6]
        ended = clean_start or session.expiry_interval == 0
        state = None if ended else self.session_state(session)
        if state is not None:
            handled = dict(session.dedupe.handled) if session.dedupe is not None else {}
            handled[self.shard_id] = {**self.seen, self.shard_id: self.seq}
            state["handled"] = handled
            state["ids"] = list(session.dedupe.ids) if session.dedupe is not None else []
        if not ended and new_owner is not None:
            subs = [sub for sub in session.subscriptions.values() if sub.group is None]
            if subs:
                self._drop_moved(client_id)
                deadline = self.loop.time() + self.MOVED_GRACE
                self.moved[client_id] = (new_owner, subs, deadline)
                # keep announcing the interest while forwarding: a publisher
                # that hears we dropped it before it hears the new owner took
                # it would send to neither
                for sub in subs:
                    self.fabric.subscription_added(sub.topic_filter)
                self.loop.call_later(self.MOVED_GRACE, self._moved_expired, client_id, deadline)
        self.end_session(session, forget=ended)
        return state

    def session_state(self, session: Session) -> dict[str, Any]:
        """The session handed to another shard, in the store's serialisation."""
        return codec.pack_session(session, self.shard_id)

    def install_session(self, client_id: str, state: dict[str, Any]) -> Session:
        """Recreate a session moved here from another shard."""
        session = self.install_record(codec.unpack_session(state))
        handled = state.get("handled")
        if handled is not None:
            session.dedupe = MoveDedupe(
                {int(shard): dict(marks) for shard, marks in handled.items()},
                # msgpack made the node-wide numbers lists
                {tuple(i) if isinstance(i, list) else i for i in state.get("ids", ())},
                self.loop.time() + 2 * self.MOVED_GRACE,
            )
        return session

    def install_record(self, rec: codec.SessionRecord, persist: bool = True) -> Session:
        """A session as a store or a shard handing it over wrote it, installed
        here: subscriptions routed, queue and flight state restored, and its
        deadlines (absolute times) in the heap (past ones fire at once)."""
        session = self.new_session(rec.client_id)
        session.expiry_interval = rec.expiry_interval
        for f, qos, nl, rap, rh, ident in rec.subscriptions:
            self.subscribe(session, f, qos, nl, rap, rh, ident, want_retained=False)
        if rec.pending:
            session.pending = deque(rec.pending)
        for pid, (msg, qos, retain, ids), released in rec.inflight:
            out = Outbound(msg, qos, retain, ids)
            out.released = released
            session.put_inflight(pid, out)
        session.inbound_qos2 = set(rec.inbound_qos2)
        session.next_packet_id = rec.next_packet_id
        session.dropped = rec.dropped
        session.will = rec.will
        if rec.will is not None and rec.will_at is not None:
            self._set_deadline("will", session, rec.will_at)
        if rec.expires_at is not None:
            self._set_deadline("expiry", session, rec.expires_at)
        if persist:
            self._persist(session, whole=True)
        elif self.store is not None and session.expiry_interval:
            session.journal = self.store  # loaded from the store: already there
        return session

    def resync_store(self) -> int:
        """Tell the store everything it should hold, as it is now: every
        persistent session whole and every retained message (after a store
        dropped what it could not write). Returns the sessions told."""
        store = self.store
        if store is None:
            return 0
        count = 0
        for session in self.sessions.values():
            if session.journal is not None:
                store.session_saved(session)
                count += 1
        for _topic, msg in self.retained.items():
            store.retained_set(msg)
        self.fabric.store_rewritten()
        return count

    def restore(self, state: StoredState, from_store: bool = False) -> None:
        """Install what a store saved, at start: sessions (due deadlines fire at
        once: a session that expired while the broker was down ends, a will whose
        delay passed is published) and retained messages (expired ones dropped)."""
        now = self.clock()
        for msg in state.retained:
            if msg.expiry_at is None or msg.expiry_at > now:
                self.retained.set(msg.topic, msg)
                if self.store is not None and not from_store:
                    self.store.retained_set(msg)
        for rec in state.sessions:
            if rec.client_id in self.sessions:
                continue
            # a session online when it was written (the broker died under it)
            # is offline now: its expiry and will delay count from this start
            fixed = False
            if rec.expires_at is None and rec.expiry_interval not in (0, NEVER_EXPIRES):
                rec.expires_at = now + rec.expiry_interval
                fixed = True
            if rec.will is not None and rec.will_at is None:
                rec.will_at = now + (rec.will.properties.will_delay_interval or 0)
                fixed = True
            # a session of a shard that is no more (fewer workers now) is adopted
            adopt = not from_store or rec.owner != self.shard_id
            session = self.install_record(rec, persist=adopt)
            if fixed and not adopt:
                self._persist(session)
            if self.fabric.distributed:
                self.fabric.restored(rec.client_id, session)
        log.info(
            "restored %d sessions and %d retained messages",
            len(state.sessions),
            len(self.retained),
        )

    @staticmethod
    def pack_message(msg: Message, now: float) -> list[Any]:
        left = None if msg.expiry_at is None else max(0, int((msg.expiry_at - now) * 1000))
        props = wire.pack_properties(msg.properties)
        return [
            msg.topic,
            msg.payload,
            msg.qos,
            msg.retain,
            props,
            left,
            msg.origin,
            msg.src,
            msg.seq,
            msg.dests,
        ]

    @staticmethod
    def unpack_message(data: list[Any], now: float) -> Message:
        topic, payload, qos, retain, props, left, origin, src, seq, dests = data
        expiry_at = None if left is None else now + left / 1000
        msg = Message(topic, payload, qos, retain, wire.unpack_properties(props), expiry_at, origin)
        msg.src = src
        msg.seq = seq
        msg.dests = dests
        return msg

    def deliver(
        self, session: Session, msg: Message, qos: int, retain: bool, ids: list[int] | None
    ) -> None:
        dedupe = session.dedupe
        if dedupe is not None:
            if dedupe.until < self.loop.time():
                session.dedupe = None
            elif dedupe.duplicate(msg):
                return  # delivered by the shard the session came from
        conn = session.connection
        if conn is None:
            if qos == 0 and not session.queue_qos0:
                return
            if not session.enqueue((msg, qos, retain, ids)):
                self.stats.messages_dropped += 1
                self.stats.dropped_queue_full += 1
            return
        conn.send_message(msg, qos, retain, ids)

    # -- retained API ----------------------------------------------------------------

    def retained_messages(self, topic_filter: str) -> list[Message]:
        now = self.clock()
        out = []
        for topic, msg in self.retained.match(topic_filter):
            if msg.expiry_at is not None and msg.expiry_at <= now:
                self.retained.delete(topic)
                if self.store is not None:
                    self.store.retained_deleted(topic)
                continue
            out.append(msg)
        return out

    # -- $SYS ------------------------------------------------------------------------

    def start_sys(self) -> None:
        if self.config.sys_interval > 0:
            self.publish_sys()

    def sys_figures(self) -> dict[str, int]:
        st = self.stats
        return {
            "clients/connected": len(self.connections),
            "clients/total": len(self.sessions),
            "messages/received": st.messages_received,
            "messages/sent": st.messages_sent,
            "messages/dropped": st.messages_dropped,
            "clients/auth_failures": st.auth_failures,
            "acl/denied": st.acl_denied,
            "limits/publish_rate": st.rate_limited,
            "limits/subscriptions": st.subscriptions_refused,
            "limits/connection_rate": st.connections_refused,
            "bytes/received": st.bytes_received,
            "bytes/sent": st.bytes_sent,
            "subscriptions/count": len(self.trie) + len(self.shared),
        }

    def publish_sys(self) -> None:
        """Publish the ``$SYS/broker/...`` figures (retained).

        On a multi-worker broker each worker publishes its own figures under
        ``$SYS/broker/workers/<id>/`` (the kernel's SO_REUSEPORT hash does not
        balance by load, so the skew is worth seeing) and worker 0 publishes
        the totals over every live worker under ``$SYS/broker/``.
        """
        own = self.sys_figures()
        figures: dict[str, object] = {}
        fabric = self.fabric
        if fabric.distributed:
            for name, value in own.items():
                self._sys(f"workers/{self.shard_id}/{name}", value)
            fabric.publish_stats(own)
            if self.shard_id == 0:
                peers = fabric.peer_stats()
                for name, value in own.items():
                    figures[name] = value + sum(p.get(name, 0) for p in peers.values())
                figures["workers"] = 1 + len(peers)
                cluster = fabric.cluster_stats()
                if cluster is not None:
                    # the whole cluster, as of the last heartbeat
                    nodes, sums = cluster
                    figures["cluster/nodes"] = nodes
                    for name, value in sums.items():
                        figures[f"cluster/{name}"] = value
        else:
            figures.update(own)
        if figures:
            figures["version"] = f"shardmq {__version__}"
            figures["uptime"] = f"{int(time.time() - self.started)} seconds"
            figures["clients/maximum"] = self.config.max_connections
            figures["retained messages/count"] = len(self.retained)
            for name, figure in figures.items():
                self._sys(name, figure)
        self._sys_handle = self.loop.call_later(self.config.sys_interval, self.publish_sys)

    def _sys(self, name: str, value: object) -> None:
        topic = f"$SYS/broker/{name}"
        self.publish(Message(topic, str(value).encode(), 0, True, None, None, None))

    def stop(self) -> None:
        if self._sys_handle is not None:
            self._sys_handle.cancel()
        if self._stall_handle is not None:
            self._stall_handle.cancel()
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._wheel_handle is not None:
            self._wheel_handle.cancel()
            self._wheel_handle = None


def _online(cid: str, sub: Subscription) -> bool:
    return sub.session.connection is not None


def _best_match(
    subs: list[Subscription], msg: Message, client_id: str
) -> tuple[int, bool, list[int] | None]:
    """One client's delivery of ``msg`` through ``subs`` (outside the trie):
    (QoS, retain flag, subscription ids); QoS -1 when nothing matches."""
    qos = -1
    rap = False
    ids: list[int] | None = None
    for sub in subs:
        if sub.no_local and msg.origin == client_id:
            continue
        if not topic_matches(sub.topic_filter, msg.topic):
            continue
        qos = max(qos, sub.qos)
        rap = rap or sub.retain_as_published
        if sub.identifier is not None and (ids is None or sub.identifier not in ids):
            ids = [*(ids or []), sub.identifier]
    if qos < 0:
        return -1, False, None
    return min(qos, msg.qos), msg.retain if rap else False, ids

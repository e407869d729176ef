"""One client connection: an ``asyncio.Protocol`` on uvloop, the glue around
the sans-I/O session core.

The MQTT rules live in ``shardmq/protocol``: the decoder
(``protocol/codec.py``), one handler module per inbound packet
(``protocol/handlers/``: connect, publish, acks, subscribe, disconnect,
auth), the outbound engine (``protocol/outbound.py``: receive window, topic
aliases, resend, expiry countdown, packet size), the keep-alive deadline
(``protocol/keepalive.py``) and the connection states
(``protocol/state.py``); each takes ``now`` where time matters and is tested
without sockets. What stays here is what needs the event loop: the
transport, the hooks, the client-id claim across workers, the store's
acknowledgement ordering and the one timer.

Theory of operation
-------------------
``data_received`` feeds the connection's :class:`~shardmq.protocol.codec.Decoder`
and dispatches each packet to a ``_handle_<packet>`` method. Handlers are
synchronous; a handler that must await a user hook returns a coroutine, and
the connection then parks every later packet in ``_backlog`` (and stops
reading) until that coroutine is done, so packets are processed strictly in
order and nothing is processed before CONNACK [MQTT-3.1.4-5]. With no hook
registered, no coroutine or task is ever created.

Output goes through :meth:`write`, which appends to ``_out`` and registers the
connection with the shard once; the shard flushes every dirty connection once
per loop iteration (one ``transport.write`` each).

Errors: every protocol problem is an :class:`~shardmq.errors.MQTTError` with its
reason code; :meth:`fail` is the one place that maps it to a CONNACK (before
the session exists), a DISCONNECT (v5) or a plain close (3.1.1), and logs it.

One timer per connection: before CONNECT it is the connect timeout, after it
the keep alive (1.5 times the keep alive [MQTT-3.1.2-22]). It is re-armed only
when it fires, from the time of the last packet received.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from ..errors import (
    DisconnectError,
    HookError,
    MQTTError,
    ProtocolViolation,
)
from ..hooks import ClientHandle, Continue, Success
from ..protocol.bucket import PublishRate
from ..protocol.codec import Decoder, encode, sendable_code
from ..protocol.constants import MQTT5, PacketType, ReasonCode
from ..protocol.handlers.acks import on_puback, on_pubcomp, on_pubrec, on_pubrel
from ..protocol.handlers.auth import check_auth
from ..protocol.handlers.connect import check_connect, connack_properties, negotiate
from ..protocol.handlers.disconnect import on_disconnect
from ..protocol.handlers.publish import DUPLICATE, check_publish
from ..protocol.handlers.subscribe import (
    Verdict,
    apply,
    check_subscribe,
    suback_codes,
    unsuback_codes,
    verdicts,
)
from ..protocol.keepalive import CONNECT_TIMEOUT, KEEP_ALIVE_TIMEOUT, KeepAlive
from ..protocol.outbound import Outbox
from ..protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from ..protocol.session import Message, Session
from ..protocol.state import ConnectionState, closing_packet
from ..socketinfo import tcp_bytes_acked
from ..storage.base import StoreUnavailable, all_done
from .shard import Shard

if TYPE_CHECKING:
    from ..auth.acl import ClientAcl

log = logging.getLogger("shardmq.connection")

AWAIT_CONNECT = ConnectionState.AWAIT_CONNECT
CONNECTING = ConnectionState.CONNECTING
CONNECTED = ConnectionState.CONNECTED
CLOSED = ConnectionState.CLOSED

#: transport buffer size at which a connection counts as congested
_WRITE_HIGH_WATER = 256 * 1024
#: a connection's deadlines before connection_made (one shared placeholder)
_NOT_YET = KeepAlive(0.0, 0.0)
#: the topic aliases of a connection that cannot set any (shared, never written)
_NO_ALIASES_IN: dict[int, str] = {}


class ListenerLoad:
    """The connections open on one listener with a max_connections of its
    own, shared by the connections it accepted."""

    __slots__ = ("limit", "count", "name")

    def __init__(self, limit: int, name: str = "") -> None:
        self.limit = limit
        self.count = 0
        #: the listener as metrics name it ("ws:8080")
        self.name = name


class Connection(asyncio.Protocol):
    __slots__ = (
        "shard",
        "loop",
        "transport",
        "decoder",
        "state",
        "version",
        "client_id",
        "username",
        "session",
        "alive",
        "_due",
        "_out",
        "_dirty",
        "_backlog",
        "_task",
        "peer",
        "handle",
        "outbox",
        "aliases_in",
        "acl",
        "rate",
        "_throttle",
        "load",
        "problem_info",
        "auth_method",
        "write_paused",
        "reading_paused",
        "_send_will",
        "_taken_over",
        "_over_limit",
        "_log_end",
        "_end",
        "_connect",
        "written",
        "_acks",
    )

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.loop = shard.loop
        self.transport: asyncio.Transport | None = None
        cfg = shard.config
        self.decoder = Decoder(max_packet_size=cfg.max_packet_size, server=True)
        self.state = AWAIT_CONNECT
        self.version = 0
        self.client_id = ""
        self.username: str | None = None
        self.session: Session | None = None
        #: the CONNECT and keep-alive deadlines (armed in connection_made)
        self.alive = _NOT_YET
        #: the shard's timer-wheel bucket holding this connection (its deadline)
        self._due: dict[Connection, None] | None = None
        #: what to write at the end of this loop iteration (() when nothing)
        self._out: list[bytes] | tuple[()] = ()
        self._dirty = False
        self._backlog: list[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.peer: tuple[str, int] | None = None
        self.handle: ClientHandle | None = None
        #: what we send the client: its limits, topic aliases, resends
        self.outbox = Outbox(self.write, shard.stats)
        #: the client's topic aliases: a dict of its own once an MQTT 5 CONNECT
        #: is accepted (check_publish writes it for MQTT 5 only)
        self.aliases_in: dict[int, str] = _NO_ALIASES_IN
        #: the client's compiled ACL (None: nothing restricts it)
        self.acl: ClientAcl | None = None
        #: publish_rate / publish_byte_rate (None: no limit, no cost per PUBLISH)
        self.rate = (
            PublishRate(cfg.publish_rate, cfg.publish_byte_rate, shard.clock())
            if cfg.publish_rate or cfg.publish_byte_rate
            else None
        )
        #: the timer that resumes reading a client paused for its rate
        self._throttle: asyncio.TimerHandle | None = None
        #: its listener's count, when that listener has a max_connections
        self.load: ListenerLoad | None = None
        self.problem_info = True
        self.auth_method: str | None = None
        self.write_paused = False
        self.reading_paused = False
        self._send_will = True
        self._taken_over = False
        self._over_limit = False
        #: log_connections: log this connection's end (its connect was logged)
        self._log_end = False
        #: why the connection ends, once the broker knows (the disconnect line)
        self._end: str | None = None
        #: the CONNECT waiting for its AUTH exchange to finish
        self._connect: Connect | None = None
        #: bytes handed to the transport (flow control measures progress by it)
        self.written = 0
        #: acknowledgements waiting for the store to write what they acknowledge
        self._acks: deque[tuple[asyncio.Future[None], Any]] | None = None

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket transport (uvloop's are not asyncio.Transport instances,
        # though they implement it) or one of our layers (TLS, WebSocket, PROXY)
        self.transport = cast(asyncio.Transport, transport)
        shard = self.shard
        high = min(_WRITE_HIGH_WATER, shard.config.max_outgoing_buffer // 4)
        self.transport.set_write_buffer_limits(high=high)
        peer = transport.get_extra_info("peername")
        # (host, port), without IPv6's flow info and scope id
        self.peer = (peer if len(peer) == 2 else (peer[0], peer[1])) if peer else None
        if shard.config.connection_rate and peer and not shard.admit_connection(peer[0]):
            # refused before a byte is read: no CONNACK, no timer, no session
            shard.stats.connections_refused += 1
            shard.log_refusal(
                "connection_rate", peer[0], "%s: over connection_rate, closed", peer[0]
            )
            self.state = CLOSED
            self.load = None  # not counted on its listener
            transport.close()
            return
        limit = shard.config.max_connections
        if limit and len(shard.connections) >= limit:
            # answered with CONNACK 0x97/0x89 once the CONNECT tells us the version
            self._over_limit = True
        load = self.load
        if load is not None:
            if load.count >= load.limit:
                self._over_limit = True
            load.count += 1
        shard.connections.add(self)
        shard.stats.connections_total += 1
        now = self.loop.time()
        alive = self.alive = KeepAlive(now, shard.config.connect_timeout)
        assert alive.connect_by is not None
        self._due = shard.watch(self, alive.connect_by)

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.alive.last_rx = self.loop.time()
        shard = self.shard
        shard.stats.bytes_received += len(data)
        shard.received += len(data)
        try:
            packets = self.decoder.feed(data)
        except MQTTError as err:
            if self.state == AWAIT_CONNECT:
                self.version = self.decoder.version
            self.fail(err)
            return
        if packets:
            if self._backlog is not None:
                self._backlog.extend(packets)
                return
            self._process(packets)
            if (
                shard.congested
                or shard.unflushed > shard.flush_budget
                or shard.received > shard.read_budget
            ) and self.state == CONNECTED:
                shard.pause_reader(self)

    def connection_lost(self, exc: Exception | None) -> None:
        shard = self.shard
        if self.load is not None:
            self.load.count -= 1
            self.load = None
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        shard.connections.discard(self)
        shard.paused_readers.discard(self)
        shard.stalled.pop(self, None)
        if self.write_paused:
            self.write_paused = False
            shard.writer_resumed(self)
        prev = self.state
        self.state = CLOSED
        if self._due is not None:
            self._due.pop(self, None)
            self._due = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        session = self.session
        if session is not None and not self._taken_over:
            shard.detach(self, session, self._send_will)
        if self._log_end:
            self._log_end = False
            reason = self._end
            if reason is None:
                reason = f"connection lost: {exc}" if exc else "connection closed"
            log.info(
                "client %s disconnected: %s",
                self.client_id,
                reason,
                extra={"client_id": self.client_id, "event": "disconnect", "reason": reason},
            )
        if prev == CONNECTED:
            hook = shard.hooks.on_disconnect
            if hook is not None and self.handle is not None:
                self.loop.create_task(self._notify(hook, None))

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self.shard.writer_paused(self)

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self.shard.writer_resumed(self)

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._throttle is not None:
            return  # paused for its publish rate: the timer resumes it
        if self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = False
            self.transport.resume_reading()

    def buffer_size(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def delivered(self) -> int:
        """Bytes the client's TCP stack acknowledged (flow control's measure of
        progress); without TCP_INFO, what left our buffer."""
        transport = self.transport
        if transport is None:
            return self.written
        acked = tcp_bytes_acked(transport.get_extra_info("socket"))
        if acked is not None:
            return acked
        return self.written - transport.get_write_buffer_size()

    # -- output ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        out = self._out
        if out:
            out.append(data)
        else:
            self._out = [data]
        self.shard.unflushed += len(data)
        if not self._dirty:
            self._dirty = True
            self.shard.mark_dirty(self)

    def flush(self) -> None:
        self._dirty = False
        out = self._out
        transport = self.transport
        if not out or transport is None:
            return
        self._out = ()  # an idle connection holds no list
        if transport.is_closing():
            # closed under us (a reset whose connection_lost has not run yet):
            # writing would raise; what was queued is gone with the connection
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self.shard.stats.bytes_sent += len(data)
        self.written += len(data)
        transport.write(data)
        if (
            self.write_paused
            and transport.get_write_buffer_size() > self.shard.config.max_outgoing_buffer
        ):
            # what was just written is discarded by the abort: count it
            self.shard.stats.messages_dropped += len(out)
            self.shard.stats.dropped_slow_consumer += len(out)
            self._cut_off_slow_consumer()

    def _cut_off_slow_consumer(self) -> None:
        if self.state == CLOSED or self.transport is None:
            return
        log.warning(
            "client %s: outgoing buffer over %d bytes, disconnecting a slow consumer",
            self.client_id,
            self.shard.config.max_outgoing_buffer,
        )
        self._ending("slow consumer: outgoing buffer full")
        self.state = CLOSED
        self.transport.abort()

    def send(self, packet: Any) -> bool:
        """Encode and queue a control packet; False (and the connection
        closed) when even its smallest form exceeds the client's Maximum
        Packet Size."""
        if self.outbox.control(packet):
            return True
        # [MQTT-3.1.2-24] never send a packet over the client's limit: closing
        # is the only answer left (a CONNACK is not sent at all)
        log.info(
            "client %s: %s exceeds its maximum packet size %d, closing",
            self.client_id or "-",
            PacketType(packet.packet_type).name,
            self.outbox.max_packet,
        )
        self._ending("packet over the client's maximum packet size")
        self.close()
        return False

    def _ending(self, reason: str) -> None:
        """Say why the connection ends (the first reason given is kept)."""
        if self._end is None:
            self._end = reason

    def close(self) -> None:
        """Flush what is queued and close."""
        if self.transport is None:
            return
        if self._out:
            self.flush()
        self.state = CLOSED
        self.transport.close()

    def fail(self, err: MQTTError) -> None:
        """End the connection because of ``err``: the one place errors map to packets."""
        if self.state == CLOSED:
            return
        log.info(
            "client %s (%s): closing: %s",
            self.client_id or "-",
            self.peer[0] if self.peer else "?",
            err,
        )
        if err.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT:
            self._ending("keep-alive timeout")
        else:
            kind = "protocol error" if isinstance(err, ProtocolViolation) else "error"
            self._ending(f"{kind} 0x{err.reason_code:02X} {err}")
        answer = closing_packet(err, self.state, self.version, self.problem_info)
        if answer is not None:
            packet, version = answer
            if version == self.outbox.version:
                self.send(packet)
            else:
                self.write(encode(packet, version))  # before the version was known
        self.close()

    def take_over(self) -> None:
        """Another connection claimed this client id [MQTT-3.1.4-3]."""
        self._taken_over = True
        self._ending("session taken over")
        if self.version == MQTT5 and self.state == CONNECTED:
            self.send(Disconnect(ReasonCode.SESSION_TAKEN_OVER))
        self.session = None
        self.close()

    def shutdown(self) -> None:
        """The broker is stopping: v5 clients get DISCONNECT 0x8B."""
        self._ending("server shutting down")
        if self.state == CONNECTED and self.version == MQTT5:
            self.send(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN))
        if self.state != CLOSED:
            self.close()

    # -- timer -------------------------------------------------------------------

    def on_deadline(self) -> None:
        """The shard's timer wheel: the deadline filed in ``_due`` has come."""
        self._due = None
        if self.state == CLOSED:
            return
        now = self.loop.time()
        due = self.alive.check(now)
        if due == CONNECT_TIMEOUT:
            log.info("connection from %s: no CONNECT in time, closing", self.peer)
            self.close()
            return
        if due == KEEP_ALIVE_TIMEOUT:
            self.fail(ProtocolViolation(ReasonCode.KEEP_ALIVE_TIMEOUT, "keep alive timeout"))
            return
        deadline = self.alive.deadline()
        if deadline is not None:
            self._due = self.shard.watch(self, deadline)

    # -- dispatch ----------------------------------------------------------------

    def _process(self, packets: list[Any]) -> None:
        handlers = _HANDLERS
        for i, packet in enumerate(packets):
            if self.state == CLOSED:
                return
            try:
                pending = handlers[packet.packet_type](self, packet)
            except MQTTError as err:
                self.fail(err)
                return
            if pending is not None:
                self._backlog = packets[i + 1 :]
                self.pause_reading()
                self._task = self.loop.create_task(self._run_blocked(pending))
                return

    async def _run_blocked(self, pending: Coroutine[Any, Any, None]) -> None:
        handlers = _HANDLERS
        try:
            await pending
            backlog = self._backlog
            while backlog and self.state != CLOSED:
                packet = backlog.pop(0)
                nxt = handlers[packet.packet_type](self, packet)
                if nxt is not None:
                    await nxt
        except MQTTError as err:
            self.fail(err)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("client %s: hook failed", self.client_id)
            self.fail(MQTTError(ReasonCode.UNSPECIFIED_ERROR, "internal error"))
        finally:
            self._backlog = None
            self._task = None
        if self.state != CLOSED:
            self.resume_reading()

    async def _notify(self, hook: Any, packet: Any) -> None:
        try:
            await hook(self.handle, packet)
        except DisconnectError as err:
            self.fail(err)
        except Exception:
            log.exception("client %s: hook %s failed", self.client_id, hook)

    async def _decide(self, hook: Any, packet: Any) -> Any:
        """Run a deciding hook; returns its result, raising HookError on refusal."""
        result = await hook(self.handle, packet)
        if result is False:
            raise HookError(ReasonCode.NOT_AUTHORIZED)
        return result

    # -- CONNECT -------------------------------------------------------------------

    def _handle_connect(self, packet: Connect) -> Coroutine[Any, Any, None] | None:
        cfg = self.shard.config
        self.version = packet.protocol_version
        self.state = CONNECTING
        props = packet.properties
        if self.version == MQTT5 and props.request_problem_information == 0:
            self.problem_info = False
        self.outbox.configure(
            self.version,
            props.receive_maximum,
            props.maximum_packet_size,
            props.topic_alias_maximum,
            cfg.max_inflight,
        )
        if self._over_limit:
            raise MQTTError(ReasonCode.SERVER_BUSY, "too many connections")
        if self.shard.closing:
            raise MQTTError(ReasonCode.SERVER_SHUTTING_DOWN)
        check_connect(packet, cfg)
        cid = packet.client_id or self.shard.assign_client_id()
        self.client_id = cid
        transport = self.transport
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        certified = tls is not None and cfg.use_identity_as_username
        if tls is not None and transport is not None and cfg.use_identity_as_username:
            # the client certificate's CN replaces the CONNECT username (Mosquitto's rule)
            packet.username = transport.get_extra_info("certificate_common_name")
            if packet.username is None:
                raise MQTTError(ReasonCode.NOT_AUTHORIZED, "no client certificate")
        self.username = packet.username
        hooks = self.shard.hooks
        self.handle = ClientHandle(
            cid,
            packet.username,
            self.version,
            self.peer,
            self.shard.shard_id,
            self.shard.broker,
        )
        if tls is not None and transport is not None:
            self.handle.certificate_subject = transport.get_extra_info("certificate_subject")
        if self.version == MQTT5 and props.authentication_method is not None:
            if hooks.on_auth is None:
                raise MQTTError(ReasonCode.BAD_AUTHENTICATION_METHOD)
            self.auth_method = props.authentication_method
            self._connect = packet
            if self.shard.access is not None:
                # the hook authenticates; the ACL file still holds
                self.set_rules(self.shard.access.rules_for(packet.username, cid))
                self._check_will(packet)
            return self._auth_round(packet, reauth=False)
        if self.shard.access is not None:
            return self._check_credentials(packet, certified)
        if hooks.on_connect is not None:
            return self._connect_hook(packet, None)
        if self.shard.fabric.distributed:
            return self._acquire_and_accept(packet, None)
        self._accept(packet, None)
        return None

    async def _check_credentials(self, packet: Connect, certified: bool) -> None:
        access = self.shard.access
        assert access is not None
        if certified:
            # the verified certificate is the credential, as in mosquitto: its
            # identity is the username the ACL sees, no password is asked
            ok, acl = True, access.rules_for(packet.username, self.client_id)
        else:
            ok, acl = await access.admit(packet.username, packet.password, self.client_id)
        if not ok:
            self.shard.stats.auth_failures += 1
            if packet.username is None:
                raise MQTTError(ReasonCode.NOT_AUTHORIZED, "anonymous clients are not allowed")
            # an unknown user gets the same answer as a wrong password
            raise MQTTError(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad user name or password")
        if self.state != CONNECTING:
            return  # gone while the password was checked
        self.set_rules(acl)
        self._check_will(packet)
        await self._connect_hook(packet, None)

    def _check_will(self, packet: Connect) -> None:
        """A will is a publish the client makes later: refuse the CONNECT if
        the client may not publish its topic (as mosquitto does), rather than
        let it reach subscribers as the client goes."""
        will = packet.will
        acl = self.acl
        if will is not None and acl is not None and not acl.may_publish(will.topic):
            self.shard.stats.acl_denied += 1
            raise MQTTError(ReasonCode.NOT_AUTHORIZED, "will topic not authorized")

    def set_rules(self, acl: ClientAcl | None) -> None:
        """The client's ACL (None: nothing restricts it), from now on."""
        self.acl = acl
        self.outbox.readable = acl.may_read if acl is not None else None

    async def _connect_hook(self, packet: Connect, auth_data: bytes | None) -> None:
        hook = self.shard.hooks.on_connect
        if hook is not None:
            try:
                await self._decide(hook, packet)
            except HookError as err:
                if isinstance(err, DisconnectError):
                    raise MQTTError(err.reason_code, err.reason_string) from None
                raise
        if self.shard.fabric.distributed:
            await self._acquire_and_accept(packet, auth_data)
        else:
            self._accept(packet, auth_data)

    async def _acquire_and_accept(self, packet: Connect, auth_data: bytes | None) -> None:
        """Multi-worker broker: claim the client id through its home shard and
        bring the session over from the shard that held it, then accept.

        The claim runs to its end even if this connection goes away meanwhile
        (it is shielded from the cancellation in ``connection_lost``): the home
        shard grants the next claim of the id only once this one is settled, and
        a session taken from another shard must land somewhere, not vanish."""
        claim = self.loop.create_task(self._claim(packet, auth_data))
        await asyncio.shield(claim)

    async def _claim(self, packet: Connect, auth_data: bytes | None) -> None:
        shard = self.shard
        fabric = shard.fabric
        cid = self.client_id
        start = shard.begin_acquire(cid)
        epoch: int | None = None
        try:
            epoch, state = await fabric.acquire(cid, packet.clean_start)
            if state is not None and not packet.clean_start:
                existing = shard.sessions.get(cid)
                if existing is None or existing.connection is None:
                    if existing is not None:
                        existing.will = None
                        shard.end_session(existing)
                    shard.install_session(cid, state).epoch = epoch
                    fabric.flush_now()  # its interest, to every worker at once
                else:
                    log.warning("client %s: a session arrived for a live one, kept the live", cid)
            superseded = fabric.fence.get(cid, 0) > epoch
            if self.state == CLOSED or superseded:
                # gone, or a newer connection claimed the id meanwhile: what we
                # took waits here, offline, for whoever claims it next
                session = shard.sessions.get(cid)
                if session is not None:
                    session.epoch = epoch
                    shard.park(session)
                if superseded and self.state != CLOSED:
                    raise MQTTError(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
                return
            self._accept(packet, auth_data)
            if self.session is not None:
                self.session.epoch = epoch
        finally:
            shard.acquired(cid, start)
            if epoch is not None:
                fabric.claim_done(cid, epoch)

    async def _auth_round(self, packet: Connect | Auth, reauth: bool) -> None:
        hook = self.shard.hooks.on_auth
        assert hook is not None
        try:
            result = await hook(self.handle, packet)
        except HookError as err:
            raise MQTTError(err.reason_code, err.reason_string) from None
        if result is False or result is None:
            raise MQTTError(ReasonCode.NOT_AUTHORIZED, "authentication failed")
        if isinstance(result, Continue):
            self.send(
                Auth(
                    ReasonCode.CONTINUE_AUTHENTICATION,
                    Properties(
                        authentication_method=self.auth_method,
                        authentication_data=result.data,
                    ),
                )
            )
            return
        data = result.data if isinstance(result, Success) else None
        if reauth:
            self.send(
                Auth(
                    ReasonCode.SUCCESS,
                    Properties(authentication_method=self.auth_method, authentication_data=data),
                )
            )
            return
        connect = self._connect
        assert connect is not None
        await self._connect_hook(connect, data)

    def _accept(self, packet: Connect, auth_data: bytes | None) -> None:
        """Authentication decided: take over or create the session, send CONNACK."""
        self._connect = None
        shard = self.shard
        cfg = shard.config
        v5 = self.version == MQTT5
        if v5:
            self.aliases_in = {}  # 3.1.1 has no topic aliases
        props = packet.properties
        # _handle_connect has already refused a 3.1.1 keep alive over
        # max_keep_alive unless v311_keep_alive is "accept"
        terms = negotiate(
            self.version,
            packet.clean_start,
            props.session_expiry_interval,
            packet.keep_alive,
            max_session_expiry_interval=cfg.max_session_expiry_interval,
            server_keep_alive=cfg.server_keep_alive,
            max_keep_alive=cfg.max_keep_alive,
        )
        server_expiry = terms.session_expiry
        store = shard.store
        if server_expiry and store is not None and not store.available:
            # a persistent session needs the store: refuse rather than hand out a
            # session that would not survive (3.1.1: return code 3)
            raise MQTTError(ReasonCode.SERVER_UNAVAILABLE, "store unavailable")
        ack_props = None
        if v5:
            ack_props = connack_properties(
                packet,
                terms,
                self.client_id,
                shard.connack_properties,
                cfg.response_information,
                self.auth_method,
                auth_data,
            )
        if ack_props is not None:
            connack = encode(Connack(False, ReasonCode.SUCCESS, ack_props), MQTT5)
        else:
            # the common case: the same bytes for every client (cached per shard)
            connack = shard.connack_bytes(self.version, False)
        limit = self.outbox.max_packet
        if limit and len(connack) > limit:
            # [MQTT-3.1.2-24]: a CONNACK over the client's limit is not sent;
            # checked before the session is touched, so nothing is taken over
            log.info(
                "client %s: CONNACK of %d bytes exceeds its maximum packet size %d, closing",
                self.client_id,
                len(connack),
                limit,
            )
            self.close()
            return
        session, present = shard.attach(self, packet, server_expiry)
        self.session = session
        if present:
            # the same length with the session present flag set
            if ack_props is not None:
                connack = encode(Connack(True, ReasonCode.SUCCESS, ack_props), MQTT5)
            else:
                connack = shard.connack_bytes(self.version, True)
        # keep alive 0 means no timeout [MQTT-3.1.2-21]; otherwise 1.5 times it
        now = self.loop.time()
        deadline = self.alive.connected(now, terms.keep_alive)
        if self._due is not None:
            self._due.pop(self, None)
            self._due = None
        if deadline is not None:
            self._due = shard.watch(self, deadline)
        self.decoder.max_packet_size = cfg.max_packet_size
        self.write(connack)
        self.state = CONNECTED
        if cfg.log_connections:
            self._log_connect(packet, terms.keep_alive, present)
        else:
            log.debug(
                "client %s connected (v%d, session present %s)",
                self.client_id,
                self.version,
                present,
            )
        outbox = self.outbox
        now = shard.clock()
        if present:
            outbox.resend(session, now)
        outbox.drain(session, now)

    def _log_connect(self, packet: Connect, keep_alive: int, present: bool) -> None:
        """log_connections: the connect line (and, later, one for the end)."""
        self._log_end = True
        peer = self.peer
        address = f"{peer[0]}:{peer[1]}" if peer else "-"
        version = "5" if self.version == MQTT5 else "3.1.1"
        log.info(
            "client %s connected from %s (MQTT %s, username %s, clean start %s, "
            "keep alive %d, session present %s)",
            self.client_id,
            address,
            version,
            self.username if self.username is not None else "-",
            packet.clean_start,
            keep_alive,
            present,
            extra={
                "client_id": self.client_id,
                "event": "connect",
                "username": self.username,
                "remote_address": address,
                "protocol_version": version,
                "clean_start": packet.clean_start,
                "keep_alive": keep_alive,
                "session_present": present,
            },
        )

    # -- outbound messages ----------------------------------------------------------

    def send_message(self, msg: Message, qos: int, retain: bool, ids: list[int] | None) -> None:
        """Deliver one message to this client (called by the shard's fan-out)."""
        session = self.session
        if self.state != CONNECTED or session is None:
            if session is not None and (qos or session.queue_qos0):
                session.enqueue((msg, qos, retain, ids))
            return
        if qos == 0 and self.write_paused:
            transport = self.transport
            if (
                transport is not None
                and transport.get_write_buffer_size() > self.shard.config.max_outgoing_buffer
            ):
                self.shard.stats.messages_dropped += 1
                self.shard.stats.dropped_slow_consumer += 1
                self._cut_off_slow_consumer()
                return
        self.outbox.deliver(session, msg, qos, retain, ids, self.shard.clock())

    def _window_freed(self) -> None:
        session = self.session
        # the common case, nothing waits for the slot, reads no clock
        if (
            session is not None
            and (self.outbox.unsent or session.pending)
            and self.state == CONNECTED
        ):
            self.outbox.window_freed(session, self.shard.clock())

    # -- inbound packets ---------------------------------------------------------------

    def _handle_publish(self, packet: Publish) -> Coroutine[Any, Any, None] | None:
        if self.state != CONNECTED:
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "PUBLISH before CONNACK")
        shard = self.shard
        cfg = shard.config
        session = self.session
        assert session is not None
        verdict = check_publish(packet, self.version, self.aliases_in, session.inbound_qos2, cfg)
        shard.stats.received_qos[packet.qos] += 1
        if verdict == DUPLICATE:
            # a resend of a message already routed: acknowledge only
            assert packet.packet_id is not None
            self._send_ack(Pubrec(packet.packet_id))
            return None
        rate = self.rate
        if rate is not None and not rate.take(len(packet.payload), shard.clock()):
            self._over_rate(rate)
        acl = self.acl
        if acl is not None and not acl.may_publish(packet.topic):
            # it reaches nobody: PUBACK/PUBREC 0x87, or at QoS 0 dropped and counted
            shard.stats.acl_denied += 1
            if packet.qos == 0:
                shard.stats.messages_dropped += 1
                shard.stats.dropped_acl += 1
            self._ack_publish(packet, ReasonCode.NOT_AUTHORIZED, "not authorized")
            return None
        qos = packet.qos
        hook = shard.hooks.on_publish
        if hook is not None or packet.topic.startswith("$SYS"):
            return self._publish_hooked(packet)
        if qos and packet.retain and shard.fabric.distributed:
            return self._publish_retained_synced(packet)
        self._route_publish(packet, ReasonCode.SUCCESS)
        return None

    def _over_rate(self, rate: PublishRate) -> None:
        """A PUBLISH sent while the client is over its publish rate: v5 gets
        DISCONNECT 0x96 (3.1.1: the connection is closed), or, with
        publish_rate_action = "pause", this one is taken and nothing more is
        read until the client is back within the rate."""
        shard = self.shard
        shard.stats.rate_limited += 1
        shard.log_refusal(
            "publish_rate", self.client_id, "client %s: over its publish rate", self.client_id
        )
        if shard.config.publish_rate_action == "disconnect":
            raise MQTTError(ReasonCode.MESSAGE_RATE_TOO_HIGH, "message rate too high")
        if self._throttle is None:
            self.pause_reading()
            self._throttle = self.loop.call_later(rate.wait(), self._unthrottle)

    def rate_changed(self) -> None:
        """publish_rate / publish_byte_rate changed (SIGHUP): a fresh bucket
        under the new limits, from this connection's next PUBLISH on."""
        cfg = self.shard.config
        self.rate = (
            PublishRate(cfg.publish_rate, cfg.publish_byte_rate, self.shard.clock())
            if cfg.publish_rate or cfg.publish_byte_rate
            else None
        )

    def _unthrottle(self) -> None:
        self._throttle = None
        self.resume_reading()

    async def _publish_retained_synced(self, packet: Publish) -> None:
        """A retained message at QoS 1/2 is acknowledged once every worker holds it."""
        code = self._publish_message(packet)
        fabric = self.shard.fabric
        applied = fabric.barrier()
        fabric.flush_now()
        await applied
        if self.state == CONNECTED:
            self._ack_publish(packet, code, None)

    async def _publish_hooked(self, packet: Publish) -> None:
        code: int = ReasonCode.SUCCESS
        reason = None
        if packet.topic.startswith("$SYS"):
            code, reason = ReasonCode.NOT_AUTHORIZED, "$SYS topics are read-only"
        else:
            hook = self.shard.hooks.on_publish
            try:
                await self._decide(hook, packet)
            except DisconnectError:
                raise
            except HookError as err:
                code, reason = err.reason_code, err.reason_string
        self._route_publish(packet, code, reason)

    def _route_publish(self, packet: Publish, code: int, reason: str | None = None) -> None:
        if code < 0x80:
            code = self._publish_message(packet)
        self._ack_publish(packet, code, reason)

    def _publish_message(self, packet: Publish) -> int:
        """Route an accepted PUBLISH; returns the success code for its ack."""
        qos = packet.qos
        props = packet._properties  # None: it had none (3.1.1, or none sent)
        expiry = props.message_expiry_interval if props is not None else None
        msg = Message(
            packet.topic,
            packet.payload,
            qos,
            packet.retain,
            props,
            self.shard.clock() + expiry if expiry is not None else None,
            self.client_id,
        )
        if self.shard.publish(msg) == 0 and qos and self.version == MQTT5:
            return ReasonCode.NO_MATCHING_SUBSCRIBERS
        return ReasonCode.SUCCESS

    def _ack_publish(self, packet: Publish, code: int, reason: str | None) -> None:
        qos = packet.qos
        if qos == 0:
            return
        # the common QoS 1 case: a plain PUBACK (4 bytes, the same in both
        # versions), written as bytes when nothing makes it wait
        if qos == 1 and code == 0 and reason is None and not self._ack_must_wait():
            limit = self.outbox.max_packet
            if not limit or limit >= 4:
                pid = packet.packet_id
                assert pid is not None
                self.write(_puback_ok(0x40, 2, pid))
                return
        props_out = None
        if reason is not None and self.version == MQTT5 and self.problem_info:
            props_out = Properties(reason_string=reason)
        if code >= 0x80:
            code = sendable_code(PacketType.PUBACK, code)
        pid = packet.packet_id
        assert pid is not None  # the decoder requires one at QoS 1/2
        if qos == 1:
            self._send_ack(Puback(pid, code, props_out))
        else:
            if code < 0x80:
                assert self.session is not None
                self.session.add_inbound(pid)
            self._send_ack(Pubrec(pid, code, props_out))

    def _ack_must_wait(self) -> bool:
        """Whether an acknowledgement sent now waits for the store: there is
        one, and it has unwritten changes, or earlier acknowledgements wait,
        or other workers were handed QoS 1/2 messages this iteration."""
        store = self.shard.store
        if store is None:
            return False
        return bool(self._acks) or store.pending() or self.shard.fabric.stored() is not None

    def _send_ack(self, packet: Any) -> None:
        """Send a PUBACK, PUBREC or PUBCOMP once the store holds what it
        acknowledges (the deliveries to persistent sessions, the inbound QoS 2
        state), in the order of the packets it answers [MQTT-4.6.0-2]. With no
        store, or nothing unwritten, it goes at once."""
        if not self._ack_must_wait():
            self.send(packet)
            return
        store = self.shard.store
        assert store is not None
        acks = self._acks
        # other workers this iteration handed QoS 1/2 messages to store them too
        remote = self.shard.fabric.stored()
        local = store.flush() if store.pending() else None
        written: asyncio.Future[None]
        if local is not None and remote is not None:
            written = all_done(local, remote)
        elif local is not None:
            written = local
        elif remote is not None:
            written = remote
        else:
            assert acks  # nothing new to wait for: wait behind the ones waiting
            written = acks[-1][0]
        if acks is None:
            acks = self._acks = deque()
        acks.append((written, packet))
        if len(acks) == 1:
            written.add_done_callback(self._acks_written)

    def _acks_written(self, _fut: Any) -> None:
        acks = self._acks
        while acks and acks[0][0].done():
            written, packet = acks.popleft()
            if self.state == CLOSED:
                continue
            failed = written.cancelled() or written.exception() is not None
            if not failed:
                self.send(packet)
            else:
                self._store_refused(packet)
        if acks:
            acks[0][0].add_done_callback(self._acks_written)

    def _store_refused(self, packet: Any) -> None:
        """The store could not write in time: nothing is acknowledged as kept.
        v5 gets 0x80 "store unavailable"; 3.1.1 has no way to say it and is
        closed (the client resends after reconnecting)."""
        if isinstance(packet, Pubcomp | Unsuback):
            # the release or unsubscription is in memory and serves; only its
            # durable copy lags (it is written once the store is back)
            self.send(packet)
            return
        if self.version != MQTT5:
            log.warning("client %s: store unavailable, closing (3.1.1)", self.client_id)
            self._ending("store unavailable")
            self.close()
            return
        if isinstance(packet, Pubrec) and self.session is not None:
            self.session.release_inbound(packet.packet_id)  # the flow ends with 0x80
        props = Properties(reason_string="store unavailable") if self.problem_info else None
        packet.reason_code = ReasonCode.UNSPECIFIED_ERROR
        packet.properties = props if props is not None else Properties()
        self.send(packet)

    def _handle_puback(self, packet: Puback) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        session = self.session
        assert session is not None
        if on_puback(session, packet.packet_id):
            self._window_freed()
        hook = self.shard.hooks.on_puback
        if hook is not None:
            return self._notify(hook, packet)
        return None

    def _handle_pubrec(self, packet: Pubrec) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        session = self.session
        assert session is not None
        freed, reply = on_pubrec(session, packet.packet_id, packet.reason_code, self.version)
        if reply is not None:
            self.send(reply)
        if freed:
            self._window_freed()
        hook = self.shard.hooks.on_pubrec
        if hook is not None:
            return self._notify(hook, packet)
        return None

    def _handle_pubrel(self, packet: Pubrel) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        session = self.session
        assert session is not None
        hook = self.shard.hooks.on_pubrel
        if hook is not None:
            return self._pubrel_hooked(packet)
        self._complete_pubrel(packet, None, None)
        return None

    async def _pubrel_hooked(self, packet: Pubrel) -> None:
        code = None
        reason = None
        try:
            await self._decide(self.shard.hooks.on_pubrel, packet)
        except DisconnectError:
            raise
        except HookError as err:
            code, reason = err.reason_code, err.reason_string
        self._complete_pubrel(packet, code, reason)

    def _complete_pubrel(self, packet: Pubrel, code: int | None, reason: str | None) -> None:
        session = self.session
        assert session is not None
        self._send_ack(
            on_pubrel(session, packet.packet_id, self.version, code, reason, self.problem_info)
        )

    def _handle_pubcomp(self, packet: Pubcomp) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        session = self.session
        assert session is not None
        # only a PUBCOMP answering our PUBREL ends the flow: until its PUBREC
        # the message stays unacknowledged [MQTT-4.3.3-3] (3.1.1 [MQTT-4.3.3-1])
        if on_pubcomp(session, packet.packet_id):
            self._window_freed()
        hook = self.shard.hooks.on_pubcomp
        if hook is not None:
            return self._notify(hook, packet)
        return None

    def _handle_subscribe(self, packet: Subscribe) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        check_subscribe(packet, self.shard.config.subscription_identifier_available)
        hook = self.shard.hooks.on_subscribe
        if hook is not None:
            return self._subscribe_hooked(packet)
        return self._subscribe(packet, None)  # type: ignore[no-any-return]

    async def _subscribe_hooked(self, packet: Subscribe) -> None:
        result: object
        try:
            result = await self.shard.hooks.on_subscribe(self.handle, packet)  # type: ignore[misc]
        except DisconnectError:
            raise
        except HookError as err:
            result = err
        pending = self._subscribe(packet, verdicts(result, len(packet.subscriptions)))
        if pending is not None:
            await pending

    def _subscribe(self, packet: Subscribe, allowed: list[Verdict] | None) -> Any:
        session = self.session
        assert session is not None
        shard = self.shard
        ids = packet.properties.subscription_identifiers
        identifier = ids[0] if ids else None
        codes: list[int] = []
        retained: list[tuple[Message, int, list[int] | None, bool]] = []
        acl = self.acl
        quota = shard.config.max_subscriptions
        for i, sub in enumerate(packet.subscriptions):
            refused, qos = apply(allowed, i, sub.qos)
            if refused is None and acl is not None and not acl.may_subscribe(sub.topic_filter):
                shard.stats.acl_denied += 1
                refused = ReasonCode.NOT_AUTHORIZED  # 3.1.1: 0x80
            if (
                refused is None
                and quota
                and len(session.subscriptions) >= quota
                and sub.topic_filter not in session.subscriptions  # a replacement is free
            ):
                shard.stats.subscriptions_refused += 1
                shard.log_refusal(
                    "max_subscriptions",
                    self.client_id,
                    "client %s: max_subscriptions (%d) reached",
                    self.client_id,
                    quota,
                )
                refused = ReasonCode.QUOTA_EXCEEDED  # 3.1.1: 0x80
            if refused is not None:
                codes.append(refused)
                continue
            code, msgs = shard.subscribe(
                session,
                sub.topic_filter,
                qos,
                sub.no_local,
                sub.retain_as_published,
                sub.retain_handling,
                identifier,
            )
            codes.append(code)
            if code < 0x80:
                for m in msgs:
                    retained.append(
                        (m, min(code, m.qos), None if identifier is None else [identifier], True)
                    )
        codes = suback_codes(codes, self.version)
        fabric = self.shard.fabric
        store = self.shard.store
        if fabric.distributed:
            # SUBACK once every worker knows of the subscription; the deltas and
            # the barrier's PINGs leave now, not at the end of this iteration,
            # so other workers see the subscription as soon as possible
            applied = fabric.barrier()
            fabric.flush_now()
            return self._suback_after(applied, packet.packet_id, codes, retained)
        if self._journaled() and not store.flush().done():  # type: ignore[union-attr]
            # the subscription, or a change before it, is not written yet
            return self._suback_after(None, packet.packet_id, codes, retained)
        self._suback(packet.packet_id, codes, retained)
        return None

    async def _suback_after(
        self,
        applied: Awaitable[None] | None,
        packet_id: int,
        codes: list[int],
        retained: list[Any],
    ) -> None:
        if applied is not None:
            await applied
        # and once the store holds the subscription (should it fail, the
        # subscription serves from memory and is written once the store is
        # back); a session the store does not keep waits for nothing of it
        if self._journaled():
            await self._stored()
        if self.state == CONNECTED:
            self._suback(packet_id, codes, retained)

    def _journaled(self) -> bool:
        """This connection's session is one the store keeps."""
        session = self.session
        return session is not None and session.journal is not None

    async def _stored(self) -> None:
        store = self.shard.store
        if store is not None:
            try:
                await store.flush()  # what is buffered, or the batch being written
            except StoreUnavailable:
                pass

    def _suback(self, packet_id: int, codes: list[int], retained: list[Any]) -> None:
        self.send(Suback(packet_id, codes))
        # retained messages follow the SUBACK, with RETAIN set [MQTT-3.3.1-9]
        for m, qos, sids, retain in retained:
            self.send_message(m, qos, retain, sids)

    def _handle_unsubscribe(self, packet: Unsubscribe) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        hook = self.shard.hooks.on_unsubscribe
        if hook is not None:
            return self._unsubscribe_hooked(packet)
        self._unsubscribe(packet, None)
        return None

    async def _unsubscribe_hooked(self, packet: Unsubscribe) -> None:
        result: object
        try:
            result = await self.shard.hooks.on_unsubscribe(self.handle, packet)  # type: ignore[misc]
        except DisconnectError:
            raise
        except HookError as err:
            result = err
        self._unsubscribe(packet, verdicts(result, len(packet.topic_filters)))

    def _unsubscribe(self, packet: Unsubscribe, allowed: list[Verdict] | None) -> None:
        session = self.session
        assert session is not None
        codes: list[int] = []
        for i, f in enumerate(packet.topic_filters):
            refused, _qos = apply(allowed, i, 0)
            codes.append(refused if refused is not None else self.shard.unsubscribe(session, f))
        self._send_ack(Unsuback(packet.packet_id, unsuback_codes(codes)))
        self.shard.fabric.flush_now()

    def _handle_pingreq(self, packet: Any) -> Coroutine[Any, Any, None] | None:
        self._require_connected()
        self.write(_PINGRESP)
        hook = self.shard.hooks.on_ping
        if hook is not None:
            return self._notify(hook, packet)
        return None

    def _handle_disconnect(self, packet: Disconnect) -> Coroutine[Any, Any, None] | None:
        if self.state == CONNECTING and self.auth_method is not None:
            # the client abandons the AUTH exchange (spec 4.12): nothing to undo
            self.close()
            return None
        self._require_connected()
        self._send_will = on_disconnect(
            self.session, packet, self.version, self.shard.config.max_session_expiry_interval
        )
        code = packet.reason_code
        name = ReasonCode(code).name if code in ReasonCode._value2member_map_ else "?"
        self._ending(f"client DISCONNECT 0x{code:02X} {name}")
        hook = self.shard.hooks.on_disconnect
        if hook is not None:
            h = self.handle
            self.loop.create_task(_call_quietly(hook, h, packet))
            self.handle = None  # connection_lost must not notify twice
        self.close()
        return None

    def _handle_auth(self, packet: Auth) -> Coroutine[Any, Any, None] | None:
        if self.state not in (CONNECTING, CONNECTED):
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR)
        reauth = check_auth(packet, self.version, self.state == CONNECTED, self.auth_method)
        return self._auth_round(packet, reauth=reauth)

    def _handle_unexpected(self, packet: Any) -> None:
        raise ProtocolViolation(
            ReasonCode.PROTOCOL_ERROR, f"unexpected {PacketType(packet.packet_type).name}"
        )

    def _require_connected(self) -> None:
        if self.state != CONNECTED:
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "packet before CONNACK")


async def _call_quietly(hook: Any, handle: Any, packet: Any) -> None:
    try:
        await hook(handle, packet)
    except Exception:
        log.exception("hook %s failed", hook)


_PINGRESP = encode(Pingresp(), MQTT5)
#: PUBACK, remaining length 2, packet id: Success with no properties
_puback_ok = struct.Struct(">BBH").pack

_HANDLERS: dict[int, Any] = {
    PacketType.CONNECT: Connection._handle_connect,
    PacketType.PUBLISH: Connection._handle_publish,
    PacketType.PUBACK: Connection._handle_puback,
    PacketType.PUBREC: Connection._handle_pubrec,
    PacketType.PUBREL: Connection._handle_pubrel,
    PacketType.PUBCOMP: Connection._handle_pubcomp,
    PacketType.SUBSCRIBE: Connection._handle_subscribe,
    PacketType.UNSUBSCRIBE: Connection._handle_unsubscribe,
    PacketType.PINGREQ: Connection._handle_pingreq,
    PacketType.DISCONNECT: Connection._handle_disconnect,
    PacketType.AUTH: Connection._handle_auth,
    PacketType.CONNACK: Connection._handle_unexpected,
    PacketType.SUBACK: Connection._handle_unexpected,
    PacketType.UNSUBACK: Connection._handle_unexpected,
    PacketType.PINGRESP: Connection._handle_unexpected,
}

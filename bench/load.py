"""MQTT load generator: ``python -m bench.load conn|sub|pubsub [options]``.

Theory of operation
-------------------
The parent process parses the options, forks ``--procs`` generator processes (default: one per
CPU this process may run on), splits the clients between them and merges what they report.
It never touches a socket itself; it keeps the clock, samples the broker's CPU and memory with
psutil (``--broker-pid``), prints a progress line on stderr and exactly one JSON line of results
on stdout.

Each generator process runs one uvloop event loop with one ``asyncio.Protocol`` per MQTT
connection. Packets are pre-encoded templates (bench/wire.py); a publisher's batch is a list of
pre-built heads and packed ``(timestamp, publisher id, sequence)`` stamps joined into a single
``transport.write`` per loop iteration; a subscriber walks its receive buffer once per
``data_received`` call and reads the clock once per call. Latencies go into one flat
``array('q')`` per process; no object is created per message apart from the ack a QoS 1/2
message needs.

Processes talk to the parent over a pipe: ``ready`` (connected and subscribed), then the parent
sends ``go`` with an absolute ``time.monotonic_ns()`` start time (the monotonic clock is shared
by all processes on a host, which is also what makes cross-process latency valid), then each
process answers with its results. Timed windows are absolute too: every process computes the
same warm-up end and measurement end from the start time.

WebSocket (``--transport ws``): each client first sends the HTTP Upgrade request (``GET
--ws-path``, subprotocol ``mqtt``) and checks the 101 and its Sec-WebSocket-Accept; from then on
every ``transport.write`` becomes one masked binary frame (``WsTransport``: a fixed mask key per
connection, applied as one big-integer XOR with the repeated key cached per payload length),
and ``WsClient.data_received`` walks the server's unmasked frames, handing the payload bytes of
binary and continuation frames to the MQTT walk above without waiting for a frame to complete
(MQTT over WebSocket is a byte stream: a packet may span frames and a frame may carry several).

Loss and duplicates: a subscriber keeps, per publisher, the next expected sequence number and
a set of the numbers it skipped. In-order delivery costs one dict lookup; a gap records the
missing numbers, a late arrival removes one, anything else is a duplicate. Lost = sent minus
distinct received, over every (subscriber, publisher) pair the pattern promises.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import struct
import sys
import time
import traceback
import uuid
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import wire

monotonic_ns = time.monotonic_ns

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2

#: Progress counters shared with the parent, one row per process.
P_CONNECTED, P_SENT, P_RECV, P_ERRORS = range(4)
P_WIDTH = 4

#: Latencies kept per process; beyond this the run reports ``latency_truncated``.
LATENCY_CAP = 8_000_000

#: A subscriber that hears nothing for this long after publishing stopped is drained.
DRAIN_IDLE_NS = 500_000_000


class LoadError(Exception):
    """A run that cannot go on (clients refused, subscriptions refused); no traceback."""


@dataclass
class Options:
    mode: str
    host: str = "127.0.0.1"
    port: int = 1883
    #: subscribers' port when it differs (a cluster's other node)
    sub_port: int = 0
    protocol: int = 5
    procs: int = 0
    cpus: list[int] = field(default_factory=list)
    source_addrs: list[str] = field(default_factory=list)
    broker_pid: int = 0
    keepalive: int = 60
    #: CONNECT credentials of every client (None: none sent)
    username: str | None = None
    password: str | None = None
    connect_timeout: float = 10.0
    concurrency: int = 64
    quiet: bool = False
    transport: str = "tcp"
    ws_path: str = "/mqtt"
    prefix: str = ""
    # conn / sub
    count: int = 1000
    rate: float = 0.0
    hold: float = 2.0
    max_failures: int = 100
    topics: int = 1
    topic: str = "bench/sub/%i/%k"
    # pubsub
    pubs: int = 0
    subs: int = 0
    pattern: str = "pairwise"
    qos: int = 0
    size: int = 64
    duration: float = 5.0
    warmup: float = 1.0
    inflight: int = 64
    window: int = 64
    batch: int = 32
    drain: float = 3.0
    session_expiry: int = 0


# --------------------------------------------------------------------------------------------
# Generator process side
# --------------------------------------------------------------------------------------------


class Meter:
    """Per-process counters, shared by every client of the process."""

    __slots__ = (
        "ws",
        "we",
        "sent",
        "win_sent",
        "recv",
        "win_recv",
        "lat",
        "lat_dropped",
        "dup",
        "errors",
        "error_kinds",
        "subacks",
        "subacks_expected",
        "sub_failed",
        "subs_done",
        "last_recv",
        "open",
        "blocked",
        "retry_armed",
        "loop",
    )

    def __init__(self) -> None:
        self.ws = 1 << 62  # measurement window [ws, we) in monotonic ns; unset = never
        self.we = 0
        self.sent = 0
        self.win_sent = 0
        self.recv = 0
        self.win_recv = 0
        self.lat = array("q")
        self.lat_dropped = 0
        self.dup = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.subacks = 0
        self.subacks_expected = 0
        self.sub_failed = 0
        self.subs_done: asyncio.Future[int] | None = None
        self.last_recv = 0
        self.open = 0
        self.blocked: list[Client] = []
        self.retry_armed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def block(self, pub: Client) -> None:
        """Retry ``pub`` soon: its subscribers are behind.

        A publisher whose subscriber lives in this process is woken by it directly
        (``Client.partner``) and needs no timer; the 1 ms timer covers subscribers in other
        processes. (The stall watchdog in ``Generator.run_pubsub`` covers lost messages.)
        """
        if pub.waiting:
            return
        pub.waiting = True
        pub.blocked_at = monotonic_ns()
        if pub.woken_by_partner:
            return
        self.blocked.append(pub)
        if not self.retry_armed and self.loop is not None:
            self.retry_armed = True
            self.loop.call_later(0.001, self.retry)

    def retry(self) -> None:
        pubs = self.blocked
        self.blocked = []
        self.retry_armed = False
        for pub in pubs:
            if pub.waiting:
                pub.waiting = False
                pub.pump()

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Client(asyncio.Protocol):
    """One MQTT connection; a subscriber, a publisher, or only a connection."""

    __slots__ = (
        "meter",
        "v5",
        "transport",
        "buf",
        "connack",
        "receive_maximum",
        "is_open",
        # subscriber
        "expected",
        "missing",
        # publisher
        "pid",
        "seq",
        "pkid",
        "inflight",
        "window",
        "credit",
        "batch",
        "running",
        "paused",
        "scheduled",
        "head",
        "pad",
        "stamp",
        "loop",
        "delivered",
        "rows",
        "fan",
        "e2e",
        "min_chunk",
        "waiting",
        "partner",
        "woken_by_partner",
        "blocked_at",
        "forgiven",
        "local_row",
        "wake_local",
    )

    def __init__(self, meter: Meter, v5: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.meter = meter
        self.v5 = v5
        self.loop = loop
        self.transport: Any = None
        self.buf = b""
        self.connack: asyncio.Future[int] = loop.create_future()
        self.receive_maximum = 65535
        self.is_open = False
        self.expected: dict[int, int] = {}
        self.missing: dict[int, set[int]] = {}
        self.pid = -1
        self.seq = 0
        self.pkid = 0
        self.inflight = 0
        self.window = 0
        self.credit = -1  # -1: unlimited rate
        self.batch = 32
        self.running = False
        self.paused = False
        self.scheduled = False
        self.head = b""
        self.pad = b""
        self.stamp = wire.STAMP.pack
        # Subscriber side: this process's row of delivered-per-publisher counters.
        self.delivered: memoryview | None = None
        # Publisher side: every process's row, deliveries owed per message, window.
        self.rows: list[memoryview] = []
        self.fan = 1
        self.e2e = 0
        self.min_chunk = 1
        self.waiting = False  # blocked on the end-to-end window
        self.partner: Client | None = None  # publisher in this process that feeds this sub
        self.woken_by_partner = False  # publisher: its only subscriber is in this process
        self.blocked_at = 0
        self.forgiven = 0  # messages written off by the stall watchdog
        self.local_row: memoryview | None = None
        self.wake_local = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def forget_futures(self) -> None:
        """Mark a failed connection's futures retrieved (no 'exception never retrieved')."""
        for fut in (self.connack, getattr(self, "upgraded", None)):
            if fut is not None and fut.done() and not fut.cancelled():
                fut.exception()

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport
        self.is_open = True
        self.meter.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_open:
            self.is_open = False
            self.meter.open -= 1
        self.running = False
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before CONNACK"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.running and not self.scheduled:
            self.pump()

    def data_received(self, data: bytes) -> None:
        # One walk over the buffer, PUBLISH first; everything rare goes to _control().
        if self.buf:
            data = self.buf + data
            self.buf = b""
        n = len(data)
        i = 0
        m = self.meter
        now = monotonic_ns()
        inwin = m.ws <= now < m.we
        lat = m.lat.append if inwin and len(m.lat) < LATENCY_CAP else None
        unpack = wire.STAMP.unpack_from
        expected = self.expected
        delivered = self.delivered
        v5 = self.v5
        out: list[bytes] | None = None
        got = 0
        acked = 0
        while i + 1 < n:
            b0 = data[i]
            rl = data[i + 1]
            p = i + 2
            if rl > 127:
                rl &= 127
                shift = 7
                while p < n:
                    byte = data[p]
                    p += 1
                    rl |= (byte & 127) << shift
                    if byte < 128:
                        break
                    shift += 7
                else:
                    break  # fixed header itself is incomplete
            end = p + rl
            if end > n:
                break
            kind = b0 >> 4
            if kind == 3:  # PUBLISH
                qos = (b0 >> 1) & 3
                t = p + 2 + ((data[p] << 8) | data[p + 1])
                if qos:
                    if out is None:
                        out = []
                    out.append((b"\x40\x02" if qos == 1 else b"\x50\x02") + data[t : t + 2])
                    t += 2
                if v5:
                    plen = data[t]
                    if plen < 128:
                        t += 1 + plen
                    else:
                        decoded = wire.read_varint(data, t)
                        assert decoded is not None
                        t = decoded[1] + decoded[0]
                ts, pub, seq = unpack(data, t)
                got += 1
                if lat is not None:
                    lat(now - ts)
                if delivered is not None:
                    delivered[pub] += 1
                nxt = expected.get(pub, 0)
                if seq == nxt:
                    expected[pub] = seq + 1
                else:
                    self._out_of_order(pub, seq, nxt)
            elif kind == 4 or kind == 7:  # PUBACK, PUBCOMP: one in-flight slot free
                acked += 1
                if rl > 2 and data[p + 2] >= 0x80:  # v5 reason code: refused [MQTT-3.4.2.1]
                    m.error(f"{'PUBACK' if kind == 4 else 'PUBCOMP'} 0x{data[p + 2]:02x}")
            elif kind == 5:  # PUBREC -> PUBREL
                if rl > 2 and data[p + 2] >= 0x80:
                    m.error(f"PUBREC 0x{data[p + 2]:02x}")  # refused: the flow ends here
                    acked += 1
                    i = end
                    continue
                if out is None:
                    out = []
                out.append(b"\x62\x02" + data[p : p + 2])
            elif kind == 6:  # PUBREL -> PUBCOMP
                if out is None:
                    out = []
                out.append(b"\x70\x02" + data[p : p + 2])
            else:
                self._control(kind, data[p:end], now)
            i = end
        if i < n:
            self.buf = data[i:]
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))
        if got:
            m.recv += got
            m.last_recv = now
            if inwin:
                m.win_recv += got
                if lat is None:
                    m.lat_dropped += got
        if acked:
            self.inflight -= acked
            if self.running and not self.scheduled:
                self.pump()
        partner = self.partner
        if (
            partner is not None
            and partner.waiting
            and delivered is not None
            and delivered[partner.pid] >= partner.wake_local
        ):
            partner.waiting = False
            partner.pump()

    # -- slow paths --------------------------------------------------------------------------

    def _out_of_order(self, pub: int, seq: int, nxt: int) -> None:
        if seq > nxt:
            self.missing.setdefault(pub, set()).update(range(nxt, seq))
            self.expected[pub] = seq + 1
            return
        gaps = self.missing.get(pub)
        if gaps is not None and seq in gaps:
            gaps.discard(seq)
        else:
            self.meter.dup += 1

    def _control(self, kind: int, body: bytes, now: int) -> None:
        m = self.meter
        if kind == wire.CONNACK:
            code, rmax = wire.connack_receive_maximum(body, 5 if self.v5 else 4)
            if rmax is not None:
                self.receive_maximum = rmax
            if not self.connack.done():
                self.connack.set_result(code)
        elif kind == wire.SUBACK:
            codes = body[2:]
            if self.v5:
                decoded = wire.read_varint(body, 2)
                if decoded is not None:
                    codes = body[decoded[1] + decoded[0] :]
            m.subacks += len(codes)
            m.sub_failed += sum(1 for c in codes if c >= 0x80)
            done = m.subs_done
            if m.subacks >= m.subacks_expected and done is not None and not done.done():
                done.set_result(now)
        elif kind == wire.PINGRESP:
            pass
        elif kind == wire.DISCONNECT:
            m.error(f"server DISCONNECT 0x{body[0]:02x}" if body else "server DISCONNECT")
        else:
            m.error(f"unexpected packet type {kind}")

    # -- publishing --------------------------------------------------------------------------

    def set_wake_threshold(self, done: int) -> None:
        """Count in this process's row at which a local subscriber should wake us.

        Room for ``min_chunk`` messages needs ``(seq - forgiven - e2e + min_chunk) * fan``
        deliveries in total; other processes' rows only grow, so counting them as they are
        now gives a threshold that is never early.
        """
        local = self.local_row[self.pid] if self.local_row is not None else 0
        need = (self.seq - self.forgiven - self.e2e + self.min_chunk) * self.fan
        self.wake_local = need - (done - local)

    def pump(self) -> None:
        """Send what the rate credit, the in-flight window and flow control allow."""
        self.scheduled = False
        if self.paused or not self.running:
            return
        n = self.batch if self.credit < 0 else self.credit
        if self.window:
            free = self.window - self.inflight
            if free < n:
                n = free
        m = self.meter
        e2e_limited = False
        done = 0
        if self.e2e:
            # End-to-end window: messages sent but not yet received by all subscribers.
            pid = self.pid
            for row in self.rows:
                done += row[pid]
            room = self.e2e - self.seq + self.forgiven + done // self.fan
            if room < n:
                n = room
                e2e_limited = True
                # Hysteresis: wait for a worthwhile batch rather than pay a send() syscall
                # (on loopback the sender also pays the receiver's TCP processing) for a few.
                if n < self.min_chunk:
                    self.set_wake_threshold(done)
                    m.block(self)
                    return
        if n <= 0:
            return
        now = monotonic_ns()
        head = self.head
        pad = self.pad
        pack = self.stamp
        pid = self.pid
        seq = self.seq
        end = seq + n
        parts: list[bytes] = []
        app = parts.append
        if self.window:
            k = self.pkid
            for s in range(seq, end):
                k = k + 1 if k < 65535 else 1
                app(head)
                app(pack(k, now, pid, s))
                if pad:
                    app(pad)
            self.pkid = k
            self.inflight += n
        else:
            for s in range(seq, end):
                app(head)
                app(pack(now, pid, s))
                if pad:
                    app(pad)
        assert self.transport is not None
        self.transport.write(b"".join(parts))
        self.seq = end
        m.sent += n
        if m.ws <= now < m.we:
            m.win_sent += n
        if self.credit >= 0:
            self.credit -= n
            if e2e_limited and self.credit > 0:
                self.set_wake_threshold(done)
                m.block(self)
        elif self.paused:
            pass  # resume_writing() pumps again
        elif e2e_limited:
            self.set_wake_threshold(done)
            m.block(self)
        elif n == self.batch:
            self.scheduled = True
            self.loop.call_soon(self.pump)
        # else: the QoS 1/2 in-flight window is full; the next ack pumps again


class UpgradeError(ConnectionError):
    """The server did not accept the WebSocket upgrade."""


class WsTransport:
    """The write side of an MQTT-over-WebSocket connection: one masked binary frame per write.

    Client frames must be masked [RFC 6455 5.3]. The key is fixed per connection (RFC 6455
    wants a fresh one per frame so that a script in a browser cannot choose the bytes on the
    wire; a load generator has no such adversary), so the key repeated over a payload's length
    and the frame header are computed once per length and cached: a publisher's batches all
    have the same length. Masking is then one XOR of two big integers over the whole payload.
    """

    __slots__ = ("raw", "mask", "cache")

    #: Distinct payload lengths cached per connection, and the largest one cached.
    CACHE_ENTRIES = 32
    CACHE_MAX_LEN = 1 << 18

    def __init__(self, raw: Any, mask: bytes) -> None:
        self.raw = raw
        self.mask = mask
        self.cache: dict[int, tuple[bytes, int]] = {}

    def write(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        entry = self.cache.get(n)
        if entry is None:
            entry = (wire.ws_masked_header(n, self.mask), wire.ws_mask_int(self.mask, n))
            if len(self.cache) < self.CACHE_ENTRIES and n <= self.CACHE_MAX_LEN:
                self.cache[n] = entry
        self.raw.write(entry[0] + (int.from_bytes(data, "big") ^ entry[1]).to_bytes(n, "big"))

    def control(self, opcode: int, payload: bytes) -> None:
        """A control frame (pong, close); its payload is at most 125 bytes."""
        head = wire.ws_masked_header(len(payload), self.mask, opcode)
        self.raw.write(head + wire.ws_unmask(payload, self.mask))

    def close(self) -> None:
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return bool(self.raw.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)


class WsClient(Client):
    """A ``Client`` speaking MQTT over WebSocket: upgrade first, then frames both ways.

    ``self.transport`` is a ``WsTransport``, so every write of the MQTT code (publish batches,
    acks, CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT) leaves as one masked frame. Inbound, the
    payload of binary and continuation frames goes to ``Client.data_received`` as soon as it
    arrives (``ws_rem`` counts what the current frame still owes); only a frame header cut by
    a read boundary, or a control frame, waits in ``ws_pending`` for the rest.
    """

    __slots__ = ("upgraded", "ws_key", "ws_request", "ws_pending", "ws_rem", "ws_open", "ws_closed")

    def __init__(
        self,
        meter: Meter,
        v5: bool,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        path: str,
    ) -> None:
        super().__init__(meter, v5, loop)
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.ws_key = wire.ws_key()
        self.ws_request = wire.ws_upgrade_request(host, port, path, self.ws_key)
        self.ws_pending = b""
        self.ws_rem = 0
        self.ws_open = False
        self.ws_closed = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(WsTransport(transport, os.urandom(4)))
        transport.write(self.ws_request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ws_open and not self.connack.done():
            self.connack.cancel()  # nobody awaits it before the upgrade: nothing to report
        super().connection_lost(exc)
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the WebSocket upgrade"))

    def data_received(self, data: bytes) -> None:
        if not self.ws_open:
            data = self._upgrade_response(data)
            if not data:
                return
        rem = self.ws_rem
        if self.ws_pending:
            data = self.ws_pending + data
            self.ws_pending = b""
        n = len(data)
        if rem >= n:  # all of it is payload of the frame in progress
            self.ws_rem = rem - n
            Client.data_received(self, data)
            return
        chunks: list[bytes] = []
        i = 0
        while True:
            if rem:
                end = i + rem
                if end > n:
                    chunks.append(data[i:])
                    rem = end - n
                    break
                chunks.append(data[i:end])
                i = end
                rem = 0
            if i >= n:
                break
            if i + 2 > n:
                self.ws_pending = data[i:]
                break
            b0 = data[i]
            length = data[i + 1]
            p = i + 2
            if length & 0x80:
                self.meter.error("WebSocket: masked server frame")  # [RFC 6455 5.1]
                self.transport.abort()
                return
            if length == 126:
                p += 2
                if p > n:
                    self.ws_pending = data[i:]
                    break
                length = (data[p - 2] << 8) | data[p - 1]
            elif length == 127:
                p += 8
                if p > n:
                    self.ws_pending = data[i:]
                    break
                length = int.from_bytes(data[p - 8 : p], "big")
            opcode = b0 & 0x0F
            if opcode == wire.WS_OP_BINARY or opcode == wire.WS_OP_CONT:
                rem = length
                i = p
                continue
            end = p + length
            if end > n:  # a control frame is handled whole (at most 125 bytes)
                self.ws_pending = data[i:]
                break
            self._ws_control(opcode, data[p:end])
            i = end
        self.ws_rem = rem
        if chunks:
            Client.data_received(self, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _upgrade_response(self, data: bytes) -> bytes:
        """Consume the HTTP response; return the bytes after it once the upgrade is accepted."""
        buf = self.ws_pending + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.ws_pending = buf
            if len(buf) > 65536:
                self._upgrade_failed("response headers too long")
            return b""
        self.ws_pending = b""
        why = wire.ws_check_response(buf[:end], self.ws_key)
        if why:
            self._upgrade_failed(why)
            return b""
        self.ws_open = True
        if not self.upgraded.done():
            self.upgraded.set_result(None)
        return buf[end + 4 :]

    def _upgrade_failed(self, why: str) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(UpgradeError(why))
        self.transport.abort()

    def _ws_control(self, opcode: int, payload: bytes) -> None:
        if opcode == wire.WS_OP_PING:
            if self.is_open and not self.ws_closed:
                self.transport.control(wire.WS_OP_PONG, payload)
        elif opcode == wire.WS_OP_CLOSE:
            # Answer with the same status code [RFC 6455 5.5.1]; the server then closes TCP
            # (so TIME_WAIT stays on its side, as with a plain MQTT DISCONNECT).
            if self.is_open and not self.ws_closed:
                self.ws_closed = True
                self.transport.control(wire.WS_OP_CLOSE, payload[:2])
        elif opcode == wire.WS_OP_PONG:
            pass
        elif opcode == wire.WS_OP_TEXT:
            self.meter.error("WebSocket: text frame")  # [MQTT-6.0.0-1] binary frames only
        else:
            self.meter.error(f"WebSocket: opcode {opcode}")


class Generator:
    """One generator process: its share of the clients and the pipe to the parent."""

    def __init__(self, opts: Options, index: int, pipe: Any, progress: Any, delivered: Any) -> None:
        self.opts = opts
        self.index = index
        self.pipe = pipe
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.meter = Meter()
        self.meter.loop = self.loop
        # Delivered-per-publisher counters in shared memory, one row per process: only this
        # process writes its row (no lost updates), publishers anywhere read every row.
        width = max(1, opts.pubs)
        flat = memoryview(delivered).cast("B").cast("q")
        self.rows = [flat[r * width : (r + 1) * width] for r in range(opts.procs)]
        self.clients: list[Client] = []
        self.connect_first = 0
        self.connect_last = 0

    # -- plumbing ----------------------------------------------------------------------------

    async def recv(self) -> Any:
        return await self.loop.run_in_executor(None, self.pipe.recv)

    def send(self, kind: str, payload: Any = None) -> None:
        self.pipe.send((kind, payload))

    def share(self, total: int) -> range:
        """This process's contiguous block of ``range(total)``."""
        procs = self.opts.procs
        lo = total * self.index // procs
        hi = total * (self.index + 1) // procs
        return range(lo, hi)

    async def report_progress(self) -> None:
        row = self.index * P_WIDTH
        m = self.meter
        while True:
            self.progress[row + P_CONNECTED] = m.open
            self.progress[row + P_SENT] = m.sent
            self.progress[row + P_RECV] = m.recv
            self.progress[row + P_ERRORS] = m.errors
            await asyncio.sleep(0.25)

    async def sleep_until(self, deadline_ns: int) -> None:
        delay = (deadline_ns - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    def cpu_seconds() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    # -- connecting --------------------------------------------------------------------------

    def client_id(self, role: str, index: int) -> str:
        return f"{self.opts.prefix}{role}{index}"

    async def open_client(self, role: str, index: int) -> Client | None:
        """Connect one client and wait for its CONNACK; None (and an error counted) on failure."""
        opts = self.opts
        loop = self.loop
        # subscribers may be served by another broker (a cluster node: --sub-port)
        port = opts.sub_port if role == "s" and opts.sub_port else opts.port
        client = self.new_client(port)
        addrs = opts.source_addrs
        try:
            async with asyncio.timeout(opts.connect_timeout):
                if addrs:
                    await self.connect_from(client, addrs[index % len(addrs)], port)
                else:
                    # uvloop's create_connection: half the CPU of the path above, and its
                    # transports set TCP_NODELAY.
                    await loop.create_connection(lambda: client, opts.host, port)
                if isinstance(client, WsClient):
                    await client.upgraded
                persistent = role == "s" and opts.session_expiry > 0
                client.transport.write(
                    wire.connect(
                        self.client_id(role, index),
                        opts.protocol,
                        opts.keepalive,
                        clean=not persistent,
                        expiry=opts.session_expiry if persistent else 0,
                        username=opts.username,
                        password=opts.password,
                    )
                )
                code = await client.connack
        except (OSError, TimeoutError, ConnectionError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            if isinstance(exc, UpgradeError):
                kind = f"WebSocket upgrade: {exc}"
            self.meter.error(f"connect: {kind}")
            if client.transport is not None:
                client.transport.abort()
            client.forget_futures()
            return None
        if code != 0:
            self.meter.error(f"CONNACK 0x{code:02x}")
            assert client.transport is not None
            client.transport.abort()
            return None
        self.connect_last = monotonic_ns()
        return client

    def new_client(self, port: int) -> Client:
        opts = self.opts
        v5 = opts.protocol == 5
        if opts.transport == "ws":
            return WsClient(self.meter, v5, self.loop, opts.host, port, opts.ws_path)
        return Client(self.meter, v5, self.loop)

    async def connect_from(self, client: Client, source: str, port: int) -> None:
        """Connect from a chosen source address, the port picked by connect() itself.

        IP_BIND_ADDRESS_NO_PORT defers the port choice from bind() to connect(), which picks
        per 4-tuple: each source address then adds ~28,000 connections to one broker port. A
        plain bind(addr, 0) draws from a smaller, separate pool and slows to a crawl as it
        fills up (10x slower connects by 12,000 per address).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            await self.loop.sock_connect(sock, (self.opts.host, port))
            await self.loop.create_connection(lambda: client, sock=sock)
        except BaseException:
            if client.transport is None:
                sock.close()
            raise

    async def open_many(self, role: str, indices: range, rate: float = 0.0) -> dict[int, Client]:
        """Connect ``indices`` with bounded concurrency, or paced at ``rate`` connections/s."""
        opts = self.opts
        results: dict[int, Client] = {}
        failures = 0
        self.connect_first = monotonic_ns()

        async def one(index: int) -> None:
            nonlocal failures
            if failures >= opts.max_failures:
                return
            client = await self.open_client(role, index)
            if client is None:
                failures += 1
            else:
                results[index] = client

        if rate > 0:
            start = monotonic_ns()
            tasks = []
            for k, index in enumerate(indices):
                await self.sleep_until(start + int(k * 1e9 / rate))
                if failures >= opts.max_failures:
                    break
                tasks.append(asyncio.ensure_future(one(index)))
            await asyncio.gather(*tasks)
        else:
            pending = iter(indices)

            async def lane() -> None:
                for index in pending:
                    if failures >= opts.max_failures:
                        return
                    await one(index)

            lanes = max(1, opts.concurrency // opts.procs)
            await asyncio.gather(*(lane() for _ in range(lanes)))
        return {k: results[k] for k in sorted(results)}

    async def subscribe_all(self, clients: list[Client], filters: list[list[str]]) -> int:
        """Send every client's SUBSCRIBE packets at once; return when the last SUBACK is in."""
        m = self.meter
        total = sum(len(f) for f in filters)
        packets = [
            b"".join(
                wire.subscribe(k + 1, flt, self.opts.qos, self.opts.protocol)
                for k, flt in enumerate(fl)
            )
            for fl in filters
        ]
        m.subacks = 0
        m.sub_failed = 0
        m.subacks_expected = total
        m.subs_done = self.loop.create_future()
        if total == 0:
            return monotonic_ns()
        for client, packet in zip(clients, packets, strict=True):
            if client.transport is not None and client.is_open:
                client.transport.write(packet)
        timeout = max(10.0, self.opts.connect_timeout)
        try:
            async with asyncio.timeout(timeout):
                return await m.subs_done
        except TimeoutError:
            m.error("SUBACK timeout")
            return monotonic_ns()

    async def keepalive(self) -> None:
        interval = max(1.0, self.opts.keepalive * 0.5) if self.opts.keepalive else 0
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            for client in self.clients:
                if client.is_open and client.transport is not None:
                    client.transport.write(wire.PINGREQ_PACKET)

    async def close_all(self, timeout: float = 3.0) -> None:
        """DISCONNECT every client and let the broker close first.

        The side that closes first keeps the connection in TIME_WAIT for a minute; on the
        client side that would hold one ephemeral port per connection and slow down (or
        starve) the next run's connects, so we only close what the broker has not.
        """
        for client in self.clients:
            client.running = False
            if client.is_open and client.transport is not None:
                client.transport.write(wire.DISCONNECT_PACKET)
        deadline = monotonic_ns() + int(timeout * 1e9)
        while self.meter.open > 0 and monotonic_ns() < deadline:
            await asyncio.sleep(0.02)
        for client in self.clients:
            if client.is_open and client.transport is not None:
                client.transport.close()

    # -- modes -------------------------------------------------------------------------------

    async def run(self) -> None:
        ticker = asyncio.ensure_future(self.report_progress())
        pinger = asyncio.ensure_future(self.keepalive())
        try:
            await getattr(self, f"run_{self.opts.mode}")()
        finally:
            ticker.cancel()
            pinger.cancel()

    async def run_conn(self) -> None:
        opts = self.opts
        self.send("ready")
        _, t0 = await self.recv()
        await self.sleep_until(t0)
        cpu0 = self.cpu_seconds()
        rate = opts.rate / opts.procs if opts.rate else 0.0
        self.clients = list((await self.open_many("c", self.share(opts.count), rate)).values())
        cpu1 = self.cpu_seconds()
        self.send(
            "connected",
            {
                "connected": len(self.clients),
                "first_ns": self.connect_first,
                "last_ns": self.connect_last,
                "cpu_s": cpu1 - cpu0,
            },
        )
        await self.recv()  # release
        held = sum(1 for c in self.clients if c.is_open)
        await self.close_all()
        self.send("result", {"held": held, **self.common_result()})

    async def run_sub(self) -> None:
        opts = self.opts
        connected = await self.open_many("s", self.share(opts.count))
        self.clients = list(connected.values())
        filters = [
            [opts.topic.replace("%i", str(i)).replace("%k", str(k)) for k in range(opts.topics)]
            for i in connected
        ]
        self.send("ready", {"connected": len(self.clients)})
        _, t0 = await self.recv()
        await self.sleep_until(t0)
        cpu0 = self.cpu_seconds()
        first = monotonic_ns()
        last = await self.subscribe_all(self.clients, filters)
        cpu1 = self.cpu_seconds()
        self.send(
            "result",
            {
                "first_ns": first,
                "last_ns": last,
                "subacks": self.meter.subacks,
                "sub_failed": self.meter.sub_failed,
                "cpu_s": cpu1 - cpu0,
                "connected": len(self.clients),
                **self.common_result(),
            },
        )
        await self.close_all()

    async def run_pubsub(self) -> None:
        opts = self.opts
        m = self.meter
        sub_indices = self.share(opts.subs)
        pub_indices = self.share(opts.pubs)
        subs = list((await self.open_many("s", sub_indices)).values())
        if len(subs) != len(sub_indices):
            raise LoadError(
                f"only {len(subs)} of {len(sub_indices)} subscribers connected "
                f"{self.meter.error_kinds}"
            )
        for sub in subs:
            sub.delivered = self.rows[self.index]
        filters = [[topic_for_sub(opts, i)] for i in sub_indices]
        await self.subscribe_all(subs, filters)
        if m.sub_failed:
            raise LoadError(f"{m.sub_failed} subscriptions refused")
        pubs = list((await self.open_many("p", pub_indices)).values())
        if len(pubs) != len(pub_indices):
            raise LoadError(
                f"only {len(pubs)} of {len(pub_indices)} publishers connected "
                f"{self.meter.error_kinds}"
            )
        self.clients = subs + pubs
        for index, pub in zip(pub_indices, pubs, strict=True):
            setup_publisher(opts, pub, index)
            pub.rows = self.rows
            pub.local_row = self.rows[self.index]
        local_pubs = dict(zip(pub_indices, pubs, strict=True))
        for index, sub in zip(sub_indices, subs, strict=True):
            # A subscriber wakes the publisher that feeds it when that publisher lives in this
            # process; the publisher needs no timer when all its subscribers do.
            if opts.pattern == "pairwise":
                sub.partner = local_pubs.get(index)
                if sub.partner is not None:
                    sub.partner.woken_by_partner = True
            elif opts.pubs == 1:
                sub.partner = local_pubs.get(0)
                if sub.partner is not None and len(sub_indices) == opts.subs:
                    sub.partner.woken_by_partner = True
        self.send("ready")
        _, t0 = await self.recv()
        m.ws = t0 + int(opts.warmup * 1e9)
        m.we = m.ws + int(opts.duration * 1e9)
        cpu: dict[str, float] = {}
        self.loop.call_later(
            (m.ws - monotonic_ns()) / 1e9, lambda: cpu.__setitem__("ws", self.cpu_seconds())
        )
        await self.sleep_until(t0)
        for pub in pubs:
            pub.running = True
        watchdog = asyncio.ensure_future(self.watchdog(pubs))
        pacer = None
        if opts.rate > 0:
            pacer = asyncio.ensure_future(self.pace(pubs, t0, opts.rate / opts.pubs))
        else:
            for pub in pubs:
                pub.pump()
        await self.sleep_until(m.we)
        cpu["we"] = self.cpu_seconds()
        for pub in pubs:
            pub.running = False
        if pacer is not None:
            pacer.cancel()
        watchdog.cancel()
        # Drain: wait for acks of what was sent and for the subscribers to go quiet.
        deadline = monotonic_ns() + int(opts.drain * 1e9)
        while monotonic_ns() < deadline:
            await asyncio.sleep(0.05)
            now = monotonic_ns()
            if any(p.inflight for p in pubs if p.is_open):
                continue
            if now - max(m.last_recv, m.we) >= DRAIN_IDLE_NS:
                break
        streams = {}
        for index, sub in zip(sub_indices, subs, strict=True):
            streams[index] = {
                pub: nxt - len(sub.missing.get(pub, ())) for pub, nxt in sub.expected.items()
            }
        result = {
            "sent": {index: pub.seq for index, pub in zip(pub_indices, pubs, strict=True)},
            "streams": streams,
            "win_sent": m.win_sent,
            "win_recv": m.win_recv,
            "recv": m.recv,
            "dup": m.dup,
            "lat": m.lat.tobytes(),
            "lat_dropped": m.lat_dropped,
            "cpu_s": cpu.get("we", 0.0) - cpu.get("ws", cpu.get("we", 0.0)),
            "window": [min(p.window for p in pubs) if pubs else 0],
            **self.common_result(),
        }
        self.send("result", result)
        await self.close_all()

    async def watchdog(self, pubs: list[Client]) -> None:
        """Unstick publishers whose window has not moved for a second.

        A broker may drop QoS 0 messages under load; each one would otherwise shrink the
        end-to-end window for good. They are written off (and still counted as lost).
        """
        while True:
            await asyncio.sleep(0.1)
            now = monotonic_ns()
            for pub in pubs:
                if pub.waiting and now - pub.blocked_at > 1_000_000_000:
                    done = sum(row[pub.pid] for row in pub.rows) // pub.fan
                    pub.forgiven = pub.seq - done
                    pub.waiting = False
                    pub.pump()

    async def pace(self, pubs: list[Client], t0: int, per_pub: float) -> None:
        """Give each publisher credit so that it has sent ``per_pub`` messages/s since t0.

        Publisher i runs ``i / pubs`` of a message interval ahead of publisher 0, so the
        sends are spread over the interval instead of leaving in one burst per tick (a burst
        would queue in the broker and in this loop, and show up as latency).
        """
        total = max(1, self.opts.pubs)
        phases = [pub.pid / total for pub in pubs]
        while True:
            elapsed = (monotonic_ns() - t0) / 1e9 * per_pub
            for pub, phase in zip(pubs, phases, strict=True):
                due = int(elapsed + phase) - pub.seq
                if due > 0:
                    pub.credit = due
                    if not pub.scheduled:
                        pub.pump()
            await asyncio.sleep(0.001)

    def common_result(self) -> dict[str, Any]:
        return {"errors": self.meter.errors, "error_kinds": self.meter.error_kinds}


def topic_for_sub(opts: Options, index: int) -> str:
    return f"bench/{index}" if opts.pattern == "pairwise" else "bench/shared"


def topic_for_pub(opts: Options, index: int) -> str:
    return f"bench/{index}" if opts.pattern == "pairwise" else "bench/shared"


def setup_publisher(opts: Options, pub: Client, index: int) -> None:
    head, tail, pad = wire.publish_template(
        topic_for_pub(opts, index), opts.qos, opts.size, opts.protocol
    )
    pub.pid = index
    pub.pad = pad
    pub.batch = opts.batch
    pub.credit = 0 if opts.rate > 0 else -1
    pub.fan = 1 if opts.pattern == "pairwise" else opts.subs
    pub.e2e = opts.window
    pub.min_chunk = max(1, min(opts.batch, opts.window // 4))
    if opts.qos:
        # The packet id goes between head and tail; the v5 property length is a zero byte.
        pub.head = head
        fmt = ">HxQII" if tail else ">HQII"
        pub.stamp = struct.Struct(fmt).pack
        pub.window = max(1, min(opts.inflight, pub.receive_maximum))
    else:
        pub.head = head + tail
        pub.stamp = wire.STAMP.pack
        pub.window = 0


def _child_entry(opts: Options, index: int, pipe: Any, progress: Any, delivered: Any) -> None:
    try:
        if opts.cpus:
            os.sched_setaffinity(0, {opts.cpus[index % len(opts.cpus)]})
        raise_nofile_limit()
        # The generator makes few reference cycles; a collector walking 50,000 clients'
        # objects every few thousand allocations costs more than the garbage it could find.
        gc.disable()
        import uvloop

        async def main() -> None:
            await Generator(opts, index, pipe, progress, delivered).run()

        uvloop.run(main())
    except BaseException as exc:  # report anything, including KeyboardInterrupt, to the parent
        text = str(exc) if isinstance(exc, LoadError) else traceback.format_exc()
        try:
            pipe.send(("error", text))
        except OSError:
            pass
        raise SystemExit(1) from None


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class BrokerProbe:
    """CPU seconds and resident memory of the broker process and all its children."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid) if pid else None

    def _processes(self) -> list[Any]:
        if self.root is None:
            return []
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float | None:
        if self.root is None:
            return None
        total = 0.0
        for proc in self._processes():
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except self.psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int | None:
        if self.root is None:
            return None
        total = 0
        for proc in self._processes():
            try:
                total += proc.memory_info().rss
            except self.psutil.NoSuchProcess:
                pass
        return total


class Run:
    """The parent: forks the generator processes, keeps time, merges results."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.ctx = multiprocessing.get_context("fork")
        self.progress = self.ctx.Array("q", opts.procs * P_WIDTH, lock=False)
        self.delivered = self.ctx.RawArray("q", opts.procs * max(1, opts.pubs))
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        self.probe = BrokerProbe(opts.broker_pid)
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.show_progress = not opts.quiet
        self.progress_len = 0
        self.last_counts = (0, 0, time.monotonic())
        self.machine0: list[Any] = []
        self.machine1: list[Any] = []

    def start(self) -> None:
        for index in range(self.opts.procs):
            parent_end, child_end = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=_child_entry,
                args=(self.opts, index, child_end, self.progress, self.delivered),
                name=f"bench-load-{index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(timeout=5.0)  # children close their clients after reporting
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=1.0)
        self.clear_progress()

    def broadcast(self, kind: str, payload: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send((kind, payload))

    def collect(self, kind: str, timeout: float) -> list[Any]:
        """Wait for message ``kind`` from every process; a child's error aborts the run."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.pipes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"timed out waiting for '{kind}' from generator processes")
            waiting = [p for i, p in enumerate(self.pipes) if i not in got]
            for pipe in multiprocessing.connection.wait(waiting, timeout=min(0.5, remaining)):
                index = self.pipes.index(pipe)
                try:
                    msg_kind, payload = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"generator process {index} exited") from None
                if msg_kind == "error":
                    raise RuntimeError(f"generator process {index}: {payload}")
                if msg_kind != kind:
                    raise RuntimeError(f"expected '{kind}' from process {index}, got {msg_kind}")
                got[index] = payload
            self.print_progress()
        return [got[i] for i in range(len(self.pipes))]

    def wait_until(self, deadline_ns: int) -> None:
        """Sleep until an absolute monotonic time, updating progress and watching children."""
        while True:
            remaining = (deadline_ns - monotonic_ns()) / 1e9
            if remaining <= 0:
                return
            ready = multiprocessing.connection.wait(self.pipes, timeout=min(0.25, remaining))
            for pipe in ready:
                try:
                    kind, payload = pipe.recv()
                except EOFError:
                    raise RuntimeError("a generator process exited early") from None
                raise RuntimeError(f"unexpected '{kind}' from a generator process: {payload}")
            self.print_progress()

    def counts(self) -> list[int]:
        totals = [0] * P_WIDTH
        for index in range(self.opts.procs):
            for col in range(P_WIDTH):
                totals[col] += self.progress[index * P_WIDTH + col]
        return totals

    def print_progress(self) -> None:
        now = time.monotonic()
        if not self.show_progress or now - self.last_progress < 0.5:
            return
        if now - self.started < 2.0:
            return
        tty = sys.stderr.isatty()
        if not tty and now - self.last_progress < 5.0:
            return
        connected, sent, recv, errors = self.counts()
        last_sent, last_recv, last_t = self.last_counts
        dt = max(1e-6, now - last_t)
        line = (
            f"[{self.opts.mode} {now - self.started:5.1f}s] open={connected} sent={sent} "
            f"({(sent - last_sent) / dt:,.0f}/s) recv={recv} ({(recv - last_recv) / dt:,.0f}/s)"
            f" errors={errors}"
        )
        self.last_counts = (sent, recv, now)
        self.last_progress = now
        if tty:
            sys.stderr.write("\r" + line.ljust(self.progress_len))
            self.progress_len = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def clear_progress(self) -> None:
        if self.progress_len and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * self.progress_len + "\r")
            sys.stderr.flush()
            self.progress_len = 0

    @staticmethod
    def own_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def cpu_report(
        self, gen_cpu_s: float, broker_cpu_s: float | None, wall: float, ops: int
    ) -> dict:
        """CPU over the measured window: cores used, and CPU microseconds per
        operation (``ops``: the connections, SUBACKs or deliveries of that
        window). The broker's per-operation cost does not depend on how fast
        the generator is, so it compares brokers even where the generator
        bounds the rate."""
        available = len(self.opts.cpus) if self.opts.cpus else len(os.sched_getaffinity(0))
        cores = gen_cpu_s / wall if wall > 0 else 0.0
        report: dict[str, Any] = {
            "generator_cpu": {
                "cores": round(cores, 3),
                "available": available,
                "share": round(cores / available, 3),
                "us_per_op": round(gen_cpu_s * 1e6 / ops, 2) if ops else None,
            }
        }
        if broker_cpu_s is not None:
            report["broker_cpu"] = {
                "cores": round(broker_cpu_s / wall, 3) if wall else 0.0,
                "us_per_op": round(broker_cpu_s * 1e6 / ops, 2) if ops else None,
            }
        # Busy share of every CPU of the machine over the same window: anything else running
        # (a busy CPU that neither the broker nor the generator accounts for) shows up here.
        report["machine_cpu_busy"] = [
            round(busy_share(a, b), 3) for a, b in zip(self.machine0, self.machine1, strict=True)
        ]
        return report

    # -- modes -------------------------------------------------------------------------------

    def run_conn(self) -> dict[str, Any]:
        opts = self.opts
        self.collect("ready", 30)
        rss0 = self.probe.rss()
        t0 = monotonic_ns() + 100_000_000
        self.broadcast("go", t0)
        self.wait_until(t0)
        bcpu0, own0 = self.probe.cpu_seconds(), self.own_cpu()
        snap0 = monotonic_ns()
        self.machine0 = machine_cpu_times()
        timeout = opts.count / max(1, opts.procs) / max(opts.rate / opts.procs, 1) + 60
        connected = self.collect("connected", timeout if opts.rate else 600)
        bcpu1, own1 = self.probe.cpu_seconds(), self.own_cpu()
        snapped = (monotonic_ns() - snap0) / 1e9
        self.machine1 = machine_cpu_times()
        total = sum(c["connected"] for c in connected)
        firsts = [c["first_ns"] for c in connected]
        lasts = [c["last_ns"] for c in connected if c["connected"]]
        span = (max(lasts) - min(firsts)) / 1e9 if lasts else 0.0
        rss_connected = self.probe.rss()
        self.wait_until(monotonic_ns() + int(opts.hold * 1e9))
        rss_held = self.probe.rss()
        self.broadcast("release")
        results = self.collect("result", 60)
        held = sum(r["held"] for r in results)
        out: dict[str, Any] = {
            "mode": "conn",
            "requested": opts.count,
            "connected": total,
            "held": held,
            "all_held": held == opts.count,
            "seconds": round(span, 4),
            "conn_per_s": round(total / span, 1) if span > 0 else 0.0,
            "hold_s": opts.hold,
        }
        if rss_held is not None and rss0 is not None:
            out["broker_rss_bytes"] = {"before": rss0, "connected": rss_connected, "held": rss_held}
            out["broker_bytes_per_conn"] = round((rss_held - rss0) / held, 1) if held else None
        gen = sum(c["cpu_s"] for c in connected) + (own1 - own0)
        bcpu = bcpu1 - bcpu0 if bcpu0 is not None and bcpu1 is not None else None
        # CPU over the parent's own interval between the two samples (from the start signal to
        # the last process reporting): broker and generator are measured over the same time.
        out.update(self.cpu_report(gen, bcpu, snapped, total))
        out.update(self.errors(results))
        return out

    def run_sub(self) -> dict[str, Any]:
        opts = self.opts
        ready = self.collect("ready", 600)
        t0 = monotonic_ns() + 100_000_000
        self.broadcast("go", t0)
        self.wait_until(t0)
        bcpu0, own0 = self.probe.cpu_seconds(), self.own_cpu()
        snap0 = monotonic_ns()
        self.machine0 = machine_cpu_times()
        results = self.collect("result", 120)
        bcpu1, own1 = self.probe.cpu_seconds(), self.own_cpu()
        snapped = (monotonic_ns() - snap0) / 1e9
        self.machine1 = machine_cpu_times()
        subacks = sum(r["subacks"] for r in results)
        span = (max(r["last_ns"] for r in results) - min(r["first_ns"] for r in results)) / 1e9
        out: dict[str, Any] = {
            "mode": "sub",
            "clients": opts.count,
            "connected": sum(r["connected"] for r in ready),
            "topics_per_client": opts.topics,
            "qos": opts.qos,
            "subscriptions": subacks,
            "refused": sum(r["sub_failed"] for r in results),
            "seconds": round(span, 4),
            "subs_per_s": round(subacks / span, 1) if span > 0 else 0.0,
        }
        gen = sum(r["cpu_s"] for r in results) + (own1 - own0)
        bcpu = bcpu1 - bcpu0 if bcpu0 is not None and bcpu1 is not None else None
        out.update(self.cpu_report(gen, bcpu, snapped, subacks))
        out.update(self.errors(results))
        return out

    def run_pubsub(self) -> dict[str, Any]:
        opts = self.opts
        self.collect("ready", 600)
        t0 = monotonic_ns() + 200_000_000
        ws = t0 + int(opts.warmup * 1e9)
        we = ws + int(opts.duration * 1e9)
        self.broadcast("go", t0)
        self.wait_until(ws)
        bcpu0, own0 = self.probe.cpu_seconds(), self.own_cpu()
        snap0 = monotonic_ns()
        self.machine0 = machine_cpu_times()
        self.wait_until(we)
        bcpu1, own1 = self.probe.cpu_seconds(), self.own_cpu()
        snapped = (monotonic_ns() - snap0) / 1e9
        self.machine1 = machine_cpu_times()
        rss = self.probe.rss()
        results = self.collect("result", opts.drain + 60)
        sent: dict[int, int] = {}
        streams: dict[int, dict[int, int]] = {}
        lat = array("q")
        for r in results:
            sent.update(r["sent"])
            streams.update(r["streams"])
            chunk = array("q")
            chunk.frombytes(r["lat"])
            lat.extend(chunk)
        if opts.pattern == "pairwise":
            pairs = [(i, i) for i in range(opts.pubs)]
        else:
            pairs = [(s, p) for s in range(opts.subs) for p in range(opts.pubs)]
        wanted = {pair for pair in pairs}
        lost = 0
        for s, p in pairs:
            lost += max(0, sent.get(p, 0) - streams.get(s, {}).get(p, 0))
        stray = sum(n for s, got in streams.items() for p, n in got.items() if (s, p) not in wanted)
        published = sum(sent.values())
        window = opts.duration
        out: dict[str, Any] = {
            "mode": "pubsub",
            "pattern": opts.pattern,
            "protocol": opts.protocol,
            "qos": opts.qos,
            "pubs": opts.pubs,
            "subs": opts.subs,
            "size": opts.size,
            "rate": opts.rate,
            "duration": opts.duration,
            "warmup": opts.warmup,
            "inflight_window": min(r["window"][0] for r in results) if opts.qos else None,
            "e2e_window": opts.window,
            "published": published,
            "expected": sum(sent.get(p, 0) for _, p in pairs),
            "delivered": sum(r["recv"] for r in results),
            "lost": lost,
            "dup": sum(r["dup"] for r in results),
            "stray": stray,
            "pub_per_s": round(sum(r["win_sent"] for r in results) / window, 1),
            "delivered_per_s": round(sum(r["win_recv"] for r in results) / window, 1),
            "latency_us": percentiles(lat),
            "latency_truncated": any(r["lat_dropped"] for r in results),
        }
        if rss is not None:
            out["broker_rss_bytes"] = rss
        gen = sum(r["cpu_s"] for r in results) + (own1 - own0)
        bcpu = bcpu1 - bcpu0 if bcpu0 is not None and bcpu1 is not None else None
        out.update(self.cpu_report(gen, bcpu, snapped, sum(r["win_recv"] for r in results)))
        out.update(self.errors(results))
        return out

    @staticmethod
    def errors(results: list[dict[str, Any]]) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for r in results:
            for kind, n in r["error_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + n
        return {"errors": sum(r["errors"] for r in results), "error_kinds": kinds}


def machine_cpu_times() -> list[Any]:
    import psutil

    return psutil.cpu_times(percpu=True)


def busy_share(before: Any, after: Any) -> float:
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (
        before.idle + getattr(before, "iowait", 0.0)
    )
    return (total - idle) / total if total > 0 else 0.0


def percentiles(samples: array) -> dict[str, float | int | None]:
    if not samples:
        return {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(samples)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1000, 1)

    return {
        "count": n,
        "p50": at(0.50),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": round(ordered[-1] / 1000, 1),
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and processes")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=1883)
    g.add_argument(
        "--sub-port",
        type=int,
        default=0,
        help="subscribers connect to this port (another cluster node); default --port",
    )
    g.add_argument("--protocol", type=int, choices=(5, 4), default=5, help="MQTT 5.0 or 3.1.1")
    g.add_argument(
        "--transport",
        choices=("tcp", "ws"),
        default="tcp",
        help="plain MQTT over TCP, or MQTT over WebSocket (masked binary frames)",
    )
    g.add_argument("--ws-path", default="/mqtt", help="WebSocket request path (default /mqtt)")
    g.add_argument("--procs", type=int, default=0, help="generator processes (default: CPUs)")
    g.add_argument("--cpus", type=_int_list, default=[], help="pin processes, e.g. 1 or 2,3")
    g.add_argument(
        "--source-addrs",
        type=_str_list,
        default=[],
        help="bind clients round-robin to these loopback addresses, e.g. 127.0.0.2,127.0.0.3",
    )
    g.add_argument("--broker-pid", type=int, default=0, help="sample this broker's CPU and RSS")
    g.add_argument("--keepalive", type=int, default=60)
    g.add_argument("--username", default=None, help="CONNECT user name (default: none)")
    g.add_argument("--password", default=None, help="CONNECT password (default: none)")
    g.add_argument("--connect-timeout", type=float, default=10.0)
    g.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="connects in progress, total over all processes; a burst beyond the broker's "
        "listen backlog costs a 1 s SYN retransmit and measures that instead (default 64)",
    )
    g.add_argument("--max-failures", type=int, default=100, help="stop connecting after these")
    g.add_argument("--quiet", action="store_true", help="no progress line")

    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    modes = parser.add_subparsers(dest="mode", required=True)

    conn = modes.add_parser("conn", parents=[common], help="open and hold N connections")
    conn.add_argument("-n", "--count", type=int, default=1000)
    conn.add_argument("--rate", type=float, default=0.0, help="connections/s (0 = full speed)")
    conn.add_argument("--hold", type=float, default=2.0, help="seconds to hold the connections")

    sub = modes.add_parser("sub", parents=[common], help="N clients subscribe")
    sub.add_argument("-n", "--count", type=int, default=1000)
    sub.add_argument("--topics", type=int, default=1, help="subscriptions per client")
    sub.add_argument("--topic", default="bench/sub/%i/%k", help="%%i client, %%k topic number")
    sub.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)

    ps = modes.add_parser("pubsub", parents=[common], help="publishers and subscribers")
    ps.add_argument("--pubs", type=int, default=0, help="publishers (default per pattern)")
    ps.add_argument("--subs", type=int, default=0, help="subscribers (default per pattern)")
    ps.add_argument("--pattern", choices=("pairwise", "fanin", "fanout"), default="pairwise")
    ps.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    ps.add_argument("--size", type=int, default=64, help="payload bytes (>= 16)")
    ps.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ps.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    ps.add_argument("--rate", type=float, default=0.0, help="total msgs/s (0 = saturate)")
    ps.add_argument("--inflight", type=int, default=64, help="QoS>0 window per publisher")
    ps.add_argument(
        "--window",
        type=int,
        default=64,
        help="messages per publisher sent but not yet received by all its subscribers "
        "(closed loop, so saturation measures throughput, not queue growth; 0 = open loop)",
    )
    ps.add_argument("--batch", type=int, default=32, help="messages per write when saturating")
    ps.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        help="subscribers keep persistent sessions (Clean Start 0, this expiry in s)",
    )
    ps.add_argument("--drain", type=float, default=3.0, help="max seconds to drain at the end")
    return parser


def options_from_args(argv: list[str] | None = None) -> Options:
    ns = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if k in Options.__dataclass_fields__}
    opts = Options(**values)
    if not opts.procs:
        opts.procs = len(opts.cpus) if opts.cpus else len(os.sched_getaffinity(0))
    if opts.mode == "pubsub":
        defaults = {"pairwise": (10, 10), "fanin": (10, 1), "fanout": (1, 10)}[opts.pattern]
        opts.pubs = opts.pubs or defaults[0]
        opts.subs = opts.subs or defaults[1]
        if opts.pattern == "pairwise" and opts.pubs != opts.subs:
            raise SystemExit("pairwise needs as many publishers as subscribers")
        if opts.size < wire.STAMP_SIZE:
            raise SystemExit(f"--size must be at least {wire.STAMP_SIZE}")
        # Never more processes than clients of the scarcer kind would leave idle processes.
        opts.procs = max(1, min(opts.procs, max(opts.pubs, opts.subs)))
    else:
        opts.procs = max(1, min(opts.procs, opts.count))
    per_proc = -(-_clients(opts) // opts.procs)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if per_proc > limit - 64:
        raise SystemExit(
            f"{per_proc} connections per process exceed the open-file limit {limit}; "
            f"use --procs {-(-_clients(opts) // (limit - 64))} or more"
        )
    if _clients(opts) > 28000 and len(opts.source_addrs) < 2:
        print(
            "warning: more than 28,000 connections from one source address will run out of "
            "ephemeral ports; pass --source-addrs 127.0.0.2,127.0.0.3,...",
            file=sys.stderr,
        )
    opts.prefix = f"lg{uuid.uuid4().hex[:6]}-"
    return opts


def _clients(opts: Options) -> int:
    return opts.pubs + opts.subs if opts.mode == "pubsub" else opts.count


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(argv)
    run = Run(opts)
    run.start()
    wall0 = time.monotonic()
    try:
        result = getattr(run, f"run_{opts.mode}")()
    except RuntimeError as exc:
        run.clear_progress()
        print(f"bench.load: {exc}", file=sys.stderr)
        for proc in run.procs:
            if proc.is_alive():
                proc.terminate()
        return 1
    finally:
        run.stop()
    result["procs"] = opts.procs
    result["wall_s"] = round(time.monotonic() - wall0, 2)
    result["options"] = {
        k: v for k, v in asdict(opts).items() if k not in ("prefix", "mode") and v not in ([], "")
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

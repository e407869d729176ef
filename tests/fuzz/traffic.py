"""Hostile traffic for the live fuzz: many connections sending random and damaged MQTT.

    python -m tests.fuzz.traffic --port 1884 --seconds 20 --connections 50 --seed 1

runs ``--connections`` concurrent loops until ``--seconds`` have passed; each
loop opens a connection, plays one scenario on it, closes it (FIN or RST)
and starts over. The scenarios, in both protocol versions: random bytes; a
CONNECT then well-formed, damaged and hand-framed packets (random property
blocks, server-only packets) cut into random pieces; a damaged CONNECT;
well-formed packets then garbage; a remaining length the body never
reaches; a CONNECT sent a byte at a time; a connection that sends a few
bytes or nothing; a subscriber to everything that reads what other
connections publish. Client ids, topics and filters come from small sets
(``samples.py``), so sessions collide and take each other over.

Everything the broker sends on a connection that began with a well-formed
CONNECT is decoded with the client-side decoder: bytes that do not decode
are a broker bug, reported in ``findings``. Opening a connection must not
take more than ``CONNECT_TIMEOUT``; failures are counted in
``connect_failed``. The last line of stdout is a JSON object of counters
and findings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from shardmq.errors import MQTTError
from shardmq.protocol.codec import Decoder, encode, encode_varint
from shardmq.protocol.constants import MQTT5
from shardmq.protocol.packets import Subscribe, Subscription

from .samples import FILTERS, VERSIONS, Sampler, mutate

CONNECT_TIMEOUT = 10.0
#: Longest a scenario may take before it is abandoned (and counted).
SCENARIO_TIMEOUT = 20.0
#: The broker's limit (the default max_packet_size), for lengths just under and over it.
MAX_PACKET_SIZE = 16 * 1024 * 1024


class Connection:
    """One client connection: send bytes, read what comes back, check it decodes."""

    def __init__(self, traffic: Traffic, scenario: str, version: int | None) -> None:
        self.traffic = traffic
        self.scenario = scenario
        #: Set when the connection starts with a well-formed CONNECT of this version.
        self.decoder = Decoder(server=False, version=version) if version else None
        self.sent = bytearray()
        self.received = bytearray()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.closed_by_broker = False

    async def open(self) -> bool:
        stats = self.traffic.stats
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.traffic.port), CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            stats["connect_failed"] += 1
            self.traffic.note_connect_failure(exc)
            return False
        stats["connections"] += 1
        stats[f"scenario_{self.scenario}"] += 1
        return True

    async def send(self, data: bytes, drain: bool = True) -> bool:
        """Send ``data``; False once the broker has closed the connection."""
        assert self.writer is not None
        if self.closed_by_broker or self.writer.is_closing():
            return False
        self.sent += data[:65536] if len(self.sent) < 65536 else b""
        self.traffic.stats["bytes_sent"] += len(data)
        try:
            self.writer.write(data)
            if drain:
                await self.writer.drain()
        except (ConnectionError, OSError):
            self.closed_by_broker = True
            return False
        return True

    async def read(self, seconds: float) -> None:
        """Read for up to ``seconds`` or until the broker closes the connection."""
        assert self.reader is not None
        deadline = time.monotonic() + seconds
        while not self.closed_by_broker:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            except (ConnectionError, OSError):
                self.closed_by_broker = True
                return
            if not data:
                self.closed_by_broker = True
                self.traffic.stats["closed_by_broker"] += 1
                return
            self.traffic.stats["bytes_received"] += len(data)
            self.check(data)

    def check(self, data: bytes) -> None:
        if len(self.received) < 65536:
            self.received += data
        if self.decoder is None:
            return
        try:
            self.traffic.stats["packets_received"] += len(self.decoder.feed(data))
        except MQTTError as exc:
            self.decoder = None
            self.traffic.finding(
                f"broker sent bytes that do not decode: {exc!r}",
                scenario=self.scenario,
                sent=bytes(self.sent),
                received=bytes(self.received),
            )

    def close(self, rst: bool = False) -> None:
        writer = self.writer
        if writer is None:
            return
        if rst:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            writer.transport.abort()
        else:
            writer.close()


def _cut(rng: random.Random, data: bytes, pieces: int) -> list[bytes]:
    if len(data) < 2 or pieces < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class Traffic:
    """The scenarios, the loops that play them and what they saw."""

    def __init__(self, port: int, seconds: float, connections: int, seed: int) -> None:
        self.port = port
        self.seconds = seconds
        self.connections = connections
        self.seed = seed
        self.stats: Counter[str] = Counter()
        self.findings: list[dict[str, Any]] = []
        self.connect_errors: Counter[str] = Counter()

    def finding(self, what: str, scenario: str, sent: bytes, received: bytes) -> None:
        self.stats["findings"] += 1
        if len(self.findings) < 20:
            self.findings.append(
                {
                    "what": what,
                    "scenario": scenario,
                    "sent": sent[:4096].hex(),
                    "received": received[:4096].hex(),
                }
            )

    def note_connect_failure(self, exc: BaseException) -> None:
        self.connect_errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1

    # -- scenarios: each plays one connection --------------------------------------

    async def noise(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """Random bytes, sometimes behind a first byte that says CONNECT."""
        conn = Connection(self, "noise", None)
        if not await conn.open():
            return
        data = rng.randbytes(rng.randrange(1, 2048))
        if rng.random() < 0.5:
            data = b"\x10" + encode_varint(len(data)) + data
        for piece in _cut(rng, data, rng.randrange(1, 4)):
            if not await conn.send(piece):
                break
        await conn.read(rng.uniform(0.0, 0.2))
        conn.close(rst=rng.random() < 0.3)

    async def session(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """A CONNECT, then a mix of well-formed, damaged and hand-framed packets."""
        conn = Connection(self, "session", version)
        if not await conn.open():
            return
        packets = [encode(sampler.connect(version), version)]
        for _ in range(rng.randrange(0, 16)):
            r = rng.random()
            if r < 0.65:
                packets.append(sampler.client_packet(version))
            elif r < 0.85:
                packets.append(mutate(rng, sampler.client_packet(version)))
            elif r < 0.95 and version == MQTT5:
                packets.append(sampler.raw_v5_packet())
            elif r < 0.98:
                packets.append(encode(sampler.server_packet(version), version))
            else:
                packets.append(encode(sampler.disconnect(version), version))
                break
        await self._play(rng, conn, packets)

    async def damaged_connect(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """A damaged CONNECT, then a few well-formed packets."""
        conn = Connection(self, "damaged_connect", None)
        if not await conn.open():
            return
        packets = [mutate(rng, encode(sampler.connect(version), version))]
        packets += [sampler.client_packet(version) for _ in range(rng.randrange(0, 4))]
        await self._play(rng, conn, packets)

    async def garbage_after(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """A CONNECT and well-formed packets, then random bytes."""
        conn = Connection(self, "garbage_after", version)
        if not await conn.open():
            return
        packets = [encode(sampler.connect(version), version)]
        packets += [sampler.client_packet(version) for _ in range(rng.randrange(0, 6))]
        packets.append(rng.randbytes(rng.randrange(1, 512)))
        await self._play(rng, conn, packets)

    async def huge(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """A CONNECT, then a fixed header whose remaining length the body never reaches."""
        conn = Connection(self, "huge", version)
        if not await conn.open():
            return
        if not await conn.send(encode(sampler.connect(version), version)):
            return
        await conn.read(0.05)
        first = rng.choice((0x30, 0x32, 0x34, 0x82, 0xA2, 0x62, 0x10, 0xE0, rng.randrange(256)))
        length = rng.choice(
            (
                rng.randrange(1024, 65536),
                rng.randrange(65536, 1024 * 1024),
                MAX_PACKET_SIZE - 5,
                MAX_PACKET_SIZE + 1,
                268435455,
            )
        )
        body_size = min(length, rng.choice((0, 10, 1000, 65536)))
        await conn.send(bytes((first,)) + encode_varint(length) + rng.randbytes(body_size))
        await conn.read(rng.uniform(0.0, 0.3))
        conn.close(rst=rng.random() < 0.5)

    async def dribble(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """A CONNECT and a packet a byte at a time, maybe stopping part-way."""
        conn = Connection(self, "dribble", version)
        if not await conn.open():
            return
        data = encode(sampler.connect(version), version) + sampler.client_packet(version)
        data = data[:200]
        if rng.random() < 0.5:
            data = data[: rng.randrange(1, len(data) + 1)]
        for i in range(len(data)):
            if not await conn.send(data[i : i + 1]):
                break
            await asyncio.sleep(0.001)
        await conn.read(rng.uniform(0.0, 0.2))
        conn.close(rst=rng.random() < 0.3)

    async def idle(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """Nothing at all, or the first bytes of a fixed header, then a close."""
        conn = Connection(self, "idle", None)
        if not await conn.open():
            return
        if rng.random() < 0.7:
            await conn.send(rng.choice((b"\x10", b"\x10\xff", b"\x30\x80\x80", b"\x00")))
        await conn.read(rng.uniform(0.0, 0.3))
        conn.close(rst=rng.random() < 0.5)

    async def subscriber(self, rng: random.Random, sampler: Sampler, version: int) -> None:
        """Subscribe to what the other connections publish and read it for a while."""
        conn = Connection(self, "subscriber", version)
        if not await conn.open():
            return
        subs = [Subscription(rng.choice(FILTERS), rng.randrange(3)) for _ in range(2)]
        packets = [
            encode(sampler.connect(version), version),
            encode(Subscribe(sampler.packet_id(), subs), version),
        ]
        await conn.send(b"".join(packets))
        await conn.read(rng.uniform(0.2, 1.0))
        conn.close(rst=rng.random() < 0.3)

    async def _play(self, rng: random.Random, conn: Connection, packets: list[bytes]) -> None:
        """Send ``packets`` cut into random pieces, read the answers, close."""
        data = b"".join(packets)
        for piece in _cut(rng, data, rng.randrange(1, 5)):
            if not await conn.send(piece):
                break
            if rng.random() < 0.3:
                await conn.read(rng.uniform(0.0, 0.02))
        await conn.read(rng.uniform(0.05, 0.3))
        conn.close(rst=rng.random() < 0.3)

    # -- running -------------------------------------------------------------------

    async def _loop(self, k: int, deadline: float) -> None:
        rng = random.Random(self.seed * 100003 + k)
        sampler = Sampler(rng)
        scenarios: list[Callable[[random.Random, Sampler, int], Awaitable[None]]] = [
            self.session,
            self.damaged_connect,
            self.garbage_after,
            self.noise,
            self.huge,
            self.dribble,
            self.idle,
            self.subscriber,
        ]
        weights = (35, 12, 10, 10, 6, 5, 4, 8)
        while time.monotonic() < deadline:
            scenario = rng.choices(scenarios, weights)[0]
            try:
                await asyncio.wait_for(
                    scenario(rng, sampler, rng.choice(VERSIONS)), SCENARIO_TIMEOUT
                )
            except TimeoutError:
                self.stats["scenario_timeouts"] += 1

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.seconds
        await asyncio.gather(*(self._loop(k, deadline) for k in range(self.connections)))
        return {
            "seconds": round(time.monotonic() - started, 1),
            "stats": dict(sorted(self.stats.items())),
            "connect_errors": dict(self.connect_errors),
            "findings": self.findings,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import uvloop

    traffic = Traffic(args.port, args.seconds, args.connections, args.seed)
    result = uvloop.run(traffic.run())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

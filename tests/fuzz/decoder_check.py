"""What the decoder fuzzer checks for each input; importable without atheris.

An input is three control bytes and a byte stream::

    mode (1 byte) | split (2 bytes, big endian) | stream

``mode`` picks the decoder and how the stream is fed:

* bits 0-1, the start: 0 the stream as it is (a server decoder needs it to
  begin with a CONNECT; a client decoder starts at v5), 1 a v5 CONNECT before
  it, 2 a 3.1.1 CONNECT before it, 3 a decoder created with a version (a
  connection handed over mid-stream): v5, or 3.1.1 when bit 2 is set;
* bit 3: a 128-byte packet size limit instead of the largest there is;
* bit 4: the client side (``server=False``) instead of the broker's;
* bits 5-6, the pieces the stream is fed in: 0 two pieces cut at ``split``,
  1 one byte at a time, 2 pieces of ``split % 64 + 1`` bytes, 3 three pieces
  cut at ``split`` and ``split // 2``.

``check`` decodes the stream fed whole and fed in pieces. It fails (raises)
when the decoder raises anything but an ``MQTTError`` with an error reason
code, when the two feedings disagree (other packets, another error, another
version), or when a decoded packet does not survive ``encode`` and a second
decode unchanged.
"""

from __future__ import annotations

from shardmq.errors import MQTTError
from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.constants import MAX_PACKET_SIZE_LIMIT, MQTT5, MQTT311
from shardmq.protocol.packets import Connack, Connect, Packet

from .samples import VERSIONS, Sampler

CONNECT5 = encode(Connect(client_id="fuzz", protocol_version=MQTT5), MQTT5)
CONNECT4 = encode(Connect(client_id="fuzz", protocol_version=MQTT311), MQTT311)

START_RAW, START_V5, START_V4, START_HANDED_OVER = range(4)
HANDED_OVER_V4 = 0x04
SMALL_LIMIT = 0x08
CLIENT = 0x10
FEED_TWO, FEED_BYTES, FEED_CHUNKS, FEED_THREE = (0x00, 0x20, 0x40, 0x60)


def make_input(stream: bytes, mode: int = START_RAW, split: int = 0) -> bytes:
    """An input for ``check``: the control bytes, then ``stream``."""
    return bytes((mode,)) + split.to_bytes(2, "big") + stream


class Outcome:
    """What one feeding produced: packets, the error (class, code), the version."""

    __slots__ = ("packets", "error", "version")

    def __init__(self, packets: list[Packet], error: tuple[type, int] | None, version: int):
        self.packets = packets
        self.error = error
        self.version = version

    def __repr__(self) -> str:
        return f"Outcome({self.packets!r}, error={self.error!r}, version={self.version})"


def _decoder(mode: int) -> Decoder:
    limit = 128 if mode & SMALL_LIMIT else MAX_PACKET_SIZE_LIMIT
    server = not mode & CLIENT
    version = 0
    if mode & 3 == START_HANDED_OVER:
        version = MQTT311 if mode & HANDED_OVER_V4 else MQTT5
    elif not server and mode & 3 == START_RAW:
        version = MQTT5
    return Decoder(max_packet_size=limit, server=server, version=version)


def _feed(mode: int, chunks: list[bytes]) -> Outcome:
    decoder = _decoder(mode)
    packets: list[Packet] = []
    error = None
    for chunk in chunks:
        try:
            packets += decoder.feed(chunk)
        except MQTTError as exc:
            # an error must carry an error code (0x80 and up), never success
            assert exc.reason_code >= 0x80, f"{exc!r} carries reason code {exc.reason_code:#x}"
            error = (type(exc), exc.reason_code)
            break
    return Outcome(packets, error, decoder.version)


def _pieces(mode: int, split: int, stream: bytes) -> list[bytes]:
    feed = mode & 0x60
    if feed == FEED_BYTES:
        return [stream[i : i + 1] for i in range(len(stream))]
    if feed == FEED_CHUNKS:
        size = split % 64 + 1
        return [stream[i : i + size] for i in range(0, len(stream), size)]
    cut = split % (len(stream) + 1)
    if feed == FEED_THREE:
        half = cut // 2
        return [stream[:half], stream[half:cut], stream[cut:]]
    return [stream[:cut], stream[cut:]]


def _versions(initial: int, packets: list[Packet]) -> list[int]:
    """The protocol version in force for each packet (a CONNECT sets it)."""
    out = []
    version = initial
    for packet in packets:
        if isinstance(packet, Connect):
            version = packet.protocol_version
        out.append(version)
    return out


def _round_trip(mode: int, packets: list[Packet]) -> None:
    server = not mode & CLIENT
    initial = _decoder(mode).version
    for packet, version in zip(packets, _versions(initial, packets), strict=True):
        data = encode(packet, version)
        if isinstance(packet, Connect):
            again = Decoder(server=server).feed(data)
        else:
            again = Decoder(server=server, version=version).feed(data)
        expected = packet
        if isinstance(packet, Connack) and packet.reason_code:
            # The encoder clears Session Present on a refusal [MQTT-3.2.2-6];
            # the client-side decoder accepts it set.
            expected = Connack(False, packet.reason_code, packet.properties)
        assert again == [expected], f"{packet!r} encoded as {data.hex()} decodes as {again!r}"


def check(data: bytes) -> None:
    """Fail on a decoder bug in ``data`` (see the module docstring)."""
    if len(data) < 3:
        return
    mode = data[0]
    split = int.from_bytes(data[1:3], "big")
    stream = data[3:]
    start = mode & 3
    if start == START_V5:
        stream = CONNECT5 + stream
    elif start == START_V4:
        stream = CONNECT4 + stream
    whole = _feed(mode, [stream])
    pieces = _feed(mode, _pieces(mode, split, stream))
    if whole.error is None:
        assert (pieces.error, pieces.packets) == (None, whole.packets), (whole, pieces)
    else:
        # Fed whole, an error hides the packets before it in the same chunk;
        # fed in pieces, those from earlier pieces come out. The error is the same.
        assert pieces.error == whole.error, (whole, pieces)
    assert pieces.version == whole.version, (whole, pieces)
    _round_trip(mode, whole.packets)


def seed_inputs() -> dict[str, bytes]:
    """The decoder fuzzer's seed corpus: well-formed packets of every type, by name.

    Each client packet type appears after a CONNECT of both versions, fed both
    ways; each server packet type on the client side; CONNECTs alone; and
    streams of several packets, one with a damaged packet in the middle.
    """
    import random

    from .samples import mutate

    rng = random.Random(8015)
    sampler = Sampler(rng)
    seeds: dict[str, bytes] = {}
    kinds = ("publish", "ack", "subscribe", "unsubscribe", "ping", "disconnect", "auth")
    for version in VERSIONS:
        start = START_V5 if version == MQTT5 else START_V4
        tag = f"v{version}"
        for i in range(3):
            connect = encode(sampler.connect(version), version)
            seeds[f"{tag}-connect-{i}"] = make_input(connect, START_RAW | FEED_BYTES)
        for kind in kinds:
            if kind == "auth" and version != MQTT5:
                continue
            for i in range(2):
                packet = encode(getattr(sampler, kind)(version), version)
                feed = FEED_TWO if i == 0 else FEED_CHUNKS
                seeds[f"{tag}-{kind}-{i}"] = make_input(packet, start | feed, rng.randrange(64))
        for i in range(3):
            packet = encode(sampler.server_packet(version), version)
            handed = START_HANDED_OVER | (HANDED_OVER_V4 if version == MQTT311 else 0)
            seeds[f"{tag}-client-side-{i}"] = make_input(packet, handed | CLIENT)
        stream = b"".join(sampler.client_packet(version) for _ in range(6))
        seeds[f"{tag}-stream"] = make_input(stream, start | FEED_THREE, len(stream) // 2)
        damaged = sampler.client_packet(version) + mutate(rng, sampler.client_packet(version))
        seeds[f"{tag}-damaged"] = make_input(damaged, start | FEED_TWO, 5)
        seeds[f"{tag}-small-limit"] = make_input(stream, start | SMALL_LIMIT | FEED_TWO, 40)
    for i in range(4):
        seeds[f"v5-raw-properties-{i}"] = make_input(sampler.raw_v5_packet(), START_V5, 3)
    return seeds


def write_corpus(directory: str) -> int:
    """Write ``seed_inputs()`` into ``directory`` (created); returns how many."""
    import os

    os.makedirs(directory, exist_ok=True)
    seeds = seed_inputs()
    for name, data in seeds.items():
        with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
            f.write(data)
    return len(seeds)

"""Flow control: a subscriber that stops reading is cut off at the configured
bound, its dropped QoS 0 messages are counted, and other clients lose nothing."""

from __future__ import annotations

import socket
import threading
import time

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import Connect, Subscribe, Subscription
from tests.helpers import WAIT, Client


def test_slow_subscriber_is_disconnected_and_others_lose_nothing(make_broker, clients):
    bt = make_broker(max_outgoing_buffer=2 * 1024 * 1024)
    # A subscriber with a tiny receive buffer that never reads after SUBACK.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", bt.port))
    slow.settimeout(WAIT)
    slow.sendall(encode(Connect("slow", keep_alive=0), 5))
    slow.sendall(encode(Subscribe(1, [Subscription("flood/#", 0)]), 5))
    got = b""
    while len(got) < 5 + 5:  # CONNACK and SUBACK (each at least 5 bytes in v5)
        got += slow.recv(64)

    good = clients(bt.port)
    good.connect()
    good.subscribe("flood/#", qos=0)
    pub = clients(bt.port)
    pub.connect()
    payload = b"x" * 8192
    # 24 MB: more than the kernel's socket buffers can absorb, so the broker's
    # own outgoing buffer for the slow client passes the 2 MiB bound
    count = 3000
    for i in range(count):
        pub.publish(f"flood/{i % 7}", payload, qos=0)
    marker = pub.publish("flood/end", b"end", qos=1)
    assert not marker.is_failure

    received = 0
    while True:
        msg = good.get()
        if msg.topic == "flood/end":
            break
        received += 1
    # QoS 0 over TCP from one publisher to a reading subscriber: nothing lost
    assert received == count

    # Drain what the kernel still holds for the slow client: the broker has
    # closed its end, so reading ends in EOF or a reset.
    closed = False
    slow.settimeout(WAIT)
    try:
        while slow.recv(1 << 16):
            pass
        closed = True
    except ConnectionResetError:
        closed = True
    assert closed
    assert bt.call(lambda: bt.broker.stats.messages_dropped) > 0
    slow.close()


def test_paused_publisher_is_resumed(make_broker, clients):
    """A publisher throttled while a subscriber is congested keeps publishing
    once the congestion is gone (the slow client was cut off)."""
    bt = make_broker(max_outgoing_buffer=1024 * 1024)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", bt.port))
    slow.sendall(encode(Connect("slow2", keep_alive=0), 5))
    slow.sendall(encode(Subscribe(1, [Subscription("t", 0)]), 5))
    pub: Client = clients(bt.port)
    pub.connect()
    sub: Client = clients(bt.port)
    sub.connect()
    sub.subscribe("after", qos=1)
    for _ in range(2000):
        pub.publish("t", b"y" * 8192, qos=0)
    rc = pub.publish("after", b"still flowing", qos=1)
    assert not rc.is_failure
    assert sub.get().payload == b"still flowing"
    slow.close()


def test_steady_slow_reader_is_never_cut_off(make_broker, clients):
    """A subscriber that keeps reading, far more slowly than the publisher floods,
    makes progress all along: publishers wait for it and it is never cut off as a
    slow consumer, however its buffer size happens to compare between two checks.
    (Progress is what its socket drained, not whether its buffer shrank.)"""
    bt = make_broker(max_outgoing_buffer=1024 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", bt.port))
    sock.settimeout(WAIT)
    sock.sendall(encode(Connect("steady", keep_alive=0), 5))
    sock.sendall(encode(Subscribe(1, [Subscription("steady/#", 0)]), 5))
    decoder = Decoder(server=False, version=5)
    got: list[object] = []
    while len(got) < 2:  # CONNACK, SUBACK
        got.extend(decoder.feed(sock.recv(64)))
    count = 1000
    received = []
    closed = threading.Event()

    def read_slowly() -> None:
        # 16 KiB every 10 ms: about 1.6 MB/s, a small fraction of the flood rate
        try:
            while len(received) < count + 1:
                data = sock.recv(16384)
                if not data:
                    break
                received.extend(p for p in decoder.feed(data))
                time.sleep(0.01)
        except OSError:
            pass
        closed.set()

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    pub = clients(bt.port)
    pub.connect()
    for i in range(count):
        pub.publish(f"steady/{i % 5}", b"s" * 8192, qos=0)
    pub.publish("steady/end", b"end", qos=0)
    closed.wait(60)
    reader.join(1)
    sock.close()
    assert len(received) == count + 1, f"cut off after {len(received)} of {count + 1}"
    assert bt.call(lambda: bt.broker.stats.messages_dropped) == 0

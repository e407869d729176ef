"""One broker however many workers: races a multi-worker broker must win.

Each test runs against ``shardmq serve --workers 1`` and ``--workers 4`` (a
real subprocess, see ``test_workers.Cluster``) and must give the same answer:
a takeover storm ends with exactly one connection, a QoS 2 stream stays
exactly-once while its publisher and subscriber are reset and resume on other
workers, and a request sent right after its reply subscription, without
waiting for SUBACK, gets its reply.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Subscribe,
    Subscription,
)
from tests.cluster.test_workers import Cluster
from tests.helpers import WAIT, Client, wait_for


@pytest.fixture(params=[1, 4], ids=["workers1", "workers4"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # queues large enough that no test message is dropped while a client is away
    c = Cluster(int(request.param), ["--max-queued-messages", "100000"])
    yield c
    c.close()


# -- takeover storm ---------------------------------------------------------------


class _Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.setblocking(False)
        self.decoder = Decoder(server=False, version=5)
        self.packets: list[Any] = []
        self.closed = False

    def read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        self.packets.extend(self.decoder.feed(data))


def test_takeover_storm_ends_with_exactly_one_connection(cluster: Cluster) -> None:
    """[MQTT-3.1.4-3]: 50 concurrent CONNECTs with one client id (Clean Start 0,
    session expiry 60) end with exactly one live connection, the last one
    accepted; every other one was accepted and then taken over (DISCONNECT
    0x8E) or refused. The session survives the storm: a QoS 1 message to its
    subscription then arrives exactly once."""
    cid = "storm"
    first = cluster.client(client_id=cid, clean_start=False, session_expiry=60)
    first.connect()
    first.subscribe("storm/t", qos=1)
    first.disconnect()

    props = Properties(session_expiry_interval=60)
    conns = [_Conn(cluster.port) for _ in range(50)]
    connect = encode(Connect(cid, clean_start=False, properties=props), 5)
    for c in conns:  # as close together as one thread can send them
        c.sock.send(connect)

    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)

    def settled() -> bool:
        for key, _ in sel.select(timeout=0.05):
            conn = key.data
            conn.read()
            if conn.closed:
                sel.unregister(conn.sock)
        return sum(not c.closed for c in conns) <= 1

    wait_for(settled, timeout=30, interval=0)
    live = [c for c in conns if not c.closed]
    assert len(live) == 1, f"{len(live)} connections survived the storm"
    (survivor,) = live
    acks = [p for p in survivor.packets if isinstance(p, Connack)]
    assert len(acks) == 1 and acks[0].reason_code == 0
    assert acks[0].session_present is True
    # the others: accepted then taken over, or refused; never left hanging
    for c in conns:
        if c is survivor:
            continue
        kinds = [(type(p).__name__, p.reason_code) for p in c.packets]
        assert kinds in ([("Connack", 0), ("Disconnect", 0x8E)], [("Connack", 0)]) or (
            len(kinds) == 1 and kinds[0][0] == "Connack" and kinds[0][1] >= 0x80
        ), kinds

    pub = cluster.client()
    pub.connect()
    pub.publish("storm/t", b"once", qos=1)
    survivor.sock.setblocking(True)
    survivor.sock.settimeout(WAIT)
    got: list[Any] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            data = survivor.sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        for pkt in survivor.decoder.feed(data):
            got.append(pkt)
            if isinstance(pkt, Publish) and pkt.qos == 1:
                survivor.sock.sendall(encode(Puback(pkt.packet_id), 5))
        survivor.sock.settimeout(max(0.01, deadline - time.monotonic()))
    pubs = [p for p in got if isinstance(p, Publish)]
    assert [(p.topic, p.payload) for p in pubs] == [("storm/t", b"once")], got
    assert not any(isinstance(p, Disconnect) for p in got)
    sel.close()
    for c in conns:
        c.sock.close()


# -- QoS 2 exactly once while sessions move ------------------------------------------


def _reset_and_resume(client: Client) -> None:
    """Drop the client's TCP connection with a reset (no DISCONNECT, no FIN), then
    reconnect the same paho client (Clean Start 0), which resends what is in
    flight, as after a network failure."""
    client.paho.loop_stop()
    sock = client.paho.socket()
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    client.paho.reconnect()
    client.paho.loop_start()


@pytest.mark.parametrize("qos", [1, 2])
def test_stream_survives_resets_and_moves_between_workers(cluster: Cluster, qos: int) -> None:
    """A QoS 1/2 stream whose publisher and subscriber are reset again and again
    and resume (session present 1) wherever the kernel sends them: nothing is
    lost, and at QoS 2 nothing arrives twice [MQTT-4.3.3], on any number of
    workers. paho keeps its in-flight state across reconnects, as a compliant
    client must."""
    sub = cluster.client(client_id=f"mv-sub-{qos}", clean_start=False, session_expiry=300)
    pub = cluster.client(client_id=f"mv-pub-{qos}", clean_start=False, session_expiry=300)
    for c in (sub, pub):
        c.connect()
        cluster.worker_of(c.client_id)
    sub.subscribe("mv/t", qos=qos)
    # One thread publishes and resets (paho is not safe against a reset from
    # another thread while it publishes): a batch goes out, and while it is
    # in flight the subscriber or the publisher is reset and resumes.
    batch, rounds = 300, 10
    total = batch * rounds
    where: dict[str, set[int]] = {sub.client_id: set(), pub.client_id: set()}
    for round_ in range(rounds):
        for i in range(round_ * batch, (round_ + 1) * batch):
            pub.publish("mv/t", str(i).encode(), qos=qos, wait=False)
        time.sleep(0.02)
        victim = sub if round_ % 2 == 0 else pub
        _reset_and_resume(victim)
        where[victim.client_id].add(cluster.worker_of(victim.client_id))

    def all_acknowledged() -> bool:
        return not pub.paho._out_messages

    wait_for(all_acknowledged, timeout=30)
    assert not pub.publish("mv/t", b"end", qos=qos).is_failure
    got: list[int] = []
    while (msg := sub.get(timeout=15)).payload != b"end":
        got.append(int(msg.payload))
    if cluster.workers > 1:
        assert len(where[sub.client_id] | where[pub.client_id]) > 1, "nothing moved"
    missing = sorted(set(range(total)) - set(got))
    assert missing == [], f"{len(missing)} of {total} lost: {missing[:10]}"
    if qos == 2:
        dups = len(got) - len(set(got))
        assert dups == 0, f"{dups} of {total} arrived twice at QoS 2"


# -- subscription visibility ---------------------------------------------------------------


def test_request_without_waiting_for_suback_gets_its_response(cluster: Cluster) -> None:
    """Request/response from clients that do not wait for SUBACK: the requester
    sends SUBSCRIBE to its reply topic and, in the same write, the request; a
    responder on another worker answers at once. The subscription delta leaves
    the requester's worker when the SUBSCRIBE is decoded, ahead of the request,
    so the worker routing the reply always knows the subscription: every one of
    50 replies arrives, with any number of workers."""
    responder = cluster.connect_on(None)
    home = cluster.where[responder.client_id]

    def answer(client: Any, userdata: Any, msg: Any) -> None:
        client.publish(msg.topic.replace("req/", "rep/"), msg.payload, qos=0)

    responder.subscribe("req/#", qos=0)
    responder.paho.on_message = answer
    lost = []
    for i in range(50):
        raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=WAIT)
        cid = f"requester-{i}"
        raw.sendall(encode(Connect(cid), 5))
        worker = cluster.worker_of(cid)
        decoder = Decoder(server=False, version=5)
        raw.sendall(
            encode(Subscribe(1, [Subscription(f"rep/{i}", 0)]), 5)
            + encode(Publish(f"req/{i}", str(i).encode()), 5)
        )
        packets: list[Any] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not any(isinstance(p, Publish) for p in packets):
            raw.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = raw.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            packets.extend(decoder.feed(data))
        raw.close()
        if not any(isinstance(p, Publish) for p in packets):
            lost.append((i, worker, home))
    assert lost == [], f"replies lost (request, requester's worker, responder's worker): {lost}"

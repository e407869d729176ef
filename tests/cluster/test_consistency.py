"""One broker however many workers: races a multi-worker broker must win.

Each test runs against ``shardmq serve --workers 1`` and ``--workers 4`` (a
real subprocess, see ``test_workers.Cluster``) and must give the same answer:
a takeover storm ends with exactly one connection, a QoS 2 stream stays
exactly-once while its publisher and subscriber are reset and resume on other
workers, and a request sent right after its reply subscription, without
waiting for SUBACK, gets its reply.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardmq.protocol.codec import Decoder, encode
from shardmq.protocol.packets import (
    Connect,
    Publish,
    Subscribe,
    Subscription,
)
from tests.cluster.storm import close_all, received, storm, survivor_of
from tests.cluster.test_workers import Cluster
from tests.helpers import WAIT, Client, wait_for


@pytest.fixture(params=[1, 4], ids=["workers1", "workers4"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # queues large enough that no test message is dropped while a client is away
    c = Cluster(int(request.param), ["--max-queued-messages", "100000"])
    yield c
    c.close()


# -- takeover storm ---------------------------------------------------------------


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

    conns = storm([cluster.port], cid, 50)
    pub = cluster.client()
    pub.connect()
    pub.publish("storm/t", b"once", qos=1)
    pubs = received(survivor_of(conns))
    assert [(p.topic, p.payload) for p in pubs] == [("storm/t", b"once")], pubs
    close_all(conns)


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

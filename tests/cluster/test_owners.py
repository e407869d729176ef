"""One owner per client id in the whole cluster (``shardmq/cluster/owners.py``).

Nodes are real `shardmq serve --store redis --cluster` subprocesses sharing one
real redis-server; clients are paho and raw sockets. A session taken over on
another node arrives whole: subscriptions, queue, messages in flight, inbound
QoS 2 state.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes

from shardmq.protocol.packets import (
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Subscription,
)
from tests.cluster.nodes import NODE_TIMEOUT, Nodes
from tests.cluster.storm import close_all, received, storm, survivor_of
from tests.helpers import WAIT, make_props, wait_for
from tests.redis_server import RedisClusterServer, RedisServer, both_kinds, redis_server_path
from tests.storage.serve import Raw, check_inbound_qos2_kept, persistent

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")

SESSION_TAKEN_OVER = 0x8E


def leave_offline(port: int, client_id: str, version: int, topic_filter: str, qos: int) -> None:
    """A persistent session subscribed to ``topic_filter``, left offline."""
    first = persistent(port, client_id, version)
    first.connect()
    first.subscribe(topic_filter, qos=qos)
    first.disconnect()


@both_kinds
def test_takeover_on_another_node_disconnects_the_old_connection(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """The same client id connecting to node b while connected to node a: the
    connection on a is told DISCONNECT 0x8E (3.1.1: closed), the one on b has
    the session (session present) with its subscription, wherever the
    publisher is; the owner record names b's worker."""
    a = nodes.start("a")
    b = nodes.start("b")
    old = persistent(a.port, "mover", version)
    nodes.clients.append(old)
    old.connect()
    old.subscribe("mv/#", qos=1)
    new = persistent(b.port, "mover", version)
    nodes.clients.append(new)
    flags, _, _ = new.connect()
    assert flags.session_present is True
    rc, _props = old.disconnects.get(timeout=WAIT)
    if version == 5:
        assert rc == SESSION_TAKEN_OVER
    pub = nodes.client(a, version=version)
    assert pub.publish("mv/1", b"to the new owner", qos=1).value == 0
    assert new.get().payload == b"to the new owner"
    owner = redis_server.client().hgetall("shardmq:s:{mover}:o")
    assert owner[b"o"] == b"b/0" and int(owner[b"e"]) == 2
    assert old.messages.empty()


def test_what_still_reaches_the_old_owner_follows_the_session_to_its_new_node(
    nodes: Nodes,
) -> None:
    """A publisher on node c keeps 20 QoS 1 messages in flight while the
    subscriber's session moves from node a (two workers) to node b: c routes
    to a until it reads that b holds the session, a forwards what still
    reaches it, and b drops the copies it also got directly. Every message
    acknowledged with success reaches the subscriber (old connection, then
    new), and none is delivered twice except as a resend (DUP) of one that
    was in flight. A subscriber already on b makes c send b the messages
    too, while b claims the session: a delivered those."""
    a = nodes.start("a", 2)
    b = nodes.start("b")
    c = nodes.start("c")
    bystander = nodes.client(b)
    bystander.subscribe("fw/#", qos=1)
    old = persistent(a.port, "follower", 5)
    nodes.clients.append(old)
    old.connect()
    old.subscribe("fw/#", qos=1)
    pub = nodes.client(c)
    assert pub.publish("fw/warm", b"warm", qos=1).value == 0
    assert old.get().payload == b"warm"  # c routes to a
    count = 600
    mids = [pub.publish("fw/t", str(i).encode(), qos=1, wait=False).mid for i in range(300)]
    new = persistent(b.port, "follower", 5)
    nodes.clients.append(new)
    flags, _, _ = new.connect()
    assert flags.session_present is True
    old.disconnects.get(timeout=WAIT)
    old.paho.loop_stop()  # no reconnect: the session stays on b
    mids += [pub.publish("fw/t", str(i).encode(), qos=1, wait=False).mid for i in range(300, count)]
    acks: dict[int, int] = {}
    while len(acks) < count:
        mid, rc, _props = pub.acks.get(timeout=WAIT)
        acks[mid] = rc.value
    assert sorted(acks) == sorted(mids)
    assert set(acks.values()) == {0}, "a publish found no subscriber during the move"
    expected = {str(i).encode() for i in range(count)}
    got: list[Any] = []

    def all_came() -> bool:
        got.extend(old.drain(0))
        got.extend(new.drain(0.1))
        return {m.payload for m in got} >= expected

    wait_for(all_came)
    fresh: dict[bytes, int] = {}
    for msg in got:
        if not msg.dup:
            fresh[msg.payload] = fresh.get(msg.payload, 0) + 1
    assert [p for p, n in fresh.items() if n > 1] == []


@both_kinds
def test_queued_messages_follow_the_session_to_another_node(nodes: Nodes, version: int) -> None:
    """Offline on node a with QoS 1 and 2 messages queued; reconnecting on node
    b delivers both (read from the store), once, and the subscription routes
    there from then on."""
    a = nodes.start("a")
    b = nodes.start("b", 2)
    leave_offline(a.port, "keeper", version, "keep/#", 2)
    pub = nodes.client(a, version=version)
    assert pub.publish("keep/a", b"queued 1", qos=1).value == 0
    assert pub.publish("keep/b", b"queued 2", qos=2).value == 0
    again = persistent(b.port, "keeper", version)
    nodes.clients.append(again)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    got = sorted((m.topic, m.payload, m.qos) for m in (again.get(), again.get()))
    assert got == [("keep/a", b"queued 1", 1), ("keep/b", b"queued 2", 2)]
    assert pub.publish("keep/c", b"after the move", qos=1).value == 0
    assert again.get().payload == b"after the move"
    again.expect_nothing(0.3)  # nothing twice


@both_kinds
def test_inflight_and_inbound_qos2_state_move_between_nodes(nodes: Nodes, version: int) -> None:
    """A QoS 2 delivery the subscriber received but did not PUBREC is resent
    with DUP, same packet id, after it reconnects on the other node; a QoS 2
    PUBLISH its publisher had PUBREC'd on node a and resends on node b is not
    routed a second time."""
    a = nodes.start("a")
    b = nodes.start("b")
    sub = Raw(a.port, version)
    sub.connect("s1")
    sub.send(Subscribe(1, [Subscription("q/#", qos=2)]))
    sub.recv()  # SUBACK
    pub = Raw(a.port, version)
    pub.connect("p1")
    pub.send(Publish("q/1", b"once", qos=2, packet_id=7))
    assert isinstance(pub.recv(), Pubrec)
    got = sub.recv()
    assert isinstance(got, Publish) and got.payload == b"once" and not got.dup
    pid = got.packet_id
    sub.close()  # no PUBREC
    pub.close()  # no PUBREL
    again = Raw(b.port, version)
    assert again.connect("s1").session_present is True
    resent = again.recv()
    assert isinstance(resent, Publish)
    assert (resent.packet_id, resent.dup, resent.payload) == (pid, True, b"once")
    again.send(Pubrec(pid))
    assert isinstance(again.recv(), Pubrel)
    again.send(Pubcomp(pid))
    check_inbound_qos2_kept(b.port, version, again, "q/marker")


@both_kinds
def test_takeover_storm_over_nodes_ends_with_exactly_one_connection(nodes: Nodes) -> None:
    """20 CONNECTs with one client id (Clean Start 0), spread over three nodes
    (one with two workers), sent as close together as one thread can: exactly
    one connection is left, it has the session, and a QoS 1 message to the
    session's subscription published on another node arrives there once."""
    a = nodes.start("a")
    b = nodes.start("b", 2)
    c = nodes.start("c")
    cid = "storm"
    leave_offline(a.port, cid, 5, "storm/t", 1)
    ports = [a.port, b.port, c.port]
    conns = storm(ports, cid, 20, timeout=60)
    survivor = survivor_of(conns)
    port = survivor.sock.getpeername()[1]
    pub = nodes.client(next(n for n in nodes.brokers if n.port != port))
    assert pub.publish("storm/t", b"once", qos=1).value == 0
    pubs = received(survivor)
    assert [(p.topic, p.payload) for p in pubs] == [("storm/t", b"once")], pubs
    close_all(conns)


@both_kinds
def test_a_dead_nodes_session_resumes_on_another_node(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """Node a is killed (no goodbye) while holding an offline session with a
    queued message; the client reconnecting to node b gets the session and the
    message (b asks a, which does not answer within node_timeout, then reads
    the session from the store)."""
    a = nodes.start("a")
    b = nodes.start("b")
    leave_offline(a.port, "orphan", version, "orph/#", 1)
    pub = nodes.client(b, version=version)
    assert pub.publish("orph/1", b"kept", qos=1).value == 0
    r = redis_server.client()
    wait_for(lambda: r.hlen("shardmq:s:{orphan}:q") == 1)  # queued by a, in the store
    a.stop(9)
    again = persistent(b.port, "orphan", version)
    nodes.clients.append(again)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    assert again.get().payload == b"kept"


def _twenty_while_a_stalls(
    nodes: Nodes,
    redis_server: RedisServer,
    client_id: str,
    topic_filter: str,
    topic: str,
    version: int,
) -> list[int]:
    """An offline session of node a subscribed to ``topic_filter`` (which
    matches ``topic``) gets message 0 applied by a; a then stalls
    (SIGSTOP) while node b, which still counts a as alive, publishes 1..20 at
    QoS 1, each acknowledged once it is in a's stream; a is killed. Returns
    the payloads the client resuming on b receives, as numbers."""
    a = nodes.start("a")
    b = nodes.start("b")
    leave_offline(a.port, client_id, version, topic_filter, 1)
    pub = nodes.client(b, version=version)
    r = redis_server.client()
    assert pub.publish(topic, b"0", qos=1).value == 0
    wait_for(lambda: r.hlen(f"shardmq:s:{{{client_id}}}:q") == 1)  # applied by a
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        for i in range(1, 21):
            assert pub.publish(topic, str(i).encode(), qos=1).value == 0  # in a's stream
    finally:
        a.stop(signal.SIGKILL)
    wait_for(lambda: "sessions adopted here" in b.log_text(), timeout=NODE_TIMEOUT * 4)
    again = persistent(b.port, client_id, version)
    nodes.clients.append(again)
    assert again.connect()[0].session_present is True
    return [int(m.payload) for m in again.drain(1.0)]


@both_kinds
def test_what_a_dead_node_had_not_applied_reaches_the_sessions_adopted_from_it(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """The survivor adopting a stalled-then-killed node's sessions delivers
    what that node had not applied: the client reconnecting to b gets all 21
    messages, once, in order."""
    got = _twenty_while_a_stalls(nodes, redis_server, "stalled", "st/#", "st/x", version)
    if isinstance(redis_server, RedisClusterServer):
        # a's read mark and the session's keys are in different slots: a
        # stopped between the two writes, an entry comes twice
        assert list(dict.fromkeys(got)) == list(range(21))
    else:
        assert got == list(range(21))


def test_shared_deliveries_a_dead_node_had_not_applied_reach_a_member_of_the_group(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """The only member of ``$share/g/sh/#`` is an offline session of node a:
    each of the 20 messages b publishes while a stalls is addressed to a's
    member (in a's stream, acknowledged). The survivor delivers those shared
    deliveries to a member of the group it holds now (the adopted one): the
    client resuming on b gets all 21, once."""
    got = _twenty_while_a_stalls(nodes, redis_server, "member", "$share/g/sh/#", "sh/x", 5)
    assert sorted(got) == list(range(21))


def test_what_other_nodes_still_send_a_dead_node_reaches_the_sessions_adopted_from_it(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Node c publishes QoS 1 messages for an offline session of node a without
    pause while a stalls (SIGSTOP) and b adopts a's sessions. c counts a alive
    until its own beat (node timeout 30 s: every 10 s) and keeps appending to
    a's stream, where b's replay no longer looks once it has adopted the
    session; b follows a's stream for its node timeout. Every message c had
    acknowledged reaches the client resuming on b, none twice."""
    queue = ("--max-queued-messages", "100000")
    a = nodes.start("a", 1, *queue)
    b = nodes.start("b", 1, *queue)
    c = nodes.start("c", 1, *queue, "--node-timeout", "30")
    leave_offline(a.port, "left", 5, "lf/#", 1)
    pub = nodes.client(c)
    r = redis_server.client()
    assert pub.publish("lf/x", b"0", qos=1).value == 0
    wait_for(lambda: r.hlen("shardmq:s:{left}:q") == 1)  # c routes to a, a applied it
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    mids: list[int] = []
    adopted_at: float | None = None
    try:
        # until half a second after b adopted the session
        while adopted_at is None or time.monotonic() < adopted_at + 0.5:
            n = len(mids) + 1
            mids.append(pub.publish("lf/x", str(n).encode(), qos=1, wait=False).mid)
            time.sleep(0.001)
            if adopted_at is None and (r.hget("shardmq:s:{left}:o", "o") or b"").startswith(b"b/"):
                adopted_at = time.monotonic()
            assert len(mids) < 20_000, "b did not adopt the session"
    finally:
        a.stop(signal.SIGKILL)
    acks: dict[int, int] = {}
    while len(acks) < len(mids):
        mid, rc, _props = pub.acks.get(timeout=WAIT)
        acks[mid] = rc.value
    assert set(acks.values()) == {0}
    again = persistent(b.port, "left", 5)
    nodes.clients.append(again)
    assert again.connect()[0].session_present is True
    expected = {str(i).encode() for i in range(len(mids) + 1)}
    got: list[Any] = []

    def all_came() -> bool:
        got.extend(again.drain(0.1))
        return {m.payload for m in got} >= expected

    wait_for(all_came, timeout=WAIT * 2)
    assert len(got) == len(expected)  # none twice


def test_a_node_back_from_the_dead_drops_the_sessions_taken_from_it(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Node a holds a persistent session and is killed; the client resumes it
    on node b, and b is killed too before anyone reaped a. When a starts
    again it does not keep that session (its owner record names b); when b
    starts again it does: a message to the session then arrives once, on the
    client that reconnects through a."""
    a = nodes.start("a")
    b = nodes.start("b")
    leave_offline(a.port, "fenced", 5, "fen/#", 1)
    a.stop(9)
    again = persistent(b.port, "fenced", 5)
    assert again.connect()[0].session_present is True
    again.paho.loop_stop()
    b.stop(9)
    r = redis_server.client()
    wait_for(
        lambda: not r.exists("shardmq:{nodes}:a") and not r.exists("shardmq:{nodes}:b"),
        timeout=NODE_TIMEOUT * 3,
    )
    a2 = nodes.start("a")
    wait_for(lambda: "owned by another process now" in a2.log_text(), timeout=WAIT)
    b2 = nodes.start("b")
    assert r.hget("shardmq:s:{fenced}:o", "o") == b"b/0"
    back = persistent(a2.port, "fenced", 5)
    nodes.clients.append(back)
    assert back.connect()[0].session_present is True
    pub = nodes.client(b2)
    assert pub.publish("fen/x", b"one copy", qos=1).value == 0
    assert back.get().payload == b"one copy"
    back.expect_nothing(0.3)
    assert r.hget("shardmq:s:{fenced}:o", "o") == b"a/0"


def test_a_session_that_ends_clears_its_owner(nodes: Nodes, redis_server: RedisServer) -> None:
    """A clean session's owner record names no one once it closes, so the next
    claim of the id asks no node."""
    a = nodes.start("a")
    c = nodes.client(a, client_id="brief")
    r = redis_server.client()
    assert r.hget("shardmq:s:{brief}:o", "o") == b"a/0"
    c.disconnect()
    wait_for(lambda: r.hget("shardmq:s:{brief}:o", "o") is None, timeout=WAIT)
    assert r.hget("shardmq:s:{brief}:o", "e") == b"1"


@both_kinds
def test_nodes_serve_their_own_clients_while_redis_is_away(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Redis stops: node a still accepts clients (their client ids claimed on a
    alone) and routes between them; once Redis is back, a publish on node b
    reaches a's subscriber again; neither node exits; the outage of the claims
    is logged once."""
    a = nodes.start("a")
    b = nodes.start("b")
    redis_server.stop()
    wait_for(lambda: "unavailable" in a.log_text())  # the store's ping noticed
    sub = nodes.client(a, client_id="during")
    sub.subscribe("out/#", qos=0)
    pub = nodes.client(a)
    pub.publish("out/local", b"same node")
    assert sub.get().payload == b"same node"
    redis_server.start()
    remote = nodes.client(b)

    def crosses() -> bool:
        remote.publish("out/remote", b"across")
        return any(m.payload == b"across" for m in sub.drain(0.2))

    wait_for(crosses, timeout=WAIT * 3, interval=0.2)
    assert a.proc is not None and a.proc.poll() is None
    assert b.proc is not None and b.proc.poll() is None
    assert a.log_text().count("client ids claimed on this node alone") == 1


@both_kinds
def test_a_dead_nodes_will_is_published_by_a_survivor(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """A client with a will (no delay) and a persistent session is connected to
    node a when a is killed: once a's heartbeat expires, one survivor adopts
    its session and publishes the will (to a subscriber on node b, once); a
    message published afterwards is queued for the session on the survivor,
    and the client gets it when it reconnects to node c."""
    a = nodes.start("a")
    b = nodes.start("b")
    c = nodes.start("c")
    watcher = nodes.client(b, version=version)
    watcher.subscribe("wills/#", qos=1)
    dying = persistent(a.port, "dying", version)
    dying.paho.will_set("wills/dying", b"gone", 1, False)
    dying.connect()
    dying.subscribe("dy/#", qos=1)
    dying.paho.loop_stop()
    a.stop(9)
    will = watcher.get(timeout=NODE_TIMEOUT * 4 + WAIT)
    assert (will.topic, will.payload) == ("wills/dying", b"gone")
    watcher.expect_nothing(0.5)  # one survivor, one will
    r = redis_server.client()
    wait_for(lambda: r.hget("shardmq:s:{dying}:o", "o") in (b"b/0", b"c/0"))
    logs = b.log_text() + c.log_text()
    assert logs.count("node a is dead: 1 of its 1 sessions adopted here") == 1
    pub = nodes.client(b, version=version)
    assert pub.publish("dy/1", b"while away", qos=1).value == 0
    again = persistent(c.port, "dying", version)
    nodes.clients.append(again)
    assert again.connect()[0].session_present is True
    assert again.get().payload == b"while away"


def test_a_dead_nodes_delayed_will_waits_and_a_reconnect_cancels_it(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """A will with a 300 s delay on a session of killed node a: the survivor
    adopts the session without publishing it, and the client reconnecting on
    node b within the delay gets its session; the will is never sent."""
    a = nodes.start("a")
    b = nodes.start("b")
    watcher = nodes.client(b)
    watcher.subscribe("wills/#", qos=1)
    late = persistent(a.port, "late", 5)
    late.paho.will_set("wills/late", b"late", 1, False, properties=_will_delay(300))
    late.connect()
    late.paho.loop_stop()
    a.stop(9)
    wait_for(lambda: "sessions adopted here" in b.log_text(), timeout=NODE_TIMEOUT * 4 + WAIT)
    again = persistent(b.port, "late", 5)
    nodes.clients.append(again)
    assert again.connect()[0].session_present is True
    watcher.expect_nothing(0.5)


def _will_delay(seconds: int) -> Any:
    return make_props(PacketTypes.WILLMESSAGE, {"WillDelayInterval": seconds})

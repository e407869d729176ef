"""Several nodes joined through Redis (`shardmq serve --cluster`) behave as one broker.

Real `shardmq serve --store redis --cluster` subprocesses on free ports, one
real redis-server, paho clients. Conditions are waited for with bounded polls,
never by sleeping a fixed time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.nodes import NODE_TIMEOUT, Nodes, cut_reader
from tests.helpers import WAIT, Client, wait_for
from tests.redis_server import RedisClusterServer, RedisServer, both_kinds, redis_server_path
from tests.storage.serve import ROOT, Serve, free_port, worker_serving

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")
NO_MATCHING_SUBSCRIBERS = 0x10
PERSISTENT: dict[str, Any] = {"clean_start": False, "session_expiry": 300}


# -- routing -------------------------------------------------------------------------


@both_kinds
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_a_subscriber_on_another_node(nodes: Nodes, version: int, qos: int) -> None:
    """What a client publishes on node a reaches a client subscribed on node b,
    payload and (v5) properties byte-exact; the subscriber's overlapping
    wildcard filters give it one copy carrying both subscription identifiers."""
    a = nodes.start("a")
    b = nodes.start("b")
    sub = nodes.client(b, version=version)
    if version == 5:
        sub.subscribe("sensors/+/temp", qos=2, sub_id=3)
        sub.subscribe("sensors/#", qos=2, sub_id=5)
    else:
        sub.subscribe("sensors/+/temp", qos=2)
        sub.subscribe("sensors/#", qos=2)
    pub = nodes.client(a, version=version)
    payload = bytes(range(256)) + b"\x00end"
    props = None
    if version == 5:
        props = {
            "UserProperty": [("k", "v1"), ("k", "v2"), ("é", "ü")],
            "CorrelationData": b"\x00\xffcorr\x01",
            "ContentType": "application/x-test",
            "PayloadFormatIndicator": 0,
            "ResponseTopic": "replies/1",
        }
    rc = pub.publish("sensors/kitchen/temp", payload, qos=qos, properties=props)
    if qos:
        assert not rc.is_failure
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == ("sensors/kitchen/temp", payload, qos)
    if version == 5:
        got = msg.properties
        assert got.UserProperty == [("k", "v1"), ("k", "v2"), ("é", "ü")]
        assert got.CorrelationData == b"\x00\xffcorr\x01"
        assert got.ContentType == "application/x-test"
        assert got.ResponseTopic == "replies/1"
        assert sorted(got.SubscriptionIdentifier) == [3, 5]
    sub.expect_nothing(0.3)  # one copy for the two filters


def test_after_suback_a_publish_on_any_node_arrives(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """SUBACK waits until every node has applied the subscription: even while the
    publisher's node is slow to read its stream (its reader was just cut), a
    publish right after the SUBACK reaches the new subscriber."""
    a = nodes.start("a")
    b = nodes.start("b")
    pub = nodes.client(a)
    sub = nodes.client(b)
    for i in range(3):
        cut_reader(redis_server, "a")
        sub.subscribe(f"vis/{i}", qos=1)
        assert pub.publish(f"vis/{i}", b"right after", qos=1).value == 0  # not "no match"
        assert sub.get().topic == f"vis/{i}"


@both_kinds
def test_no_local_is_per_client_across_nodes(nodes: Nodes) -> None:
    """A client on a subscribed with No Local does not get its own publish; a
    client on b subscribed to the same filter does."""
    a = nodes.start("a")
    b = nodes.start("b")
    me = nodes.client(a)
    me.subscribe("chat/room", qos=1, no_local=True)
    other = nodes.client(b)
    other.subscribe("chat/room", qos=1)
    assert not me.publish("chat/room", b"hello", qos=1).is_failure
    assert other.get().payload == b"hello"
    me.expect_nothing(0.3)


@both_kinds
def test_order_per_publisher_over_1000_qos1_messages(nodes: Nodes) -> None:
    """Two publishers on two nodes, one subscriber on a third: each publisher's
    1,000 QoS 1 messages arrive complete and in its order."""
    a = nodes.start("a")
    c = nodes.start("c")
    b = nodes.start("b")
    sub = nodes.client(b)
    sub.subscribe("seq/#", qos=1)
    pubs = [nodes.client(a), nodes.client(c)]
    n = 1000
    infos = []
    for i in range(n):
        for k, pub in enumerate(pubs):
            infos.append(pub.publish(f"seq/{k}", str(i).encode(), qos=1, wait=False))
    for info in infos:
        info.wait_for_publish(WAIT * 4)
    got: dict[str, list[int]] = {"seq/0": [], "seq/1": []}
    for _ in range(2 * n):
        msg = sub.get()
        got[msg.topic].append(int(msg.payload))
    assert got == {"seq/0": list(range(n)), "seq/1": list(range(n))}
    sub.expect_nothing(0.3)


def test_acknowledged_messages_survive_cut_redis_connections(
    nodes: Nodes, redis_server: RedisServer
) -> None:
    """Redis closes every broker connection several times while node a publishes
    QoS 1 messages to a subscriber on node b: b's stream reader reconnects and
    reads on from where it was, a's batches are written again (and read once),
    so every message a acknowledged arrives, once, in order."""
    a = nodes.start("a")
    b = nodes.start("b")
    sub = nodes.client(b)
    sub.subscribe("cut/#", qos=1)
    pub = nodes.client(a)
    r = redis_server.client()

    def reader_ids() -> set[int]:
        return {c["id"] for c in r.client_list() if c.get("name") == "shardmq:b:0:reader"}

    before = reader_ids()
    assert before
    n = 2000
    stop = threading.Event()

    def cut() -> None:
        for _ in range(6):
            if stop.wait(0.05):
                return
            r.client_kill_filter(_type="normal", skipme=True)

    cutter = threading.Thread(target=cut)
    cutter.start()
    infos = [pub.publish("cut/x", str(i).encode(), qos=1, wait=False) for i in range(n)]
    for info in infos:
        info.wait_for_publish(WAIT * 4)
    stop.set()
    cutter.join()
    acks: dict[int, int] = {}
    while not pub.acks.empty():
        mid, rc, _ = pub.acks.get()
        acks[mid] = rc.value
    acked = {i for i, info in enumerate(infos) if acks.get(info.mid, 0x80) < 0x80}
    assert len(acked) > n // 2
    got = [int(m.payload) for m in sub.drain(1.0)]
    assert got == sorted(set(got)), "out of order or twice"
    assert acked <= set(got)
    # the reader really was cut and came back as a new connection
    assert "stream reader lost Redis" in b.log_text()
    assert wait_for(lambda: reader_ids() and not reader_ids() & before)


@both_kinds
def test_a_restarted_worker_reads_on_from_the_last_entry_it_applied(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """A worker of node b stalls (SIGSTOP) while node a publishes QoS 1
    messages for a persistent session that worker holds: a acknowledges them
    once they are in b's stream. The worker is then killed; the one the
    supervisor starts in its place reads b's stream on from the last entry the
    old one applied (recorded with what applying it stored), so the session
    gets every acknowledged message, in order, once (on a Redis Cluster: at
    least once)."""
    a = nodes.start("a")
    b = nodes.start("b", 2)
    sub = nodes.client(b, client_id="resume-me", version=version, **PERSISTENT)
    sub.subscribe("resume/#", qos=1)
    worker = worker_serving(b, sub.paho.socket().getsockname())
    sub.disconnect()
    pub = nodes.client(a, version=version)
    assert not pub.publish("resume/x", b"0", qos=1).is_failure  # applied, stored
    worker.send_signal(signal.SIGSTOP)
    try:
        for i in range(1, 21):
            assert not pub.publish("resume/x", str(i).encode(), qos=1).is_failure
    finally:
        worker.kill()
    wait_for(lambda: "(generation 2)" in b.log_text(), timeout=30)  # restarted
    wait_for(lambda: b.log_text().count("joined the cluster") >= 3, timeout=30)
    again = nodes.client(b, client_id="resume-me", version=version, **PERSISTENT)
    got = [int(m.payload) for m in again.drain(1.0)]
    if isinstance(redis_server, RedisClusterServer):
        # the read mark and the session's keys are in different slots: a
        # worker stopped between the two writes delivers an entry twice
        assert list(dict.fromkeys(got)) == list(range(21))
    else:
        assert got == list(range(21))


@both_kinds
def test_retained_is_seen_on_every_node_after_the_puback(
    nodes: Nodes, redis_server: RedisServer, version: int
) -> None:
    """A retained message set on a is received by a new subscriber on b right
    after a's PUBACK; cleared on a, it is gone on b after that PUBACK; a node
    started later has it from the store."""
    a = nodes.start("a")
    b = nodes.start("b")
    pub = nodes.client(a, version=version)
    cut_reader(redis_server, "b")  # b is slow to read: the PUBACK waits for it
    assert not pub.publish("state/door", b"open \x00\xff", qos=1, retain=True).is_failure
    late = nodes.client(b, version=version)
    late.subscribe("state/#", qos=1)
    msg = late.get()
    assert (msg.topic, msg.payload, msg.retain) == ("state/door", b"open \x00\xff", True)
    assert not pub.publish("state/window", b"shut", qos=1, retain=True).is_failure
    assert not pub.publish("state/door", b"", qos=1, retain=True).is_failure
    later = nodes.client(b, version=version)
    later.subscribe("state/#", qos=1)
    msg = later.get()
    assert (msg.topic, msg.payload) == ("state/window", b"shut")
    later.expect_nothing(0.3)
    c = nodes.start("c")
    third = nodes.client(c, version=version)
    third.subscribe("state/#", qos=1)
    msg = third.get()
    assert (msg.topic, msg.payload, msg.retain) == ("state/window", b"shut", True)
    third.expect_nothing(0.3)


@both_kinds
def test_subscribers_on_every_worker_of_a_node_get_other_nodes_publishes(nodes: Nodes) -> None:
    """Node a runs two workers; a subscriber on each of them gets what is
    published on node b, once, and b's subscriber gets what either worker's
    clients publish."""
    a = nodes.start("a", 2, "--app", "tests.cluster.where_app:setup")
    b = nodes.start("b")
    on = one_client_per_worker(nodes, a)
    for c in on.values():
        c.subscribe("fan/#", qos=1)
    far = nodes.client(b)
    far.subscribe("back/#", qos=1)
    pub = nodes.client(b)
    for i in range(10):
        pub.publish(f"fan/{i}", str(i).encode(), qos=1)
    for c in on.values():
        assert [int(c.get().payload) for _ in range(10)] == list(range(10))
        c.expect_nothing(0.3)
    for worker, c in on.items():
        c.publish(f"back/{worker}", b"from a", qos=1)
    assert sorted(far.get().topic for _ in range(2)) == ["back/0", "back/1"]


def one_client_per_worker(nodes: Nodes, node: Serve, **kwargs: object) -> dict[int, Client]:
    """A client on each of the 2 workers of ``node`` (started with where_app)."""
    watcher = nodes.client(node)
    watcher.subscribe("where/#", qos=1)
    on: dict[int, Client] = {}
    for _ in range(60):
        c = nodes.client(node, **kwargs)
        while True:
            msg = watcher.get()
            if msg.topic == f"where/{c.client_id}":
                break
        worker = int(msg.payload)
        if worker in on:
            c.disconnect()
            continue
        on[worker] = c
        if len(on) == 2:
            break
    assert sorted(on) == [0, 1], "could not land a client on each worker"
    watcher.disconnect()
    return on


@both_kinds
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_shared_group_spans_the_nodes(nodes: Nodes, version: int, qos: int) -> None:
    """A group with a member on node a and one on each worker of node b: what
    is published on node c and on node a reaches exactly one member each time,
    every member gets a share, and a plain subscriber gets everything."""
    a = nodes.start("a")
    b = nodes.start("b", 2, "--app", "tests.cluster.where_app:setup")
    c = nodes.start("c")
    members = [
        nodes.client(a, version=version),
        *one_client_per_worker(nodes, b, version=version).values(),
    ]
    for member in members:
        member.subscribe("$share/workers/jobs/#", qos=2)
    plain = nodes.client(b, version=version)
    plain.subscribe("jobs/#", qos=2)
    n = 30
    for pub, where in (
        (nodes.client(c, version=version), "c"),
        (nodes.client(a, version=version), "a"),
    ):
        for i in range(n):
            rc = pub.publish(f"jobs/{where}", f"{where}{i}".encode(), qos=qos, wait=bool(qos))
            if qos:
                assert not rc.is_failure
    expected = sorted(f"{where}{i}" for where in "ca" for i in range(n))
    got: list[list[str]] = [[] for _ in members]

    def all_in() -> bool:
        for share, member in zip(got, members, strict=True):
            share.extend(msg.payload.decode() for msg in member.drain(0.05))
        return sum(map(len, got)) >= len(expected)

    wait_for(all_in)
    for member in members:
        member.expect_nothing(0.3)
    assert sorted(p for share in got for p in share) == expected  # once each
    assert all(got), f"a member got nothing: {[len(share) for share in got]}"
    assert sorted(msg.payload.decode() for msg in plain.drain(0.3)) == expected


# -- membership ------------------------------------------------------------------------


@both_kinds
@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_node_with_the_same_id_is_refused(nodes: Nodes, workers: int) -> None:
    nodes.start("twin")
    argv = [
        sys.executable,
        "-m",
        "shardmq",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        *nodes.flags("twin"),
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardmq: error: node_id: ")
    assert "'twin'" in lines[0]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_node_that_dies_is_dropped(
    nodes: Nodes, redis_server: RedisServer, how: signal.Signals
) -> None:
    """Once node c is killed (no goodbye: its heartbeat expires after
    node_timeout) or stopped, node a drops its interest: a QoS 1 publish that
    only c's subscriber matched gets "no matching subscribers", and nothing more
    is added to c's stream."""
    a = nodes.start("a")
    c = nodes.start("c")
    sub = nodes.client(c)
    sub.subscribe("dead/t", qos=1)
    pub = nodes.client(a)
    assert pub.publish("dead/t", b"alive", qos=1).value == 0
    assert sub.get().payload == b"alive"
    c.stop(how)
    r = redis_server.client()
    wait_for(
        lambda: pub.publish("dead/t", b"?", qos=1).value == NO_MATCHING_SUBSCRIBERS,
        timeout=NODE_TIMEOUT * 4 + WAIT,
        interval=0.2,
    )
    length = r.xlen("shardmq:stream:c")
    for _ in range(5):
        assert pub.publish("dead/t", b"gone", qos=1).value == NO_MATCHING_SUBSCRIBERS
    assert r.xlen("shardmq:stream:c") == length
    assert not r.exists("shardmq:{nodes}:c")
    wait_for(lambda: b"c" not in r.smembers("shardmq:{nodes}"), timeout=NODE_TIMEOUT * 2)
    # what a node publishes still goes where it should
    d = nodes.start("d")
    other = nodes.client(d)
    other.subscribe("dead/t", qos=1)
    assert pub.publish("dead/t", b"new", qos=1).value == 0
    assert other.get().payload == b"new"


@both_kinds
def test_node_keys_are_where_the_readme_says(nodes: Nodes, redis_server: RedisServer) -> None:
    a = nodes.start("a", 2)
    nodes.start("b")
    sub = nodes.client(a)
    sub.subscribe("k/+", qos=1)
    r = redis_server.client()
    assert r.smembers("shardmq:{nodes}") == {b"a", b"b"}
    token, workers = r.get("shardmq:{nodes}:a").split()
    assert workers == b"2" and 0 < r.pttl("shardmq:{nodes}:a") <= NODE_TIMEOUT * 1000
    assert r.type("shardmq:stream:a") == b"stream"
    held = {**r.hgetall("shardmq:interest:a:0"), **r.hgetall("shardmq:interest:a:1")}
    assert held[b"k/+"] == b"1" and b"" in held
    if isinstance(redis_server, RedisClusterServer):
        # the beat script reads every heartbeat: one slot; the rest spreads
        by_node = redis_server.keys_by_node()
        members = [p for p, keys in by_node.items() if "shardmq:{nodes}" in keys]
        assert len(members) == 1, by_node
        assert {"shardmq:{nodes}:a", "shardmq:{nodes}:b"} <= set(by_node[members[0]])
        assert sum(1 for keys in by_node.values() if keys) >= 2, by_node
    text = (Path(ROOT) / "README.md").read_text()
    for key in (
        "P:{nodes}:<id>",
        "P:{nodes}",
        "P:stream:<id>",
        "P:interest:<id>:<worker>",
        "P:s:{<client id>}:o",
    ):
        assert f"`{key}`" in text


def test_sys_has_figures_for_the_whole_cluster(nodes: Nodes, redis_server: RedisServer) -> None:
    """Each node's $SYS/broker/... describes that node; $SYS/broker/cluster/...
    sums every worker of every live node: two clients on a (two workers), one
    on b, so cluster/clients/connected reaches 3 on both nodes while each
    node's own clients/connected stays its own."""
    a = nodes.start("a", 2, "--sys-interval", "1")
    b = nodes.start("b", 1, "--sys-interval", "1")
    on_a = nodes.client(a)
    nodes.client(a)
    on_b = nodes.client(b)
    on_a.subscribe("$SYS/broker/#")
    on_b.subscribe("$SYS/broker/#")

    def figures(client: Client) -> dict[str, bytes]:
        return {m.topic: m.payload for m in client.drain(0.3)}

    seen_a: dict[str, bytes] = {}
    seen_b: dict[str, bytes] = {}

    def both_see_three() -> bool:
        seen_a.update(figures(on_a))
        seen_b.update(figures(on_b))
        key = "$SYS/broker/cluster/clients/connected"
        return seen_a.get(key) == b"3" and seen_b.get(key) == b"3"

    wait_for(both_see_three, timeout=WAIT * 3, interval=0)
    assert seen_a["$SYS/broker/cluster/nodes"] == b"2"
    assert seen_b["$SYS/broker/cluster/nodes"] == b"2"
    assert seen_b["$SYS/broker/clients/connected"] == b"1"
    assert seen_a["$SYS/broker/clients/connected"] == b"2"
    fields = redis_server.client().hgetall("shardmq:sys:a")
    assert set(fields) == {b"0", b"1"}

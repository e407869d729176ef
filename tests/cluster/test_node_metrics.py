"""/metrics of a cluster node counts its traffic with the other nodes
(``shardmq_link_*{scope="nodes"}``), moving exactly when messages cross.
Real redis-server, two `shardmq serve` nodes, paho clients."""

from __future__ import annotations

from tests.cluster.nodes import Nodes
from tests.ops.test_metrics import get, metrics, summed, wait_for
from tests.storage.serve import free_port


def test_cross_node_traffic_is_in_the_link_metrics(nodes: Nodes) -> None:
    port = free_port()
    a = nodes.start("node-a", 2, "--metrics-port", str(port))
    b = nodes.start("node-b", 1)
    wait_for(lambda: get(port, "/readyz")[0] == 200, "/readyz 200")
    sub_b = nodes.client(b, client_id="metrics-sub-b")
    sub_b.subscribe("nm/to-b", 1)
    sub_a = nodes.client(a, client_id="metrics-sub-a")
    sub_a.subscribe("nm/to-a", 1)
    pub_a = nodes.client(a, client_id="metrics-pub-a")
    pub_b = nodes.client(b, client_id="metrics-pub-b")
    # both nodes know each other's interest: a first message crosses each way
    wait_for(
        lambda: (pub_a.publish("nm/to-b", "probe", qos=1), sub_b.drain(0.2))[1] != [],
        "node-b reached from node-a",
    )
    wait_for(
        lambda: (pub_b.publish("nm/to-a", "probe", qos=1), sub_a.drain(0.2))[1] != [],
        "node-a reached from node-b",
    )

    def nodes_link(direction: str) -> float:
        return summed(metrics(port), "shardmq_link_bytes_total", scope="nodes", direction=direction)

    before = metrics(port)
    sent_before = nodes_link("sent")
    received_before = nodes_link("received")
    assert summed(before, "shardmq_link_messages_total", scope="nodes") > 0
    payload = b"x" * 2000
    for _ in range(20):
        pub_a.publish("nm/to-b", payload, qos=1)
    assert [m.payload for m in (sub_b.get() for _ in range(20))] == [payload] * 20
    # 20 x 2000 payload bytes went out of node-a through Redis
    wait_for(lambda: nodes_link("sent") - sent_before >= 40_000, "40 kB sent to node-b")
    for _ in range(20):
        pub_b.publish("nm/to-a", payload, qos=1)
    assert [m.payload for m in (sub_a.get() for _ in range(20))] == [payload] * 20
    wait_for(lambda: nodes_link("received") - received_before >= 40_000, "40 kB read")

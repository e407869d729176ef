"""The admin API of one node answers for the whole cluster: node A serves it
(metrics_port, admin_token), node B (two workers, no HTTP port) answers A's
questions about its clients through Redis. Real redis-server, real
`shardmq serve` nodes, paho clients."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from shardmq.protocol.constants import ReasonCode
from tests.cluster.nodes import Nodes
from tests.helpers import Client
from tests.ops.test_admin import TOKEN, call
from tests.ops.test_metrics import get, wait_for
from tests.storage.serve import Serve, free_port


class _Api:
    """What ``call`` needs of a broker: its metrics port."""

    def __init__(self, port: int) -> None:
        self.metrics_port = port


def _on_both_workers(nodes: Nodes, node: Serve, api: _Api, prefix: str) -> list[Client]:
    """Clients on ``node`` until both of its workers hold one, as A's API sees them."""
    clients: list[Client] = []
    while len(clients) < 64:
        clients.append(nodes.client(node, client_id=f"{prefix}-{len(clients):02d}"))
        if len(clients) >= 2:
            rows = call(api, "GET", f"/api/v1/clients?prefix={prefix}-&limit=1000")[1]["data"]
            if {r["worker"] for r in rows} == {0, 1}:
                return clients
    raise AssertionError("64 connections all landed on one worker")


def test_the_admin_api_of_one_node_answers_for_every_node(nodes: Nodes, tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(f'admin_token = "{TOKEN}"\n')
    api = _Api(free_port())
    a = nodes.start("node-a", 1, "--metrics-port", str(api.metrics_port), "--config", str(config))
    b = nodes.start("node-b", 2)
    wait_for(lambda: get(api.metrics_port, "/readyz")[0] == 200, "/readyz 200")

    on_a = nodes.client(a, client_id="adm-a-1")
    on_a.subscribe("adm/x/#", 1)
    on_b = _on_both_workers(nodes, b, api, "adm-b")
    for client in on_b:
        client.subscribe("adm/x/+", 1)

    # every client, with the node and worker that hold it
    status, answer = call(api, "GET", "/api/v1/clients?prefix=adm-&limit=1000")
    assert status == 200 and "missing_nodes" not in answer
    where = {r["client_id"]: (r["node"], r["worker"]) for r in answer["data"]}
    assert where["adm-a-1"] == ("node-a", 0)
    assert {where[c.client_id][0] for c in on_b} == {"node-b"}
    assert {where[c.client_id][1] for c in on_b} == {0, 1}
    assert len(where) == 1 + len(on_b)

    status, detail = call(api, "GET", "/api/v1/clients/" + quote(on_b[0].client_id))
    assert status == 200 and detail["node"] == "node-b" and detail["connected"] is True
    assert [s["topic_filter"] for s in detail["subscriptions"]] == ["adm/x/+"]

    # who would receive a topic, on both nodes
    _s, answer = call(api, "GET", "/api/v1/subscriptions?topic=adm/x/t&limit=1000")
    got = {(r["client_id"], r["node"], r["topic_filter"]) for r in answer["data"]}
    assert got == {("adm-a-1", "node-a", "adm/x/#")} | {
        (c.client_id, "node-b", "adm/x/+") for c in on_b
    }

    # a publish through A's API reaches B's subscribers
    status, _ = call(api, "POST", "/api/v1/publish", {"topic": "adm/x/t", "payload": "p", "qos": 1})
    assert status == 200
    for client in [on_a, *on_b]:
        msg = client.get()
        assert (msg.topic, msg.payload) == ("adm/x/t", b"p")

    # a kick through A disconnects a client of B with 0x98
    victim = on_b[-1]
    status, answer = call(api, "DELETE", "/api/v1/clients/" + quote(victim.client_id))
    assert status == 200 and answer["result"] == "kicked"
    rc, _props = victim.wait_disconnect()
    assert rc.value == ReasonCode.ADMINISTRATIVE_ACTION
    victim.paho.loop_stop()
    nodes.clients.remove(victim)
    wait_for(
        lambda: call(api, "GET", "/api/v1/clients/" + quote(victim.client_id))[0] == 404,
        "kicked client gone from node-b",
    )

    # a retained message set on B is seen from A, and cleared from A for B too
    on_b[0].publish("adm/ret/b", "kept", qos=1, retain=True)
    wait_for(lambda: call(api, "GET", "/api/v1/retained/adm/ret/b")[0] == 200, "retained on A")
    assert call(api, "DELETE", "/api/v1/retained/adm/ret/b")[0] == 200
    fresh = nodes.client(b, client_id="adm-b-fresh")
    wait_for(
        lambda: (fresh.subscribe("adm/ret/#", 1), fresh.drain(0.3))[1] == [],
        "no retained message on node-b",
    )

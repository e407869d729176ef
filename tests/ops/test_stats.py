"""/api/v1/stats, the status page and the labelled families of /metrics
(drops by reason, latency histogram, listeners, links) on a 2-worker serve."""

from __future__ import annotations

import json

from tests.helpers import Client
from tests.ops.test_metrics import MetricsServe, get, metrics, summed, wait_for


def stats(serve: MetricsServe) -> dict:  # type: ignore[type-arg]
    status, text = get(serve.metrics_port, "/api/v1/stats")
    assert status == 200
    return json.loads(text)  # type: ignore[no-any-return]


def test_stats_feed_fields(broker: MetricsServe) -> None:
    client = Client(broker.port, "stats-1")
    client.connect()
    try:
        client.subscribe("ops/stats/#", 0)
        for _ in range(3):
            client.publish("ops/stats/busy", "x", qos=1)
        for _ in range(3):
            client.get()
        feed = stats(broker)
    finally:
        client.disconnect()
    assert feed["nodes"] is None
    assert feed["unresponsive_workers"] == []
    assert sorted(w["worker"] for w in feed["workers"]) == [0, 1]
    for w in feed["workers"]:
        assert {"worker", "pid", "connections", "cpu_seconds", "rss_bytes"} <= set(w)
    assert feed["connections"] == 1
    assert feed["connections"] == sum(w["connections"] for w in feed["workers"])
    assert feed["sessions"] == {"online": 1, "offline": 0}
    assert feed["messages_received"] >= 3
    assert feed["subscriptions"] == 1
    for key in ("retained", "queued", "dropped", "bytes_received", "bytes_sent", "uptime"):
        assert isinstance(feed[key], int | float), key
    assert any(t["topic"] == "ops/stats/busy" and t["samples"] >= 1 for t in feed["topics"])


def test_status_page_is_self_contained(broker: MetricsServe) -> None:
    status, page = get(broker.metrics_port, "/")
    assert status == 200
    assert "api/v1/stats" in page and "<svg" in page and "<script>" in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN
    assert get(broker.metrics_port, "/nothing-here")[0] == 404


def test_labelled_families(broker: MetricsServe) -> None:
    port = broker.metrics_port
    sub = Client(broker.port, "stats-sub")
    pub = Client(broker.port, "stats-pub")
    sub.connect()
    pub.connect()
    try:
        sub.subscribe("ops/labels/t", 0)
        for i in range(5):
            pub.publish("ops/labels/t", f"{i}", qos=1)
        for _ in range(5):
            sub.get()
        wait_for(
            lambda: summed(metrics(port), "shardmq_delivery_latency_seconds_count") >= 1,
            "a latency sample",
        )
        now = metrics(port)
        count = summed(now, "shardmq_delivery_latency_seconds_count")
        assert summed(now, "shardmq_delivery_latency_seconds_bucket", le="+Inf") == count
        for reason in ("queue_full", "expired", "slow_consumer", "acl"):
            assert (("shardmq_messages_dropped_total", (("reason", reason),))) in now
        assert summed(now, "shardmq_listener_connections", listener=f"tcp:{broker.port}") == 2
        assert summed(now, "shardmq_sessions", state="online") == 2
        assert summed(now, "shardmq_link_bytes_total", direction="sent") > 0
        assert summed(now, "shardmq_link_messages_total") > 0
        assert ("shardmq_queued_messages", ()) in now
        assert ("shardmq_auth_failures_total", ()) in now
    finally:
        sub.disconnect()
        pub.disconnect()


def test_queue_full_drops_are_counted(broker: MetricsServe) -> None:
    port = broker.metrics_port
    before = summed(metrics(port), "shardmq_messages_dropped_total", reason="queue_full")
    away = Client(broker.port, "stats-away", clean_start=False, session_expiry=60)
    away.connect()
    away.subscribe("ops/drops/t", 1)
    away.disconnect()
    pub = Client(broker.port, "stats-flood")
    pub.connect()
    try:
        # max_queued_messages defaults to 1000: 1005 QoS 1 messages drop 5
        for i in range(1005):
            pub.publish("ops/drops/t", f"{i}", qos=1)
        wait_for(
            lambda: (
                summed(metrics(port), "shardmq_messages_dropped_total", reason="queue_full")
                - before
                == 5
            ),
            "5 queue_full drops",
        )
        wait_for(lambda: summed(metrics(port), "shardmq_queued_messages") == 1000, "1000 queued")
        assert summed(metrics(port), "shardmq_sessions", state="offline") >= 1
    finally:
        pub.disconnect()
        clean = Client(broker.port, "stats-away", clean_start=True, session_expiry=0)
        clean.connect()
        clean.disconnect()

"""Nodes of one cluster for tests: `shardmq serve --store redis --cluster`
subprocesses on free ports sharing one real redis-server."""

from __future__ import annotations

import os

from tests.helpers import Client
from tests.redis_server import RedisServer
from tests.storage.serve import Serve

#: small, so that a dead node is noticed within a test's patience
NODE_TIMEOUT = 2.0
DEBUG = ["--log-level", "debug"] if os.environ.get("SHARDMQ_TEST_KEEP_LOGS") else []


class Nodes:
    """Start nodes of one cluster; every process is killed at the end."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.redis = redis_server
        self.brokers: list[Serve] = []
        self.clients: list[Client] = []

    def flags(self, node_id: str) -> list[str]:
        return [
            "--store",
            "redis",
            "--redis-url",
            self.redis.url,
            "--cluster",
            "--node-id",
            node_id,
            "--node-timeout",
            str(NODE_TIMEOUT),
        ]

    def start(self, node_id: str, workers: int = 1, *extra: str) -> Serve:
        b = Serve(self.flags(node_id), workers, *extra, *DEBUG)
        self.brokers.append(b)
        return b.start()

    def client(self, node: Serve, **kwargs: object) -> Client:
        c = Client(node.port, **kwargs)  # type: ignore[arg-type]
        self.clients.append(c)
        c.connect()
        return c

    def close(self) -> None:
        for c in self.clients:
            try:
                c.paho.disconnect()
            except Exception:
                pass
            c.paho.loop_stop()
        for b in self.brokers:
            b.close()


def cut_reader(redis_server: RedisServer, node_id: str) -> None:
    """Close the connection node ``node_id`` reads its stream on; it reconnects
    after a short backoff (and reads on from where it was)."""
    r = redis_server.client()
    name = f"shardmq:{node_id}:0:reader"
    ids = [c["id"] for c in r.client_list() if c.get("name") == name]
    assert ids, f"no {name} connection"
    for client_id in ids:
        r.client_kill_filter(_id=client_id)

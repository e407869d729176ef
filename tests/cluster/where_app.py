"""A test app for multi-worker brokers: tells which worker each client landed on.

Loaded with ``shardmq serve --app tests.cluster.where_app:setup``. On every
CONNECT it publishes ``where/<client id>`` (retained) with the worker id as
payload, so a watcher subscribed to ``where/#`` learns where each connection
went, its own included.
"""

from __future__ import annotations

from typing import Any


def setup(broker: Any) -> None:
    @broker.on_connect
    async def where(client: Any, packet: Any) -> bool:
        client.broker.publish(
            f"where/{client.client_id}", str(client.worker_id).encode(), qos=1, retain=True
        )
        return True

"""A test app for multi-worker brokers: tells which worker each client landed on.

Loaded with ``shardmq serve --app tests.cluster.where_app:setup``. On every
CONNECT it publishes ``where/<client id>`` (retained) with the worker id as
payload, so a watcher subscribed to ``where/#`` learns where each connection
went, its own included. A publish to ``ctl/retained/add`` (payload
``topic=value``) or ``ctl/retained/delete`` (payload: the topic) calls the
embedding API's ``broker.retained.add``/``delete`` on the worker that
received it, and is not routed.
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

    @broker.on_publish
    async def control(client: Any, packet: Any) -> bool:
        if packet.topic == "ctl/retained/add":
            topic, _, value = bytes(packet.payload).partition(b"=")
            client.broker.retained.add(topic.decode(), value)
            return False
        if packet.topic == "ctl/retained/delete":
            client.broker.retained.delete(bytes(packet.payload).decode())
            return False
        return True

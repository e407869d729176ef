"""A broker inside your own asyncio program.

Run it from the repository root::

    python examples/embedded.py

It starts a :class:`~shardmq.broker.Broker` on a free port of 127.0.0.1,
connects a small MQTT 5.0 subscriber written with shardmq's own codec (no
client library needed), publishes from the program itself with
``broker.publish``, prints what the subscriber received, and stops the broker.
Hooks registered before ``start()`` run on the same event loop as the rest of
the program.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

# let "python examples/embedded.py" find shardmq in a checkout that is not installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shardmq.broker import Broker  # noqa: E402
from shardmq.protocol.codec import Decoder, encode  # noqa: E402
from shardmq.protocol.constants import MQTT5  # noqa: E402
from shardmq.protocol.packets import (  # noqa: E402
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)


class Subscriber:
    """A minimal MQTT 5.0 client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder(server=False, version=MQTT5)
        self.packets: list[Any] = []

    @classmethod
    async def connect(cls, port: int, client_id: str) -> Subscriber:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        await self.send(Connect(client_id))
        connack = await self.next()
        assert isinstance(connack, Connack) and connack.reason_code == 0, connack
        return self

    async def send(self, packet: Any) -> None:
        self.writer.write(encode(packet, MQTT5))
        await self.writer.drain()

    async def next(self) -> Any:
        while not self.packets:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.packets.extend(self.decoder.feed(data))
        return self.packets.pop(0)

    async def subscribe(self, topic_filter: str, qos: int) -> None:
        await self.send(Subscribe(1, [Subscription(topic_filter, qos)]))
        suback = await self.next()
        assert isinstance(suback, Suback) and suback.reason_codes == [qos], suback

    async def close(self) -> None:
        await self.send(Disconnect())
        self.writer.close()
        await self.writer.wait_closed()


async def main() -> int:
    broker = Broker(host="127.0.0.1", port=0, sys_interval=0)

    @broker.on_connect
    async def greet(client: Any, packet: Any) -> bool:
        print(f"client {client.client_id} connected from {client.remote_address[0]}")
        return True

    await broker.start()
    try:
        sub = await Subscriber.connect(broker.port, "embedded-subscriber")
        await sub.subscribe("greetings/#", qos=1)
        matched = broker.publish("greetings/world", b"hello from the program", qos=1)
        print(f"published to {matched} subscription(s)")
        msg = await asyncio.wait_for(sub.next(), timeout=5)
        assert isinstance(msg, Publish), msg
        await sub.send(Puback(msg.packet_id))
        print(f"received {msg.topic}: {msg.payload.decode()}")
        await sub.close()
    finally:
        await broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Test helpers: a broker on a thread, a paho-mqtt client wrapper, a raw client.

Everything talks to the broker through real sockets on 127.0.0.1 and a free
port; nothing here mocks the broker.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.subscribeoptions import SubscribeOptions

from shardmq.broker import Broker
from shardmq.protocol.codec import Decoder, encode

WAIT = 5.0


class BrokerThread:
    """A Broker running on its own uvloop event loop in a background thread."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("port", 0)
        settings.setdefault("sys_interval", 0)
        self.broker = Broker(**settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        #: seconds the broker's clock runs ahead of the real one (advance())
        self._offset = 0.0

    def start(self) -> BrokerThread:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = uvloop.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.broker.start())
            except BaseException as exc:  # reported to the test thread
                errors.append(exc)
                ready.set()
                return
            self.port = self.broker.port
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(WAIT)
        if errors:
            raise errors[0]
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the broker's loop and return its result."""
        assert self.loop is not None

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(WAIT)

    def advance(self, seconds: float) -> None:
        """Move the broker's wall clock forward by ``seconds``: session expiry,
        will delay and message expiry see the time pass, and what falls due
        runs before this returns (keep alive, on the loop's own clock, not)."""
        self._offset += seconds
        offset = self._offset
        shard = self.broker._shard
        self.call(lambda: shard.set_clock(lambda: time.time() + offset))

    def stop(self) -> None:
        if self.loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.broker.stop(timeout=2.0), self.loop)
        fut.result(WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(WAIT)
        self.loop = None


class Client:
    """A paho-mqtt 2.x client with synchronous helpers for tests."""

    _counter = 0

    def __init__(
        self,
        port: int,
        client_id: str | None = None,
        version: int = 5,
        clean_start: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 60,
        username: str | None = None,
        password: str | bytes | None = None,
        will: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        Client._counter += 1
        if client_id is None:
            client_id = f"test-{Client._counter}-{time.monotonic_ns() % 1000000}"
        self.port = port
        self.version = version
        self.client_id = client_id
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        kwargs: dict[str, Any] = {
            "callback_api_version": paho.CallbackAPIVersion.VERSION2,
            "client_id": client_id,
            "protocol": protocol,
        }
        if version != 5:
            kwargs["clean_session"] = clean_start
        self.paho = paho.Client(**kwargs)
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.connect_properties = properties or {}
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            wprops = None
            if "properties" in will:
                wprops = make_props(PacketTypes.WILLMESSAGE, will["properties"])
            self.paho.will_set(
                will["topic"],
                will.get("payload", b""),
                will.get("qos", 0),
                will.get("retain", False),
                properties=wprops,
            )
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        self.disconnects: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[Any], Any]] = queue.Queue()
        self.unsubacks: queue.Queue[tuple[int, list[Any], Any]] = queue.Queue()
        self.acks: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe
        self.paho.on_publish = self._on_publish

    # callbacks (paho's network thread)
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack.put((flags, rc, props))

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        self.messages.put(msg)

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnects.put((rc, props))

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self.subacks.put((mid, rcs, props))

    def _on_unsubscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self.unsubacks.put((mid, rcs, props))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        self.acks.put((mid, rc, props))

    def connect(self, expect_success: bool = True) -> tuple[Any, Any, Any]:
        """Connect and wait for CONNACK; returns (flags, reason code, properties)."""
        kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == 5:
            kwargs["clean_start"] = self.clean_start
            props = dict(self.connect_properties)
            if self.session_expiry is not None:
                props["SessionExpiryInterval"] = self.session_expiry
            if props:
                kwargs["properties"] = make_props(PacketTypes.CONNECT, props)
        self.paho.connect("127.0.0.1", self.port, **kwargs)
        self.paho.loop_start()
        flags, rc, props = self.connack.get(timeout=WAIT)
        if expect_success:
            assert not rc.is_failure, f"CONNACK {rc}"
        return flags, rc, props

    def subscribe(
        self,
        topic: str | list[tuple[str, int]],
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
        properties: dict[str, Any] | None = None,
    ) -> list[Any]:
        props = dict(properties or {})
        if sub_id is not None:
            props["SubscriptionIdentifier"] = sub_id
        kwargs: dict[str, Any] = {}
        if props:
            kwargs["properties"] = make_props(PacketTypes.SUBSCRIBE, props)
        if self.version == 5:
            if isinstance(topic, str):
                opts = SubscribeOptions(
                    qos=qos,
                    noLocal=no_local,
                    retainAsPublished=retain_as_published,
                    retainHandling=retain_handling,
                )
                result, mid = self.paho.subscribe(topic, options=opts, **kwargs)
            else:
                subs = [(t, SubscribeOptions(qos=q)) for t, q in topic]
                result, mid = self.paho.subscribe(subs, **kwargs)
        else:
            if isinstance(topic, str):
                result, mid = self.paho.subscribe(topic, qos)
            else:
                result, mid = self.paho.subscribe(topic)
        assert result == paho.MQTT_ERR_SUCCESS
        got_mid, rcs, _ = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return list(rcs)

    def unsubscribe(self, topic: str | list[str]) -> list[Any]:
        result, mid = self.paho.unsubscribe(topic)
        assert result == paho.MQTT_ERR_SUCCESS
        got_mid, rcs, _ = self.unsubacks.get(timeout=WAIT)
        assert got_mid == mid
        return list(rcs) if rcs is not None else []

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if properties:
            kwargs["properties"] = make_props(PacketTypes.PUBLISH, properties)
        info = self.paho.publish(topic, payload, qos, retain, **kwargs)
        if qos and wait:
            while True:
                mid, rc, _ = self.acks.get(timeout=WAIT)
                if mid == info.mid:
                    return rc
        return info

    def get(self, timeout: float = WAIT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def expect_nothing(self, timeout: float = 0.5) -> None:
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")

    def drain(self, timeout: float = 0.3) -> list[paho.MQTTMessage]:
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=timeout))
            except queue.Empty:
                return out

    def disconnect(self, reason_code: int = 0, properties: dict[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if self.version == 5:
            from paho.mqtt.reasoncodes import ReasonCode as PahoReason

            kwargs["reasoncode"] = PahoReason(PacketTypes.DISCONNECT, identifier=reason_code)
            if properties:
                kwargs["properties"] = make_props(PacketTypes.DISCONNECT, properties)
        self.paho.disconnect(**kwargs)
        self.paho.loop_stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (as a crashed client would)."""
        sock = self.paho.socket()
        self.paho.loop_stop()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def wait_disconnect(self, timeout: float = WAIT) -> tuple[Any, Any]:
        return self.disconnects.get(timeout=timeout)


def make_props(packet_type: int, values: dict[str, Any]) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class RawClient:
    """A socket speaking bytes, decoding the broker's answers with our codec."""

    def __init__(self, port: int, version: int = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.decoder = Decoder(server=False, version=version)
        self.version = version
        self.packets: list[Any] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, packet: Any) -> None:
        self.sock.sendall(encode(packet, self.version))

    def recv_packet(self, timeout: float = WAIT) -> Any:
        """The next packet, or None when the broker closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.packets:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet from the broker")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.packets.extend(self.decoder.feed(data))
        return self.packets.pop(0)

    def closed(self, timeout: float = WAIT) -> bool:
        """True when the broker closes the connection (any packets before are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pkt = self.recv_packet(deadline - time.monotonic())
            except TimeoutError:
                return False
            if pkt is None:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (a condition, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def expect(raw: RawClient, cls: type, timeout: float = WAIT) -> Any:
    """The next packet from the broker, which must be a ``cls``."""
    pkt = raw.recv_packet(timeout)
    assert isinstance(pkt, cls), f"expected {cls.__name__}, got {pkt!r}"
    return pkt


def expect_silence(raw: RawClient, timeout: float) -> None:
    """Nothing arrives and the connection stays open for ``timeout`` seconds."""
    try:
        pkt = raw.recv_packet(timeout)
    except TimeoutError:
        return
    raise AssertionError(f"expected silence, got {'connection closed' if pkt is None else pkt!r}")


def read_until_eof(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Every byte the broker sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data

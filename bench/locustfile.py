"""Locust users that speak MQTT through paho-mqtt.

    locust -f bench/locustfile.py --headless -u 1000 -r 100 -t 30s --host mqtt://127.0.0.1:1883

Each user connects, subscribes to its own topic and publishes to it at ``MQTT_RATE`` messages
per second; the time from publish to receiving the message back is reported to Locust as a
request ``MQTT publish->receive`` (connects and subscribes are reported too), so Locust's
tables, percentiles and charts show broker round-trip latency under a growing user count.

Settings (environment): ``MQTT_RATE`` messages/s per user (default 1), ``MQTT_QOS`` (0),
``MQTT_PROTOCOL`` 5 or 4 (5), ``MQTT_SIZE`` payload bytes (64), ``MQTT_TIMEOUT`` seconds before
an unanswered publish counts as a failure (5). ``--host`` may be ``mqtt://host:port`` or
``host:port``; without it, ``MQTT_URL`` (default ``mqtt://127.0.0.1:1883``).

This is the friendly tool for "how does it feel with N users"; ``python -m bench.load`` is the
one that measures a broker's limits (paho and Locust cost far more CPU per message).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from locust import User, constant_throughput, events, task

RATE = float(os.environ.get("MQTT_RATE", "1"))
QOS = int(os.environ.get("MQTT_QOS", "0"))
PROTOCOL = mqtt.MQTTv5 if os.environ.get("MQTT_PROTOCOL", "5") == "5" else mqtt.MQTTv311
SIZE = max(12, int(os.environ.get("MQTT_SIZE", "64")))
TIMEOUT = float(os.environ.get("MQTT_TIMEOUT", "5"))

STAMP = struct.Struct(">dI")  # send time (perf_counter), sequence number


def broker_address(host: str | None) -> tuple[str, int]:
    url = host or os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
    parts = urlsplit(url if "//" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


def report(name: str, started: float, length: int = 0, exc: BaseException | None = None) -> None:
    events.request.fire(
        request_type="MQTT",
        name=name,
        response_time=(time.perf_counter() - started) * 1000.0,
        response_length=length,
        exception=exc,
        context={},
    )


class MQTTUser(User):
    """Publishes to ``locust/<id>``, subscribed to the same topic, and times the round trip."""

    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        self.topic = f"locust/{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self.pending: dict[int, float] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.connect_error: str | None = None
        self.pad = bytes(SIZE - STAMP.size)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"locust-{self.topic[7:]}",
            protocol=PROTOCOL,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client
        host, port = broker_address(self.host)
        started = time.perf_counter()
        try:
            client.connect(host, port, keepalive=60)
            client.loop_start()
            if not self.connected.wait(TIMEOUT) or self.connect_error:
                raise ConnectionError(self.connect_error or "no CONNACK")
            report("connect", started)
        except Exception as exc:
            report("connect", started, exc=exc)
            self.stop_client()
            raise
        started = time.perf_counter()
        client.subscribe(self.topic, qos=QOS)
        if self.subscribed.wait(TIMEOUT):
            report("subscribe", started)
        else:
            report("subscribe", started, exc=TimeoutError("no SUBACK"))

    def on_stop(self) -> None:
        self.stop_client()

    def stop_client(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # paho callbacks, on paho's network thread (a greenlet under Locust's gevent patching)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.connect_error = f"CONNACK {reason}"
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        _, seq = STAMP.unpack_from(msg.payload)
        with self.lock:
            started = self.pending.pop(seq, None)
        if started is not None:
            report("publish->receive", started, len(msg.payload))

    @task
    def publish(self) -> None:
        now = time.perf_counter()
        self.expire(now)
        self.seq += 1
        with self.lock:
            self.pending[self.seq] = now
        info = self.client.publish(self.topic, STAMP.pack(now, self.seq) + self.pad, qos=QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            with self.lock:
                self.pending.pop(self.seq, None)
            report("publish->receive", now, exc=ConnectionError(mqtt.error_string(info.rc)))

    def expire(self, now: float) -> None:
        """Report publishes that never came back within MQTT_TIMEOUT as failures."""
        with self.lock:
            late = [seq for seq, t in self.pending.items() if now - t > TIMEOUT]
            started = [self.pending.pop(seq) for seq in late]
        for t in started:
            report("publish->receive", t, exc=TimeoutError(f"not received within {TIMEOUT}s"))

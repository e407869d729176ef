"""A well-behaved client that keeps checking the broker answers, on a thread.

Two long-lived paho clients, one MQTT 5.0 and one 3.1.1, each on its own
worker when the caller can say where a connection landed, subscribe to their
own topic at QoS 2. The prober then publishes round after round, cycling
through QoS 0, 1 and 2 and the four routes between the two clients (itself
and across workers): each publish must be acknowledged (QoS 1 and 2) and
arrive, exactly once, within ``timeout`` seconds. Every tenth round a fresh
client connects (either version), subscribes, receives its own QoS 1 message
and disconnects, which checks the broker still accepts connections. A
long-lived client being disconnected is a failure too.

Timeouts are for liveness only: a round that takes long but finishes in time
passes; its duration is reported, never asserted.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.helpers import Client


def _subscribe(client: Client, topic: str, qos: int, timeout: float) -> None:
    if client.version == 5:
        result, mid = client.paho.subscribe(topic, options=SubscribeOptions(qos=qos))
    else:
        result, mid = client.paho.subscribe(topic, qos)
    assert result == paho.MQTT_ERR_SUCCESS, f"subscribe: {paho.error_string(result)}"
    got, codes, _ = client.subacks.get(timeout=timeout)
    assert got == mid and not any(getattr(c, "is_failure", False) for c in codes), codes


def _connect(client: Client, timeout: float) -> None:
    client.paho.connect("127.0.0.1", client.port, keepalive=60)
    client.paho.loop_start()
    _, rc, _ = client.connack.get(timeout=timeout)
    assert not rc.is_failure, f"CONNACK {rc}"


class Prober:
    """Round trips through the broker until ``stop()``; failures are collected."""

    def __init__(
        self,
        port: int,
        timeout: float = 10.0,
        worker_of: Callable[[Client], int | None] | None = None,
        workers: int = 2,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.failures: list[str] = []
        self.rounds: Counter[str] = Counter()
        self.slowest = 0.0
        self.fresh_clients = 0
        self._delivered: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        tag = uuid.uuid4().hex[:8]
        self.clients: list[Client] = []
        self.placed: list[int | None] = []
        for version, want in ((5, 0), (4, workers - 1)):
            # reconnect until the client lands on the wanted worker (if we can tell)
            for _ in range(40):
                client = Client(port, client_id=f"probe{version}-{tag}", version=version)
                _connect(client, timeout)
                where = worker_of(client) if worker_of is not None else None
                if where is None or where == want:
                    break
                client.disconnect()
            self.clients.append(client)
            self.placed.append(where)
            _subscribe(client, self._topic(client, "#"), 2, timeout)

    @staticmethod
    def _topic(client: Client, rest: str) -> str:
        return f"probe/{client.client_id}/{rest}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 3 + 5)
        for client in self.clients:
            client.disconnect()

    # -- rounds ------------------------------------------------------------------

    def _run(self) -> None:
        routes = list(itertools.product(self.clients, self.clients))
        for n in itertools.count():
            if self._stop.is_set():
                return
            src, dst = routes[n % len(routes)]
            qos = n % 3
            try:
                self._round(n, src, dst, qos)
                if n % 10 == 9:
                    self._fresh_client(n)
                self._check_still_connected()
            except Exception as exc:  # a paho error is a failure too, never a dead thread
                stamp = time.strftime("%H:%M:%S")
                self.failures.append(f"{stamp} round {n}: {type(exc).__name__}: {exc}")
                if len(self.failures) >= 5:
                    return
            time.sleep(0.02)

    def _wait(self, q: queue.Queue[Any], match: Callable[[Any], bool], what: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                item = q.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no {what} within {self.timeout:.0f} s") from None
            if match(item):
                return item

    def _round(self, n: int, src: Client, dst: Client, qos: int) -> None:
        started = time.monotonic()
        topic = self._topic(dst, str(n))
        payload = f"{n}".encode()
        info = src.paho.publish(topic, payload, qos)
        what = f"{'v5' if src.version == 5 else 'v3.1.1'}->{'v5' if dst.version == 5 else 'v3.1.1'}"
        if qos:
            self._wait(src.acks, lambda a: a[0] == info.mid, f"ack of QoS {qos} {what} publish")
        msg = self._wait(
            dst.messages, self._delivery(topic), f"delivery of QoS {qos} {what} publish"
        )
        assert msg.payload == payload and msg.qos == qos, (msg.payload, msg.qos)
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.rounds[f"qos{qos} {what}"] += 1

    def _delivery(self, topic: str) -> Callable[[Any], bool]:
        """Matches the message on ``topic``; fails on a second copy of an earlier one."""

        def match(msg: Any) -> bool:
            assert msg.topic not in self._delivered, f"{msg.topic} arrived twice"
            if msg.topic != topic:
                return False
            self._delivered.add(topic)
            return True

        return match

    def _fresh_client(self, n: int) -> None:
        started = time.monotonic()
        version = 5 if n % 20 == 9 else 4
        client = Client(self.port, version=version)
        try:
            _connect(client, self.timeout)
            _subscribe(client, self._topic(client, "x"), 1, self.timeout)
            info = client.paho.publish(self._topic(client, "x"), b"fresh", 1)
            self._wait(client.acks, lambda a: a[0] == info.mid, "ack for a fresh client")
            self._wait(client.messages, lambda m: m.payload == b"fresh", "fresh delivery")
        except queue.Empty:
            raise AssertionError("a fresh client got no answer in time") from None
        finally:
            client.disconnect()
        self.fresh_clients += 1
        self.slowest = max(self.slowest, time.monotonic() - started)

    def _check_still_connected(self) -> None:
        for client in self.clients:
            if not client.disconnects.empty():
                rc, _ = client.disconnects.get()
                raise AssertionError(f"{client.client_id} was disconnected: {rc}")

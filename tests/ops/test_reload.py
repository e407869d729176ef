"""SIGHUP re-reads the config file of `shardmq serve`: live settings apply to
established connections in every worker, the others are logged as needing a
restart, and a bad file keeps the previous settings (one line naming the
setting). Real subprocess, real sockets."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import Connect, Puback, Publish, Suback, Subscribe, Subscription
from tests.storage.serve import Raw, Serve


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Serve, Path]]:
    config = tmp_path / "shardmq.toml"
    config.write_text("max_subscriptions = 10\nmax_packet_size = 100000\n")
    broker = Serve([], request.param, "--config", str(config))
    broker.start()
    try:
        yield broker, config
    finally:
        broker.close()


def hup(broker: Serve, text: str) -> str:
    """SIGHUP to the broker; returns the log lines it wrote, once every
    worker has logged ``text``."""
    since = len(broker.log_text())
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while broker.log_text()[since:].count(text) < broker.workers:
        assert time.monotonic() < deadline, broker.log_text()[since:]
        time.sleep(0.05)
    return broker.log_text()[since:]


def clients(port: int, n: int) -> list[Raw]:
    out = []
    for i in range(n):
        raw = Raw(port)
        raw.send(Connect(client_id=f"reload-{i}", clean_start=True))
        assert raw.recv().reason_code == 0
        out.append(raw)
    return out


def suback(raw: Raw, packet_id: int, topic: str) -> int:
    raw.send(Subscribe(packet_id, [Subscription(topic, 1)]))
    ack = raw.recv()
    assert isinstance(ack, Suback)
    return ack.reason_codes[0]


def test_a_lowered_limit_applies_to_established_connections(serve: tuple[Serve, Path]) -> None:
    broker, config = serve
    # enough connections that, with two workers, both hold some
    conns = clients(broker.port, 6)
    for raw in conns:
        assert suback(raw, 1, "a/1") == 1
    config.write_text("max_subscriptions = 1\nmax_packet_size = 50000\n")
    lines = hup(broker, "config reloaded: max_subscriptions changed")
    assert "max_packet_size changed: needs a restart" in lines
    for i, raw in enumerate(conns):
        assert suback(raw, 2, "a/2") == ReasonCode.QUOTA_EXCEEDED
        # still connected, and still publishing
        raw.send(Publish(topic="nobody/here", payload=b"x", qos=1, packet_id=10 + i))
        assert isinstance(raw.recv(), Puback)
        raw.close()


def test_a_bad_file_keeps_the_previous_settings(serve: tuple[Serve, Path]) -> None:
    broker, config = serve
    (raw,) = clients(broker.port, 1)
    assert suback(raw, 1, "b/1") == 1
    config.write_text("max_subscriptions = -3\n")
    lines = hup(broker, "the previous settings stay")
    assert "max_subscriptions" in lines
    for i in range(2, 11):  # the limit of 10 still holds
        assert suback(raw, i, f"b/{i}") == 1
    assert suback(raw, 11, "b/11") == ReasonCode.QUOTA_EXCEEDED
    assert broker.proc is not None and broker.proc.poll() is None
    raw.close()

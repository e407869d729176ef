"""The connection's deadlines (protocol/keepalive.py) with a fake clock."""

from __future__ import annotations

from shardmq.protocol.keepalive import CONNECT_TIMEOUT, KEEP_ALIVE_TIMEOUT, KeepAlive


def test_connect_must_come_within_connect_timeout() -> None:
    ka = KeepAlive(100.0, 10.0)
    assert ka.deadline() == 110.0
    assert ka.check(109.9) is None
    ka.last_rx = 109.0  # bytes arriving do not extend the CONNECT deadline
    assert ka.check(110.0) == CONNECT_TIMEOUT


def test_silence_of_one_and_a_half_keep_alive_closes() -> None:
    ka = KeepAlive(0.0, 10.0)
    assert ka.connected(2.0, 60) == 92.0  # 1.5 x 60 [MQTT-3.1.2-24]
    assert ka.check(91.9) is None
    ka.last_rx = 50.0  # a PINGREQ (or anything) pushes it back
    assert ka.check(92.0) is None
    assert ka.deadline() == 140.0
    assert ka.check(140.0) == KEEP_ALIVE_TIMEOUT


def test_keep_alive_zero_never_times_out() -> None:
    ka = KeepAlive(0.0, 10.0)
    assert ka.connected(1.0, 0) is None  # [MQTT-3.1.2-21]
    assert ka.deadline() is None
    assert ka.check(1e9) is None

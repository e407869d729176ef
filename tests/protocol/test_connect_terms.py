"""The terms a CONNECT gets (protocol/connect.py), without sockets: session
expiry and keep alive for MQTT 5 and 3.1.1 against the settings."""

from __future__ import annotations

import pytest

from shardmq.protocol.constants import MQTT5, MQTT311
from shardmq.protocol.handlers.connect import negotiate
from shardmq.protocol.session import NEVER_EXPIRES


@pytest.mark.parametrize(
    ("version", "clean_start", "prop", "cap", "requested", "granted"),
    [
        (MQTT5, True, None, NEVER_EXPIRES, 0, 0),  # absent property: 0
        (MQTT5, False, 300, NEVER_EXPIRES, 300, 300),
        (MQTT5, False, 300, 60, 300, 60),  # capped, so CONNACK must say 60
        (MQTT5, False, NEVER_EXPIRES, 3600, NEVER_EXPIRES, 3600),
        (MQTT311, True, None, NEVER_EXPIRES, 0, 0),  # Clean Session 1
        (MQTT311, False, None, NEVER_EXPIRES, NEVER_EXPIRES, NEVER_EXPIRES),
        (MQTT311, False, None, 60, NEVER_EXPIRES, 60),
    ],
)
def test_session_expiry(
    version: int, clean_start: bool, prop: int | None, cap: int, requested: int, granted: int
) -> None:
    t = negotiate(
        version,
        clean_start,
        prop,
        30,
        max_session_expiry_interval=cap,
        server_keep_alive=None,
        max_keep_alive=65535,
    )
    assert (t.requested_expiry, t.session_expiry) == (requested, granted)
    assert t.expiry_changed is (requested != granted)


@pytest.mark.parametrize(
    ("version", "asked", "server_ka", "max_ka", "enforced", "told"),
    [
        (MQTT5, 30, None, 65535, 30, None),  # nothing to say
        (MQTT5, 30, 10, 65535, 10, 10),  # server_keep_alive wins, and is told
        (MQTT5, 0, 10, 65535, 10, 10),
        (MQTT5, 300, None, 120, 120, 120),  # over the limit: clamped, told
        (MQTT5, 0, None, 120, 120, 120),  # 0 is "no limit": not allowed under one
        (MQTT5, 0, None, 65535, 0, None),  # no limit: 0 stands [MQTT-3.1.2-21]
        (MQTT311, 30, 10, 65535, 30, None),  # cannot be told: its own is enforced
        (MQTT311, 300, None, 120, 300, None),  # (refusing it is the caller's choice)
        (MQTT311, 0, None, 120, 0, None),
    ],
)
def test_keep_alive(
    version: int, asked: int, server_ka: int | None, max_ka: int, enforced: int, told: int | None
) -> None:
    t = negotiate(
        version,
        False,
        60,
        asked,
        max_session_expiry_interval=NEVER_EXPIRES,
        server_keep_alive=server_ka,
        max_keep_alive=max_ka,
    )
    assert (t.keep_alive, t.server_keep_alive) == (enforced, told)

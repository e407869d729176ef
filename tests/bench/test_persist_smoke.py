"""Smoke test of bench/persist.py's offline-queue drain against an embedded
shardmq: persistent sessions keep what was queued for them while offline and
get all of it after reconnecting. Counts are tiny and nothing is timed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bench import persist
from tests.helpers import BrokerThread


def test_drain_delivers_every_queued_message(make_broker: Callable[..., BrokerThread]) -> None:
    bt = make_broker(max_queued_messages=1000)
    result = asyncio.run(persist._p2(bt.port, 2, 300))
    assert result["lost"] == 0, result
    assert result["sessions"] == 2 and result["messages_per_session"] == 300


def test_drain_counts_what_a_clean_session_loses(make_broker: Callable[..., BrokerThread]) -> None:
    """The same run against a broker that keeps 10 messages per session reports
    the rest as lost: the count is real, not assumed."""
    bt = make_broker(max_queued_messages=10)
    result = asyncio.run(persist._p2(bt.port, 1, 100, idle=0.5))
    assert result["lost"] == 90, result

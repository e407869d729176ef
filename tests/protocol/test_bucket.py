"""The token buckets behind the publish and connection rate limits, on a
clock moved by hand."""

from __future__ import annotations

import pytest

from shardmq.protocol.bucket import PublishRate, TokenBucket


def test_one_second_of_burst_then_refused_until_it_refills() -> None:
    b = TokenBucket(2, now=0.0)
    assert b.take(1, 0.0) and b.take(1, 0.0)
    assert b.take(1, 0.0)  # the balance was 0: still within, now in debt
    assert not b.take(1, 0.0)
    assert b.wait() == pytest.approx(1.0)  # -2 tokens at 2/s
    assert not b.take(1, 0.5)
    assert b.take(1, 2.0)  # refilled to 0 and beyond


def test_refill_stops_at_one_second_worth() -> None:
    b = TokenBucket(3, now=0.0)
    assert b.full(100.0) and b.tokens == 3


def test_a_message_larger_than_a_second_passes_and_the_next_waits() -> None:
    rate = PublishRate(0, 1000, now=0.0)
    assert rate.take(5000, 0.0)
    assert not rate.take(10, 1.0)
    assert rate.wait() == pytest.approx(3.01)
    assert rate.take(10, 10.0)


def test_both_limits_count_and_either_refuses() -> None:
    rate = PublishRate(1, 100, now=0.0)
    assert rate.take(10, 0.0) and rate.take(10, 0.0)  # the second goes into debt
    assert not rate.take(10, 0.0)  # messages in debt
    rate = PublishRate(100, 10, now=0.0)
    assert rate.take(50, 0.0)
    assert not rate.take(1, 0.0)  # bytes in debt
    assert PublishRate(0, 0, 0.0).take(10**9, 0.0)


def test_zero_or_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 0.0)

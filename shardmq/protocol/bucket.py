"""Token buckets for the limits per client: publish rate, connection rate.

Theory of operation
-------------------
A bucket holds up to one second's worth of tokens (``rate``) and refills at
``rate`` per second. ``take(cost, now)`` answers whether the caller was
within its limit *before* this cost, then charges it: the balance may go
below zero, so one message larger than a second's worth of bytes is let
through, and it is the next one, sent while the client is still in debt,
that is refused. ``wait`` is how long the debt takes to clear (the pause
when a limit slows a client rather than disconnecting it).

Pure: the caller passes ``now`` (any monotonic seconds), so tests move time
by hand and the hot path pays nothing when no limit is set (no bucket).
"""

from __future__ import annotations

__all__ = ["PublishRate", "TokenBucket"]


class TokenBucket:
    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0")
        self.rate = rate
        self.tokens = rate
        self.at = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.at
        if elapsed > 0:
            self.tokens = min(self.rate, self.tokens + elapsed * self.rate)
        self.at = now

    def take(self, cost: float, now: float) -> bool:
        """True if the balance was not negative before ``cost`` (within the
        limit); the cost is charged either way."""
        self._refill(now)
        ok = self.tokens >= 0
        self.tokens -= cost
        return ok

    def wait(self) -> float:
        """Seconds until the balance is back at zero (0 when it is)."""
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        """Whether it has refilled entirely (nothing to remember it for)."""
        self._refill(now)
        return self.tokens >= self.rate


class PublishRate:
    """Messages per second and bytes per second, either or both (None: no
    limit of that kind)."""

    __slots__ = ("messages", "bytes")

    def __init__(self, messages: float, bytes_: float, now: float) -> None:
        self.messages = TokenBucket(messages, now) if messages > 0 else None
        self.bytes = TokenBucket(bytes_, now) if bytes_ > 0 else None

    def take(self, size: int, now: float) -> bool:
        """True while the client is within both limits; charges one message
        of ``size`` payload bytes."""
        ok = True
        if self.messages is not None:
            ok = self.messages.take(1, now)
        if self.bytes is not None:
            ok = self.bytes.take(size, now) and ok
        return ok

    def wait(self) -> float:
        """Seconds until both balances are back at zero."""
        waits = [b.wait() for b in (self.messages, self.bytes) if b is not None]
        return max(waits, default=0.0)

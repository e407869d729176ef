"""A connection's deadline: CONNECT in time, then keep alive (sans-I/O).

Part of the session core that takes ``now`` as a parameter and reports its
next deadline, so the connection keeps one timer and re-arms it only when
that deadline comes: until the CONNECT is accepted the connection must get
there within ``connect_timeout``; after it, a connection silent for 1.5 x
its keep alive is closed ([MQTT-3.1.2-24]; keep alive 0: never
[MQTT-3.1.2-21]). Tested with a fake clock (tests/protocol/test_keepalive.py).
"""

from __future__ import annotations

#: what ``KeepAlive.check`` finds due
CONNECT_TIMEOUT = "connect timeout"
KEEP_ALIVE_TIMEOUT = "keep alive timeout"


class KeepAlive:
    __slots__ = ("last_rx", "window", "connect_by")

    def __init__(self, now: float, connect_timeout: float) -> None:
        #: when the peer last sent anything (the connection sets it on every read)
        self.last_rx = now
        #: seconds of silence allowed once connected; 0: no limit
        self.window = 0.0
        #: the CONNECT must be accepted by then (None once it is)
        self.connect_by: float | None = now + connect_timeout

    def connected(self, now: float, keep_alive: int) -> float | None:
        """The CONNECT was accepted with ``keep_alive`` seconds; returns the next
        deadline (None: nothing left to watch)."""
        self.connect_by = None
        self.window = keep_alive * 1.5
        self.last_rx = now
        return self.deadline()

    def deadline(self) -> float | None:
        if self.connect_by is not None:
            return self.connect_by
        return self.last_rx + self.window if self.window else None

    def check(self, now: float) -> str | None:
        """What is due at ``now``: CONNECT_TIMEOUT, KEEP_ALIVE_TIMEOUT or None."""
        if self.connect_by is not None:
            return CONNECT_TIMEOUT if now >= self.connect_by else None
        if self.window and now >= self.last_rx + self.window:
            return KEEP_ALIVE_TIMEOUT
        return None

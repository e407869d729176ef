"""What the broker grants a CONNECT: session expiry and keep alive (sans-I/O).

The first piece of the session core that leaves ``worker/connection.py``: a
pure function of the CONNECT and the settings, tested without sockets
(tests/protocol/test_connect_terms.py). The connection applies the result:
it attaches the session with ``session_expiry``, arms its keep-alive timer
for 1.5 x ``keep_alive`` and tells a v5 client what differs from its request
in CONNACK.
"""

from __future__ import annotations

from .constants import MQTT5
from .session import NEVER_EXPIRES

#: max_keep_alive at this value means "no limit"
NO_KEEP_ALIVE_LIMIT = 65535


class Terms:
    """The session expiry and keep alive granted to one CONNECT."""

    __slots__ = ("requested_expiry", "session_expiry", "keep_alive", "server_keep_alive")

    def __init__(
        self,
        requested_expiry: int,
        session_expiry: int,
        keep_alive: int,
        server_keep_alive: int | None,
    ) -> None:
        #: what the client asked for (3.1.1: Clean Session 0 is "never")
        self.requested_expiry = requested_expiry
        #: what it gets (never more than max_session_expiry_interval)
        self.session_expiry = session_expiry
        #: the keep alive enforced, in seconds; 0: none [MQTT-3.1.2-21]
        self.keep_alive = keep_alive
        #: v5: the Server Keep Alive CONNACK must carry (None: the client's stands)
        self.server_keep_alive = server_keep_alive

    @property
    def expiry_changed(self) -> bool:
        """CONNACK must state the Session Expiry Interval [MQTT-3.2.2.3.2]."""
        return self.session_expiry != self.requested_expiry


def negotiate(
    version: int,
    clean_start: bool,
    session_expiry_interval: int | None,
    keep_alive: int,
    *,
    max_session_expiry_interval: int,
    server_keep_alive: int | None,
    max_keep_alive: int,
) -> Terms:
    """The terms for a CONNECT.

    Session expiry: the v5 property (absent: 0), or for 3.1.1 0 with Clean
    Session 1 and "never" with Clean Session 0; capped by
    ``max_session_expiry_interval``.

    Keep alive: a v5 client gets ``server_keep_alive`` when it is set, else
    ``max_keep_alive`` when it asked for more (or for 0 while there is a
    limit), and is told so in CONNACK. A 3.1.1 client cannot be told, so its
    own keep alive is the one enforced (3.1.1 [MQTT-3.1.2-24]); refusing one
    over the limit is the caller's decision (setting ``v311_keep_alive``).
    """
    if version == MQTT5:
        requested = session_expiry_interval or 0
    else:
        requested = 0 if clean_start else NEVER_EXPIRES
    granted = min(requested, max_session_expiry_interval)
    told: int | None = None
    enforced = keep_alive
    if version == MQTT5:
        if server_keep_alive is not None:
            told = server_keep_alive
        elif keep_alive > max_keep_alive or (
            keep_alive == 0 and max_keep_alive < NO_KEEP_ALIVE_LIMIT
        ):
            told = max_keep_alive
        if told is not None:
            enforced = told
    return Terms(requested, granted, enforced, told)

"""CONNECT: the checks, the terms granted and the CONNACK properties (sans-I/O).

``check_connect`` refuses what the CONNECT itself makes unacceptable (an
empty 3.1.1 client id without Clean Session, a will the broker cannot
carry, a 3.1.1 keep alive over the limit); ``negotiate`` decides the session
expiry and keep alive; ``connack_properties`` builds what a v5 CONNACK must
state beyond the broker's fixed capabilities (``server_properties``). The
connection (worker/connection.py) runs the hooks and the client-id claim in
between and applies the result: it attaches the session with
``session_expiry``, arms its keep-alive deadline for 1.5 x ``keep_alive`` and
sends the CONNACK. Tested without sockets (tests/protocol/test_connect*.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ...errors import MQTTError
from ..constants import MQTT5, MQTT311, ReasonCode
from ..packets import Connect, Properties
from ..session import NEVER_EXPIRES
from ..topics import validate_topic_name

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


class ConnectLimits(Protocol):
    """The settings a CONNECT is checked against (``Config`` satisfies it)."""

    @property
    def maximum_qos(self) -> int: ...
    @property
    def retain_available(self) -> bool: ...
    @property
    def max_keep_alive(self) -> int: ...
    @property
    def v311_keep_alive(self) -> str: ...


class ServerLimits(Protocol):
    """The capabilities a v5 CONNACK states (``Config`` satisfies it)."""

    @property
    def max_packet_size(self) -> int: ...
    @property
    def receive_maximum(self) -> int: ...
    @property
    def maximum_qos(self) -> int: ...
    @property
    def retain_available(self) -> bool: ...
    @property
    def topic_alias_maximum(self) -> int: ...
    @property
    def wildcard_subscription_available(self) -> bool: ...
    @property
    def subscription_identifier_available(self) -> bool: ...
    @property
    def shared_subscription_available(self) -> bool: ...


def check_connect(packet: Connect, limits: ConnectLimits) -> None:
    """Raise the MQTTError that refuses ``packet``, if any (answered with
    CONNACK by the connection's one error mapping)."""
    version = packet.protocol_version
    if not packet.client_id and version == MQTT311 and not packet.clean_start:
        # [MQTT-3.1.3-8]
        raise MQTTError(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
    will = packet.will
    if will is not None:
        validate_topic_name(will.topic)
        if will.qos > limits.maximum_qos:
            raise MQTTError(ReasonCode.QOS_NOT_SUPPORTED, "will QoS not supported")
        if will.retain and not limits.retain_available:
            raise MQTTError(ReasonCode.RETAIN_NOT_SUPPORTED, "will retain not supported")
    if (
        version == MQTT311
        and limits.max_keep_alive < NO_KEEP_ALIVE_LIMIT
        and (packet.keep_alive > limits.max_keep_alive or packet.keep_alive == 0)
        and limits.v311_keep_alive == "refuse"
    ):
        # A 3.1.1 client cannot be told a shorter keep alive: refuse it
        # (return code 2, as Mosquitto's max_keepalive does) rather than cut
        # it off later; v311_keep_alive = "accept" lets it in with its own.
        raise MQTTError(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "keep alive above maximum")


def server_properties(limits: ServerLimits) -> Properties:
    """The CONNACK properties every v5 client gets: the real limits and
    capabilities of this broker (spec 3.2.2.3)."""
    props = Properties(maximum_packet_size=limits.max_packet_size)
    if limits.receive_maximum != 65535:
        props.receive_maximum = limits.receive_maximum
    if limits.maximum_qos < 2:
        props.maximum_qos = limits.maximum_qos
    if not limits.retain_available:
        props.retain_available = 0
    if limits.topic_alias_maximum:
        props.topic_alias_maximum = limits.topic_alias_maximum
    # stated even when available (the default), for clients that read the
    # property rather than assume its default
    props.wildcard_subscription_available = int(limits.wildcard_subscription_available)
    props.subscription_identifier_available = int(limits.subscription_identifier_available)
    props.shared_subscription_available = int(limits.shared_subscription_available)
    return props


def connack_properties(
    packet: Connect,
    terms: Terms,
    client_id: str,
    base: Callable[[], Properties],
    response_information: str | None,
    auth_method: str | None,
    auth_data: bytes | None,
) -> Properties | None:
    """The properties of a v5 CONNACK that must say more than ``base()``
    (the shared capabilities); None when the shared CONNACK serves."""
    props = packet.properties
    respond = bool(props.request_response_information and response_information)
    if not (
        terms.expiry_changed
        or not packet.client_id
        or terms.server_keep_alive is not None
        or respond
        or auth_method is not None
    ):
        return None
    out = base()
    if terms.expiry_changed:
        out.session_expiry_interval = terms.session_expiry
    if not packet.client_id:
        # only when the client sent an empty one [MQTT-3.2.2-16]
        out.assigned_client_identifier = client_id
    if terms.server_keep_alive is not None:
        out.server_keep_alive = terms.server_keep_alive
    if respond:
        out.response_information = (response_information or "") + client_id
    if auth_method is not None:
        out.authentication_method = auth_method
        if auth_data is not None:
            out.authentication_data = auth_data
    return out

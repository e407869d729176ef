"""MQTT control packets as plain data.

Every packet class has ``__slots__`` and a ``packet_type``; the codec in
``codec.py`` turns bytes into these objects and back. The same classes serve
MQTT 5.0 and 3.1.1: fields a version does not carry keep their defaults
(``properties`` empty, reason codes SUCCESS) when decoding that version and are
ignored when encoding it.

Strings are ``str``; payloads, passwords, correlation and authentication data
are ``bytes`` and are never decoded as text.
"""

from __future__ import annotations

import operator

from .constants import MQTT5, PacketType, ReasonCode


class Properties:
    """The v5 properties of one packet. Unset properties are ``None``.

    ``user_properties`` keeps every (key, value) pair in wire order, repeated
    keys included [MQTT-3.3.2-18]. ``subscription_identifiers`` is a list
    because a PUBLISH to a client may carry several.
    """

    __slots__ = (
        "payload_format_indicator",
        "message_expiry_interval",
        "content_type",
        "response_topic",
        "correlation_data",
        "subscription_identifiers",
        "session_expiry_interval",
        "assigned_client_identifier",
        "server_keep_alive",
        "authentication_method",
        "authentication_data",
        "request_problem_information",
        "will_delay_interval",
        "request_response_information",
        "response_information",
        "server_reference",
        "reason_string",
        "receive_maximum",
        "topic_alias_maximum",
        "topic_alias",
        "maximum_qos",
        "retain_available",
        "user_properties",
        "maximum_packet_size",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    )

    payload_format_indicator: int | None
    message_expiry_interval: int | None
    content_type: str | None
    response_topic: str | None
    correlation_data: bytes | None
    subscription_identifiers: list[int] | None
    session_expiry_interval: int | None
    assigned_client_identifier: str | None
    server_keep_alive: int | None
    authentication_method: str | None
    authentication_data: bytes | None
    request_problem_information: int | None
    will_delay_interval: int | None
    request_response_information: int | None
    response_information: str | None
    server_reference: str | None
    reason_string: str | None
    receive_maximum: int | None
    topic_alias_maximum: int | None
    topic_alias: int | None
    maximum_qos: int | None
    retain_available: int | None
    user_properties: list[tuple[str, str]] | None
    maximum_packet_size: int | None
    wildcard_subscription_available: int | None
    subscription_identifier_available: int | None
    shared_subscription_available: int | None

    def __init__(
        self,
        *,
        payload_format_indicator: int | None = None,
        message_expiry_interval: int | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        subscription_identifiers: list[int] | None = None,
        session_expiry_interval: int | None = None,
        assigned_client_identifier: str | None = None,
        server_keep_alive: int | None = None,
        authentication_method: str | None = None,
        authentication_data: bytes | None = None,
        request_problem_information: int | None = None,
        will_delay_interval: int | None = None,
        request_response_information: int | None = None,
        response_information: str | None = None,
        server_reference: str | None = None,
        reason_string: str | None = None,
        receive_maximum: int | None = None,
        topic_alias_maximum: int | None = None,
        topic_alias: int | None = None,
        maximum_qos: int | None = None,
        retain_available: int | None = None,
        user_properties: list[tuple[str, str]] | None = None,
        maximum_packet_size: int | None = None,
        wildcard_subscription_available: int | None = None,
        subscription_identifier_available: int | None = None,
        shared_subscription_available: int | None = None,
    ) -> None:
        # Straight-line stores: this runs for every decoded packet, and a loop
        # of setattr calls over the slots costs ten times as much.
        self.payload_format_indicator = payload_format_indicator
        self.message_expiry_interval = message_expiry_interval
        self.content_type = content_type
        self.response_topic = response_topic
        self.correlation_data = correlation_data
        self.subscription_identifiers = subscription_identifiers
        self.session_expiry_interval = session_expiry_interval
        self.assigned_client_identifier = assigned_client_identifier
        self.server_keep_alive = server_keep_alive
        self.authentication_method = authentication_method
        self.authentication_data = authentication_data
        self.request_problem_information = request_problem_information
        self.will_delay_interval = will_delay_interval
        self.request_response_information = request_response_information
        self.response_information = response_information
        self.server_reference = server_reference
        self.reason_string = reason_string
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.topic_alias = topic_alias
        self.maximum_qos = maximum_qos
        self.retain_available = retain_available
        self.user_properties = user_properties
        self.maximum_packet_size = maximum_packet_size
        self.wildcard_subscription_available = wildcard_subscription_available
        self.subscription_identifier_available = subscription_identifier_available
        self.shared_subscription_available = shared_subscription_available

    def items(self) -> list[tuple[str, object]]:
        """The set properties as (name, value) pairs, in slot order."""
        values = _ALL_PROPERTIES(self)
        if values.count(None) == _PROPERTY_COUNT:
            return []
        return [(n, v) for n, v in zip(self.__slots__, values, strict=True) if v is not None]

    def copy(self) -> Properties:
        new = Properties()
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, list):
                value = list(value)
            object.__setattr__(new, name, value)
        return new

    def __bool__(self) -> bool:
        # every slot read at once in C: this is on the path of every message
        return _ALL_PROPERTIES(self).count(None) != _PROPERTY_COUNT

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Properties):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"Properties({inner})"


_ALL_PROPERTIES = operator.attrgetter(*Properties.__slots__)
_PROPERTY_COUNT = len(Properties.__slots__)


class _Packet:
    __slots__: tuple[str, ...] = ()
    packet_type: PacketType
    #: the fields compared and shown (a class whose properties are made on
    #: first read names ``properties`` here, not its slot)
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names = self._fields or self.__slots__
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def __repr__(self) -> str:
        names = self._fields or self.__slots__
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__name__}({inner})"


class _LazyProperties(_Packet):
    """A packet that often carries no properties: its ``Properties`` is made
    the first time it is read (an empty one costs more than the packet);
    ``_properties`` is None until then."""

    __slots__ = ("_properties",)
    _properties: Properties | None

    @property
    def properties(self) -> Properties:
        props = self._properties
        if props is None:
            props = self._properties = Properties()
        return props

    @properties.setter
    def properties(self, value: Properties) -> None:
        self._properties = value


class Will(_Packet):
    """The will message carried in a CONNECT."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties")

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties if properties is not None else Properties()


class Connect(_Packet):
    packet_type = PacketType.CONNECT
    __slots__ = (
        "protocol_name",
        "protocol_version",
        "clean_start",
        "keep_alive",
        "client_id",
        "will",
        "username",
        "password",
        "properties",
    )

    def __init__(
        self,
        client_id: str = "",
        protocol_version: int = MQTT5,
        clean_start: bool = True,
        keep_alive: int = 60,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        properties: Properties | None = None,
        protocol_name: str = "MQTT",
    ) -> None:
        self.protocol_name = protocol_name
        self.protocol_version = protocol_version
        self.clean_start = clean_start
        self.keep_alive = keep_alive
        self.client_id = client_id
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties if properties is not None else Properties()


class Connack(_Packet):
    packet_type = PacketType.CONNACK
    __slots__ = ("session_present", "reason_code", "properties")

    def __init__(
        self,
        session_present: bool = False,
        reason_code: int = ReasonCode.SUCCESS,
        properties: Properties | None = None,
    ) -> None:
        self.session_present = session_present
        #: A v5 reason code. The codec maps it to a 3.1.1 return code.
        self.reason_code = reason_code
        self.properties = properties if properties is not None else Properties()


class Publish(_LazyProperties):
    packet_type = PacketType.PUBLISH
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id")
    _fields = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: Properties | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self._properties = properties


class _Ack(_LazyProperties):
    """PUBACK, PUBREC, PUBREL and PUBCOMP share one shape."""

    __slots__ = ("packet_id", "reason_code")
    _fields = ("packet_id", "reason_code", "properties")

    def __init__(
        self,
        packet_id: int,
        reason_code: int = ReasonCode.SUCCESS,
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.reason_code = reason_code
        self._properties = properties


class Puback(_Ack):
    packet_type = PacketType.PUBACK
    __slots__ = ()


class Pubrec(_Ack):
    packet_type = PacketType.PUBREC
    __slots__ = ()


class Pubrel(_Ack):
    packet_type = PacketType.PUBREL
    __slots__ = ()


class Pubcomp(_Ack):
    packet_type = PacketType.PUBCOMP
    __slots__ = ()


class Subscription(_Packet):
    """One topic filter of a SUBSCRIBE with its subscription options."""

    __slots__ = ("topic_filter", "qos", "no_local", "retain_as_published", "retain_handling")

    def __init__(
        self,
        topic_filter: str,
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling


class Subscribe(_Packet):
    packet_type = PacketType.SUBSCRIBE
    __slots__ = ("packet_id", "subscriptions", "properties")

    def __init__(
        self,
        packet_id: int,
        subscriptions: list[Subscription],
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.subscriptions = subscriptions
        self.properties = properties if properties is not None else Properties()


class Suback(_Packet):
    packet_type = PacketType.SUBACK
    __slots__ = ("packet_id", "reason_codes", "properties")

    def __init__(
        self,
        packet_id: int,
        reason_codes: list[int],
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        #: v5 reason codes; for 3.1.1 the codec writes 0x80 for any failure.
        self.reason_codes = reason_codes
        self.properties = properties if properties is not None else Properties()


class Unsubscribe(_Packet):
    packet_type = PacketType.UNSUBSCRIBE
    __slots__ = ("packet_id", "topic_filters", "properties")

    def __init__(
        self,
        packet_id: int,
        topic_filters: list[str],
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        self.topic_filters = topic_filters
        self.properties = properties if properties is not None else Properties()


class Unsuback(_Packet):
    packet_type = PacketType.UNSUBACK
    __slots__ = ("packet_id", "reason_codes", "properties")

    def __init__(
        self,
        packet_id: int,
        reason_codes: list[int] | None = None,
        properties: Properties | None = None,
    ) -> None:
        self.packet_id = packet_id
        #: v5 only; a 3.1.1 UNSUBACK has no payload.
        self.reason_codes = reason_codes if reason_codes is not None else []
        self.properties = properties if properties is not None else Properties()


class Pingreq(_Packet):
    packet_type = PacketType.PINGREQ
    __slots__ = ()


class Pingresp(_Packet):
    packet_type = PacketType.PINGRESP
    __slots__ = ()


class Disconnect(_Packet):
    packet_type = PacketType.DISCONNECT
    __slots__ = ("reason_code", "properties")

    def __init__(
        self,
        reason_code: int = ReasonCode.NORMAL_DISCONNECTION,
        properties: Properties | None = None,
    ) -> None:
        self.reason_code = reason_code
        self.properties = properties if properties is not None else Properties()


class Auth(_Packet):
    packet_type = PacketType.AUTH
    __slots__ = ("reason_code", "properties")

    def __init__(
        self,
        reason_code: int = ReasonCode.SUCCESS,
        properties: Properties | None = None,
    ) -> None:
        self.reason_code = reason_code
        self.properties = properties if properties is not None else Properties()


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

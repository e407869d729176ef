"""Protocol constants: packet types, protocol levels and reason codes.

Names follow the MQTT 5.0 specification (section 2.4 for reason codes) so a
reader can grep the spec for them.
"""

from __future__ import annotations

from enum import IntEnum

MQTT311 = 4
MQTT5 = 5

#: The largest packet the wire format can carry: 1 byte fixed header, 4 bytes
#: of remaining length and 268,435,455 bytes of body.
MAX_PACKET_SIZE_LIMIT = 268_435_460
MAX_REMAINING_LENGTH = 268_435_455


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ReasonCode(IntEnum):
    """MQTT 5.0 reason codes (spec table 2-6)."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnackCode311(IntEnum):
    """MQTT 3.1.1 CONNACK return codes (spec 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USER_NAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: How a v5 CONNACK reason code is expressed to a 3.1.1 client.
CONNACK_V5_TO_311: dict[int, int] = {
    ReasonCode.SUCCESS: ConnackCode311.ACCEPTED,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION: ConnackCode311.UNACCEPTABLE_PROTOCOL_VERSION,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: ConnackCode311.IDENTIFIER_REJECTED,
    ReasonCode.SERVER_UNAVAILABLE: ConnackCode311.SERVER_UNAVAILABLE,
    ReasonCode.SERVER_BUSY: ConnackCode311.SERVER_UNAVAILABLE,
    ReasonCode.SERVER_SHUTTING_DOWN: ConnackCode311.SERVER_UNAVAILABLE,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: ConnackCode311.BAD_USER_NAME_OR_PASSWORD,
    ReasonCode.NOT_AUTHORIZED: ConnackCode311.NOT_AUTHORIZED,
    ReasonCode.BANNED: ConnackCode311.NOT_AUTHORIZED,
    ReasonCode.BAD_AUTHENTICATION_METHOD: ConnackCode311.NOT_AUTHORIZED,
}


class PropertyId(IntEnum):
    """MQTT 5.0 property identifiers (spec 2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(IntEnum):
    BYTE = 1
    TWO_BYTE_INT = 2
    FOUR_BYTE_INT = 3
    VARIABLE_BYTE_INT = 4
    UTF8_STRING = 5
    BINARY = 6
    UTF8_PAIR = 7


_P = PacketType
#: Will properties are carried in the CONNECT payload; they get a pseudo
#: packet slot of their own so the table can say which properties are legal.
WILL = 0

#: property id -> (attribute name on Properties, type, packet types allowed)
PROPERTY_TABLE: dict[int, tuple[str, PropertyType, frozenset[int]]] = {
    0x01: ("payload_format_indicator", PropertyType.BYTE, frozenset({_P.PUBLISH, WILL})),
    0x02: ("message_expiry_interval", PropertyType.FOUR_BYTE_INT, frozenset({_P.PUBLISH, WILL})),
    0x03: ("content_type", PropertyType.UTF8_STRING, frozenset({_P.PUBLISH, WILL})),
    0x08: ("response_topic", PropertyType.UTF8_STRING, frozenset({_P.PUBLISH, WILL})),
    0x09: ("correlation_data", PropertyType.BINARY, frozenset({_P.PUBLISH, WILL})),
    0x0B: (
        "subscription_identifiers",
        PropertyType.VARIABLE_BYTE_INT,
        frozenset({_P.PUBLISH, _P.SUBSCRIBE}),
    ),
    0x11: (
        "session_expiry_interval",
        PropertyType.FOUR_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK, _P.DISCONNECT}),
    ),
    0x12: ("assigned_client_identifier", PropertyType.UTF8_STRING, frozenset({_P.CONNACK})),
    0x13: ("server_keep_alive", PropertyType.TWO_BYTE_INT, frozenset({_P.CONNACK})),
    0x15: (
        "authentication_method",
        PropertyType.UTF8_STRING,
        frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}),
    ),
    0x16: (
        "authentication_data",
        PropertyType.BINARY,
        frozenset({_P.CONNECT, _P.CONNACK, _P.AUTH}),
    ),
    0x17: ("request_problem_information", PropertyType.BYTE, frozenset({_P.CONNECT})),
    0x18: ("will_delay_interval", PropertyType.FOUR_BYTE_INT, frozenset({WILL})),
    0x19: ("request_response_information", PropertyType.BYTE, frozenset({_P.CONNECT})),
    0x1A: ("response_information", PropertyType.UTF8_STRING, frozenset({_P.CONNACK})),
    0x1C: (
        "server_reference",
        PropertyType.UTF8_STRING,
        frozenset({_P.CONNACK, _P.DISCONNECT}),
    ),
    0x1F: (
        "reason_string",
        PropertyType.UTF8_STRING,
        frozenset(
            {
                _P.CONNACK,
                _P.PUBACK,
                _P.PUBREC,
                _P.PUBREL,
                _P.PUBCOMP,
                _P.SUBACK,
                _P.UNSUBACK,
                _P.DISCONNECT,
                _P.AUTH,
            }
        ),
    ),
    0x21: ("receive_maximum", PropertyType.TWO_BYTE_INT, frozenset({_P.CONNECT, _P.CONNACK})),
    0x22: (
        "topic_alias_maximum",
        PropertyType.TWO_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK}),
    ),
    0x23: ("topic_alias", PropertyType.TWO_BYTE_INT, frozenset({_P.PUBLISH})),
    0x24: ("maximum_qos", PropertyType.BYTE, frozenset({_P.CONNACK})),
    0x25: ("retain_available", PropertyType.BYTE, frozenset({_P.CONNACK})),
    0x26: ("user_properties", PropertyType.UTF8_PAIR, frozenset(set(_P) | {WILL})),
    0x27: (
        "maximum_packet_size",
        PropertyType.FOUR_BYTE_INT,
        frozenset({_P.CONNECT, _P.CONNACK}),
    ),
    0x28: ("wildcard_subscription_available", PropertyType.BYTE, frozenset({_P.CONNACK})),
    0x29: ("subscription_identifier_available", PropertyType.BYTE, frozenset({_P.CONNACK})),
    0x2A: ("shared_subscription_available", PropertyType.BYTE, frozenset({_P.CONNACK})),
}

#: Properties that may appear more than once [MQTT-2.2.2-1 and 3.3.2.3.8].
MULTI_VALUED = frozenset({PropertyId.USER_PROPERTY, PropertyId.SUBSCRIPTION_IDENTIFIER})

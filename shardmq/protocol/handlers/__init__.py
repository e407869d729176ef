"""The session core's inbound packet handlers, one module per packet (sans-I/O).

Each takes the decoded packet and the state it needs and returns what the
connection must do, raising ``ProtocolViolation`` (or ``MQTTError`` before
CONNACK) where the specification says refuse or close: ``connect`` (checks,
terms, CONNACK properties), ``publish`` (inbound checks, topic aliases,
QoS 2 duplicates), ``acks`` (PUBACK, PUBREC, PUBREL, PUBCOMP), ``subscribe``
(SUBSCRIBE and UNSUBSCRIBE), ``disconnect`` and ``auth``.
The connection (worker/connection.py) applies the result: writes, routing,
hooks and the store stay there.
"""

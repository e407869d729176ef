"""The session core's inbound packet handlers, one module per packet (sans-I/O).

Each takes the decoded packet and the state it needs and returns what the
connection must do, raising ``ProtocolViolation`` where the specification
says close. The connection (worker/connection.py) applies the result: writes,
routing, hooks and the store stay there.
"""

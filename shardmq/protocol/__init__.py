"""Sans-I/O MQTT: packets, codec, properties, reason codes, topic rules.

Nothing in this package imports asyncio, sockets or clocks; callers pass in
bytes and times and get back packets and bytes.
"""

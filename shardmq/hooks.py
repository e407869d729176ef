"""Hooks: the points where an application decides what the broker does.

A hook is an ``async def`` taking ``(client, packet)``:

- ``client`` is a :class:`ClientHandle` (client id, username, protocol version,
  remote address, worker id, and ``client.broker`` for the broker's API);
- ``packet`` is the decoded packet from :mod:`shardmq.protocol.packets`.

Deciding hooks (``on_connect``, ``on_publish``, ``on_subscribe``,
``on_unsubscribe``, ``on_pubrel``) return ``True`` (or ``None``) to allow and
``False`` to refuse with the packet's "not authorized" reason code, or raise a
:class:`~shardmq.errors.HookError` subclass carrying any reason code and reason
string. ``on_subscribe`` may also return a list with one entry per
subscription: ``True``/``False`` or a granted QoS / reason code.

Notifying hooks (``on_disconnect``, ``on_puback``, ``on_pubrec``,
``on_pubcomp``, ``on_ping``) have their return value ignored; raising
:class:`~shardmq.errors.DisconnectError` from any hook ends the connection.

``on_auth`` runs the enhanced authentication exchange (MQTT 5.0 section 4.12).
It receives the CONNECT (first round) or the client's AUTH packet and returns
``True``/:class:`Success` to accept, ``False`` to refuse, or :class:`Continue`
with the next authentication data to send the client (AUTH 0x18). The same hook
serves re-authentication (AUTH 0x19 after CONNACK).

With no hook registered for a packet type, the broker never awaits or calls
anything for it: the hot path pays nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

HOOK_NAMES = (
    "on_connect",
    "on_disconnect",
    "on_publish",
    "on_puback",
    "on_pubrec",
    "on_pubrel",
    "on_pubcomp",
    "on_subscribe",
    "on_unsubscribe",
    "on_ping",
    "on_auth",
)

Hook = Callable[..., Awaitable[Any]]


class Continue:
    """Returned by ``on_auth``: go on with another round, sending ``data``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class Success:
    """Returned by ``on_auth``: authentication succeeded; ``data`` is sent too."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class ClientHandle:
    """What a hook knows about the client that sent the packet."""

    __slots__ = (
        "client_id",
        "username",
        "protocol_version",
        "remote_address",
        "worker_id",
        "broker",
        "certificate_subject",
    )

    def __init__(
        self,
        client_id: str,
        username: str | None,
        protocol_version: int,
        remote_address: tuple[str, int] | None,
        worker_id: int,
        broker: Any,
    ) -> None:
        self.client_id = client_id
        self.username = username
        self.protocol_version = protocol_version
        self.remote_address = remote_address
        self.worker_id = worker_id
        self.broker = broker
        self.certificate_subject: Any = None

    def __repr__(self) -> str:
        return (
            f"ClientHandle(client_id={self.client_id!r}, username={self.username!r}, "
            f"protocol_version={self.protocol_version}, remote_address={self.remote_address!r}, "
            f"worker_id={self.worker_id})"
        )


class Hooks:
    """The registered hooks; an attribute is ``None`` when nothing is registered."""

    __slots__ = HOOK_NAMES

    on_connect: Hook | None
    on_disconnect: Hook | None
    on_publish: Hook | None
    on_puback: Hook | None
    on_pubrec: Hook | None
    on_pubrel: Hook | None
    on_pubcomp: Hook | None
    on_subscribe: Hook | None
    on_unsubscribe: Hook | None
    on_ping: Hook | None
    on_auth: Hook | None

    def __init__(self) -> None:
        for name in HOOK_NAMES:
            setattr(self, name, None)

    def register(self, name: str, fn: Hook) -> Hook:
        if name not in HOOK_NAMES:
            raise ValueError(f"unknown hook {name!r}; known hooks: {', '.join(HOOK_NAMES)}")
        setattr(self, name, fn)
        return fn

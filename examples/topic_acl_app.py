"""Per-user topic permissions on publish and subscribe.

Run it with the broker's ``--app`` option, from the repository root::

    shardmq serve --app examples.topic_acl_app:setup
    # or, without installing:  python -m shardmq serve --app examples.topic_acl_app:setup

``ACL`` maps each user name to the topic filters it may publish to and the
filters it may subscribe to. A client whose user name is not listed is refused
at CONNECT. This example checks user names only; put it together with
``examples/auth_app.py`` (register both hooks in one ``setup``) to check
passwords too.

What a client sees when it oversteps:

* PUBLISH QoS 1/2 to a forbidden topic: PUBACK/PUBREC 0x87 (not authorized);
  QoS 0: the message is dropped. Either way nobody receives it.
* SUBSCRIBE to a filter wider than allowed: that entry of the SUBACK is 0x87
  (0x80 for 3.1.1); the other entries of the same SUBSCRIBE are granted.

Try it with the mosquitto clients::

    mosquitto_sub -u alice -t 'sensors/#' -v               # granted
    mosquitto_pub -u bob -t sensors/bob/temp -m 21 -q 1    # allowed, alice gets it
    mosquitto_pub -u bob -t sensors/alice/temp -m 0 -q 1   # refused with 0x87
"""

from __future__ import annotations

from typing import Any

from shardmq.broker import Broker
from shardmq.errors import ConnectError, PublishError
from shardmq.protocol.constants import ReasonCode

ACL: dict[str, dict[str, list[str]]] = {
    "alice": {"publish": ["sensors/alice/#"], "subscribe": ["sensors/#"]},
    "bob": {"publish": ["sensors/bob/#"], "subscribe": ["sensors/bob/#", "alerts/+"]},
}


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` (a topic name) matches ``topic_filter``."""
    return covers(topic_filter, topic)


def covers(allowed: str, requested: str) -> bool:
    """True when every topic ``requested`` can match is also matched by ``allowed``.

    ``requested`` may be a topic name or a filter: ``sensors/#`` covers
    ``sensors/+/temp``, but ``sensors/+`` does not cover ``sensors/#``.
    """
    a_levels = allowed.split("/")
    r_levels = requested.split("/")
    for i, a in enumerate(a_levels):
        if a == "#":
            # '#' at the first level does not match '$' topics [MQTT-4.7.2-1]
            return not (i == 0 and requested.startswith("$"))
        if i >= len(r_levels):
            return False
        r = r_levels[i]
        if a == "+":
            if r == "#" or (i == 0 and r.startswith("$")):
                return False
            continue
        if a != r:
            return False
    return len(a_levels) == len(r_levels)


def _rights(client: Any, kind: str) -> list[str]:
    return ACL.get(client.username or "", {}).get(kind, [])


async def known_user(client: Any, packet: Any) -> bool:
    """on_connect: only users with an ACL entry may connect."""
    if packet.username not in ACL:
        raise ConnectError(ReasonCode.NOT_AUTHORIZED, "no permissions for this user")
    return True


async def check_publish(client: Any, packet: Any) -> bool:
    """on_publish: the topic must be covered by one of the user's publish filters."""
    if any(topic_matches(f, packet.topic) for f in _rights(client, "publish")):
        return True
    raise PublishError(ReasonCode.NOT_AUTHORIZED, f"may not publish to {packet.topic}")


async def check_subscribe(client: Any, packet: Any) -> list[bool]:
    """on_subscribe: one verdict per requested filter."""
    allowed = _rights(client, "subscribe")
    verdicts = []
    for sub in packet.subscriptions:
        wanted = sub.topic_filter
        if wanted.startswith("$share/"):
            # $share/{group}/{filter}: the permission is about the filter
            wanted = wanted.split("/", 2)[2] if wanted.count("/") >= 2 else wanted
        verdicts.append(any(covers(f, wanted) for f in allowed))
    return verdicts


def setup(broker: Broker) -> None:
    """``--app examples.topic_acl_app:setup``: register the hooks on ``broker``."""
    broker.add_hook("on_connect", known_user)
    broker.add_hook("on_publish", check_publish)
    broker.add_hook("on_subscribe", check_subscribe)

"""Username/password authentication against a dict.

Run it with the broker's ``--app`` option, from the repository root::

    shardmq serve --app examples.auth_app:setup
    # or, without installing:  python -m shardmq serve --app examples.auth_app:setup

Either attribute works: ``setup`` is a function that registers the hook on the
broker ``shardmq serve`` builds, and ``app`` is a ready-made :class:`Broker` whose
hooks are taken over (``--app examples.auth_app:app``).

Then, for instance with the mosquitto clients::

    mosquitto_pub -u alice -P wonderland -t hello -m hi     # accepted
    mosquitto_pub -u alice -P guess -t hello -m hi          # refused: bad user name or password

A real deployment keeps salted password hashes, not plain passwords; the
comparison below is the part to keep (``hmac.compare_digest`` takes the same
time whatever the input, so it leaks nothing about the stored password).
"""

from __future__ import annotations

import hmac
from typing import Any

from shardmq.broker import Broker
from shardmq.errors import ConnectError
from shardmq.protocol.constants import ReasonCode

USERS: dict[str, bytes] = {
    "alice": b"wonderland",
    "bob": b"builder",
}


async def check_credentials(client: Any, packet: Any) -> bool:
    """on_connect: accept only a known user name with its password.

    A refusal is CONNACK 0x86 (v5) or return code 4 (3.1.1), with a reason
    string for v5 clients that asked for problem information.
    """
    expected = USERS.get(packet.username) if packet.username is not None else None
    password = packet.password if packet.password is not None else b""
    if expected is None or not hmac.compare_digest(password, expected):
        raise ConnectError(
            ReasonCode.BAD_USER_NAME_OR_PASSWORD, "unknown user name or wrong password"
        )
    return True


def setup(broker: Broker) -> None:
    """``--app examples.auth_app:setup``: register the hook on ``broker``."""
    broker.add_hook("on_connect", check_credentials)


#: ``--app examples.auth_app:app``: a Broker whose hooks the served broker takes over.
app = Broker()
app.on_connect(check_credentials)

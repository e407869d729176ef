"""Our ACL decisions against a real mosquitto reading the same ACL file.

Every case publishes at QoS 1 to mosquitto as some client and compares the
PUBACK (0x87 Not authorized or not) with ``ClientAcl.may_publish``. The
write path exercises what read shares with it in mosquitto's check: which
rules apply to whom, their order, deny first, patterns and their
substitution.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardmq.auth.acl import AclFile, ClientAcl
from shardmq.auth.passwd import PasswordFile
from tests.auth.mosquitto import Mosquitto, publish_reason_codes, tool

pytestmark = pytest.mark.skipif(
    tool("mosquitto") is None, reason="mosquitto is not installed (Debian package mosquitto)"
)

NOT_AUTHORIZED = 0x87

ACL = """\
# before any user: anonymous clients only to mosquitto, everyone to shardmq
topic write open/#
topic write both/#
pattern write pat/%c
user alice
topic write alice/#
topic write both/#
topic deny alice/no/#
topic write alice/read-only
topic read alice/read-only
topic read reader/#
user ev+il
topic write evil/#
user bob
pattern write pu/%u/%c
pattern deny pat/locked
pattern write pat/+
pattern write mixed/%u-x
topic write $SYS/#
"""

USERS = {"alice": "pa", "bob": "pb", "carol": "pc", "ev+il": "pe"}

TOPICS = [
    "open/x",
    "both/x",
    "alice/x",
    "alice/no/x",
    "alice/nothing",
    "alice/read-only",
    "reader/x",
    "evil/x",
    "pat/c1",
    "pat/c2",
    "pat/locked",
    "pu/alice/c1",
    "pu/bob/c1",
    "pu/%u/c1",
    "mixed/alice-x",
    "mixed/bob-x",
    "$SYS/broker/x",
    "$SYS/broker/connection/b/state",
]

CLIENTS: list[tuple[str | None, str]] = [
    (None, "c1"),
    (None, "c+1"),
    ("alice", "c1"),
    ("alice", "c2"),
    ("bob", "c1"),
    ("carol", "c1"),
    ("carol", "c#"),
    ("ev+il", "c1"),
]


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    directory = tmp_path_factory.mktemp("mosquitto-acl")
    passwords = PasswordFile()
    for user, password in USERS.items():
        passwords.set(user, password, iterations=1)  # fast: only the ACL is under test
    passwords.save(directory / "passwd")
    (directory / "acl").write_text(ACL, encoding="utf-8")
    broker = Mosquitto(
        directory,
        "allow_anonymous true",
        f"password_file {directory / 'passwd'}",
        f"acl_file {directory / 'acl'}",
    ).start()
    yield broker
    broker.stop()


@pytest.mark.parametrize(("username", "client_id"), CLIENTS, ids=lambda v: str(v))
def test_publish_decisions_match_mosquitto(
    mosquitto: Mosquitto, username: str | None, client_id: str
) -> None:
    password = USERS.get(username) if username is not None else None
    codes = publish_reason_codes(mosquitto.port, username, password, client_id, TOPICS)
    theirs = {topic: code != NOT_AUTHORIZED for topic, code in zip(TOPICS, codes, strict=True)}
    parsed = AclFile.parse(ACL)
    acl = parsed.for_client(username, client_id)
    ours = {topic: acl.may_publish(topic) for topic in TOPICS}
    # The one intended difference: shardmq applies the lines before the first
    # "user" to clients with a username too (README, "Authentication and
    # access control"). None of this file's user blocks denies what they
    # grant, so a named client may publish where mosquitto lets it, or where
    # those general lines do.
    general = ClientAcl(list(parsed.general))
    expected = {
        topic: allowed or (username is not None and general.may_publish(topic))
        for topic, allowed in theirs.items()
    }
    assert ours == expected
    # Not vacuous: each client but the one whose "#" turns patterns off may
    # publish somewhere, and nobody everywhere.
    assert any(theirs.values()) is (client_id != "c#")
    assert not all(theirs.values())

"""Access control from files: Mosquitto's password file and ACL file, through
real sockets (paho-mqtt, and raw packets where the exact code matters)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shardmq.auth.passwd import PasswordFile
from shardmq.protocol.constants import ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers import BrokerThread, Client, RawClient, expect

Factory = Callable[..., BrokerThread]
ClientFactory = Callable[..., Client]

USERS = {"alice": "wonderland", "bob": "builder"}
ACL = """\
# lines before the first user line: every client (Mosquitto: anonymous only)
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret
topic read $SYS/#

user bob
topic write sensors/bob/#
topic read public/#

pattern readwrite clients/%u/#
pattern read devices/%c/cmd
"""


def password_file(path: Path, users: dict[str, str] = USERS) -> Path:
    pw = PasswordFile()
    for user, password in users.items():
        pw.set(user, password)
    pw.save(path)
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return password_file(tmp_path / "passwd"), acl


@pytest.fixture
def secured(make_broker: Factory, files: tuple[Path, Path]) -> BrokerThread:
    passwd, acl = files
    return make_broker(password_file=str(passwd), acl_file=str(acl))


def raw_connack(port: int, version: int, username: str | None, password: bytes | None) -> Connack:
    raw = RawClient(port, version)
    raw.send_packet(Connect("c", protocol_version=version, username=username, password=password))
    ack = expect(raw, Connack)
    assert raw.closed() or ack.reason_code == ReasonCode.SUCCESS
    raw.sock.close()
    return ack


def login(clients: ClientFactory, bt: BrokerThread, user: str, **kw: Any) -> Client:
    c = clients(bt.port, username=user, password=USERS[user], **kw)
    c.connect()
    return c


# -- password file ------------------------------------------------------------------


def test_right_password_connects(secured: BrokerThread, version: int) -> None:
    ack = raw_connack(secured.port, version, "alice", b"wonderland")
    assert ack.reason_code == ReasonCode.SUCCESS


def test_wrong_password_and_unknown_user_get_the_same_answer(
    secured: BrokerThread, version: int
) -> None:
    """CONNACK 0x86 (3.1.1: return code 4, decoded here as 0x86) for both, so
    the answer does not tell which user names exist."""
    wrong = raw_connack(secured.port, version, "alice", b"nope")
    unknown = raw_connack(secured.port, version, "mallory", b"wonderland")
    assert wrong.reason_code == unknown.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    stats = secured.call(lambda: secured.broker._shard.stats.auth_failures)
    assert stats == 2


def test_anonymous_refused_once_a_password_file_is_set(secured: BrokerThread, version: int) -> None:
    ack = raw_connack(secured.port, version, None, None)
    assert ack.reason_code == ReasonCode.NOT_AUTHORIZED  # 3.1.1: return code 5


def test_allow_anonymous_set_explicitly_lets_them_in(
    make_broker: Factory, files: tuple[Path, Path], version: int
) -> None:
    passwd, _ = files
    bt = make_broker(password_file=str(passwd), allow_anonymous=True)
    assert raw_connack(bt.port, version, None, None).reason_code == ReasonCode.SUCCESS
    # a user who gives a name still needs the right password
    bad = raw_connack(bt.port, version, "alice", b"nope")
    assert bad.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD


def test_a_slow_hash_does_not_stall_other_clients(
    make_broker: Factory, tmp_path: Path, clients: ClientFactory
) -> None:
    """PBKDF2 runs off the event loop: while a CONNECT with a costly hash is
    being checked, a connected client's messages keep flowing."""
    pw = PasswordFile()
    pw.set("slow", "pw", iterations=2_000_000)
    pw.set("fast", "pw")
    pw.save(tmp_path / "passwd")
    bt = make_broker(password_file=str(tmp_path / "passwd"))
    fast = clients(bt.port, username="fast", password="pw")
    fast.connect()
    fast.subscribe("t", 1)
    slow = RawClient(bt.port, 5)
    slow.send_packet(Connect("slow", username="slow", password=b"pw"))
    # the loop answers while the hash is computed (a thread does it)
    assert fast.publish("t", b"during", qos=1).value == 0
    assert fast.get().payload == b"during"
    ack = expect(slow, Connack)
    assert ack.reason_code == ReasonCode.SUCCESS


# -- ACL file -----------------------------------------------------------------------


def test_denied_publish_gets_0x87_and_reaches_nobody(
    secured: BrokerThread, clients: ClientFactory
) -> None:
    watcher = login(clients, secured, "alice")
    watcher.subscribe("sensors/#", 1)
    bob = login(clients, secured, "bob")
    assert bob.publish("sensors/alice/t", b"no", qos=1).value == ReasonCode.NOT_AUTHORIZED
    assert bob.publish("sensors/bob/t", b"yes", qos=1).value == 0
    assert watcher.get().payload == b"yes"
    watcher.expect_nothing()


def test_denied_qos0_publish_is_dropped_and_counted(
    secured: BrokerThread, clients: ClientFactory
) -> None:
    watcher = login(clients, secured, "alice")
    watcher.subscribe("sensors/#", 0)
    bob = login(clients, secured, "bob")
    before = secured.call(lambda: secured.broker._shard.stats.messages_dropped)
    bob.publish("sensors/alice/t", b"no", qos=0)
    bob.publish("sensors/bob/t", b"yes", qos=0)
    assert watcher.get().payload == b"yes"
    after = secured.call(lambda: secured.broker._shard.stats.messages_dropped)
    assert after == before + 1


def test_denied_subscription_gets_0x87_or_0x80(secured: BrokerThread, version: int) -> None:
    raw = RawClient(secured.port, version)
    raw.send_packet(Connect("b", protocol_version=version, username="bob", password=b"builder"))
    assert expect(raw, Connack).reason_code == ReasonCode.SUCCESS
    raw.send_packet(Subscribe(1, [Subscription("public/#", 1), Subscription("sensors/#", 1)]))
    ack = expect(raw, Suback)
    assert ack.reason_codes[0] == 1
    assert ack.reason_codes[1] == (ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80)


def test_wildcard_subscription_does_not_leak_a_denied_topic(
    secured: BrokerThread, clients: ClientFactory
) -> None:
    """alice may read sensors/# except sensors/secret: her wildcard
    subscription is granted, and the denied topic is held back at delivery."""
    alice = login(clients, secured, "alice")
    assert alice.subscribe("sensors/+", 1)[0].value == 1
    pub = login(clients, secured, "alice", client_id="alice-pub")
    pub.publish("sensors/secret", b"hidden", qos=1)  # deny beats readwrite: refused
    pub.publish("sensors/open", b"seen", qos=1)
    assert alice.get().payload == b"seen"
    alice.expect_nothing()


def test_read_is_checked_at_delivery_for_other_publishers(
    secured: BrokerThread, clients: ClientFactory
) -> None:
    """bob may write sensors/bob/#, alice read sensors/#: bob's message
    reaches her."""
    alice = login(clients, secured, "alice")
    alice.subscribe("sensors/#", 1)
    bob = login(clients, secured, "bob")
    bob.publish("sensors/bob/1", b"ok", qos=1)
    msg = alice.get()
    assert (msg.topic, msg.payload) == ("sensors/bob/1", b"ok")


def test_patterns_substitute_username_and_client_id(
    secured: BrokerThread, clients: ClientFactory
) -> None:
    bob = login(clients, secured, "bob", client_id="dev-7")
    assert bob.subscribe("clients/bob/#", 1)[0].value == 1
    assert bob.subscribe("clients/alice/#", 1)[0].value == ReasonCode.NOT_AUTHORIZED
    assert bob.subscribe("devices/dev-7/cmd", 1)[0].value == 1
    assert bob.subscribe("devices/dev-8/cmd", 1)[0].value == ReasonCode.NOT_AUTHORIZED
    assert bob.publish("clients/bob/x", b"mine", qos=1).value == 0
    assert bob.get().payload == b"mine"


def test_sys_is_readable_only_where_the_acl_allows_it(
    make_broker: Factory, files: tuple[Path, Path], clients: ClientFactory
) -> None:
    passwd, acl = files
    bt = make_broker(password_file=str(passwd), acl_file=str(acl), sys_interval=1)
    alice = login(clients, bt, "alice")
    assert alice.subscribe("$SYS/#", 0)[0].value == 0
    bob = login(clients, bt, "bob")
    assert bob.subscribe("$SYS/#", 0)[0].value == ReasonCode.NOT_AUTHORIZED
    assert alice.get().topic.startswith("$SYS/")


def test_refusals_are_counted_in_sys(
    make_broker: Factory, files: tuple[Path, Path], clients: ClientFactory, version: int
) -> None:
    passwd, acl = files
    # $SYS at start, then not again within the test: the test publishes it
    bt = make_broker(password_file=str(passwd), acl_file=str(acl), sys_interval=3600)
    raw_connack(bt.port, version, "alice", b"nope")
    bob = login(clients, bt, "bob", version=version)
    assert bob.subscribe("sensors/#", 0)[0].value == (
        ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80
    )
    bt.call(bt.broker._shard.publish_sys)
    alice = login(clients, bt, "alice")
    alice.subscribe("$SYS/broker/clients/auth_failures", 0)
    alice.subscribe("$SYS/broker/acl/denied", 0)
    got = {m.topic: m.payload for m in (alice.get(), alice.get())}
    assert got == {
        "$SYS/broker/clients/auth_failures": b"1",
        "$SYS/broker/acl/denied": b"1",
    }


def test_offline_queue_is_filtered_at_delivery(
    make_broker: Factory, files: tuple[Path, Path], tmp_path: Path, clients: ClientFactory
) -> None:
    """Messages queued for an offline session are checked again when they are
    delivered: after a reload took read access away, they are not sent."""
    passwd, acl = files
    bt = make_broker(password_file=str(passwd), acl_file=str(acl))
    alice = login(clients, bt, "alice", client_id="al", clean_start=False, session_expiry=300)
    alice.subscribe("sensors/#", 1)
    alice.disconnect()
    bob = login(clients, bt, "bob")
    bob.publish("sensors/bob/1", b"queued", qos=1)
    acl.write_text(ACL.replace("topic readwrite sensors/#", "topic readwrite other/#"))
    assert bt.call(bt.broker.reload_access) is True
    again = login(clients, bt, "alice", client_id="al", clean_start=False, session_expiry=300)
    again.expect_nothing()


# -- reload -------------------------------------------------------------------------


def test_reload_applies_new_rules_to_open_connections(
    secured: BrokerThread, files: tuple[Path, Path], clients: ClientFactory
) -> None:
    _, acl = files
    bob = login(clients, secured, "bob")
    assert bob.publish("sensors/bob/1", b"x", qos=1).value == ReasonCode.NO_MATCHING_SUBSCRIBERS
    acl.write_text(ACL.replace("topic write sensors/bob/#", "topic write elsewhere/#"))
    assert secured.call(secured.broker.reload_access) is True
    assert bob.publish("sensors/bob/1", b"x", qos=1).value == ReasonCode.NOT_AUTHORIZED
    # and the connection was not dropped
    assert bob.publish("elsewhere/1", b"y", qos=1).value in (0, ReasonCode.NO_MATCHING_SUBSCRIBERS)


def test_reload_of_a_broken_file_keeps_the_previous_rules(
    secured: BrokerThread, files: tuple[Path, Path], clients: ClientFactory
) -> None:
    passwd, acl = files
    bob = login(clients, secured, "bob")
    acl.write_text(ACL + "topic sometimes x/#\n")  # an unknown access word
    passwd.write_text("alice\n")  # no hash
    assert secured.call(secured.broker.reload_access) is False
    assert bob.publish("sensors/bob/1", b"x", qos=1).value in (
        0,
        ReasonCode.NO_MATCHING_SUBSCRIBERS,
    )
    assert raw_connack(secured.port, 5, "alice", b"wonderland").reason_code == 0


def test_publish_refusal_reaches_nobody_at_qos2(
    secured: BrokerThread, version: int, clients: ClientFactory
) -> None:
    watcher = login(clients, secured, "alice")
    watcher.subscribe("sensors/#", 2)
    raw = RawClient(secured.port, version)
    raw.send_packet(Connect("b2", protocol_version=version, username="bob", password=b"builder"))
    assert expect(raw, Connack).reason_code == 0
    raw.send_packet(Publish("sensors/alice/x", b"no", qos=2, packet_id=3))
    rec = raw.recv_packet()
    if version == 5:
        assert rec.reason_code == ReasonCode.NOT_AUTHORIZED
    watcher.expect_nothing()
    assert not isinstance(rec, Puback)


# -- will, hooks --------------------------------------------------------------------


def test_will_to_a_topic_the_client_may_not_publish_refuses_the_connect(
    secured: BrokerThread, version: int, clients: ClientFactory
) -> None:
    """The will is a publish made later; a denied one would reach subscribers
    as the client goes, so the CONNECT is refused (as mosquitto does)."""
    watcher = login(clients, secured, "alice")
    watcher.subscribe("sensors/#", 1)
    raw = RawClient(secured.port, version)
    will = Will("sensors/alice/last", b"gone", qos=1)
    raw.send_packet(
        Connect("w", protocol_version=version, username="bob", password=b"builder", will=will)
    )
    assert expect(raw, Connack).reason_code == ReasonCode.NOT_AUTHORIZED
    raw.sock.close()
    watcher.expect_nothing()
    ok = RawClient(secured.port, version)
    will = Will("sensors/bob/last", b"gone", qos=1)
    ok.send_packet(
        Connect("w", protocol_version=version, username="bob", password=b"builder", will=will)
    )
    assert expect(ok, Connack).reason_code == ReasonCode.SUCCESS
    ok.sock.close()  # no DISCONNECT: the will goes out
    assert watcher.get().payload == b"gone"


def test_hooks_run_after_the_file_checks_and_can_still_refuse(
    make_broker: Factory, files: tuple[Path, Path], version: int
) -> None:
    """on_connect sees only clients the password file admitted, and may
    refuse one of them; with a hook registered the ACL still holds."""
    passwd, acl = files
    seen: list[str | None] = []

    async def on_connect(client: Any, packet: Any) -> bool:
        seen.append(packet.username)
        return packet.username != "bob"

    async def on_subscribe(client: Any, packet: Any) -> None:
        return None  # allows everything: the ACL still refuses

    def setup(broker: Any) -> None:
        broker.add_hook("on_connect", on_connect)
        broker.add_hook("on_subscribe", on_subscribe)

    bt = make_broker(setup=setup, password_file=str(passwd), acl_file=str(acl))
    assert raw_connack(bt.port, version, "alice", b"nope").reason_code == (
        ReasonCode.BAD_USER_NAME_OR_PASSWORD
    )
    assert raw_connack(bt.port, version, "bob", b"builder").reason_code == (
        ReasonCode.NOT_AUTHORIZED
    )
    raw = RawClient(bt.port, version)
    raw.send_packet(
        Connect("a", protocol_version=version, username="alice", password=b"wonderland")
    )
    assert expect(raw, Connack).reason_code == ReasonCode.SUCCESS
    assert seen == ["bob", "alice"]  # the wrong password never reached the hook
    raw.send_packet(Subscribe(1, [Subscription("sensors/x", 1), Subscription("clients/bob/x", 1)]))
    ack = expect(raw, Suback)
    assert ack.reason_codes[1] == (ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80)
    raw.sock.close()

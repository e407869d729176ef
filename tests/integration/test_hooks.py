"""Hooks over real sockets: what each hook is given, and what its answer does.

Hooks run on the broker's loop thread; they append to plain lists that the
test thread reads with ``wait_for``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from shardmq.errors import (
    ConnectError,
    DisconnectError,
    PublishError,
    SubscribeError,
)
from shardmq.hooks import HOOK_NAMES, Success
from shardmq.protocol.codec import encode
from shardmq.protocol.constants import MQTT5, MQTT311, ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from tests.helpers import WAIT, BrokerThread, Client, RawClient, read_until_eof, wait_for

Call = tuple[str, tuple[Any, ...], Any]


def snapshot(client: Any) -> tuple[Any, ...]:
    """The handle's fields at call time (the handle object lives on)."""
    return (
        client.client_id,
        client.username,
        client.protocol_version,
        client.remote_address,
        client.worker_id,
    )


def recorder(calls: list[Call], names: tuple[str, ...] = HOOK_NAMES) -> Callable[[Any], None]:
    """A ``setup`` registering a hook per name that records and allows."""

    def setup(broker: Any) -> None:
        for name in names:

            async def hook(client: Any, packet: Any, _name: str = name) -> Any:
                calls.append((_name, snapshot(client), packet))
                if _name == "on_auth":
                    return Success(b"ok")
                return None

            broker.add_hook(name, hook)

    return setup


def calls_of(calls: list[Call], name: str, cid: str | None = None) -> list[Call]:
    return [c for c in calls if c[0] == name and (cid is None or c[1][0] == cid)]


def local_address(c: Client) -> tuple[str, int]:
    sock = c.paho.socket()
    assert sock is not None
    host, port = sock.getsockname()[:2]
    return (host, port)


def raw_connect(
    port: int, client_id: str, version: int = MQTT5, **kwargs: Any
) -> tuple[RawClient, Any]:
    raw = RawClient(port, version=version)
    raw.send_packet(Connect(client_id, protocol_version=version, **kwargs))
    return raw, raw.recv_packet()


# -- what every hook receives ------------------------------------------------


def test_every_hook_gets_packet_and_handle(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client], version: int
) -> None:
    calls: list[Call] = []
    bt = make_broker(setup=recorder(calls))
    sub = clients(
        bt.port, client_id="h-sub", version=version, username="sue", password="pw", keepalive=1
    )
    pub = clients(bt.port, client_id="h-pub", version=version, username="pat", password="pw")
    sub.connect()
    pub.connect()
    sub_addr, pub_addr = local_address(sub), local_address(pub)

    sub.subscribe("h/#", qos=2)
    assert pub.publish("h/1", b"one", qos=1) is not None
    pub.publish("h/2", b"two", qos=2)
    got = {sub.get().payload, sub.get().payload}
    assert got == {b"one", b"two"}
    wait_for(lambda: calls_of(calls, "on_pubcomp", "h-sub") and calls_of(calls, "on_puback"))
    sub.unsubscribe("h/#")
    wait_for(lambda: calls_of(calls, "on_ping", "h-sub"))
    pub.disconnect()
    wait_for(lambda: calls_of(calls, "on_disconnect", "h-pub"))
    sub.drop()
    wait_for(lambda: calls_of(calls, "on_disconnect", "h-sub"))

    sub_handle = ("h-sub", "sue", version, sub_addr, 0)
    pub_handle = ("h-pub", "pat", version, pub_addr, 0)
    expected: dict[str, tuple[tuple[Any, ...], type | None]] = {
        "on_connect": (sub_handle, Connect),
        "on_subscribe": (sub_handle, Subscribe),
        "on_publish": (pub_handle, Publish),
        "on_pubrel": (pub_handle, Pubrel),
        "on_puback": (sub_handle, Puback),
        "on_pubrec": (sub_handle, Pubrec),
        "on_pubcomp": (sub_handle, Pubcomp),
        "on_unsubscribe": (sub_handle, Unsubscribe),
        "on_ping": (sub_handle, Pingreq),
    }
    for name, (handle, cls) in expected.items():
        mine = calls_of(calls, name, handle[0])
        assert mine, f"{name} was not called"
        assert mine[0][1] == handle, name
        assert isinstance(mine[0][2], cls), (name, mine[0][2])

    connects = {c[1][0]: c[2] for c in calls_of(calls, "on_connect")}
    assert connects["h-sub"].username == "sue" and connects["h-sub"].password == b"pw"
    assert connects["h-pub"].protocol_version == version
    assert calls_of(calls, "on_subscribe")[0][2].subscriptions[0].topic_filter == "h/#"
    publishes = calls_of(calls, "on_publish")
    assert [(p.topic, p.payload, p.qos) for _, _, p in publishes] == [
        ("h/1", b"one", 1),
        ("h/2", b"two", 2),
    ]
    assert calls_of(calls, "on_unsubscribe")[0][2].topic_filters == ["h/#"]

    # DISCONNECT: called once, with the packet; abrupt close: called once too
    graceful = calls_of(calls, "on_disconnect", "h-pub")
    assert len(graceful) == 1 and graceful[0][1] == pub_handle
    assert isinstance(graceful[0][2], Disconnect)
    abrupt = calls_of(calls, "on_disconnect", "h-sub")
    assert len(abrupt) == 1 and abrupt[0][1] == sub_handle
    assert not isinstance(abrupt[0][2], Disconnect)
    assert not calls_of(calls, "on_auth")


def test_on_auth_gets_connect_and_handle(make_broker: Callable[..., BrokerThread]) -> None:
    calls: list[Call] = []
    bt = make_broker(setup=recorder(calls, ("on_auth", "on_connect")))
    raw, connack = raw_connect(
        bt.port,
        "h-auth",
        username="ann",
        properties=Properties(authentication_method="PLAIN", authentication_data=b"\0ann\0pw"),
    )
    try:
        assert isinstance(connack, Connack) and connack.reason_code == 0
        addr = raw.sock.getsockname()[:2]
        (call,) = calls_of(calls, "on_auth")
        assert call[1] == ("h-auth", "ann", MQTT5, addr, 0)
        assert isinstance(call[2], Connect)
        assert call[2].properties.authentication_method == "PLAIN"
        assert call[2].properties.authentication_data == b"\0ann\0pw"
        # after the exchange on_connect still decides, with the same client
        assert calls_of(calls, "on_connect", "h-auth")[0][1] == call[1]
        assert connack.properties.authentication_data == b"ok"
    finally:
        raw.close()


# -- on_connect decides ------------------------------------------------------------


def test_connect_refused_v5(make_broker: Callable[..., BrokerThread]) -> None:
    async def deny(client: Any, packet: Any) -> bool:
        return False

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", deny))
    raw, connack = raw_connect(bt.port, "nope")
    try:
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.NOT_AUTHORIZED
        assert not connack.session_present
        assert raw.closed()
    finally:
        raw.close()


def test_connect_refused_v311(make_broker: Callable[..., BrokerThread]) -> None:
    async def deny(client: Any, packet: Any) -> bool:
        return False

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", deny))
    sock = socket.create_connection(("127.0.0.1", bt.port), timeout=WAIT)
    try:
        sock.sendall(encode(Connect("nope", protocol_version=MQTT311), MQTT311))
        # CONNACK return code 5 (not authorized), then the broker closes
        assert read_until_eof(sock) == b"\x20\x02\x00\x05"
    finally:
        sock.close()


def test_connect_error_code_and_reason_string(make_broker: Callable[..., BrokerThread]) -> None:
    async def check(client: Any, packet: Any) -> bool:
        if packet.password != b"secret":
            raise ConnectError(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad")
        return True

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", check))
    raw, connack = raw_connect(bt.port, "c1", username="u", password=b"wrong")
    try:
        assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        assert connack.properties.reason_string == "bad"
        assert raw.closed()
    finally:
        raw.close()
    good, connack = raw_connect(bt.port, "c2", username="u", password=b"secret")
    try:
        assert connack.reason_code == 0
    finally:
        good.close()


# -- on_publish decides ------------------------------------------------------------


def test_publish_refused_and_not_delivered(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    async def on_publish(client: Any, packet: Any) -> bool:
        if packet.topic.startswith("quota/"):
            raise PublishError(ReasonCode.QUOTA_EXCEEDED, "over quota")
        return not packet.topic.startswith("deny/")

    bt = make_broker(setup=lambda b: b.add_hook("on_publish", on_publish))
    sub = clients(bt.port)
    sub.connect()
    sub.subscribe("#", qos=2)
    raw, connack = raw_connect(bt.port, "refused-pub")
    try:
        assert connack.reason_code == 0
        raw.send_packet(Publish("deny/a", b"x", qos=1, packet_id=1))
        assert raw.recv_packet() == Puback(1, ReasonCode.NOT_AUTHORIZED)
        raw.send_packet(Publish("quota/a", b"x", qos=1, packet_id=2))
        ack = raw.recv_packet()
        assert isinstance(ack, Puback) and ack.packet_id == 2
        assert ack.reason_code == ReasonCode.QUOTA_EXCEEDED
        assert ack.properties.reason_string == "over quota"
        raw.send_packet(Publish("deny/b", b"x", qos=2, packet_id=3))
        assert raw.recv_packet() == Pubrec(3, ReasonCode.NOT_AUTHORIZED)
        raw.send_packet(Publish("deny/c", b"x", qos=0))
        raw.send_packet(Publish("ok/a", b"fine", qos=1, packet_id=4))
        assert raw.recv_packet() == Puback(4, ReasonCode.SUCCESS)
        # every refused message was sent before this one: it comes first
        msg = sub.get()
        assert (msg.topic, msg.payload) == ("ok/a", b"fine")
        assert sub.drain(0.2) == []
    finally:
        raw.close()


def test_publish_refused_v311_not_delivered(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    """3.1.1 has no negative PUBACK: the publisher is acknowledged, nobody receives it."""

    async def on_publish(client: Any, packet: Any) -> bool:
        return not packet.topic.startswith("deny/")

    bt = make_broker(setup=lambda b: b.add_hook("on_publish", on_publish))
    sub = clients(bt.port, version=4)
    sub.connect()
    sub.subscribe("#", qos=1)
    raw, connack = raw_connect(bt.port, "old-pub", version=MQTT311)
    try:
        assert connack.reason_code == 0
        raw.send_packet(Publish("deny/a", b"x", qos=1, packet_id=1))
        assert raw.recv_packet() == Puback(1)
        raw.send_packet(Publish("ok/a", b"fine", qos=1, packet_id=2))
        assert raw.recv_packet() == Puback(2)
        msg = sub.get()
        assert (msg.topic, msg.payload) == ("ok/a", b"fine")
    finally:
        raw.close()


def test_disconnect_error_from_on_publish(make_broker: Callable[..., BrokerThread]) -> None:
    async def on_publish(client: Any, packet: Any) -> None:
        if packet.topic == "boom":
            raise DisconnectError(ReasonCode.MESSAGE_RATE_TOO_HIGH, "slow down")

    bt = make_broker(setup=lambda b: b.add_hook("on_publish", on_publish))
    raw, connack = raw_connect(bt.port, "boomer")
    try:
        assert connack.reason_code == 0
        raw.send_packet(Publish("boom", b"x", qos=1, packet_id=1))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect), pkt
        assert pkt.reason_code == ReasonCode.MESSAGE_RATE_TOO_HIGH
        assert pkt.properties.reason_string == "slow down"
        assert raw.closed()
    finally:
        raw.close()


# -- on_subscribe / on_unsubscribe decide ------------------------------------------------


def test_subscribe_refused(make_broker: Callable[..., BrokerThread], version: int) -> None:
    async def deny(client: Any, packet: Any) -> bool:
        return False

    bt = make_broker(setup=lambda b: b.add_hook("on_subscribe", deny))
    raw, connack = raw_connect(bt.port, "sub-deny", version=version)
    try:
        assert connack.reason_code == 0
        raw.send_packet(Subscribe(7, [Subscription("a/#", 1)]))
        suback = raw.recv_packet()
        assert isinstance(suback, Suback) and suback.packet_id == 7
        assert suback.reason_codes == [0x87 if version == MQTT5 else 0x80]
    finally:
        raw.close()


def test_subscribe_per_subscription_verdicts(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    async def on_subscribe(client: Any, packet: Any) -> Any:
        if client.client_id == "quota":
            raise SubscribeError(ReasonCode.QUOTA_EXCEEDED)
        return [True, False]

    bt = make_broker(setup=lambda b: b.add_hook("on_subscribe", on_subscribe))
    raw, _ = raw_connect(bt.port, "split")
    pub = clients(bt.port)
    pub.connect()
    try:
        raw.send_packet(Subscribe(1, [Subscription("yes/#", 1), Subscription("no/#", 1)]))
        assert raw.recv_packet() == Suback(1, [1, ReasonCode.NOT_AUTHORIZED])
        pub.publish("no/x", b"hidden", qos=1)
        pub.publish("yes/x", b"shown", qos=1)
        msg = raw.recv_packet()
        assert isinstance(msg, Publish) and (msg.topic, msg.payload) == ("yes/x", b"shown")
    finally:
        raw.close()
    quota, _ = raw_connect(bt.port, "quota")
    try:
        quota.send_packet(Subscribe(2, [Subscription("a", 0), Subscription("b", 0)]))
        assert quota.recv_packet() == Suback(2, [ReasonCode.QUOTA_EXCEEDED] * 2)
    finally:
        quota.close()


def test_unsubscribe_refused(make_broker: Callable[..., BrokerThread]) -> None:
    async def deny(client: Any, packet: Any) -> bool:
        return False

    bt = make_broker(setup=lambda b: b.add_hook("on_unsubscribe", deny))
    raw, _ = raw_connect(bt.port, "unsub-deny")
    try:
        raw.send_packet(Subscribe(1, [Subscription("a/#", 0)]))
        assert raw.recv_packet() == Suback(1, [0])
        raw.send_packet(Unsubscribe(2, ["a/#"]))
        assert raw.recv_packet() == Unsuback(2, [ReasonCode.NOT_AUTHORIZED])
    finally:
        raw.close()


# -- the broker API from inside hooks ---------------------------------------------------


def test_broker_publish_from_on_connect(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    async def on_connect(client: Any, packet: Any) -> None:
        if client.client_id == "newcomer":
            client.broker.publish("news/joined", client.client_id, qos=1)

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    watcher = clients(bt.port)
    watcher.connect()
    watcher.subscribe("news/#", qos=1)
    clients(bt.port, client_id="newcomer").connect()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos) == ("news/joined", b"newcomer", 1)


def test_retained_api_from_hook(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    seen: list[Any] = []

    async def on_connect(client: Any, packet: Any) -> None:
        if client.client_id == "keeper":
            retained = client.broker.retained
            retained.add("a/b", b"kept", ttl=60)
            retained.add("a/c/d", b"deeper")
            seen.append(retained.get("a/b"))
            seen.append([(m.topic, m.payload) for m in retained.for_each("a/+")])

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    clients(bt.port, client_id="keeper").connect()
    got, listed = seen
    assert got is not None and got.topic == "a/b" and got.payload == b"kept"
    assert got.ttl is not None and 0 < got.ttl <= 60
    assert listed == [("a/b", b"kept")]
    sub = clients(bt.port)
    sub.connect()
    sub.subscribe("a/+", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.retain) == ("a/b", b"kept", True)


def test_broker_disconnect_from_hook(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    results: list[bool] = []

    async def on_publish(client: Any, packet: Any) -> None:
        if packet.topic.startswith("kick/"):
            results.append(client.broker.disconnect(packet.topic[5:]))

    bt = make_broker(setup=lambda b: b.add_hook("on_publish", on_publish))
    victim = clients(bt.port, client_id="victim")
    victim.connect()
    admin = clients(bt.port)
    admin.connect()
    admin.publish("kick/victim", b"", qos=1)
    rc, _ = victim.wait_disconnect()
    assert rc.value == ReasonCode.ADMINISTRATIVE_ACTION
    assert results == [True]
    admin.publish("kick/nobody", b"", qos=1)
    assert results == [True, False]


# -- ordering and the session trap ---------------------------------------------------------


def test_pipelined_publish_waits_for_connack(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    """[MQTT-3.1.4-5]: nothing after CONNECT is processed before CONNACK."""
    during_hook: list[Any] = []

    async def on_connect(client: Any, packet: Any) -> None:
        if client.client_id == "slow":
            await asyncio.sleep(0.3)
            # had the PUBLISH been processed during the sleep, it would be retained now
            during_hook.append(client.broker.retained.get("order/x"))

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    sub = clients(bt.port)
    sub.connect()
    sub.subscribe("order/#", qos=1)
    raw = RawClient(bt.port)
    try:
        raw.send(
            encode(Connect("slow"), MQTT5)
            + encode(Publish("order/x", b"early", qos=1, retain=True, packet_id=1), MQTT5)
        )
        first = raw.recv_packet()
        assert isinstance(first, Connack) and first.reason_code == 0
        assert raw.recv_packet() == Puback(1, ReasonCode.SUCCESS)
        assert during_hook == [None]
        msg = sub.get()
        assert (msg.topic, msg.payload) == ("order/x", b"early")
    finally:
        raw.close()


def test_refused_connect_keeps_victims_session(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    async def on_connect(client: Any, packet: Any) -> bool:
        return packet.username != "attacker"

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    victim = clients(bt.port, client_id="victim", session_expiry=300)
    victim.connect()
    victim.subscribe("trap/#", qos=1)
    victim.disconnect()

    attacker = clients(bt.port, client_id="victim", username="attacker", password="x")
    _, rc, _ = attacker.connect(expect_success=False)
    assert rc.value == ReasonCode.NOT_AUTHORIZED
    attacker.paho.loop_stop()

    pub = clients(bt.port)
    pub.connect()
    pub.publish("trap/1", b"queued", qos=1)

    back = clients(bt.port, client_id="victim", clean_start=False, session_expiry=300)
    flags, _, _ = back.connect()
    assert flags.session_present
    msg = back.get()
    assert (msg.topic, msg.payload) == ("trap/1", b"queued")


def test_refused_connect_does_not_take_over_online_victim(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    async def on_connect(client: Any, packet: Any) -> bool:
        return packet.username != "attacker"

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    victim = clients(bt.port, client_id="online")
    victim.connect()
    victim.subscribe("live/#", qos=1)
    attacker = clients(bt.port, client_id="online", username="attacker", password="x")
    _, rc, _ = attacker.connect(expect_success=False)
    assert rc.value == ReasonCode.NOT_AUTHORIZED
    attacker.paho.loop_stop()
    pub = clients(bt.port)
    pub.connect()
    pub.publish("live/1", b"still here", qos=1)
    assert victim.get().payload == b"still here"
    assert victim.disconnects.empty()


# -- no hook, no cost ----------------------------------------------------------------


def test_no_hook_no_task(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    connects: list[str] = []

    async def on_connect(client: Any, packet: Any) -> None:
        connects.append(client.client_id)

    bt = make_broker(setup=lambda b: b.add_hook("on_connect", on_connect))
    broker = bt.broker
    for name in HOOK_NAMES:
        if name != "on_connect":
            assert getattr(broker.hooks, name) is None, name
    sub = clients(bt.port, client_id="quiet-sub")
    pub = clients(bt.port, client_id="quiet-pub")
    sub.connect()
    pub.connect()
    assert sorted(connects) == ["quiet-pub", "quiet-sub"]

    created: list[Any] = []
    loop = bt.loop
    assert loop is not None

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(getattr(coro, "__qualname__", coro))
        return asyncio.Task(coro, loop=lp, **kw)

    bt.call(lambda: loop.set_task_factory(factory))
    try:
        sub.subscribe("q/#", qos=2)
        for i in range(20):
            pub.publish("q/x", str(i), qos=1 + i % 2)
        # paho hands QoS 2 messages over at PUBREL, so compare without order
        got = sorted(int(sub.get().payload) for _ in range(20))
        assert got == list(range(20))
        sub.unsubscribe("q/#")
        time.sleep(0.05)
        # read from this thread: bt.call itself would create a task
        assert list(created) == []
    finally:
        bt.call(lambda: loop.set_task_factory(None))


@pytest.mark.parametrize("hook_name", ["on_publish", "on_subscribe"])
def test_hook_errors_do_not_leak(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client], hook_name: str
) -> None:
    """A hook that crashes refuses safely: the client is disconnected, the broker lives."""

    async def broken(client: Any, packet: Any) -> None:
        raise RuntimeError("bug in the hook")

    bt = make_broker(setup=lambda b: b.add_hook(hook_name, broken))
    raw, _ = raw_connect(bt.port, "victim-of-bug")
    try:
        if hook_name == "on_publish":
            raw.send_packet(Publish("t", b"x", qos=1, packet_id=1))
        else:
            raw.send_packet(Subscribe(1, [Subscription("t", 0)]))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect) and pkt.reason_code >= 0x80
    finally:
        raw.close()
    ok = clients(bt.port)
    ok.connect()

"""Will messages: when they are published, delayed, cancelled, and what they carry.

A ``watcher`` subscribes to the will topic before the will's owner connects;
the owner is a paho client that is dropped (socket closed without DISCONNECT)
or disconnects, or a ``RawClient`` where paho cannot express the case. Will
delays and session expiries are 1 s; a will delayed 30 s that arrives at all
within the test proves something other than the delay released it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardmq.protocol.constants import MQTT5, ReasonCode
from shardmq.protocol.packets import Connack, Connect, Properties, Will
from tests.helpers import BrokerThread, Client, RawClient, wait_for

# -- helpers --------------------------------------------------------------------


def watch(clients: Callable[..., Client], bt: BrokerThread, version: int = MQTT5) -> Client:
    watcher = clients(bt.port, version=version)
    watcher.connect()
    watcher.subscribe("will/#", 1)
    return watcher


def wait_offline(bt: BrokerThread, client_id: str) -> None:
    """Wait until the broker has seen the connection of ``client_id`` end."""

    def gone() -> bool:
        return all(c.client_id != client_id for c in bt.broker._shard.connections)

    wait_for(lambda: bt.call(gone))


def will(payload: bytes = b"gone", **extra: Any) -> dict[str, Any]:
    return {"topic": "will/t", "payload": payload, "qos": 1, **extra}


# -- when the will is published ------------------------------------------------------


def test_will_published_on_abrupt_close(broker, clients, version):
    """[MQTT-3.1.2-8] a connection closed without DISCONNECT publishes the will,
    at its QoS."""
    watcher = watch(clients, broker, version)
    owner = clients(broker.port, version=version, will=will(b"crashed"))
    owner.connect()
    owner.drop()
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos) == ("will/t", b"crashed", 1)


def test_will_properties_passed_through(broker, clients):
    """Spec 3.1.3.2: the will's Payload Format Indicator, Content Type, Response
    Topic, Correlation Data and User Properties reach the subscriber."""
    watcher = watch(clients, broker)
    props = {
        "PayloadFormatIndicator": 1,
        "ContentType": "text/plain",
        "ResponseTopic": "reply/here",
        "CorrelationData": b"\x01\x02",
        "UserProperty": [("k", "v1"), ("k", "v2")],
    }
    owner = clients(broker.port, will=will(b"with props", properties=props))
    owner.connect()
    owner.drop()
    got = watcher.get().properties
    assert got.PayloadFormatIndicator == 1
    assert got.ContentType == "text/plain"
    assert got.ResponseTopic == "reply/here"
    assert got.CorrelationData == b"\x01\x02"
    assert got.UserProperty == [("k", "v1"), ("k", "v2")]


def test_no_will_on_normal_disconnect(broker, clients, version):
    """[MQTT-3.1.2-10] DISCONNECT (v5: reason 0x00) deletes the will."""
    watcher = watch(clients, broker, version)
    owner = clients(broker.port, client_id="polite", version=version, will=will())
    owner.connect()
    owner.disconnect()
    wait_offline(broker, "polite")
    watcher.expect_nothing()


def test_will_on_disconnect_with_will_message(broker, clients):
    """Spec 3.14.2.1 (v5): DISCONNECT 0x04 closes normally but asks for the will."""
    watcher = watch(clients, broker)
    owner = clients(broker.port, will=will(b"asked for"))
    owner.connect()
    owner.disconnect(reason_code=ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)
    assert watcher.get().payload == b"asked for"


def test_will_retain_flag(broker, clients, version):
    """[MQTT-3.1.2-17] Will Retain 1: the will is published as a retained message."""
    watcher = watch(clients, broker, version)
    owner = clients(broker.port, version=version, will=will(b"last words", retain=True))
    owner.connect()
    owner.drop()
    assert watcher.get().payload == b"last words"  # published

    late = clients(broker.port, version=version)
    late.connect()
    late.subscribe("will/t", 1)
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"last words", True)


# -- will delay (v5) -------------------------------------------------------------------


def test_will_delay_interval(broker, clients):
    """Spec 3.1.3.2.2: the will is published once the Will Delay Interval has
    passed, not when the connection closes."""
    watcher = watch(clients, broker)
    owner = clients(
        broker.port,
        session_expiry=60,
        will=will(b"late", properties={"WillDelayInterval": 1}),
    )
    owner.connect()
    owner.drop()
    wait_offline(broker, owner.client_id)
    watcher.expect_nothing()  # within the 1 s delay
    broker.advance(1.0)
    assert watcher.get().payload == b"late"


def test_will_delay_cancelled_by_reconnect(broker, clients):
    """[MQTT-3.1.3-9] a new connection to the session within the Will Delay
    Interval means the will is not sent (nor the new connection's, early)."""
    watcher = watch(clients, broker)
    owner = clients(
        broker.port,
        client_id="back",
        clean_start=False,
        session_expiry=60,
        will=will(b"never", properties={"WillDelayInterval": 1}),
    )
    owner.connect()
    owner.drop()
    wait_offline(broker, "back")
    # the new connection has a will of its own: the old delay must not release it
    again = clients(
        broker.port, client_id="back", clean_start=False, session_expiry=60, will=will(b"new")
    )
    flags, _, _ = again.connect()
    assert flags.session_present is True
    broker.advance(1.5)  # past the 1 s delay, on the broker's clock
    watcher.expect_nothing()


def test_will_published_when_session_expires_before_delay(broker, clients):
    """Spec 3.1.3.2.2: the will is published when the delay passes or the session
    ends, whichever is first: expiry 1 s beats a 30 s will delay."""
    watcher = watch(clients, broker)
    owner = clients(
        broker.port,
        session_expiry=1,
        will=will(b"session over", properties={"WillDelayInterval": 30}),
    )
    owner.connect()
    owner.drop()
    wait_offline(broker, owner.client_id)
    watcher.expect_nothing()  # neither is due yet
    broker.advance(1.0)  # the session's 1 s expiry, long before the 30 s delay
    assert watcher.get().payload == b"session over"


# -- takeover ------------------------------------------------------------------------------


def _raw_with_will(
    raw_clients: Callable[..., RawClient], bt: BrokerThread, version: int, delay: int | None
) -> RawClient:
    old = raw_clients(bt.port, version)
    props = Properties(will_delay_interval=delay) if delay is not None else None
    old.send_packet(
        Connect(
            "owner",
            protocol_version=version,
            clean_start=False,
            will=Will("will/t", b"taken over", qos=1, properties=props),
            properties=Properties(session_expiry_interval=300),
        )
    )
    ack = old.recv_packet()
    assert isinstance(ack, Connack) and ack.reason_code == ReasonCode.SUCCESS, ack
    return old


def test_takeover_publishes_will_without_delay(broker, clients, raw_clients, version):
    """[MQTT-3.1.4-3] and spec 3.1.2.5: a takeover closes the old connection, so its
    will without a delay (3.1.1 has none) is published at once."""
    watcher = watch(clients, broker, version)
    old = _raw_with_will(raw_clients, broker, version, delay=None)
    new = clients(broker.port, client_id="owner", version=version, clean_start=True)
    new.connect()
    assert old.closed()
    assert watcher.get().payload == b"taken over"


def test_takeover_with_clean_start_within_delay_skips_will(broker, clients, raw_clients):
    """[MQTT-3.1.2-8] (v5): the new connection for the client id arrives within the
    old will's delay, so the will is not published, even with Clean Start 1, as
    Mosquitto and the specification editor's reference broker do."""
    watcher = watch(clients, broker)
    old = _raw_with_will(raw_clients, broker, MQTT5, delay=1)
    new = clients(broker.port, client_id="owner", clean_start=True)
    new.connect()
    assert old.closed()
    broker.advance(1.5)  # past the 1 s delay, on the broker's clock
    watcher.expect_nothing()


def test_reconnect_with_clean_start_within_delay_cancels_will(broker, clients):
    """[MQTT-3.1.2-8] (v5): a will waiting for its delay after an abrupt close is
    cancelled by any new connection for the client id within the delay, Clean
    Start 1 included (the session is then discarded, its will with it)."""
    watcher = watch(clients, broker)
    owner = clients(
        broker.port,
        client_id="back-clean",
        session_expiry=60,
        will=will(b"never", properties={"WillDelayInterval": 1}),
    )
    owner.connect()
    owner.drop()
    wait_offline(broker, "back-clean")
    again = clients(broker.port, client_id="back-clean", clean_start=True)
    flags, _, _ = again.connect()
    assert flags.session_present is False
    broker.advance(1.5)  # past the 1 s delay, on the broker's clock
    watcher.expect_nothing()


def test_takeover_resuming_session_within_delay_skips_will(broker, clients, raw_clients):
    """[MQTT-3.1.3-9] (v5): a takeover with Clean Start 0 is a new connection to the
    session within the Will Delay Interval, so the old will is not sent."""
    watcher = watch(clients, broker)
    old = _raw_with_will(raw_clients, broker, MQTT5, delay=1)
    new = clients(
        broker.port, client_id="owner", clean_start=False, session_expiry=300, will=will(b"new")
    )
    flags, _, _ = new.connect()
    assert flags.session_present is True
    assert old.closed()
    broker.advance(1.5)  # past the 1 s delay, on the broker's clock
    watcher.expect_nothing()

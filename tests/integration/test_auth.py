"""Enhanced authentication (MQTT 5.0 section 4.12) over a raw socket.

paho cannot drive AUTH exchanges, so the client here is a ``RawClient``
sending our own packets. The ``on_auth`` hook below is a two-round,
SCRAM-like exchange: CONNECT carries the client's first message, the broker
answers AUTH 0x18 with a challenge, the client's AUTH 0x18 must carry the
right proof, and CONNACK carries the server's final message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shardmq.errors import AuthError
from shardmq.hooks import Continue, Success
from shardmq.protocol.codec import encode
from shardmq.protocol.constants import MQTT5, ReasonCode
from shardmq.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Publish,
)
from tests.helpers import BrokerThread, Client, RawClient

METHOD = "SCRAM-TEST"
CHALLENGE = b"challenge"
PROOF = b"proof-for-challenge"
FINAL = b"final"


class Scram:
    """The hook under test, recording what it was called with."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refusal = refusal

    async def on_auth(self, client: Any, packet: Any) -> Any:
        self.calls.append((client.client_id, packet))
        if isinstance(packet, Connect):
            if packet.properties.authentication_data != b"client-first":
                return False
            return Continue(CHALLENGE)
        # an AUTH packet: the answer to our challenge, or a re-authentication
        data = packet.properties.authentication_data
        if packet.reason_code == ReasonCode.RE_AUTHENTICATE:
            if data == b"client-first":
                return Continue(CHALLENGE)
            if data == b"quick":
                return Success(b"quick-ok")
        if data == PROOF:
            return Success(FINAL)
        if self.refusal is not None:
            raise self.refusal
        return False

    def setup(self, broker: Any) -> None:
        broker.add_hook("on_auth", self.on_auth)


def auth_props(data: bytes | None, method: str = METHOD) -> Properties:
    return Properties(authentication_method=method, authentication_data=data)


def start(make_broker: Callable[..., BrokerThread], scram: Scram) -> BrokerThread:
    return make_broker(setup=scram.setup)


def begin(port: int, client_id: str = "scram") -> RawClient:
    """Send the CONNECT that opens the exchange; expect the challenge."""
    raw = RawClient(port)
    raw.send_packet(Connect(client_id, properties=auth_props(b"client-first")))
    challenge = raw.recv_packet()
    assert challenge == Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(CHALLENGE)), challenge
    return raw


def finish(raw: RawClient) -> Connack:
    raw.send_packet(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(PROOF)))
    connack = raw.recv_packet()
    assert isinstance(connack, Connack) and connack.reason_code == 0, connack
    return connack


def test_two_round_exchange(make_broker: Callable[..., BrokerThread]) -> None:
    scram = Scram()
    bt = start(make_broker, scram)
    raw = begin(bt.port)
    try:
        connack = finish(raw)
        # [MQTT-3.2.2.3.17] CONNACK names the method and carries the final data
        assert connack.properties.authentication_method == METHOD
        assert connack.properties.authentication_data == FINAL
        kinds = [(cid, type(p).__name__) for cid, p in scram.calls]
        assert kinds == [("scram", "Connect"), ("scram", "Auth")]
        second = scram.calls[1][1]
        assert second.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
        assert second.properties.authentication_data == PROOF
        # and the session works
        raw.send_packet(Publish("t", b"x", qos=1, packet_id=1))
        ack = raw.recv_packet()
        assert isinstance(ack, Puback) and ack.packet_id == 1 and ack.reason_code < 0x80
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (None, ReasonCode.NOT_AUTHORIZED),
        (AuthError(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "wrong proof"), 0x86),
        (AuthError(ReasonCode.BANNED), 0x8A),
    ],
    ids=["false", "auth-error-0x86", "auth-error-banned"],
)
def test_wrong_response_refused(
    make_broker: Callable[..., BrokerThread], refusal: Exception | None, code: int
) -> None:
    bt = start(make_broker, Scram(refusal))
    raw = begin(bt.port)
    try:
        raw.send_packet(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(b"guess")))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack), connack
        assert connack.reason_code == code
        if refusal is not None and refusal.reason_string:  # type: ignore[attr-defined]
            assert connack.properties.reason_string == "wrong proof"
        assert raw.closed()
    finally:
        raw.close()


def test_refused_in_first_round(make_broker: Callable[..., BrokerThread]) -> None:
    bt = start(make_broker, Scram())
    raw = RawClient(bt.port)
    try:
        raw.send_packet(Connect("scram", properties=auth_props(b"not-first")))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack) and connack.reason_code == ReasonCode.NOT_AUTHORIZED
        assert raw.closed()
    finally:
        raw.close()


def test_unknown_method_without_hook(make_broker: Callable[..., BrokerThread]) -> None:
    bt = make_broker()
    raw = RawClient(bt.port)
    try:
        raw.send_packet(Connect("who", properties=auth_props(b"x", method="KERBEROS")))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack)
        assert connack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
        assert raw.closed()
    finally:
        raw.close()


def test_method_change_mid_exchange_is_protocol_error(
    make_broker: Callable[..., BrokerThread],
) -> None:
    scram = Scram()
    bt = start(make_broker, scram)
    raw = begin(bt.port)
    try:
        raw.send_packet(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(PROOF, "OTHER")))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack), connack
        assert connack.reason_code == ReasonCode.PROTOCOL_ERROR
        assert raw.closed()
        assert len(scram.calls) == 1  # the hook never saw the stray AUTH
    finally:
        raw.close()


def test_auth_success_code_from_client_is_protocol_error(
    make_broker: Callable[..., BrokerThread],
) -> None:
    """During the exchange a client AUTH must be 0x18 [MQTT-4.12.0-?]; 0x00 is not."""
    bt = start(make_broker, Scram())
    raw = begin(bt.port)
    try:
        raw.send_packet(Auth(ReasonCode.SUCCESS, auth_props(PROOF)))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack) and connack.reason_code == ReasonCode.PROTOCOL_ERROR
        assert raw.closed()
    finally:
        raw.close()


# -- nothing else is processed during the exchange ---------------------------------


def test_publish_during_exchange_not_processed(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    """[MQTT-3.1.2-30] only AUTH/DISCONNECT before CONNACK; a PUBLISH is a protocol
    error and must never be routed."""
    scram = Scram()
    bt = start(make_broker, scram)
    sub = clients(bt.port)
    sub.connect()
    sub.subscribe("sneak/#", qos=1)
    raw = begin(bt.port)
    try:
        raw.send_packet(Publish("sneak/mid", b"mid-exchange", qos=1, packet_id=1))
        answer = raw.recv_packet()
        assert isinstance(answer, Connack), answer
        assert answer.reason_code == ReasonCode.PROTOCOL_ERROR
        assert raw.closed()
    finally:
        raw.close()
    # the subscriber still works, and the sneaked message never reached it
    sub.subscribe("marker", qos=1)
    marker = clients(bt.port)
    marker.connect()
    marker.publish("marker", b"after", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload) == ("marker", b"after")


def test_pipelined_publish_after_auth_connect_not_processed(
    make_broker: Callable[..., BrokerThread], clients: Callable[..., Client]
) -> None:
    scram = Scram()
    bt = start(make_broker, scram)
    sub = clients(bt.port)
    sub.connect()
    sub.subscribe("sneak/#", qos=1)
    raw = RawClient(bt.port)
    try:
        raw.send(
            encode(Connect("piped", properties=auth_props(b"client-first")), MQTT5)
            + encode(Publish("sneak/piped", b"too early", qos=0), MQTT5)
        )
        packets = []
        while True:
            pkt = raw.recv_packet()
            if pkt is None:
                break
            packets.append(pkt)
        # no successful CONNACK, and the connection ended with a protocol error
        assert not any(isinstance(p, Connack) and p.reason_code == 0 for p in packets), packets
        assert isinstance(packets[-1], Connack), packets
        assert packets[-1].reason_code == ReasonCode.PROTOCOL_ERROR
    finally:
        raw.close()
    marker = clients(bt.port)
    marker.connect()
    marker.publish("sneak/marker", b"after", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload) == ("sneak/marker", b"after")


def test_disconnect_during_exchange_aborts_quietly(
    make_broker: Callable[..., BrokerThread],
) -> None:
    """DISCONNECT is allowed before CONNACK in an exchange [MQTT-3.1.2-30]: the
    broker closes without calling the hook again and without a protocol error."""
    scram = Scram()
    bt = start(make_broker, scram)
    raw = begin(bt.port)
    try:
        raw.send_packet(Disconnect())
        assert raw.recv_packet() is None, "expected a plain close"
        assert len(scram.calls) == 1
    finally:
        raw.close()


# -- re-authentication (4.12.1) ------------------------------------------------------------


def test_reauthentication_one_round(make_broker: Callable[..., BrokerThread]) -> None:
    scram = Scram()
    bt = start(make_broker, scram)
    raw = begin(bt.port)
    try:
        finish(raw)
        raw.send_packet(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"quick")))
        assert raw.recv_packet() == Auth(ReasonCode.SUCCESS, auth_props(b"quick-ok"))
        last = scram.calls[-1][1]
        assert isinstance(last, Auth) and last.reason_code == ReasonCode.RE_AUTHENTICATE
        raw.send_packet(Pingreq())
        assert isinstance(raw.recv_packet(), Pingresp)
    finally:
        raw.close()


def test_reauthentication_two_rounds_traffic_continues(
    make_broker: Callable[..., BrokerThread],
) -> None:
    """Other packets keep flowing during re-authentication (4.12.1)."""
    scram = Scram()
    bt = start(make_broker, scram)
    raw = begin(bt.port)
    try:
        finish(raw)
        raw.send_packet(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"client-first")))
        assert raw.recv_packet() == Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(CHALLENGE))
        raw.send_packet(Publish("during", b"x", qos=1, packet_id=9))
        ack = raw.recv_packet()
        assert isinstance(ack, Puback) and ack.packet_id == 9 and ack.reason_code < 0x80
        raw.send_packet(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(PROOF)))
        assert raw.recv_packet() == Auth(ReasonCode.SUCCESS, auth_props(FINAL))
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (None, ReasonCode.NOT_AUTHORIZED),
        (AuthError(ReasonCode.ADMINISTRATIVE_ACTION), ReasonCode.ADMINISTRATIVE_ACTION),
    ],
    ids=["false", "auth-error"],
)
def test_failed_reauthentication_disconnects(
    make_broker: Callable[..., BrokerThread], refusal: Exception | None, code: int
) -> None:
    bt = start(make_broker, Scram(refusal))
    raw = begin(bt.port)
    try:
        finish(raw)
        raw.send_packet(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"nonsense")))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect), pkt
        assert pkt.reason_code == code
        assert raw.closed()
    finally:
        raw.close()


def test_reauthentication_with_other_method(make_broker: Callable[..., BrokerThread]) -> None:
    """[MQTT-4.12.1-1] re-authentication must use the CONNECT's method."""
    bt = start(make_broker, Scram())
    raw = begin(bt.port)
    try:
        finish(raw)
        raw.send_packet(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"quick", "OTHER")))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect) and pkt.reason_code == ReasonCode.PROTOCOL_ERROR
    finally:
        raw.close()


def test_reauthentication_without_method_at_connect(
    make_broker: Callable[..., BrokerThread],
) -> None:
    """[MQTT-4.12.0-7] no method at CONNECT: any AUTH is a protocol error."""
    scram = Scram()
    bt = start(make_broker, scram)
    raw = RawClient(bt.port)
    try:
        raw.send_packet(Connect("plain"))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        assert connack.properties.authentication_method is None
        raw.send_packet(Auth(ReasonCode.RE_AUTHENTICATE, auth_props(b"quick")))
        pkt = raw.recv_packet()
        assert isinstance(pkt, Disconnect) and pkt.reason_code == ReasonCode.PROTOCOL_ERROR
        assert scram.calls == []
    finally:
        raw.close()


def test_on_connect_still_decides_after_auth(make_broker: Callable[..., BrokerThread]) -> None:
    scram = Scram()

    async def on_connect(client: Any, packet: Any) -> bool:
        return client.client_id != "banned"

    def setup(broker: Any) -> None:
        scram.setup(broker)
        broker.add_hook("on_connect", on_connect)

    bt = make_broker(setup=setup)
    raw = begin(bt.port, "banned")
    try:
        raw.send_packet(Auth(ReasonCode.CONTINUE_AUTHENTICATION, auth_props(PROOF)))
        connack = raw.recv_packet()
        assert isinstance(connack, Connack) and connack.reason_code == ReasonCode.NOT_AUTHORIZED
        assert raw.closed()
    finally:
        raw.close()

"""Sessions, client identifiers, keep alive and connection limits, over real sockets.

Each test starts its own broker (``broker`` / ``make_broker``) and talks to it
with paho-mqtt (``clients``) or, where paho cannot express the packet or hides
the answer, with ``RawClient`` speaking bytes through our codec. Timers are
configured short (expiry 1 s, keep alive 1 s, connect timeout 0.5 s) and waits
are for events with a timeout, never assertions about durations.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from shardmq.protocol.constants import MQTT5, ReasonCode
from shardmq.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers import WAIT, BrokerThread, Client, RawClient, expect, expect_silence, wait_for

# -- helpers --------------------------------------------------------------------


def raw_connect(
    raw: RawClient,
    client_id: str = "",
    clean_start: bool = True,
    keep_alive: int = 60,
    will: Will | None = None,
    **props: Any,
) -> Connack:
    raw.send_packet(
        Connect(
            client_id,
            protocol_version=raw.version,
            clean_start=clean_start,
            keep_alive=keep_alive,
            will=will,
            properties=Properties(**props),
        )
    )
    ack = expect(raw, Connack)
    assert ack.reason_code == ReasonCode.SUCCESS, ack
    return ack


def recv_exact(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(WAIT)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_offline(bt: BrokerThread, client_id: str) -> None:
    """Wait until the broker has seen the connection of ``client_id`` end.

    ``connection_lost`` removes the connection from the shard and detaches the
    session in the same call, so once it is gone the session is offline.
    """

    def gone() -> bool:
        return all(c.client_id != client_id for c in bt.broker._shard.connections)

    wait_for(lambda: bt.call(gone))


def persistent(
    clients: Callable[..., Client], bt: BrokerThread, cid: str, version: int, **kw: Any
) -> Client:
    """A client whose session outlives the connection (v5 expiry 300 s / v3.1.1 clean 0)."""
    kw.setdefault("session_expiry", 300)
    return clients(bt.port, client_id=cid, version=version, clean_start=False, **kw)


def payloads(c: Client) -> list[bytes]:
    """Every message that arrives (the first one waited for), as payloads."""
    return [c.get().payload] + [m.payload for m in c.drain()]


# -- clean start and persistent sessions ---------------------------------------


def test_clean_start_discards_old_session(broker, clients, version):
    """[MQTT-3.1.2-4] Clean Start 1 discards any existing session: session
    present 0 [MQTT-3.2.2-2] and the old subscriptions no longer match."""
    sub = persistent(clients, broker, "cs", version)
    sub.connect()
    sub.subscribe("t/a", 1)
    sub.disconnect()
    wait_offline(broker, "cs")

    again = clients(broker.port, client_id="cs", version=version, clean_start=True)
    flags, _, _ = again.connect()
    assert flags.session_present is False
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/a", b"x", qos=1)
    again.expect_nothing()


def test_persistent_session_keeps_subscriptions(broker, clients, version):
    """Clean Start 0 with a stored session: session present 1 [MQTT-3.2.2-3] and the
    subscriptions still deliver without subscribing again."""
    sub = persistent(clients, broker, "keep", version)
    flags, _, _ = sub.connect()
    assert flags.session_present is False
    sub.subscribe("t/a", 1)
    sub.disconnect()
    wait_offline(broker, "keep")

    again = persistent(clients, broker, "keep", version)
    flags, _, _ = again.connect()
    assert flags.session_present is True
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/a", b"still here", qos=1)
    assert again.get().payload == b"still here"


def test_offline_qos1_qos2_messages_are_queued(broker, clients, version):
    """QoS 1 and 2 messages for an offline persistent session are stored and
    delivered, in order and at their QoS, on reconnect [MQTT-3.1.2-5]."""
    sub = persistent(clients, broker, "q", version)
    sub.connect()
    sub.subscribe("t/q", 2)
    sub.disconnect()
    wait_offline(broker, "q")

    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/q", b"one", qos=1)
    pub.publish("t/q", b"two", qos=2)

    again = persistent(clients, broker, "q", version)
    again.connect()
    first, second = again.get(), again.get()
    assert (first.payload, first.qos) == (b"one", 1)
    assert (second.payload, second.qos) == (b"two", 2)
    again.expect_nothing()


def test_offline_qos0_not_queued_by_default(broker, clients, version):
    """QoS 0 messages are not stored for an offline session unless
    ``queue_qos0_offline`` is set (spec 4.1 leaves it to the server; Mosquitto's
    default is not to queue them)."""
    sub = persistent(clients, broker, "z", version)
    sub.connect()
    sub.subscribe("t/z", 1)
    sub.disconnect()
    wait_offline(broker, "z")

    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/z", b"zero", qos=0)
    pub.publish("t/z", b"one", qos=1)  # its PUBACK means "zero" was routed too

    again = persistent(clients, broker, "z", version)
    again.connect()
    assert payloads(again) == [b"one"]


def test_offline_qos0_queued_when_enabled(make_broker, clients, version):
    """With ``queue_qos0_offline=True`` QoS 0 messages are kept for an offline session."""
    bt = make_broker(queue_qos0_offline=True)
    sub = persistent(clients, bt, "z", version)
    sub.connect()
    sub.subscribe("t/z", 1)
    sub.disconnect()
    wait_offline(bt, "z")

    pub = clients(bt.port, version=version)
    pub.connect()
    pub.publish("t/z", b"zero", qos=0)
    pub.publish("t/z", b"one", qos=1)

    again = persistent(clients, bt, "z", version)
    again.connect()
    assert payloads(again) == [b"zero", b"one"]


def _fill_offline_queue(bt: BrokerThread, clients: Callable[..., Client], version: int) -> Client:
    """Subscribe, go offline, publish m0..m4 at QoS 1, come back."""
    sub = persistent(clients, bt, "bounded", version)
    sub.connect()
    sub.subscribe("t/b", 1)
    sub.disconnect()
    wait_offline(bt, "bounded")
    pub = clients(bt.port, version=version)
    pub.connect()
    for i in range(5):
        pub.publish("t/b", f"m{i}".encode(), qos=1)
    again = persistent(clients, bt, "bounded", version)
    again.connect()
    return again


def test_offline_queue_bounded_drop_oldest(make_broker, clients, version):
    """``max_queued_messages=3`` with policy "oldest": the two oldest are dropped
    and counted in ``stats.messages_dropped``."""
    bt = make_broker(max_queued_messages=3, queue_drop_policy="oldest")
    again = _fill_offline_queue(bt, clients, version)
    assert payloads(again) == [b"m2", b"m3", b"m4"]
    assert bt.call(lambda: bt.broker.stats.messages_dropped) == 2


def test_offline_queue_bounded_drop_newest(make_broker, clients, version):
    """``max_queued_messages=3`` with policy "newest": the two newest are dropped
    and counted in ``stats.messages_dropped``."""
    bt = make_broker(max_queued_messages=3, queue_drop_policy="newest")
    again = _fill_offline_queue(bt, clients, version)
    assert payloads(again) == [b"m0", b"m1", b"m2"]
    assert bt.call(lambda: bt.broker.stats.messages_dropped) == 2


# -- session expiry (v5) ------------------------------------------------------


def test_session_expires_after_interval(broker, clients):
    """Spec 3.1.2.11.2: the session is discarded once the Session Expiry Interval
    has passed after the connection closed: session present 0, no subscriptions."""
    sub = clients(broker.port, client_id="exp", clean_start=False, session_expiry=1)
    sub.connect()
    sub.subscribe("t/e", 1)
    sub.disconnect()
    wait_offline(broker, "exp")
    assert broker.call(lambda: "exp" in broker.broker._shard.sessions)
    # the broker forgets the session by itself once the interval has passed...
    broker.advance(1.0)
    assert broker.call(lambda: "exp" not in broker.broker._shard.sessions)
    # ...and the client sees that

    again = clients(broker.port, client_id="exp", clean_start=False, session_expiry=300)
    flags, _, _ = again.connect()
    assert flags.session_present is False
    pub = clients(broker.port)
    pub.connect()
    pub.publish("t/e", b"x", qos=1)
    again.expect_nothing()


def test_disconnect_sets_session_expiry_to_zero(broker, clients):
    """Spec 3.14.2.2.2: the Session Expiry Interval sent on DISCONNECT replaces the
    CONNECT one; 0 ends the session when the connection closes."""
    sub = clients(broker.port, client_id="dz", clean_start=False, session_expiry=300)
    sub.connect()
    sub.subscribe("t/d", 1)
    sub.disconnect(properties={"SessionExpiryInterval": 0})
    wait_offline(broker, "dz")

    again = clients(broker.port, client_id="dz", clean_start=False, session_expiry=300)
    flags, _, _ = again.connect()
    assert flags.session_present is False


def test_disconnect_extends_session_expiry(broker, clients):
    """Spec 3.14.2.2.2: a longer Session Expiry Interval on DISCONNECT keeps the
    session past the interval given in CONNECT."""
    sub = clients(broker.port, client_id="dx", clean_start=False, session_expiry=1)
    sub.connect()
    sub.subscribe("t/d", 1)
    sub.disconnect(properties={"SessionExpiryInterval": 300})
    wait_offline(broker, "dx")
    broker.advance(1.5)  # past the CONNECT's 1 s (the broker's clock)

    again = clients(broker.port, client_id="dx", clean_start=False, session_expiry=300)
    flags, _, _ = again.connect()
    assert flags.session_present is True


def test_disconnect_nonzero_expiry_after_zero_is_protocol_error(broker, raw_clients):
    """Spec 3.14.2.2.2: CONNECT with expiry 0 then DISCONNECT with a non-zero expiry
    is a Protocol Error: DISCONNECT 0x82, connection closed, session not kept."""
    raw = raw_clients(broker.port)
    raw_connect(raw, "pe", clean_start=False)
    raw.send_packet(Disconnect(0, Properties(session_expiry_interval=60)))
    dis = expect(raw, Disconnect)
    assert dis.reason_code == ReasonCode.PROTOCOL_ERROR
    assert raw.closed()
    wait_offline(broker, "pe")

    again = raw_clients(broker.port)
    ack = raw_connect(again, "pe", clean_start=False, session_expiry_interval=60)
    assert ack.session_present is False


# -- takeover and client identifiers ------------------------------------------------


def test_session_takeover(broker, clients, raw_clients, version):
    """[MQTT-3.1.4-3] a second connection with the same client id takes over: the
    first gets DISCONNECT 0x8E (v5) and is closed; the session continues."""
    old = raw_clients(broker.port, version)
    raw_connect(old, "dup", clean_start=False, session_expiry_interval=300)
    old.send_packet(Subscribe(1, [Subscription("t/x", 1)]))
    assert expect(old, Suback).reason_codes == [1]

    new = persistent(clients, broker, "dup", version)
    flags, _, _ = new.connect()
    assert flags.session_present is True
    if version == MQTT5:
        dis = expect(old, Disconnect)
        assert dis.reason_code == ReasonCode.SESSION_TAKEN_OVER
    assert old.closed()

    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/x", b"to the new one", qos=1)
    assert new.get().payload == b"to the new one"


def test_session_takeover_resends_unacknowledged(broker, clients, raw_clients, version):
    """The session continues across a takeover with Clean Start 0: a QoS 1 message
    the old connection never acknowledged is resent, with DUP, to the new one
    [MQTT-4.4.0-1]."""
    old = raw_clients(broker.port, version)
    raw_connect(old, "dup2", clean_start=False, session_expiry_interval=300)
    old.send_packet(Subscribe(1, [Subscription("t/x", 1)]))
    expect(old, Suback)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("t/x", b"unacked", qos=1)
    first = expect(old, Publish)  # not acknowledged

    new = raw_clients(broker.port, version)
    ack = raw_connect(new, "dup2", clean_start=False, session_expiry_interval=300)
    assert ack.session_present is True
    resent = expect(new, Publish)
    assert (resent.packet_id, resent.payload, resent.dup) == (first.packet_id, b"unacked", True)


def test_session_ending_with_its_connection_is_not_reused_by_takeover(
    broker, clients, raw_clients, version
):
    """[MQTT-3.1.2-6], [MQTT-3.2.2-2]: a Clean Session 1 session (3.1.1), or one with
    Session Expiry 0 (v5), lasts only as long as its connection. Taken over by a
    Clean Start 0 connection with the same id, it ends with the old connection: the
    new one gets session present 0 and an empty session (no old subscription)."""
    old = raw_clients(broker.port, version)
    # 3.1.1: Clean Session 1; v5: Clean Start 0 but no session expiry (0)
    raw_connect(old, "short", clean_start=version == 4)
    old.send_packet(Subscribe(1, [Subscription("short/t", 1)]))
    assert expect(old, Suback).reason_codes == [1]

    new = persistent(clients, broker, "short", version)
    flags, _, _ = new.connect()
    assert flags.session_present is False
    assert old.closed()
    new.subscribe("short/marker", 1)
    pub = clients(broker.port, version=version)
    pub.connect()
    pub.publish("short/t", b"old subscription", qos=1)
    pub.publish("short/marker", b"marker", qos=1)
    assert new.get().payload == b"marker"  # nothing for the old subscription first


def test_assigned_client_identifier_for_empty_id(broker, raw_clients):
    """[MQTT-3.1.3-7] / 3.2.2.3.7: an empty client id gets a server-assigned one,
    returned in CONNACK, different for each client."""
    first = raw_clients(broker.port)
    second = raw_clients(broker.port)
    a = raw_connect(first, "").properties.assigned_client_identifier
    b = raw_connect(second, "").properties.assigned_client_identifier
    assert a and b
    assert a != b


def test_no_assigned_client_identifier_when_client_sent_one(broker, raw_clients):
    """3.2.2.3.7: Assigned Client Identifier only answers an empty client id."""
    raw = raw_clients(broker.port)
    ack = raw_connect(raw, "mine")
    assert ack.properties.assigned_client_identifier is None


def test_v311_empty_client_id_without_clean_session_refused(broker, raw_clients):
    """[MQTT-3.1.3-8] (3.1.1): empty client id with CleanSession 0 gets CONNACK
    return code 0x02 (identifier rejected) and the connection is closed."""
    raw = raw_clients(broker.port, 4)
    raw.send_packet(Connect("", protocol_version=4, clean_start=False))
    assert recv_exact(raw.sock, 4) == b"\x20\x02\x00\x02"
    assert raw.closed()


def test_v311_empty_client_id_with_clean_session_accepted(broker, raw_clients):
    """[MQTT-3.1.3-6] (3.1.1): empty client id with CleanSession 1 is accepted."""
    raw = raw_clients(broker.port, 4)
    ack = raw_connect(raw, "", clean_start=True)
    assert ack.session_present is False


# -- keep alive ------------------------------------------------------------------------


def test_keep_alive_timeout_disconnects_and_publishes_will(broker, clients, raw_clients, version):
    """[MQTT-3.1.2-22] a client silent for 1.5 x keep alive is disconnected (v5:
    DISCONNECT 0x8D) and, not having sent DISCONNECT, its will is published."""
    watcher = clients(broker.port, version=version)
    watcher.connect()
    watcher.subscribe("will/ka", 1)
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "silent", keep_alive=1, will=Will("will/ka", b"timed out", qos=1))
    if version == MQTT5:
        dis = expect(raw, Disconnect)
        assert dis.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
    assert raw.closed()
    assert watcher.get().payload == b"timed out"


def test_keep_alive_zero_means_no_timeout(broker, raw_clients, version):
    """Spec 3.1.2.10: keep alive 0 turns the mechanism off; a silent client stays
    connected and is still answered."""
    raw = raw_clients(broker.port, version)
    raw_connect(raw, "idle", keep_alive=0)
    expect_silence(raw, 2.0)
    raw.send_packet(Pingreq())
    expect(raw, Pingresp)


def test_server_keep_alive_in_connack(make_broker, raw_clients):
    """Spec 3.2.2.3.14: ``server_keep_alive`` is sent as Server Keep Alive in CONNACK."""
    bt = make_broker(server_keep_alive=7)
    raw = raw_clients(bt.port)
    ack = raw_connect(raw, "ska", keep_alive=60)
    assert ack.properties.server_keep_alive == 7


def test_server_keep_alive_is_enforced(make_broker, raw_clients):
    """[MQTT-3.2.2-21] (v5) the Server Keep Alive replaces the client's value: a
    client asking for 60 s but silent past 1.5 x 1 s is disconnected with 0x8D."""
    bt = make_broker(server_keep_alive=1)
    raw = raw_clients(bt.port)
    raw_connect(raw, "ska", keep_alive=60)
    assert expect(raw, Disconnect).reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
    assert raw.closed()


def test_max_keep_alive_caps_client_value(make_broker, raw_clients):
    """(v5) ``max_keep_alive`` caps a larger client keep alive, and replaces 0, with
    a Server Keep Alive in CONNACK; a smaller one is left alone (Mosquitto's
    ``max_keepalive``)."""
    bt = make_broker(max_keep_alive=10)
    big = raw_clients(bt.port)
    assert raw_connect(big, "big", keep_alive=60).properties.server_keep_alive == 10
    zero = raw_clients(bt.port)
    assert raw_connect(zero, "zero", keep_alive=0).properties.server_keep_alive == 10
    small = raw_clients(bt.port)
    assert raw_connect(small, "small", keep_alive=5).properties.server_keep_alive is None


def test_max_keep_alive_is_enforced(make_broker, raw_clients):
    """(v5) the capped keep alive is the one applied: silent past 1.5 x 1 s means
    DISCONNECT 0x8D."""
    bt = make_broker(max_keep_alive=1)
    raw = raw_clients(bt.port)
    raw_connect(raw, "capped", keep_alive=60)
    assert expect(raw, Disconnect).reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
    assert raw.closed()


def test_v311_client_keeps_its_own_keep_alive_under_server_keep_alive(make_broker, raw_clients):
    """(3.1.1) ``server_keep_alive`` cannot be told to a 3.1.1 client, so its own keep
    alive is enforced (3.1.1 [MQTT-3.1.2-24]: closed after 1.5 times it): a silent
    client asking for 1 s is closed although the server keep alive is 60 s."""
    bt = make_broker(server_keep_alive=60)
    raw = raw_clients(bt.port, 4)
    raw_connect(raw, "own-ka", keep_alive=1)
    assert raw.closed()


def test_v311_keep_alive_zero_refused_when_max_keep_alive_is_set(make_broker, raw_clients):
    """(3.1.1) with ``max_keep_alive`` below 65535 and the default ``v311_keep_alive =
    "refuse"``, keep alive 0 (never timed out) is over the maximum too: return code
    0x02, as Mosquitto's max_keepalive does (README says so)."""
    bt = make_broker(max_keep_alive=30)
    raw = raw_clients(bt.port, 4)
    raw.send_packet(Connect("zero-ka", protocol_version=4, keep_alive=0))
    assert recv_exact(raw.sock, 4) == b"\x20\x02\x00\x02"
    assert raw.closed()


def test_v311_keep_alive_accept_lets_such_clients_in(make_broker, raw_clients):
    """(3.1.1) ``v311_keep_alive = "accept"``: a client with keep alive 0 or above
    ``max_keep_alive`` connects; keep alive 0 is never timed out (it is still
    answered after a silence longer than 1.5 x max_keep_alive), and one above the
    maximum is held to its own keep alive."""
    bt = make_broker(max_keep_alive=1, v311_keep_alive="accept")
    zero = raw_clients(bt.port, 4)
    raw_connect(zero, "ka-zero", keep_alive=0)
    above = raw_clients(bt.port, 4)
    raw_connect(above, "ka-above", keep_alive=60)
    expect_silence(zero, 2.0)
    zero.send_packet(Pingreq())
    expect(zero, Pingresp)
    above.send_packet(Pingreq())
    expect(above, Pingresp)  # not cut off at 1.5 x max_keep_alive either


def test_v311_keep_alive_above_max_refused(make_broker, raw_clients):
    """(3.1.1) 3.1.2.10 [MQTT-3.1.2-24] ties the server's timeout to the client's Keep
    Alive and 3.1.1 has no Server Keep Alive to announce a cap, so a compliant
    client pinging at its own interval would be cut off. The spec does not say
    what to do instead; Mosquitto 2.x (``max_keepalive``, handle_connect.c)
    refuses the CONNECT with return code 0x02 and closes. We expect the same."""
    bt = make_broker(max_keep_alive=1)
    raw = raw_clients(bt.port, 4)
    raw.send_packet(Connect("too-long", protocol_version=4, keep_alive=60))
    assert recv_exact(raw.sock, 4) == b"\x20\x02\x00\x02"
    assert raw.closed()


# -- connection limits -----------------------------------------------------------------


def test_connect_timeout_closes_silent_socket(make_broker, raw_clients):
    """A socket that never sends CONNECT is closed after ``connect_timeout``
    (spec 4.8 / 3.1.4 leave the delay to the server)."""
    bt = make_broker(connect_timeout=0.5)
    raw = raw_clients(bt.port)
    assert raw.closed(timeout=3.0)


def test_max_connections_refuses_extra_connection(make_broker, clients, raw_clients, version):
    """Over ``max_connections`` the CONNECT is refused: CONNACK 0x89 Server busy
    (v5) / return code 3 Server unavailable (3.1.1), then the socket is closed."""
    bt = make_broker(max_connections=1)
    first = clients(bt.port, version=version)
    first.connect()
    raw = raw_clients(bt.port, version)
    raw.send_packet(Connect("extra", protocol_version=version))
    if version == MQTT5:
        ack = expect(raw, Connack)
        assert ack.reason_code == ReasonCode.SERVER_BUSY
    else:
        assert recv_exact(raw.sock, 4) == b"\x20\x02\x00\x03"
    assert raw.closed()

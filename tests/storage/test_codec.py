"""The versioned serialisation: sessions and messages survive a round trip
byte-exact, and anything else is refused with FormatError, never guessed."""

from __future__ import annotations

import msgpack
import pytest

from shardmq.protocol.packets import Properties, Will
from shardmq.protocol.session import Message, Outbound, Session, Subscription
from shardmq.storage import codec


def _session() -> Session:
    s = Session("c1", 100, True, False)
    s.expiry_interval = 300
    s.expires_at = 1_900_000_000.25
    s.will = Will(
        "w/t",
        b"\x00\xff",
        1,
        True,
        Properties(will_delay_interval=30, user_properties=[("k", "a"), ("k", "b")]),
    )
    s.will_at = 1_900_000_030.0
    subs = s.own_subscriptions()
    subs["a/+"] = Subscription(s, "a/+", 1, True, False, 2, 7, None)
    subs["$share/g/b"] = Subscription(s, "b", 2, False, True, 0, None, "g")
    props = Properties(correlation_data=b"\x01\x02", content_type="x", payload_format_indicator=2)
    m = Message("a/1", bytes(range(256)), 2, False, props, 1_900_000_100.5, "pub")
    s.enqueue((m, 1, False, [7]))
    s.put_inflight(5, Outbound(m, 2, True, None))
    s.inflight[5].released = True
    s.inbound_qos2 = {3, 9}
    s.next_packet_id = 6
    s.dropped = 4
    return s


def test_session_round_trip() -> None:
    blob = codec.dumps(codec.SESSION, codec.pack_session(_session(), owner=3))
    rec = codec.unpack_session(codec.loads(blob, codec.SESSION))
    assert (rec.client_id, rec.expiry_interval, rec.owner) == ("c1", 300, 3)
    assert (rec.expires_at, rec.will_at) == (1_900_000_000.25, 1_900_000_030.0)
    assert rec.will is not None and rec.will.payload == b"\x00\xff"
    assert rec.will.properties.will_delay_interval == 30
    assert rec.will.properties.user_properties == [("k", "a"), ("k", "b")]
    assert sorted(rec.subscriptions) == [
        ("$share/g/b", 2, False, True, 0, None),
        ("a/+", 1, True, False, 2, 7),
    ]
    ((msg, qos, retain, ids),) = rec.pending
    assert (msg.topic, msg.payload, msg.qos, msg.expiry_at, msg.origin) == (
        "a/1",
        bytes(range(256)),
        2,
        1_900_000_100.5,
        "pub",
    )
    assert msg.properties is not None and msg.properties.correlation_data == b"\x01\x02"
    assert msg.properties.payload_format_indicator == 2
    assert (qos, retain, ids) == (1, False, [7])
    ((pid, (imsg, iqos, iretain, iids), released),) = rec.inflight
    assert (pid, imsg.payload, iqos, iretain, iids, released) == (
        5,
        msg.payload,
        2,
        True,
        None,
        True,
    )
    assert (sorted(rec.inbound_qos2), rec.next_packet_id, rec.dropped) == ([3, 9], 6, 4)


def test_other_format_versions_and_garbage_refused() -> None:
    body = codec.pack_session(_session(), owner=0)
    newer = msgpack.packb([codec.FORMAT_VERSION + 1, codec.SESSION, body], use_bin_type=True)
    with pytest.raises(codec.FormatError, match="format version"):
        codec.loads(newer, codec.SESSION)
    with pytest.raises(codec.FormatError, match="expected"):
        codec.loads(codec.dumps(codec.SNAPSHOT, body), codec.SESSION)
    for bad in (b"", b"\xc1", codec.dumps(codec.SESSION, body)[:-3]):
        with pytest.raises(codec.FormatError):
            codec.loads(bad, codec.SESSION)
    with pytest.raises(codec.FormatError):
        codec.unpack_session({"cid": "x"})

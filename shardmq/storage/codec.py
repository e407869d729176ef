"""The one versioned serialisation of broker state (msgpack).

Theory of operation
-------------------
Stores, the snapshot file and the hand-over of a session between workers all
write the same shapes, built here from the live objects of
``protocol/session.py`` and read back into plain records (``SessionRecord``)
that the shard installs. Every top-level blob is ``[FORMAT_VERSION, kind,
body]``; a reader refuses a version it does not know with ``FormatError``
instead of guessing. Times are absolute wall-clock seconds (message expiry,
session expiry, will delay), so state written before a restart means the
same after it. Properties are kept whole (a will's delay and expiry
included), user properties as a list of pairs so order and repeated keys
survive; payloads and correlation data stay bytes.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..protocol.packets import Properties, Will
from ..protocol.session import Delivery, Message, Session

FORMAT_VERSION = 1

#: what a top-level blob holds
SNAPSHOT = "snapshot"
SESSION = "session"


class FormatError(ValueError):
    """Data that is not (or not any more) in a format this version reads."""


# -- properties, messages, wills ------------------------------------------------------


def pack_properties(props: Properties | None) -> dict[str, Any] | None:
    if props is None:
        return None
    out: dict[str, Any] = {}
    for name, value in props.items():
        if name == "user_properties":
            out[name] = [list(pair) for pair in value]  # type: ignore[attr-defined]
        else:
            out[name] = value
    return out or None


def unpack_properties(data: dict[str, Any] | None) -> Properties | None:
    if not data:
        return None
    props = Properties()
    for name, value in data.items():
        if name not in Properties.__slots__:
            raise FormatError(f"unknown property {name!r}")
        if name == "user_properties":
            value = [(k, v) for k, v in value]
        setattr(props, name, value)
    return props


def pack_message(msg: Message) -> list[Any]:
    return [
        msg.topic,
        msg.payload,
        msg.qos,
        msg.retain,
        pack_properties(msg.properties),
        msg.expiry_at,
        msg.origin,
    ]


def unpack_message(data: list[Any]) -> Message:
    try:
        topic, payload, qos, retain, props, expiry_at, origin = data
    except (TypeError, ValueError):
        raise FormatError("not a message") from None
    return Message(topic, payload, qos, retain, unpack_properties(props), expiry_at, origin)


def pack_delivery(delivery: Delivery) -> list[Any]:
    msg, qos, retain, ids = delivery
    return [pack_message(msg), qos, retain, ids]


def unpack_delivery(data: list[Any]) -> Delivery:
    packed, qos, retain, ids = data
    return (unpack_message(packed), qos, retain, ids)


def pack_will(will: Will | None) -> list[Any] | None:
    if will is None:
        return None
    return [will.topic, will.payload, will.qos, will.retain, pack_properties(will.properties)]


def unpack_will(data: list[Any] | None) -> Will | None:
    if data is None:
        return None
    topic, payload, qos, retain, props = data
    return Will(topic, payload, qos, retain, unpack_properties(props))


# -- sessions -------------------------------------------------------------------------------

#: a subscription as stored: (full filter, qos, no local, retain as published,
#: retain handling, subscription identifier)
SubscriptionRecord = tuple[str, int, bool, bool, int, "int | None"]


@dataclass
class SessionRecord:
    """A session as stored, ready for the shard to install."""

    client_id: str
    expiry_interval: int
    #: wall-clock expiry while offline (None: online when saved, or never)
    expires_at: float | None = None
    will: Will | None = None
    will_at: float | None = None
    subscriptions: list[SubscriptionRecord] = field(default_factory=list)
    pending: list[Delivery] = field(default_factory=list)
    #: (packet id, delivery, PUBREC received) in send order
    inflight: list[tuple[int, Delivery, bool]] = field(default_factory=list)
    inbound_qos2: list[int] = field(default_factory=list)
    next_packet_id: int = 1
    dropped: int = 0
    #: the shard that owned it when it was saved
    owner: int = 0


def subscription_records(session: Session) -> list[SubscriptionRecord]:
    return [
        (f, s.qos, s.no_local, s.retain_as_published, s.retain_handling, s.identifier)
        for f, s in session.subscriptions.items()
    ]


def pack_session_header(session: Session, owner: int) -> dict[str, Any]:
    """What changes rarely: expiry, deadlines, will, packet id counter."""
    return {
        "cid": session.client_id,
        "expiry": session.expiry_interval,
        "expires_at": session.expires_at,
        "will": pack_will(session.will),
        "will_at": session.will_at,
        "next_pid": session.next_packet_id,
        "dropped": session.dropped,
        "owner": owner,
    }


def pack_session(session: Session, owner: int) -> dict[str, Any]:
    """The whole session: header, subscriptions, queue, in flight, inbound QoS 2."""
    out = pack_session_header(session, owner)
    out["subs"] = [list(s) for s in subscription_records(session)]
    out["pending"] = [pack_delivery(d) for d in session.pending]
    out["inflight"] = [
        [pid, pack_delivery((o.message, o.qos, o.retain, o.subscription_ids)), o.released]
        for pid, o in session.inflight.items()
    ]
    out["qos2"] = sorted(session.inbound_qos2)
    return out


def unpack_session(data: dict[str, Any]) -> SessionRecord:
    try:
        return SessionRecord(
            client_id=data["cid"],
            expiry_interval=data["expiry"],
            expires_at=data.get("expires_at"),
            will=unpack_will(data.get("will")),
            will_at=data.get("will_at"),
            subscriptions=[
                (f, q, bool(nl), bool(rap), rh, ident)
                for f, q, nl, rap, rh, ident in data.get("subs", ())
            ],
            pending=[unpack_delivery(d) for d in data.get("pending", ())],
            inflight=[
                (pid, unpack_delivery(d), bool(released))
                for pid, d, released in data.get("inflight", ())
            ],
            inbound_qos2=list(data.get("qos2", ())),
            next_packet_id=data.get("next_pid", 1),
            dropped=data.get("dropped", 0),
            owner=data.get("owner", 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"not a session: {exc}") from None


# -- envelopes ---------------------------------------------------------------------------------


def dumps(kind: str, body: Any) -> bytes:
    return msgpack.packb([FORMAT_VERSION, kind, body], use_bin_type=True)  # type: ignore[no-any-return]


def loads(data: bytes, kind: str) -> Any:
    """The body of a blob of ``kind``; FormatError for anything else."""
    try:
        version, got, body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise FormatError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if version != FORMAT_VERSION:
        raise FormatError(f"format version {version!r}, this broker reads {FORMAT_VERSION}")
    if got != kind:
        raise FormatError(f"holds {got!r}, expected {kind!r}")
    return body

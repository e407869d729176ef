"""PUBACK, PUBREC, PUBREL and PUBCOMP: the acknowledgement flows (sans-I/O).

Outbound (we sent the PUBLISH): PUBACK ends a QoS 1 flow; PUBREC moves a QoS
2 flow to "released" and is answered with PUBREL, or ends it when its reason
code is an error; only a PUBCOMP answering our PUBREL ends a QoS 2 flow
([MQTT-4.3.3-3], 3.1.1 [MQTT-4.3.3-1]). Inbound (the client sent it): PUBREL
releases the packet id and is answered with PUBCOMP. Every change goes
through the Session's methods, so the store's journal hears of it; the
functions return whether the client's receive window has a free slot again
and the reply to send, which the connection writes.
"""

from __future__ import annotations

from ..codec import sendable_code
from ..constants import MQTT5, PacketType, ReasonCode
from ..packets import Properties, Pubcomp, Pubrel
from ..session import Session


def on_puback(session: Session, packet_id: int) -> bool:
    """True when it ended a QoS 1 flow (a window slot is free)."""
    out = session.inflight.get(packet_id)
    if out is not None and out.qos == 1:
        session.end_flight(packet_id)
        return True
    return False


def on_pubrec(
    session: Session, packet_id: int, reason_code: int, version: int
) -> tuple[bool, Pubrel | None]:
    """(a window slot is free, the PUBREL to send)."""
    out = session.inflight.get(packet_id)
    if out is not None and out.qos == 2:
        if reason_code >= 0x80:
            # the receiver refused it: the flow ends here
            session.end_flight(packet_id)
            return True, None
        session.release(packet_id, out)
        return False, Pubrel(packet_id)
    if reason_code < 0x80:
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if version == MQTT5 else 0
        return False, Pubrel(packet_id, code)
    return False, None


def on_pubcomp(session: Session, packet_id: int) -> bool:
    """True when it ended a QoS 2 flow whose PUBREL we sent."""
    out = session.inflight.get(packet_id)
    if out is not None and out.qos == 2 and out.released:
        session.end_flight(packet_id)
        return True
    return False


def on_pubrel(
    session: Session,
    packet_id: int,
    version: int,
    code: int | None = None,
    reason: str | None = None,
    problem_info: bool = True,
) -> Pubcomp:
    """The PUBCOMP answering an inbound PUBREL (``code``/``reason``: a hook's
    verdict); an unknown packet id gets 0x92 in MQTT 5."""
    if session.release_inbound(packet_id):
        if code is None:
            code = ReasonCode.SUCCESS
    elif code is None:
        code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
    code = sendable_code(PacketType.PUBCOMP, code)
    props = None
    if version == MQTT5:
        if reason and problem_info:
            props = Properties(reason_string=reason)
    else:
        code = 0
    return Pubcomp(packet_id, code, props)

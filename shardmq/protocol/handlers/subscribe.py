"""SUBSCRIBE and UNSUBSCRIBE: the checks, the hook's verdicts, the reason codes (sans-I/O).

``check_subscribe`` refuses a SUBSCRIBE the specification calls a Protocol
Error. A deciding hook answers for the whole packet or per entry;
``verdicts`` turns its answer into one verdict per entry and ``apply`` turns
an entry's verdict into either a refusal code or the QoS to grant. The
shard adds or removes the subscriptions; ``suback_codes`` and
``unsuback_codes`` put the results in the form each protocol version allows.
"""

from __future__ import annotations

from ...errors import HookError, ProtocolViolation
from ..codec import sendable_code
from ..constants import MQTT311, PacketType, ReasonCode
from ..packets import Subscribe

#: One entry's verdict: True/None allow, False refuse with 0x87, an int is a
#: granted maximum QoS (< 0x80) or a refusal reason code (>= 0x80).
Verdict = bool | int | None


def check_subscribe(packet: Subscribe, identifiers_available: bool) -> None:
    if packet.properties.subscription_identifiers and not identifiers_available:
        raise ProtocolViolation(ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
    for sub in packet.subscriptions:
        if sub.no_local and sub.topic_filter.startswith("$share/"):
            # [MQTT-3.8.3-4]
            raise ProtocolViolation(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")


def verdicts(result: object, entries: int) -> list[Verdict] | None:
    """A deciding hook's answer (or the HookError it raised) as one verdict
    per entry; None when everything is allowed as asked."""
    if isinstance(result, HookError):
        return [result.reason_code] * entries
    if result is False:
        return [ReasonCode.NOT_AUTHORIZED] * entries
    if isinstance(result, list | tuple):
        return [v if v is None or isinstance(v, bool) else int(v) for v in result]
    return None


def apply(verdicts: list[Verdict] | None, index: int, qos: int) -> tuple[int | None, int]:
    """(refusal reason code or None, the QoS to grant) for entry ``index``."""
    if verdicts is None or index >= len(verdicts):
        return None, qos
    v = verdicts[index]
    if v is False:
        return ReasonCode.NOT_AUTHORIZED, qos
    if v is True or v is None:
        return None, qos
    if v >= 0x80:
        return v, qos
    return None, min(qos, v)


def suback_codes(codes: list[int], version: int) -> list[int]:
    """3.1.1 has one failure code (0x80); v5 only the codes SUBACK may carry."""
    if version == MQTT311:
        return [c if c < 0x80 else 0x80 for c in codes]
    return [c if c < 0x80 else sendable_code(PacketType.SUBACK, c) for c in codes]


def unsuback_codes(codes: list[int]) -> list[int]:
    return [c if c < 0x80 else sendable_code(PacketType.UNSUBACK, c) for c in codes]

"""The admin API: who is connected, kick a client, who would get a topic,
publish, retained messages.

Theory of operation
-------------------
Every worker owns its own clients and sessions, so the questions about
clients are asked of every worker: worker 0's HTTP side (``http.py``) runs
:func:`local` for itself and sends the others an ADMIN_ASK frame over the
fabric (``cluster/local.py``), which each answers with :func:`local` run in
its own loop. Answers are plain lists and dicts of str, int and bool, so they
cross the msgpack link as they are. Publishing and the retained store need
no fan-out: a publish from worker 0 is routed to every worker like a
client's, and every worker holds the whole retained store.

Nothing here runs on the hot path: these are operator requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from ..cluster.nodes import node_id_of
from ..errors import MQTTError
from ..protocol.constants import MQTT5, ReasonCode
from ..protocol.packets import Properties
from ..protocol.session import NEVER_EXPIRES, Message, Session
from ..protocol.topics import is_valid_topic_filter, validate_topic_name

if TYPE_CHECKING:
    from .shard import Shard

log = logging.getLogger("shardmq.admin")

#: a worker that does not answer within this is left out (and named)
ASK_TIMEOUT = 2.0


class AdminError(Exception):
    """A request the API refuses: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- what each worker answers for itself ------------------------------------------


def local(shard: Shard, op: str, args: dict[str, Any]) -> Any:
    """This worker's answer to ``op`` (run in its own loop)."""
    if op == "clients":
        prefix = args.get("prefix") or ""
        username = args.get("username")
        out = []
        for cid, session in shard.sessions.items():
            if not cid.startswith(prefix):
                continue
            summary = _summary(shard, session)
            if username is not None and summary["username"] != username:
                continue
            out.append(summary)
        return out
    if op == "client":
        found = shard.sessions.get(args["id"])
        if found is None:
            return None
        detail = _summary(shard, found)
        detail["subscriptions"] = [
            _subscription(full_filter, sub) for full_filter, sub in found.subscriptions.items()
        ]
        return detail
    if op == "kick":
        return kick(shard, args["id"], bool(args.get("discard")))
    if op == "subscriptions":
        return receivers(shard, args["topic"])
    raise ValueError(f"unknown admin operation {op!r}")


def _summary(shard: Shard, session: Session) -> dict[str, Any]:
    conn: Any = session.connection
    expiry = session.expiry_interval
    out: dict[str, Any] = {
        "client_id": session.client_id,
        "connected": conn is not None,
        "username": getattr(conn, "username", None),
        "protocol": None,
        "peer": None,
        "worker": shard.shard_id,
        "subscriptions": len(session.subscriptions),
        "queued": len(session.pending),
        "inflight": len(session.inflight),
        "dropped": session.dropped,
        "session_expiry_interval": None if expiry == NEVER_EXPIRES else expiry,
    }
    if shard.config.cluster:
        out["node"] = node_id_of(shard.config)
    if conn is not None:
        out["protocol"] = "5.0" if conn.version == MQTT5 else "3.1.1"
        peer = conn.peer
        out["peer"] = f"{peer[0]}:{peer[1]}" if peer else None
    elif session.expires_at is not None:
        out["expires_in"] = max(0, round(session.expires_at - shard.clock()))
    return out


def _subscription(full_filter: str, sub: Any) -> dict[str, Any]:
    return {
        "topic_filter": full_filter,
        "qos": sub.qos,
        "no_local": sub.no_local,
        "retain_as_published": sub.retain_as_published,
        "retain_handling": sub.retain_handling,
        "identifier": sub.identifier,
        "share_group": sub.group,
    }


def kick(shard: Shard, client_id: str, discard: bool) -> str | None:
    """Disconnect ``client_id`` with 0x98 Administrative action (3.1.1: the
    connection is closed); ``discard`` ends its session as well. An offline
    session can only be discarded. What was done ("kicked", "discarded"), or
    None when this worker has no such session (or it is offline and not to
    be discarded)."""
    session = shard.sessions.get(client_id)
    if session is None:
        return None
    conn: Any = session.connection
    if conn is None:
        if not discard:
            return None
        shard.end_session(session)
        log.info("admin: discarded the offline session of %s", client_id)
        return "discarded"
    if discard:
        # the session ends with the connection (Shard.detach)
        session.expiry_interval = 0
    log.info("admin: disconnecting %s%s", client_id, " and its session" if discard else "")
    conn.fail(MQTTError(ReasonCode.ADMINISTRATIVE_ACTION, "disconnected by an administrator"))
    return "discarded" if discard else "kicked"


def receivers(shard: Shard, topic: str) -> list[dict[str, Any]]:
    """The subscriptions of this worker that match ``topic``; of a shared
    group, every member (one of them would get each message)."""
    out = []
    where: dict[str, Any] = {"worker": shard.shard_id}
    if shard.config.cluster:
        where["node"] = node_id_of(shard.config)
    for subscribers in shard.trie.match(topic):
        for cid, sub in subscribers.items():
            entry = _subscription(sub.topic_filter, sub)
            entry["client_id"] = cid
            entry.update(where)
            out.append(entry)
    for group in shard.shared.match(topic):
        for cid, sub in group.members.items():
            entry = _subscription(f"$share/{group.name}/{group.topic_filter}", sub)
            entry["client_id"] = cid
            entry.update(where)
            out.append(entry)
    return out


# -- the whole broker, asked from worker 0 --------------------------------------------


class Answers(NamedTuple):
    #: every answer, this worker's first
    answers: list[Any]
    #: the workers of this node that did not answer
    missing_workers: list[int]
    #: the other nodes of which some worker did not answer (cluster)
    missing_nodes: list[str]


async def ask_all(shard: Shard, op: str, args: dict[str, Any]) -> Answers:
    """Every worker's answer to ``op``: this one's, the other workers' of this
    node over the links between workers, and in a cluster every worker's of
    every other live node through Redis (``NodeLink.ask_admin``), each within
    ASK_TIMEOUT."""
    answers = [local(shard, op, args)]
    fabric: Any = shard.fabric
    missing: list[int] = []
    asks: list[Any] = []
    peers: list[int] = []
    if fabric.distributed and hasattr(fabric, "ask_admin"):
        peers = [p for p in range(fabric.workers) if p != shard.shard_id]
        asks = [fabric.ask_admin(p, op, args, ASK_TIMEOUT) for p in peers]
    link = getattr(fabric, "link", None)
    if link is not None:
        asks.append(link.ask_admin(op, args, ASK_TIMEOUT))
    replies = await asyncio.gather(*asks)
    for peer, (answered, result) in zip(peers, replies, strict=False):
        if answered:
            answers.append(result)
        else:
            missing.append(peer)
    missing_nodes: list[str] = []
    if link is not None:
        remote, missing_nodes = replies[-1]
        answers.extend(remote)
    return Answers(answers, missing, missing_nodes)


def publish(shard: Shard, body: Any) -> int:
    """POST /api/v1/publish: ``{"topic", "payload", "payload_encoding":
    "plain"|"base64", "qos", "retain", "properties": {...}}``, as EMQX's API
    takes it. Routed as a client's publish (to every worker); the number of
    matching subscriptions on this worker is returned."""
    if not isinstance(body, dict):
        raise AdminError(400, "expected a JSON object")
    topic = body.get("topic")
    if not isinstance(topic, str):
        raise AdminError(400, "topic: expected a string")
    try:
        validate_topic_name(topic)
    except MQTTError as exc:
        raise AdminError(400, f"topic: {exc}") from None
    payload = _payload(body.get("payload", ""), body.get("payload_encoding", "plain"))
    qos = body.get("qos", 0)
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise AdminError(400, f"qos: must be 0, 1 or 2, got {qos!r}")
    retain = body.get("retain", False)
    if not isinstance(retain, bool):
        raise AdminError(400, f"retain: expected true or false, got {retain!r}")
    props = _properties(body.get("properties"))
    return shard.publish_as_server(topic, payload, qos, retain, props)


def _payload(value: Any, encoding: Any) -> bytes:
    if not isinstance(value, str):
        raise AdminError(400, "payload: expected a string")
    if encoding == "plain":
        return value.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise AdminError(400, "payload: not valid base64") from None
    raise AdminError(400, f"payload_encoding: must be 'plain' or 'base64', got {encoding!r}")


_STR_PROPS = ("content_type", "response_topic")
_INT_PROPS = {"message_expiry_interval": 0xFFFFFFFF, "payload_format_indicator": 1}


def _properties(value: Any) -> Properties | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AdminError(400, "properties: expected a JSON object")
    props = Properties()
    for key, item in value.items():
        if key in _STR_PROPS:
            if not isinstance(item, str):
                raise AdminError(400, f"properties.{key}: expected a string")
            setattr(props, key, item)
        elif key in _INT_PROPS:
            if (
                isinstance(item, bool)
                or not isinstance(item, int)
                or not 0 <= item <= _INT_PROPS[key]
            ):
                raise AdminError(400, f"properties.{key}: expected 0 to {_INT_PROPS[key]}")
            setattr(props, key, item)
        elif key == "correlation_data":
            if not isinstance(item, str):
                raise AdminError(400, f"properties.{key}: expected a string")
            props.correlation_data = item.encode()
        elif key == "user_properties":
            if not isinstance(item, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in item.items()
            ):
                raise AdminError(400, "properties.user_properties: expected {name: value} strings")
            props.user_properties = list(item.items())
        else:
            raise AdminError(400, f"properties.{key}: unknown property")
    if props.response_topic is not None:
        try:
            validate_topic_name(props.response_topic)
        except MQTTError as exc:
            raise AdminError(400, f"properties.response_topic: {exc}") from None
    return props


# -- retained ---------------------------------------------------------------------------


def retained_view(shard: Shard, msg: Message) -> dict[str, Any]:
    try:
        payload, encoding = msg.payload.decode(), "plain"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(msg.payload).decode(), "base64"
    out: dict[str, Any] = {
        "topic": msg.topic,
        "payload": payload,
        "payload_encoding": encoding,
        "qos": msg.qos,
    }
    if msg.expiry_at is not None:
        out["expires_in"] = max(0, int(msg.expiry_at - shard.clock() + 0.999))
    props = msg.properties
    if props is not None:
        if props.content_type is not None:
            out["content_type"] = props.content_type
        if props.user_properties:
            out["user_properties"] = [list(pair) for pair in props.user_properties]
    return out


def retained_list(shard: Shard, topic_filter: str) -> list[dict[str, Any]]:
    if not is_valid_topic_filter(topic_filter):
        raise AdminError(400, f"filter: invalid topic filter {topic_filter!r}")
    return [
        retained_view(shard, msg)
        for msg in sorted(shard.retained_messages(topic_filter), key=lambda m: m.topic)
    ]


def retained_get(shard: Shard, topic: str) -> dict[str, Any] | None:
    for msg in shard.retained_messages(topic):
        if msg.topic == topic:
            return retained_view(shard, msg)
    return None


def retained_delete(shard: Shard, topic: str) -> bool:
    """Clear ``topic``'s retained message everywhere (every worker, the store,
    the other nodes), as an empty retained publish would, but delivering
    nothing to the subscribers."""
    if retained_get(shard, topic) is None:
        return False
    shard.set_retained(topic, None)
    log.info("admin: cleared the retained message of %s", topic)
    return True

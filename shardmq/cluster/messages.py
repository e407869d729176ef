"""Frames exchanged between shards, as msgpack-ready lists. Pure: no I/O.

Every frame is a list whose first item is its kind. Application messages
travel as (topic, payload, qos, retain, properties, expiry left in ms,
origin, origin shard, number at the origin shard, shards it was sent to);
properties as a dict of the set fields, user properties as a list of
pairs so repeated keys and their order survive.
"""

from __future__ import annotations

from typing import Any

from ..protocol.packets import Properties

# link set-up
HELLO = 0  # [HELLO, shard_id, link kind ("ctl" | "data")]
# interest
INTEREST_FULL = 1  # [.., [[full_filter, count], ...]]
SUB_ADD = 2  # [.., full_filter]
SUB_DEL = 3  # [.., full_filter]
# routing
PUBLISH = 4  # [.., message, (nid)]  deliver to local non-shared subscribers
PUBLISH_SHARED = 5  # [.., message, group, filter]  deliver to one local member
# retained replication
RETAIN = 6  # [.., topic, message | None, stamp]
RETAINED_FULL = 7  # [.., [[topic, message, stamp], ...]]
# barrier: everything sent before PING on this link has been applied
PING = 8  # [.., seq]
PONG = 9  # [.., seq]
# session ownership
CLAIM = 10  # [.., req, client_id, shard_id]         to the home shard
CLAIMED = 11  # [.., req, epoch, previous owner | None]
TAKE = 12  # [.., req, client_id, epoch, clean_start]   to the previous owner
SESSION = 13  # [.., req, session state | None]
RELEASE = 14  # [.., client_id, epoch]                 to the home shard
OWNED = 15  # [.., [[client_id, epoch], ...]]          re-teach a restarted home
STATS = 16  # [.., shard_id, {name: value}]
# a message for one session that moved away from the sending shard
DELIVER = 17  # [.., client_id, message, qos, retain, subscription ids, (nid)]
# the claimant of a client id reports to the home shard that its claim is settled
DONE = 18  # [.., client_id, epoch]
# durable store: after the QoS 1/2 messages of one loop iteration, on the data
# link; answered once the peer's store holds what they delivered
SYNC = 19  # [.., token]
SYNCED = 20  # [.., token, stored (bool)]
# metrics and health: worker 0's HTTP side asks, a peer answers
FIGURES_ASK = 21  # [.., req]
FIGURES = 22  # [.., req, {name: value}]   answered from inside the peer's loop
# the admin API: worker 0's HTTP side asks every worker about its own clients
ADMIN_ASK = 23  # [.., req, op, {arg: value}]
ADMIN = 24  # [.., req, result]   answered from inside the peer's loop
REPLY = frozenset({CLAIMED, SESSION, PONG, FIGURES, ADMIN})


# -- between nodes (Redis Streams, ``streams.py``) -----------------------------------
#
# A stream entry is one field, ``e``: the packed header
# [NODE_FORMAT, node id, worker id, workers, epoch, number] followed by the
# packed frames the sending process had for that node in one loop iteration.
# The number grows by one per entry from one process (epoch) to one node, so
# a receiver drops an entry written twice (a batch resent after its reply was
# lost) by its number.
NODE_FORMAT = 1
N_PUBLISH = 1  # [.., message, number]         deliver to local plain subscribers
N_RETAIN = 2  # [.., topic, message | None, stamp]
N_RETAINED_FULL = 3  # [.., [[topic, message, stamp], ...]]
N_SUB_ADD = 4  # [.., version, full filter]     the sender holds it now
N_SUB_DEL = 5  # [.., version, full filter]     the sender no longer holds it
N_INTEREST = 6  # [..]                          reload the sender's interest hash
N_PING = 7  # [.., token]   answered with N_PONG once everything before it is applied
N_PONG = 8  # [.., worker it answers, token]
N_BYE = 9  # [..]                               the sender stops: forget its interest
N_TAKE = 10  # [.., worker, client id, epoch wanted, claimant's epoch, clean start]
N_TAKEN = 11  # [.., worker, client id, claimant's epoch, found]  (owners.py)
N_SHARE = 12  # [.., version, $share/g/f, members]  the sender's members in a group now
N_SHARE_PUBLISH = 13  # [.., worker, message, group, filter]  for one member of that worker's
# the admin API: every process of the asked node answers for its own clients
N_ADMIN_ASK = 14  # [.., token, op, {arg: value}]
N_ADMIN = 15  # [.., worker it answers, token, result]
# for a session that moved to the worker named, sent on by its old owner
# for MOVED_GRACE (``Shard.forward_moved``); nid as in ``Message.nid``
N_DELIVER = 16  # [.., worker, client id, message, qos, retain, subscription ids, nid | None]

#: what a forwarded message keeps: topic alias and subscription identifiers
#: are per connection, message expiry travels as time left
FORWARDED = ("payload_format_indicator", "content_type", "response_topic", "correlation_data")


def pack_properties(props: Properties | None) -> dict[str, Any] | None:
    if props is None:
        return None
    out: dict[str, Any] = {}
    for name in FORWARDED:
        value = getattr(props, name)
        if value is not None:
            out[name] = value
    if props.user_properties is not None:
        out["user_properties"] = [list(pair) for pair in props.user_properties]
    return out or None


def unpack_properties(data: dict[str, Any] | None) -> Properties | None:
    if not data:
        return None
    props = Properties()
    for name, value in data.items():
        if name == "user_properties":
            value = [(k, v) for k, v in value]
        setattr(props, name, value)
    return props

"""Membership's keys and the parsing of its beat script's reply (the script
itself runs against a real Redis in test_nodes.py)."""

from __future__ import annotations

from shardmq.cluster.nodes import Membership, node_id_of
from shardmq.config import Config


def test_beat_reply_parsing() -> None:
    membership = Membership("P", "a", "tok", 2, 2.5)
    assert membership.key == "P:{nodes}:a" and membership.ttl_ms == 2500
    assert membership.value == "tok 2"
    held, live = Membership.parse([1, b"a", b"tok 2", b"b", b"zz 4", b"old", b"x"])
    assert held is True
    assert live == {"a": 2, "b": 4, "old": 1}
    assert Membership.parse([0]) == (False, {})


def test_node_id_defaults_to_host_and_port() -> None:
    assert node_id_of(Config(node_id="eu-1")) == "eu-1"
    default = node_id_of(Config(port=1999))
    assert default.endswith(":1999") and len(default) > len(":1999")

"""The other nodes' interest (``cluster.interest.NodeInterest``): versioned
deltas per worker process, full reloads, and what wins when they race."""

from __future__ import annotations

from shardmq.cluster.interest import NodeInterest

A0 = ("a", 0)
A1 = ("a", 1)
B0 = ("b", 0)


def loaded(*procs: tuple[str, int]) -> NodeInterest:
    interest = NodeInterest()
    for proc in procs:
        assert interest.load(proc, 7, 0, [])
    return interest


def test_deltas_in_order_route_once_per_node() -> None:
    interest = loaded(A0, A1, B0)
    assert not interest
    assert interest.apply(A0, 7, 1, "s/+/t", True)
    assert interest.apply(A1, 7, 1, "s/#", True)
    assert interest.apply(B0, 7, 1, "other", True)
    # two processes of a match: a once
    assert interest.nodes_for("s/x/t") == {"a"}
    assert interest.nodes_for("other") == {"b"}
    assert interest.nodes_for("$SYS/x") == set()
    # a keeps wanting s/x/t while one of its processes does
    assert interest.apply(A0, 7, 2, "s/+/t", False)
    assert interest.nodes_for("s/x/t") == {"a"}
    assert interest.apply(A1, 7, 2, "s/#", False)
    assert interest.nodes_for("s/x/t") == set()


def test_a_gap_or_an_unknown_epoch_asks_for_a_reload() -> None:
    interest = loaded(A0)
    assert interest.apply(A0, 7, 1, "x", True)
    assert not interest.apply(A0, 7, 3, "y", True)  # version 2 went missing
    assert interest.nodes_for("y") == set()
    assert not interest.apply(A0, 8, 1, "y", True)  # the process restarted
    assert not interest.apply(B0, 1, 1, "y", True)  # never loaded
    # a delta already covered by a reload is not applied twice
    assert interest.load(A0, 7, 5, ["x", "y"])
    assert interest.apply(A0, 7, 4, "y", False)
    assert interest.nodes_for("y") == {"a"}
    assert interest.apply(A0, 7, 6, "y", False)
    assert interest.nodes_for("y") == set()


def test_a_reload_older_than_what_is_applied_is_ignored() -> None:
    interest = loaded(A0)
    assert interest.apply(A0, 7, 1, "x", True)
    assert interest.apply(A0, 7, 2, "z", True)
    assert not interest.load(A0, 7, 1, ["x"])  # read before delta 2 was applied
    assert interest.nodes_for("z") == {"a"}
    # a new epoch replaces whatever was held
    assert interest.load(A0, 9, 0, ["w"])
    assert interest.nodes_for("x") == interest.nodes_for("z") == set()
    assert interest.nodes_for("w") == {"a"}


def test_dropping_a_node_or_a_process() -> None:
    interest = loaded(A0, A1, B0)
    interest.apply(A0, 7, 1, "t", True)
    interest.apply(A1, 7, 1, "t", True)
    interest.apply(B0, 7, 1, "t", True)
    interest.drop_process(A0)
    assert interest.nodes_for("t") == {"a", "b"}
    interest.drop_node("a")
    assert interest.nodes_for("t") == {"b"}
    assert A1 not in interest.versions and A1 not in interest.filters
    interest.drop_node("b")
    assert not interest


def test_shared_groups_are_kept_per_process_with_their_members() -> None:
    interest = loaded(A0, A1, B0)
    assert not interest.has_shared()
    assert interest.apply(A0, 7, 1, "$share/g/jobs/#", 2)
    assert interest.apply(B0, 7, 1, "$share/g/jobs/#", 1)
    assert interest.apply(A1, 7, 1, "$share/h/jobs/x", 1)
    assert interest.has_shared()
    # shared filters route per member, never as plain interest
    assert interest.nodes_for("jobs/x") == set()
    assert interest.shared_for("jobs/x") == {
        ("g", "jobs/#"): {A0: 2, B0: 1},
        ("h", "jobs/x"): {A1: 1},
    }
    assert interest.apply(A0, 7, 2, "$share/g/jobs/#", 1)  # one member left
    assert interest.apply(B0, 7, 2, "$share/g/jobs/#", 0)
    assert interest.shared_for("jobs/y") == {("g", "jobs/#"): {A0: 1}}
    # a reload brings counts; what it lacks is gone
    assert interest.load(A0, 7, 9, {"$share/g/jobs/#": 3, "plain": 5})
    assert interest.shared_for("jobs/y") == {("g", "jobs/#"): {A0: 3}}
    assert interest.nodes_for("plain") == {"a"}
    interest.drop_node("a")
    assert not interest.has_shared()
    assert interest.nodes_for("plain") == set()

"""The piggyback queue: retransmit limit, freshest first, replacement, bound."""

from __future__ import annotations

from agentnode.dissemination import Dissemination, retransmit_limit
from agentnode.messages import KIND_ALIVE, KIND_SUSPECT, Update


def up(node_id: str, kind: int = KIND_ALIVE, inc: int = 0) -> Update:
    return Update(kind, node_id, inc, "h:1", "", None)


def test_retransmit_limit_matches_memberlist() -> None:
    assert retransmit_limit(4, 10) == 8  # anchors.md: 8 at 10 nodes
    assert retransmit_limit(4, 100) == 12
    assert retransmit_limit(4, 1_000) == 16
    assert retransmit_limit(4, 1) == 4


def test_each_update_is_sent_exactly_limit_times() -> None:
    q = Dissemination(100)
    q.set_limit(3)
    q.enqueue(up("a"))
    sent = [q.take(10) for _ in range(5)]
    assert [len(batch) for batch in sent] == [1, 1, 1, 0, 0]
    assert len(q) == 0


def test_least_sent_first_then_newest_first() -> None:
    q = Dissemination(100)
    q.set_limit(10)
    q.enqueue(up("old"))
    q.take(1)  # "old" sent once
    q.enqueue(up("mid"))
    q.enqueue(up("new"))
    assert [u.node_id for u in q.take(3)] == ["new", "mid", "old"]


def test_a_batch_never_repeats_an_update() -> None:
    q = Dissemination(100)
    q.set_limit(16)
    for i in range(5):
        q.enqueue(up(f"n{i}"))
    batch = q.take(16)
    assert sorted(u.node_id for u in batch) == [f"n{i}" for i in range(5)]


def test_newer_update_replaces_queued_one_and_resets_its_count() -> None:
    q = Dissemination(100)
    q.set_limit(2)
    q.enqueue(up("a", KIND_SUSPECT, 1))
    q.take(5)
    q.enqueue(up("a", KIND_ALIVE, 2))
    assert len(q) == 1
    assert q.peek("a") == up("a", KIND_ALIVE, 2)
    assert q.take(5) == (up("a", KIND_ALIVE, 2),)
    assert q.take(5) == (up("a", KIND_ALIVE, 2),)
    assert q.take(5) == ()


def test_queue_is_bounded_dropping_the_most_sent() -> None:
    q = Dissemination(3)
    q.set_limit(10)
    q.enqueue(up("a"))
    q.take(1)
    q.take(1)  # "a" sent twice: the first to go
    q.enqueue(up("b"))
    q.enqueue(up("c"))
    q.enqueue(up("d"))
    assert len(q) == 3
    assert q.dropped == 1
    assert q.peek("a") is None


def test_take_respects_the_per_frame_limit() -> None:
    q = Dissemination(1000)
    q.set_limit(5)
    for i in range(40):
        q.enqueue(up(f"n{i}"))
    assert len(q.take(16)) == 16
    assert len(q.take(16)) == 16
    assert len(q.take(16)) == 16  # 8 fresh + 8 sent once

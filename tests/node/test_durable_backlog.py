"""DurableBacklog: FIFO per channel, a channel without room holds back only itself, bounded hand-over."""

from __future__ import annotations

from agentnode.durable_backlog import DurableBacklog


def test_take_is_fifo_per_channel_and_skips_channels_without_room() -> None:
    backlog: DurableBacklog[int] = DurableBacklog()
    for i in range(5):
        backlog.add("down", i)
        backlog.add("up", 100 + i)
    room = {"down": 0, "up": 3}
    runs, more = backlog.take(lambda key: room[key], limit=100)
    assert runs == [("up", [100, 101, 102])] and not more
    assert len(backlog) == 7
    room = {"down": 2, "up": 10}
    runs, more = backlog.take(lambda key: room[key], limit=100)
    assert runs == [("down", [0, 1]), ("up", [103, 104])]
    assert len(backlog) == 3


def test_take_stops_at_the_limit_and_says_so() -> None:
    backlog: DurableBacklog[int] = DurableBacklog()
    for i in range(10):
        backlog.add(("n", "a", 1), i)
    backlog.add(("n", "b", 1), 99)
    runs, more = backlog.take(lambda key: 100, limit=4)
    assert runs == [(("n", "a", 1), [0, 1, 2, 3])] and more
    runs, more = backlog.take(lambda key: 100, limit=100)
    assert runs == [(("n", "a", 1), [4, 5, 6, 7, 8, 9]), (("n", "b", 1), [99])] and not more
    assert len(backlog) == 0 and not backlog

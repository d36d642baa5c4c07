"""Committed durable messages waiting for room in the delivery queue, first in first out per channel.

A durable `send` returns once its message is in the outbox (decision 0122); the message then waits here
until the delivery core has room on its channel (dest node, dest agent, priority). One queue per
channel means a channel without room (a down node, a slow agent) holds back only its own messages,
and a pump costs O(channels + messages handed over), not O(messages waiting).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["DurableBacklog"]

T = TypeVar("T")


class DurableBacklog(Generic[T]):
    """Items by channel key, FIFO per key; `take` pops what each channel has room for."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[T]] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, key: Hashable, item: T) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._n += 1

    def take(self, room: Callable[[Hashable], int], limit: int) -> tuple[list[tuple[Hashable, list[T]]], bool]:
        """Pop up to `room(key)` items of each channel, at most `limit` in all, oldest channel first.
        Returns the (key, items) runs and whether `limit` cut it short (call again next turn)."""
        out: list[tuple[Hashable, list[T]]] = []
        left = limit
        for key in list(self._queues):
            if left <= 0:
                return out, True
            queue = self._queues[key]
            n = min(room(key), len(queue), left)
            if n <= 0:
                continue
            popleft = queue.popleft
            out.append((key, [popleft() for _ in range(n)]))
            if not queue:
                del self._queues[key]
            self._n -= n
            left -= n
        return out, False

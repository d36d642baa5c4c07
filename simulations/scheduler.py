"""Discrete-event scheduler: a heap of (time_ms, seq, kind, a, b) and a virtual integer clock.

Time never advances by itself: `pop` jumps the clock to the next due event, so a simulated
minute costs only the events inside it. `seq` breaks ties in insertion order, which makes the
order of simultaneous events a pure function of the run (never of object identity).
"""

from __future__ import annotations

import heapq
from typing import Any

__sans_io__ = True

__all__ = ["EVENTS_PENDING_MAX", "Scheduler", "SchedulerOverflow"]

EVENTS_PENDING_MAX = 20_000_000
"""Bound on pending events; beyond it the run is considered runaway (a core flooding the network)."""


class SchedulerOverflow(RuntimeError):
    """More events are pending than `events_pending_max`: a message storm or a timer loop."""


class Scheduler:
    """The event heap. Entries are plain tuples so that pushing millions stays cheap."""

    __slots__ = ("heap", "now_ms", "_seq", "events_pending_max", "events_run")

    def __init__(self, *, events_pending_max: int = EVENTS_PENDING_MAX) -> None:
        if events_pending_max < 1:
            raise ValueError("events_pending_max must be at least 1")
        self.heap: list[tuple[int, int, int, Any, Any]] = []
        self.now_ms = 0
        self._seq = 0
        self.events_pending_max = events_pending_max
        self.events_run = 0

    def push(self, time_ms: int, kind: int, a: Any = None, b: Any = None) -> None:
        """Schedule event `kind` with arguments `a`, `b` at `time_ms` (never in the past)."""
        if time_ms < self.now_ms:
            raise ValueError(f"cannot schedule at {time_ms} ms, the clock is already at {self.now_ms} ms")
        if len(self.heap) >= self.events_pending_max:
            raise SchedulerOverflow(
                f"{len(self.heap)} events pending (limit {self.events_pending_max}); "
                "a core is flooding the network or re-arming a timer in a loop"
            )
        self._seq += 1
        heapq.heappush(self.heap, (time_ms, self._seq, kind, a, b))

    def pop(self) -> tuple[int, int, int, Any, Any]:
        """Remove the next event and move the clock to its time."""
        entry = heapq.heappop(self.heap)
        self.now_ms = entry[0]
        self.events_run += 1
        return entry

    def next_time(self) -> int | None:
        """When the next event is due, or None if nothing is pending."""
        return self.heap[0][0] if self.heap else None

    def __len__(self) -> int:
        return len(self.heap)

"""What each node believes about every other node, rebuilt from the events its core emits.

Reading `members()` from every core at every check would cost N^2 per check; the events give the
same picture incrementally. Per-subject counters make the convergence check O(N), and the world
cross-checks this picture against `members()` at the end of a run (`mismatches`).
"""

from __future__ import annotations

__sans_io__ = True

__all__ = ["ALIVE", "DEAD", "LEFT", "STATE_CODES", "STATE_NAMES", "SUSPECT", "MembershipViews"]

ALIVE, SUSPECT, DEAD, LEFT = 1, 2, 3, 4
STATE_CODES = {"alive": ALIVE, "suspect": SUSPECT, "dead": DEAD, "left": LEFT}
STATE_NAMES = {code: name for name, code in STATE_CODES.items()}


class MembershipViews:
    """views[observer][subject] = state code (0: unknown), plus counters over running observers.

    One byte per (observer, subject): 1 MB at 1000 nodes, 100 MB at 10,000 (a dict per observer
    cost about 60 bytes per entry)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.views: list[bytearray] = [bytearray(capacity) for _ in range(capacity)]
        self.alive_seen_by = [0] * capacity
        """How many running observers see this subject alive."""
        self.suspect_seen_by = [0] * capacity
        self.alive_in_view = [0] * capacity
        """How many subjects this observer sees alive."""
        self.not_alive_since: dict[int, int] = {}
        """(observer * capacity + subject) -> when the observer stopped seeing the subject alive."""

    def set_state(self, observer: int, subject: int, state: int, now_ms: int) -> int:
        """Record a transition; returns the previous state (0 if unknown)."""
        view = self.views[observer]
        old = view[subject]
        if old == state:
            return old
        view[subject] = state
        if old == ALIVE:
            self.alive_seen_by[subject] -= 1
            self.alive_in_view[observer] -= 1
        elif old == SUSPECT:
            self.suspect_seen_by[subject] -= 1
        if state == ALIVE:
            self.alive_seen_by[subject] += 1
            self.alive_in_view[observer] += 1
            self.not_alive_since.pop(observer * self.capacity + subject, None)
        else:
            if state == SUSPECT:
                self.suspect_seen_by[subject] += 1
            if old in (0, ALIVE):
                self.not_alive_since[observer * self.capacity + subject] = now_ms
        return old

    def forget_observer(self, observer: int) -> None:
        """The observer's process is gone: its beliefs go with it."""
        view = self.views[observer]
        cap = self.capacity
        for subject, state in enumerate(view):
            if not state:
                continue
            if state == ALIVE:
                self.alive_seen_by[subject] -= 1
            else:
                if state == SUSPECT:
                    self.suspect_seen_by[subject] -= 1
                self.not_alive_since.pop(observer * cap + subject, None)
        self.views[observer] = bytearray(cap)
        self.alive_in_view[observer] = 0

    def state(self, observer: int, subject: int) -> int:
        return self.views[observer][subject]

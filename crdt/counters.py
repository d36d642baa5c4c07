"""Grow-only and positive-negative counters (Shapiro et al. 2011, "A comprehensive study of
Convergent and Commutative Replicated Data Types", sections 3.1.1-3.1.2; delta mutators after
Almeida et al. 2018, figure 3)."""

from __future__ import annotations

from typing import Any

from .base import Crdt, checked_replica
from .errors import CrdtUsageError
from .values import INT_MAX

__all__ = ["GCounter", "PNCounter"]


def _checked_amount(n: object) -> int:
    if type(n) is not int or n <= 0:
        raise CrdtUsageError(f"amount must be a positive int, got {n!r:.60}; use decrement() on a PNCounter to go down")
    return n  # type: ignore[return-value]


class GCounter(Crdt):
    """A counter that only grows: one slot per replica, joined by maximum, summed for the value."""

    __slots__ = ("_counts",)
    TYPE_NAME = "gcounter"

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @classmethod
    def _of(cls, counts: dict[str, int]) -> GCounter:
        c = cls()
        c._counts = counts
        return c

    def increment(self, replica: str, n: int = 1) -> GCounter:
        """Add `n` (> 0) to `replica`'s slot; return the delta (that one slot)."""
        checked_replica(replica)
        n = _checked_amount(n)
        total = self._counts.get(replica, 0) + n
        if total > INT_MAX:
            raise CrdtUsageError(f"counter slot of {replica!r} would exceed {INT_MAX} (the msgpack int range)")
        self._counts[replica] = total
        return GCounter._of({replica: total})

    def merge(self, other: GCounter) -> None:
        self._check_merge_type(other)
        counts = self._counts
        for replica, n in other._counts.items():
            if n > counts.get(replica, 0):
                counts[replica] = n

    def copy(self) -> GCounter:
        return GCounter._of(dict(self._counts))

    def value(self) -> int:
        return sum(self._counts.values())

    def is_bottom(self) -> bool:
        return not self._counts

    def mentions(self, replica: str) -> bool:
        return replica in self._counts

    def strip(self, replica: str) -> None:
        self._counts.pop(replica, None)

    def fold(self, removed: str, owner: str) -> None:
        """Add `removed`'s slot to `owner`'s (Akka `GCounter.prune`); only the owner may, once."""
        checked_replica(owner)
        n = self._counts.get(removed, 0)
        if not n or removed == owner:
            return
        total = self._counts.get(owner, 0) + n
        if total > INT_MAX:
            raise CrdtUsageError(f"folding {removed!r} into {owner!r} would exceed {INT_MAX} (the msgpack int range)")
        del self._counts[removed]
        self._counts[owner] = total

    def slots(self) -> list[tuple[str, int]]:
        """(replica, count) in replica order."""
        return sorted(self._counts.items())

    def __eq__(self, other: object) -> bool:
        return type(other) is GCounter and self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({dict(self.slots())!r})"

    OPS: dict[str, Any] = {"increment": lambda self, r, n=1: self.increment(r, n)}


class PNCounter(Crdt):
    """A counter that goes up and down: a pair of GCounters (increments, decrements)."""

    __slots__ = ("_p", "_n")
    TYPE_NAME = "pncounter"

    def __init__(self) -> None:
        self._p = GCounter()
        self._n = GCounter()

    @classmethod
    def _of(cls, p: GCounter, n: GCounter) -> PNCounter:
        c = cls()
        c._p, c._n = p, n
        return c

    def increment(self, replica: str, n: int = 1) -> PNCounter:
        """Add `n` (> 0); return the delta."""
        return PNCounter._of(self._p.increment(replica, n), GCounter())

    def decrement(self, replica: str, n: int = 1) -> PNCounter:
        """Subtract `n` (> 0); return the delta."""
        return PNCounter._of(GCounter(), self._n.increment(replica, n))

    def merge(self, other: PNCounter) -> None:
        self._check_merge_type(other)
        self._p.merge(other._p)
        self._n.merge(other._n)

    def copy(self) -> PNCounter:
        return PNCounter._of(self._p.copy(), self._n.copy())

    def value(self) -> int:
        return self._p.value() - self._n.value()

    def is_bottom(self) -> bool:
        return self._p.is_bottom() and self._n.is_bottom()

    def mentions(self, replica: str) -> bool:
        return self._p.mentions(replica) or self._n.mentions(replica)

    def strip(self, replica: str) -> None:
        self._p.strip(replica)
        self._n.strip(replica)

    def fold(self, removed: str, owner: str) -> None:
        p, n = self._p.copy(), self._n.copy()
        p.fold(removed, owner)
        n.fold(removed, owner)  # both checked before either half changes
        self._p, self._n = p, n

    @property
    def increments(self) -> GCounter:
        """The grow-only counter of increments (do not mutate)."""
        return self._p

    @property
    def decrements(self) -> GCounter:
        """The grow-only counter of decrements (do not mutate)."""
        return self._n

    def __eq__(self, other: object) -> bool:
        return type(other) is PNCounter and self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(p={dict(self._p.slots())!r}, n={dict(self._n.slots())!r})"

    OPS: dict[str, Any] = {
        "increment": lambda self, r, n=1: self.increment(r, n),
        "decrement": lambda self, r, n=1: self.decrement(r, n),
    }

"""Vector clocks: one counter per replica, compared to tell before, after, equal or concurrent.

Anchor: Mattern (1988) / Fidge (1988) vector time; Akka's `VectorClock` uses the same four-way
comparison. A `VectorClock` is an immutable value: every "mutator" returns a new clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping

from .errors import CrdtUsageError

__all__ = ["Ordering", "ReplicaId", "VectorClock"]

ReplicaId = str
"""A replica's id. The node maps its node ids onto these; the package only compares them."""


class Ordering(enum.Enum):
    """How two vector clocks relate (happened-before, Lamport 1978)."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


class VectorClock:
    """An immutable map replica -> counter; a missing replica counts 0 (zeros are not stored)."""

    __slots__ = ("_counters",)

    def __init__(self, counters: Mapping[ReplicaId, int] | Iterable[tuple[ReplicaId, int]] = ()) -> None:
        items = counters.items() if isinstance(counters, Mapping) else counters
        clean: dict[ReplicaId, int] = {}
        for replica, counter in items:
            if type(replica) is not str:
                raise CrdtUsageError(f"replica ids are str, got {type(replica).__name__}")
            if type(counter) is not int or counter < 0:
                raise CrdtUsageError(f"counter for {replica!r} must be an int >= 0, got {counter!r}")
            if counter:
                clean[replica] = counter
        self._counters = {r: clean[r] for r in sorted(clean)}

    @classmethod
    def _trusted(cls, counters: dict[ReplicaId, int]) -> VectorClock:
        """Build from an already-clean dict (no zeros); sorts it."""
        vc = cls.__new__(cls)
        vc._counters = {r: counters[r] for r in sorted(counters)}
        return vc

    def get(self, replica: ReplicaId) -> int:
        """The counter of `replica` (0 if never seen)."""
        return self._counters.get(replica, 0)

    def increment(self, replica: ReplicaId, by: int = 1) -> VectorClock:
        """A new clock with `replica`'s counter raised by `by` (> 0)."""
        if type(by) is not int or by <= 0:
            raise CrdtUsageError(f"increment must be a positive int, got {by!r}")
        counters = dict(self._counters)
        counters[replica] = counters.get(replica, 0) + by
        return VectorClock._trusted(counters)

    def merge(self, other: VectorClock) -> VectorClock:
        """The pointwise maximum (least upper bound) of two clocks."""
        counters = dict(self._counters)
        for replica, counter in other._counters.items():
            if counter > counters.get(replica, 0):
                counters[replica] = counter
        return VectorClock._trusted(counters)

    def meet(self, other: VectorClock) -> VectorClock:
        """The pointwise minimum (greatest lower bound): what both clocks have seen."""
        counters = {}
        for replica, counter in self._counters.items():
            low = min(counter, other._counters.get(replica, 0))
            if low:
                counters[replica] = low
        return VectorClock._trusted(counters)

    def compare(self, other: VectorClock) -> Ordering:
        """BEFORE if self happened before other, AFTER if after, EQUAL, or CONCURRENT."""
        less = greater = False
        for replica in self._counters.keys() | other._counters.keys():
            a, b = self._counters.get(replica, 0), other._counters.get(replica, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return Ordering.CONCURRENT
        if less:
            return Ordering.BEFORE
        if greater:
            return Ordering.AFTER
        return Ordering.EQUAL

    def covers(self, other: VectorClock) -> bool:
        """True if self has seen everything other has (self >= other pointwise)."""
        return all(self._counters.get(r, 0) >= c for r, c in other._counters.items())

    def covers_dot(self, replica: ReplicaId, counter: int) -> bool:
        """True if event number `counter` of `replica` is included."""
        return counter <= self._counters.get(replica, 0)

    def items(self) -> Iterator[tuple[ReplicaId, int]]:
        """(replica, counter) pairs in replica order."""
        return iter(self._counters.items())

    def to_dict(self) -> dict[ReplicaId, int]:
        """A fresh dict copy (replica order)."""
        return dict(self._counters)

    def __le__(self, other: VectorClock) -> bool:
        return other.covers(self)

    def __ge__(self, other: VectorClock) -> bool:
        return self.covers(other)

    def __lt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.BEFORE

    def __gt__(self, other: VectorClock) -> bool:
        return self.compare(other) is Ordering.AFTER

    def __len__(self) -> int:
        return len(self._counters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._counters == other._counters

    def __hash__(self) -> int:
        return hash(tuple(self._counters.items()))

    def __repr__(self) -> str:
        return f"VectorClock({self._counters!r})"

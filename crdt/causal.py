"""Dots and causal contexts: the bookkeeping behind observed-remove types.

A *dot* `(replica, counter)` names one event. A *causal context* is the set of dots a state has
seen, kept compact as a version vector (every dot up to `vv[r]` is seen) plus a *dot cloud* of
seen dots above a gap. This is the compact causal context of the delta-state CRDT paper
(Almeida, Shoker, Baquero, "Delta state replicated data types", JPDC 2018, section 5) and the
dotted version vectors of Preguiça et al. (2012).

`CausalContext` is mutable and owned by one CRDT (or shared by a map and its nested values).
It is always kept compacted, so equal dot sets have equal representations (canonical encoding).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeVar

from .values import canonical_bytes
from .vector_clock import ReplicaId, VectorClock

__all__ = ["DELTA_DOTS_MAX", "CausalContext", "Dot", "join_dot_funs", "join_dot_sets"]

DELTA_DOTS_MAX = 256
"""A merged state whose context holds at most this many dots is treated as a delta: only the
entries it can touch are re-joined, instead of every entry (an O(delta) instead of O(state) merge)."""

V = TypeVar("V")


class Dot(NamedTuple):
    """One event: the `counter`-th event created by `replica` (counters start at 1)."""

    replica: ReplicaId
    counter: int


class CausalContext:
    """A set of dots stored as a version vector plus a cloud of dots above gaps."""

    __slots__ = ("_vv", "_cloud")

    def __init__(self) -> None:
        self._vv: dict[ReplicaId, int] = {}
        self._cloud: set[Dot] = set()

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        """A context holding exactly `dots` (compacted)."""
        ctx = cls()
        ctx._cloud.update(dots)
        ctx.compact()
        return ctx

    @classmethod
    def from_parts(cls, vv: dict[ReplicaId, int], cloud: Iterable[Dot]) -> CausalContext:
        """A context from a version vector (counters > 0) and cloud dots (compacted)."""
        ctx = cls()
        ctx._vv = {r: c for r, c in vv.items() if c > 0}
        ctx._cloud.update(cloud)
        ctx.compact()
        return ctx

    def contains(self, dot: Dot) -> bool:
        """True if `dot` has been seen."""
        return dot.counter <= self._vv.get(dot.replica, 0) or dot in self._cloud

    def next_dot(self, replica: ReplicaId) -> Dot:
        """Allocate, record and return the next dot of `replica` (mutates the context)."""
        top = self._vv.get(replica, 0)
        if self._cloud:
            for d in self._cloud:
                if d.replica == replica and d.counter > top:
                    top = d.counter
        dot = Dot(replica, top + 1)
        self.add(dot)
        return dot

    def add(self, dot: Dot) -> None:
        """Record one dot."""
        vv = self._vv.get(dot.replica, 0)
        if dot.counter == vv + 1:
            self._vv[dot.replica] = dot.counter
            if self._cloud:
                self.compact()
        elif dot.counter > vv:
            self._cloud.add(dot)

    def merge(self, other: CausalContext) -> None:
        """Add every dot of `other` (least upper bound; mutates self only)."""
        vv = self._vv
        for replica, counter in other._vv.items():
            if counter > vv.get(replica, 0):
                vv[replica] = counter
        if other._cloud:
            self._cloud |= other._cloud
        if self._cloud:
            self.compact()

    def compact(self) -> None:
        """Fold cloud dots that extend the version vector into it; drop covered ones."""
        vv = self._vv
        keep: set[Dot] = set()
        for dot in sorted(self._cloud):
            top = vv.get(dot.replica, 0)
            if dot.counter == top + 1:
                vv[dot.replica] = dot.counter
            elif dot.counter > top:
                keep.add(dot)
        self._cloud = keep

    def mentions(self, replica: ReplicaId) -> bool:
        """True if any dot of `replica` has been seen."""
        return replica in self._vv or any(d.replica == replica for d in self._cloud)

    def strip(self, replica: ReplicaId) -> None:
        """Forget every dot of `replica` (pruning a removed replica; see `Crdt.strip`)."""
        self._vv.pop(replica, None)
        if self._cloud:
            self._cloud = {d for d in self._cloud if d.replica != replica}

    def copy(self) -> CausalContext:
        """An independent copy."""
        ctx = CausalContext()
        ctx._vv = dict(self._vv)
        ctx._cloud = set(self._cloud)
        return ctx

    def version_vector(self) -> VectorClock:
        """The contiguous part as a `VectorClock` (cloud dots are not included)."""
        return VectorClock._trusted(dict(self._vv))

    def vv_items(self) -> list[tuple[ReplicaId, int]]:
        """(replica, counter) of the version vector, in replica order."""
        return sorted(self._vv.items())

    def cloud(self) -> list[Dot]:
        """The cloud dots in order."""
        return sorted(self._cloud)

    def dots_missing_from(self, dots: Iterable[Dot]) -> set[Dot]:
        """The subset of `dots` this context has not seen."""
        vv, cloud = self._vv, self._cloud
        return {d for d in dots if d.counter > vv.get(d.replica, 0) and d not in cloud}

    def expand_if_small(self, dots_max: int) -> set[Dot] | None:
        """Every dot as a set if there are at most `dots_max` of them, else None (a delta's context is small)."""
        total = len(self._cloud)
        for counter in self._vv.values():
            total += counter
            if total > dots_max:
                return None
        if total > dots_max:
            return None
        return set(self)

    def is_empty(self) -> bool:
        """True if no dot has been seen."""
        return not self._vv and not self._cloud

    def __iter__(self) -> Iterator[Dot]:
        """Every dot, expanded (can be large; for tests and small contexts)."""
        for replica, counter in sorted(self._vv.items()):
            for n in range(1, counter + 1):
                yield Dot(replica, n)
        yield from sorted(self._cloud)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalContext) and self._vv == other._vv and self._cloud == other._cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext(vv={dict(sorted(self._vv.items()))!r}, cloud={self.cloud()!r})"


def _unseen(dots: set[Dot], ctx: CausalContext) -> set[Dot]:
    """Dots of `dots` not in `ctx` (fast path when the context is only a cloud)."""
    if not ctx._vv:
        return dots - ctx._cloud if ctx._cloud else set(dots)
    return ctx.dots_missing_from(dots)


def join_dot_sets(s1: set[Dot], c1: CausalContext, s2: set[Dot], c2: CausalContext) -> set[Dot]:
    """Join of two dot sets under their contexts: kept if in both, or in one and unseen by the other."""
    if s1 is s2:
        return set(s1)
    return (s1 & s2) | _unseen(s1, c2) | _unseen(s2, c1)


def join_dot_funs(f1: dict[Dot, V], c1: CausalContext, f2: dict[Dot, V], c2: CausalContext) -> dict[Dot, V]:
    """Join of two dot -> value maps: an entry is kept if in both, or in one and unseen by the other.

    One dot names one write, so both sides hold the same value under it; should a faulty peer
    send a different one, the larger canonical encoding wins so the join still commutes.
    """
    out: dict[Dot, V] = {}
    for dot, value in f1.items():
        if dot in f2:
            other = f2[dot]
            if other is not value and other != value and canonical_bytes(other) > canonical_bytes(value):
                value = other
            out[dot] = value
        elif not c2.contains(dot):
            out[dot] = value
    for dot, value in f2.items():
        if dot not in f1 and not c1.contains(dot):
            out[dot] = value
    return out

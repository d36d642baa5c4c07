"""Registers: last-writer-wins and multi-value.

LWWRegister (Shapiro et al. 2011, section 3.2.1): the write with the greatest
`(timestamp, replica id)` wins. The timestamp is an argument: a Lamport or hybrid logical clock
value the caller owns, never read from a wall clock here. Equal `(timestamp, replica)` with
different values can only come from a faulty peer; the larger canonical encoding of the value
wins so the join stays deterministic.

MVRegister (Almeida et al. 2018, figure 6; the Dynamo/Riak "siblings" register): a write
replaces every value it has seen; concurrent writes are all kept until a later write covers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .base import Crdt, DotStoreCrdt, checked_replica, checked_timestamp, checked_value
from .causal import CausalContext, Dot, join_dot_funs
from .errors import CrdtUsageError
from .values import canonical_bytes

__all__ = ["LWWRegister", "MVRegister"]


def lww_key(ts: int, replica: str, value: object) -> tuple[int, str, bytes]:
    """The total order of last-writer-wins: timestamp, then replica id, then the value's bytes."""
    return (ts, replica, canonical_bytes(value))


class LWWRegister(Crdt):
    """A register where the write with the greatest (timestamp, replica) wins."""

    __slots__ = ("_ts", "_replica", "_value")
    TYPE_NAME = "lwwregister"

    def __init__(self) -> None:
        self._ts = -1
        self._replica = ""
        self._value: Any = None

    @classmethod
    def _of(cls, ts: int, replica: str, value: Any) -> LWWRegister:
        r = cls()
        r._ts, r._replica, r._value = ts, replica, value
        return r

    def assign(self, replica: str, value: Any, timestamp: int) -> LWWRegister:
        """Write `value` at `timestamp`; return the delta (the new register).

        The write must be newer than the current one: `(timestamp, replica)` greater than
        `(self.timestamp, self.writer)`. Pass a hybrid logical clock value that has observed
        `self.timestamp` (for example `max(now_ms, self.timestamp + 1)`).
        """
        checked_replica(replica)
        checked_timestamp(timestamp)
        checked_value(value)
        if (timestamp, replica) <= (self._ts, self._replica):
            raise CrdtUsageError(
                f"LWW write at ({timestamp}, {replica!r}) is not newer than the current "
                f"({self._ts}, {self._replica!r}); pass a timestamp > {self._ts}"
            )
        self._ts, self._replica, self._value = timestamp, replica, value
        return LWWRegister._of(timestamp, replica, value)

    def merge(self, other: LWWRegister) -> None:
        self._check_merge_type(other)
        if other._ts < 0:
            return
        if self._ts < 0 or lww_key(other._ts, other._replica, other._value) > lww_key(self._ts, self._replica, self._value):
            self._ts, self._replica, self._value = other._ts, other._replica, other._value

    def copy(self) -> LWWRegister:
        return LWWRegister._of(self._ts, self._replica, self._value)

    def value(self) -> Any:
        """The winning value (None if never written)."""
        return self._value

    def is_bottom(self) -> bool:
        return self._ts < 0

    @property
    def timestamp(self) -> int:
        """The winning write's timestamp (-1 if never written)."""
        return self._ts

    @property
    def writer(self) -> str:
        """The replica that made the winning write ("" if never written)."""
        return self._replica

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is LWWRegister
            and (self._ts, self._replica) == (other._ts, other._replica)
            and (self._value is other._value or canonical_bytes(self._value) == canonical_bytes(other._value))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister(ts={self._ts}, writer={self._replica!r}, value={self._value!r:.60})"

    OPS: dict[str, Any] = {"assign": lambda self, r, value, timestamp: self.assign(r, value, timestamp)}


class MVRegister(DotStoreCrdt):
    """A multi-value register: a write replaces what it has seen; concurrent writes are all kept.

    State: a dot -> value map and a causal context (a causal CRDT; it can be nested in ORMap).
    """

    __slots__ = ("_store", "_ctx")
    TYPE_NAME = "mvregister"

    def __init__(self) -> None:
        self._store: dict[Dot, Any] = {}
        self._ctx = CausalContext()

    @classmethod
    def _view(cls, store: dict[Dot, Any], ctx: CausalContext) -> MVRegister:
        """An object over shared parts (a map's nested value); mutations go to them."""
        r = cls()
        r._store, r._ctx = store, ctx
        return r

    def write(self, replica: str, value: Any) -> MVRegister:
        """Replace every value seen so far with `value`; return the delta."""
        checked_replica(replica)
        checked_value(value)
        dot = self._ctx.next_dot(replica)
        delta_ctx = CausalContext.from_dots([*self._store, dot])
        self._store.clear()
        self._store[dot] = value
        return MVRegister._view({dot: value}, delta_ctx)

    def clear(self, replica: str = "") -> MVRegister:
        """Remove every value seen so far (concurrent writes survive); return the delta."""
        delta_ctx = CausalContext.from_dots(self._store)
        self._store.clear()
        return MVRegister._view({}, delta_ctx)

    def merge(self, other: MVRegister) -> None:
        self._check_merge_type(other)
        self._store = self._store_join(self._store, self._ctx, other._store, other._ctx)
        self._ctx.merge(other._ctx)

    def copy(self) -> MVRegister:
        return MVRegister._view(dict(self._store), self._ctx.copy())

    def value(self) -> tuple[Any, ...]:
        """The concurrent values, ordered by their dots (empty if none)."""
        return tuple(self._store[d] for d in sorted(self._store))

    def is_bottom(self) -> bool:
        return not self._store and self._ctx.is_empty()

    @property
    def context(self) -> CausalContext:
        """The causal context (do not mutate)."""
        return self._ctx

    def entries(self) -> list[tuple[Dot, Any]]:
        """(dot, value) in dot order."""
        return sorted(self._store.items(), key=lambda item: item[0])

    def __eq__(self, other: object) -> bool:
        return type(other) is MVRegister and self._ctx == other._ctx and _same_fun(self._store, other._store)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MVRegister({self.entries()!r:.120}, ctx={self._ctx!r})"

    OPS: dict[str, Any] = {
        "write": lambda self, r, value: self.write(r, value),
        "clear": lambda self, r: self.clear(r),
    }

    # --- dot store protocol (used when nested in an ORMap) ---

    @staticmethod
    def _store_new() -> dict[Dot, Any]:
        return {}

    @staticmethod
    def _store_join(s1: dict[Dot, Any], c1: CausalContext, s2: dict[Dot, Any], c2: CausalContext) -> dict[Dot, Any]:
        return join_dot_funs(s1, c1, s2, c2)

    @staticmethod
    def _store_dots(store: dict[Dot, Any]) -> Iterator[Dot]:
        return iter(store)

    @staticmethod
    def _store_copy(store: dict[Dot, Any]) -> dict[Dot, Any]:
        return dict(store)

    @staticmethod
    def _store_same(s1: dict[Dot, Any], s2: dict[Dot, Any]) -> bool:
        return _same_fun(s1, s2)

    @staticmethod
    def _store_touches(store: dict[Dot, Any], dots: set[Dot]) -> bool:
        return not dots.isdisjoint(store.keys())

    @staticmethod
    def _store_strip(store: dict[Dot, Any], replica: str) -> dict[Dot, Any]:
        return {d: v for d, v in store.items() if d.replica != replica}

    @staticmethod
    def _store_retag(store: dict[Dot, Any], replica: str, new_dot: Callable[[], Dot]) -> dict[Dot, Any]:
        """Values under a dot of `replica` move to `new_dot()` (dots in order)."""
        out: dict[Dot, Any] = {}
        for d in sorted(store):
            out[new_dot() if d.replica == replica else d] = store[d]
        return out


def _same_fun(f1: dict[Dot, Any], f2: dict[Dot, Any]) -> bool:
    if f1.keys() != f2.keys():
        return False
    return all(f1[d] is f2[d] or canonical_bytes(f1[d]) == canonical_bytes(f2[d]) for d in f1)

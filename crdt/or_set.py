"""Add-wins observed-remove set (Almeida et al. 2018, figure 5, "AWORSet" with a compact causal
context; Bieniusa et al. 2012, "An optimized conflict-free replicated set").

Each present element carries the dots of the adds that put it there. A remove deletes the
dots it has seen; an add concurrent with it carries a dot the remove has not seen, so the add
wins. No tombstones: the causal context remembers what was removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .base import DotStoreCrdt, checked_element, checked_replica
from .causal import DELTA_DOTS_MAX, CausalContext, Dot, join_dot_sets
from .values import Element, element_order

__all__ = ["ORSet"]


class ORSet(DotStoreCrdt):
    """An add-wins set of elements (str, bytes or 64-bit int); a causal CRDT that nests in ORMap."""

    __slots__ = ("_store", "_ctx")
    TYPE_NAME = "orset"

    def __init__(self) -> None:
        self._store: dict[Element, set[Dot]] = {}
        self._ctx = CausalContext()

    @classmethod
    def _view(cls, store: dict[Element, set[Dot]], ctx: CausalContext) -> ORSet:
        """An object over shared parts (a map's nested value); mutations go to them."""
        s = cls()
        s._store, s._ctx = store, ctx
        return s

    def add(self, replica: str, element: Element) -> ORSet:
        """Add `element` as `replica`; return the delta."""
        checked_replica(replica)
        checked_element(element)
        dot = self._ctx.next_dot(replica)
        old = self._store.get(element)
        delta_ctx = CausalContext.from_dots([*old, dot] if old else [dot])
        self._store[element] = {dot}
        return ORSet._view({element: {dot}}, delta_ctx)

    def remove(self, element: Element) -> ORSet:
        """Remove `element` as observed here (a concurrent add elsewhere wins); return the delta."""
        checked_element(element)
        old = self._store.pop(element, None)
        return ORSet._view({}, CausalContext.from_dots(old or ()))

    def clear(self) -> ORSet:
        """Remove every element observed here; return the delta."""
        dots = [d for ds in self._store.values() for d in ds]
        self._store.clear()
        return ORSet._view({}, CausalContext.from_dots(dots))

    def merge(self, other: ORSet) -> None:
        self._check_merge_type(other)
        delta_dots = other._ctx.expand_if_small(DELTA_DOTS_MAX)
        if delta_dots is None:
            self._store = self._store_join(self._store, self._ctx, other._store, other._ctx)
        else:
            self._merge_delta(other, delta_dots)
        self._ctx.merge(other._ctx)

    def _merge_delta(self, other: ORSet, delta_dots: set[Dot]) -> None:
        """Re-join only the elements `other` names or whose dots its context covers."""
        store, ctx, empty = self._store, self._ctx, set()
        touched = [e for e, dots in store.items() if not dots.isdisjoint(delta_dots)]
        named = set(touched)
        touched.extend(e for e in other._store if e not in named)
        for e in touched:
            joined = join_dot_sets(store.get(e, empty), ctx, other._store.get(e, empty), other._ctx)
            if joined:
                store[e] = joined
            else:
                store.pop(e, None)

    def copy(self) -> ORSet:
        return ORSet._view(self._store_copy(self._store), self._ctx.copy())

    def value(self) -> frozenset[Element]:
        """The present elements (use `elements()` where iteration order matters)."""
        return frozenset(self._store)

    def elements(self) -> list[Element]:
        """The present elements in a deterministic order."""
        return sorted(self._store, key=element_order)

    def __contains__(self, element: object) -> bool:
        return element in self._store

    def __len__(self) -> int:
        return len(self._store)

    def is_bottom(self) -> bool:
        return not self._store and self._ctx.is_empty()

    @property
    def context(self) -> CausalContext:
        """The causal context (do not mutate)."""
        return self._ctx

    def entries(self) -> list[tuple[Element, list[Dot]]]:
        """(element, its dots) in element order."""
        return [(e, sorted(self._store[e])) for e in self.elements()]

    def __eq__(self, other: object) -> bool:
        return type(other) is ORSet and self._ctx == other._ctx and self._store == other._store

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet({self.elements()!r:.120}, ctx={self._ctx!r})"

    OPS: dict[str, Any] = {
        "add": lambda self, r, element: self.add(r, element),
        "remove": lambda self, r, element: self.remove(element),
        "clear": lambda self, r: self.clear(),
    }

    # --- dot store protocol (used when nested in an ORMap) ---

    @staticmethod
    def _store_new() -> dict[Element, set[Dot]]:
        return {}

    @staticmethod
    def _store_join(
        s1: dict[Element, set[Dot]], c1: CausalContext, s2: dict[Element, set[Dot]], c2: CausalContext
    ) -> dict[Element, set[Dot]]:
        out: dict[Element, set[Dot]] = {}
        empty: set[Dot] = set()
        for e, dots in s1.items():
            joined = join_dot_sets(dots, c1, s2.get(e, empty), c2)
            if joined:
                out[e] = joined
        for e, dots in s2.items():
            if e not in s1:
                joined = join_dot_sets(empty, c1, dots, c2)
                if joined:
                    out[e] = joined
        return out

    @staticmethod
    def _store_dots(store: dict[Element, set[Dot]]) -> Iterator[Dot]:
        for dots in store.values():
            yield from dots

    @staticmethod
    def _store_copy(store: dict[Element, set[Dot]]) -> dict[Element, set[Dot]]:
        return {e: set(ds) for e, ds in store.items()}

    @staticmethod
    def _store_same(s1: dict[Element, set[Dot]], s2: dict[Element, set[Dot]]) -> bool:
        return s1 == s2

    @staticmethod
    def _store_touches(store: dict[Element, set[Dot]], dots: set[Dot]) -> bool:
        return any(not ds.isdisjoint(dots) for ds in store.values())

    @staticmethod
    def _store_strip(store: dict[Element, set[Dot]], replica: str) -> dict[Element, set[Dot]]:
        out: dict[Element, set[Dot]] = {}
        for e, ds in store.items():
            kept = {d for d in ds if d.replica != replica}
            if kept:
                out[e] = kept
        return out

    @staticmethod
    def _store_retag(store: dict[Element, set[Dot]], replica: str, new_dot: Callable[[], Dot]) -> dict[Element, set[Dot]]:
        """Each element holding a dot of `replica` gets one `new_dot()` instead (elements in order)."""
        out: dict[Element, set[Dot]] = {}
        for e in sorted(store, key=element_order):
            ds = store[e]
            kept = {d for d in ds if d.replica != replica}
            if len(kept) != len(ds):
                kept.add(new_dot())
            out[e] = kept
        return out

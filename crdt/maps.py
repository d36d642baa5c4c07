"""Maps: an observed-remove map of nested causal CRDTs, and a last-writer-wins map.

ORMap (Almeida et al. 2018, figure 7, "ORMap" over a `DotMap`): each key holds a nested causal
CRDT (ORSet, MVRegister or another ORMap) that shares the map's causal context. Removing a key
removes the dots it has observed in the nested value, so an update concurrent with the removal
survives with only its own effect (no resurrection of old state), and no tombstone is kept.
Internally entries are keyed by `(key, type name)`: two replicas that concurrently create a key
with different nested types both keep their entry, and `value()` shows the one whose type name
sorts last, so every replica shows the same thing.

LWWMap (Akka Distributed Data's `LWWMap`, as per-key `LWWRegister`s): each key holds the write
with the greatest `(timestamp, replica)`; a removal is a write of a tombstone. Tombstones are
collected by `collect_tombstones` once the caller knows every replica has seen them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .base import Crdt, DotStoreCrdt, checked_element, checked_replica, checked_timestamp, checked_value
from .causal import DELTA_DOTS_MAX, CausalContext, Dot
from .errors import CrdtUsageError
from .or_set import ORSet
from .registers import MVRegister
from .values import Element, canonical_bytes, element_order, is_element

__all__ = ["LWWMap", "NESTABLE_TYPES", "ORMap"]

EntryKey = tuple[Element, str]


class ORMap(DotStoreCrdt):
    """An observed-remove map from elements to nested causal CRDTs (ORSet, MVRegister, ORMap)."""

    __slots__ = ("_store", "_ctx")
    TYPE_NAME = "ormap"

    def __init__(self) -> None:
        self._store: dict[EntryKey, Any] = {}
        self._ctx = CausalContext()

    @classmethod
    def _view(cls, store: dict[EntryKey, Any], ctx: CausalContext) -> ORMap:
        m = cls()
        m._store, m._ctx = store, ctx
        return m

    def update(self, replica: str, key: Element, value_type: str | type[Crdt], fn: Callable[[Any], Crdt]) -> ORMap:
        """Change the nested value at `key` with `fn(nested) -> nested delta`; return the map delta.

        `value_type` is "orset", "mvregister" or "ormap" (or the class). A missing value starts
        empty. `fn` must call exactly the nested mutators it wants, as `replica`, e.g.
        `m.update("r1", "tags", "orset", lambda s: s.add("r1", "blue"))`.
        """
        checked_replica(replica)
        checked_element(key, "map key")
        cls = _nestable(value_type)
        for tag in NESTABLE_TYPES:
            if tag != cls.TYPE_NAME and (key, tag) in self._store:
                raise CrdtUsageError(
                    f"key {key!r:.60} holds a {tag}, not a {cls.TYPE_NAME}; remove it first or use another key"
                )
        entry_key = (key, cls.TYPE_NAME)
        nested = cls._view(self._store.get(entry_key) or cls._store_new(), self._ctx)
        delta = fn(nested)
        if type(delta) is not cls:
            raise CrdtUsageError(f"the update function must return the {cls.TYPE_NAME} delta of a nested mutator")
        if nested._store:
            self._store[entry_key] = nested._store
        else:
            self._store.pop(entry_key, None)
        return ORMap._view({entry_key: delta._store} if delta._store else {}, delta._ctx)

    def remove(self, key: Element) -> ORMap:
        """Remove `key` and every effect observed on its value; return the delta."""
        checked_element(key, "map key")
        dots: list[Dot] = []
        for entry_key in [(key, tag) for tag in NESTABLE_TYPES if (key, tag) in self._store]:
            store = self._store.pop(entry_key)
            dots.extend(NESTABLE_TYPES[entry_key[1]]._store_dots(store))
        return ORMap._view({}, CausalContext.from_dots(dots))

    def get(self, key: Element) -> Crdt | None:
        """A detached copy of the nested value at `key` (None if absent)."""
        entry_key = self._winner(key)
        if entry_key is None:
            return None
        cls = NESTABLE_TYPES[entry_key[1]]
        return cls._view(cls._store_copy(self._store[entry_key]), self._ctx.copy())  # type: ignore[no-any-return]

    def keys(self) -> list[Element]:
        """The present keys in a deterministic order."""
        return sorted({k for k, _ in self._store}, key=element_order)

    def __contains__(self, key: object) -> bool:
        return is_element(key) and self._winner(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.keys())

    def merge(self, other: ORMap) -> None:
        self._check_merge_type(other)
        delta_dots = other._ctx.expand_if_small(DELTA_DOTS_MAX)
        if delta_dots is None:
            self._store = self._store_join(self._store, self._ctx, other._store, other._ctx)
        else:
            self._merge_delta(other, delta_dots)
        self._ctx.merge(other._ctx)

    def _merge_delta(self, other: ORMap, delta_dots: set[Dot]) -> None:
        """Re-join only the entries `other` names or whose dots its context covers."""
        store, ctx = self._store, self._ctx
        touched = []
        for k, child in store.items():
            tag = k[1]
            if tag == "mvregister":
                hit = not delta_dots.isdisjoint(child)
            elif tag == "orset":
                hit = any(not ds.isdisjoint(delta_dots) for ds in child.values())
            else:
                hit = ORMap._store_touches(child, delta_dots)
            if hit:
                touched.append(k)
        named = set(touched)
        touched.extend(k for k in other._store if k not in named)
        for k in touched:
            cls = NESTABLE_TYPES[k[1]]
            mine, theirs = store.get(k), other._store.get(k)
            joined = cls._store_join(
                cls._store_new() if mine is None else mine, ctx, cls._store_new() if theirs is None else theirs, other._ctx
            )
            if joined:
                store[k] = joined
            else:
                store.pop(k, None)

    def copy(self) -> ORMap:
        return ORMap._view(self._store_copy(self._store), self._ctx.copy())

    def value(self) -> dict[Element, Any]:
        """key -> nested value, keys in deterministic order."""
        out: dict[Element, Any] = {}
        for key in self.keys():
            entry_key = self._winner(key)
            assert entry_key is not None
            cls = NESTABLE_TYPES[entry_key[1]]
            out[key] = cls._view(self._store[entry_key], self._ctx).value()
        return out

    def is_bottom(self) -> bool:
        return not self._store and self._ctx.is_empty()

    @property
    def context(self) -> CausalContext:
        """The causal context shared with nested values (do not mutate)."""
        return self._ctx

    def entries(self) -> list[tuple[Element, str, Any]]:
        """(key, type name, nested store) in order; the stores are live, do not mutate."""
        return [(k, t, self._store[(k, t)]) for k, t in sorted(self._store, key=lambda kt: (element_order(kt[0]), kt[1]))]

    def __eq__(self, other: object) -> bool:
        return type(other) is ORMap and self._ctx == other._ctx and ORMap._store_same(self._store, other._store)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORMap({self.value()!r:.160}, ctx={self._ctx!r})"

    def _winner(self, key: Element) -> EntryKey | None:
        tags = [t for t in NESTABLE_TYPES if (key, t) in self._store]
        return (key, max(tags)) if tags else None

    @staticmethod
    def _op_update(self: ORMap, replica: str, key: Element, type_name: str, op: str, *args: object) -> ORMap:
        return self.update(replica, key, type_name, lambda nested: nested.apply_op(replica, op, args))

    OPS: dict[str, Any] = {
        "update": lambda self, r, key, type_name, op, *args: ORMap._op_update(self, r, key, type_name, op, *args),
        "remove": lambda self, r, key: self.remove(key),
    }

    # --- dot store protocol (nesting) ---

    @staticmethod
    def _store_new() -> dict[EntryKey, Any]:
        return {}

    @staticmethod
    def _store_join(s1: dict[EntryKey, Any], c1: CausalContext, s2: dict[EntryKey, Any], c2: CausalContext) -> dict[EntryKey, Any]:
        out: dict[EntryKey, Any] = {}
        for k, child in s1.items():
            cls = NESTABLE_TYPES[k[1]]
            other = s2.get(k)
            joined = cls._store_join(child, c1, cls._store_new() if other is None else other, c2)
            if joined:
                out[k] = joined
        for k, child in s2.items():
            if k not in s1:
                cls = NESTABLE_TYPES[k[1]]
                joined = cls._store_join(cls._store_new(), c1, child, c2)
                if joined:
                    out[k] = joined
        return out

    @staticmethod
    def _store_dots(store: dict[EntryKey, Any]) -> Iterator[Dot]:
        for (_, tag), child in store.items():
            yield from NESTABLE_TYPES[tag]._store_dots(child)

    @staticmethod
    def _store_copy(store: dict[EntryKey, Any]) -> dict[EntryKey, Any]:
        return {k: NESTABLE_TYPES[k[1]]._store_copy(child) for k, child in store.items()}

    @staticmethod
    def _store_touches(store: dict[EntryKey, Any], dots: set[Dot]) -> bool:
        return any(NESTABLE_TYPES[k[1]]._store_touches(child, dots) for k, child in store.items())

    @staticmethod
    def _store_strip(store: dict[EntryKey, Any], replica: str) -> dict[EntryKey, Any]:
        out: dict[EntryKey, Any] = {}
        for k, child in store.items():
            kept = NESTABLE_TYPES[k[1]]._store_strip(child, replica)
            if kept:
                out[k] = kept
        return out

    @staticmethod
    def _store_retag(store: dict[EntryKey, Any], replica: str, new_dot: Callable[[], Dot]) -> dict[EntryKey, Any]:
        out: dict[EntryKey, Any] = {}
        for k in sorted(store, key=lambda kt: (element_order(kt[0]), kt[1])):
            out[k] = NESTABLE_TYPES[k[1]]._store_retag(store[k], replica, new_dot)
        return out

    @staticmethod
    def _store_same(s1: dict[EntryKey, Any], s2: dict[EntryKey, Any]) -> bool:
        if s1.keys() != s2.keys():
            return False
        return all(NESTABLE_TYPES[k[1]]._store_same(s1[k], s2[k]) for k in s1)


NESTABLE_TYPES: dict[str, Any] = {ORSet.TYPE_NAME: ORSet, MVRegister.TYPE_NAME: MVRegister, ORMap.TYPE_NAME: ORMap}
"""Causal CRDTs that can be values of an ORMap, by type name."""


def _nestable(value_type: str | type[Crdt]) -> Any:
    name = value_type if isinstance(value_type, str) else getattr(value_type, "TYPE_NAME", None)
    cls = NESTABLE_TYPES.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise CrdtUsageError(f"ORMap values must be one of {sorted(NESTABLE_TYPES)}, got {value_type!r:.60}")
    return cls


LWWEntry = tuple[int, str, bool, Any]
"""(timestamp, replica, present, value); present=False is a removal tombstone."""


class LWWMap(Crdt):
    """A map where each key holds its last write (by timestamp, then replica); removals are tombstones."""

    __slots__ = ("_entries",)
    TYPE_NAME = "lwwmap"

    def __init__(self) -> None:
        self._entries: dict[Element, LWWEntry] = {}

    @classmethod
    def _of(cls, entries: dict[Element, LWWEntry]) -> LWWMap:
        m = cls()
        m._entries = entries
        return m

    def put(self, replica: str, key: Element, value: Any, timestamp: int) -> LWWMap:
        """Write `value` at `key` with a Lamport/HLC `timestamp`; return the delta."""
        checked_value(value)
        return self._write(replica, key, timestamp, True, value)

    def remove(self, replica: str, key: Element, timestamp: int) -> LWWMap:
        """Remove `key` by writing a tombstone at `timestamp`; return the delta."""
        return self._write(replica, key, timestamp, False, None)

    def get(self, key: Element, default: Any = None) -> Any:
        """The value at `key`, or `default` if absent or removed."""
        entry = self._entries.get(key)
        return entry[3] if entry is not None and entry[2] else default

    def timestamp_of(self, key: Element) -> int:
        """The timestamp of the last write (or removal) at `key`, -1 if never written."""
        entry = self._entries.get(key)
        return -1 if entry is None else entry[0]

    def collect_tombstones(self, stable_before_ts: int) -> int:
        """Drop tombstones older than `stable_before_ts`; return how many.

        Only safe when every replica has merged every write with a timestamp below
        `stable_before_ts` (the node derives that bound from members' acknowledgements); an older
        write arriving later would otherwise come back.
        """
        dead = [k for k, e in self._entries.items() if not e[2] and e[0] < stable_before_ts]
        for k in dead:
            del self._entries[k]
        return len(dead)

    def merge(self, other: LWWMap) -> None:
        self._check_merge_type(other)
        entries = self._entries
        for key, theirs in other._entries.items():
            mine = entries.get(key)
            if mine is None or _lww_entry_key(theirs) > _lww_entry_key(mine):
                entries[key] = theirs

    def copy(self) -> LWWMap:
        return LWWMap._of(dict(self._entries))

    def value(self) -> dict[Element, Any]:
        """key -> value of present keys, in deterministic key order."""
        return {k: self._entries[k][3] for k in sorted(self._entries, key=element_order) if self._entries[k][2]}

    def is_bottom(self) -> bool:
        return not self._entries

    def entries(self) -> list[tuple[Element, LWWEntry]]:
        """(key, (timestamp, replica, present, value)) including tombstones, in key order."""
        return [(k, self._entries[k]) for k in sorted(self._entries, key=element_order)]

    def __eq__(self, other: object) -> bool:
        if type(other) is not LWWMap or self._entries.keys() != other._entries.keys():
            return False
        return all(_lww_entry_key(self._entries[k]) == _lww_entry_key(other._entries[k]) for k in self._entries)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWMap({self.entries()!r:.160})"

    OPS: dict[str, Any] = {
        "put": lambda self, r, key, value, timestamp: self.put(r, key, value, timestamp),
        "remove": lambda self, r, key, timestamp: self.remove(r, key, timestamp),
    }

    def _write(self, replica: str, key: Element, timestamp: int, present: bool, value: Any) -> LWWMap:
        checked_replica(replica)
        checked_element(key, "map key")
        checked_timestamp(timestamp)
        mine = self._entries.get(key)
        if mine is not None and (timestamp, replica) <= (mine[0], mine[1]):
            raise CrdtUsageError(
                f"LWW write to {key!r:.60} at ({timestamp}, {replica!r}) is not newer than "
                f"({mine[0]}, {mine[1]!r}); pass a timestamp > {mine[0]}"
            )
        entry = (timestamp, replica, present, value)
        self._entries[key] = entry
        return LWWMap._of({key: entry})


def _lww_entry_key(entry: LWWEntry) -> tuple[int, str, bool, bytes]:
    ts, replica, present, value = entry
    return (ts, replica, present, canonical_bytes(value))


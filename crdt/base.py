"""The shape every CRDT here shares, and the ownership rule.

Ownership (decision 0020): a CRDT object is *mutable and owned by one holder* (usually the
`StateStore`). Mutators change it in place and return a *delta*, a fresh object of the same
type that the caller may ship and nobody mutates again. `merge(other)` joins `other` into self
without keeping references to `other`'s mutable parts, so deltas stay valid after they are
applied. `join(other)` is the pure form: it returns a new object and changes neither side.
Plain values inside registers and maps are never copied: treat them as immutable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from .errors import CrdtUsageError
from .values import check_element, check_plain

__all__ = ["Crdt", "VALUE_DEPTH_MAX", "VALUE_ITEMS_MAX"]

C = TypeVar("C", bound="Crdt")

VALUE_DEPTH_MAX = 8
"""How deep a plain value handed to a mutator may nest (wire limits are checked again in the codec)."""
VALUE_ITEMS_MAX = 10_000
"""How many items a plain value handed to a mutator may hold."""


class Crdt:
    """Base class: join-semilattice state with delta-returning mutators."""

    __slots__ = ()

    TYPE_NAME: ClassVar[str]
    """The public type name used by the store and the codec registry (e.g. "orset")."""
    OPS: ClassVar[dict[str, Callable[..., Any]]]
    """Operation name -> function(self, replica, *args) returning a delta; see `apply_op`."""

    def copy(self: C) -> C:
        """An independent copy."""
        raise NotImplementedError

    def merge(self: C, other: C) -> None:
        """Join `other` (a full state or a delta) into self, in place."""
        raise NotImplementedError

    def value(self) -> Any:
        """The user-visible value."""
        raise NotImplementedError

    def is_bottom(self) -> bool:
        """True for the initial (empty) state."""
        raise NotImplementedError

    # --- removed replicas (pruning; docs/crdt.md "Removed replicas", decision 0024) ---

    def mentions(self, replica: str) -> bool:
        """True if the state holds an entry of `replica` that pruning could remove (a slot, a dot)."""
        return False

    def strip(self, replica: str) -> None:
        """Drop every entry of `replica`, in place (what a receiver does while a prune marker lives).

        Only sound when the state being joined with carries `replica`'s effects under another id
        (the owner's folded state); on its own it loses them.
        """

    def fold(self, removed: str, owner: str) -> None:
        """Move `removed`'s effects under `owner`, in place, keeping `value()` unchanged.

        Only the owner calls it, on its own replica's state, once `removed`'s operations are
        causally stable; receivers strip `removed` and join the result (`strip` then `merge`).
        Types without per-replica entries (LWW, tombstones) do nothing.
        """

    def join(self: C, other: C) -> C:
        """A new state: the least upper bound of self and `other` (neither is changed)."""
        out = self.copy()
        out.merge(other)
        return out


    def apply_op(self: C, replica: str, op: str, args: Sequence[object] = ()) -> C:
        """Run the named mutator as `replica` and return its delta (the store's entry point)."""
        fn = self.OPS.get(op)
        if fn is None:
            raise CrdtUsageError(f"{self.TYPE_NAME} has no operation {op!r}; use one of {sorted(self.OPS)}")
        try:
            return fn(self, replica, *args)  # type: ignore[no-any-return]
        except TypeError as exc:
            raise CrdtUsageError(f"{self.TYPE_NAME}.{op}: bad arguments {tuple(args)!r:.80}: {exc}") from None

    def _check_merge_type(self, other: object) -> None:
        if type(other) is not type(self):
            raise CrdtUsageError(f"cannot merge {type(other).__name__} into {type(self).__name__}")


class DotStoreCrdt(Crdt):
    """A causal CRDT: a dot store `_store` (what is present, tagged with dots) and a causal context `_ctx`
    (every dot ever seen). Pruning is the same for all of them (decision 0024): `fold` re-tags every dot
    of the removed replica with a fresh owner dot, so what is present stays present (an add by the
    owner: a remove concurrent with the fold loses to it, add wins, as Akka's `ORSet.prune`), then
    forgets the replica. Subclasses give `_store_strip(store, replica)` and
    `_store_retag(store, replica, new_dot)`."""

    __slots__ = ()

    def mentions(self, replica: str) -> bool:
        return self._ctx.mentions(replica)  # type: ignore[attr-defined]  # every stored dot is in the context

    def strip(self, replica: str) -> None:
        self._store = self._store_strip(self._store, replica)  # type: ignore[attr-defined]
        self._ctx.strip(replica)  # type: ignore[attr-defined]

    def fold(self, removed: str, owner: str) -> None:
        checked_replica(owner)
        if removed == owner:
            return
        ctx = self._ctx  # type: ignore[attr-defined]
        self._store = self._store_retag(self._store, removed, lambda: ctx.next_dot(owner))  # type: ignore[attr-defined]
        ctx.strip(removed)


def checked_element(x: object, what: str = "element") -> None:
    """Raise `CrdtUsageError` unless `x` is a valid element."""
    try:
        check_element(x, what)
    except ValueError as exc:
        raise CrdtUsageError(str(exc)) from None


def checked_value(x: object) -> None:
    """Raise `CrdtUsageError` unless `x` is a plain value within the mutator limits."""
    try:
        check_plain(x, VALUE_DEPTH_MAX, VALUE_ITEMS_MAX)
    except ValueError as exc:
        raise CrdtUsageError(f"value rejected: {exc}") from None


def checked_replica(replica: object) -> None:
    """Raise `CrdtUsageError` unless `replica` is a non-empty str."""
    if type(replica) is not str or not replica:
        raise CrdtUsageError(f"replica id must be a non-empty str, got {replica!r:.60}")


def checked_timestamp(ts: object) -> None:
    """Raise `CrdtUsageError` unless `ts` is an int >= 0 (a Lamport or hybrid logical clock value)."""
    if type(ts) is not int or not 0 <= ts < 2**63:
        raise CrdtUsageError(f"timestamp must be an int in [0, 2**63) (a Lamport/HLC value), got {ts!r:.60}")

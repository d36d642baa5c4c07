"""The store's marker for a deleted key.

A tombstone is the top of every key's lattice: joined with any state it wins, so a delete is
never undone by an older or concurrent update arriving later. Two tombstones join to the one
with the greater dot (any fixed order works; this one is deterministic). The store collects
tombstones once they are causally stable (see `StateStore.collect_garbage` and docs/crdt.md).
"""

from __future__ import annotations

from typing import Any

from .base import Crdt
from .causal import Dot

__all__ = ["Tombstone"]


class Tombstone(Crdt):
    """A deleted key; `dot` is the store-level event that deleted it."""

    __slots__ = ("dot",)
    TYPE_NAME = "tombstone"
    OPS: dict[str, Any] = {}

    def __init__(self, dot: Dot) -> None:
        self.dot = dot

    def merge(self, other: Tombstone) -> None:
        self._check_merge_type(other)
        if (other.dot.counter, other.dot.replica) > (self.dot.counter, self.dot.replica):
            self.dot = other.dot

    def copy(self) -> Tombstone:
        return Tombstone(self.dot)

    def value(self) -> None:
        return None

    def is_bottom(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return type(other) is Tombstone and self.dot == other.dot

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Tombstone({self.dot.replica!r}, {self.dot.counter})"

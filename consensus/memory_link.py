"""An in-process `RaftLink`: voters in one process exchange frames through the event loop.

Used by socket-free tests of `PySyncObjGroup` and by single-process demos. Delivery is
asynchronous (``loop.call_soon``), FIFO per pair, and can be cut by `partition()` to model a
network split; a detached voter (closed group) receives nothing.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from .base import RaftReceiver

__all__ = ["MemoryRaftLink", "MemoryRaftNetwork"]

FRAMES_IN_FLIGHT_MAX = 10_000
"""Frames scheduled but not yet delivered, across the network; more are dropped and counted."""


class MemoryRaftNetwork:
    """A hub of `MemoryRaftLink`s. Construct, hand `link(voter_id)` to each group."""

    def __init__(self) -> None:
        self._receivers: dict[str, RaftReceiver | None] = {}
        self._sides: list[frozenset[str]] | None = None
        self._in_flight = 0
        self.frames_delivered = 0
        self.frames_dropped = 0

    def link(self, voter_id: str) -> MemoryRaftLink:
        """The link endpoint for `voter_id` (one per voter at a time)."""
        self._receivers.setdefault(voter_id, None)
        return MemoryRaftLink(self, voter_id)

    def partition(self, *sides: Iterable[str]) -> None:
        """Only voters on the same side can talk; voters on no side are isolated."""
        self._sides = [frozenset(side) for side in sides]

    def heal(self) -> None:
        """Remove the partition."""
        self._sides = None

    def connected(self, a: str, b: str) -> bool:
        """Would a frame from `a` reach `b` now?"""
        if self._receivers.get(b) is None:
            return False
        if self._sides is None:
            return True
        return any(a in side and b in side for side in self._sides)

    def _send(self, source: str, target: str, data: bytes) -> None:
        if not self.connected(source, target) or self._in_flight >= FRAMES_IN_FLIGHT_MAX:
            self.frames_dropped += 1
            return
        self._in_flight += 1
        asyncio.get_running_loop().call_soon(self._deliver, source, target, bytes(data))

    def _deliver(self, source: str, target: str, data: bytes) -> None:
        self._in_flight -= 1
        receiver = self._receivers.get(target)
        # Re-check: a partition or a close may have happened while the frame was in flight.
        if receiver is None or not self.connected(source, target):
            self.frames_dropped += 1
            return
        self.frames_delivered += 1
        receiver(source, data)


class MemoryRaftLink:
    """One voter's endpoint on a `MemoryRaftNetwork`; implements `RaftLink`."""

    def __init__(self, network: MemoryRaftNetwork, voter_id: str) -> None:
        self._network = network
        self._voter_id = voter_id

    @property
    def voter_id(self) -> str:
        return self._voter_id

    def send(self, voter_id: str, data: bytes) -> None:
        self._network._send(self._voter_id, voter_id, data)

    def set_receiver(self, receiver: RaftReceiver | None) -> None:
        self._network._receivers[self._voter_id] = receiver

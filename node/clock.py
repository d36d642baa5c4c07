"""Ask peers for their wall clock, so `agentnode doctor` can say when clocks disagree.

Wall time matters to a node in one place: certificate validity. A peer whose clock is far off sees
fresh certificates as "not yet valid" and refuses them, which looks like a network fault from the
outside. Membership itself runs on each node's monotonic clock and never compares wall times.

Frames: `[VERSION, cluster, CLOCK_REQUEST, nonce]` is answered with
`[VERSION, cluster, CLOCK_REPLY, nonce, wall_ms]`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentnode.messages import PROTOCOL_VERSION

if TYPE_CHECKING:
    from agentnode.runtime import Node

__all__ = ["CLOCK_REPLY", "CLOCK_REQUEST", "ClockReading", "ClockService"]

CLOCK_REQUEST = 96
CLOCK_REPLY = 97
"""Frame types of the node-services range (docs/protocols/frame-types.md)."""
PEERS_MAX = 64
"""Peers asked in one measurement: enough to find a skewed node, bounded for large clusters."""


@dataclass(frozen=True, slots=True)
class ClockReading:
    """One peer's wall clock as seen from here."""

    node_id: str
    local_ms: int
    """Our wall clock when the reply arrived."""
    peer_ms: int
    """The peer's wall clock when it answered."""
    rtt_ms: int


class ClockService:
    """Answers clock requests and measures peers' clocks on demand."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._nonces = itertools.count(1)
        self._waiting: dict[int, tuple[str, int, asyncio.Future[ClockReading]]] = {}

    def attach(self) -> None:
        self._node.add_channel(CLOCK_REQUEST, self._on_request)
        self._node.add_channel(CLOCK_REPLY, self._on_reply)

    async def measure(self, peers: Sequence[tuple[str, str]], timeout_s: float = 1.0) -> list[ClockReading]:
        """Ask each `(node_id, address)` once; peers that do not answer within `timeout_s` are left out."""
        loop = asyncio.get_running_loop()
        futures = []
        for node_id, address in list(peers)[:PEERS_MAX]:
            nonce = next(self._nonces)
            future: asyncio.Future[ClockReading] = loop.create_future()
            self._waiting[nonce] = (node_id, self._node.now_ms(), future)
            futures.append(future)
            frame = [PROTOCOL_VERSION, self._node.config.cluster, CLOCK_REQUEST, nonce]
            self._node.send_frame(address, frame, node_id)
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout_s) if futures else (set(), set())
        finally:
            for nonce in [n for n, (_, _, f) in self._waiting.items() if f in futures]:
                self._waiting.pop(nonce, None)
        return sorted((f.result() for f in done), key=lambda r: r.node_id)

    def _on_request(self, sender_id: str, frame: list[Any]) -> None:
        if len(frame) != 4 or frame[1] != self._node.config.cluster or type(frame[3]) is not int:
            return
        member = next((m for m in self._node.members() if m.node_id == sender_id), None)
        if member is None:
            return  # answer members only: the reply needs an address to go to
        reply = [PROTOCOL_VERSION, self._node.config.cluster, CLOCK_REPLY, frame[3], _wall_ms()]
        self._node.send_frame(member.address, reply, sender_id)

    def _on_reply(self, sender_id: str, frame: list[Any]) -> None:
        if len(frame) != 5 or type(frame[3]) is not int or type(frame[4]) is not int:
            return
        waiting = self._waiting.pop(frame[3], None)
        if waiting is None or waiting[0] != sender_id or waiting[2].done():
            return
        rtt = self._node.now_ms() - waiting[1]
        waiting[2].set_result(ClockReading(sender_id, _wall_ms(), frame[4], rtt))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000

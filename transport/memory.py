"""In-memory transport: the `Transport` protocol with no sockets, for asyncio-level node tests.

Frames pass through the same encoder and decoder as on the wire, so a test sees exactly the
values a real peer would (tuples arrive as lists, size limits apply). Delivery is FIFO per sender
and receiver, one event-loop callback per frame. The hub injects faults: symmetric partitions,
one-way blocks and random loss drawn from an injected `random.Random`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import Any

from agentnode.transport.base import Address, BackpressureError, FrameHandler, TransportStats
from agentnode.transport.connections import TransportConfig
from agentnode.transport.framing import FrameDecoder, encode_frame

__all__ = ["MemoryHub", "MemoryTransport"]

logger = logging.getLogger("agentnode.transport")

_FIRST_PORT = 20_000
"""Ports handed out for `Address(host, 0)`; any value works, this one reads well in logs."""


class MemoryHub:
    """The shared "network" of a set of `MemoryTransport`s, with fault injection."""

    def __init__(self, *, rng: random.Random | None = None, loss: float = 0.0) -> None:
        self._rng = rng or random.Random(0)
        self._loss = 0.0
        self.set_loss(loss)
        self._by_address: dict[Address, MemoryTransport] = {}
        self._cut: set[tuple[str, str]] = set()
        """(sender, receiver) pairs that cannot talk; only ever tested for membership, never iterated."""
        self._next_port = _FIRST_PORT

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every link between a node of `group_a` and a node of `group_b`, both directions."""
        a, b = list(group_a), list(group_b)
        for x in a:
            for y in b:
                self._cut.add((x, y))
                self._cut.add((y, x))

    def block(self, sender: str, receiver: str) -> None:
        """Cut one direction only: frames from `sender` to `receiver` are lost."""
        self._cut.add((sender, receiver))

    def heal(self) -> None:
        """Remove every partition and block (loss stays as set)."""
        self._cut.clear()

    def set_loss(self, probability: float) -> None:
        """Drop each frame independently with `probability` (0 <= p <= 1), using the hub's rng."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"loss probability must be within 0..1, got {probability}")
        self._loss = probability

    def can_reach(self, sender: str, receiver: str) -> bool:
        return (sender, receiver) not in self._cut

    def _register(self, transport: MemoryTransport, address: Address) -> Address:
        if address.port == 0:
            while Address(address.host, self._next_port) in self._by_address:
                self._next_port += 1
            address = Address(address.host, self._next_port)
            self._next_port += 1
        if address in self._by_address:
            raise OSError(98, f"cannot listen on {address}: address already in use on this hub")
        self._by_address[address] = transport
        return address

    def _unregister(self, address: Address) -> None:
        self._by_address.pop(address, None)

    def _lookup(self, address: Address) -> MemoryTransport | None:
        return self._by_address.get(address)

    def _lose(self) -> bool:
        return self._loss > 0.0 and self._rng.random() < self._loss


class MemoryTransport:
    """`Transport` over a `MemoryHub`. The constructor does no I/O; `start()` joins the hub."""

    def __init__(self, hub: MemoryHub, node_id: str, listen: Address, *, config: TransportConfig | None = None) -> None:
        self._hub = hub
        self._node_id = node_id
        self._listen = listen
        self.config = config or TransportConfig()
        self._bound: Address | None = None
        self._handler: FrameHandler | None = None
        self._decoder = FrameDecoder(self.config.max_frame_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: dict[str, int] = {}
        self._peers: dict[str, None] = {}
        self._denied: set[str] = set()
        self._closed = False
        self._counts = dict.fromkeys(
            ("frames_sent", "frames_received", "bytes_sent", "bytes_received", "connections_refused",
             "backpressure_drops", "dial_failures", "frames_dropped"), 0)

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def listen_address(self) -> Address:
        """The bound address after `start()`; before it, the configured one (its port may be 0)."""
        return self._bound if self._bound is not None else self._listen

    def set_handler(self, handler: FrameHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._bound = self._hub._register(self, self._listen)

    def send(self, address: Address, frame: Any, peer_id: str | None = None) -> None:
        """Queue `frame` for the node at `address`; same contract as `Transport.send`."""
        if self._loop is None or self._closed:
            raise RuntimeError("call `await start()` before send (and do not send after close)")
        data = encode_frame(frame, max_frame_bytes=self.config.max_frame_bytes)
        counts = self._counts
        target = self._hub._lookup(address)
        if target is None or not self._hub.can_reach(self._node_id, target._node_id):
            counts["dial_failures"] += 1
            counts["frames_dropped"] += 1
            return
        if target._node_id in self._denied or self._node_id in target._denied:
            counts["connections_refused"] += 1
            counts["frames_dropped"] += 1
            return
        if peer_id is not None and target._node_id != peer_id:
            counts["connections_refused"] += 1
            counts["frames_dropped"] += 1
            logger.warning("refused connection to %s: peer is node %r, expected %r", address, target._node_id, peer_id)
            return
        key = target._node_id
        in_flight = self._in_flight.get(key, 0)
        if in_flight >= self.config.send_queue_frames_max:
            counts["backpressure_drops"] += 1
            raise BackpressureError(f"send queue to {key} is full ({self.config.send_queue_frames_max} frames)")
        self._in_flight[key] = in_flight + 1
        self._peers[key] = None
        counts["frames_sent"] += 1
        counts["bytes_sent"] += len(data)
        lost = self._hub._lose()
        self._loop.call_soon(self._arrive, target, data, lost)

    def deny(self, peer_id: str) -> None:
        """Refuse `peer_id` for good, both ways (as a TLS node refuses its handshakes)."""
        self._denied.add(peer_id)

    def stats(self) -> TransportStats:
        return TransportStats(connections_open=len(self._peers), **self._counts)

    async def close(self) -> None:
        if not self._closed and self._bound is not None:
            self._hub._unregister(self._bound)
        self._closed = True
        await asyncio.sleep(0)  # frames already scheduled to us are dropped by `_deliver`

    def _arrive(self, target: MemoryTransport, data: bytes, lost: bool) -> None:
        key = target._node_id
        self._in_flight[key] -= 1
        if lost:
            return
        target._deliver(self._node_id, data)

    def _deliver(self, sender_id: str, data: bytes) -> None:
        if self._closed or sender_id in self._denied:
            return
        frames = self._decoder.feed(data)
        self._counts["frames_received"] += len(frames)
        self._counts["bytes_received"] += len(data)
        self._peers[sender_id] = None
        handler = self._handler
        if handler is None:
            return
        for frame in frames:
            try:
                handler(sender_id, frame)
            except Exception:
                logger.exception("frame handler failed on a frame from %s", sender_id)

"""The contract between the node and any way of moving frames between nodes.

Three implementations share it: TLS 1.3 over TCP (the default), QUIC over aioquic, and an
in-memory hub for socket-free asyncio tests. The node never learns which one it holds.

A *frame* is one msgpack-serialisable value (dicts, lists, str, bytes, ints, floats, bools,
None). Transports encode and decode it at the edge, so what reaches a `FrameHandler` was
received from an authenticated peer and decoded once, with size limits applied.

Delivery is best-effort and FIFO per connection: a frame is either delivered in order or the
connection drops and the node is told. Retries, acks and dedup live above this layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Address",
    "BackpressureError",
    "FrameHandler",
    "PeerRefused",
    "ProtocolError",
    "Transport",
    "TransportError",
    "TransportStats",
]

Frame = Any
"""One msgpack-serialisable value."""


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """Where a node listens: a host name or IP literal and a port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Address:
        """Parse ``HOST:PORT`` (IPv6 as ``[::1]:PORT``); raise ``ValueError`` saying what is wrong."""
        text = text.strip()
        if not text:
            raise ValueError("empty address; expected HOST:PORT, for example 127.0.0.1:7946")
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if not sep:
                raise ValueError(f"address {text!r}: missing ']' after an IPv6 host")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                host, port_text = text, ""
        if not port_text:
            if default_port is None:
                raise ValueError(f"address {text!r} has no port; expected HOST:PORT")
            port = default_port
        else:
            try:
                port = int(port_text)
            except ValueError:
                raise ValueError(f"address {text!r}: port {port_text!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"address {text!r}: port {port} is outside 0..65535")
        if not host:
            raise ValueError(f"address {text!r} has no host")
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TransportError(Exception):
    """Base class for transport errors."""


class BackpressureError(TransportError):
    """The per-peer send queue is full: the peer (or the link) is slower than the sender."""


class PeerRefused(TransportError):
    """A peer failed authentication: wrong CA, expired certificate, node id mismatch, or revoked."""


class ProtocolError(TransportError):
    """A peer sent bytes that break the wire protocol (see `framing.FrameError`); its connection is closed."""


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters a transport keeps; exported as metrics by the node."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connections_open: int = 0
    connections_refused: int = 0
    """Handshakes refused: certificate from another CA, expired, id mismatch, no certificate."""
    protocol_errors: int = 0
    """Connections closed for bad input: oversized frame, invalid msgpack, stalled half frame."""
    backpressure_drops: int = 0
    """Sends refused with `BackpressureError` because a peer's queue was full."""
    dial_failures: int = 0
    frames_dropped: int = 0
    """Frames discarded without being written: peer unreachable, refused, or connection lost before the write."""


class FrameHandler(Protocol):
    """Called once per received frame, on the event loop, with the authenticated sender's node id."""

    def __call__(self, sender_id: str, frame: Frame) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Moves frames between mutually authenticated nodes.

    Life cycle: construct (no I/O), `set_handler`, `await start()`, then `send` freely,
    `await close()` at the end.
    """

    @property
    def node_id(self) -> str:
        """This node's id, as carried in its certificate."""
        ...

    @property
    def listen_address(self) -> Address:
        """The bound address (the real port when configured with port 0). Valid after `start()`."""
        ...

    def set_handler(self, handler: FrameHandler) -> None:
        """Install the callback for received frames. Call before `start()`."""
        ...

    async def start(self) -> None:
        """Bind and listen. Raises `OSError` with a clear message if the port is in use."""
        ...

    def send(self, address: Address, frame: Frame, peer_id: str | None = None) -> None:
        """Queue `frame` for the node at `address` without blocking.

        `peer_id`, when given, is the node id the peer must prove; a peer presenting another id is
        refused. With `peer_id=None` (bootstrap) any node with a certificate from the cluster CA is
        accepted and its id learnt. A connection is dialled in the background if none is open;
        frames queued for a peer that cannot be reached are dropped and counted.
        Raises `BackpressureError` when the peer's queue is full.
        """
        ...

    def deny(self, peer_id: str) -> None:
        """Refuse `peer_id` from now on: close its connections, refuse its handshakes, drop frames to it.

        For node ids revoked through the Raft roster. Each refused handshake is logged and counted in
        `connections_refused`.
        """
        ...

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        ...

    async def close(self) -> None:
        """Flush what is queued (bounded by a short grace period), close every connection, stop listening."""
        ...

"""agentnode.transport: moving frames between authenticated nodes (TLS/TCP, QUIC, in-memory), identity and discovery.

Imports nothing from the rest of agentnode; aioquic, ssl and zeroconf live only here.
"""

from agentnode.transport.base import (
    Address,
    BackpressureError,
    FrameHandler,
    PeerRefused,
    Transport,
    TransportError,
    TransportStats,
)

__all__ = [
    "Address",
    "BackpressureError",
    "FrameHandler",
    "PeerRefused",
    "Transport",
    "TransportError",
    "TransportStats",
]

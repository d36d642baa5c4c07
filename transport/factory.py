"""Build a `Transport` by name, so configuration and the CLI choose one without importing adapters."""

from __future__ import annotations

import random

from agentnode.transport.base import Address, Transport
from agentnode.transport.connections import TransportConfig
from agentnode.transport.identity import NodeIdentity

__all__ = ["TRANSPORT_KINDS", "create_transport"]

TRANSPORT_KINDS = ("tls", "quic")
"""Names accepted by `create_transport`; "tls" is the default (docs/decisions/0001)."""


def create_transport(
    kind: str,
    identity: NodeIdentity,
    listen: Address,
    *,
    config: TransportConfig | None = None,
    rng: random.Random | None = None,
) -> Transport:
    """A transport of `kind` ("tls" or "quic"); raises `ValueError` naming the valid kinds otherwise."""
    if kind == "tls":
        from agentnode.transport.tls import TlsTransport

        return TlsTransport(identity, listen, config=config, rng=rng)
    if kind == "quic":
        # QUIC adapter (transport/quic.py) plugs in here: same arguments, same Protocol.
        from agentnode.transport.quic import QuicTransport  # type: ignore[import-not-found,unused-ignore]

        return QuicTransport(identity, listen, config=config, rng=rng)  # type: ignore[no-any-return,unused-ignore]
    raise ValueError(f"unknown transport {kind!r}; choose one of: {', '.join(TRANSPORT_KINDS)}")

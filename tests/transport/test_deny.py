"""`Transport.deny`: a revoked node id is refused at the handshake on every transport, and counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentnode.transport.base import Address
from agentnode.transport.factory import create_transport
from agentnode.transport.identity import NodeIdentity, create_ca, issue_node_certificate
from agentnode.transport.memory import MemoryHub, MemoryTransport


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


@pytest.mark.loopback
@pytest.mark.parametrize("kind", ["tls", "quic"])
async def test_denied_peer_is_refused_and_others_keep_working(tmp_path: Path, kind: str) -> None:
    create_ca(tmp_path / "ca")
    ids = {}
    for name in ("a", "b", "c"):
        issue_node_certificate(tmp_path / "ca", tmp_path / name)
        ids[name] = NodeIdentity.load(tmp_path / name)
    transports = {n: create_transport(kind, ids[n], Address("127.0.0.1", 0)) for n in ids}
    received: dict[str, list[tuple[str, Any]]] = {n: [] for n in ids}
    for name, transport in transports.items():
        transport.set_handler(lambda sender, frame, name=name: received[name].append((sender, frame)))
        await transport.start()
    a, b, c = transports["a"], transports["b"], transports["c"]
    try:
        b.send(a.listen_address, "hello", a.node_id)
        await _until(lambda: ("hello" in [f for _, f in received["a"]]))

        a.deny(b.node_id)  # b is revoked: its open connection is closed, new handshakes refused
        refused_before = a.stats().connections_refused
        for i in range(5):
            b.send(a.listen_address, f"after-{i}", a.node_id)
            await asyncio.sleep(0.2)
        await _until(lambda: a.stats().connections_refused > refused_before)
        assert not [f for s, f in received["a"] if s == b.node_id and str(f).startswith("after-")]

        a.send(b.listen_address, "to-denied", b.node_id)  # a never sends to a denied node either
        c.send(a.listen_address, "still-served", a.node_id)
        await _until(lambda: ("still-served" in [f for _, f in received["a"]]))
        await asyncio.sleep(0.2)
        assert "to-denied" not in [f for _, f in received["b"]]
    finally:
        for transport in transports.values():
            await transport.close()


async def test_memory_transport_denies_both_ways() -> None:
    hub = MemoryHub()
    a = MemoryTransport(hub, "a", Address("10.0.0.1", 1))
    b = MemoryTransport(hub, "b", Address("10.0.0.2", 1))
    got: list[Any] = []
    a.set_handler(lambda sender, frame: got.append(frame))
    b.set_handler(lambda sender, frame: got.append(frame))
    await a.start()
    await b.start()
    a.deny("b")
    b.send(a.listen_address, "x", "a")
    a.send(b.listen_address, "y", "b")
    await asyncio.sleep(0.01)
    assert got == [] and b.stats().connections_refused == 1

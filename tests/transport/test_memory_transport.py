"""In-memory transport: same contract as TLS, no sockets, with injected faults."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from agentnode.transport.base import Address, BackpressureError, Transport
from agentnode.transport.connections import TransportConfig
from agentnode.transport.memory import MemoryHub, MemoryTransport

HOST = Address("mem", 0)


async def _nodes(hub: MemoryHub, *names: str, config: TransportConfig | None = None) -> list[tuple[MemoryTransport, list[Any]]]:
    out = []
    for name in names:
        t = MemoryTransport(hub, name, HOST, config=config)
        got: list[Any] = []
        t.set_handler(lambda s, f, got=got: got.append((s, f)))
        await t.start()
        out.append((t, got))
    return out


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_arrive_in_order_as_wire_values() -> None:
    hub = MemoryHub()
    (a, _), (b, got_b) = await _nodes(hub, "a", "b")
    assert isinstance(a, Transport)
    assert a.listen_address != b.listen_address
    for i in range(100):
        a.send(b.listen_address, (i, {"k": b"v"}), "b")
    await _settle()
    assert got_b == [("a", [i, {"k": b"v"}]) for i in range(100)]  # tuples arrive as lists, as over TLS
    assert a.stats().frames_sent == 100 and b.stats().frames_received == 100
    with pytest.raises(TypeError):
        a.send(b.listen_address, object())


async def test_partition_block_heal_and_wrong_id() -> None:
    hub = MemoryHub()
    (a, got_a), (b, got_b), (c, got_c) = await _nodes(hub, "a", "b", "c")
    hub.partition(["a"], ["b", "c"])
    a.send(b.listen_address, "x", "b")
    c.send(a.listen_address, "y", "a")
    b.send(c.listen_address, "z", "c")
    await _settle()
    assert got_a == [] and got_b == [] and got_c == [("b", "z")]
    assert a.stats().dial_failures == 1 and a.stats().frames_dropped == 1
    hub.heal()
    hub.block("a", "b")
    a.send(b.listen_address, "one-way", "b")
    b.send(a.listen_address, "other-way", "a")
    await _settle()
    assert got_b == [] and got_a == [("b", "other-way")]
    hub.heal()
    a.send(b.listen_address, "not c", "c")
    await _settle()
    assert got_b == [] and a.stats().connections_refused == 1


async def test_loss_uses_the_injected_rng() -> None:
    def run(seed: int) -> list[int]:
        async def main() -> list[int]:
            hub = MemoryHub(rng=random.Random(seed), loss=0.3)
            (a, _), (b, got_b) = await _nodes(hub, "a", "b")
            for i in range(200):
                a.send(b.listen_address, i, "b")
            await _settle()
            return [f for _, f in got_b]

        return asyncio.run(main())

    first = await asyncio.get_running_loop().run_in_executor(None, run, 7)
    again = await asyncio.get_running_loop().run_in_executor(None, run, 7)
    assert first == again and 100 < len(first) < 180


async def test_backpressure_unknown_address_and_close() -> None:
    hub = MemoryHub()
    (a, _), (b, got_b) = await _nodes(hub, "a", "b", config=TransportConfig(send_queue_frames_max=5))
    for i in range(5):
        a.send(b.listen_address, i)
    with pytest.raises(BackpressureError):
        a.send(b.listen_address, 5)
    assert a.stats().backpressure_drops == 1
    await _settle()
    assert len(got_b) == 5
    a.send(Address("mem", 1), "nobody")
    assert a.stats().dial_failures == 1
    with pytest.raises(OSError, match="in use"):
        await MemoryTransport(hub, "dup", b.listen_address).start()
    a.send(b.listen_address, "late")
    await b.close()
    await _settle()
    assert len(got_b) == 5
    with pytest.raises(ValueError):
        hub.set_loss(1.5)

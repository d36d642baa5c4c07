"""The real runtime and NodeCore over the in-memory transport: no sockets, real asyncio, real timers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentnode import events as ev
from agentnode.config import NodeConfig
from agentnode.runtime import Node
from agentnode.transport.base import Address
from agentnode.transport.memory import MemoryHub, MemoryTransport


def _config(tmp_path: Path, i: int, bootstrap: list[str]) -> NodeConfig:
    return NodeConfig.build(
        data_dir=tmp_path / f"n{i}",
        listen=f"10.0.0.{i}:7946",
        bootstrap=bootstrap,
        cluster="memtest",
        mdns=False,
        profile="local",
        seed=i,
    )


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path, size: int) -> AsyncIterator[tuple[MemoryHub, list[Node]]]:
    hub = MemoryHub()
    nodes = []
    for i in range(1, size + 1):
        config = _config(tmp_path, i, [] if i == 1 else ["10.0.0.1:7946"])
        transport = MemoryTransport(hub, f"node{i:02d}", config.listen)
        nodes.append(Node(config, transport=transport, control=False))
    for node in nodes:
        await node.start()
    try:
        yield hub, nodes
    finally:
        for node in nodes:
            await node.stop()


async def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _alive(node: Node) -> set[str]:
    return {m.node_id for m in node.members() if m.state == "alive"}


async def test_cluster_forms_and_events_flow(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 4) as (_, nodes):
        everyone = {n.node_id for n in nodes}
        await _until("4 nodes to converge", lambda: all(_alive(n) == everyone for n in nodes))
        status = nodes[0].status()
        assert status["members"]["alive"] == 4 and status["cluster"] == "memtest"


async def test_partition_heals_into_one_cluster(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 4) as (hub, nodes):
        everyone = {n.node_id for n in nodes}
        await _until("convergence", lambda: all(_alive(n) == everyone for n in nodes))
        left, right = nodes[:2], nodes[2:]
        hub.partition([n.node_id for n in left], [n.node_id for n in right])
        await _until(
            "each side to see the other side dead",
            lambda: all(_alive(n) == {m.node_id for m in left} for n in left)
            and all(_alive(n) == {m.node_id for m in right} for n in right),
            timeout_s=30,
        )
        hub.heal()
        await _until("one cluster again after the heal", lambda: all(_alive(n) == everyone for n in nodes), timeout_s=30)


async def test_graceful_leave_is_not_a_failure(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (_, nodes):
        everyone = {n.node_id for n in nodes}
        await _until("convergence", lambda: all(_alive(n) == everyone for n in nodes))
        seen: list[ev.NodeEvent] = []

        async def watch() -> None:
            async for event in nodes[0].events():
                seen.append(event)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        leaver = nodes[2]
        await leaver.leave()
        await _until(
            "the others to mark the leaver left",
            lambda: all({m.node_id: m.state for m in n.members()}.get(leaver.node_id) == "left" for n in nodes[:2]),
        )
        watcher.cancel()
        assert any(isinstance(e, ev.MemberLeft) for e in seen)
        assert not any(isinstance(e, ev.MemberFailed) for e in seen)

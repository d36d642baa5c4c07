"""`consistency="linearizable"` on node.state: served by the Raft group, NoQuorum on a minority."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentnode.config import NodeConfig
from agentnode.consensus import ConsensusTimeout, NoQuorum
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport


@contextlib.asynccontextmanager
async def _three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[MemoryHub, list[Node]]]:
    monkeypatch.setenv("AGENTNODE_RAFT_BOOTSTRAP_EXPECT", "3")
    hub = MemoryHub()
    nodes = []
    for i in (1, 2, 3):
        config = NodeConfig.build(data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946",
                                  bootstrap=[] if i == 1 else ["10.0.0.1:7946"], cluster="lin", mdns=False,
                                  profile="local", seed=i)
        nodes.append(Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False))
    for node in nodes:
        await node.start()
    try:
        yield hub, nodes
    finally:
        for node in nodes:
            await node.stop()


async def _group_ready(nodes: list[Node]) -> None:
    async def ready() -> None:
        while True:
            views = [await n.raft.status() for n in nodes]
            if len({v["leader"] for v in views}) == 1 and views[0]["leader"] is not None:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ready(), 30)


async def test_linearizable_state_through_raft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _three(tmp_path, monkeypatch) as (hub, nodes):
        await _group_ready(nodes)
        a, b, c = nodes
        await a.state.set("config", {"mode": "fast"}, consistency="linearizable")
        assert await c.state.get("config", consistency="linearizable") == {"mode": "fast"}
        # concurrent linearizable increments from every node: none lost (compare-and-set loops)
        await asyncio.gather(*(n.state.increment("jobs", 1, consistency="linearizable") for n in nodes for _ in range(4)))
        assert await b.state.get("jobs", consistency="linearizable") == 12
        await b.state.add("owners", "x", consistency="linearizable")
        await c.state.add("owners", "y", consistency="linearizable")
        await a.state.remove("owners", "x", consistency="linearizable")
        assert await a.state.get("owners", consistency="linearizable") == ["y"]
        # the CRDT keyspace is separate: a local read does not see linearizable keys
        assert await a.state.get("jobs") is None
        await a.state.delete("config", consistency="linearizable")
        assert await b.state.get("config", consistency="linearizable") is None

        # a minority fails with a clear error instead of hanging: NoQuorum, or ConsensusTimeout when the
        # isolated node was the leader and its last step's outcome is unknown
        hub.partition([a.node_id], [b.node_id, c.node_id])
        with pytest.raises((NoQuorum, ConsensusTimeout)):
            await asyncio.wait_for(a.state.increment("jobs", 1, consistency="linearizable"), 20)
        hub.heal()

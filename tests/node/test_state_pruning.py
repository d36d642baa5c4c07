"""Retiring a node through `node.state` on in-process nodes (memory transport): the fold, and a restart
that keeps the folded state, its markers and the retired ids (decision 0024)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agentnode.config import NodeConfig
from agentnode.crdt import StateStore, to_wire
from agentnode.crdt.store import markers_to_wire
from agentnode.replication import ReplicationConfig
from agentnode.runtime import Node
from agentnode.state import STATE_FILE, StateDb
from agentnode.transport.memory import MemoryHub, MemoryTransport

FAST = ReplicationConfig(gc_interval_ms=200, digest_interval_ms=300)


def _node(hub: MemoryHub, tmp_path: Path, i: int) -> Node:
    config = NodeConfig.build(
        data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946", bootstrap=[] if i == 1 else ["10.0.0.1:7946"],
        cluster="prunetest", mdns=False, profile="local", seed=i,
    )
    node = Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False)
    node.state._config = FAST
    return node


async def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class _Control:
    """Collects the control operations `node.state` registers."""

    def __init__(self) -> None:
        self.ops: dict[str, Any] = {}

    def add(self, name: str, fn: Any) -> None:
        self.ops[name] = fn

    def add_stream(self, name: str, fn: Any) -> None:
        self.ops[name] = fn


def _mentions(node: Node, replica: str) -> list[str]:
    return node.state.replicator.store.keys_mentioning(replica)


async def test_retired_node_is_folded_and_a_restart_keeps_the_folded_state(tmp_path: Path) -> None:
    hub = MemoryHub()
    nodes = [_node(hub, tmp_path, i) for i in (1, 2, 3)]
    for node in nodes:
        await node.start()
    try:
        await _until("membership", lambda: all(len(n.state.replicator.live_peers()) == 2 for n in nodes))
        for i, node in enumerate(nodes):
            await node.state.increment("visits", i + 1)
            await node.state.add("tags", f"t{i}")
        await _until("convergence", lambda: all(n.state.local_value("visits") == 6 for n in nodes)
                     and all(n.state.local_value("tags") == frozenset({"t0", "t1", "t2"}) for n in nodes))
        gone = nodes[2].node_id
        await nodes[2].stop()
        live = nodes[:2]
        live[0].state.retire(gone)
        control = _Control()
        live[1].state.add_control_ops(control)
        assert await control.ops["state.retire"]({"node_id": gone}) == {"retired": [gone]}
        with pytest.raises(ValueError, match="node_id"):
            await control.ops["state.retire"]({})
        await live[0].state.increment("visits", 1)  # writes go on during the fold
        await _until("the fold", lambda: not any(_mentions(n, gone) for n in live)
                     and all(n.state.local_value("visits") == 7 for n in live), 30)
        assert all(n.state.local_value("tags") == frozenset({"t0", "t1", "t2"}) for n in live)
        assert all(n.state.stats()["retired"] == [gone] for n in live)
    finally:
        for node in nodes[:2]:
            await node.stop()
    restarted = _node(hub, tmp_path, 2)
    async with restarted:
        assert restarted.state.local_value("visits") == 7
        assert restarted.state.local_value("tags") == frozenset({"t0", "t1", "t2"})
        assert not _mentions(restarted, gone)
        assert restarted.state.replicator.retired() == [gone]


def test_state_db_keeps_markers_and_retired_ids(tmp_path: Path) -> None:
    a, o = StateStore("a"), StateStore("o")
    o.apply_delta(a.update("c", "gcounter", "increment", 4))
    o.update("c", "gcounter", "increment", 1)
    o.retire("a")
    assert o.prune("c", "a") is not None
    db = StateDb(tmp_path / STATE_FILE)
    db.open()
    db.commit(
        {"c": msgpack.packb(to_wire(o.get("c")), use_bin_type=True)},
        ["o", o.seen().get("o")],
        markers={"c": msgpack.packb(markers_to_wire(o.markers("c")))},
        retired=o.retired(),
    )
    loaded, skipped = db.load("o", None)
    db.close()
    assert skipped == 0
    assert loaded.value("c") == 5 and loaded.markers("c") == o.markers("c") and loaded.retired() == ["a"]
    assert loaded.digest() == o.digest()
    stale = a.get("c")
    assert stale is not None
    loaded.apply_state("c", stale)  # still stripped after the restart: no double count
    assert loaded.value("c") == 5


async def test_a_revoked_node_is_retired_and_folded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = MemoryHub()
    nodes = [_node(hub, tmp_path, i) for i in (1, 2, 3)]
    for node in nodes:
        await node.start()
    try:
        await _until("membership", lambda: all(len(n.state.replicator.live_peers()) == 2 for n in nodes))
        for i, node in enumerate(nodes):
            await node.state.increment("visits", i + 1)
        await _until("convergence", lambda: all(n.state.local_value("visits") == 6 for n in nodes))
        gone = nodes[2].node_id
        live = nodes[:2]
        for node in live:
            assert node.raft is not None
            monkeypatch.setattr(node.raft, "refuses", lambda node_id: node_id == gone)
        await nodes[2].stop()
        await _until("the fold", lambda: all(n.state.replicator.retired() == [gone] for n in live)
                     and not any(_mentions(n, gone) for n in live), 30)
        assert all(n.state.local_value("visits") == 6 for n in live)
    finally:
        for node in nodes[:2]:
            await node.stop()

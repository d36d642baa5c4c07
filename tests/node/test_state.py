"""`node.state` on the real runtime over the in-memory transport, and its SQLite persistence."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentnode.consensus import NoQuorum

from agentnode.config import NodeConfig
from agentnode.crdt import CrdtUsageError
from agentnode.runtime import Node
from agentnode.state import (
    STATE_FILE,
    ConsistencyNotMet,
    NodeState,
    StateDb,
    StateStorageError,
)
from agentnode.transport.memory import MemoryHub, MemoryTransport


def _config(tmp_path: Path, i: int, bootstrap: list[str]) -> NodeConfig:
    return NodeConfig.build(
        data_dir=tmp_path / f"n{i}",
        listen=f"10.0.0.{i}:7946",
        bootstrap=bootstrap,
        cluster="statetest",
        mdns=False,
        profile="local",
        seed=i,
    )


def _node(hub: MemoryHub, tmp_path: Path, i: int) -> Node:
    config = _config(tmp_path, i, [] if i == 1 else ["10.0.0.1:7946"])
    return Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False)


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path, size: int) -> AsyncIterator[tuple[MemoryHub, list[Node]]]:
    hub = MemoryHub()
    nodes = [_node(hub, tmp_path, i) for i in range(1, size + 1)]
    for node in nodes:
        await node.start()
    try:
        await _until("membership to converge", lambda: all(len(n.state.replicator.live_peers()) == size - 1 for n in nodes))
        yield hub, nodes
    finally:
        for node in nodes:
            await node.stop()


async def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _same(nodes: list[Node], key: str) -> bool:
    values = [n.state.local_value(key) for n in nodes]
    return all(v == values[0] for v in values)


async def test_writes_on_three_nodes_converge_and_watch_sees_them(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (_, nodes):
        changes = []

        async def watch() -> None:
            async for change in nodes[2].state.watch("board"):
                changes.append(change)
                if change.value == frozenset({"a", "b", "c"}):
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await asyncio.gather(
            nodes[0].state.add("board", "a"),
            nodes[1].state.add("board", "b"),
            nodes[2].state.add("board", "c"),
            *(n.state.increment("jobs", 2) for n in nodes),
        )
        await _until("convergence", lambda: _same(nodes, "board") and _same(nodes, "jobs"))
        assert nodes[0].state.local_value("board") == frozenset({"a", "b", "c"})
        assert nodes[1].state.local_value("jobs") == 6
        await asyncio.wait_for(watcher, 10)
        assert changes[-1].value == frozenset({"a", "b", "c"}) and not changes[-1].deleted
        await nodes[0].state.set("cfg", {"mode": "fast"}, consistency="all")
        assert await nodes[2].state.get("cfg", consistency="majority") == {"mode": "fast"}
        await nodes[1].state.delete("cfg", consistency="all")
        assert await nodes[0].state.get("cfg") is None
        with pytest.raises(CrdtUsageError, match="was deleted"):
            await nodes[0].state.set("cfg", 1)


async def test_partition_both_sides_write_majority_fails_on_minority_then_heal(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (hub, nodes):
        await nodes[0].state.increment("n", 1, consistency="all")
        hub.partition([nodes[0].node_id], [n.node_id for n in nodes[1:]])
        # Before membership notices, a majority write waits for acks and times out with a clear error.
        with pytest.raises(ConsistencyNotMet, match="reached 1 of the 2 replicas"):
            await nodes[0].state.increment("n", 1, consistency="majority", timeout_s=0.3)
        await _until("the minority to see its peers failed", lambda: nodes[0].state.replicator.live_peers() == [])
        with pytest.raises(ConsistencyNotMet, match="needs 2 of 3 replicas but only 1 is reachable"):
            await nodes[0].state.increment("n", 1, consistency="majority")
        await nodes[0].state.increment("n", 10)
        await nodes[1].state.increment("n", 100, consistency="majority")
        assert nodes[0].state.local_value("n") == 13
        hub.heal()
        await _until("heal and convergence", lambda: all(n.state.local_value("n") == 113 for n in nodes), 30)


async def test_local_replica_survives_restart(tmp_path: Path) -> None:
    hub = MemoryHub()
    node = _node(hub, tmp_path, 1)
    async with node:
        await node.state.increment("visits", 5)
        await node.state.add("tags", "x")
        await node.state.set("owner", "alice")
        await node.state.delete("owner")
        first_epoch = node.state.replicator.epoch
    node = _node(hub, tmp_path, 1)
    async with node:
        assert node.state.local_value("visits") == 5
        assert node.state.local_value("tags") == frozenset({"x"})
        assert node.state.type_of("owner") == "tombstone"
        assert node.state.replicator.epoch == first_epoch + 1
        await node.state.increment("visits", 1)  # the event counter resumed above what peers saw
        assert node.state.replicator.store.seen().get(node.node_id) == 5  # 4 events before the restart
    assert (tmp_path / "n1" / STATE_FILE).exists()


async def test_restarted_node_catches_up_with_writes_made_while_it_was_down(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (hub, nodes):
        await nodes[0].state.increment("k", 1, consistency="all")
        await nodes[2].stop()
        await nodes[0].state.increment("k", 1)
        await nodes[1].state.add("s", "while-down")
        restarted = _node(hub, tmp_path, 3)
        nodes[2] = restarted
        await restarted.start()
        await _until("catch-up", lambda: restarted.state.local_value("k") == 2
                     and restarted.state.local_value("s") == frozenset({"while-down"}), 30)


async def test_consistency_errors_are_clear(tmp_path: Path) -> None:
    hub = MemoryHub()
    async with _node(hub, tmp_path, 1) as node:
        # one node forms no Raft group (it needs three): linearizable fails at once, saying why
        with pytest.raises(NoQuorum, match="Raft voter"):
            await node.state.get("k", consistency="linearizable")
        with pytest.raises(ValueError, match="unknown consistency"):
            await node.state.increment("k", consistency="most")
        await node.state.increment("k", consistency="majority")  # a one-node cluster is its own majority
        assert await node.state.get("k", consistency="all") == 1
    with pytest.raises(Exception, match="not running"):
        await node.state.get("k")


def test_state_db_full_disk_gives_clear_error_and_keeps_last_commit(tmp_path: Path) -> None:
    db = StateDb(tmp_path / STATE_FILE, max_bytes=64 * 1024)
    db.open()
    db.commit({"a": b"x" * 100}, ["me", 1])
    with pytest.raises(StateStorageError, match="full.*Nothing was corrupted"):
        db.commit({f"k{i}": b"y" * 4000 for i in range(100)}, ["me", 2])
    db.close()
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1
    conn.close()


async def test_node_state_full_disk_refuses_writes_until_space_returns(tmp_path: Path) -> None:
    hub = MemoryHub()
    node = _node(hub, tmp_path, 1)
    node.state = NodeState(node, db_bytes_max=64 * 1024)
    async with node:
        await node.state.set("small", "v")
        with pytest.raises(StateStorageError, match="full"):
            for i in range(200):
                await node.state.set(f"big{i}", "z" * 3000)
        with pytest.raises(StateStorageError, match="write refused"):
            await node.state.set("more", 1)
        assert node.state.stats()["storage_error"]
        assert node.state._db is not None
        node.state._db._require().execute("PRAGMA max_page_count=100000")  # space comes back
        await node.state.set("more", 1)
        assert node.state.stats()["storage_error"] is None
        kept = len(node.state.keys())
    node = _node(hub, tmp_path, 1)
    async with node:
        assert node.state.local_value("more") == 1 and len(node.state.keys()) == kept

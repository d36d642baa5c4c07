"""Unique agent names in real `Node`s (pysyncobj Raft group over the in-memory transport)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentnode.agents import AgentNameLost, AgentNameUnconfirmed, NameTaken
from agentnode.config import NodeConfig
from agentnode.names import CONFIRMED, LOST, NAME_MARKER_KEY, UNCONFIRMED
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport

CLUSTER = "namestest"
TTL_MS = 2_000


def _node(hub: MemoryHub, tmp_path: Path, i: int) -> Node:
    config = NodeConfig.build(
        data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946", bootstrap=[] if i == 1 else ["10.0.0.1:7946"],
        cluster=CLUSTER, mdns=False, profile="local", seed=i, name_lease_ttl_ms=TTL_MS,
    )
    return Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False)


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch,
                   expect: int = 3) -> AsyncIterator[tuple[MemoryHub, list[Node]]]:
    monkeypatch.setenv("AGENTNODE_RAFT_BOOTSTRAP_EXPECT", str(expect))
    hub = MemoryHub()
    nodes = [_node(hub, tmp_path, i) for i in range(1, size + 1)]
    for node in nodes:
        await node.start()
    try:
        yield hub, nodes
    finally:
        for node in nodes:
            await node.stop()


async def _until(what: str, predicate: Callable[[], Any], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _formed(nodes: list[Node]) -> None:
    async def check() -> bool:
        views = [await n.raft.status() for n in nodes]
        leaders = {v["leader"] for v in views}
        return len(leaders) == 1 and None not in leaders and all(len(v["voters"]) == 3 for v in views)

    await _until("a Raft group of 3 voters with one leader", check)


def _holders(node: Node, name: str) -> list[str]:
    return [e.record.agent_id for e in node.find_agents(name=name, healthy_only=False)]


async def test_concurrent_claims_on_every_node_exactly_one_wins_and_deregister_releases_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 4, monkeypatch) as (_, nodes):
        await _formed(nodes)
        outcomes = await asyncio.gather(*(n.register_agent("alice", ["chat"], unique=True) for n in nodes),
                                        return_exceptions=True)
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(winners) == 1 and len(losers) == 3, outcomes
        winner = winners[0]
        assert winner.name_state.state == CONFIRMED and winner.name_state.epoch >= 1
        for exc in losers:
            assert isinstance(exc, NameTaken), exc
            assert exc.holder.endswith("/" + winner.agent_id) and exc.expires_at_ms > 0
            assert "alice" in str(exc) and exc.holder in str(exc)
        # every node's lookup by name answers the holder only; a loser was never registered
        await _until("every node to see the holder",
                     lambda: all(_holders(n, "alice") == [winner.agent_id] for n in nodes))
        assert [a for n in nodes for a in n.agents.local_agents() if a.name == "alice"] == [winner]
        record = winner.record
        assert record.meta[NAME_MARKER_KEY] == f"confirmed:{winner.name_state.epoch}"
        # renewals keep it across several TTLs
        await asyncio.sleep(TTL_MS * 2 / 1000)
        assert winner.name_state.state == CONFIRMED
        assert winner._service.names.core.counters["renewals"] >= 3
        # deregistering releases the name at once: another node takes it immediately, well inside the TTL
        leader = (await nodes[0].raft.status())["leader"]
        # not the leader: the clean shutdown below must not cost an election inside the TTL
        other = next(n for n in reversed(nodes) if n.node_id not in (winner._service.node_id, leader))
        await winner.deregister()
        loop = asyncio.get_running_loop()
        started = loop.time()
        taken_over = await other.register_agent("alice", unique=True)
        assert taken_over.name_state.state == CONFIRMED
        assert loop.time() - started < TTL_MS / 1000
        await _until("every node to see the new holder",
                     lambda: all(_holders(n, "alice") == [taken_over.agent_id] for n in nodes))
        # a clean shutdown releases too: a third node takes the name at once
        await other.stop()
        third = next(n for n in nodes if n is not other and n.node_id != winner._service.node_id and n.node_id != leader)
        started = loop.time()
        assert (await third.register_agent("alice", unique=True)).name_state.state == CONFIRMED
        assert loop.time() - started < TTL_MS / 1000
        assert other.agents.names.core.counters["releases"] == 1


async def test_a_single_node_without_a_group_registers_unconfirmed_and_lookups_still_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 1, monkeypatch) as (_, [node]):
        loop = asyncio.get_running_loop()
        started = loop.time()
        agent = await node.register_agent("solo", unique=True)
        assert loop.time() - started < 2.0  # no voter known: NoQuorum at once, not a timeout
        assert agent.name_state.state == UNCONFIRMED
        assert agent.record.meta[NAME_MARKER_KEY] == UNCONFIRMED
        assert _holders(node, "solo") == [agent.agent_id]
        # a second local agent with the same unconfirmed name is not refused (nobody can promise
        # uniqueness without a quorum), and plain (non-unique) names keep working as before
        plain = await node.register_agent("echo")
        assert plain.name_state is None and _holders(node, "echo") == [plain.agent_id]
        with pytest.raises(ValueError, match="reserved"):
            await node.register_agent("x", metadata={NAME_MARKER_KEY: "confirmed:9"})
        await agent.deregister()
        assert _holders(node, "solo") == []


async def test_a_partitioned_holder_downgrades_the_majority_takes_the_name_and_the_old_holder_loses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 4, monkeypatch) as (hub, nodes):
        await _formed(nodes)
        cut_off = nodes[3]  # node04: a non-voter, so the group keeps its majority without it
        events: list[Any] = []

        async def collect() -> None:
            async for event in cut_off.events():
                if isinstance(event, (AgentNameUnconfirmed, AgentNameLost)):
                    events.append(event)

        reader = asyncio.create_task(collect())
        holder = await cut_off.register_agent("bob", unique=True)
        assert holder.name_state.state == CONFIRMED
        hub.partition(["node04"], ["node01", "node02", "node03"])
        await _until("the cut-off holder to downgrade its name",
                     lambda: holder.name_state.state == UNCONFIRMED, timeout_s=TTL_MS / 1000 + 5)
        rival_node = nodes[0]

        async def take() -> bool:
            try:
                return (await rival_node.register_agent("bob", unique=True, agent_id="bob-2")).name_state.state == CONFIRMED
            except NameTaken:
                return False

        await _until("the majority side to take the name after the TTL", take, timeout_s=TTL_MS / 1000 + 10)
        hub.heal()
        await _until("the old holder to learn it lost the name",
                     lambda: holder.name_state.state == LOST, timeout_s=30)
        await _until("every node to answer the new holder only",
                     lambda: all(_holders(n, "bob") == ["bob-2"] for n in nodes), timeout_s=30)
        assert holder.record.meta[NAME_MARKER_KEY] == LOST
        await _until("the events", lambda: any(isinstance(e, AgentNameLost) for e in events), timeout_s=5)
        assert isinstance(events[0], AgentNameUnconfirmed) and events[-1].holder.endswith("/bob-2")
        reader.cancel()

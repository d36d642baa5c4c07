"""The Raft service in real `Node`s over the in-memory transport: formation, forwarding, partitions, roster."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentnode.config import NodeConfig
from agentnode.consensus import GetRoster, KvGet, NoQuorum
from agentnode.consensus.history import HistoryRecorder, check_history
from agentnode.messages import PROTOCOL_VERSION
from agentnode.raft import RAFT_FRAME_TYPE, RaftUnavailable, RecordingKv
from agentnode.runtime import Node
from agentnode.transport.base import Address
from agentnode.transport.memory import MemoryHub, MemoryTransport

CLUSTER = "rafttest"


def _config(tmp_path: Path, i: int) -> NodeConfig:
    return NodeConfig.build(
        data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946", bootstrap=[] if i == 1 else ["10.0.0.1:7946"],
        cluster=CLUSTER, mdns=False, profile="local", seed=i,
    )


def _node(hub: MemoryHub, tmp_path: Path, i: int) -> Node:
    config = _config(tmp_path, i)
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


async def _until(what: str, predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
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


async def _formed(nodes: list[Node], voters: int = 3) -> str:
    """Wait until every node knows the same leader and the group has `voters` voters; return the leader id."""

    async def check() -> bool:
        views = [await n.raft.status() for n in nodes]
        leaders = {v["leader"] for v in views}
        return len(leaders) == 1 and None not in leaders and all(len(v["voters"]) == voters for v in views)

    await _until(f"a Raft group of {voters} voters with one leader", check)
    return (await nodes[0].raft.status())["leader"]


def _by_id(nodes: list[Node], node_id: str) -> Node:
    return next(n for n in nodes if n.node_id == node_id)


async def test_three_nodes_form_the_group_by_themselves_and_everyone_reads_and_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 4, monkeypatch) as (_, nodes):
        leader = await _formed(nodes)
        status = await nodes[3].raft.status()  # a non-voter shows the leader's view, with lag
        assert status["voters"] == ["node01", "node02", "node03"]  # the 3 lowest ids
        assert status["role"] == "leader" and status["leader"] == leader
        assert set(status["lag"]) == set(status["voters"]) and status["this_node"]["voter"] is False
        assert [n.raft.is_voter for n in nodes] == [True, True, True, False]
        for i, node in enumerate(nodes):
            result = await node.raft.kv_put(f"k{i}", f"v{i}".encode())
            assert result.ok
        for node in nodes:  # every write is visible to every node's linearizable read
            for i in range(4):
                read = await node.raft.kv_get(f"k{i}")
                assert read.value == f"v{i}".encode() and read.linearizable and not read.stale
        cas = await nodes[3].raft.kv_cas("k0", b"wrong", b"x")
        assert not cas.ok and cas.value == b"v0"
        assert (await nodes[3].raft.kv_cas("k0", b"v0", b"x")).ok
        assert (await nodes[3].raft.kv_delete("k0")).ok
        assert (await nodes[0].raft.kv_get("k0")).value is None
        stale = await nodes[3].raft.kv_get("k1", linearizable=False)
        assert stale.stale and stale.value == b"v1"
        # the voter set is persisted before any replica starts
        record = json.loads((tmp_path / "n4" / "raft" / "group.json").read_text())
        assert record["voters"] == ["node01", "node02", "node03"] and record["voter"] is False


async def test_minority_side_fails_fast_with_no_quorum_and_catches_up_after_healing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 5, monkeypatch) as (hub, nodes):
        leader_id = await _formed(nodes)
        assert (await nodes[4].raft.kv_put("k", b"before")).ok
        # the minority: the current leader and one non-voter; the majority: the two other voters + a non-voter
        minority = [leader_id, "node05"]
        majority = [n.node_id for n in nodes if n.node_id not in minority]
        hub.partition(minority, majority)
        old_leader, outsider = _by_id(nodes, leader_id), _by_id(nodes, "node05")
        await _until("the minority to see the majority dead",
                     lambda: all(m.state == "dead" for m in outsider.members() if m.node_id in majority), timeout_s=30)
        await _until("the minority leader to lose quorum",
                     lambda: not old_leader.raft.group.status().has_quorum, timeout_s=10)
        for node in (old_leader, outsider):
            # NoQuorum (not applied), not ConsensusTimeout: the voter's fast path, not the forwarding bound
            with pytest.raises(NoQuorum):
                await node.raft.kv_put("k", b"minority")
            with pytest.raises(NoQuorum):
                await node.raft.kv_get("k")
            stale = await node.raft.kv_get("k", linearizable=False)
            assert stale.stale and stale.value == b"before"
        # the majority elects a new leader and keeps writing
        majority_nodes = [_by_id(nodes, i) for i in majority]
        await _until("a new leader on the majority side",
                     lambda: majority_nodes[0].raft.group is not None and majority_nodes[0].raft.group.status().leader in majority,
                     timeout_s=15)
        assert (await majority_nodes[-1].raft.kv_put("k", b"after")).ok
        hub.heal()

        async def caught_up() -> bool:
            try:
                return (await outsider.raft.kv_get("k")).value == b"after"
            except NoQuorum:
                return False

        await _until("the healed minority to read the majority's write", caught_up, timeout_s=30)
        await _until("the old leader's replica to catch up",
                     lambda: old_leader.raft.group.state.query(KvGet("k")) == b"after",
                     timeout_s=15)


async def test_revoked_node_is_refused_by_every_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 4, monkeypatch) as (_, nodes):
        await _formed(nodes)
        victim = nodes[3]
        result = await nodes[1].raft.revoke_node(victim.node_id, "key leaked")
        assert result.ok
        roster = await nodes[0].raft.read(GetRoster())
        assert victim.node_id in roster.value.revoked
        assert set(roster.value.admitted) >= {n.node_id for n in nodes[:3]}  # the leader admits alive members
        others = nodes[:3]
        await _until("every node to refuse the revoked node", lambda: all(n.raft.refuses(victim.node_id) for n in others))
        await _until("everyone to see the revoked node dead",
                     lambda: all({m.node_id: m.state for m in n.members()}[victim.node_id] == "dead" for n in others),
                     timeout_s=30)
        # the revoked node was told (by the voter that committed the revocation) and fails fast
        with pytest.raises(RaftUnavailable, match="revoked"):
            await victim.raft.kv_put("x", b"from a revoked node")
        with pytest.raises(RaftUnavailable, match="revoked"):
            await victim.raft.status()
        with pytest.raises(ValueError, match="itself"):
            await nodes[0].raft.revoke_node(nodes[0].node_id)


async def test_add_and_remove_voter_one_change_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentnode.consensus import MembershipChangeRefused

    async with _cluster(tmp_path, 4, monkeypatch) as (_, nodes):
        leader_id = await _formed(nodes)
        assert (await nodes[0].raft.kv_put("k", b"v")).ok
        newcomer = nodes[3]
        answer = await newcomer.raft.add_voter(newcomer.node_id)  # run from the non-voter itself: forwarded
        assert answer["voters"] == ["node01", "node02", "node03", "node04"]
        await _formed(nodes, voters=4)
        assert newcomer.raft.is_voter
        await _until("the new voter to replicate the data",
                     lambda: newcomer.raft.group.state.query(KvGet("k")) == b"v")
        with pytest.raises(MembershipChangeRefused, match="already a voter"):
            await nodes[0].raft.add_voter(newcomer.node_id)
        with pytest.raises(MembershipChangeRefused, match="leader"):
            await newcomer.raft.remove_voter(leader_id)
        answer = await _by_id(nodes, leader_id).raft.remove_voter(newcomer.node_id)
        assert answer["voters"] == ["node01", "node02", "node03"]
        await _until("the removed voter to stop its replica", lambda: not newcomer.raft.is_voter)
        assert not (tmp_path / "n4" / "raft" / "log").exists()
        assert (await newcomer.raft.kv_put("k", b"w")).ok  # it forwards like any non-voter


async def test_concurrent_claims_of_one_name_exactly_one_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 5, monkeypatch) as (_, nodes):
        await _formed(nodes)
        results = await asyncio.gather(*(n.raft.claim_name("planner", f"agent-{i}", 30_000) for i, n in enumerate(nodes)))
        winners = [r for r in results if r.ok]
        assert len(winners) == 1
        owner = winners[0].lease.owner
        assert all(r.lease.owner == owner for r in results if not r.ok)
        assert (await nodes[0].raft.renew_name("planner", owner, 30_000)).ok
        lock = await nodes[4].raft.acquire_lock("build", "me", 10_000)
        again = await nodes[2].raft.acquire_lock("build", "you", 10_000)
        assert lock.ok and not again.ok and again.hold.owner == "me"
        assert (await nodes[1].raft.release_lock("build", "me", lock.hold.fencing_token)).ok
        second = await nodes[2].raft.acquire_lock("build", "you", 10_000)
        assert second.ok and second.hold.fencing_token > lock.hold.fencing_token


async def test_restarted_voter_recovers_and_catches_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 3, monkeypatch) as (hub, nodes):
        leader_id = await _formed(nodes)
        follower = next(n for n in nodes if n.node_id != leader_id)
        index = nodes.index(follower)
        assert (await follower.raft.kv_put("k", b"1")).ok
        await follower.stop()
        assert (await _by_id(nodes, leader_id).raft.kv_put("k", b"2")).ok
        restarted = Node(follower.config, transport=MemoryTransport(hub, follower.node_id, follower.config.listen), control=False)
        nodes[index] = restarted
        await restarted.start()
        assert restarted.raft.is_voter  # from raft/group.json, no bootstrapping again
        await _until("the restarted voter to catch up",
                     lambda: restarted.raft.group.state.query(KvGet("k")) == b"2")


async def test_garbage_frames_are_counted_and_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _cluster(tmp_path, 3, monkeypatch) as (hub, nodes):
        await _formed(nodes)
        evil = MemoryTransport(hub, "evil", Address("10.0.0.99", 7946))
        await evil.start()
        target = Address("10.0.0.1", 7946)
        garbage = [
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE],
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 99],
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 4, "x", 1, 2, 3],
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 6, 1, "no", None],
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 2, "g", ["a"] * 100, None, 0, True, []],
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 3, "g", ["evil", "node01"]],  # a form naming a non-member
            [PROTOCOL_VERSION, CLUSTER, RAFT_FRAME_TYPE, 0, b"\x80\x04garbage"],  # not from a voter: pysyncobj drops it
            [PROTOCOL_VERSION, "other", RAFT_FRAME_TYPE, 1],
        ]
        record = (tmp_path / "n1" / "raft" / "group.json").read_text()
        for frame in garbage:
            evil.send(target, frame, None)
        await asyncio.sleep(0.2)
        assert nodes[0].raft.stats.frames_bad >= 6
        assert nodes[0].raft.group.stats.frames_from_non_voters >= 1
        assert (await nodes[0].raft.kv_put("still", b"fine")).ok
        assert (tmp_path / "n1" / "raft" / "group.json").read_text() == record
        await evil.close()


async def test_recorded_history_with_a_leader_stop_is_linearizable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools
    import random

    async with _cluster(tmp_path, 4, monkeypatch) as (_, nodes):
        leader_id = await _formed(nodes)
        counter = itertools.count()
        recorder = HistoryRecorder()
        stopped: set[str] = set()

        async def client(name: str, seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(40):
                live = [n for n in nodes if n.node_id not in stopped]
                kv = RecordingKv(rng.choice(live).raft, recorder, name, lambda: next(counter))
                key = rng.choice(["x", "y"])
                value = str(rng.randrange(3)).encode()
                op = rng.choice(["get", "put", "cas", "delete"])
                with contextlib.suppress(Exception):
                    if op == "get":
                        await kv.get(key)
                    elif op == "put":
                        await kv.put(key, value)
                    elif op == "cas":
                        await kv.cas(key, rng.choice([None, b"0", b"1", b"2"]), value)
                    else:
                        await kv.delete(key)

        async def stop_leader() -> None:
            await asyncio.sleep(0.3)
            stopped.add(leader_id)
            await _by_id(nodes, leader_id).stop()

        await asyncio.gather(stop_leader(), *(client(f"c{i}", i) for i in range(4)))
        history = recorder.close()
        assert sum(op.status == "ok" for op in history) > 50
        verdicts = check_history(history)
        assert all(v.linearizable for v in verdicts.values()), verdicts

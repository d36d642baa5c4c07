"""PySyncObjGroup: 3 voters in one process over the in-process RaftLink (no sockets).

Real pysyncobj with real (monotonic) election timers, so waits are bounded polls, never sleeps
asserted on.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from pathlib import Path

import pytest

from agentnode.consensus import commands as c
from agentnode.consensus.base import ConsensusGroup, ConsensusTimeout, NoQuorum
from agentnode.consensus.memory_link import MemoryRaftNetwork
from agentnode.consensus.pysyncobj_group import PySyncObjGroup, RaftConfig

IDS = ["a", "b", "c"]
WAIT_S = 15.0


class Cluster:
    def __init__(self, tmp: Path, ids: list[str] = IDS, config: RaftConfig | None = None) -> None:
        self.tmp, self.ids, self.config = tmp, list(ids), config or RaftConfig()
        self.net = MemoryRaftNetwork()
        self.groups: dict[str, PySyncObjGroup] = {}

    async def start(self, node_id: str, voters: list[str] | None = None) -> PySyncObjGroup:
        group = PySyncObjGroup(node_id, voters or self.ids, self.net.link(node_id), self.tmp / node_id, self.config)
        await group.start()
        self.groups[node_id] = group
        return group

    async def start_all(self) -> None:
        for node_id in self.ids:
            await self.start(node_id)

    async def stop(self, node_id: str) -> None:
        await self.groups.pop(node_id).close()

    async def close(self) -> None:
        for group in list(self.groups.values()):
            await group.close()
        self.groups.clear()

    async def leader(self, among: list[str] | None = None, not_: str | None = None) -> PySyncObjGroup:
        """Wait until exactly one of `among` is a leader with quorum that the others follow."""
        names = among or list(self.groups)

        async def poll() -> PySyncObjGroup:
            while True:
                leaders = [n for n in names if n != not_ and self.groups[n].status().role == "leader"
                           and self.groups[n].status().has_quorum]
                if len(leaders) == 1 and all(self.groups[n].status().leader == leaders[0] for n in names):
                    return self.groups[leaders[0]]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(poll(), WAIT_S)

    async def converged(self, names: list[str] | None = None) -> None:
        names = names or list(self.groups)

        async def poll() -> None:
            while True:
                statuses = [self.groups[n].status() for n in names]
                digests = {self.groups[n].state.digest() for n in names}
                if len(digests) == 1 and len({s.applied_index for s in statuses}) == 1:
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), WAIT_S)


@pytest.fixture
async def cluster(tmp_path: Path):
    cl = Cluster(tmp_path)
    yield cl
    await cl.close()


async def test_elect_commit_kill_leader_new_leader_commits(cluster: Cluster) -> None:
    await cluster.start_all()
    assert all(isinstance(g, ConsensusGroup) for g in cluster.groups.values())
    first = await cluster.leader()
    follower = next(g for n, g in cluster.groups.items() if n != first.node_id)
    assert (await follower.propose(c.KvPut("k", b"1"))).ok  # forwarded to the leader
    term = first.status().term

    await cluster.stop(first.node_id)
    second = await cluster.leader()
    assert second.node_id != first.node_id and second.status().term > term
    assert (await second.propose(c.KvPut("k", b"2"))).ok
    others = [n for n in cluster.groups if n != second.node_id]
    read = await cluster.groups[others[0]].read(c.KvGet("k"))
    assert read.linearizable and read.value == b"2"
    await cluster.converged()


async def test_minority_side_gets_no_quorum_fast_majority_keeps_committing(cluster: Cluster) -> None:
    await cluster.start_all()
    old = await cluster.leader()
    rest = [n for n in IDS if n != old.node_id]
    cluster.net.partition([old.node_id], rest)

    async def lost_quorum() -> None:
        while old.status().has_quorum:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(lost_quorum(), WAIT_S)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoQuorum, match="NOT applied") as info:
        await old.propose(c.KvPut("side", b"minority"))
    elapsed_ms = (loop.time() - started) * 1000
    print(f"NoQuorum after {elapsed_ms:.0f} ms (bound {cluster.config.no_quorum_timeout_ms} ms)")
    assert info.value.waited_ms <= cluster.config.no_quorum_timeout_ms + 500  # raised by the bound, not a timeout
    # Once quorum has been missing for the whole bound, further proposals fail without waiting it again.
    with pytest.raises(NoQuorum) as again:
        await old.propose(c.KvPut("side", b"minority"))
    print(f"second NoQuorum after {again.value.waited_ms} ms")
    assert again.value.waited_ms < cluster.config.no_quorum_timeout_ms
    new = await cluster.leader(among=rest)
    assert (await new.propose(c.KvPut("side", b"majority"))).ok

    cluster.net.heal()
    await cluster.leader()
    await cluster.converged()
    assert old.state.query(c.KvGet("side")) == b"majority"  # the minority write never happened


async def test_restarted_voter_recovers_from_files_and_catches_up(tmp_path: Path) -> None:
    cl = Cluster(tmp_path, config=RaftConfig(log_compaction_min_entries=8))
    try:
        await cl.start_all()
        leader = await cl.leader()
        victim = next(n for n in IDS if n != leader.node_id)
        for i in range(30):
            assert (await leader.propose(c.KvPut(f"k{i}", b"before"))).ok
        await cl.converged()
        await asyncio.sleep(1.2)  # pysyncobj persists the commit index once a second
        assert (tmp_path / victim / "raft.dump").exists() and (tmp_path / victim / "raft.journal").exists()
        await cl.stop(victim)

        for i in range(30):
            assert (await leader.propose(c.KvPut(f"k{i}", b"after"))).ok

        # Restart cut off from everyone: the state must come back from its own files.
        cl.net.partition([victim], [n for n in IDS if n != victim])
        restarted = await cl.start(victim)

        async def recovered() -> None:
            while restarted.state.query(c.KvGet("k29")) != b"before":
                await asyncio.sleep(0.01)

        await asyncio.wait_for(recovered(), WAIT_S)
        cl.net.heal()
        await cl.leader()
        await cl.converged()
        assert restarted.state.query(c.KvGet("k29")) == b"after"
        assert restarted.stats.frames_rejected == 0
        # The others compacted their logs past the restarted voter's end, so it caught up by snapshot.
        assert restarted.stats.snapshot_chunks_received > 0
    finally:
        await cl.close()


async def test_concurrent_name_claims_exactly_one_wins(cluster: Cluster) -> None:
    await cluster.start_all()
    await cluster.leader()
    for round_ in range(5):
        name = f"planner-{round_}"
        results = await asyncio.gather(*(
            g.propose(c.ClaimName(name, f"agent-{n}", 60_000)) for n, g in cluster.groups.items()
        ))
        winners = [r.lease.owner for r in results if r.ok]
        assert len(winners) == 1
        assert all(r.lease.owner == winners[0] for r in results)  # losers are told who holds it
    await cluster.converged()


async def test_garbage_and_pickles_from_peers_are_dropped_and_counted(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_all()
    leader = await cluster.leader()
    target = next(g for g in cluster.groups.values() if g is not leader)
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    intruder = cluster.net.link("mallory")  # authenticated by the node but not a voter
    voter_b = cluster.net.link(leader.node_id)  # frames "from" a voter: a compromised peer sending garbage
    intruder.send(target.node_id, b"whatever")
    for junk in (pickle.dumps(Boom()), b"\x00" * 10, b"\x93\x01\xa4nope\x80"):
        voter_b.send(target.node_id, junk)
    await asyncio.sleep(0.1)
    assert target.stats.frames_from_non_voters == 1
    assert target.stats.frames_rejected == 3
    assert not marker.exists()
    assert (await target.propose(c.Barrier())) > 0  # still working


async def test_stale_and_linearizable_reads_are_labelled(cluster: Cluster) -> None:
    await cluster.start_all()
    leader = await cluster.leader()
    await leader.propose(c.AdmitNode("n1"))
    await leader.propose(c.RevokeNode("n1"))
    follower = next(g for g in cluster.groups.values() if g is not leader)
    lin = await follower.read(c.IsRevoked("n1"))
    assert lin.value is True and lin.linearizable and not lin.stale
    stale = await follower.read(c.IsRevoked("n1"), linearizable=False)
    assert stale.stale and stale.value is True
    with pytest.raises(ValueError, match="propose"):
        await follower.read(c.KvPut("k", b""))
    status = leader.status()
    assert status.voters == ("a", "b", "c") and set(status.lag) == set(IDS)


async def test_add_and_remove_a_voter(tmp_path: Path) -> None:
    cl = Cluster(tmp_path)
    try:
        await cl.start_all()
        leader = await cl.leader()
        await leader.propose(c.KvPut("k", b"v"))
        newcomer = await cl.start("d", voters=["a", "b", "c", "d"])
        await leader.add_voter("d")
        await cl.converged()
        assert newcomer.state.query(c.KvGet("k")) == b"v"
        assert leader.status().voters == ("a", "b", "c", "d")
        await leader.remove_voter("d")
        await cl.stop("d")
        assert leader.status().voters == ("a", "b", "c")
        assert (await leader.propose(c.Barrier())) > 0
    finally:
        await cl.close()


async def test_misuse_errors_say_what_to_do(tmp_path: Path) -> None:
    net = MemoryRaftNetwork()
    with pytest.raises(ValueError, match="include this node"):
        PySyncObjGroup("x", ["a", "b"], net.link("x"), tmp_path)
    group = PySyncObjGroup("a", ["a", "b", "c"], net.link("a"), tmp_path)
    with pytest.raises(RuntimeError, match="start"):
        await group.propose(c.Barrier())
    with pytest.raises(ValueError, match="heartbeat"):
        RaftConfig(heartbeat_ms=200)
    with pytest.raises(ValueError, match="heartbeat_hold_ms"):
        RaftConfig(heartbeat_hold_ms=50)
    assert group.status().role == "stopped"


async def test_lost_commit_is_reported_as_unknown_outcome(tmp_path: Path) -> None:
    cl = Cluster(tmp_path, config=RaftConfig(commit_timeout_ms=300))
    try:
        await cl.start_all()
        leader = await cl.leader()
        cl.net.partition([leader.node_id], [n for n in IDS if n != leader.node_id])
        # Still within the quorum window: submitted, appended locally, never committed.
        with pytest.raises(ConsensusTimeout, match="may or may not"):
            await leader.propose(c.KvPut("k", b"lost?"))
        cl.net.heal()
        await cl.leader()
        await cl.converged()
    finally:
        await cl.close()


async def test_sequential_writes_cost_four_frames_and_followers_still_learn_the_commit(cluster: Cluster) -> None:
    await cluster.start_all()
    leader = await cluster.leader()
    await leader.propose(c.Barrier())
    await cluster.converged()
    before = cluster.net.frames_delivered
    writes = 50
    for i in range(writes):
        assert (await leader.propose(c.KvPut(f"s{i}", b"v"))).ok
    # Entries out to two followers and their two acknowledgements; pysyncobj's own commit notices
    # (and their acknowledgements) are replaced by the next write's entries instead of sent.
    frames = cluster.net.frames_delivered - before
    print(f"{frames / writes:.2f} frames per sequential commit")
    assert frames <= 4 * writes + 8  # + a few heartbeats that may fall due meanwhile
    assert leader.stats.messages_coalesced + leader.stats.commit_notices_replaced >= writes // 2
    await cluster.converged()  # the held notice of the last commit reaches the followers by itself
    for group in cluster.groups.values():
        assert group.state.query(c.KvGet(f"s{writes - 1}")) == b"v"


async def test_pipelined_writes_are_batched_into_few_frames(cluster: Cluster) -> None:
    await cluster.start_all()
    leader = await cluster.leader()
    await cluster.converged()
    before = cluster.net.frames_delivered
    writes = 200
    results = await asyncio.gather(*(leader.propose(c.KvPut(f"p{i}", b"v")) for i in range(writes)))
    assert all(r.ok for r in results)
    frames = cluster.net.frames_delivered - before
    print(f"{frames / writes:.2f} frames per pipelined commit")
    assert frames < 2 * writes
    await cluster.converged()


async def test_writes_forwarded_by_a_follower_never_wait_for_a_held_commit_notice(tmp_path: Path) -> None:
    # Hold heartbeats almost a whole heartbeat period: were the commit notice a forwarding follower
    # waits for held too, five forwarded writes would take >= 5 x 450 ms; the bound is 2 s.
    config = RaftConfig(heartbeat_ms=500, heartbeat_hold_ms=450, election_timeout_ms_min=1_600,
                        election_timeout_ms_max=2_000, leader_fallback_ms=2_000, quorum_window_ms=2_000,
                        no_quorum_timeout_ms=4_000)
    cl = Cluster(tmp_path, config=config)
    try:
        await cl.start_all()
        leader = await cl.leader()
        follower = next(g for g in cl.groups.values() if g is not leader)

        async def forwarded_writes() -> None:
            for i in range(5):
                assert (await follower.propose(c.KvPut(f"f{i}", b"v"))).ok

        await asyncio.wait_for(forwarded_writes(), 2.0)
        assert follower.state.query(c.KvGet("f4")) == b"v"
    finally:
        await cl.close()


async def test_a_proposal_alone_in_flight_leaves_without_waiting_a_loop_turn(cluster: Cluster) -> None:
    # decision 0036: with nothing else in flight the entries are sent from propose() itself
    await cluster.start_all()
    leader = await cluster.leader()
    await cluster.converged()
    sent = leader.stats.frames_sent
    task = asyncio.create_task(leader.propose(c.KvPut("alone", b"v")))
    await asyncio.sleep(0)  # the task has run up to its wait for the commit, nothing more
    assert leader.stats.frames_sent >= sent + 2  # already out to both followers
    assert (await asyncio.wait_for(task, 5)).ok


def _pipes() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_running_group_holds_no_wakeup_pipe(tmp_path: Path) -> None:
    # pysyncobj's pipe notifier (a write per proposal, a poll and a read per tick) is unplugged at start
    before = _pipes()
    cl = Cluster(tmp_path)
    try:
        await cl.start_all()
        leader = await cl.leader()
        assert (await leader.propose(c.KvPut("k", b"v"))).ok
        assert _pipes() == before
    finally:
        await cl.close()


async def test_a_proposal_queues_exactly_what_the_replicated_method_would(cluster: Cluster) -> None:
    # decision 0037: propose() builds the log command from the pickle template, not pickle.dumps
    await cluster.start_all()
    leader = await cluster.leader()
    replica = leader._syncobj
    queued: list[bytes] = []
    real = replica._applyCommand

    def capture(command: bytes, callback: object, command_type: int | None = None) -> None:
        queued.append(command if command_type is None else bytes([command_type]) + command)
        real(command, callback, command_type)

    replica._applyCommand = capture
    try:
        payload = c.encode_entry(c.KvPut("same", b"\x00\xff" * 40), 123)
        replica.apply_entry(payload, callback=lambda result, error: None)  # pysyncobj's own path
        assert queued[-1] == leader.cache.own_command(payload)
        assert (await leader.propose(c.KvPut("same", b"\x00\xff" * 40))).ok
        by_propose = queued[-1]
        assert pickle.loads(by_propose[1:])[1][0] == c.encode_entry(c.KvPut("same", b"\x00\xff" * 40),
                                                                     c.decode_entry(pickle.loads(by_propose[1:])[1][0])[1])
        assert leader.cache.to_wire(by_propose) == ["R", pickle.loads(by_propose[1:])[1][0]]
        # applying it skips the unpickling: the payload is known from the bytes
        assert leader.cache.own_payload(by_propose) == pickle.loads(by_propose[1:])[1][0]
        assert leader.cache.own_payload(b"\x00" + pickle.dumps((0, (b"never proposed",)), 2)) is None
    finally:
        replica._applyCommand = real
    await cluster.converged()


async def test_an_acknowledgement_commits_and_applies_without_a_whole_tick(cluster: Cluster) -> None:
    # decision 0037: the acknowledgement that completes a majority runs only the commit-and-apply
    # part of a tick; results, followers' state and the commit index are as with a whole tick
    await cluster.start_all()
    leader = await cluster.leader()
    await cluster.converged()
    steps, at_once = leader.stats.commit_steps, leader.stats.appended_at_once
    for i in range(20):
        assert (await leader.propose(c.KvCompareAndSet(f"k{i}", None, b"v"))).ok
    assert leader.stats.commit_steps >= steps + 20
    assert leader.stats.appended_at_once >= at_once + 20  # followers in step: appended and sent by the adapter
    assert not (await leader.propose(c.KvCompareAndSet("k0", None, b"again"))).ok  # applied exactly once, in order
    await cluster.converged()
    commit = leader.status().commit_index
    assert all(g.status().commit_index == commit for g in cluster.groups.values())


async def test_the_adapters_own_append_sends_what_pysyncobj_would(cluster: Cluster) -> None:
    # decision 0037: with every follower in step, propose() appends and sends the entry itself;
    # the messages match pysyncobj's own path for the next index, field for field
    await cluster.start_all()
    leader = await cluster.leader()
    await cluster.converged()
    transport = leader._transport
    sent: list[tuple[str, dict]] = []
    real = transport.send

    def capture(node, message):  # type: ignore[no-untyped-def]
        if message["type"] == "append_entries" and message.get("entries"):
            sent.append((node.id, dict(message)))
        return real(node, message)

    transport.send = capture
    try:
        assert (await leader.propose(c.KvPut("a", b"1"))).ok
        ours = sorted(sent, key=lambda m: m[0])
        sent.clear()
        leader._append_at_once = lambda command, callback: False  # pysyncobj's queue and __sendAppendEntries
        assert (await leader.propose(c.KvPut("a", b"2"))).ok
        theirs = sorted(sent, key=lambda m: m[0])
    finally:
        transport.send = real
        del leader._append_at_once
    followers = sorted(n for n in cluster.ids if n != leader.node_id)
    assert [v for v, _ in ours] == [v for v, _ in theirs] == followers
    for (_, a), (_, b) in zip(ours, theirs):
        assert set(a) == set(b)
        assert a["term"] == b["term"] and len(a["entries"]) == len(b["entries"]) == 1
        (cmd_a, idx_a, term_a), (cmd_b, idx_b, term_b) = a["entries"][0], b["entries"][0]
        assert idx_a == a["prevLogIdx"] + 1 and idx_b == b["prevLogIdx"] + 1 == idx_a + 1
        assert term_a == term_b == a["term"] and b["prevLogTerm"] == term_a
        assert b["commit_index"] >= idx_a  # the earlier write was committed before the second was sent
    assert leader.stats.appended_at_once >= 1
    await cluster.converged()

"""The deterministic stand-in: leaders per term, NoQuorum on the minority side, lagging replicas."""

from __future__ import annotations

import pytest

from agentnode.consensus import commands as c
from agentnode.consensus.base import ConsensusGroup, MembershipChangeRefused, NoQuorum, NotLeader
from agentnode.consensus.memory_group import MemoryCluster

VOTERS = ["a", "b", "c"]


def partition(*sides: set[str]):
    def reachable(x: str, y: str) -> bool:
        return any(x in s and y in s for s in sides)
    return reachable


async def test_memory_group_satisfies_the_protocol_and_commits() -> None:
    now = 1_000
    cluster = MemoryCluster(VOTERS)
    a = cluster.member("a", lambda: now)
    assert isinstance(a, ConsensusGroup)
    await a.start()
    result = await a.propose(c.ClaimName("planner", "agent-1", 5_000))
    assert result.ok
    b = cluster.member("b", lambda: now)
    refused = await b.propose(c.ClaimName("planner", "agent-2", 5_000))
    assert not refused.ok and refused.lease.owner == "agent-1"
    read = await b.read(c.LookupName("planner"), linearizable=False)
    assert read.stale and read.value.owner == "agent-1"
    assert len(set(cluster.digests().values())) == 1
    status = a.status()
    assert status.leader == "a" and status.has_quorum and status.voters == ("a", "b", "c")


async def test_minority_side_gets_no_quorum_and_nothing_applies() -> None:
    cluster = MemoryCluster(VOTERS, reachable=partition({"a"}, {"b", "c"}))
    a, b = cluster.member("a", lambda: 0), cluster.member("b", lambda: 0)
    with pytest.raises(NoQuorum, match="NOT applied"):
        await a.propose(c.KvPut("k", b"1"))
    assert cluster.commit_index == 0
    assert (await b.propose(c.KvPut("k", b"2"))).ok
    assert (await a.read(c.KvGet("k"), linearizable=False)).value is None  # stale, and labelled so
    cluster.set_reachable(None)
    cluster.sync()
    assert (await a.read(c.KvGet("k"), linearizable=False)).value == b"2"
    assert len(set(cluster.digests().values())) == 1


async def test_one_leader_per_term_across_partitions() -> None:
    cluster = MemoryCluster(["a", "b", "c", "d", "e"])
    members = {v: cluster.member(v, lambda: 0) for v in cluster.voters}
    layouts = [None, partition({"a", "b"}, {"c", "d", "e"}), partition({"a", "b", "c"}, {"d", "e"}), None]
    winners = []
    for layout in layouts:
        cluster.set_reachable(layout)
        for v, m in members.items():
            try:
                r = await m.propose(c.ClaimName("unique", v, 10**6))
            except NoQuorum:
                continue
            if r.ok and r.lease.owner == v:
                winners.append(v)
    assert set(winners) == {"a"}  # the name went to exactly one claimant across every partition
    terms = cluster.leaders_by_term
    assert sorted(terms) == list(range(1, cluster.term + 1))


async def test_forwarding_off_raises_not_leader_with_a_hint() -> None:
    cluster = MemoryCluster(VOTERS)
    await cluster.member("a", lambda: 0).propose(c.Barrier())
    b = cluster.member("b", lambda: 0, forward=False)
    with pytest.raises(NotLeader) as info:
        await b.propose(c.Barrier())
    assert info.value.leader == "a"


async def test_membership_changes_one_at_a_time() -> None:
    cluster = MemoryCluster(VOTERS)
    a = cluster.member("a", lambda: 0)
    await a.propose(c.KvPut("k", b"v"))
    await a.add_voter("d")
    assert cluster.voters == ("a", "b", "c", "d")
    assert cluster.replica("d").query(c.KvGet("k")) == b"v"
    with pytest.raises(MembershipChangeRefused, match="leader"):
        await a.remove_voter("a")
    await a.remove_voter("b")
    assert cluster.voters == ("a", "c", "d")

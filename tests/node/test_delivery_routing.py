"""Load balancing over agents with a capability, failover, and the live peer set."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentnode.delivery import Delivery, Incoming, NodeUnreachable
from agentnode.routing import Balancer, Candidate, HashRing, LivePeers, NoCandidate

AGENTS = [Candidate(f"agent-{i}", f"node-{i % 3}") for i in range(5)]


def test_round_robin_rotates_per_group_and_skips_excluded() -> None:
    b = Balancer()
    picks = [b.pick(list(reversed(AGENTS)), "round_robin", group="summarize").agent_id for _ in range(6)]
    assert picks == ["agent-0", "agent-1", "agent-2", "agent-3", "agent-4", "agent-0"]
    assert b.pick(AGENTS, "round_robin", group="other").agent_id == "agent-0"
    assert b.pick(AGENTS, "round_robin", group="x", exclude={"agent-0", "agent-1"}).agent_id == "agent-2"
    with pytest.raises(NoCandidate, match="no agent left"):
        b.pick(AGENTS, "round_robin", exclude={c.agent_id for c in AGENTS})
    with pytest.raises(ValueError, match="unknown strategy"):
        b.pick(AGENTS, "random")


def test_least_outstanding_prefers_idle_agents() -> None:
    b = Balancer()
    for a in ("agent-0", "agent-0", "agent-1", "agent-2", "agent-3"):
        b.started(a)
    assert b.pick(AGENTS, "least_outstanding").agent_id == "agent-4"
    b.started("agent-4")
    b.finished("agent-2")
    assert b.pick(AGENTS, "least_outstanding").agent_id == "agent-2"
    assert b.outstanding("agent-0") == 2


def test_latency_aware_measures_everyone_then_prefers_the_fastest() -> None:
    b = Balancer()
    first = {b.pick(AGENTS, "latency", group="g").agent_id for _ in range(5)}
    assert first == {c.agent_id for c in AGENTS}  # untried agents are tried first
    for c, ms in zip(AGENTS, (50, 10, 30, 40, 20)):
        b.started(c.agent_id)
        b.finished(c.agent_id, ms)
    assert b.pick(AGENTS, "latency").agent_id == "agent-1"
    b.started("agent-1")
    b.finished("agent-1", 110)  # EWMA: 10 + 0.3 * (110 - 10) = 40
    assert b.latency_ms("agent-1") == pytest.approx(40.0)
    assert b.pick(AGENTS, "latency").agent_id == "agent-4"
    assert b.pick(AGENTS, "latency", exclude={"agent-4"}).agent_id == "agent-2"


def test_consistent_hash_is_sticky_deterministic_and_moves_few_keys() -> None:
    b1, b2 = Balancer(), Balancer()
    keys = [f"conversation-{i}" for i in range(5_000)]
    owner = {k: b1.pick(AGENTS, "consistent_hash", key=k).agent_id for k in keys}
    assert owner == {k: b2.pick(list(reversed(AGENTS)), "consistent_hash", key=k).agent_id for k in keys}
    spread = Counter(owner.values())
    assert all(0.1 < n / len(keys) < 0.3 for n in spread.values()), spread
    fewer = [c for c in AGENTS if c.agent_id != "agent-2"]
    moved = [k for k in keys if b1.pick(fewer, "consistent_hash", key=k).agent_id != owner[k]]
    assert all(owner[k] == "agent-2" for k in moved) and len(moved) == spread["agent-2"]
    with pytest.raises(ValueError, match="needs a key"):
        b1.pick(AGENTS, "consistent_hash")


@given(st.text(max_size=20), st.sets(st.sampled_from([c.agent_id for c in AGENTS]), max_size=4))
def test_ring_failover_walks_to_another_agent(key: str, tried: set[str]) -> None:
    ring = HashRing([c.agent_id for c in AGENTS])
    nxt = ring.lookup(key, exclude=tried)
    assert nxt is not None and nxt not in tried
    assert ring.lookup(key, exclude={c.agent_id for c in AGENTS}) is None
    assert HashRing([]).lookup(key) is None


def test_live_peers_sampling_is_distinct_bounded_and_seeded() -> None:
    peers = LivePeers()
    for i in range(100):
        peers.add(f"n{i}", f"a{i}")
    peers.remove("n5")
    peers.set_suspect("n7", True)
    assert len(peers) == 99 and "n5" not in peers and peers.suspect("n7") and peers.address("n8") == "a8"
    s1 = peers.sample(10, random.Random(3), exclude=["n1"])
    assert s1 == peers.sample(10, random.Random(3), exclude=["n1"])
    assert len(set(s1)) == 10 and "n1" not in s1 and "n5" not in s1
    assert sorted(peers.sample(500, random.Random(1))) == peers.ids()
    assert peers.add("n7", "a7") is False and not peers.suspect("n7")


def test_failover_to_another_agent_with_the_capability() -> None:
    """The integration pattern: pick, send, and on NodeUnreachable pick again excluding the failed agent."""
    cores = {n: Delivery(n, cluster="t", epoch=1, rng=random.Random(n)) for n in ("node-0", "node-1", "node-2")}
    for a in cores:
        for b in cores:
            if a != b:
                cores[a].member_up(b, f"addr-{b}", 0)
    cores["node-2"].open_inbox("agent-2")
    src = cores["node-0"]
    src.member_down("node-1", 0)  # node-1 was declared dead; the registry may still list its agent
    candidates = [Candidate("agent-1", "node-1"), Candidate("agent-2", "node-2")]
    balancer, tried = Balancer(), set()
    choice = balancer.pick(candidates, "round_robin", group="work")
    while True:
        mid = src.send(choice.node_id, choice.agent_id, b"job", 0)
        failed = [e for e in iter(src.next_event, None) if isinstance(e, NodeUnreachable) and e.msg_id == mid]
        if not failed:
            break
        tried.add(choice.agent_id)
        choice = balancer.pick(candidates, "round_robin", group="work", exclude=tried)
    assert choice.agent_id == "agent-2" and tried == {"agent-1"}
    for out in src.messages_to_send():
        cores[out.peer_id].receive("node-0", out.frame, 1)
    got = [e for e in iter(cores["node-2"].next_event, None) if isinstance(e, Incoming)]
    assert [e.payload for e in got] == [b"job"]

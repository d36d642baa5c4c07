"""The replication core driven by hand: virtual time, a seeded in-process network, no sockets."""

from __future__ import annotations

import random

import pytest

from agentnode.crdt import CrdtUsageError, StateStore, StoreLimits
from agentnode.replication import (
    T_DELTAS,
    T_DIGEST,
    T_KEY_DIGESTS,
    T_REPAIR,
    Consistency,
    ConsistencyNotMet,
    ConsistencyUnavailable,
    KeyChanged,
    ReplicationConfig,
    Replicator,
)
from agentnode.state_benchmark import ReplicaNet


def _incr(net: ReplicaNet, node: str, key: str, n: int = 1) -> None:
    net.call(node, lambda c: c.update(key, "gcounter", "increment", (n,), net.now))


def _add(net: ReplicaNet, node: str, key: str, element: str) -> None:
    net.call(node, lambda c: c.update(key, "orset", "add", (element,), net.now))


def test_consistency_parsing_and_required_counts() -> None:
    assert Consistency.parse("local").required(5) == 1
    assert Consistency.parse("one").required(5) == 2
    assert Consistency.parse("one").required(1) == 1
    assert Consistency.parse(3).required(5) == 3
    assert Consistency.parse("n=4").required(3) == 3
    assert Consistency.parse("majority").required(5) == 3
    assert Consistency.parse("majority").required(4) == 3
    assert Consistency.parse("all").required(5) == 5
    assert Consistency.parse(1) == Consistency.parse("local")
    with pytest.raises(ConsistencyUnavailable, match="Raft group"):
        Consistency.parse("linearizable")
    with pytest.raises(ValueError, match="unknown consistency"):
        Consistency.parse("quorum")


def test_concurrent_writes_converge_through_deltas() -> None:
    net = ReplicaNet(3, seed=2)
    net.run(300)
    a, b, c = net.ids
    for i in range(20):
        _incr(net, a, "hits", 1)
        _incr(net, b, "hits", 2)
        _add(net, c, "claimed", f"task-{i}")
    assert net.run_until(net.now + 2_000, stop=net.converged)
    assert set(net.values("hits").values()) == {60}
    assert all(v == frozenset(f"task-{i}" for i in range(20)) for v in net.values("claimed").values())
    assert net.frames_by_type.get(T_DELTAS, 0) > 0


def test_causal_delivery_forwards_causes_before_effects() -> None:
    """b sees a's add only via c; c forwards a's delta before its own remove, so b never sees the remove first."""
    net = ReplicaNet(3, seed=3)
    net.run(300)
    a, b, c = net.ids
    net.partition([a, c], [b], detect_ms=0)
    net.run(50)
    _add(net, a, "s", "x")
    assert net.run_until(net.now + 1_000, stop=lambda: net.nodes[c].value("s") == frozenset({"x"}))
    net.call(c, lambda core: core.update("s", "orset", "remove", ("x",), net.now))
    net.call(c, lambda core: core.update("s", "orset", "add", ("y",), net.now))
    # Heal only c <-> b: a stays cut off from b, so b must learn a's add from c's log, in order.
    net.group[b] = net.group[c]
    net.group[a] = 9
    net.nodes[b].member_up(c, c, net.now)
    net.nodes[c].member_up(b, b, net.now)
    net._drain(b)
    net._drain(c)
    assert net.run_until(net.now + 2_000, stop=lambda: net.nodes[b].value("s") == frozenset({"y"}))
    assert net.nodes[b].counters["delta_gaps"] == 0


def test_partition_both_sides_write_and_converge_after_heal() -> None:
    net = ReplicaNet(5, seed=4)
    net.run(300)
    left, right = net.ids[:2], net.ids[2:]
    net.partition(left, right, detect_ms=100)
    net.run(200)
    for i in range(30):
        _incr(net, left[i % 2], "jobs", 1)
        _incr(net, right[i % 3], "jobs", 1)
        _add(net, left[0], "board", f"L{i}")
        _add(net, right[0], "board", f"R{i}")
    net.run(1_000)
    assert net.converged(left) and net.converged(right) and not net.converged()
    assert net.nodes[left[0]].value("jobs") == 30
    net.heal(detect_ms=50)
    assert net.run_until(net.now + 3_000, stop=net.converged)
    assert set(net.values("jobs").values()) == {60}
    assert all(len(v) == 60 for v in net.values("board").values())


def test_new_node_is_synchronised_by_digests_not_by_log_replay() -> None:
    net = ReplicaNet(3, seed=5, connect=False)
    a, b, c = net.ids
    for x, y in ((a, b), (b, a)):
        net.nodes[x].member_up(y, y, net.now)
    for i in range(300):
        _incr(net, a, f"k{i}", 1)
    assert net.run_until(net.now + 2_000, stop=lambda: net.converged([a, b]))
    for x in (a, b):
        net.nodes[x].member_up(c, c, net.now)
        net.nodes[c].member_up(x, x, net.now)
        net._drain(x)
    net._drain(c)
    assert net.run_until(net.now + 2_000, stop=net.converged)
    assert net.nodes[c].value("k299") == 1
    assert net.nodes[c].counters["states_repaired"] == 300
    # the newcomer got states, not 300 logged deltas (a few empty batches are fine)
    assert net.nodes[a].counters["deltas_sent"] + net.nodes[b].counters["deltas_sent"] < 300 + 10
    assert net.frames_by_type[T_REPAIR] >= 1


def test_far_behind_peer_is_repaired_by_digest_exchange_only_for_changed_keys() -> None:
    config = ReplicationConfig(backlog_deltas_max=5)
    net = ReplicaNet(2, seed=6, config=config)
    a, b = net.ids
    for i in range(500):
        _add(net, a, f"key{i}", "v")
    assert net.run_until(net.now + 5_000, stop=net.converged)
    net.partition([a], [b], detect_ms=10)
    net.run(50)
    for i in range(0, 500, 50):
        _add(net, a, f"key{i}", "w")
    _add(net, b, "key7", "from-b")
    net.run(100)
    repaired_before = net.nodes[b].counters["states_repaired"]
    net.heal()
    assert net.run_until(net.now + 3_000, stop=net.converged)
    assert net.nodes[b].value("key0") == frozenset({"v", "w"})
    assert net.nodes[a].value("key7") == frozenset({"v", "from-b"})
    assert net.nodes[b].counters["states_repaired"] - repaired_before == 10
    assert net.nodes[a].counters["syncs_started"] >= 2


def test_lossy_network_still_converges() -> None:
    net = ReplicaNet(4, seed=7, loss=0.2)
    net.run(1_000)
    for i in range(40):
        _incr(net, net.ids[i % 4], f"c{i % 5}", 1)
        net.run(7)
    assert net.run_until(net.now + 20_000, stop=net.converged)
    assert sum(net.nodes[net.ids[0]].value(f"c{j}") for j in range(5)) == 40


def test_majority_write_succeeds_with_acks_and_fails_fast_when_majority_unreachable() -> None:
    net = ReplicaNet(3, seed=8)
    net.run(300)
    a, b, c = net.ids
    rid = net.call(a, lambda core: core.update("cfg", "lwwregister", "assign", ("v1", 1), net.now, "majority"))
    assert rid is not None
    net.run(100)
    done = net.done[(a, rid)]
    assert done.error is None and done.acks >= 2 and done.required == 2
    net.partition([a], [b, c], detect_ms=0)
    net.run(10)
    with pytest.raises(ConsistencyNotMet, match="needs 2 of 3 replicas but only 1 is reachable") as info:
        net.call(a, lambda core: core.update("cfg", "lwwregister", "assign", ("v2", 2), net.now, "majority"))
    assert info.value.required == 2
    assert net.nodes[a].value("cfg") == "v2"  # applied locally, spreads on heal
    # the majority side can still write at majority
    rid = net.call(b, lambda core: core.update("cfg2", "gcounter", "increment", (1,), net.now, "majority"))
    net.run(100)
    assert net.done[(b, rid)].error is None
    net.heal()
    assert net.run_until(net.now + 3_000, stop=net.converged)
    assert set(net.values("cfg").values()) == {"v2"}


def test_write_times_out_when_peers_do_not_answer() -> None:
    net = ReplicaNet(3, seed=9)
    net.run(300)
    a, b, c = net.ids
    net.partition([a], [b, c], detect_ms=10_000)  # membership has not noticed yet
    rid = net.call(a, lambda core: core.update("x", "gcounter", "increment", (1,), net.now, "all", 500))
    net.run(600)
    done = net.done[(a, rid)]
    assert done.error is not None and "timed out" in done.error and done.acks == 1 and done.required == 3


def test_read_majority_merges_remote_state() -> None:
    config = ReplicationConfig(delta_interval_ms=5_000, digest_interval_ms=60_000)
    net = ReplicaNet(3, seed=10, config=config)
    net.run(300)
    a, b, c = net.ids
    _incr(net, b, "n", 5)  # sits in b's batch window, not yet at a
    assert net.nodes[a].value("n") is None
    rid = net.call(a, lambda core: core.read("n", net.now, "majority"))
    net.run(50)
    done = net.done[(a, rid)]
    assert done.error is None and done.replies >= 2
    assert net.nodes[a].value("n") == 5
    assert net.call(a, lambda core: core.read("n", net.now, "local")) is None


def test_restart_with_restored_store_resumes_and_converges() -> None:
    net = ReplicaNet(3, seed=12)
    net.run(300)
    a, b, c = net.ids
    for i in range(10):
        _incr(net, a, "k", 1)
    assert net.run_until(net.now + 1_000, stop=net.converged)
    saved = net.nodes[c].store
    net.crash(c)
    for i in range(5):
        _incr(net, a, "k", 1)
    net.run(100)
    restored = StateStore(c)
    from agentnode.crdt.store import Repair

    for key, state in saved.state_for(saved.keys()).items():
        restored.apply_state(key, state)
    restored.apply_repair(Repair((), saved.seen(), True))
    net.restart(c, restored)
    assert net.run_until(net.now + 3_000, stop=net.converged)
    assert net.nodes[c].value("k") == 15
    net.call(c, lambda core: core.update("k", "gcounter", "increment", (1,), net.now))
    assert net.run_until(net.now + 1_000, stop=lambda: net.converged() and net.nodes[a].value("k") == 16)


def test_delete_wins_and_tombstones_are_collected_once_stable() -> None:
    config = ReplicationConfig(gc_interval_ms=200)
    net = ReplicaNet(3, seed=13, config=config)
    net.run(300)
    a, b, c = net.ids
    _add(net, a, "tmp", "x")
    assert net.run_until(net.now + 1_000, stop=net.converged)
    net.call(b, lambda core: core.delete("tmp", net.now))
    assert net.run_until(net.now + 1_000, stop=lambda: all(n.store.type_of("tmp") == "tombstone" for n in net.nodes.values()))
    assert net.run_until(net.now + 10_000, stop=lambda: all(n.store.type_of("tmp") is None for n in net.nodes.values()))
    assert net.converged()
    assert sum(n.counters["tombstones_collected"] for n in net.nodes.values()) == 3


def test_failed_member_holds_tombstone_collection_back_until_it_left() -> None:
    config = ReplicationConfig(gc_interval_ms=100)
    net = ReplicaNet(3, seed=14, config=config)
    net.run(300)
    a, b, c = net.ids
    _add(net, a, "tmp", "x")
    assert net.run_until(net.now + 1_000, stop=net.converged)
    net.crash(c)
    net.call(a, lambda core: core.delete("tmp", net.now))
    net.run(2_000)
    assert net.nodes[a].store.type_of("tmp") == "tombstone"
    for x in (a, b):
        net.nodes[x].member_down(c, net.now, left=True)
    net.run(2_000)
    assert net.nodes[a].store.type_of("tmp") is None
    assert net.nodes[a].roster() == {a: True, b: True}


def test_garbage_and_foreign_frames_are_counted_not_raised() -> None:
    core = Replicator(StateStore("me"), cluster="c1", epoch=0, rng=random.Random(1))
    core.member_up("peer", "peer:1", 0)
    rng = random.Random(3)
    frames: list[object] = [None, [], [1], [1, "c1"], [2, "c1", 64], [1, "other", 64], [1, "c1", 99], [1, "c1", 64, 0]]
    for kind in range(64, 73):
        for _ in range(40):
            frames.append([1, "c1", kind, *[rng.choice([0, -1, 2**70, "x", b"\0" * 16, [], [1, 2], None, True, {"a": 1}])
                                            for _ in range(rng.randrange(0, 7))]])
    frames.append([1, "c1", T_DELTAS, 0, 0, 1, 0, [1, [1, 2, 3, 4]]])
    frames.append([1, "c1", T_DIGEST, 1, 128, [b"x"] * 128, ["a", 0]])
    frames.append([1, "c1", T_DIGEST, 1, 100, [b"x"] * 100, []])
    frames.append([1, "c1", T_KEY_DIGESTS, 1, 64, [999], [], False])
    for frame in frames:
        core.receive("peer", frame, 10)
        core.receive("stranger", frame, 10)
    dropped = sum(v for k, v in core.counters.items() if k.startswith("dropped") or k == "bucket_mismatch")
    assert dropped >= len(frames)
    assert core.store.keys() == []


def test_local_misuse_raises_usage_errors_and_changes_nothing() -> None:
    core = Replicator(StateStore("me", StoreLimits(value_bytes_max=2048)), cluster="c1", epoch=0, rng=random.Random(1))
    core.update("k", "gcounter", "increment", (1,), 0)
    with pytest.raises(CrdtUsageError, match="holds a gcounter"):
        core.update("k", "orset", "add", ("x",), 0)
    with pytest.raises(CrdtUsageError, match="unknown CRDT type"):
        core.update("k2", "nope", "x", (), 0)
    with pytest.raises(Exception, match="value_bytes_max"):
        core.update("big", "lwwregister", "assign", ("x" * 5000, 1), 0)
    assert core.value("big") is None and core.value("k") == 1
    events = []
    while (e := core.next_event()) is not None:
        events.append(e)
    assert events == [KeyChanged("k", "local")]


def test_same_seed_replays_the_same_traffic() -> None:
    def run() -> tuple[dict[int, int], bytes]:
        net = ReplicaNet(4, seed=21, loss=0.05)
        net.run(500)
        for i in range(30):
            _add(net, net.ids[i % 4], f"s{i % 3}", f"e{i}")
            net.run(3)
        net.run_until(net.now + 5_000, stop=net.converged)
        return dict(net.bytes_by_type), net.node(0).root_digest()

    assert run() == run()


def test_digest_round_costs_a_fixed_summary_when_replicas_agree() -> None:
    net = ReplicaNet(2, seed=22)
    a, b = net.ids
    for i in range(2_000):
        net.nodes[a].update(f"k{i}", "gcounter", "increment", (1,), 0)
    net._drain(a)
    assert net.run_until(net.now + 5_000, stop=net.converged)
    net.run(1_000)  # let in-flight rounds end
    before_digest, before_keys = net.bytes_by_type.get(T_DIGEST, 0), net.bytes_by_type.get(T_KEY_DIGESTS, 0)
    rounds_before = net.nodes[a].counters["rounds_started"] + net.nodes[b].counters["rounds_started"]
    net.run(10_000)
    rounds = net.nodes[a].counters["rounds_started"] + net.nodes[b].counters["rounds_started"] - rounds_before
    assert rounds >= 5
    per_round = (net.bytes_by_type[T_DIGEST] - before_digest) / rounds
    assert per_round < 256 * 10 + 200  # 256 bucket digests of 8 bytes for 2,000 keys
    assert (net.bytes_by_type[T_KEY_DIGESTS] - before_keys) / rounds < 20  # empty answers

"""Folding a removed replica's entries (decision 0024): per-type fold/strip and the store's prune markers.

Properties: folding keeps the value and forgets the removed replica; a replica that has not folded
yet neither double counts nor resurrects when it meets the folded state; replicas converge under
reordered, duplicated and lost deltas with a prune in the middle, once anti-entropy has run.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentnode.crdt.values import INT_MAX
from agentnode.crdt import (
    CodecError,
    CrdtUsageError,
    Delta,
    GCounter,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    PruneMarker,
    Repair,
    StateStore,
    VectorClock,
)


def _laws() -> Any:
    """The history strategies of test_crdt_laws.py (import mode is importlib: load it by path)."""
    spec = importlib.util.spec_from_file_location("_crdt_laws_for_pruning", Path(__file__).with_name("test_crdt_laws.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TYPES, histories = _laws().TYPES, _laws().histories

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REMOVED, OWNER = "r2", "r0"
CAUSAL_OR_COUNTER = sorted(t for t in TYPES if t not in ("lwwregister", "lwwmap"))


def same(v: Any) -> Any:
    """A value with MVRegister siblings as a multiset: they are ordered by dot, and a fold re-tags dots."""
    if isinstance(v, tuple):
        return tuple(sorted((same(x) for x in v), key=repr))
    if isinstance(v, dict):
        return {k: same(x) for k, x in v.items()}
    return v


def full_join(states: list[Any]) -> Any:
    out = states[0].copy()
    for s in states[1:]:
        out.merge(s)
    return out


# --- per type ---


@SETTINGS
@given(st.sampled_from(CAUSAL_OR_COUNTER).flatmap(lambda t: histories(t, 16)))
def test_fold_keeps_the_value_and_forgets_the_removed_replica(history: tuple[list[Any], list[Any]]) -> None:
    states, _ = history
    owner = full_join(states)  # the owner has every operation of the removed replica (causal stability)
    before = same(owner.value())
    owner.fold(REMOVED, OWNER)
    assert same(owner.value()) == before
    assert not owner.mentions(REMOVED)


@SETTINGS
@given(st.sampled_from(CAUSAL_OR_COUNTER).flatmap(lambda t: histories(t, 16)))
def test_strip_then_join_with_a_replica_that_has_not_folded(history: tuple[list[Any], list[Any]]) -> None:
    """The receiver's rule: strip the removed replica from both sides, join the owner's folded state."""
    states, _ = history
    owner = full_join(states)
    expected = same(owner.value())
    owner.fold(REMOVED, OWNER)
    for other in states:  # any replica: it saw some of the removed replica's work, or all of it
        mine = other.copy()
        mine.strip(REMOVED)
        mine.merge(owner)
        assert same(mine.value()) == expected
        assert not mine.mentions(REMOVED)
        back = owner.copy()
        theirs = other.copy()
        theirs.strip(REMOVED)
        back.merge(theirs)
        assert back == mine  # the join commutes after stripping


def test_counter_fold_adds_the_slot_to_the_owner() -> None:
    c = PNCounter()
    c.increment("a", 5)
    c.decrement("a", 2)
    c.increment("o", 1)
    c.fold("a", "o")
    assert c.value() == 4
    assert c.increments.slots() == [("o", 6)] and c.decrements.slots() == [("o", 2)]
    g = GCounter()
    g.increment("a", INT_MAX - 2)
    g.increment("o", 5)
    with pytest.raises(CrdtUsageError):
        g.fold("a", "o")
    assert g.slots() == [("a", INT_MAX - 2), ("o", 5)]  # unchanged


def test_orset_fold_keeps_concurrent_add_semantics() -> None:
    s = ORSet()
    s.add("a", "x")
    s.add("o", "y")
    s.add("a", "y")
    s.remove("y")
    s.add("a", "z")
    s.fold("a", "o")
    assert s.elements() == ["x", "z"]  # the removed "y" stays removed, live elements stay
    assert not s.mentions("a")


def test_mvregister_fold_keeps_siblings() -> None:
    a, b = MVRegister(), MVRegister()
    a.write("a", 1)
    b.write("b", 2)
    a.merge(b)
    a.fold("a", "b")
    assert sorted(a.value()) == [1, 2] and not a.mentions("a")


def test_lww_keeps_the_writer_as_tie_break() -> None:
    r = LWWRegister()
    r.assign("a", "v", 3)
    r.fold("a", "o")
    assert r.writer == "a" and not r.mentions("a")  # a fixed-size tie-break, not per-replica garbage


def test_ormap_fold_reaches_nested_values() -> None:
    m = ORMap()
    m.update("a", "k", "ormap", lambda n: n.update("a", "x", "orset", lambda s: s.add("a", 1)))
    m.update("a", "j", "mvregister", lambda r: r.write("a", "v"))
    value = m.value()
    m.fold("a", "o")
    assert m.value() == value and not m.mentions("a")


# --- the store ---


def stores(*names: str) -> list[StateStore]:
    return [StateStore(n) for n in names]


def test_store_prune_ships_the_folded_state_with_a_marker() -> None:
    a, b, o = stores("a", "b", "o")
    deltas = [a.update("c", "gcounter", "increment", 5), b.update("c", "gcounter", "increment", 2),
              a.update("s", "orset", "add", "x"), o.update("c", "gcounter", "increment", 1)]
    for s in (a, b, o):
        for d in deltas:
            s.apply_delta(d)
    stale_b = b.state_for(["c"])["c"]
    p = o.prune("c", "a")
    assert p is not None and p.pruned == (PruneMarker("a", "o", p.dot.counter),)
    assert o.value("c") == 8 and o.keys_mentioning("a") == ["s"]
    assert o.prune("c", "a") is None  # nothing left to fold
    o.apply_state("c", stale_b)  # a replica that has not folded: stripped, no double count
    assert o.value("c") == 8
    assert b.apply_delta(Delta.from_wire(p.to_wire()))
    assert b.value("c") == 8 and not b.state_for(["c"])["c"].mentions("a")
    assert b.retired() == ["a"] and b.markers("c") == p.pruned
    with pytest.raises(CrdtUsageError):
        o.prune("c", "o")


def test_markers_are_collected_once_every_member_saw_the_fold() -> None:
    a, b, o = stores("a", "b", "o")
    d = a.update("c", "gcounter", "increment", 1)
    for s in (b, o):
        s.apply_delta(d)
    p = o.prune("c", "a")
    assert p is not None
    assert o.collect_markers({"b": b.seen()}) == []  # b has not seen the fold yet
    b.apply_delta(p)
    assert o.collect_markers({"b": b.seen()}) == ["c"]
    assert o.markers("c") == () and o.stats.markers_collected == 1
    assert b.collect_markers({"o": o.seen()}) == ["c"]
    assert o.digest() == b.digest()


def test_markers_travel_in_repairs_and_digests_differ_by_marker() -> None:
    a, b, o = stores("a", "b", "o")
    d = a.update("c", "pncounter", "increment", 4)
    for s in (b, o):
        s.apply_delta(d)
    o.prune("c", "a")
    assert o.digest()["c"] != b.digest()["c"]
    repair = o.repair_for(b.digest())
    assert repair.markers_of("c")
    decoded = Repair.from_wire(repair.to_wire())
    assert decoded.pruned == repair.pruned
    b.apply_repair(decoded)
    assert b.value("c") == 4 and b.digest() == o.digest()


def test_bad_markers_are_codec_errors() -> None:
    d = Delta("k", StateStore("o").update("k", "gcounter", "increment").dot, GCounter())
    wire = d.to_wire()
    for marks in (["a", "a", 1], ["a", "o"], ["a", "o", 0], [1, "o", 1], ["a", "o", 1, "a", "p", 2], "x"):
        with pytest.raises(CodecError):
            Delta.from_wire([*wire, marks])


def test_a_tombstone_drops_the_markers() -> None:
    a, o = stores("a", "o")
    o.apply_delta(a.update("c", "gcounter", "increment"))
    o.prune("c", "a")
    o.delete("c")
    assert o.markers("c") == () and o.marker_count() == 0


# --- convergence with a prune in the middle ---

KEYS = {"c": "gcounter", "p": "pncounter", "s": "orset", "m": "ormap", "v": "mvregister"}


def random_op(store: StateStore, rng: random.Random) -> Delta | None:
    key = rng.choice(sorted(KEYS))
    t = KEYS[key]
    try:
        if t == "gcounter":
            return store.update(key, t, "increment", rng.randint(1, 3))
        if t == "pncounter":
            return store.update(key, t, rng.choice(["increment", "decrement"]), rng.randint(1, 3))
        if t == "orset":
            return store.update(key, t, rng.choice(["add", "add", "remove"]), rng.choice("xyz"))
        if t == "mvregister":
            return store.update(key, t, "write", rng.randint(0, 9))
        sub = rng.choice("fg")
        if rng.random() < 0.2:
            return store.update(key, t, "remove", sub)
        return store.update(key, t, "update", sub, "orset", "add", rng.choice("xy"))
    except CrdtUsageError:
        return None


def counters(store: StateStore) -> tuple[Any, Any]:
    return store.value("c", 0), store.value("p", 0)


def amounts(delta: Delta, store: StateStore, before: tuple[Any, Any]) -> tuple[int, int]:
    """What a local write added to the counters (a counter delta carries its slot's total, which
    after a fold includes the removed replica's count, so a reference replica cannot just join them)."""
    after = counters(store)
    return after[0] - before[0], after[1] - before[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(0, 30), st.integers(0, 30))
def test_replicas_converge_with_a_prune_in_the_middle(seed: int, before: int, after: int) -> None:
    """Random writes on r (the replica that leaves) and a, b, o; lossy, reordered, duplicated delta
    delivery; r leaves; o (the owner) has all of r's events and folds every key; more lossy traffic;
    then anti-entropy. Everyone converges, counters equal the sum of every write, nobody
    mentions r, and markers are collected."""
    rng = random.Random(seed)
    r, a, b, o = stores("r", "a", "b", "o")
    members = [a, b, o]
    expected = [0, 0]
    log: list[Delta] = []

    def write(store: StateStore) -> None:
        before = counters(store)
        d = random_op(store, rng)
        if d is not None:
            log.append(d)
            added = amounts(d, store, before)
            expected[0] += added[0]
            expected[1] += added[1]

    def deliver(n: int) -> None:
        for _ in range(n):
            if log and rng.random() < 0.8:
                d = rng.choice(log)  # any order, duplicates
                rng.choice(members).apply_delta(d)

    for _ in range(before):
        write(rng.choice([r, a, b, o]))
        deliver(2)
    for d in log:
        if d.dot.replica == "r":
            o.apply_delta(d)  # stability at the owner: it holds every event of r anyone holds
    o.retire("r")
    for key in o.keys_mentioning("r"):
        p = o.prune(key, "r")
        assert p is not None
        log.append(p)
    assert not o.keys_mentioning("r")
    for _ in range(after):
        write(rng.choice(members))
        deliver(2)
    for _ in range(3):  # anti-entropy: full digest repairs, every ordered pair
        for x in members:
            for y in members:
                if x is not y:
                    y.apply_repair(x.repair_for(y.digest()))
    assert a.digest() == b.digest() == o.digest()
    assert counters(a) == counters(b) == counters(o) == tuple(expected)
    for s in members:
        assert not s.keys_mentioning("r")
    seen = {s.replica_id: s.seen() for s in members}
    for s in members:
        s.collect_markers({k: v for k, v in seen.items() if k != s.replica_id})
        assert s.marker_count() == 0
    assert a.digest() == b.digest() == o.digest()
    assert VectorClock(a.seen().to_dict()).covers(VectorClock({}))

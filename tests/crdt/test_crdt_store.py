"""StateStore: local writes, delta propagation, digest repair, limits and tombstone collection."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentnode.crdt import (
    CrdtUsageError,
    Delta,
    LimitExceededError,
    Repair,
    StateStore,
    StoreLimits,
    VectorClock,
)


def wire(value: Any) -> Any:
    """What a peer's message looks like after msgpack."""
    return msgpack.unpackb(msgpack.packb(value))


def ship(src: StateStore, dst: StateStore, acked: int) -> int:
    """Send src's deltas after `acked` to dst over msgpack; return the new acked seq."""
    batch = src.deltas_since(acked)
    assert batch is not None
    for seq, delta in batch:
        dst.apply_delta(Delta.from_wire(wire(delta.to_wire())))
        acked = seq
    return acked


def push_pull(a: StateStore, b: StateStore) -> None:
    """One digest exchange: bucket digests, then key digests of differing buckets, then repairs."""
    differing = [i for i, (x, y) in enumerate(zip(a.bucket_digests(), b.bucket_digests())) if x != y]
    if not differing:
        return
    a_keys, b_keys = a.keys_in_buckets(differing), b.keys_in_buckets(differing)
    a_dig, b_dig = a.digest(a_keys), b.digest(b_keys)
    b.apply_repair(Repair.from_wire(wire(a.repair_for(b_dig, within=a_keys).to_wire())))
    a.apply_repair(Repair.from_wire(wire(b.repair_for(a_dig, within=b_keys).to_wire())))


def full_push_pull(a: StateStore, b: StateStore) -> None:
    """A complete exchange (whole-store digests), so seen vectors are adopted too."""
    a_dig, b_dig = a.digest(), b.digest()
    b.apply_repair(Repair.from_wire(wire(a.repair_for(b_dig).to_wire())))
    a.apply_repair(Repair.from_wire(wire(b.repair_for(a_dig).to_wire())))


def test_update_get_value_and_usage_errors() -> None:
    s = StateStore("a")
    s.update("hits", "gcounter", "increment", 2)
    s.update("hits", "gcounter", "increment")
    s.update("tags", "orset", "add", "x")
    assert s.value("hits") == 3 and s.value("tags") == {"x"} and s.value("nope", 0) == 0
    assert s.keys() == ["hits", "tags"] and s.type_of("hits") == "gcounter"
    copy = s.get("tags")
    assert copy is not None
    copy.add("a", "y")  # type: ignore[attr-defined]
    assert s.value("tags") == {"x"}  # get returns a copy
    with pytest.raises(CrdtUsageError, match="holds a gcounter"):
        s.update("hits", "orset", "add", "x")
    with pytest.raises(CrdtUsageError, match="unknown CRDT type"):
        s.update("k", "nope", "add")
    with pytest.raises(CrdtUsageError, match="no operation"):
        s.update("k", "orset", "nope")
    assert "k" not in s.keys()  # a failed first write leaves nothing behind
    with pytest.raises(CrdtUsageError):
        s.update("", "orset", "add", "x")


def test_deltas_travel_transitively_and_duplicates_are_dropped() -> None:
    a, b, c = StateStore("a"), StateStore("b"), StateStore("c")
    a.update("set", "orset", "add", "x")
    b.update("set", "orset", "add", "y")
    ship(a, b, 0)
    ship(b, c, 0)  # c learns a's delta through b
    assert c.value("set") == {"x", "y"}
    before = c.stats.duplicates_dropped
    ship(a, c, 0)  # the same delta again, directly
    assert c.stats.duplicates_dropped == before + 1
    assert a.seen() == VectorClock({"a": 1}) and c.seen() == VectorClock({"a": 1, "b": 1})


def test_log_is_bounded_and_a_gap_asks_for_repair() -> None:
    a = StateStore("a", StoreLimits(log_entries_max=3))
    for i in range(5):
        a.update("n", "gcounter", "increment")
    assert a.last_seq == 5
    assert [seq for seq, _ in a.deltas_since(2) or []] == [3, 4, 5]
    assert a.deltas_since(1) is None  # seq 2 fell out of the log
    assert a.deltas_since(5) == []
    assert [seq for seq, _ in a.deltas_since(2, max_count=2) or []] == [3, 4]


def test_digest_repair_heals_a_partition() -> None:
    a, b = StateStore("a"), StateStore("b")
    for i in range(20):
        a.update(f"k{i}", "gcounter", "increment", i + 1)
    full_push_pull(a, b)
    assert a.root_digest() == b.root_digest()
    # partition: both sides write, no deltas delivered
    a.update("k3", "gcounter", "increment")
    b.update("k4", "gcounter", "increment")
    b.update("new", "lwwregister", "assign", "v", 5)
    a.delete("k5")
    assert a.root_digest() != b.root_digest()
    assert a.differing_keys(b.digest()) == ["k3", "k4", "k5", "new"]
    push_pull(a, b)
    assert a.root_digest() == b.root_digest()
    assert a.value("k3") == b.value("k3") == 5 and b.value("new") == "v" and b.type_of("k5") == "tombstone"


def test_complete_repair_adopts_the_seen_vector() -> None:
    a, b = StateStore("a"), StateStore("b")
    a.update("x", "orset", "add", 1)
    a.update("y", "orset", "add", 2)
    push_pull(a, b)  # bucket-limited: not complete
    assert b.seen() == VectorClock()
    full_push_pull(a, b)
    assert b.seen() == VectorClock({"a": 2})
    assert b.deltas_since(0) == []  # repairs are not logged for forwarding


def test_limits_refuse_without_changing_anything() -> None:
    s = StateStore("a", StoreLimits(keys_max=2, value_bytes_max=400))
    s.update("a", "orset", "add", "x")
    s.update("b", "orset", "add", "y")
    with pytest.raises(LimitExceededError) as err:
        s.update("c", "orset", "add", "z")
    assert err.value.limit == "keys_max"
    with pytest.raises(LimitExceededError) as err:
        s.update("a", "orset", "add", "y" * 500)
    assert err.value.limit == "value_bytes_max"
    assert s.value("a") == {"x"}
    for i in range(100):
        try:
            s.update("a", "orset", "add", f"e{i}")
        except LimitExceededError:
            break
    else:
        raise AssertionError("value_bytes_max never hit")
    held = s.value("a")
    digest = s.digest(["a"])
    with pytest.raises(LimitExceededError):
        s.update("a", "orset", "add", "one-more-element")
    assert s.value("a") == held and s.digest(["a"]) == digest
    # a remote delta over the limit is refused too, and its dot stays unseen
    big = StateStore("z")
    delta = big.update("a", "orset", "add", "q" * 1000)
    with pytest.raises(LimitExceededError):
        s.apply_delta(delta)
    assert s.seen().get("z") == 0


def test_concurrent_creation_with_different_types_converges() -> None:
    a, b = StateStore("a"), StateStore("b")
    a.update("k", "gcounter", "increment")
    b.update("k", "orset", "add", "x")
    ship(a, b, 0)
    ship(b, a, 0)
    assert a.type_of("k") == b.type_of("k") == "orset" and a.root_digest() == b.root_digest()
    assert a.stats.type_conflicts == 1


def test_delete_wins_and_tombstones_are_collected_in_two_phases() -> None:
    a, b, c = StateStore("a"), StateStore("b"), StateStore("c")
    acks: dict[tuple[str, str], int] = {}

    def gossip(src: StateStore, dst: StateStore) -> None:
        acks[(src.replica_id, dst.replica_id)] = ship(src, dst, acks.get((src.replica_id, dst.replica_id), 0))

    a.update("k", "orset", "add", "x")
    for s, d in [(a, b), (a, c)]:
        gossip(s, d)
    a.delete("k")
    late = c.update("k", "orset", "add", "concurrent")  # concurrent with the delete; held back from a and b
    gossip(a, b)
    gossip(a, c)
    assert c.type_of("k") == "tombstone" and c.value("k") is None
    with pytest.raises(CrdtUsageError, match="was deleted"):
        a.update("k", "orset", "add", "y")

    def seen_of(*stores: StateStore) -> dict[str, VectorClock]:
        return {s.replica_id: s.seen() for s in stores}

    # phase 1 needs everyone to have seen the delete; b has, so it arms; the horizon includes c's write
    report = a.collect_garbage(seen_of(b, c))
    assert (report.armed, report.collected) == (1, 0)
    report = a.collect_garbage(seen_of(b, c))
    assert report.collected == 0  # a and b have not seen c's concurrent write yet
    gossip(c, a)
    gossip(c, b)
    report = a.collect_garbage(seen_of(b, c))
    assert report.collected == 1 and a.type_of("k") is None
    # the concurrent write, delivered again late, is a duplicate and does not resurrect the key
    assert a.apply_delta(late) is False and a.type_of("k") is None
    # after collection the key can be used again
    a.update("k", "orset", "add", "fresh")
    assert a.value("k") == {"fresh"}


def test_deleting_a_deleted_key_joins_tombstones_like_receivers_do() -> None:
    a, b = StateStore("a"), StateStore("b")
    for _ in range(5):
        a.update("n", "gcounter", "increment")
    a.delete("k")  # dot (a, 6)
    ship(a, b, 0)
    b.delete("k")  # dot (b, 1): smaller, so (a, 6) stays the tombstone everywhere
    ship(b, a, 0)
    assert a.digest(["k"]) == b.digest(["k"])


def test_gc_waits_for_every_member() -> None:
    a, b = StateStore("a"), StateStore("b")
    a.delete("gone")
    assert a.collect_garbage({"b": b.seen()}).armed == 0
    assert a.collect_garbage({"b": VectorClock({"a": 1})}).armed == 1
    assert a.collect_garbage({"b": VectorClock({"a": 1})}).collected == 1


OPS = st.one_of(
    st.tuples(st.just("gcounter"), st.just("increment"), st.tuples(st.integers(1, 3))),
    st.tuples(st.just("orset"), st.just("add"), st.tuples(st.sampled_from(["x", "y", 1]))),
    st.tuples(st.just("orset"), st.just("remove"), st.tuples(st.sampled_from(["x", "y", 1]))),
    st.tuples(st.just("ormap"), st.just("update"), st.tuples(st.just("m"), st.just("mvregister"), st.just("write"), st.integers(0, 3))),
    st.tuples(st.just("ormap"), st.just("remove"), st.tuples(st.just("m"))),
    st.tuples(st.just("lwwmap"), st.just("put"), st.tuples(st.just("f"), st.integers(0, 9), st.integers(0, 5))),
    st.just(("delete", "", ())),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_stores_converge_after_loss_duplication_and_repair(data: st.DataObject) -> None:
    stores = [StateStore(r) for r in ("a", "b", "c")]
    pool: list[Delta] = []
    for _ in range(data.draw(st.integers(1, 25))):
        i = data.draw(st.integers(0, 2))
        if pool and data.draw(st.booleans()):
            stores[i].apply_delta(pool[data.draw(st.integers(0, len(pool) - 1))])  # any order, dups, loss
            continue
        key = data.draw(st.sampled_from(["k1", "k2", "k3"]))
        type_name, op, args = data.draw(OPS)
        try:
            if type_name == "delete":
                pool.append(stores[i].delete(key))
            else:
                if type_name == "lwwmap":
                    args = (*args[:2], 1000 + len(pool))
                pool.append(stores[i].update(key, type_name, op, *args))
        except CrdtUsageError:
            pass  # wrong type for the key here, or a deleted key
    for _ in range(2):
        for i in range(3):
            push_pull(stores[i], stores[(i + 1) % 3])
    digests = {s.root_digest() for s in stores}
    assert len(digests) == 1
    assert stores[0].digest() == stores[1].digest() == stores[2].digest()
    for key in ("k1", "k2", "k3"):
        assert stores[0].value(key) == stores[1].value(key) == stores[2].value(key)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_delta_propagation_alone_converges(data: st.DataObject) -> None:
    """Path (a): per-neighbour acked sequences over FIFO links, with forwarding, and no repair."""
    stores = [StateStore(r) for r in ("a", "b", "c")]
    acks: dict[tuple[int, int], int] = {}
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    for _ in range(data.draw(st.integers(1, 20))):
        if data.draw(st.booleans()):
            i, j = data.draw(st.sampled_from(pairs))
            acks[(i, j)] = ship(stores[i], stores[j], acks.get((i, j), 0))
            continue
        i = data.draw(st.integers(0, 2))
        key = data.draw(st.sampled_from(["k1", "k2"]))
        type_name, op, args = data.draw(OPS)
        try:
            if type_name == "delete":
                stores[i].delete(key)
            else:
                if type_name == "lwwmap":
                    args = (*args[:2], 1000 + stores[i].last_seq)
                stores[i].update(key, type_name, op, *args)
        except CrdtUsageError:
            pass
    for _ in range(2):
        for i, j in pairs:
            acks[(i, j)] = ship(stores[i], stores[j], acks.get((i, j), 0))
    assert stores[0].digest() == stores[1].digest() == stores[2].digest()
    assert stores[0].seen() == stores[1].seen() == stores[2].seen()

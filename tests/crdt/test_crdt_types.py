"""Semantics of each type by example: what wins, what survives, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agentnode.crdt as crdt
from agentnode.crdt import (
    CausalContext,
    CrdtUsageError,
    Dot,
    GCounter,
    LWWMap,
    LWWRegister,
    MVRegister,
    Ordering,
    ORMap,
    ORSet,
    PNCounter,
    VectorClock,
)


def test_public_names_are_pinned() -> None:
    assert sorted(crdt.__all__) == sorted(
        """NESTABLE_TYPES WIRE_VERSION CausalContext CodecError Crdt CrdtError CrdtUsageError Delta Dot
        GCounter GcReport LWWMap LWWRegister LimitExceededError MVRegister ORMap ORSet Ordering PNCounter PruneMarker
        ReplicaId Repair StateStore StoreLimits StoreStats Tombstone VectorClock WireLimits digest
        from_wire register_type to_wire type_names wire_size""".split()
    )
    for name in crdt.__all__:
        assert hasattr(crdt, name), name


# --- vector clocks ---


def test_vector_clock_orderings() -> None:
    a = VectorClock({"a": 1})
    b = a.increment("b")
    c = a.increment("c")
    assert a.compare(b) is Ordering.BEFORE
    assert b.compare(a) is Ordering.AFTER
    assert b.compare(c) is Ordering.CONCURRENT
    assert b.compare(VectorClock({"a": 1, "b": 1})) is Ordering.EQUAL
    assert b.merge(c) == VectorClock({"a": 1, "b": 1, "c": 1})
    assert b.meet(c) == a
    assert a <= b and not b <= a and a < b and b > a
    assert VectorClock({"a": 0}) == VectorClock()


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 3)),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 3)),
)
def test_vector_clock_compare_agrees_with_pointwise_order(x: dict[str, int], y: dict[str, int]) -> None:
    a, b = VectorClock(x), VectorClock(y)
    order = a.compare(b)
    flipped = {Ordering.BEFORE: Ordering.AFTER, Ordering.AFTER: Ordering.BEFORE}.get(order, order)
    assert b.compare(a) is flipped
    assert (order is Ordering.EQUAL) == (a == b)
    assert (order is Ordering.BEFORE) == (b.covers(a) and a != b)
    assert (order is Ordering.CONCURRENT) == (not a.covers(b) and not b.covers(a))
    assert a.merge(b).covers(a) and a.merge(b).covers(b) and a.covers(a.meet(b))


def test_vector_clock_refuses_bad_counters() -> None:
    with pytest.raises(CrdtUsageError):
        VectorClock({"a": -1})
    with pytest.raises(CrdtUsageError):
        VectorClock({"a": 1}).increment("a", 0)


# --- causal context ---


def test_causal_context_compacts_to_a_canonical_form() -> None:
    ctx = CausalContext.from_dots([Dot("a", 3), Dot("a", 1), Dot("b", 2)])
    assert ctx.vv_items() == [("a", 1)] and ctx.cloud() == [Dot("a", 3), Dot("b", 2)]
    ctx.add(Dot("a", 2))
    assert ctx.vv_items() == [("a", 3)] and ctx.cloud() == [Dot("b", 2)]
    assert ctx.contains(Dot("a", 2)) and not ctx.contains(Dot("b", 1))
    assert ctx.next_dot("b") == Dot("b", 3)
    other = CausalContext.from_dots([Dot("b", 1)])
    other.merge(ctx)
    assert other.vv_items() == [("a", 3), ("b", 3)] and other.cloud() == []


# --- counters ---


def test_counters() -> None:
    a, b = PNCounter(), PNCounter()
    da = a.increment("a", 5)
    db = b.decrement("b", 2)
    a.merge(db)
    b.merge(da)
    b.merge(da)  # duplicate delivery is harmless
    assert a.value() == b.value() == 3
    with pytest.raises(CrdtUsageError, match="positive int"):
        GCounter().increment("a", -1)
    with pytest.raises(CrdtUsageError, match="positive int"):
        GCounter().increment("a", True)  # type: ignore[arg-type]


# --- registers ---


def test_lww_register_ties_break_by_replica_not_arrival() -> None:
    a, b = LWWRegister(), LWWRegister()
    da = a.assign("a", "from-a", 10)
    db = b.assign("b", "from-b", 10)
    a.merge(db)
    b.merge(da)
    assert a.value() == b.value() == "from-b"
    later = a.assign("a", "later", 11)
    b.merge(later)
    assert b.value() == "later" and b.timestamp == 11 and b.writer == "a"


def test_lww_register_refuses_a_write_that_would_lose_locally() -> None:
    r = LWWRegister()
    r.assign("b", 1, 5)
    with pytest.raises(CrdtUsageError, match="pass a timestamp > 5"):
        r.assign("a", 2, 5)


def test_mv_register_keeps_concurrent_writes_until_a_covering_write() -> None:
    a, b = MVRegister(), MVRegister()
    da = a.write("a", "x")
    db = b.write("b", "y")
    a.merge(db)
    b.merge(da)
    assert a.value() == b.value() == ("x", "y")
    dc = a.write("a", "z")
    b.merge(dc)
    assert b.value() == ("z",)


# --- sets ---


def test_or_set_add_wins_over_concurrent_remove() -> None:
    a, b = ORSet(), ORSet()
    b.merge(a.add("a", "x"))
    rem = b.remove("x")
    add = a.add("a", "x")  # concurrent re-add
    a.merge(rem)
    b.merge(add)
    assert a.value() == b.value() == {"x"}


def test_or_set_remove_is_not_undone_by_an_old_add_arriving_late() -> None:
    a, b = ORSet(), ORSet()
    add = a.add("a", "x")
    rem = a.remove("x")
    b.merge(rem)
    b.merge(add)  # reordered: the add arrives after the remove that observed it
    assert b.value() == frozenset()
    assert b == a


def test_or_set_refuses_non_elements() -> None:
    for bad in (True, 1.5, None, ["x"], "\ud800"):
        with pytest.raises(CrdtUsageError):
            ORSet().add("a", bad)  # type: ignore[arg-type]


# --- maps ---


def test_or_map_remove_does_not_resurrect_old_nested_state() -> None:
    a, b = ORMap(), ORMap()
    b.merge(a.update("a", "k", "orset", lambda s: s.add("a", "old")))
    rem = a.remove("k")
    upd = b.update("b", "k", "orset", lambda s: s.add("b", "new"))  # concurrent with the remove
    a.merge(upd)
    b.merge(rem)
    assert a.value() == b.value() == {"k": frozenset({"new"})}


def test_or_map_nested_maps_and_string_ops() -> None:
    m = ORMap()
    d = m.apply_op("a", "update", ("agents", "ormap", "update", "a1", "mvregister", "write", {"load": 3}))
    other = ORMap()
    other.merge(d)
    assert other.value() == {"agents": {"a1": ({"load": 3},)}}
    assert other.get("agents").value() == {"a1": ({"load": 3},)}  # type: ignore[union-attr]
    assert "agents" in other and "nope" not in other and len(other) == 1


def test_or_map_concurrent_types_resolve_the_same_everywhere() -> None:
    a, b = ORMap(), ORMap()
    da = a.update("a", "k", "orset", lambda s: s.add("a", "x"))
    db = b.update("b", "k", "mvregister", lambda r: r.write("b", "v"))
    a.merge(db)
    b.merge(da)
    assert a == b and a.value() == b.value() == {"k": frozenset({"x"})}  # "orset" > "mvregister"
    with pytest.raises(CrdtUsageError, match="holds a"):
        a.update("a", "k", "mvregister", lambda r: r.write("a", "w"))


def test_or_map_refuses_non_causal_values_and_bad_update_functions() -> None:
    with pytest.raises(CrdtUsageError, match="ORMap values"):
        ORMap().update("a", "k", "gcounter", lambda c: c)
    with pytest.raises(CrdtUsageError, match="must return"):
        ORMap().update("a", "k", "orset", lambda s: None)  # type: ignore[arg-type,return-value]


def test_lww_map_put_remove_and_tombstone_collection() -> None:
    a, b = LWWMap(), LWWMap()
    b.merge(a.put("a", "k", 1, 10))
    rem = b.remove("b", "k", 11)
    late = a.put("a", "j", 2, 3)
    a.merge(rem)
    b.merge(late)
    assert a == b and a.value() == {"j": 2}
    assert a.collect_tombstones(stable_before_ts=11) == 0
    assert a.collect_tombstones(stable_before_ts=12) == 1
    assert a.value() == {"j": 2} and len(a.entries()) == 1


def test_unknown_ops_and_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(CrdtUsageError, match="no operation 'nope'"):
        ORSet().apply_op("a", "nope")
    with pytest.raises(CrdtUsageError, match="bad arguments"):
        ORSet().apply_op("a", "add", ("x", "y"))
    with pytest.raises(CrdtUsageError, match="cannot merge"):
        ORSet().merge(GCounter())  # type: ignore[arg-type]

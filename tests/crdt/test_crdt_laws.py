"""Lattice laws, delta correctness, convergence and codec round trip for every CRDT type.

Reachable states are built by Hypothesis-drawn schedules over three replicas: local operations,
delta deliveries (any order, duplicated or lost) and full-state merges.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentnode.crdt import (
    CrdtUsageError,
    GCounter,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    from_wire,
    to_wire,
)

REPLICAS = ["r0", "r1", "r2"]
TYPES = {c.TYPE_NAME: c for c in (GCounter, PNCounter, LWWRegister, MVRegister, ORSet, ORMap, LWWMap)}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

elements = st.sampled_from(["a", "b", "c", 1, 2, b"x"])
values = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2), st.lists(st.integers(0, 2), max_size=2))
timestamps = st.integers(0, 6)


def ops_for(type_name: str) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
    """(op name, args) for a type; timestamps are raised at run time so writes are newer locally."""
    amount = st.integers(1, 3)
    if type_name == "gcounter":
        return st.tuples(st.just("increment"), st.tuples(amount))
    if type_name == "pncounter":
        return st.tuples(st.sampled_from(["increment", "decrement"]), st.tuples(amount))
    if type_name == "lwwregister":
        return st.tuples(st.just("assign"), st.tuples(values, timestamps))
    if type_name == "mvregister":
        return st.one_of(st.tuples(st.just("write"), st.tuples(values)), st.just(("clear", ())))
    if type_name == "orset":
        return st.one_of(
            st.tuples(st.just("add"), st.tuples(elements)),
            st.tuples(st.just("add"), st.tuples(elements)),
            st.tuples(st.just("remove"), st.tuples(elements)),
            st.just(("clear", ())),
        )
    if type_name == "ormap":
        keys = st.sampled_from(["k1", "k2", 3])
        return st.one_of(
            st.tuples(st.just("update"), st.tuples(keys, st.just("orset"), st.just("add"), elements)),
            st.tuples(st.just("update"), st.tuples(keys, st.just("orset"), st.just("remove"), elements)),
            st.tuples(st.just("update"), st.tuples(keys, st.just("mvregister"), st.just("write"), values)),
            st.tuples(
                st.just("update"),
                st.tuples(keys, st.just("ormap"), st.just("update"), st.sampled_from(["x", "y"]), st.just("orset"), st.just("add"), elements),
            ),
            st.tuples(st.just("remove"), st.tuples(keys)),
        )
    if type_name == "lwwmap":
        keys = st.sampled_from(["k1", "k2", b"k3"])
        return st.one_of(
            st.tuples(st.just("put"), st.tuples(keys, values, timestamps)),
            st.tuples(st.just("remove"), st.tuples(keys, timestamps)),
        )
    raise AssertionError(type_name)


def run_op(state: Any, replica: str, op: str, args: tuple[Any, ...]) -> Any | None:
    """Apply an op as `replica`; returns the delta, or None if the op is refused as misuse."""
    if isinstance(state, LWWRegister):
        args = (args[0], max(args[1], state.timestamp + 1))
    elif isinstance(state, LWWMap):
        args = (*args[:-1], max(args[-1], state.timestamp_of(args[0]) + 1))
    try:
        return state.apply_op(replica, op, args)
    except CrdtUsageError:
        return None


@st.composite
def histories(draw: st.DrawFn, type_name: str, steps_max: int = 14) -> tuple[list[Any], list[Any]]:
    """Run a drawn schedule; return (the three replica states, every delta produced)."""
    cls = TYPES[type_name]
    states = [cls() for _ in REPLICAS]
    deltas: list[Any] = []
    op_strategy = ops_for(type_name)
    for _ in range(draw(st.integers(0, steps_max))):
        kind = draw(st.sampled_from(["op", "op", "op", "delta", "merge"]))
        i = draw(st.integers(0, 2))
        if kind == "op":
            op, args = draw(op_strategy)
            delta = run_op(states[i], REPLICAS[i], op, args)
            if delta is not None:
                deltas.append(delta)
        elif kind == "delta" and deltas:
            states[i].merge(deltas[draw(st.integers(0, len(deltas) - 1))])
        elif kind == "merge":
            states[i].merge(states[draw(st.integers(0, 2))])
    return states, deltas


def typed_histories(steps_max: int = 14) -> st.SearchStrategy[tuple[str, list[Any], list[Any]]]:
    return st.sampled_from(sorted(TYPES)).flatmap(
        lambda t: histories(t, steps_max).map(lambda h: (t, h[0], h[1]))
    )


@SETTINGS
@given(typed_histories())
def test_join_is_commutative_associative_idempotent(history: tuple[str, list[Any], list[Any]]) -> None:
    _, (a, b, c), _ = history
    assert a.join(b) == b.join(a)
    assert a.join(b).join(c) == a.join(b.join(c))
    assert a.join(a) == a
    assert a.join(b).join(b) == a.join(b)


@SETTINGS
@given(typed_histories())
def test_join_does_not_change_its_arguments(history: tuple[str, list[Any], list[Any]]) -> None:
    _, (a, b, _), deltas = history
    a_before, b_before = a.copy(), b.copy()
    deltas_before = [d.copy() for d in deltas]
    a.join(b)
    merged = a.copy()
    for d in deltas:
        merged.merge(d)
    merged.merge(b)
    assert a == a_before and b == b_before
    assert deltas == deltas_before


@SETTINGS
@given(typed_histories())
def test_join_is_an_upper_bound(history: tuple[str, list[Any], list[Any]]) -> None:
    _, (a, b, _), _ = history
    ab = a.join(b)
    assert ab.join(a) == ab and ab.join(b) == ab


@SETTINGS
@given(st.data(), st.sampled_from(sorted(TYPES)))
def test_replicas_converge_under_reordering_duplication_and_loss(data: st.DataObject, type_name: str) -> None:
    cls = TYPES[type_name]
    states = [cls() for _ in REPLICAS]
    deltas: list[Any] = []
    op_strategy = ops_for(type_name)
    for _ in range(data.draw(st.integers(1, 16))):
        i = data.draw(st.integers(0, 2))
        if deltas and data.draw(st.booleans()):
            # deliver any earlier delta, possibly again, possibly out of order; others are lost
            states[i].merge(deltas[data.draw(st.integers(0, len(deltas) - 1))])
        else:
            op, args = data.draw(op_strategy)
            delta = run_op(states[i], REPLICAS[i], op, args)
            if delta is not None:
                deltas.append(delta)
    # anti-entropy: full-state push-pull around the ring, twice
    for _ in range(2):
        for i in range(3):
            states[(i + 1) % 3].merge(states[i])
    assert states[0] == states[1] == states[2]
    assert states[0].value() == states[1].value() == states[2].value()
    # every state is the join of the deltas: the deltas alone rebuild it
    rebuilt = cls()
    for d in deltas:
        rebuilt.merge(d)
    assert rebuilt == states[0]


@SETTINGS
@given(typed_histories())
def test_codec_round_trip_through_msgpack(history: tuple[str, list[Any], list[Any]]) -> None:
    _, states, deltas = history
    for crdt in [*states, *deltas]:
        wire = to_wire(crdt)
        assert to_wire(crdt) == wire  # deterministic
        decoded = from_wire(msgpack.unpackb(msgpack.packb(wire)))
        assert decoded == crdt
        assert decoded.value() == crdt.value()
        assert to_wire(decoded) == wire


@SETTINGS
@given(typed_histories())
def test_equal_states_encode_equally(history: tuple[str, list[Any], list[Any]]) -> None:
    _, (a, b, _), _ = history
    x, y = a.join(b), b.join(a)
    assert to_wire(x) == to_wire(y)

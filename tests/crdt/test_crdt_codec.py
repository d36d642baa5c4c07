"""Codec: versioning, limits, and garbage in gives `CodecError`, never anything else."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentnode.crdt import (
    WIRE_VERSION,
    CodecError,
    Crdt,
    Delta,
    GCounter,
    LimitExceededError,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Repair,
    StateStore,
    WireLimits,
    from_wire,
    to_wire,
    type_names,
)

GARBAGE_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 10),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.binary(max_size=6),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=3), st.binary(max_size=3), st.integers(0, 3)), inner, max_size=4),
    ),
    max_leaves=30,
)


def samples() -> list[Crdt]:
    """One non-trivial state of every type."""
    out: list[Crdt] = []
    g = GCounter()
    g.increment("a", 3)
    g.increment("b", 1)
    p = PNCounter()
    p.increment("a", 5)
    p.decrement("b", 2)
    lww = LWWRegister()
    lww.assign("a", {"k": [1, 2.5, b"x", None, True]}, 7)
    mv = MVRegister()
    mv.write("a", "one")
    mv2 = MVRegister()
    mv2.write("b", "two")
    mv.merge(mv2)
    s = ORSet()
    s.add("a", "x")
    s.add("b", 7)
    s.add("a", b"y")
    s.remove("x")
    m = ORMap()
    m.update("a", "tags", "orset", lambda v: v.add("a", "blue"))
    m.update("b", "card", "mvregister", lambda v: v.write("b", {"name": "agent"}))
    m.update("a", 5, "ormap", lambda v: v.update("a", "inner", "orset", lambda w: w.add("a", 1)))
    lm = LWWMap()
    lm.put("a", "x", 1, 3)
    lm.put("b", "y", [1], 4)
    lm.remove("a", "y", 5)
    out.extend([g, p, lww, LWWRegister(), mv, s, m, lm, ORSet(), ORMap()])
    return out


def _paths(value: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if type(value) is list:
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    return out


def _replace(value: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _decodes_or_codec_error(value: object) -> None:
    try:
        result = from_wire(value)
    except CodecError:
        return
    assert isinstance(result, Crdt)
    # whatever decodes must be usable: encode, value, join with itself
    assert from_wire(to_wire(result)) == result
    result.value()
    assert result.join(result) == result


@GARBAGE_SETTINGS
@given(garbage)
def test_random_garbage_raises_only_codec_error(value: object) -> None:
    _decodes_or_codec_error(value)
    _decodes_or_codec_error([WIRE_VERSION, 5, ["a", "b"], value])
    _decodes_or_codec_error([WIRE_VERSION, 6, ["a"], [[[0, 3], []], value]])


@GARBAGE_SETTINGS
@given(st.data())
def test_mutated_valid_values_raise_only_codec_error(data: st.DataObject) -> None:
    wire = to_wire(data.draw(st.sampled_from(samples())))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(wire)))
        wire = _replace(wire, path, data.draw(garbage))
    _decodes_or_codec_error(wire)


@GARBAGE_SETTINGS
@given(garbage)
def test_delta_and_repair_garbage_raise_only_codec_error(value: object) -> None:
    for decode in (Delta.from_wire, Repair.from_wire):
        for candidate in (value, ["k", "a", 1, value], [["k", value], ["a", 1], True]):
            try:
                decode(candidate)
            except CodecError:
                pass


def test_every_type_has_a_sample_and_round_trips() -> None:
    covered = {type(s).TYPE_NAME for s in samples()}
    assert covered | {"tombstone"} == set(type_names())
    for s in samples():
        assert from_wire(msgpack.unpackb(msgpack.packb(to_wire(s)))) == s


def test_wire_layout_is_versioned_and_interns_replicas() -> None:
    s = ORSet()
    s.add("node-aaaaaaaa", "x")
    s.add("node-aaaaaaaa", "y")
    assert to_wire(s) == [1, 5, ["node-aaaaaaaa"], [[[0, 2], []], ["x", [0, 1], "y", [0, 2]]]]


def test_unknown_version_and_type_are_refused_with_a_message() -> None:
    with pytest.raises(CodecError, match="unsupported wire version 2"):
        from_wire([2, 1, [], []])
    with pytest.raises(CodecError, match="unknown CRDT type id 99"):
        from_wire([1, 99, [], []])
    with pytest.raises(CodecError, match="version"):
        from_wire([True, 1, [], []])


def test_structural_violations_are_refused() -> None:
    with pytest.raises(CodecError, match="not in the causal context"):
        from_wire([1, 5, ["a"], [[[], []], ["x", [0, 1]]]])
    with pytest.raises(CodecError, match="used twice"):
        from_wire([1, 5, ["a"], [[[0, 2], []], ["x", [0, 1], "y", [0, 1]]]])
    with pytest.raises(CodecError, match="appears twice"):
        from_wire([1, 1, ["a", "a"], [0, 1]])
    with pytest.raises(CodecError, match="two counter slots"):
        from_wire([1, 1, ["a"], [0, 1, 0, 2]])
    with pytest.raises(CodecError, match="replica index"):
        from_wire([1, 1, ["a"], [1, 1]])
    with pytest.raises(CodecError, match="tombstone must carry None"):
        from_wire([1, 7, ["a"], ["k", 1, 0, False, 3]])


def test_decode_limits() -> None:
    small = WireLimits(items_max=10, depth_max=3, bytes_max=200, replicas_max=2)
    g = GCounter()
    for i in range(8):
        g.increment(f"r{i}")
    with pytest.raises(CodecError, match="replica table"):
        from_wire(to_wire(g), small)
    deep: Any = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(CodecError, match="deeper"):
        from_wire([1, 3, ["a"], [1, 0, deep]], small)
    with pytest.raises(CodecError, match="larger than 200 bytes"):
        from_wire([1, 3, ["a"], [1, 0, "x" * 300]], small)
    very_deep: Any = 0
    for _ in range(100_000):
        very_deep = [very_deep]
    with pytest.raises(CodecError):
        from_wire([1, 3, ["a"], [1, 0, very_deep]])


def test_encode_limits_raise_limit_exceeded() -> None:
    s = ORSet()
    for i in range(50):
        s.add("a", i)
    with pytest.raises(LimitExceededError) as err:
        to_wire(s, WireLimits(items_max=20))
    assert err.value.limit == "items_max"


def test_store_delta_round_trip_through_msgpack() -> None:
    store = StateStore("a")
    delta = store.update("agents", "ormap", "update", "a1", "mvregister", "write", {"name": "n"})
    back = Delta.from_wire(msgpack.unpackb(msgpack.packb(delta.to_wire())))
    assert back == delta or (back.key, back.dot, back.state) == (delta.key, delta.dot, delta.state)

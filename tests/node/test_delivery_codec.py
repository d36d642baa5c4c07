"""agent_messages codec: every message round-trips through msgpack; bad frames raise FrameError only."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import (
    AckEntry,
    Acks,
    AgentRecord,
    AgentSkill,
    Batch,
    BroadcastDisconnect,
    BroadcastGossip,
    BroadcastGraft,
    BroadcastIHave,
    BroadcastNeighbor,
    BroadcastNeighborReply,
    BroadcastPrune,
    Envelope,
    FrameError,
    MessageId,
    RegistryDigest,
    RegistrySet,
    RejectEntry,
    decode,
    encode,
    is_agent_frame,
)

C = "cluster-x"
name = st.text(min_size=1, max_size=12)
small = st.integers(0, 2**40)
mid = st.builds(MessageId, name, small, small)
sorted_names = st.lists(name, max_size=4, unique=True).map(lambda xs: tuple(sorted(xs)))
record = st.builds(
    AgentRecord, agent_id=name, name=st.text(max_size=10), node_id=st.just("owner"), capabilities=sorted_names,
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3).map(lambda d: tuple(sorted(d.items()))),
    description=st.text(max_size=20), version=st.text(max_size=5),
    skills=st.lists(st.builds(AgentSkill, name, st.text(max_size=5), st.text(max_size=5), sorted_names), max_size=2)
    .map(tuple),
    topics=sorted_names, status=st.sampled_from([0, 1]), load=st.integers(0, 1000),
)


@st.composite
def envelope(draw: st.DrawFn) -> Envelope:
    reliable = draw(st.booleans())
    seq = draw(st.integers(1, 10_000)) if reliable else 0
    kind = draw(st.sampled_from([0, 1, 2, 3]))
    return Envelope(
        session=draw(st.integers(1, 2**40)) if reliable else 0, seq=seq, floor=draw(st.integers(0, seq)),
        msg_id=draw(mid), kind=kind, dest_agent=draw(st.text(max_size=8)), src_agent=draw(st.text(max_size=8)),
        priority=draw(st.sampled_from([0, 1, 2])), ttl_ms=draw(st.integers(0, 10**6)), flags=draw(st.integers(0, 3)),
        correlation=draw(mid) if kind >= 2 else None, payload=draw(st.binary(max_size=50)),
    )


acks = st.builds(
    Acks, st.lists(st.builds(AckEntry, st.text(max_size=5), st.sampled_from([0, 1, 2]), small, small,
                             st.lists(small, max_size=3).map(tuple)), max_size=3).map(tuple),
    st.lists(st.builds(RejectEntry, mid, st.text(max_size=5), st.sampled_from([0, 1, 2]), small, small,
                       st.sampled_from([1, 2, 3, 4]), st.text(max_size=10)), max_size=3).map(tuple))

messages = st.one_of(
    st.builds(Batch, st.lists(envelope(), min_size=1, max_size=4).map(tuple), acks),
    st.builds(RegistryDigest, st.booleans(), st.lists(st.tuples(name, small, small), max_size=4).map(tuple)),
    st.builds(RegistrySet, st.just("owner"), small, small,
              st.lists(record, max_size=3, unique_by=lambda r: r.agent_id).map(tuple)),
    st.builds(Batch, st.lists(envelope(), max_size=4).map(tuple)),
    st.builds(Acks, st.lists(st.builds(AckEntry, st.text(max_size=5), st.sampled_from([0, 1, 2]), small, small,
                                       st.lists(small, max_size=3).map(tuple)), max_size=3).map(tuple),
              st.lists(st.builds(RejectEntry, mid, st.text(max_size=5), st.sampled_from([0, 1, 2]), small, small,
                                 st.sampled_from([1, 2, 3, 4]), st.text(max_size=10)), max_size=3).map(tuple)),
    st.builds(BroadcastGossip, mid, st.text(max_size=10), st.binary(max_size=20), st.integers(0, 255)),
    st.builds(BroadcastIHave, st.lists(st.tuples(mid, st.integers(0, 255)), max_size=3).map(tuple)),
    st.builds(BroadcastGraft, st.lists(mid, max_size=3).map(tuple)),
    st.just(BroadcastPrune()), st.just(BroadcastDisconnect()),
    st.builds(BroadcastNeighbor, st.booleans()), st.builds(BroadcastNeighborReply, st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_round_trip_through_msgpack(message: object) -> None:
    frame = msgpack.unpackb(msgpack.packb(encode(message, C), use_bin_type=True), raw=False)  # type: ignore[arg-type]
    assert is_agent_frame(frame)
    assert decode(frame, C) == message


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(0, 12), st.one_of(st.none(), st.integers(), st.text(max_size=3), st.binary(max_size=3)))
def test_corrupted_fields_raise_frame_error_only(message: object, index: int, junk: object) -> None:
    frame = encode(message, C)  # type: ignore[arg-type]
    if index < len(frame):
        frame[index] = junk
    try:
        decode(frame, C)
    except FrameError:
        pass


def test_other_cluster_and_version_are_named() -> None:
    frame = encode(BroadcastPrune(), C)
    with pytest.raises(FrameError) as exc:
        decode(frame, "other")
    assert exc.value.counter == "dropped_wrong_cluster"
    with pytest.raises(FrameError) as exc:
        decode([99] + frame[1:], C)
    assert exc.value.counter == "dropped_version"
    assert not is_agent_frame([1, C, 1]) and not is_agent_frame("x")

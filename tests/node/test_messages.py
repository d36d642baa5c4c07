"""The membership codec: round trips through msgpack, and garbage gives FrameError, never a crash."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.core import NodeCore
from agentnode.messages import (
    KIND_ALIVE,
    KIND_SUSPECT,
    Ack,
    FrameError,
    Gossip,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullReply,
    Update,
    decode,
    encode,
)
from agentnode.profiles import LAN

ids = st.text(min_size=1, max_size=20)
addresses = st.text(min_size=1, max_size=40)
incs = st.integers(min_value=0, max_value=2**63 - 1)
metadata = st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)
updates = st.builds(Update, st.integers(0, 3), ids, incs, st.text(max_size=40), st.text(max_size=20), metadata)
update_lists = st.lists(updates, max_size=10).map(tuple)
messages = st.one_of(
    st.builds(Ping, incs, addresses, update_lists),
    st.builds(Ack, incs, update_lists),
    st.builds(PingReq, incs, ids, addresses, addresses),
    st.builds(Nack, incs),
    st.builds(Gossip, update_lists),
    st.builds(PushPull, st.booleans(), addresses, update_lists),
    st.builds(PushPullReply, update_lists),
)


def wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value), raw=False, strict_map_key=False)


@given(messages)
@settings(max_examples=300)
def test_round_trip_through_msgpack(message: Any) -> None:
    assert decode(wire(encode(message, "c1")), "c1") == message


@given(messages)
@settings(max_examples=100)
def test_other_cluster_is_rejected(message: Any) -> None:
    with pytest.raises(FrameError) as info:
        decode(wire(encode(message, "c1")), "c2")
    assert info.value.counter == "dropped_wrong_cluster"


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


def near_frames() -> st.SearchStrategy[Any]:
    """Frames that look right up to the message type, then carry arbitrary fields."""
    return st.builds(
        lambda t, rest: [1, "c1", t, *rest], st.integers(0, 9), st.lists(msgpack_values, max_size=8)
    )


@given(st.one_of(msgpack_values, near_frames()))
@settings(max_examples=500)
def test_garbage_raises_frame_error_only(frame: Any) -> None:
    try:
        decode(frame, "c1")
    except FrameError as exc:
        assert exc.counter in ("dropped_malformed", "dropped_version", "dropped_wrong_cluster")


@given(st.lists(st.one_of(msgpack_values, near_frames(), messages.map(lambda m: encode(m, "c1"))), max_size=20))
@settings(max_examples=200, deadline=None)
def test_core_receive_never_raises_on_peer_garbage(frames: list[Any]) -> None:
    core = NodeCore("me", "h:1", cluster="c1", profile=LAN, rng=random.Random(0))
    core.start(0)
    now = 0
    for frame in frames:
        now += 37
        core.receive("peer", frame, now)
        core.handle_timer(now)
        core.messages_to_send()
        while core.next_event() is not None:
            pass
        timer = core.get_timer()
        assert timer is None or isinstance(timer, int)
    assert core.counters["frames_received"] == len(frames)


def test_a_valid_alive_update_joins_a_member() -> None:
    core = NodeCore("me", "h:1", cluster="c1", profile=LAN, rng=random.Random(0))
    core.start(0)
    frame = wire(encode(Gossip((Update(KIND_ALIVE, "x", 4, "h:2", "", {"role": "db"}),)), "c1"))
    core.receive("x", frame, 5)
    m = core.member("x")
    assert m is not None and m.state == "alive" and m.incarnation == 4 and m.metadata == {"role": "db"}


def test_oversized_lists_are_rejected() -> None:
    many = tuple(Update(KIND_SUSPECT, f"n{i}", 0, "h", "a", None) for i in range(65))
    with pytest.raises(FrameError):
        decode(encode(Gossip(many), "c1"), "c1")
    with pytest.raises(FrameError):
        decode([1, "c1", 5, [[0, "x" * 200, 0, "h", "", None]]], "c1")
    with pytest.raises(FrameError):
        decode([True, "c1", 4, 1], "c1")

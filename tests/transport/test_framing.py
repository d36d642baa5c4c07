"""Framing: round trips, limits, and garbage in gives `FrameError` (never another exception)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.transport.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    ControlFrame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    MalformedFrame,
    encode_control,
    encode_frame,
    encode_frames,
)

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=50) | st.binary(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(min_value=-1000, max_value=1000), children, max_size=5),
    max_leaves=20,
)


@given(st.lists(values, max_size=10), st.lists(st.integers(min_value=1, max_value=64), max_size=30))
@settings(max_examples=200, deadline=None)
def test_round_trip_in_arbitrary_chunks(frames: list, cuts: list[int]) -> None:
    data = encode_frames(frames)
    decoder = FrameDecoder()
    out: list = []
    pos = 0
    for cut in cuts:
        out += decoder.feed(data[pos : pos + cut])
        pos += cut
    out += decoder.feed(data[pos:])
    assert out == frames
    assert decoder.pending_bytes == 0


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_garbage_gives_frame_error_or_frames(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=1024, allow_control=True)
    try:
        frames = decoder.feed(data)
    except FrameError:
        return
    assert isinstance(frames, list)
    assert decoder.pending_bytes <= len(data)


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_body_with_valid_prefix(body: bytes) -> None:
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(len(body).to_bytes(4, "big") + body)
    except MalformedFrame:
        return
    assert len(frames) == 1
    assert msgpack.packb(frames[0], use_bin_type=True) is not None


def test_oversized_prefix_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed((101).to_bytes(4, "big"))


def test_encoder_refuses_oversized_and_unserialisable_frames() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 200, max_frame_bytes=100)
    with pytest.raises(TypeError, match="msgpack-serialisable"):
        encode_frame({1, 2})
    assert len(encode_frame(b"x" * (DEFAULT_MAX_FRAME_BYTES - 10))) > DEFAULT_MAX_FRAME_BYTES - 10


def test_ext_types_and_trailing_bytes_are_malformed() -> None:
    for body in (msgpack.packb(msgpack.ExtType(5, b"x")), msgpack.packb(msgpack.Timestamp(1, 0)), b"\x01\x02", b""):
        with pytest.raises(MalformedFrame):
            FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_control_frames_only_when_allowed() -> None:
    data = encode_frame("a") + encode_control(["bye"]) + encode_frame("b")
    assert FrameDecoder(allow_control=True).feed(data) == ["a", ControlFrame(["bye"]), "b"]
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(data)


def test_partial_frame_is_buffered_and_bounded() -> None:
    decoder = FrameDecoder(max_frame_bytes=1 << 16)
    frame = encode_frame(b"y" * 60000)
    for i in range(0, len(frame) - 1, 7):
        assert decoder.feed(frame[i : min(i + 7, len(frame) - 1)]) == []
    assert decoder.pending_bytes == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [b"y" * 60000]
    assert decoder.pending_bytes == 0


def test_str_and_bytes_stay_distinct() -> None:
    assert FrameDecoder().feed(encode_frame({"k": b"v", 3: "s"})) == [{"k": b"v", 3: "s"}]

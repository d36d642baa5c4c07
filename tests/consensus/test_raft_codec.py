"""The pickle-free codec for pysyncobj messages: round trips, allow-list, garbage never escapes."""

from __future__ import annotations

import os
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus import commands as c
from agentnode.consensus.raft_codec import (
    RaftFrameError,
    command_from_wire,
    command_to_wire,
    decode_message,
    encode_message,
)

PAYLOAD = c.encode_entry(c.KvPut("k", b"v"), 1)
REGULAR = b"\x00" + pickle.dumps((0, (PAYLOAD,)), 2)  # what pysyncobj's @replicated writes
NO_OP = b"\x01"
MEMBERSHIP = b"\x02" + pickle.dumps(["add", "n4"], 2)

MESSAGES = [
    {"type": "request_vote", "term": 3, "last_log_index": 10, "last_log_term": 2},
    {"type": "response_vote", "term": 3},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 9, "prevLogTerm": 2,
     "entries": [(REGULAR, 10, 3), (NO_OP, 11, 3), (MEMBERSHIP, 12, 3)]},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": None, "prevLogTerm": None, "entries": []},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"chunk", True, False)},
    {"type": "next_node_idx", "next_node_idx": 12, "reset": False, "success": True},
    {"type": "apply_command", "command": REGULAR, "request_id": 7},
    {"type": "apply_command", "command": REGULAR},
    {"type": "apply_command_response", "request_id": 7, "log_idx": 12, "log_term": 3},
    {"type": "apply_command_response", "request_id": 7, "error": 4},
    {"type": "timeout_now", "term": 3},
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m["type"])
def test_round_trip_rebuilds_identical_pysyncobj_values(message) -> None:
    assert decode_message(encode_message(message)) == message


def test_entries_rebuilt_byte_for_byte() -> None:
    # The journal comparison in pysyncobj's dump loading needs exactly the same bytes back.
    for raw in (REGULAR, NO_OP, MEMBERSHIP, b"\x03" + pickle.dumps(2, 2)):
        assert command_from_wire(command_to_wire(raw)) == raw


def test_chunked_transmission_is_refused_both_ways() -> None:
    message = {"type": "append_entries", "transmission": "start", "data": b"x", "term": 1, "commit_index": 1,
               "prevLogIdx": 1, "prevLogTerm": 1}
    with pytest.raises(RaftFrameError, match="transmission"):
        encode_message(message)
    frame = msgpack.packb([1, "append_entries", {"term": 1, "commit_index": 1, "transmission": "finish",
                                                  "data": pickle.dumps(object)}])
    with pytest.raises(RaftFrameError):
        decode_message(frame)


def test_pickled_objects_never_cross(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class _Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = b"\x00" + pickle.dumps(_Boom(), 2)
    with pytest.raises(RaftFrameError):
        command_to_wire(evil)  # local side refuses to forward it
    with pytest.raises(RaftFrameError):
        command_to_wire(b"\x02" + pickle.dumps(["add", "x", _Boom()], 2))
    # The wire form carries no pickle at all: a peer can only send plain values.
    frame = msgpack.packb([1, "apply_command", {"command": ["R", pickle.dumps(_Boom())]}])
    with pytest.raises(RaftFrameError, match="payload"):
        decode_message(frame)
    assert not marker.exists()


def test_unknown_types_fields_and_bad_values_are_refused() -> None:
    bad = [
        [1, "install_malware", {}],
        [1, "response_vote", {"term": -1}],
        [1, "response_vote", {"term": True}],
        [1, "response_vote", {}],
        [1, "response_vote", {"term": 1, "extra": 2}],
        [2, "response_vote", {"term": 1}],
        [1, "append_entries", {"term": 1, "commit_index": 1, "entries": [[["R", b"junk"], 1, 1]]}],
        [1, "append_entries", {"term": 1, "commit_index": 1, "entries": [[["N"], 1, 1], [["N"], 5, 1]]}],
        [1, "apply_command_response", {"request_id": 1, "error": 99}],
    ]
    for value in bad:
        with pytest.raises(RaftFrameError):
            decode_message(msgpack.packb(value))


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12) | st.binary(max_size=4), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.sampled_from([m["type"] for m in MESSAGES] + ["x"]), st.dictionaries(
    st.sampled_from(["term", "commit_index", "entries", "prevLogIdx", "serialized", "command", "request_id",
                     "error", "reset", "success", "next_node_idx", "last_log_index", "last_log_term", "zz"]) | st.binary(max_size=3),
    PLAIN, max_size=6))
def test_garbage_frames_raise_only_raft_frame_error(kind, body) -> None:
    try:
        decode_message(msgpack.packb([1, kind, body], use_bin_type=True))
    except RaftFrameError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_raft_frame_error(data) -> None:
    try:
        decode_message(data)
    except RaftFrameError:
        pass

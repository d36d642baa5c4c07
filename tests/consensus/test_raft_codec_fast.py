"""The codec's fast paths produce exactly what the slow, obvious code produces (decision 0036)."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus import commands as c
from agentnode.consensus.raft_codec import (
    CommandWireCache,
    _regular_command,
    command_from_wire,
    decode_message,
    encode_message,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=9_000))
def test_rebuilt_regular_command_is_the_pickle_byte_for_byte(payload: bytes) -> None:
    assert _regular_command(payload) == b"\x00" + pickle.dumps((0, (payload,)), 2)


def test_a_received_entry_is_rebuilt_as_pysyncobj_pickles_it() -> None:
    payload = c.encode_entry(c.KvPut("k", bytes(range(256))), 1_700_000_000_000)
    assert command_from_wire(["R", payload]) == b"\x00" + pickle.dumps((0, (payload,)), 2)


def test_frames_with_and_without_the_group_packer_are_identical() -> None:
    payload = c.encode_entry(c.KvPut("k", b"v" * 300), 1_700_000_000_000)
    command = command_from_wire(["R", payload])
    message = {"type": "append_entries", "term": 2, "commit_index": 9, "entries": [(command, 10, 2)],
               "prevLogIdx": 9, "prevLogTerm": 2}
    cache = CommandWireCache()
    assert encode_message(message, cache) == encode_message(message) == encode_message(message, cache)
    assert decode_message(encode_message(message, cache), CommandWireCache()) == message

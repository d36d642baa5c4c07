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
    CommandWireCache,
    RaftFrameError,
    coalesce_messages,
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


# -- coalescing ----------------------------------------------------------------------------------


def _ae(term, prev, entries, commit, prev_term=None):
    """An append_entries as pysyncobj's leader builds it; entries are (command, index, term)."""
    return {"type": "append_entries", "term": term, "commit_index": commit, "prevLogIdx": prev,
            "prevLogTerm": term if prev_term is None else prev_term, "entries": entries}


def _entries(first, count, term):
    return [(NO_OP, i, term) for i in range(first, first + count)]


def _ack(idx, success=True, reset=False):
    return {"type": "next_node_idx", "next_node_idx": idx, "reset": reset, "success": success}


def test_coalesce_merges_continuing_appends_and_drops_replaced_heartbeats() -> None:
    a, b = _ae(2, 4, _entries(5, 2, 2), 4), _ae(2, 6, _entries(7, 1, 2), 5)
    assert coalesce_messages([a, b]) == [_ae(2, 4, _entries(5, 3, 2), 5)]
    heartbeat = _ae(2, 4, [], 4)
    assert coalesce_messages([heartbeat, a]) == [a]  # a stale empty one must never trail entries
    assert coalesce_messages([a, _ae(2, 6, [], 6)]) == [{**a, "commit_index": 6}]
    assert coalesce_messages([_ack(5), _ack(7), _ack(8)]) == [_ack(8)]


def test_coalesce_keeps_what_it_cannot_prove_equivalent() -> None:
    a = _ae(2, 4, _entries(5, 2, 2), 4)
    for later in (_ae(3, 6, _entries(7, 1, 3), 5),   # another term
                  _ae(2, 9, _entries(10, 1, 2), 5),  # a gap (nextIndex was reset in between)
                  {"type": "append_entries", "term": 2, "commit_index": 4, "serialized": (b"x", True, True)},
                  _ack(3)):
        assert coalesce_messages([a, later]) == [a, later]
    for acks in ([_ack(5), _ack(3, success=False, reset=True)], [_ack(5, reset=True), _ack(6)], [_ack(7), _ack(5)]):
        assert coalesce_messages(acks) == acks
    chunk = {"type": "append_entries", "term": 2, "commit_index": 4, "serialized": (b"x", True, False)}
    assert coalesce_messages([chunk, chunk]) == [chunk, chunk]


def _follow(log, commit, message):
    """pysyncobj 0.3.17's follower handling of one append_entries (syncobj.py, regular entries)."""
    prev = message["prevLogIdx"]
    if prev not in log:
        return log, commit, ("reset", max(log) + 1)
    if log[prev] != message["prevLogTerm"]:
        return log, commit, ("reset", prev)
    log = {i: t for i, t in log.items() if i <= prev}  # its truncation: everything after prev goes
    for _, index, term in message["entries"]:
        log[index] = term
    commit = max(commit, min(message["commit_index"], max(log)))
    return log, commit, ("ok", (message["entries"][-1][1] if message["entries"] else prev) + 1)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=30),
       st.integers(0, 3), st.booleans())
def test_coalesced_appends_leave_the_follower_where_the_originals_do(steps, behind, diverged) -> None:
    # The leader's log: 1..10 at term 1, then its own writes at term 2. Between two acknowledgements
    # it sends, in order, what pysyncobj does: the entries from its optimistic nextIndex on (or a
    # heartbeat), sometimes with a higher commit index. The follower may lag or hold a stale entry.
    terms = {i: 1 for i in range(0, 11)}
    commit, next_index = 5, 11 - behind
    messages = []
    for count, advance_commit in steps:
        for _ in range(count):
            terms[max(terms) + 1] = 2
        if advance_commit:
            commit = min(max(terms), commit + 1)
        prev = next_index - 1
        entries = [(NO_OP, i, terms[i]) for i in range(next_index, max(terms) + 1)]
        messages.append(_ae(2, prev, entries, commit, prev_term=terms[prev]))
        next_index = max(terms) + 1
    follower = {i: 1 for i in range(0, 11 - behind)}
    if diverged:
        follower[max(follower)] = 0  # an entry from an old term the leader does not have
    plain = (follower, 0, None)
    for message in messages:
        plain = _follow(plain[0], plain[1], message)
    merged = coalesce_messages(messages)
    assert len(merged) <= len(messages)
    fast = (follower, 0, None)
    for message in merged:
        fast = _follow(fast[0], fast[1], message)
    assert fast[:2] == plain[:2]  # same log, same commit index
    assert fast[2][0] == plain[2][0] and (fast[2] == plain[2] or fast[2][0] == "reset")


def test_wire_cache_is_bounded_and_gives_the_same_frames() -> None:
    cache = CommandWireCache(size_max=2)
    commands = [b"\x00" + pickle.dumps((0, (c.encode_entry(c.KvPut(f"k{i}", b"v"), 1),)), 2) for i in range(5)]
    message = {"type": "append_entries", "term": 1, "commit_index": 0, "prevLogIdx": 0, "prevLogTerm": 0,
               "entries": [(cmd, i + 1, 1) for i, cmd in enumerate(commands)]}
    assert encode_message(message, cache) == encode_message(message) == encode_message(message, cache)
    assert len(cache._wire) == 2
    with pytest.raises(RaftFrameError):
        cache.to_wire(b"\x00" + pickle.dumps(os.system, 2))


def test_entries_validated_on_receipt_are_applied_without_a_second_decode() -> None:
    cache = CommandWireCache(entries_max=2)
    payloads = [c.encode_entry(c.KvPut(f"k{i}", b"v"), i) for i in range(3)]
    frame = encode_message({"type": "append_entries", "term": 1, "commit_index": 0, "prevLogIdx": 0,
                            "prevLogTerm": 0, "entries": [(b"\x00" + pickle.dumps((0, (p,)), 2), i + 1, 1)
                                                          for i, p in enumerate(payloads)]})
    assert decode_message(frame, cache) == decode_message(frame)
    assert len(cache._entries) == 2  # bounded: the oldest went
    for payload in payloads:  # hit or miss, the same value
        assert cache.take_entry(payload) == c.decode_entry(payload)
    with pytest.raises(c.CommandDecodeError):
        cache.take_entry(b"\x93junk")

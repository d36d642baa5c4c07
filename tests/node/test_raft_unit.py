"""Pure parts of the node's Raft service: settings, the group record, voter choice, the result codec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus import ConsensusTimeout, NoQuorum, NotLeader
from agentnode.consensus.state_machine import KvResult, Lease, LeaseResult, LockHold, LockResult, RosterResult, RosterView
from agentnode.raft import (
    GroupRecord,
    RaftSettingsError,
    ResultDecodeError,
    error_from_payload,
    error_payload,
    choose_voters,
    decode_result,
    encode_result,
    load_settings,
    outcome_of_error_kind,
    static_group_id,
)

RESULTS = [
    None, True, 7, b"\x00bytes", "text",
    KvResult(True, b"v"), KvResult(False, None, "mismatch"),
    LeaseResult(True, Lease("planner", "agent-1", 123, 2)), LeaseResult(False, None, "expired"),
    LockResult(True, LockHold("build", "me", 9, 456)),
    RosterResult(False, "n1", "already_revoked"), RosterView(("a", "b"), ("c",)),
]


@pytest.mark.parametrize("value", RESULTS, ids=[type(v).__name__ for v in RESULTS])
def test_results_round_trip_as_plain_values(value: object) -> None:
    import msgpack

    wire = msgpack.unpackb(msgpack.packb(encode_result(value), use_bin_type=True), raw=False)
    assert decode_result(wire) == value


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4), max_leaves=20))
@settings(max_examples=300, deadline=None)
def test_garbage_results_raise_only_result_decode_error(value: object) -> None:
    try:
        decode_result(value)
    except ResultDecodeError:
        pass


def test_unknown_result_types_are_refused() -> None:
    with pytest.raises(ResultDecodeError):
        decode_result(["D", "Popen", ["rm -rf /"]])
    with pytest.raises(ResultDecodeError):
        decode_result(["D", "KvResult", [True]])
    with pytest.raises(TypeError):
        encode_result(object())


def test_errors_keep_their_class_across_the_wire() -> None:
    for exc in (NoQuorum(waited_ms=5), NotLeader("x"), ConsensusTimeout(waited_ms=1), ValueError("bad key")):
        back = error_from_payload(error_payload(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    assert isinstance(error_from_payload("garbage"), ConsensusTimeout)  # unreadable: outcome unknown
    assert outcome_of_error_kind("NoQuorum") == "fail" and outcome_of_error_kind("ConsensusTimeout") == "unknown"


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    assert load_settings(tmp_path, {}).bootstrap_expect == 3
    (tmp_path / "raft.json").write_text(json.dumps({"bootstrap_expect": 5}))
    assert load_settings(tmp_path, {}).bootstrap_expect == 5
    assert load_settings(tmp_path, {"AGENTNODE_RAFT_BOOTSTRAP_EXPECT": "0"}).bootstrap_expect == 0
    (tmp_path / "raft.json").write_text(json.dumps({"voters": ["c", "a", "b"]}))
    assert load_settings(tmp_path, {}).voters == ("a", "b", "c")
    for bad in ({"bootstrap_expect": 9}, {"voters": "abc"}, {"enabled": "yes"}, {"typo": 1}, ["x"]):
        (tmp_path / "raft.json").write_text(json.dumps(bad))
        with pytest.raises(RaftSettingsError):
            load_settings(tmp_path, {})
    (tmp_path / "raft.json").write_text("{not json")
    with pytest.raises(RaftSettingsError, match="raft.json"):
        load_settings(tmp_path, {})
    (tmp_path / "raft.json").unlink()
    with pytest.raises(RaftSettingsError, match="integer"):
        load_settings(tmp_path, {"AGENTNODE_RAFT_BOOTSTRAP_EXPECT": "three"})


def test_group_record_round_trip_and_validation() -> None:
    record = GroupRecord("g-1", ("a", "b", "c"), True, ("z",))
    assert GroupRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError):
        GroupRecord.from_json(json.dumps({"group_id": "g", "voters": [""], "voter": True}))


def test_voter_choice_is_deterministic() -> None:
    assert choose_voters(["d", "b", "a", "c"], 3) == ["a", "b", "c"]
    assert choose_voters(["b", "a"], 3) == ["a", "b"]
    assert static_group_id(("b", "a")) == static_group_id(("a", "b")) != static_group_id(("a", "c"))

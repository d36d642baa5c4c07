"""Commands: registry, round-trip, and garbage in gives CommandDecodeError (never another exception)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus import commands as c

IDS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
VALUES = st.binary(max_size=64)
TTL = st.integers(min_value=1, max_value=c.TTL_MS_MAX)

COMMAND_STRATEGY = st.one_of(
    st.builds(c.AdmitNode, IDS),
    st.builds(c.RevokeNode, IDS, st.text(max_size=10)),
    st.builds(c.ClaimName, IDS, IDS, TTL),
    st.builds(c.RenewName, IDS, IDS, TTL),
    st.builds(c.ReleaseName, IDS, IDS),
    st.builds(c.AcquireLock, IDS, IDS, TTL),
    st.builds(c.ReleaseLock, IDS, IDS, st.integers(min_value=1, max_value=2**40)),
    st.builds(c.KvPut, IDS, VALUES),
    st.builds(c.KvDelete, IDS),
    st.builds(c.KvCompareAndSet, IDS, st.none() | VALUES, st.none() | VALUES),
    st.builds(c.IsRevoked, IDS),
    st.just(c.GetRoster()),
    st.builds(c.LookupName, IDS),
    st.builds(c.GetLock, IDS),
    st.builds(c.KvGet, IDS),
    st.just(c.Barrier()),
)


def test_registry_ids_are_stable() -> None:
    # The log and dump files depend on these numbers: changing one is a format break.
    assert {name: cls.WIRE_ID for name, cls in c.COMMANDS.items()} == {
        "admit_node": 1, "revoke_node": 2, "claim_name": 3, "renew_name": 4, "release_name": 5,
        "acquire_lock": 6, "release_lock": 7, "kv_put": 8, "kv_delete": 9, "kv_compare_and_set": 10,
        "is_revoked": 20, "get_roster": 21, "lookup_name": 22, "get_lock": 23, "kv_get": 24, "barrier": 25,
    }
    assert all(c.WIRE_IDS[cls.WIRE_ID] is cls for cls in c.COMMANDS.values())


@given(COMMAND_STRATEGY, st.integers(min_value=0, max_value=2**62))
def test_entry_round_trip(command, now_ms) -> None:
    data = c.encode_entry(command, now_ms)
    assert c.decode_entry(data) == (command, now_ms)
    assert c.from_wire(c.to_wire(command)) == command


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_bytes_give_decode_error(data) -> None:
    try:
        c.decode_entry(data)
    except c.CommandDecodeError:
        pass


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5) | st.binary(max_size=5),
    lambda children: st.lists(children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300)
@given(st.lists(PLAIN, max_size=6))
def test_garbage_values_give_decode_error(values) -> None:
    data = msgpack.packb([c.ENTRY_VERSION, 0, *values], use_bin_type=True)
    try:
        command, _ = c.decode_entry(data)
    except c.CommandDecodeError:
        return
    assert type(command) in c.WIRE_IDS.values()


def test_bool_is_not_an_int_and_types_are_strict() -> None:
    with pytest.raises(c.CommandDecodeError):
        c.from_wire([c.ClaimName.WIRE_ID, "n", "o", True])
    with pytest.raises(c.CommandDecodeError):
        c.from_wire([c.KvPut.WIRE_ID, "k", "not-bytes"])
    with pytest.raises(c.CommandDecodeError, match="unknown command wire id"):
        c.from_wire([99])


def test_caller_misuse_is_a_value_error_that_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="limit"):
        c.KvPut("k", b"x" * (c.VALUE_BYTES_MAX + 1))
    with pytest.raises(ValueError, match="ttl_ms"):
        c.ClaimName("n", "o", 0)
    with pytest.raises(ValueError, match="empty"):
        c.AdmitNode("")
    with pytest.raises(ValueError, match="whitespace"):
        c.AdmitNode(" padded")
    with pytest.raises(TypeError, match="not a registered"):
        c.to_wire("nope")  # type: ignore[arg-type]

"""CriticalState: leases, locks with fencing tokens, roster, keys, limits, snapshots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus import commands as c
from agentnode.consensus import state_machine as sm
from agentnode.consensus.state_machine import CriticalState, SnapshotError


def test_name_lease_is_unique_until_it_expires() -> None:
    s = CriticalState()
    first = s.apply(c.ClaimName("planner", "agent-a", 1000), 10_000)
    assert first.ok and first.lease.owner == "agent-a" and first.lease.expires_at_ms == 11_000
    refused = s.apply(c.ClaimName("planner", "agent-b", 1000), 10_500)
    assert not refused.ok and refused.reason == "held" and refused.lease.owner == "agent-a"
    renewed = s.apply(c.RenewName("planner", "agent-a", 1000), 10_900)
    assert renewed.ok and renewed.lease.expires_at_ms == 11_900 and renewed.lease.epoch == first.lease.epoch
    assert s.query(c.LookupName("planner")).owner == "agent-a"
    taken = s.apply(c.ClaimName("planner", "agent-b", 1000), 12_000)
    assert taken.ok and taken.lease.owner == "agent-b" and taken.lease.epoch > first.lease.epoch
    late = s.apply(c.RenewName("planner", "agent-a", 1000), 12_001)
    assert not late.ok and late.reason == "held"


def test_time_never_runs_backwards_so_a_slow_proposer_cannot_revive_a_lease() -> None:
    s = CriticalState()
    s.apply(c.ClaimName("n", "a", 100), 1_000)
    s.apply(c.Barrier(), 2_000)  # log time is now past the expiry
    assert s.apply(c.RenewName("n", "a", 100), 500).reason == "expired"  # stamped with an old clock
    assert s.now_ms == 2_000
    assert s.query(c.LookupName("n")) is None


def test_release_name_only_by_owner() -> None:
    s = CriticalState()
    s.apply(c.ClaimName("n", "a", 100), 0)
    assert not s.apply(c.ReleaseName("n", "b"), 1).ok
    assert s.apply(c.ReleaseName("n", "a"), 2).ok
    assert s.apply(c.ClaimName("n", "b", 100), 3).ok


def test_fencing_tokens_increase_with_every_grant() -> None:
    s = CriticalState()
    a = s.apply(c.AcquireLock("db", "a", 100), 0)
    assert a.ok
    again = s.apply(c.AcquireLock("db", "a", 100), 50)
    assert again.ok and again.hold.fencing_token == a.hold.fencing_token  # extension, same token
    assert s.apply(c.AcquireLock("db", "b", 100), 60).reason == "held"
    assert not s.apply(c.ReleaseLock("db", "a", a.hold.fencing_token + 1), 70).ok
    assert s.apply(c.ReleaseLock("db", "a", a.hold.fencing_token), 70).ok
    b = s.apply(c.AcquireLock("db", "b", 100), 80)
    assert b.ok and b.hold.fencing_token > a.hold.fencing_token
    c2 = s.apply(c.AcquireLock("db", "c", 100), 1_000)  # b's hold expired
    assert c2.ok and c2.hold.fencing_token > b.hold.fencing_token
    assert not s.apply(c.ReleaseLock("db", "b", b.hold.fencing_token), 1_001).ok


def test_roster_revocation_is_permanent() -> None:
    s = CriticalState()
    assert s.apply(c.AdmitNode("n1"), 0).ok
    assert s.apply(c.RevokeNode("n1", "key leaked"), 0).ok
    assert s.is_revoked("n1") and s.query(c.IsRevoked("n1"))
    assert s.apply(c.AdmitNode("n1"), 0).reason == "revoked"
    assert s.query(c.GetRoster()) == sm.RosterView((), ("n1",))


def test_kv_put_get_delete_cas() -> None:
    s = CriticalState()
    assert s.apply(c.KvCompareAndSet("k", None, b"1"), 0).ok
    miss = s.apply(c.KvCompareAndSet("k", None, b"2"), 0)
    assert not miss.ok and miss.reason == "mismatch" and miss.value == b"1"
    assert s.apply(c.KvCompareAndSet("k", b"1", b"2"), 0).ok
    assert s.query(c.KvGet("k")) == b"2"
    assert s.apply(c.KvDelete("k"), 0).ok
    assert s.apply(c.KvDelete("k"), 0).reason == "absent"
    assert s.apply(c.KvPut("k", b"3"), 0).value == b"3"
    assert s.apply(c.KvCompareAndSet("k", b"3", None), 0).ok
    assert s.query(c.KvGet("k")) is None


def test_query_refuses_a_mutating_command() -> None:
    with pytest.raises(ValueError, match="propose"):
        CriticalState().query(c.KvPut("k", b""))


def test_tables_are_bounded_and_expired_entries_make_room(monkeypatch) -> None:
    monkeypatch.setattr(sm, "NAMES_MAX", 2)
    monkeypatch.setattr(sm, "KV_KEYS_MAX", 1)
    s = CriticalState()
    assert s.apply(c.ClaimName("a", "o", 10), 0).ok
    assert s.apply(c.ClaimName("b", "o", 1000), 0).ok
    assert s.apply(c.ClaimName("c", "o", 10), 5).reason == "table_full"
    assert s.apply(c.ClaimName("c", "o", 10), 20).ok  # "a" expired and was dropped
    assert s.apply(c.KvPut("x", b""), 0).ok
    assert s.apply(c.KvPut("y", b""), 0).reason == "table_full"


OPS = st.lists(
    st.one_of(
        st.builds(c.ClaimName, st.sampled_from("abc"), st.sampled_from(["o1", "o2"]), st.integers(1, 50)),
        st.builds(c.RenewName, st.sampled_from("abc"), st.sampled_from(["o1", "o2"]), st.integers(1, 50)),
        st.builds(c.AcquireLock, st.sampled_from("xy"), st.sampled_from(["o1", "o2"]), st.integers(1, 50)),
        st.builds(c.KvPut, st.sampled_from("pq"), st.binary(max_size=3)),
        st.builds(c.AdmitNode, st.sampled_from(["n1", "n2"])),
        st.builds(c.RevokeNode, st.sampled_from(["n2", "n3"])),
    ).flatmap(lambda cmd: st.tuples(st.just(cmd), st.integers(0, 200))),
    max_size=40,
)


@settings(max_examples=100)
@given(OPS, st.integers(0, 40))
def test_snapshot_restore_equals_replay(ops, cut) -> None:
    """A replica restored from a snapshot mid-log ends identical to one that replayed everything."""
    full, part = CriticalState(), CriticalState()
    for i, (cmd, now) in enumerate(ops):
        r1 = full.apply(cmd, now)
        if i < cut:
            part.apply(cmd, now)
        elif i == cut:
            restored = CriticalState()
            restored.restore(part.snapshot())
            part = restored
            assert part.apply(cmd, now) == r1
        else:
            assert part.apply(cmd, now) == r1
    if cut >= len(ops):
        part.restore(part.snapshot())
    assert part.digest() == full.digest()


def test_restore_refuses_garbage_and_keeps_state() -> None:
    s = CriticalState()
    s.apply(c.KvPut("k", b"v"), 0)
    before = s.digest()
    for bad in [None, {}, {"v": 99}, {**s.snapshot(), "kv": [["k", "not-bytes"]]}, {**s.snapshot(), "extra": 1},
                {**s.snapshot(), "locks": [["l", "o", 5, 10]]}]:
        with pytest.raises(SnapshotError):
            s.restore(bad)
    assert s.digest() == before

"""Membership rules on their own: the transition table, Lifeguard suspicion and awareness, probe order."""

from __future__ import annotations

import math
import random

import pytest

from agentnode import events as ev
from agentnode.membership import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    TIMEOUT,
    TRANSITIONS,
    Awareness,
    MemberRecord,
    ProbeOrder,
    Suspicion,
    push_pull_interval_ms,
    suspicion_timeouts_ms,
    transition,
)
from agentnode.messages import KIND_ALIVE, KIND_DEAD, KIND_LEFT, KIND_SUSPECT
from agentnode.profiles import LAN, LOCAL, MembershipProfile, profile_named


def test_swim_precedence_rules() -> None:
    # alive(i) beats suspect(j) only for i > j (SWIM §4.2); suspect(i) beats alive(j) for i >= j.
    assert transition(SUSPECT, KIND_ALIVE, 3, 3) is None
    assert transition(SUSPECT, KIND_ALIVE, 3, 4) == (ALIVE, ev.MemberAlive)
    assert transition(ALIVE, KIND_SUSPECT, 3, 3) == (SUSPECT, ev.MemberSuspected)
    assert transition(ALIVE, KIND_SUSPECT, 3, 2) is None
    assert transition(SUSPECT, KIND_SUSPECT, 3, 3) is None  # a confirmation, not a transition
    assert transition(SUSPECT, KIND_SUSPECT, 3, 4) == (SUSPECT, ev.MemberSuspected)
    assert transition(ALIVE, KIND_DEAD, 3, 3) == (DEAD, ev.MemberFailed)
    assert transition(SUSPECT, TIMEOUT, 3, 3) == (DEAD, ev.MemberFailed)


def test_dead_and_left_come_back_only_with_a_higher_incarnation() -> None:
    assert transition(DEAD, KIND_ALIVE, 5, 5) is None
    assert transition(DEAD, KIND_ALIVE, 5, 6) == (ALIVE, ev.MemberAlive)
    assert transition(LEFT, KIND_ALIVE, 5, 6) == (ALIVE, ev.MemberAlive)
    assert transition(DEAD, KIND_SUSPECT, 5, 9) is None
    assert transition(LEFT, KIND_DEAD, 5, 9) is None


def test_leave_is_distinguished_from_failure() -> None:
    for state in (ALIVE, SUSPECT, DEAD):
        assert transition(state, KIND_LEFT, 2, 2) == (LEFT, ev.MemberLeft)
    assert transition(LEFT, TIMEOUT, 2, 2) is None


def test_table_covers_only_known_states_and_kinds() -> None:
    for (state, kind), (new_state, _strict, event) in TRANSITIONS.items():
        assert state in (ALIVE, SUSPECT, DEAD, LEFT)
        assert kind in (KIND_ALIVE, KIND_SUSPECT, KIND_DEAD, KIND_LEFT, TIMEOUT)
        assert new_state in (ALIVE, SUSPECT, DEAD, LEFT)
        assert event in (ev.MemberAlive, ev.MemberSuspected, ev.MemberFailed, ev.MemberLeft, ev.MemberUpdated)


def test_suspicion_starts_at_max_and_shrinks_to_min_with_k_confirmations() -> None:
    s = Suspicion(incarnation=1, accuser="a", k=3, min_ms=1_000, max_ms=6_000, now_ms=10_000)
    assert s.deadline_ms == 16_000
    deadlines = [s.deadline_ms]
    for accuser in ("b", "c", "d"):
        assert s.confirm(accuser)
        deadlines.append(s.deadline_ms)
    assert deadlines == sorted(deadlines, reverse=True)
    assert deadlines[-1] == 11_000
    # memberlist suspicion.go: max - log(n+1)/log(k+1) * (max - min)
    assert deadlines[1] == 10_000 + int(6_000 - math.log(2) / math.log(4) * 5_000)
    assert not s.confirm("e")  # bounded at k
    assert not s.confirm("a")  # the accuser does not confirm itself
    assert s.confirmations == 3


def test_suspicion_without_expected_confirmations_uses_min() -> None:
    s = Suspicion(incarnation=0, accuser="a", k=0, min_ms=1_000, max_ms=6_000, now_ms=0)
    assert s.deadline_ms == 1_000
    assert not s.confirm("b")


def test_suspicion_timeouts_scale_with_log_n() -> None:
    assert suspicion_timeouts_ms(4_000, 6, 1) == (4_000, 24_000)
    assert suspicion_timeouts_ms(4_000, 6, 10) == (4_000, 24_000)
    assert suspicion_timeouts_ms(4_000, 6, 1_000) == (12_000, 72_000)  # memberlist at 1000 nodes
    lo, hi = suspicion_timeouts_ms(LAN.suspicion_min_ms_per_log10_nodes, LAN.suspicion_max_timeout_mult, 1_000)
    assert lo < 12_000 and hi < 72_000


def test_push_pull_interval_scales_above_32_nodes() -> None:
    assert push_pull_interval_ms(30_000, 32) == 30_000
    assert push_pull_interval_ms(30_000, 100) == 90_000
    assert push_pull_interval_ms(30_000, 1_000) == 180_000  # anchors.md: 180 s at 1000 nodes


def test_awareness_is_clamped_and_scales_timeouts() -> None:
    a = Awareness(8)
    assert a.scale(500) == 500
    a.apply(3)
    assert a.scale(500) == 2_000
    a.apply(100)
    assert a.score == 7
    a.apply(-100)
    assert a.score == 0


def test_probe_order_visits_every_member_once_per_pass() -> None:
    ids = [f"m{i}" for i in range(50)]
    records = {k: MemberRecord(k, "h:1", ALIVE, 0) for k in ids}
    order = ProbeOrder(random.Random(3))
    first = [order.next(ids, records) for _ in range(50)]
    second = [order.next(ids, records) for _ in range(50)]
    assert sorted(first) == sorted(ids) == sorted(second)  # type: ignore[type-var]
    assert first != second  # reshuffled each pass


def test_probe_order_skips_members_no_longer_probed() -> None:
    ids = ["a", "b", "c"]
    records = {k: MemberRecord(k, "h:1", ALIVE, 0) for k in ids}
    order = ProbeOrder(random.Random(1))
    records["b"].state = DEAD
    seen = {order.next(["a", "c"], records) for _ in range(6)}
    assert seen == {"a", "c"}
    assert ProbeOrder(random.Random(1)).next([], {}) is None


def test_profiles_are_valid_and_named() -> None:
    assert profile_named("lan") is LAN
    assert profile_named("local") is LOCAL
    assert LOCAL.probe_interval_ms < LAN.probe_interval_ms
    with pytest.raises(ValueError, match="lan"):
        profile_named("wan")
    with pytest.raises(ValueError, match="half"):
        MembershipProfile(**{**_fields(LAN), "probe_timeout_ms": 300})
    with pytest.raises(ValueError, match="positive"):
        MembershipProfile(**{**_fields(LAN), "gossip_nodes": 0})


def _fields(p: MembershipProfile) -> dict[str, object]:
    return {name: getattr(p, name) for name in p.__dataclass_fields__}


def test_protocol_doc_table_matches_the_code() -> None:
    """docs/protocols/membership.md shows TRANSITIONS; keep them in step."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocols" / "membership.md").read_text()
    names = {KIND_ALIVE: "alive(i)", KIND_SUSPECT: "suspect(i)", KIND_DEAD: "dead(i)", KIND_LEFT: "left(i)",
             TIMEOUT: "suspicion timeout"}
    rows = [line for line in doc.splitlines() if line.startswith("| ") and " (j) |" in line]
    assert len(rows) == len(TRANSITIONS)
    for (state, kind), (new_state, strict, event) in TRANSITIONS.items():
        cond = "—" if kind == TIMEOUT else ("i > j" if strict else "i ≥ j")
        assert f"| {state} (j) | {names[kind]} | {cond} | {new_state} | {event.__name__} |" in rows

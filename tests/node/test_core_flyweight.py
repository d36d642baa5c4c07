"""Decision 0059: member records shared between cores through one MemberInterner must behave exactly as
private ones (a change in one core never shows in another), and a join push-pulls one seed only."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from agentnode.core import NodeCore
from agentnode.membership import ALIVE, DEAD, SUSPECT, MemberInterner
from agentnode.messages import KIND_ALIVE, KIND_DEAD, KIND_SUSPECT, Gossip, PushPull, PushPullReply, Update, decode, encode
from agentnode.profiles import LAN

PROFILE = replace(LAN, name="flyweight-test")
CLUSTER = "test"


def _as_lists(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def make_core(name: str, interner: MemberInterner | None, seed: int = 1) -> NodeCore:
    core = NodeCore(name, f"{name}:7946", cluster=CLUSTER, profile=PROFILE, rng=random.Random(seed), interner=interner)
    core.start(0)
    core.messages_to_send()
    return core


def feed(core: NodeCore, sender: str, updates: list[Update], now_ms: int, *, full_state: bool = False) -> None:
    message = PushPull(False, f"{sender}:7946", tuple(updates)) if full_state else Gossip(tuple(updates))
    core.receive(sender, _as_lists(encode(message, CLUSTER)), now_ms)
    core.messages_to_send()
    while core.next_event() is not None:
        pass


def alive(i: int, incarnation: int = 0) -> Update:
    return Update(KIND_ALIVE, f"m{i}", incarnation, f"m{i}:7946", "", {})


def test_cores_given_one_interner_share_records_and_stay_independent() -> None:
    shared = MemberInterner()
    a, b = make_core("a", shared), make_core("b", shared, seed=2)
    states = [alive(i) for i in range(20)]
    feed(a, "m0", states, 1, full_state=True)
    feed(b, "m0", states, 1, full_state=True)
    assert all(a._members[f"m{i}"] is b._members[f"m{i}"] for i in range(20))

    # `a` suspects m5 and later declares it dead; `b` keeps it alive, and a refutation moves only b.
    feed(a, "m1", [Update(KIND_SUSPECT, "m5", 0, "m5:7946", "m1", None)], 10)
    assert a.member("m5").state == SUSPECT and b.member("m5").state == ALIVE
    feed(a, "m2", [Update(KIND_DEAD, "m5", 0, "m5:7946", "m2", None)], 1_000)  # past the young-suspicion hold (0045)
    assert a.member("m5").state == DEAD and b.member("m5").state == ALIVE
    feed(b, "m5", [alive(5, incarnation=1)], 30)
    assert (a.member("m5").state, a.member("m5").incarnation) == (DEAD, 0)
    assert (b.member("m5").state, b.member("m5").incarnation) == (ALIVE, 1)
    # Equal facts are shared again once both cores hold them.
    feed(a, "m5", [alive(5, incarnation=1)], 40)
    assert a._members["m5"] is b._members["m5"]
    assert a.member("m5").state == ALIVE


def test_private_and_shared_interners_give_the_same_protocol_behaviour() -> None:
    """Same inputs, same rng: identical frames out, whether or not records are shared with another core."""
    shared = MemberInterner()
    other = make_core("other", shared, seed=9)
    feed(other, "m0", [alive(i) for i in range(30)], 1, full_state=True)
    runs = []
    for interner in (None, shared):
        core = make_core("x", interner, seed=4)
        out: list[object] = []
        feed(core, "m0", [alive(i) for i in range(30)], 1, full_state=True)
        feed(core, "m3", [Update(KIND_SUSPECT, "m7", 0, "m7:7946", "m3", None)], 5)
        now = 5
        for _ in range(40):
            now = max(now + 1, core.get_timer() or now)
            core.handle_timer(now)
            out += [(o.address, o.frame) for o in core.messages_to_send()]
        runs.append((out, [(m.node_id, m.state, m.incarnation) for m in core.members()]))
    assert runs[0] == runs[1]
    assert ("m7", DEAD, 0) in runs[0][1]


def test_a_reaped_member_rejoins_with_a_fresh_record() -> None:
    profile = replace(PROFILE, dead_reap_ms=20_000)
    core = NodeCore("a", "a:7946", cluster=CLUSTER, profile=profile, rng=random.Random(1), interner=MemberInterner())
    core.start(0)
    feed(core, "m0", [alive(i) for i in range(5)], 1, full_state=True)
    feed(core, "m1", [Update(KIND_SUSPECT, "m3", 0, "m3:7946", "m1", None)], 2)
    feed(core, "m2", [Update(KIND_DEAD, "m3", 0, "m3:7946", "m2", None)], 3)
    now = 3
    while core.member("m3") is not None and now < 10 * profile.dead_reap_ms:
        now = max(now + 1, core.get_timer() or now)
        core.handle_timer(now)
        core.messages_to_send()
    assert core.member("m3") is None and core.counters["members_reaped"] == 1
    feed(core, "m3", [alive(3, incarnation=2)], now + 1)
    # (Nobody answered our probes meanwhile, so the others are dead by now.) Listed once, probed again.
    assert core.member("m3").state == ALIVE and core._live_members().count("m3") == 1
    assert core.live_count() == len(core._live_members())


def test_join_push_pulls_one_seed_and_announces_to_the_others() -> None:
    core = NodeCore("j", "j:7946", cluster=CLUSTER, profile=PROFILE, rng=random.Random(3))
    core.start(0)
    core.add_seeds(["s1:7946", "s2:7946", "s3:7946"], 0)
    out = core.messages_to_send()
    kinds = {o.address: type(decode(o.frame, CLUSTER)) for o in out}
    assert sorted(kinds) == ["s1:7946", "s2:7946", "s3:7946"]
    assert sorted(k.__name__ for k in kinds.values()) == ["Gossip", "Gossip", "PushPull"]
    first = next(a for a, k in kinds.items() if k is PushPull)
    for o in out:
        message = decode(o.frame, CLUSTER)
        if isinstance(message, Gossip):
            assert [(u.kind, u.node_id) for u in message.updates] == [(KIND_ALIVE, "j")]
    # No reply: the next attempt (after the backoff) goes to the next seed, again only one push-pull.
    pushed: list[str] = []
    now = 0
    for _ in range(20):
        now = core.get_timer()
        core.handle_timer(now)
        pushed = [o.address for o in core.messages_to_send() if isinstance(decode(o.frame, CLUSTER), PushPull)]
        if pushed:
            break
    assert len(pushed) == 1 and pushed[0] != first
    # A reply joins: no further join push-pulls.
    reply = PushPullReply((Update(KIND_ALIVE, "s", 0, pushed[0], "", {}),))
    core.receive("s", _as_lists(encode(reply, CLUSTER)), now + 1)
    core.messages_to_send()
    assert core.live_count() == 1 and core.counters["joins_sent"] == 2


def test_interner_is_bounded_and_rejects_foreign_objects() -> None:
    small = MemberInterner(max_entries=4)
    records = [small.record(f"m{i}", "h:1", ALIVE, 0, None) for i in range(10)]
    assert len(small._records) <= 4
    assert small.record("m9", "h:1", ALIVE, 0, None) is records[9]
    with pytest.raises(ValueError, match="MemberInterner"):
        NodeCore("x", "x:1", cluster=CLUSTER, profile=PROFILE, rng=random.Random(1), interner={})  # type: ignore[arg-type]


def test_a_joiner_runs_three_follow_up_push_pulls_at_doubling_spacing() -> None:
    """0059 amendment: joins gossiped while a joiner is still unknown skip it; three follow-up pulls
    (2-6, 4-12, 8-24 probe periods apart) repair that before the periodic push-pull takes over."""
    # Nobody answers this core's probes: huge suspicion timeouts keep its members live (suspect).
    profile = replace(PROFILE, suspicion_min_ms_per_log10_nodes=600_000)
    core = NodeCore("j", "j:7946", cluster=CLUSTER, profile=profile, rng=random.Random(5))
    core.start(0)
    core.add_seeds(["m0:7946"], 0)
    core.messages_to_send()
    core.receive("m0", _as_lists(encode(PushPullReply(tuple(alive(i) for i in range(5))), CLUSTER)), 1)
    core.messages_to_send()
    pulls: list[int] = []
    now = 1
    while now < 55_000:
        now = max(now + 1, core.get_timer() or now)
        core.handle_timer(now)
        pulls += [now for o in core.messages_to_send() if isinstance(decode(o.frame, CLUSTER), PushPull)]
    interval = profile.probe_interval_ms
    gaps = [b - a for a, b in zip([1] + pulls, pulls)]
    assert len(gaps) == 4, pulls
    for gap, scale in zip(gaps, (1, 2, 4)):
        assert 2 * scale * interval <= gap < 6 * scale * interval, (gaps, scale)
    assert gaps[3] == profile.push_pull_interval_ms  # then the periodic push-pull (5 members: unscaled)

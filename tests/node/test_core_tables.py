"""NodeCore's member table at scale (decision 0052): the live list with lazy compaction, the
seed-only address index and interned strings must not change what the protocol does."""

from __future__ import annotations

import random
from dataclasses import replace

from agentnode.core import NodeCore
from agentnode.messages import KIND_ALIVE, KIND_LEFT, Ack, Gossip, Ping, PushPull, Update, decode, encode
from agentnode.profiles import LAN

PROFILE = replace(LAN, name="tables-test")
CLUSTER = "test"


def member_id(i: int) -> str:
    return f"m{i:04d}"


def member_address(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250}:7946"


def make_core(seed: int = 1) -> NodeCore:
    core = NodeCore("self", "10.0.0.1:7946", cluster=CLUSTER, profile=PROFILE, rng=random.Random(seed))
    core.start(0)
    core.messages_to_send()
    return core


def learn(core: NodeCore, ids: range, now_ms: int = 1) -> None:
    """Feed a push-pull (as msgpack would deliver it: lists) naming members `ids` alive."""
    states = tuple(Update(KIND_ALIVE, member_id(i), 0, member_address(i), "", {}) for i in ids)
    frame = encode(PushPull(False, member_address(ids[0]), states), CLUSTER)
    core.receive(member_id(ids[0]), _as_lists(frame), now_ms)
    core.messages_to_send()


def gossip(core: NodeCore, updates: list[Update], now_ms: int) -> None:
    core.receive(member_id(0), _as_lists(encode(Gossip(tuple(updates)), CLUSTER)), now_ms)


def _as_lists(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def probe_targets(core: NodeCore, start_ms: int, periods: int) -> list[str]:
    """Node ids pinged by the round robin over `periods` probe periods (every target answers at once)."""
    targets = []
    seqs = set()
    now = start_ms
    for _ in range(periods):
        now = max(now, core.get_timer() or now)
        core.handle_timer(now)
        for out in core.messages_to_send():
            message = decode(out.frame, CLUSTER)
            if isinstance(message, Ping) and out.peer_id is not None and message.seq not in seqs:
                seqs.add(message.seq)  # the second direct ping of a probe reuses its sequence number
                targets.append(out.peer_id)
                core.receive(out.peer_id, _as_lists(encode(Ack(message.seq, ()), CLUSTER)), now)
                core.messages_to_send()
        now += 1
    return targets


def test_departed_members_leave_the_live_set_and_readmitted_ones_return_once() -> None:
    core = make_core()
    learn(core, range(1, 201))
    assert core.live_count() == 200
    # 150 leave gracefully (no suspicion timers involved): more than enough to force a compaction.
    gossip(core, [Update(KIND_LEFT, member_id(i), 0, member_address(i), member_id(i), None) for i in range(1, 64)], 2)
    gossip(core, [Update(KIND_LEFT, member_id(i), 0, member_address(i), member_id(i), None) for i in range(64, 127)], 3)
    gossip(core, [Update(KIND_LEFT, member_id(i), 0, member_address(i), member_id(i), None) for i in range(127, 151)], 4)
    assert core.live_count() == 50
    # 20 of them come back with a higher incarnation.
    gossip(core, [Update(KIND_ALIVE, member_id(i), 1, member_address(i), "", {}) for i in range(1, 21)], 5)
    live = {member_id(i) for i in range(1, 21)} | {member_id(i) for i in range(151, 201)}
    assert core.live_count() == len(live) == 70
    assert {m.node_id for m in core.members() if m.state == "alive"} == live | {"self"}
    # Probing covers exactly the live members: no departed one, none left out.
    targets = probe_targets(core, 10, 3 * len(live))
    assert set(targets) == live
    # Once the current pass is used up, a rebuilt pass holds each live member exactly once.
    tail = targets[-len(live):]
    assert any(sorted(targets[i:i + len(live)]) == sorted(live) for i in range(len(targets) - len(live) + 1))
    assert len(tail) == len(live)


def test_a_new_seed_address_held_by_a_live_member_is_not_dialled() -> None:
    core = make_core()
    learn(core, range(1, 11))
    core.add_seeds([member_address(5), "10.9.9.9:7946"], 10)
    dialled = [out.address for out in core.messages_to_send()]
    assert member_address(5) not in dialled
    assert "10.9.9.9:7946" in dialled
    # Once that member has left, its seed address is contacted again at the next seed tick.
    gossip(core, [Update(KIND_LEFT, member_id(5), 0, member_address(5), member_id(5), None)], 11)
    seen = set()
    now = 11
    for _ in range(200):
        now = max(now + 1, core.get_timer() or now)
        core.handle_timer(now)
        seen.update(out.address for out in core.messages_to_send())
        if member_address(5) in seen:
            break
    assert member_address(5) in seen


def test_cores_in_one_process_share_member_strings() -> None:
    a, b = make_core(1), make_core(2)
    learn(a, range(1, 6))
    learn(b, range(1, 6))
    for ma, mb in zip(a.members(), b.members()):
        if ma.node_id != "self":
            assert ma.node_id is mb.node_id and ma.address is mb.address


def test_a_seed_answered_by_a_node_never_admitted_does_not_break_the_core() -> None:
    """The seed's ack names its sender as the seed's alias; that sender never becomes a member (its
    push-pull is lost). Seed ticks and new seeds must treat the alias as not live, not raise."""
    core = make_core()
    learn(core, range(1, 4))  # with live members, a seed is contacted by a ping (not a join)
    core.add_seeds(["10.9.9.9:7946"], 1)
    pings = [decode(out.frame, CLUSTER) for out in core.messages_to_send()]
    (ping,) = [m for m in pings if isinstance(m, Ping)]
    core.receive("stranger", _as_lists(encode(Ack(ping.seq, ()), CLUSTER)), 2)
    core.messages_to_send()
    assert core.member("stranger") is None
    now = 3
    redialled = False
    for _ in range(200):  # seed ticks re-contact the seed: its alias is not a live member
        now = max(now + 1, core.get_timer() or now)
        core.handle_timer(now)
        redialled |= any(out.address == "10.9.9.9:7946" for out in core.messages_to_send())
        if redialled:
            break
    assert redialled
    core.add_seeds(["10.9.9.9:7946", "10.9.9.8:7946"], now + 1)  # a known seed again, and a new one
    assert any(out.address == "10.9.9.8:7946" for out in core.messages_to_send())

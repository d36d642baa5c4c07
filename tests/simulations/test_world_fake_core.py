"""The world's machinery (scheduler, network, faults, views, invariants, digest) driven by a tiny
heartbeat core defined here, so these tests do not depend on how the real NodeCore evolves."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from agentnode.simulations import faults as f
from agentnode.simulations.invariants import MembershipConverges, NoLingeringFalseDeath
from agentnode.simulations.views import ALIVE, DEAD, LEFT
from agentnode.simulations.world import CoreTimerLoop, World, WorldConfig, node_name

HEARTBEAT_MS = 500
SUSPECT_AFTER_MS = 2_000
DEAD_AFTER_MS = 4_000


@dataclass(frozen=True, slots=True)
class Out:
    address: str
    peer_id: str | None
    frame: Any


@dataclass(frozen=True, slots=True)
class MemberJoined:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberAlive:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberFailed:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    node_id: str


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    address: str
    state: str


class HeartbeatCore:
    """All-to-all heartbeats carrying the member list; silence means suspect, then dead."""

    def __init__(self, node_id: str, address: str, *, rng: random.Random, incarnation: int) -> None:
        self.node_id, self.address, self.rng = node_id, address, rng
        self.known: dict[str, list[Any]] = {}  # id -> [address, state, last_heard]
        self.seeds: list[str] = []
        self.out: list[Out] = []
        self.events: list[Any] = []
        self.timer: int | None = None
        self.stopped = False

    def start(self, now_ms: int) -> None:
        self.timer = now_ms

    def add_seeds(self, addresses: list[str], now_ms: int) -> None:
        self.seeds = list(addresses)

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        if self.stopped or not isinstance(frame, dict):
            return
        if frame.get("t") == "leave":
            entry = self.known.get(sender_id)
            if entry and entry[1] != "left":
                entry[1] = "left"
                self.events.append(MemberLeft(sender_id))
            return
        self._heard(sender_id, frame["addr"], now_ms)
        for node_id, address in frame["members"]:
            if node_id != self.node_id and node_id not in self.known:
                self.known[node_id] = [address, "alive", now_ms]
                self.events.append(MemberJoined(node_id))

    def peer_unreachable(self, address: str, peer_id: str | None, now_ms: int) -> None:
        pass

    def handle_timer(self, now_ms: int) -> None:
        if self.stopped:
            self.timer = None
            return
        for node_id, entry in self.known.items():
            silent = now_ms - entry[2]
            if entry[1] == "alive" and silent > SUSPECT_AFTER_MS:
                entry[1] = "suspect"
                self.events.append(MemberSuspected(node_id))
            if entry[1] == "suspect" and silent > DEAD_AFTER_MS:
                entry[1] = "dead"
                self.events.append(MemberFailed(node_id))
        members = [[i, e[0]] for i, e in self.known.items() if e[1] == "alive"] + [[self.node_id, self.address]]
        frame = {"t": "hb", "addr": self.address, "members": members}
        targets = [(e[0], i) for i, e in self.known.items() if e[1] in ("alive", "suspect")]
        # keep knocking on dead members and seeds so restarts and healed partitions re-merge
        targets += [(e[0], i) for i, e in self.known.items() if e[1] == "dead" and self.rng.random() < 0.2]
        targets += [(a, None) for a in self.seeds]
        for address, peer in targets:
            self.out.append(Out(address, peer, frame))
        self.timer = now_ms + HEARTBEAT_MS

    def get_timer(self) -> int | None:
        return self.timer

    def messages_to_send(self) -> list[Out]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> Any | None:
        return self.events.pop(0) if self.events else None

    def leave(self, now_ms: int) -> None:
        for node_id, entry in self.known.items():
            self.out.append(Out(entry[0], node_id, {"t": "leave"}))
        self.stopped = True
        self.timer = None

    def members(self) -> list[Member]:
        return [Member(i, e[0], e[1]) for i, e in self.known.items()]

    def _heard(self, sender_id: str, address: str, now_ms: int) -> None:
        entry = self.known.get(sender_id)
        if entry is None:
            self.known[sender_id] = [address, "alive", now_ms]
            self.events.append(MemberJoined(sender_id))
            return
        entry[2] = now_ms
        if entry[1] != "alive":
            entry[1] = "alive"
            self.events.append(MemberAlive(sender_id))


def make_world(n: int = 12, seed: int = 1, plan: list[tuple[int, f.Fault]] | None = None, **kw: Any) -> World:
    invariants = kw.pop("invariants", [MembershipConverges(15_000), NoLingeringFalseDeath(15_000)])
    starts = [(i * 50, f.Start(i)) for i in range(n)]
    return World(WorldConfig(nodes=n, seed=seed, **kw), HeartbeatCore, plan=starts + (plan or []), invariants=invariants)


def test_nodes_join_and_converge() -> None:
    world = make_world()
    assert world.run(10_000) is None
    assert world.converged()
    assert world.converged_at_ms is not None and world.converged_at_ms < 5_000
    assert world.view_mismatches() == []
    assert world.counters["frames_delivered"] > 0
    assert world.counters["false_suspicions"] == 0


def test_same_seed_same_digest_and_other_seed_differs() -> None:
    plan = [(3_000, f.Loss(0.05)), (4_000, f.Crash(3)), (6_000, f.Restart(3, keep_data=False))]
    digests = []
    for seed in (5, 5, 6):
        world = make_world(seed=seed, plan=plan)
        world.run(12_000)
        digests.append(world.trace.hexdigest())
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_crash_is_detected_and_restart_rejoins() -> None:
    world = make_world(plan=[(3_000, f.Crash(4)), (12_000, f.Restart(4))])
    world.watch("dead", 4, ["dead"], 3_000)
    assert world.run(11_000) is None
    assert world.views.alive_seen_by[4] == 0
    assert all(world.views.state(i, 4) == DEAD for i in range(12) if i != 4)
    assert len(world.watches[0].first_ms) == 11
    assert min(world.watches[0].first_ms.values()) >= 3_000 + DEAD_AFTER_MS - HEARTBEAT_MS
    assert world.run(20_000) is None
    assert world.views.alive_seen_by[4] == 11
    assert world.converged()


def test_graceful_leave_is_seen_as_left_then_process_stops() -> None:
    world = make_world(plan=[(3_000, f.Leave(2))])
    assert world.run(8_000) is None
    assert not world.nodes[2].running
    assert all(world.views.state(i, 2) == LEFT for i in range(12) if i != 2)
    assert world.counters["false_deaths"] == 0


def test_partition_splits_views_and_heal_reconverges() -> None:
    groups = (tuple(range(6)), tuple(range(6, 12)))
    world = make_world(plan=[(3_000, f.Partition(groups)), (10_000, f.Heal())])
    assert world.run(9_000) is None
    assert world.views.state(0, 7) == DEAD and world.views.state(7, 0) == DEAD
    assert world.views.state(0, 5) == ALIVE
    assert world.counters["false_deaths"] == 0, "deaths across a partition are not false"
    assert world.run(25_000) is None
    assert world.converged()
    assert world.convergence_log[-1][0] == 10_000


def test_one_way_partition_only_blocks_one_direction() -> None:
    world = make_world(n=4, plan=[(2_000, f.Partition(((0,), (1, 2, 3)), one_way=True))])
    world.run(9_000)
    assert world.network.blocked(0, 1) and not world.network.blocked(1, 0)
    # 1..3 never hear 0; 0 still hears them
    assert world.views.state(1, 0) == DEAD
    assert world.views.state(0, 1) == ALIVE


def test_pause_queues_frames_and_resume_delivers_them() -> None:
    world = make_world(plan=[(3_000, f.Pause(1, 6_000))])
    world.run(8_000)
    assert world.nodes[1].paused and len(world.nodes[1].inbox) > 0
    assert world.views.state(0, 1) == DEAD
    assert not world.quiet
    world.run(20_000)
    assert not world.nodes[1].paused and not world.nodes[1].inbox
    assert world.converged()


def test_noise_faults_keep_the_world_deterministic_and_convergent() -> None:
    plan = [(0, f.Duplicate(0.2)), (0, f.Reorder(0.2)), (2_000, f.Drift(3, ppm=50_000, step_ms=700)),
            (2_500, f.Clog(5, egress_bytes_per_s=20_000)), (6_000, f.Unclog(5))]
    world = make_world(plan=plan)
    assert world.run(20_000) is None
    assert world.network.duplicated > 0 and world.network.reordered > 0
    assert world.converged()


def test_clock_drift_maps_local_deadlines_back_to_global_time() -> None:
    world = make_world(n=2)
    node = world.nodes[0]
    node.clock_g0, node.clock_l0, node.clock_ppm = 1_000, 77_777, -30_000
    for local in range(77_777, 90_000, 37):
        g = node.global_ms(local)
        assert node.local_ms(g) >= local > node.local_ms(g - 1)


def test_invariant_fires_on_a_deliberately_broken_network() -> None:
    """A healthy node whose every inbound frame is lost is wrongly dead forever: the checker must say so."""
    world = make_world(plan=[(3_000, f.NodeLoss(7, inbound=1.0))])
    violation = world.run(60_000)
    assert violation is not None
    assert violation.invariant == "no-lingering-false-death"
    assert node_name(7) in violation.message
    assert violation.time_ms < 30_000


def test_convergence_invariant_fires_when_a_core_never_declares_the_dead() -> None:
    class NeverGivesUp(HeartbeatCore):
        def handle_timer(self, now_ms: int) -> None:
            for entry in self.known.values():
                entry[2] = max(entry[2], now_ms - 1)  # pretends everyone just spoke
            super().handle_timer(now_ms)

    world = World(WorldConfig(nodes=5, seed=3), NeverGivesUp, plan=[(i * 10, f.Start(i)) for i in range(5)] + [(2_000, f.Crash(1))],
                  invariants=[MembershipConverges(10_000)])
    violation = world.run(30_000)
    assert violation is not None and violation.invariant == "membership-converges"
    assert "n00001 (stopped)" in violation.message


def test_a_core_that_never_moves_its_timer_is_reported() -> None:
    class Stuck(HeartbeatCore):
        def handle_timer(self, now_ms: int) -> None:
            self.timer = now_ms

    world = World(WorldConfig(nodes=2, seed=1), Stuck, plan=[(0, f.Start(0))])
    with pytest.raises(CoreTimerLoop, match="n00000"):
        world.run(1_000)


def test_frames_cross_the_wire_as_msgpack() -> None:
    seen: list[Any] = []

    class Recorder(HeartbeatCore):
        def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
            seen.append(frame)
            super().receive(sender_id, frame, now_ms)

        def handle_timer(self, now_ms: int) -> None:
            super().handle_timer(now_ms)
            for out in self.out:
                out.frame["tuple"] = (1, 2)

    world = World(WorldConfig(nodes=2, seed=1), Recorder, plan=[(0, f.Start(0)), (0, f.Start(1))])
    world.run(2_000)
    assert seen and seen[0]["tuple"] == [1, 2]
    assert world.counters["bytes_sent"] > 0

"""The name lease core (node/names.py) by hand and against the deterministic Raft stand-in."""

from __future__ import annotations

import random

import pytest

from agentnode.consensus import commands as c
from agentnode.consensus.base import NoQuorum
from agentnode.consensus.memory_group import MemoryCluster
from agentnode.consensus.state_machine import Lease, LeaseResult
from agentnode.names import (
    CONFIRMED,
    LOST,
    NAME_MARKER_KEY,
    PENDING,
    UNCONFIRMED,
    AgentNameConfirmed,
    AgentNameLost,
    AgentNameUnconfirmed,
    NameConfig,
    NameLeases,
    NameOp,
    lease_owner,
    marker_of,
    parse_marker,
)

TTL = 3_000


def _core(node: str = "n1", seed: int = 1) -> NameLeases:
    return NameLeases(node, random.Random(seed), NameConfig(ttl_ms=TTL))


def _ok(name: str, owner: str, epoch: int = 1, expires: int = TTL) -> LeaseResult:
    return LeaseResult(True, Lease(name, owner, expires, epoch))


def _events(core: NameLeases) -> list[object]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def test_a_confirmed_claim_is_renewed_at_a_third_of_the_ttl_with_jitter() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    assert op.kind == "claim" and op.owner == "n1/a1" and op.ttl_ms == TTL
    assert core.state("a1").state == PENDING
    assert core.on_result(op.op_id, 20, result=_ok("alice", op.owner)) == CONFIRMED
    assert _events(core) == [AgentNameConfirmed("a1", "alice", 1)]
    state = core.state("a1")
    assert state.valid_until_ms == int(TTL * 0.9)  # from when the claim was sent, minus the skew allowance
    due = core.get_timer()
    assert TTL // 3 * 0.9 <= due <= TTL // 3 * 1.1
    assert core.handle_timer(due - 1) == []
    [renew] = core.handle_timer(due)
    assert renew.kind == "renew" and renew.name == "alice"
    assert core.on_result(renew.op_id, due + 5, result=_ok("alice", op.owner, expires=due + TTL)) == CONFIRMED
    assert _events(core) == []  # a renewal of the same grant is not news
    assert core.state("a1").valid_until_ms == due + int(TTL * 0.9)


def test_a_first_claim_refused_because_held_reports_taken_and_forgets_the_agent() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    held = LeaseResult(False, Lease("alice", "n2/x", 9_999, 4), "held")
    assert core.on_result(op.op_id, 5, result=held) == "taken"
    assert core.state("a1") is None and core.release("a1") is None
    full = core.claim("a1", "alice", 10)
    assert core.on_result(full.op_id, 11, result=LeaseResult(False, None, "table_full")) == "full"


def test_no_quorum_registers_unconfirmed_and_retries_with_backoff_until_confirmed() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    assert core.on_result(op.op_id, 10, error="not_applied", detail="NoQuorum") == UNCONFIRMED
    [event] = _events(core)
    assert isinstance(event, AgentNameUnconfirmed)
    gaps = []
    now = 10
    for _ in range(5):
        due = core.get_timer()
        gaps.append(due - now)
        [retry] = core.handle_timer(due)
        assert retry.kind == "claim"
        now = due + 1
        core.on_result(retry.op_id, now, error="not_applied")
    assert gaps[-1] > gaps[0] and max(gaps) <= TTL // 3 * 1.1  # doubles, capped at a third of the TTL
    due = core.get_timer()
    [retry] = core.handle_timer(due)
    assert core.on_result(retry.op_id, due + 1, result=_ok("alice", retry.owner, epoch=7)) == CONFIRMED
    assert _events(core) == [AgentNameConfirmed("a1", "alice", 7)]


def test_renewals_that_never_land_downgrade_the_name_when_the_lease_runs_out_locally() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    core.on_result(op.op_id, 1, result=_ok("alice", op.owner))
    _events(core)
    now = handled = core.get_timer()
    while core.state("a1").state == CONFIRMED:
        for renew in core.handle_timer(now):
            core.on_result(renew.op_id, now + 1, error="not_applied")
        assert now < TTL, "must downgrade before the group's lease could expire"
        handled, now = now, core.get_timer()
    assert handled == int(TTL * 0.9)
    assert [type(e) for e in _events(core)] == [AgentNameUnconfirmed]
    assert parse_marker(marker_of(core.state("a1").state, 1)) == (UNCONFIRMED, 0)


def test_a_renewal_answer_that_arrives_after_the_local_deadline_does_not_confirm() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    assert core.on_result(op.op_id, int(TTL * 0.95), result=_ok("alice", op.owner)) == UNCONFIRMED
    assert core.handle_timer(int(TTL * 0.95))[0].kind == "claim"


def test_renewal_refused_because_another_owner_holds_it_loses_the_name_for_good() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    core.on_result(op.op_id, 1, result=_ok("alice", op.owner))
    [renew] = core.handle_timer(core.get_timer())
    held = LeaseResult(False, Lease("alice", "n2/b1", 99_999, 2), "held")
    assert core.on_result(renew.op_id, renew.ttl_ms, result=held) == LOST
    assert _events(core)[-1] == AgentNameLost("a1", "alice", "n2/b1", "the group gave the name to n2/b1")
    assert core.get_timer() is None and core.handle_timer(10**9) == []
    assert core.release("a1") is None  # nothing to give back


def test_renewal_of_an_expired_lease_claims_again_at_once() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    core.on_result(op.op_id, 1, result=_ok("alice", op.owner))
    [renew] = core.handle_timer(core.get_timer())
    assert core.on_result(renew.op_id, 1_100, result=LeaseResult(False, None, "expired")) == UNCONFIRMED
    [claim] = core.handle_timer(1_100)
    assert claim.kind == "claim"
    assert core.on_result(claim.op_id, 1_120, result=_ok("alice", op.owner, epoch=5)) == CONFIRMED
    assert _events(core)[-1] == AgentNameConfirmed("a1", "alice", 5)


def test_release_returns_the_op_and_late_results_are_ignored() -> None:
    core = _core()
    op = core.claim("a1", "alice", 0)
    release = core.release("a1")
    assert isinstance(release, NameOp) and release.kind == "release" and release.owner == op.owner
    assert core.on_result(op.op_id, 5, result=_ok("alice", op.owner)) is None
    assert core.counters["results_stale"] == 1 and core.state("a1") is None
    with pytest.raises(ValueError):
        core.claim("a2", "bob", 0) and core.claim("a2", "bob", 0)


def test_lease_owner_and_markers() -> None:
    assert lease_owner("node1", "a@node1") == "node1/a@node1"
    long_owner = lease_owner("n" * 60, "x" * 120)
    assert len(long_owner) <= c.ID_CHARS_MAX and long_owner.startswith("n" * 60 + "/#")
    assert lease_owner("n" * 60, "x" * 120) != lease_owner("n" * 60, "y" * 120)
    assert parse_marker(marker_of(CONFIRMED, 12)) == (CONFIRMED, 12)
    assert parse_marker(marker_of(PENDING, 0)) == (UNCONFIRMED, 0)
    assert parse_marker(marker_of(LOST, 3)) == (LOST, 0)
    assert parse_marker("confirmed:junk") == (UNCONFIRMED, 0)
    assert parse_marker(None) is None
    assert NAME_MARKER_KEY.startswith("agentnode.")
    with pytest.raises(ValueError):
        NameConfig(ttl_ms=10)


# -- against the deterministic Raft stand-in ------------------------------------------------------------


class _World:
    """Three nodes, each a voter with one NameLeases core, over a MemoryCluster; ops run at once."""

    def __init__(self, seed: int, nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.cut: set[str] = set()
        self.group = MemoryCluster(nodes, reachable=lambda a, b: (a in self.cut) == (b in self.cut))
        self.cores = {n: NameLeases(n, random.Random(f"{seed}:{n}"), NameConfig(ttl_ms=TTL)) for n in nodes}
        self.now = 1_000
        self.outcomes: dict[tuple[str, str], str | None] = {}

    def run(self, node: str, op: NameOp) -> None:
        command = {"claim": lambda: c.ClaimName(op.name, op.owner, op.ttl_ms),
                   "renew": lambda: c.RenewName(op.name, op.owner, op.ttl_ms),
                   "release": lambda: c.ReleaseName(op.name, op.owner)}[op.kind]()
        try:
            result = self.group.submit(node, command, self.now)
        except NoQuorum:
            self.outcomes[(node, op.agent_id)] = self.cores[node].on_result(op.op_id, self.now, error="not_applied")
            return
        if op.kind != "release":
            self.outcomes[(node, op.agent_id)] = self.cores[node].on_result(op.op_id, self.now, result=result)

    def step(self, ms: int) -> None:
        self.now += ms
        for node, core in self.cores.items():
            for op in core.handle_timer(self.now):
                self.run(node, op)

    def confirmed(self, name: str) -> list[str]:
        return [n for n, core in self.cores.items() for s in core.states() if s.name == name and s.state == CONFIRMED]

    def holder(self, name: str) -> str | None:
        lease = self.group.replica(self.group.leader or "n1").query(c.LookupName(name))
        return None if lease is None else lease.owner


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_claims_through_the_stand_in_exactly_one_wins(seed: int) -> None:
    world = _World(seed)
    order = list(world.cores)
    random.Random(seed).shuffle(order)
    ops = {n: world.cores[n].claim(f"agent-{n}", "alice", world.now) for n in order}
    for n in order:
        world.run(n, ops[n])
    outcomes = {n: world.outcomes[(n, f"agent-{n}")] for n in order}
    assert sorted(outcomes.values()) == [CONFIRMED, "taken", "taken"]
    assert outcomes[order[0]] == CONFIRMED and world.holder("alice") == f"{order[0]}/agent-{order[0]}"


@pytest.mark.parametrize("seed", range(8))
def test_partitions_never_leave_two_confirmed_holders_and_a_cut_off_holder_is_replaced(seed: int) -> None:
    """Random partitions for 60 simulated seconds: at most one node believes it holds the name at any time."""
    rng = random.Random(seed)
    world = _World(seed)
    nodes = list(world.cores)
    for n in nodes:
        world.run(n, world.cores[n].claim(f"agent-{n}", "alice", world.now))
    # the two losers keep trying as background claimers: re-add them unconfirmed (a name registered
    # without quorum earlier) so they compete whenever the holder's lease runs out
    for n in nodes:
        if world.outcomes[(n, f"agent-{n}")] == "taken":
            op = world.cores[n].claim(f"agent-{n}", "alice", world.now)
            world.cores[n].on_result(op.op_id, world.now, error="not_applied")
    handovers = 0
    last = world.holder("alice")
    for _ in range(600):
        if rng.random() < 0.05:
            world.cut = set(rng.sample(nodes, rng.choice([0, 1, 1, 2])))
        world.step(100)
        assert len(world.confirmed("alice")) <= 1, f"two confirmed holders at {world.now}"
        holder = world.holder("alice")
        if holder is not None and holder != last:
            handovers += 1
            last = holder
    # whoever holds it confirmed, everyone else lost it (a loser never competes again)
    states = {n: s.state for n, core in world.cores.items() for s in core.states()}
    assert list(states.values()).count(CONFIRMED) <= 1
    assert all(s in (CONFIRMED, UNCONFIRMED, LOST) for s in states.values())


def test_a_holder_cut_off_from_the_majority_downgrades_before_another_node_can_claim() -> None:
    world = _World(0)
    world.run("n1", world.cores["n1"].claim("a", "alice", world.now))
    assert world.confirmed("alice") == ["n1"]
    world.cut = {"n1"}
    downgraded_at = None
    for _ in range(60):
        world.step(100)
        if downgraded_at is None and not world.confirmed("alice"):
            downgraded_at = world.now
    assert downgraded_at is not None
    # the group's lease has run out by now; n2 claims it
    op = world.cores["n2"].claim("b", "alice", world.now)
    world.run("n2", op)
    assert world.confirmed("alice") == ["n2"] and world.holder("alice") == "n2/b"
    claimed_at = world.now
    assert downgraded_at <= claimed_at
    # healing: n1's retried claim is refused and it loses the name
    world.cut = set()
    for _ in range(40):
        world.step(100)
    assert world.cores["n1"].state("a").state == LOST and world.confirmed("alice") == ["n2"]


# -- belief implies truth, with slow and lost answers ----------------------------------------------------


class _SlowWorld:
    """Cores whose operations commit after a random delay and answer after another (or never, "unknown").

    One clock for everyone (real time = log time), so the check is exact: whenever a core believes it
    holds the name, the committed log gives the name to that core's owner at that moment."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cut: set[str] = set()
        nodes = ("n1", "n2", "n3")
        self.group = MemoryCluster(nodes, reachable=lambda a, b: (a in self.cut) == (b in self.cut))
        self.cores = {n: NameLeases(n, random.Random(f"{seed}:{n}"), NameConfig(ttl_ms=TTL)) for n in nodes}
        self.now = 0
        self.pending: list[tuple[int, int, str, NameOp, str]] = []
        """(time, seq, node, op, phase "commit"/"answer")."""
        self.answers: dict[tuple[str, int], tuple[object, str | None]] = {}
        self.seq = 0
        self.max_delay = self.rng.choice([50, 400, 1_500, 2_500])

    def start(self, node: str, op: NameOp) -> None:
        self.seq += 1
        self.pending.append((self.now + self.rng.randrange(self.max_delay), self.seq, node, op, "commit"))

    def step(self, ms: int) -> None:
        self.now += ms
        while True:
            due = sorted(p for p in self.pending if p[0] <= self.now)
            if not due:
                break
            item = due[0]
            self.pending.remove(item)
            at, _, node, op, phase = item
            if phase == "commit":
                command = {"claim": c.ClaimName, "renew": c.RenewName}[op.kind](op.name, op.owner, op.ttl_ms)
                try:
                    result: object = self.group.submit(node, command, at)
                    error = "unknown" if self.rng.random() < 0.1 else None  # the answer gets lost
                except NoQuorum:
                    result, error = None, "not_applied"
                self.answers[(node, op.op_id)] = (result, error)
                self.seq += 1
                self.pending.append((at + self.rng.randrange(self.max_delay), self.seq, node, op, "answer"))
            else:
                result, error = self.answers.pop((node, op.op_id))
                self.cores[node].on_result(op.op_id, at, result=None if error else result, error=error)
        for node, core in self.cores.items():
            for op in core.handle_timer(self.now):
                self.start(node, op)

    def check(self) -> None:
        truth = self.group.replica(self.group.leader) if self.group.leader else None
        for core in self.cores.values():
            for s in core.states():
                if s.state != CONFIRMED:
                    continue
                assert s.valid_until_ms is not None and s.valid_until_ms > self.now
                # the log, read at the newest committed entry, gives the name to this owner beyond now
                lease = None
                for voter in self.group.voters:
                    replica = self.group.replica(voter)
                    if truth is None or replica.applied > truth.applied:
                        truth = replica
                assert truth is not None
                lease = truth.snapshot()["names"]
                held = {row[0]: (row[1], row[2]) for row in lease}
                assert s.name in held and held[s.name][0] == s.owner and held[s.name][1] > self.now, (
                    f"{s.owner} believes it holds {s.name} at {self.now}, the log says {held.get(s.name)}")


@pytest.mark.parametrize("seed", range(12))
def test_a_node_believes_it_holds_a_name_only_while_the_log_gives_it_that_name(seed: int) -> None:
    world = _SlowWorld(seed)
    for node, core in world.cores.items():
        op = core.claim(f"agent-{node}", "alice", world.now)
        world.start(node, op)
    confirmed_ms = 0
    for _ in range(4_000):  # 40 simulated seconds in 10 ms steps
        if world.rng.random() < 0.01:
            world.cut = set(world.rng.sample(sorted(world.cores), world.rng.choice([0, 0, 1, 2])))
        world.step(10)
        world.check()
        confirmed_ms += 10 * sum(1 for core in world.cores.values() for s in core.states() if s.state == CONFIRMED)
    assert confirmed_ms > 0  # the name was held for part of the run (the check was not vacuous)

"""Named scenarios: a timeline of faults and what to measure, built from the run seed.

`RunSpec` is everything a run depends on besides the code; `RunSpec.replay_command()` prints the
one command that replays it exactly. `build(spec)` makes the world, `run(spec)` runs it to the
end (or to the first invariant violation) and returns a `SimulationResult`.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from agentnode.simulations import faults as f
from agentnode.simulations.figures import compute_figures
from agentnode.simulations.invariants import default_invariants
from agentnode.simulations.network import NETWORK_PROFILES
from agentnode.simulations.seed import SEED_MAX, fork
from agentnode.simulations.world import CoreFactory, SimCore, Violation, World, WorldConfig

__sans_io__ = True

__all__ = ["SCENARIOS", "RunSpec", "Scenario", "SimulationResult", "build", "default_core_factory", "run"]

CLUSTER_NAME = "sim"
JOIN_RAMP_MS_MAX = 5_000
"""Nodes start spread over at most this long (a rolling deploy); small clusters start faster."""
NODES_MAX = 100_000
SAMPLES_PER_RUN = 300
"""Time-series points per run (plots); the interval is rounded to 100 ms."""
SAMPLE_INTERVAL_MS_MIN = 100


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One simulation run; with the same commit, the same spec gives the same trace digest."""

    nodes: int
    seed: int
    scenario: str
    duration_s: float | None = None
    """Simulated seconds; None takes the scenario's default."""
    network: str = "lan"
    """Latency profile: "lan" or "wan" (simulations/network.py)."""
    membership: str = "lan"
    """Membership timing profile passed to every NodeCore (node/profiles.py)."""
    loss: float | None = None
    """Frame loss for the `lossy` scenario (default 0.10), or uniform background loss for any other."""
    crash_kind: str = "host"
    """How the `crash` scenario kills its victim: "host" (silence) or "process" (connection refused)."""
    convergence_bound_s: float = 30.0
    """Membership must converge this long after the last disruption (invariant)."""
    false_death_bound_s: float = 30.0
    """A healthy node may look suspect/dead to a healthy peer at most this long (invariant)."""
    codec: str = "msgpack"
    services: str = ""
    """Service cores beside membership, comma-separated: "state" (CRDT replication with a write
    workload and the crdt-converged invariant), "consensus" (the Raft stand-in with put and name-lease
    workloads; one-leader-per-term, name-lease-unique, consensus-writes-resume), "registry" (agent
    registry with a register/deregister workload; registry-converged), "names" (unique agent names:
    the NameLeases core per node, leases through the stand-in; implies consensus and registry;
    name-advertised-unique). Scenarios named state-* /
    consensus-* switch their service on."""
    state_keys: int = 100
    """Keys the state workload writes (types cycle pncounter, orset, lwwmap)."""
    state_writes: int = 500
    """Local-consistency updates the state workload makes, spread over its window."""
    state_bound_s: float = 10.0
    """Replicas must converge this long after the last write, fault and membership convergence."""
    registry_ops: int = 200
    """Agent registrations/deregistrations the registry workload makes (service "registry")."""
    consensus_voters: int = 3
    """Voters of the consensus stand-in (service "consensus"): the first k nodes."""

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= NODES_MAX:
            raise ValueError(f"nodes must be within 1..{NODES_MAX}, got {self.nodes}")
        if not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an unsigned 64-bit integer, got {self.seed}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be positive")
        if self.network not in NETWORK_PROFILES:
            raise ValueError(f"unknown network profile {self.network!r}; choose one of {', '.join(NETWORK_PROFILES)}")
        if self.loss is not None and not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be within 0..1 (exclusive of 1)")
        if self.crash_kind not in ("host", "process"):
            raise ValueError("crash_kind must be 'host' or 'process'")
        for name in self.service_names:
            if name not in SERVICES:
                raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
        if self.registry_ops < 0:
            raise ValueError("registry_ops must be >= 0")
        if self.consensus_voters < 1:
            raise ValueError("consensus_voters must be at least 1")
        if self.state_keys < 1 or self.state_writes < 0 or self.state_bound_s <= 0:
            raise ValueError("state_keys must be >= 1, state_writes >= 0 and state_bound_s > 0")

    @property
    def service_names(self) -> tuple[str, ...]:
        """Services this run enables (scenario defaults included), in canonical order."""
        names = {n.strip() for n in self.services.split(",") if n.strip()}
        if self.scenario.startswith("state-"):
            names.add("state")
        if self.scenario.startswith("consensus-"):
            names.add("consensus")
        if "names" in names:  # unique agent names: leased through consensus, held by registered agents
            names.update(("consensus", "registry"))
        return tuple(sorted(names))

    @property
    def duration_ms(self) -> int:
        seconds = self.duration_s if self.duration_s is not None else SCENARIOS[self.scenario].default_duration_s
        return int(round(seconds * 1000))

    def replay_command(self) -> str:
        """The `agentnode simulate` command line that replays this run bit for bit."""
        args = ["agentnode", "simulate", "--nodes", str(self.nodes), "--seed", str(self.seed),
                "--scenario", self.scenario, "--duration-s", f"{self.duration_ms / 1000:g}"]
        defaults = RunSpec(nodes=1, seed=0, scenario="steady")
        for name, flag in (("network", "--network"), ("membership", "--membership"), ("loss", "--loss"),
                           ("crash_kind", "--crash-kind"), ("convergence_bound_s", "--convergence-bound-s"),
                           ("false_death_bound_s", "--false-death-bound-s"), ("codec", "--codec"),
                           ("services", "--services"), ("state_keys", "--state-keys"),
                           ("state_writes", "--state-writes"), ("state_bound_s", "--state-bound-s"),
                           ("consensus_voters", "--consensus-voters"), ("registry_ops", "--registry-ops")):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(args)


@dataclass(slots=True)
class Timeline:
    """What a scenario builder produces: faults, watches to record, and named moments."""

    plan: list[tuple[int, f.Fault]] = field(default_factory=list)
    watches: list[tuple[str, int, tuple[str, ...], int]] = field(default_factory=list)
    """(label, subject node, states, since_ms)."""
    marks: dict[str, int] = field(default_factory=dict)
    """Named moments the figures refer to: "joined" (last initial start), "crash", "heal", ..."""
    services: dict[str, Any] = field(default_factory=dict)
    """What the service layer attached (simulations/service_setup.py): logs and invariants, by name."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    default_duration_s: float
    build: Callable[[RunSpec, random.Random, Timeline], None]


@dataclass(slots=True)
class SimulationResult:
    """The outcome of one run."""

    spec: RunSpec
    digest: str
    violation: Violation | None
    figures: dict[str, Any]
    world: World
    timeline: Timeline


def default_core_factory(membership: str = "lan", *, cluster: str = CLUSTER_NAME) -> CoreFactory:
    """Builds real `agentnode.core.NodeCore`s with the named membership profile."""
    from agentnode.core import NodeCore
    from agentnode.membership import MemberInterner
    from agentnode.profiles import profile_named

    profile = profile_named(membership)
    # One interner for all cores of the world: equal member records and queued gossip updates are held
    # once, not once per observer (decision 0059; 10^8 (observer, member) pairs at 10,000 nodes).
    interner = MemberInterner()

    def make(node_id: str, address: str, *, rng: random.Random, incarnation: int) -> SimCore:
        return NodeCore(node_id, address, cluster=cluster, profile=profile, rng=rng, incarnation=incarnation,
                        interner=interner)

    return make


def build(spec: RunSpec, core_factory: CoreFactory | None = None) -> tuple[World, Timeline]:
    """The world and timeline for `spec`, ready to `run`."""
    timeline = Timeline()
    rng = fork(spec.seed, "scenario", spec.scenario)
    n = spec.nodes
    ramp = min(JOIN_RAMP_MS_MAX, 50 * n)
    initial = n - 1 if spec.scenario == "steady" and n >= 3 else n
    for i in range(initial):
        timeline.plan.append((ramp * i // max(1, initial), f.Start(i)))
    timeline.marks["joined"] = ramp * (initial - 1) // max(1, initial)
    if spec.loss is not None and spec.scenario != "lossy":
        timeline.plan.append((0, f.Loss(spec.loss)))
    SCENARIOS[spec.scenario].build(spec, rng, timeline)
    sample_ms = max(SAMPLE_INTERVAL_MS_MIN, spec.duration_ms // SAMPLES_PER_RUN // 100 * 100)
    config = WorldConfig(nodes=n, seed=spec.seed, network=NETWORK_PROFILES[spec.network], codec=spec.codec,
                         sample_interval_ms=sample_ms)
    invariants = default_invariants(convergence_bound_ms=int(spec.convergence_bound_s * 1000),
                                    false_death_bound_ms=int(spec.false_death_bound_s * 1000))
    factory = core_factory or default_core_factory(spec.membership)
    setup = None
    if spec.service_names:
        from agentnode.simulations.service_setup import ServiceSetup

        setup = ServiceSetup(spec, timeline, cluster=CLUSTER_NAME)
        factory = setup.wrap(factory)
    world = World(config, factory, plan=timeline.plan, invariants=invariants, replay_command=spec.replay_command())
    for label, subject, states, since in timeline.watches:
        world.watch(label, subject, states, since)
    if setup is not None:
        setup.attach(world)
    return world, timeline


def run(spec: RunSpec, *, core_factory: CoreFactory | None = None,
        progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Run `spec` to its end or to the first invariant violation."""
    world, timeline = build(spec, core_factory)
    violation = world.run(spec.duration_ms, progress)
    if violation is None:
        violation = world.finish()
    figures = compute_figures(world, timeline, spec.duration_ms)
    setup = timeline.services.get("setup")
    if setup is not None:
        figures.update(setup.figures(world))
    return SimulationResult(spec, world.trace.hexdigest(), violation, figures, world, timeline)


# ---- the scenarios ---------------------------------------------------------------------------


def _steady(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Everyone joins; one late node joins at half time, and its arrival is the dissemination probe."""
    if spec.nodes >= 3:
        late = spec.nodes - 1
        at = max(t.marks["joined"] + 1_000, spec.duration_ms // 2)
        t.plan.append((at, f.Start(late)))
        t.marks["late_join"] = at
        t.watches.append(("join", late, ("alive",), at))


def _victims(spec: RunSpec, rng: random.Random, count: int) -> list[int]:
    pool = list(range(min(3, spec.nodes), spec.nodes)) or list(range(spec.nodes))
    return sorted(rng.sample(pool, min(count, len(pool))))


def _crash(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """One node (never a bootstrap node) crashes once the cluster has formed."""
    at = max(t.marks["joined"] + 5_000, spec.duration_ms // 3)
    victim = _victims(spec, rng, 1)[0]
    t.plan.append((at, f.Crash(victim, spec.crash_kind)))
    t.marks["crash"] = at
    t.watches.append(("suspect", victim, ("suspect", "dead"), at))
    t.watches.append(("dead", victim, ("dead",), at))


def _partition_heal(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """The cluster splits in two random halves for a quarter of the run, then heals."""
    at = max(t.marks["joined"] + 5_000, spec.duration_ms // 4)
    heal = max(at + 5_000, spec.duration_ms // 2)
    nodes = list(range(spec.nodes))
    rng.shuffle(nodes)
    half = len(nodes) // 2
    groups = (tuple(sorted(nodes[:half])), tuple(sorted(nodes[half:])))
    t.plan += [(at, f.Partition(groups)), (heal, f.Heal())]
    t.marks.update(partition=at, heal=heal)


def _lossy(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Uniform frame loss on every link for the whole run (default 10%)."""
    t.plan.append((0, f.Loss(0.10 if spec.loss is None else spec.loss)))


def _churn(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Nodes crash or leave and come back (with or without their data) until 60% of the run."""
    start = t.marks["joined"] + 5_000
    end = max(start + 1_000, spec.duration_ms * 6 // 10)
    t.plan += f.churn(rng, list(range(spec.nodes)), start, end, interval_ms=max(100, 100_000 // spec.nodes))
    t.marks["churn_end"] = end


def _mass_restart(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Half the cluster loses power at once and comes back within 10 s, half of it without data."""
    at = max(t.marks["joined"] + 5_000, spec.duration_ms // 4)
    t.plan += f.mass_restart(rng, list(range(spec.nodes)), at, fraction=0.5, down_ms_max=10_000)
    t.marks["mass_crash"] = at


def _swarm(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """The seed picks the faults (TigerBeetle swarm testing): pauses, clogs, drift, duplication,
    reordering, one-way partitions and crashes, all over by 60% of the run."""
    n = spec.nodes
    start = t.marks["joined"] + 3_000
    end = max(start + 2_000, spec.duration_ms * 6 // 10)
    pool = list(range(n))
    if rng.random() < 0.5:
        t.plan.append((start, f.Duplicate(rng.choice((0.01, 0.05)))))
    if rng.random() < 0.5:
        t.plan.append((start, f.Reorder(rng.choice((0.01, 0.1)))))
    for _ in range(rng.randint(1, 6)):
        at = rng.randint(start, end - 1_000)
        kind = rng.choice(("pause", "clog", "drift", "one-way", "crash"))
        node = rng.choice(pool)
        if kind == "pause":
            t.plan.append((at, f.Pause(node, rng.randint(500, min(10_000, end - at)))))
        elif kind == "clog":
            t.plan += f.swizzle_clog(rng, pool, at, count=max(1, n // 10), step_ms=200, bytes_per_s=rng.choice((2_000, 20_000)))
        elif kind == "drift":
            t.plan.append((at, f.Drift(node, ppm=rng.randint(-100_000, 100_000), step_ms=rng.choice((0, 0, 2_000)))))
        elif kind == "one-way":
            t.plan += [(at, f.Partition(((node,), tuple(p for p in pool if p != node)), one_way=rng.random() < 0.5)),
                       (rng.randint(at + 500, end), f.Heal())]
        else:
            t.plan += [(at, f.Crash(node, rng.choice(("host", "process")))), (rng.randint(at + 500, end), f.Restart(node, rng.random() < 0.5))]
    t.plan.sort(key=lambda entry: entry[0])
    # No two partitions overlap: a later Partition replaces an earlier one, a Heal clears all.
    t.plan.append((end, f.Heal()))
    t.marks["swarm_end"] = end


def _state_partition(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """partition-heal with the state service: both halves keep writing during the split (issue 6)."""
    _partition_heal(spec, rng, t)


def _state_reconverge(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Issue 6's figure: a cluster holding --state-keys keys splits in two halves for 60 s, both
    halves increment counters, then it heals; how long until every replica is equal again."""
    from agentnode.simulations.service_setup import reconverge_timeline

    reconverge_timeline(spec, t)


def _consensus_faults(spec: RunSpec, rng: random.Random, t: Timeline) -> None:
    """Voters under fire: the leader-to-be (node 0) is cut off alone, then a voter crashes and
    restarts, then a random half/half split; puts and name leases run throughout."""
    n = spec.nodes
    step = max(5_000, (spec.duration_ms - t.marks["joined"]) // 8)
    at = t.marks["joined"] + step
    if n >= 2:
        t.plan += [(at, f.Partition(((0,), tuple(range(1, n))))), (at + step, f.Heal())]
    victim = 1 if n >= 2 else 0
    t.plan += [(at + 2 * step, f.Crash(victim, "host")), (at + 3 * step, f.Restart(victim, True))]
    nodes = list(range(n))
    rng.shuffle(nodes)
    half = n // 2
    if half:
        t.plan += [(at + 4 * step, f.Partition((tuple(sorted(nodes[:half])), tuple(sorted(nodes[half:]))))),
                   (at + 5 * step, f.Heal())]
    t.marks.update(voter_cut=at, voter_crash=at + 2 * step, split=at + 4 * step, heal=at + 5 * step)


SERVICES = ("consensus", "names", "registry", "state")
"""Service names `RunSpec.services` accepts."""

SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (
        Scenario("steady", "everyone joins, one late joiner at half time (dissemination probe)", 60.0, _steady),
        Scenario("crash", "one node crashes after the cluster formed; detection times", 60.0, _crash),
        Scenario("partition-heal", "two halves split for a quarter of the run, then heal", 80.0, _partition_heal),
        Scenario("lossy", "10% uniform frame loss on every link (--loss to change)", 60.0, _lossy),
        Scenario("churn", "nodes crash/leave and return, with or without data, until 60% of the run", 90.0, _churn),
        Scenario("mass-restart", "half the cluster crashes at once and restarts within 10 s", 80.0, _mass_restart),
        Scenario("swarm", "the seed picks pauses, clogs, drift, dup/reorder, one-way partitions, crashes", 90.0, _swarm),
        Scenario("state-partition", "partition-heal with CRDT state: writes on both halves, replicas must re-converge",
                 80.0, _state_partition),
        Scenario("consensus-faults", "Raft stand-in: a voter cut off, a voter crash/restart, a half split; "
                 "puts and name leases throughout", 80.0, _consensus_faults),
        Scenario("state-reconverge", "the state benchmark: preloaded keys, a 60 s split with writes, time to re-converge after the heal",
                 100.0, _state_reconverge),
    )
}

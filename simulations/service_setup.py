"""Wires the service layer into a scenario run: core factory, workloads, invariants, figures.

`scenarios.build` calls `ServiceSetup.wrap` before the world exists (the factory) and `attach`
after (workloads on the world's clock, invariants appended after the membership ones). Figures
come back through `figures(world)` under the key "state".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentnode.names import NameConfig
from agentnode.simulations import faults as f
from agentnode.simulations.consensus_service import ConsensusConfig, ConsensusService
from agentnode.simulations.service_invariants import (
    ConsensusWritesResume, CrdtConverged, NameAdvertisedUnique, NameLeaseUnique, OneLeaderPerTerm, RegistryConverged,
    live_replicas,
)
from agentnode.simulations.services import ServiceDisks, ServicesConfig, service_core_factory
from agentnode.simulations.workloads import (
    RegistryLog, RegistryWorkload, StateLog, StateWorkload, preload_states, schedule_registry_workload,
    schedule_state_workload,
)
from agentnode.simulations.world import CoreFactory, node_name

if TYPE_CHECKING:
    from agentnode.simulations.scenarios import RunSpec, Timeline
    from agentnode.simulations.world import World

__sans_io__ = True

__all__ = ["PRELOADED_SCENARIOS", "ServiceSetup"]

PRELOADED_SCENARIOS = ("state-reconverge",)
"""Scenarios whose nodes boot holding every key already (a cluster that has converged on its data)."""
CONSENSUS_RESUME_BOUND_MS = 2_000
"""Writes from the majority side must succeed again this long after the last fault (a real Raft
group re-elects within a few election timeouts; the stand-in at once)."""
NAME_TTL_MS = 3_000
"""Unique-name lease length in the simulator (production: 30 s): short, so leases lapse and move within a run."""
WRITE_LEAD_MS = 1_000
"""The workload starts this long after the last initial node started (or the partition began)."""


class ServiceSetup:
    """The services of one run (see the module docstring)."""

    def __init__(self, spec: RunSpec, timeline: Timeline, *, cluster: str) -> None:
        self.spec = spec
        self.timeline = timeline
        self.cluster = cluster
        self.disks = ServiceDisks()
        self.state_log = StateLog()
        self.crdt: CrdtConverged | None = None
        self.workload: StateWorkload | None = None
        self.consensus: ConsensusService | None = None
        self._bytes_at_heal: int | None = None
        names = spec.service_names
        self.config = ServicesConfig(state="state" in names, registry="registry" in names, names="names" in names,
                                     name_config=NameConfig(ttl_ms=NAME_TTL_MS))
        self.registry_log = RegistryLog()
        self.registry_check: RegistryConverged | None = None
        if self.config.state:
            self.workload = self._state_workload()
            if spec.scenario in PRELOADED_SCENARIOS:
                origins = [node_name(i) for i in range(spec.nodes)]
                workload = self.workload
                self.disks.preload = lambda store: preload_states(store, workload, origins)
        timeline.services["setup"] = self

    def wrap(self, membership: CoreFactory) -> CoreFactory:
        def run_name_op(node: Any, op: Any, local_now_ms: int) -> None:
            assert self.consensus is not None, "the names service runs its leases through the consensus service"
            self.consensus.run_name_op(node, op, local_now_ms)

        return service_core_factory(membership, self.config, seed=self.spec.seed, cluster=self.cluster, disks=self.disks,
                                    name_runner=run_name_op)

    def service_bytes(self, world: World) -> int:
        """Bytes all service cores have sent so far (every node, every life)."""
        return self.disks.service_bytes()

    def attach(self, world: World) -> None:
        def on_fault(fault: f.Fault, now_ms: int) -> None:
            if isinstance(fault, f.Heal):
                self._bytes_at_heal = self.service_bytes(world)
                if self.crdt is not None:
                    self.crdt.watch_equal_after(now_ms)

        world.fault_hooks.append(on_fault)
        if self.config.registry:
            start = self.timeline.marks["joined"] + WRITE_LEAD_MS
            end = max(start, self.spec.duration_ms * 6 // 10)
            schedule_registry_workload(world, RegistryWorkload(ops=self.spec.registry_ops, start_ms=start, end_ms=end),
                                       self.registry_log)
            self.registry_check = RegistryConverged(int(self.spec.state_bound_s * 1000), self.registry_log)
            world.invariants.append(self.registry_check)
        if "consensus" in self.spec.service_names:
            start = self.timeline.marks["joined"] + WRITE_LEAD_MS
            config = ConsensusConfig(voters=min(self.spec.consensus_voters, self.spec.nodes), start_ms=start,
                                     end_ms=self.spec.duration_ms)
            self.consensus = ConsensusService(world, config)
            self.consensus.schedule()
            world.invariants += [OneLeaderPerTerm(self.consensus), NameLeaseUnique(self.consensus),
                                 ConsensusWritesResume(CONSENSUS_RESUME_BOUND_MS, self.consensus)]
            if self.config.names:
                world.invariants.append(NameAdvertisedUnique())
        if self.workload is not None:
            schedule_state_workload(world, self.workload, self.state_log)
            self.crdt = CrdtConverged(int(self.spec.state_bound_s * 1000), self.state_log,
                                      meter=lambda: self.service_bytes(world))
            world.invariants.append(self.crdt)

    def _state_workload(self) -> StateWorkload:
        spec, marks = self.spec, self.timeline.marks
        if "partition" in marks and "heal" in marks:
            start = marks["partition"] + WRITE_LEAD_MS
            end = max(start, marks["heal"] - WRITE_LEAD_MS)
            if spec.scenario == "state-partition":
                start = marks["joined"] + WRITE_LEAD_MS  # writes before, during and right up to the split's end
        else:
            start = marks["joined"] + WRITE_LEAD_MS
            end = max(start, spec.duration_ms * 6 // 10)
        types = ("gcounter",) if spec.scenario in PRELOADED_SCENARIOS else ("pncounter", "orset", "lwwmap")
        return StateWorkload(keys=spec.state_keys, writes=spec.state_writes, start_ms=start, end_ms=end, types=types)

    def figures(self, world: World) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.consensus is not None:
            out["consensus"] = self.consensus.figures()
        if self.registry_check is not None:
            log = self.registry_log
            periods = self.registry_check.converged_log
            out["registry"] = {"registered": log.registered, "deregistered": log.deregistered, "last_op_ms": log.last_op_ms,
                               "converged_periods": len(periods),
                               "last_converged_ms": periods[-1][1] if periods else None}
        if self.crdt is not None:
            out.update(self._state_figures(world))
        return out

    def _state_figures(self, world: World) -> dict[str, Any]:
        assert self.crdt is not None
        log = self.state_log
        heal = self.timeline.marks.get("heal")
        out: dict[str, Any] = {
            "writes_done": log.writes_done,
            "writes_skipped": log.writes_skipped,
            "last_write_ms": log.last_write_ms,
            "keys": self.spec.state_keys,
            "bound_s": self.spec.state_bound_s,
            "converged_periods": len(self.crdt.converged_log),
            "last_converged": ({"since_ms": self.crdt.converged_log[-1][0], "converged_ms": self.crdt.converged_log[-1][1],
                                "replicas": self.crdt.converged_log[-1][2]} if self.crdt.converged_log else None),
            "service_bytes": self.service_bytes(world),
        }
        replicas = live_replicas(world)
        out["live_replicas"] = len(replicas)
        out["converged_at_end"] = len({r.root_digest() for _, r in replicas}) <= 1
        if heal is not None:
            after = [c for s, c, _ in self.crdt.converged_log if s >= heal]
            bytes_after = [b for (s, _, _), b in zip(self.crdt.converged_log, self.crdt.bytes_log) if s >= heal]
            if bytes_after and self._bytes_at_heal is not None:
                out["service_bytes_heal_to_converged"] = bytes_after[0] - self._bytes_at_heal
            membership = [c for s, _, c in world.convergence_log if s >= heal]
            out["heal_ms"] = heal
            first = self.crdt.first_equal_ms
            out["replicas_equal_s"] = round((first - heal) / 1000, 3) if first is not None else None
            out["reconverge_s"] = round((after[0] - heal) / 1000, 3) if after else None
            out["membership_reconverge_s"] = round((membership[0] - heal) / 1000, 3) if membership else None
            out["reconverge_after_membership_s"] = (round((after[0] - membership[0]) / 1000, 3)
                                                   if after and membership else None)
        return {"state": out}


def reconverge_timeline(spec: RunSpec, t: Timeline, partition_ms: int = 60_000) -> None:
    """The issue-6 benchmark: a formed, preloaded cluster splits in two for `partition_ms`, both
    halves write, then it heals; the figure is the time until every replica is equal again."""
    at = t.marks["joined"] + 5_000
    heal = at + min(partition_ms, max(5_000, spec.duration_ms - at - 20_000))
    half = spec.nodes // 2
    groups = (tuple(range(half)), tuple(range(half, spec.nodes)))
    t.plan += [(at, f.Partition(groups)), (heal, f.Heal())]
    t.marks.update(partition=at, heal=heal)

"""The consensus stand-in in the simulated world: voters cut off, crashed and split; one leader
per term, unique name leases and resuming writes hold, and each invariant fires on a broken stand-in."""

from __future__ import annotations

from typing import Any

from agentnode.consensus.memory_group import MemoryCluster
from agentnode.consensus.state_machine import Lease, LeaseResult
from agentnode.simulations.consensus_service import ConsensusService
from agentnode.simulations.scenarios import RunSpec, build, run


def _spec(**kw: Any) -> RunSpec:
    base: dict[str, Any] = dict(nodes=7, seed=3, scenario="consensus-faults", duration_s=50.0)
    base.update(kw)
    return RunSpec(**base)


def test_consensus_faults_hold_the_invariants_and_writes_resume() -> None:
    spec = _spec()
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    c = result.figures["consensus"]
    assert c["elections"] >= 2  # the cut-off and the split forced re-elections
    assert c["writes_refused"] > 0  # the minority side was refused ...
    assert c["last_ok_ms"] >= result.timeline.marks["heal"]  # ... and writes resumed after the last heal
    assert c["name_grants"] > 0
    setup = result.timeline.services["setup"]
    leaders = setup.consensus.cluster.leaders_by_term
    assert len(leaders) == c["term"] and setup.consensus.log.leaders_seen.items() <= leaders.items()
    assert run(spec).digest == result.digest


def test_state_and_consensus_together_with_five_voters() -> None:
    spec = _spec(services="state", consensus_voters=5, state_writes=100, duration_s=40.0)
    assert "--consensus-voters 5" in spec.replay_command() and "--services state" in spec.replay_command()
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    assert len(result.figures["consensus"]["voters"]) == 5
    assert result.figures["state"]["converged_at_end"]


class _SameTermCluster(MemoryCluster):
    """Broken: a voter that loses its leader crowns itself without starting a new term."""

    def _serving_leader(self, node_id: str) -> str:  # type: ignore[override]
        leader = self.leader
        if leader is not None and node_id in self.voters and not self._linked(node_id, leader) and self._has_majority(node_id):
            self._leader = node_id
            self._catch_up(node_id)
            return node_id
        return super()._serving_leader(node_id)


def _run_with(cluster_type: type[MemoryCluster], spec: RunSpec) -> Any:
    world, timeline = build(spec)
    setup = timeline.services["setup"]
    service: ConsensusService = setup.consensus
    service.cluster = cluster_type(service.voter_ids)
    service.cluster.set_reachable(service.reachable)
    return world.run(spec.duration_ms), world


def test_one_leader_per_term_catches_a_stand_in_that_reuses_a_term() -> None:
    spec = _spec()
    violation, world = _run_with(_SameTermCluster, spec)
    assert violation is not None and violation.invariant == "one-leader-per-term", violation
    assert "two leaders" in violation.message
    assert world.replay_command == spec.replay_command()


class _SplitBrainLeases(MemoryCluster):
    """Broken: a claim from a node cut off from the leader is granted from its stale view."""

    def submit(self, node_id: str, command: Any, now_ms: int, forward: bool = True) -> Any:
        leader = self.leader
        if type(command).__name__ == "ClaimName" and leader is not None and not self._linked(node_id, leader):
            return LeaseResult(True, Lease(command.name, command.owner, now_ms + command.ttl_ms, 999))
        return super().submit(node_id, command, now_ms, forward)


def test_name_lease_unique_catches_split_brain_grants() -> None:
    spec = _spec()
    violation, world = _run_with(_SplitBrainLeases, spec)
    assert violation is not None and violation.invariant == "name-lease-unique", violation
    assert "leased to" in violation.message and "while" in violation.message


class _NeverServes(MemoryCluster):
    """Broken: after the first partition, the group never serves again."""

    broken = False

    def submit(self, node_id: str, command: Any, now_ms: int, forward: bool = True) -> Any:
        from agentnode.consensus.base import NoQuorum

        if self.elections >= 2:
            raise NoQuorum("stuck")
        return super().submit(node_id, command, now_ms, forward)


def test_writes_resume_catches_a_group_that_never_recovers() -> None:
    violation, _ = _run_with(_NeverServes, _spec())
    assert violation is not None and violation.invariant == "consensus-writes-resume", violation

"""Every scenario run with the real NodeCore at small N, a seed sweep, replay digests, and the
invariant checker firing on deliberately broken settings."""

from __future__ import annotations

import pytest

from agentnode.simulations.figures import eligible_observers
from agentnode.simulations.scenarios import SCENARIOS, RunSpec, run

SMOKE_NODES = 12
SWEEP_SEEDS = 20
SWEEP_NODES = 50
DETECTION_BOUND_MS = 5_000
"""The issue's goal: every observer marks a crashed node dead within 5 s (LAN)."""
SWEEP_DURATION_S = 20.0
"""Crash lands at 7.5 s (after the 2.5 s join ramp + 5 s); 20 s leaves detection and a quiet tail."""


def _clean(result) -> dict:  # type: ignore[no-untyped-def]
    f = result.figures
    assert result.violation is None, f"{result.violation}\nreplay: {result.spec.replay_command()}"
    assert f["converged_at_end"], result.spec.replay_command()
    assert f["false_deaths"] == 0, result.spec.replay_command()
    return f


def test_every_required_scenario_exists() -> None:
    assert {"steady", "crash", "partition-heal", "lossy", "churn", "mass-restart", "swarm"} <= set(SCENARIOS)


def test_steady_converges_and_the_late_joiner_reaches_everyone() -> None:
    f = _clean(run(RunSpec(nodes=SMOKE_NODES, seed=1, scenario="steady", duration_s=30)))
    assert f["join_converge_ms"] is not None and f["join_converge_ms"] >= 0
    assert f["join_ms"]["reached"] == f["join_ms"]["observers"] == SMOKE_NODES - 1
    assert f["messages_per_node_per_s"] > 0 and f["bytes_per_node_per_s"] > f["messages_per_node_per_s"]
    assert f["false_suspicions"] == 0


def test_crash_is_seen_dead_by_every_observer() -> None:
    f = _clean(run(RunSpec(nodes=SMOKE_NODES, seed=1, scenario="crash", duration_s=30)))
    assert f["dead_ms"]["reached"] == f["dead_ms"]["observers"] == SMOKE_NODES - 1
    assert f["suspect_ms"]["p50"] <= f["dead_ms"]["p50"]
    assert f["running_at_end"] == SMOKE_NODES - 1
    assert f["deaths"] >= SMOKE_NODES - 1


def test_process_crash_is_detected_too() -> None:
    f = _clean(run(RunSpec(nodes=SMOKE_NODES, seed=2, scenario="crash", duration_s=30, crash_kind="process")))
    assert f["dead_ms"]["reached"] == SMOKE_NODES - 1
    assert f["frames"]["unreachable_reports"] > 0


def test_partition_heal_reconverges() -> None:
    result = run(RunSpec(nodes=SMOKE_NODES, seed=1, scenario="partition-heal", duration_s=40))
    f = _clean(result)
    assert f["network"]["dropped_partition"] > 0
    assert f["reconverge_ms"] is not None
    assert result.timeline.marks["heal"] > result.timeline.marks["partition"]


def test_lossy_drops_frames_without_false_deaths() -> None:
    f = _clean(run(RunSpec(nodes=SMOKE_NODES, seed=1, scenario="lossy", duration_s=30)))
    lost = f["network"]["dropped_loss"]
    assert 0.05 < lost / f["frames"]["frames_sent"] < 0.15


def test_churn_kills_and_returns_nodes() -> None:
    f = _clean(run(RunSpec(nodes=SMOKE_NODES, seed=1, scenario="churn", duration_s=60)))
    assert f["deaths"] > 0
    assert f["running_at_end"] >= 1


def test_mass_restart_deaths_of_restarted_nodes_are_not_false() -> None:
    """Half the cluster restarts, some without data at the same incarnation while suspected: the
    deaths the others then declare are about the previous life, so correct, not false."""
    result = run(RunSpec(nodes=20, seed=1, scenario="mass-restart", duration_s=50))
    f = _clean(result)
    assert f["deaths"] > 0
    restarted = [n for n in result.world.nodes if n.up_since_ms != n.started_ms]
    assert restarted, "the scenario restarted nobody"
    assert all(not n.up_whole_time for n in restarted)


def test_swarm_runs_its_seeded_faults() -> None:
    result = run(RunSpec(nodes=SMOKE_NODES, seed=5, scenario="swarm", duration_s=40))
    _clean(result)
    assert len(result.timeline.plan) > SMOKE_NODES  # the starts plus at least one fault


@pytest.mark.parametrize("seed", range(1, SWEEP_SEEDS + 1))
def test_seed_sweep_crash(seed: int) -> None:
    """20 seeds x 50 nodes: nobody healthy is accused, and every observer that knew the victim marks
    it dead. (Seed 6: one node had not yet learnt of the victim's join 5 s after it, so it never
    sees a death; join dissemination is probabilistic, and push-pull repairs it later.)"""
    result = run(RunSpec(nodes=SWEEP_NODES, seed=seed, scenario="crash", duration_s=SWEEP_DURATION_S))
    f = _clean(result)
    assert f["false_suspicions"] == 0
    watch = next(w for w in result.world.watches if w.label == "dead")
    missing = [o for o in eligible_observers(result.world, watch) if o not in watch.first_ms]
    assert all(result.world.views.state(o, watch.subject) == 0 for o in missing), missing
    assert f["dead_ms"]["reached"] >= SWEEP_NODES - 2
    assert f["dead_ms"]["max"] <= DETECTION_BOUND_MS


def test_same_seed_same_digest_other_seed_differs() -> None:
    spec = RunSpec(nodes=16, seed=42, scenario="swarm", duration_s=30)
    a, b = run(spec), run(spec)
    assert a.digest == b.digest
    assert a.figures == b.figures
    c = run(RunSpec(nodes=16, seed=43, scenario="swarm", duration_s=30))
    assert c.digest != a.digest


def test_false_death_invariant_fires_on_a_broken_setting() -> None:
    """60% loss with a 200 ms bound: healthy nodes stay suspected longer than that; the run stops."""
    spec = RunSpec(nodes=20, seed=3, scenario="lossy", loss=0.6, duration_s=30, false_death_bound_s=0.2)
    result = run(spec)
    assert result.violation is not None
    assert result.violation.invariant == "no-lingering-false-death"
    assert result.figures["simulated_s"] < 30  # stopped at the violation
    assert "--loss 0.6" in spec.replay_command() and "--false-death-bound-s 0.2" in spec.replay_command()


def test_convergence_invariant_fires_when_the_bound_is_below_detection_time() -> None:
    spec = RunSpec(nodes=20, seed=3, scenario="crash", duration_s=30, convergence_bound_s=0.5)
    result = run(spec)
    assert result.violation is not None and result.violation.invariant == "membership-converges"
    assert "(stopped) still seen alive" in result.violation.message
    again = run(spec)  # the failing seed replays exactly
    assert again.violation == result.violation and again.digest == result.digest


def test_run_spec_rejects_misuse_with_a_message() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        RunSpec(nodes=3, seed=1, scenario="nope")
    with pytest.raises(ValueError, match="nodes must be"):
        RunSpec(nodes=0, seed=1, scenario="crash")
    with pytest.raises(ValueError, match="loss"):
        RunSpec(nodes=3, seed=1, scenario="lossy", loss=1.5)


@pytest.mark.parametrize("seed", range(1, 9))
def test_swarm_sweep_keeps_the_invariants(seed: int) -> None:
    """Seed-picked faults at 30 nodes: both invariants hold, membership converges by the end, and no
    healthy node is declared dead (seeds 5-7 did, right after a heal, before decision 0044)."""
    result = run(RunSpec(nodes=30, seed=seed, scenario="swarm", duration_s=60))
    assert result.violation is None, f"{result.violation}\nreplay: {result.spec.replay_command()}"
    assert result.figures["converged_at_end"], result.spec.replay_command()
    assert result.figures["false_deaths"] == 0, result.spec.replay_command()

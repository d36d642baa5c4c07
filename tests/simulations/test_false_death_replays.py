"""The exact replays of issue 4's false deaths (decisions 0043, 0044) now run clean.

Hand-built reproductions of each mechanism are in tests/node/test_core_false_deaths.py; these are the
simulator runs that found them, so a regression shows up with its replay command.
"""

from __future__ import annotations

import pytest

from agentnode.simulations.scenarios import RunSpec, run


@pytest.mark.parametrize("seed", [5, 6, 7, 14])
def test_swarm_seeds_that_killed_after_a_heal_have_no_false_deaths(seed: int) -> None:
    """A node cut off by a partition declared its stale suspicions dead just after the heal (5, 6, 14),
    and second copies of such a verdict killed the suspect elsewhere (5, 6, 7)."""
    result = run(RunSpec(nodes=30, seed=seed, scenario="swarm", duration_s=60))
    replay = result.spec.replay_command()
    assert result.violation is None, f"{result.violation}\nreplay: {replay}"
    assert result.figures["false_deaths"] == 0, replay
    assert result.figures["converged_at_end"], replay


@pytest.mark.slow
def test_lossy_100_nodes_seed_1_has_no_false_death() -> None:
    """At 473.8 s n00027 missed every copy of n00038's refutation; its probe was answered through
    helpers but it still declared n00038 dead at 478.045 s (about 60-90 s wall)."""
    spec = RunSpec(nodes=100, seed=1, scenario="lossy", duration_s=600, convergence_bound_s=400)
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    assert result.figures["false_deaths"] == 0, spec.replay_command()

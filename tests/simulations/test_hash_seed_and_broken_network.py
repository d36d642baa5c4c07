"""Two more ways the simulator must be able to fail: a digest that depends on PYTHONHASHSEED (set
order or hash() on a behaviour path), and a healthy node the real core wrongly keeps dead because
its network is broken (every inbound frame lost)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agentnode.simulations import faults as f
from agentnode.simulations.invariants import NoLingeringFalseDeath
from agentnode.simulations.scenarios import default_core_factory
from agentnode.simulations.world import World, WorldConfig, node_name

SUBPROCESS_TIMEOUT_S = 120


@pytest.mark.processes
def test_digest_does_not_depend_on_the_hash_seed() -> None:
    code = ("from agentnode.simulations.scenarios import RunSpec, run;"
            "print(run(RunSpec(nodes=15, seed=7, scenario='churn', duration_s=30)).digest)")
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT_S, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_invariant_fires_on_the_real_core_with_a_deaf_node() -> None:
    n = 10
    plan = [(i * 10, f.Start(i)) for i in range(n)] + [(5_000, f.NodeLoss(4, inbound=1.0))]
    world = World(WorldConfig(nodes=n, seed=1), default_core_factory(), plan=plan,
                  invariants=[NoLingeringFalseDeath(10_000)])
    violation = world.run(60_000)
    assert violation is not None and violation.invariant == "no-lingering-false-death"
    assert node_name(4) in violation.message
    assert violation.time_ms <= 5_000 + 10_000 + 10_000  # bound plus detection plus one scan

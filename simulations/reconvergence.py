"""Issue 6's re-convergence figure, measured in the shared simulated world.

50 nodes each holding 10,000 keys (preloaded, as a converged cluster), split in two halves for
60 s while both halves increment counters, then healed: how many simulated seconds until every
replica is equal again, and how many service bytes that took. Unlike node/state_benchmark.py's
`ReplicaNet` (membership modelled as a 1 s jitter), here the real NodeCore decides when each
replicator learns its peers are back, so the figure includes SWIM's own re-merge time.

`cli/bench.py` may call `reconvergence_figure()` (node/ must not import simulations/).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from agentnode.simulations.scenarios import RunSpec, run

__all__ = ["GOAL_S", "reconvergence_figure"]

GOAL_S = 2.0
"""Issue 6: re-converge within 2 simulated seconds of the heal."""


def reconvergence_figure(*, nodes: int = 50, keys: int = 10_000, writes: int = 1_000, seed: int = 1,
                         clock: Callable[[], float] = time.process_time) -> dict[str, Any]:
    """Run the `state-reconverge` scenario and return its figure (JSON-ready)."""
    spec = RunSpec(nodes=nodes, seed=seed, scenario="state-reconverge", state_keys=keys, state_writes=writes)
    started = clock()
    result = run(spec)
    state = result.figures.get("state", {})
    return {
        "nodes": nodes,
        "keys": keys,
        "writes_during_partition": state.get("writes_done"),
        "partition_s": (result.timeline.marks["heal"] - result.timeline.marks["partition"]) / 1000,
        "reconverge_s": state.get("reconverge_s"),
        "replicas_equal_s": state.get("replicas_equal_s"),
        "membership_reconverge_s": state.get("membership_reconverge_s"),
        "service_bytes_heal_to_converged": state.get("service_bytes_heal_to_converged"),
        "goal_s": GOAL_S,
        "converged_at_end": state.get("converged_at_end"),
        "violation": None if result.violation is None else f"{result.violation.invariant}: {result.violation.message}",
        "cpu_s": round(clock() - started, 1),
        "digest": result.digest,
        "replay": spec.replay_command(),
    }

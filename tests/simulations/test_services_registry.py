"""The agent registry core in the simulated world: views converge to the agents of running nodes
through churn, the invariant fires on a registry that ignores peers' record sets, and all three
services run together deterministically."""

from __future__ import annotations

from typing import Any

import pytest

from agentnode.simulations.scenarios import RunSpec, build, run
from agentnode.simulations.services import REGISTRY_FRAME_TYPES, ServiceNode
from agentnode.simulations.world import node_name


def _spec(**kw: Any) -> RunSpec:
    base: dict[str, Any] = dict(nodes=6, seed=4, scenario="churn", duration_s=40.0, services="registry", registry_ops=80)
    base.update(kw)
    return RunSpec(**base)


def test_registry_views_converge_through_churn() -> None:
    spec = _spec()
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    reg = result.figures["registry"]
    assert reg["registered"] + reg["deregistered"] == 80 and reg["registered"] > 0
    assert reg["converged_periods"] >= 1
    world = result.world
    running = [n for n in world.nodes if n.running]
    truth = sorted((r.agent_id, n.node_id) for n in running for r in n.core.registry.local_agents())  # type: ignore[union-attr]
    assert truth, "some agents are hosted at the end"
    for n in running:
        view = sorted((e.record.agent_id, e.record.node_id) for e in n.core.registry.find(healthy_only=False))  # type: ignore[union-attr]
        assert view == truth, n.node_id


class _IgnoresSets:
    """A broken registry: record sets from peers vanish (digests still flow)."""

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        return


def test_registry_converged_catches_a_node_that_ignores_record_sets() -> None:
    spec = _spec(scenario="steady", duration_s=30.0, state_bound_s=3.0)
    world, _ = build(spec)
    make = world.core_factory
    victim = node_name(1)

    def broken(node_id: str, address: str, **kw: Any) -> ServiceNode:
        node = make(node_id, address, **kw)
        if node_id == victim:
            node.route(REGISTRY_FRAME_TYPES[1], _IgnoresSets())  # type: ignore[attr-defined]
        return node  # type: ignore[return-value]

    world.core_factory = broken
    violation = world.run(spec.duration_ms)
    assert violation is not None and violation.invariant == "registry-converged", violation
    assert f"{victim} misses" in violation.message
    assert "--services registry" in world.replay_command


def test_all_services_together_replay_to_the_same_digest() -> None:
    spec = RunSpec(nodes=5, seed=8, scenario="swarm", duration_s=20.0, services="state,registry,consensus",
                   state_writes=60, registry_ops=30)
    first = run(spec)
    assert first.violation is None, f"{first.violation}\nreplay: {spec.replay_command()}"
    assert {"state", "registry", "consensus"} <= set(first.figures)
    assert run(spec).digest == first.digest


@pytest.mark.processes
def test_service_digest_does_not_depend_on_the_hash_seed() -> None:
    import os
    import subprocess
    import sys

    code = ("from agentnode.simulations.scenarios import RunSpec, run\n"
            "r = run(RunSpec(nodes=5, seed=8, scenario='swarm', duration_s=20.0, services='state,registry,consensus',"
            " state_writes=60, registry_ops=30))\n"
            "print(r.digest, r.violation is None)\n")
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.add(proc.stdout.strip())
    assert len(outs) == 1 and next(iter(outs)).endswith("True"), outs

"""The replication core in the simulated world: the crdt-converged invariant holds on the real
cores, can fail (a replica that drops every delta and repair), and the services enter the digest."""

from __future__ import annotations

import shlex

from typer.testing import CliRunner

from agentnode.replication import T_DELTAS, T_REPAIR, T_WRITE
from agentnode.simulations.scenarios import RunSpec, build, run
from agentnode.simulations.services import ServiceNode
from agentnode.simulations.world import node_name


def _spec(**kw: object) -> RunSpec:
    base = dict(nodes=5, seed=5, scenario="state-partition", duration_s=24.0, state_keys=20, state_writes=120)
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_state_partition_converges_on_the_real_cores_and_replays() -> None:
    spec = _spec()
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    state = result.figures["state"]
    assert state["writes_done"] == 120 and state["writes_skipped"] == 0
    assert state["converged_at_end"] and state["live_replicas"] == 5
    assert state["reconverge_s"] is not None and state["reconverge_s"] <= spec.state_bound_s
    # Every replica holds the same values, and they are not empty.
    replicas = [n.core.replicator for n in result.world.nodes]  # type: ignore[union-attr]
    keys = replicas[0].store.keys()
    assert len(keys) == 20
    for key in keys:
        # Compared by value: the repr of a set depends on insertion order and the hash seed.
        first = replicas[0].value(key)
        assert all(r.value(key) == first for r in replicas), key
    again = run(spec)
    assert again.digest == result.digest


def test_services_enter_the_trace_digest() -> None:
    plain = run(RunSpec(nodes=4, seed=2, scenario="partition-heal", duration_s=20.0))
    with_state = run(RunSpec(nodes=4, seed=2, scenario="partition-heal", duration_s=20.0, services="state", state_writes=40))
    assert with_state.violation is None
    assert with_state.figures["state"]["writes_done"] == 40
    assert plain.digest != with_state.digest
    other_writes = run(RunSpec(nodes=4, seed=2, scenario="partition-heal", duration_s=20.0, services="state", state_writes=41))
    assert other_writes.digest != with_state.digest


class _DropsDeltasAndRepairs:
    """A broken replica: deltas and repairs addressed to it vanish; everything else works."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def receive(self, sender_id: str, frame: object, now_ms: int) -> None:
        if frame[2] in (T_DELTAS, T_REPAIR, T_WRITE):  # type: ignore[index]
            return
        self.inner.receive(sender_id, frame, now_ms)  # type: ignore[attr-defined]


def test_crdt_converged_catches_a_replica_that_drops_deltas() -> None:
    spec = _spec(scenario="steady", services="state", duration_s=40.0, state_bound_s=3.0)
    world, timeline = build(spec)
    make = world.core_factory
    victim = node_name(2)

    def broken(node_id: str, address: str, **kw: object) -> ServiceNode:
        node = make(node_id, address, **kw)  # type: ignore[arg-type]
        if node_id == victim:
            for frame_type in (T_DELTAS, T_REPAIR, T_WRITE):
                node.route(frame_type, _DropsDeltasAndRepairs(node.replicator))  # type: ignore[attr-defined]
        return node  # type: ignore[return-value]

    world.core_factory = broken
    violation = world.run(spec.duration_ms)
    assert violation is not None and violation.invariant == "crdt-converged"
    assert "different states" in violation.message and "key 'k" in violation.message
    assert victim in violation.message or "n0000" in violation.message
    assert world.replay_command == spec.replay_command()
    assert "--services state" in world.replay_command and "--state-bound-s 3" in world.replay_command


def test_cli_prints_state_figures_and_the_replay_command() -> None:
    from typer import Typer

    from agentnode.cli.simulate import register

    app = Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `simulate` a named sub-command
        pass

    runner = CliRunner()
    args = "simulate --nodes 4 --seed 9 --scenario state-partition --duration-s 20 --state-writes 30 --json"
    result = runner.invoke(app, shlex.split(args))
    assert result.exit_code == 0, result.output
    import json

    figures = json.loads(result.stdout)
    assert figures["state"]["writes_done"] == 30 and figures["state"]["converged_at_end"]
    assert figures["replay"] == "agentnode simulate --nodes 4 --seed 9 --scenario state-partition --duration-s 20 --state-writes 30"


def test_reconvergence_figure_at_small_scale() -> None:
    from agentnode.simulations.reconvergence import reconvergence_figure

    figure = reconvergence_figure(nodes=6, keys=300, writes=60, seed=2)
    assert figure["violation"] is None, figure["replay"]
    assert figure["partition_s"] == 60.0 and figure["writes_during_partition"] == 60
    assert figure["converged_at_end"]
    assert figure["reconverge_s"] is not None and figure["reconverge_s"] >= figure["membership_reconverge_s"]
    assert figure["service_bytes_heal_to_converged"] > 0
    assert figure["replay"].endswith("--scenario state-reconverge --duration-s 100 --state-keys 300 --state-writes 60")


def test_cli_exits_1_with_the_seed_and_replay_command_when_replicas_lag() -> None:
    """30% loss makes a lost delta batch wait for the 1 s ack timeout, past a 0.2 s bound."""
    from typer import Typer

    from agentnode.cli.simulate import register

    app = Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    replay = ("agentnode simulate --nodes 5 --seed 2 --scenario lossy --duration-s 20 --loss 0.3 --services state "
              "--state-writes 50 --state-bound-s 0.2")
    runner = CliRunner()
    result = runner.invoke(app, shlex.split(replay)[1:] + ["--json"])
    assert result.exit_code == 1
    assert "INVARIANT VIOLATED: crdt-converged" in result.stderr and "(seed 2)" in result.stderr
    assert replay in result.stderr and "key 'k" in result.stderr
    again = runner.invoke(app, shlex.split(replay)[1:] + ["--json"])
    import json

    assert json.loads(again.stdout)["digest"] == json.loads(result.stdout)["digest"]

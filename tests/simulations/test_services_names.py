"""Unique agent names in the simulated world: each node runs the real `NameLeases` core, its lease
operations go through the consensus stand-in, and no name is confirmed by two owners at once;
the invariant fires on a driver that treats "no quorum" as success."""

from __future__ import annotations

from typing import Any

from agentnode.consensus.base import NoQuorum
from agentnode.consensus.commands import ClaimName, ReleaseName, RenewName
from agentnode.consensus.state_machine import Lease, LeaseResult
from agentnode.simulations.scenarios import RunSpec, build, run


def _spec(**kw: Any) -> RunSpec:
    base: dict[str, Any] = dict(nodes=8, seed=4, scenario="consensus-faults", services="names", duration_s=40.0,
                                registry_ops=100)
    base.update(kw)
    return RunSpec(**base)


def test_names_service_confirms_and_contends_without_double_owners() -> None:
    spec = _spec()
    assert spec.service_names == ("consensus", "names", "registry")
    result = run(spec)
    assert result.violation is None, f"{result.violation}\nreplay: {spec.replay_command()}"
    totals: dict[str, int] = {}
    for node in result.world.nodes:
        if node.running:
            for key, value in node.core.names.counters.items():  # type: ignore[union-attr]
                totals[key] = totals.get(key, 0) + value
    assert totals["confirmed"] > 0 and totals["renewals"] > 0
    assert totals["taken"] > 0  # the small name pool is contended
    assert totals["not_applied"] > 0  # partitions left some claims without a quorum
    assert run(spec).digest == result.digest


def test_name_advertised_unique_catches_a_driver_that_treats_no_quorum_as_success() -> None:
    spec = _spec()
    world, timeline = build(spec)
    service = timeline.services["setup"].consensus

    def careless(node: Any, op: Any, local_now_ms: int) -> None:
        command: Any = {"claim": ClaimName(op.name, op.owner, op.ttl_ms), "renew": RenewName(op.name, op.owner, op.ttl_ms),
                        "release": ReleaseName(op.name, op.owner)}[op.kind]
        try:
            result = service.cluster.submit(op.owner.split("/")[0], command, world.now_ms)
        except NoQuorum:  # the bug: no answer taken for a grant
            result = LeaseResult(True, Lease(op.name, op.owner, world.now_ms + op.ttl_ms, 10_000 + op.op_id))
        if op.kind != "release":
            node.names.on_result(op.op_id, local_now_ms, result)

    service.run_name_op = careless
    violation = world.run(spec.duration_ms)
    assert violation is not None and violation.invariant == "name-advertised-unique", violation
    assert "confirmed by 2 owners" in violation.message
    assert world.replay_command == spec.replay_command()

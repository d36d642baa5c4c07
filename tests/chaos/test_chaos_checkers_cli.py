"""Checkers on recorded data (no processes), and the CLI's list/doctor/run-usage paths."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from agentnode.chaos.checkers import run_check
from agentnode.chaos.workloads import FaultEvent, RunContext
from agentnode.cli.main import app

runner = CliRunner()


@dataclass
class FakeNode:
    index: int
    node_id: str
    log_path: Path = field(default_factory=lambda: Path("/nonexistent"))


@dataclass
class FakeCluster:
    nodes: list[FakeNode]

    @property
    def size(self) -> int:
        return len(self.nodes)


def context(views: list[tuple[float, int, dict[str, str]]], timeline: list[FaultEvent] = ()) -> RunContext:
    cluster = FakeCluster([FakeNode(i, f"id{i}") for i in range(3)])
    ctx = RunContext(cluster, random.Random(0))  # type: ignore[arg-type]
    ctx.converged_s = 0.0
    ctx.timeline.extend(timeline)
    for t, observer, view in views:
        ctx.recorder.add_view(t, observer, view)
    return ctx


ALL_ALIVE = {"id0": "alive", "id1": "alive", "id2": "alive"}


def test_membership_stable_passes_and_fails_on_a_false_death() -> None:
    good = context([(t, o, ALL_ALIVE) for t in (1.0, 2.0) for o in range(3)])
    assert run_check("membership_stable", good, {}).status == "pass"
    bad = context([(1.0, 0, ALL_ALIVE), (2.0, 0, {**ALL_ALIVE, "id2": "dead"}), (2.0, 1, {"id0": "alive", "id1": "alive"})])
    verdict = run_check("membership_stable", bad, {})
    assert verdict.status == "fail"
    assert set(verdict.evidence["false_dead"]) == {"0->2", "1->2 (absent)"}


def test_membership_stable_excuses_a_killed_node_until_it_is_back_and_settled() -> None:
    timeline = [FaultEvent(1.0, "kill", "kill", (2,)), FaultEvent(3.0, "restart", "restart", (2,))]
    views = [(2.0, 0, {**ALL_ALIVE, "id2": "dead"}), (5.0, 0, {**ALL_ALIVE, "id2": "suspect"}), (12.0, 0, ALL_ALIVE)]
    assert run_check("membership_stable", context(views, timeline), {"settle_s": 5}).status == "pass"
    late = views + [(9.0, 0, {**ALL_ALIVE, "id2": "dead"})]
    assert run_check("membership_stable", context(late, timeline), {"settle_s": 5}).status == "fail"


def test_no_data_is_never_a_pass() -> None:
    assert run_check("membership_stable", context([]), {}).status == "skip"
    assert run_check("raft_linearizable", context([]), {}).status == "skip"  # no raft workload in the run
    ctx = context([])
    ctx.converged_s = None
    assert run_check("membership_reforms", ctx, {}).status == "error"
    assert run_check("nonsense", context([]), {}).status == "error"


def test_cli_list_and_doctor_json() -> None:
    result = runner.invoke(app, ["chaos", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"partition-heal", "loss-10", "clock-skew"} <= {r["name"] for r in rows}
    result = runner.invoke(app, ["chaos", "doctor", "--json"])
    data: dict[str, Any] = json.loads(result.output)
    assert set(data["faults"]) >= {"partition", "loss", "delay", "skew", "disk_full", "kill"}
    assert result.exit_code == (0 if all(f["ok"] for f in data["faults"].values()) else 5)


def test_cli_run_refuses_a_bad_scenario_with_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["chaos", "run", "no-such-scenario"])
    assert result.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nduration_s = 5\nnodes = 3\n[[fault]]\nat_s = 1\naction = 'kill'\nnode = 7\n")
    result = runner.invoke(app, ["chaos", "run", str(bad)])
    assert result.exit_code == 2 and "node 7 does not exist" in result.output

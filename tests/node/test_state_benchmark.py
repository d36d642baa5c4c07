"""`agentnode bench state` runs end to end at a small size and reports every figure (no speed assertions)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from agentnode.cli.main import app


def test_bench_state_small_run_reports_all_figures() -> None:
    result = CliRunner().invoke(app, ["bench", "state", "--nodes", "4", "--keys", "300", "--writes", "20",
                                      "--partition-s", "10", "--updates", "300", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["local"]["converged"] and figures["local"]["updates_per_s"] > 0
    assert figures["node_state"]["updates"] == 300
    assert figures["repair"]["converged"] and figures["repair"]["repair_bytes"] > 0
    heal = figures["partition_heal"]
    assert heal["sides_converged_before_heal"] and heal["converged"] and heal["reconverge_s"] is not None
    prune = figures["prune"]
    assert prune["folded"] and prune["markers_collected"]
    assert prune["bytes_per_key_after"] < prune["bytes_per_key_before"]
    world = figures["partition_heal_world"]  # the same figure in the shared simulator (real NodeCores)
    assert world["nodes"] == 4 and world["keys"] == 300
    assert world["violation"] is None and world["converged_at_end"]
    assert world["reconverge_s"] is not None and world["reconverge_s"] >= 0

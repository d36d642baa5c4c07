"""`agentnode simulate` in-process (typer's CliRunner): --json figures, the replay command on an
invariant violation, and the --report PNGs."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from typer.testing import CliRunner

from agentnode.cli.main import app

runner = CliRunner()

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_MIN_BYTES = 10_000
"""A plot with axes, a legend and data is tens of kB; an empty canvas is far less."""

JSON_FIELDS = (
    "nodes", "seed", "scenario", "simulated_s", "digest", "join_converge_ms", "suspect_ms", "dead_ms",
    "false_suspicions_per_node_hour", "false_deaths_per_node_hour", "messages_per_node_per_s",
    "bytes_per_node_per_s", "converged_at_end", "wall_s", "peak_rss_mb", "replay", "violation",
)


def test_json_prints_the_figures_and_replays_to_the_same_digest() -> None:
    args = ["simulate", "--nodes", "10", "--seed", "7", "--scenario", "crash", "--duration-s", "25", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    figures = json.loads(first.stdout)
    for key in JSON_FIELDS:
        assert key in figures, key
    assert figures["nodes"] == 10 and figures["seed"] == 7 and figures["violation"] is None
    assert figures["dead_ms"]["reached"] == 9
    assert figures["replay"] == "agentnode simulate --nodes 10 --seed 7 --scenario crash --duration-s 25"
    again = runner.invoke(app, shlex.split(figures["replay"])[1:] + ["--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["digest"] == figures["digest"]


def test_human_output_names_the_figures() -> None:
    result = runner.invoke(app, ["simulate", "--nodes", "6", "--seed", "1", "--scenario", "steady", "--duration-s", "20"])
    assert result.exit_code == 0, result.output
    assert "steady: 6 nodes, seed 1" in result.stdout
    assert "bytes per node per second" in result.stdout
    assert "replay: agentnode simulate --nodes 6 --seed 1" in result.stdout


def test_violation_exits_1_and_prints_the_seed_and_replay_command() -> None:
    args = ["simulate", "--nodes", "20", "--seed", "3", "--scenario", "crash", "--duration-s", "30",
            "--convergence-bound-s", "0.5", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "INVARIANT VIOLATED: membership-converges" in result.stderr
    assert "(seed 3)" in result.stderr
    replay = ("agentnode simulate --nodes 20 --seed 3 --scenario crash --duration-s 30 "
              "--convergence-bound-s 0.5")
    assert replay in result.stderr
    figures = json.loads(result.stdout)
    assert figures["violation"]["invariant"] == "membership-converges"
    again = runner.invoke(app, shlex.split(replay)[1:] + ["--json"])
    assert again.exit_code == 1
    assert json.loads(again.stdout)["violation"] == figures["violation"]


def test_bad_arguments_are_refused_with_a_message() -> None:
    result = runner.invoke(app, ["simulate", "--nodes", "5", "--seed", "1", "--scenario", "nope"])
    assert result.exit_code == 2
    assert "unknown scenario" in result.output


def test_report_writes_the_pngs(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["simulate", "--nodes", "12", "--seed", "2", "--scenario", "crash",
                                 "--duration-s", "25", "--json", "--report", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    for name in ("members_seen_alive.png", "detection.png", "bandwidth.png", "reach.png"):
        path = out / name
        assert path.exists(), name
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > PNG_MIN_BYTES, (name, len(data))
        assert str(path) in figures["report_files"]
    written = json.loads((out / "figures.json").read_text())
    assert written["digest"] == figures["digest"]

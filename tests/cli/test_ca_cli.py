"""`agentnode ca init|issue` and `agentnode id`, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agentnode.cli.main import app

runner = CliRunner()


def test_init_issue_id(tmp_path: Path) -> None:
    ca, node = tmp_path / "ca", tmp_path / "node"
    r = runner.invoke(app, ["ca", "init", "--dir", str(ca)])
    assert r.exit_code == 0, r.output
    assert "agentnode ca issue" in r.output
    r = runner.invoke(app, ["ca", "issue", "--ca-dir", str(ca), "--data-dir", str(node), "--host", "127.0.0.1", "--days", "30", "--json"])
    assert r.exit_code == 0, r.output
    issued = json.loads(r.output)
    assert len(issued["node_id"]) == 20 and "127.0.0.1" in issued["names"] and issued["node_id"] in issued["names"]
    r = runner.invoke(app, ["id", "--data-dir", str(node), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["node_id"] == issued["node_id"]
    r = runner.invoke(app, ["id", "--data-dir", str(node)])
    assert r.exit_code == 0 and issued["node_id"] in r.output
    # re-issue keeps the id
    r = runner.invoke(app, ["ca", "issue", "--ca-dir", str(ca), "--data-dir", str(node), "--json"])
    assert json.loads(r.output)["node_id"] == issued["node_id"]


def test_user_errors_exit_1_without_traceback(tmp_path: Path) -> None:
    r = runner.invoke(app, ["id", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code == 1 and "agentnode ca issue" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["ca", "issue", "--ca-dir", str(tmp_path / "noca"), "--data-dir", str(tmp_path / "n")])
    assert r.exit_code == 1 and "agentnode ca init" in r.output
    assert runner.invoke(app, ["ca", "init", "--dir", str(tmp_path / "ca")]).exit_code == 0
    r = runner.invoke(app, ["ca", "init", "--dir", str(tmp_path / "ca")])
    assert r.exit_code == 1 and "refusing to overwrite" in r.output
    r = runner.invoke(app, ["ca", "issue", "--ca-dir", str(tmp_path / "ca"), "--data-dir", str(tmp_path / "n"), "--days", "0"])
    assert r.exit_code == 1 and "at least one day" in r.output

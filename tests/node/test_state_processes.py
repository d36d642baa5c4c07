"""Replicated state across real `agentnode join` processes on loopback, driven through the CLI and control socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentnode.control import ControlError
from agentnode.local_cluster import LocalCluster

pytestmark = [pytest.mark.processes, pytest.mark.loopback]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentnode.cli.main", *args], capture_output=True, text=True, timeout=60)


def _value(node: object, key: str) -> object:
    return node.call("state.get", key=key)["value"]  # type: ignore[attr-defined]


def test_three_processes_converge_majority_fails_without_majority_and_restart_keeps_state(tmp_path: Path) -> None:
    with LocalCluster(3, root=tmp_path) as cluster:
        cluster.wait_for("3 nodes to converge", cluster.converged, timeout_s=30)
        a, b, c = cluster.nodes
        cluster.wait_for("state peers", lambda: all(len(n.call("state.stats")["stream_lag"]) == 2 for n in cluster.nodes))

        # concurrent writes to the same keys on all three nodes
        errors: list[BaseException] = []

        def writer(node: object, tag: str) -> None:
            try:
                for i in range(20):
                    node.call("state.update", kind="incr", key="jobs", n=1)  # type: ignore[attr-defined]
                    node.call("state.update", kind="add", key="claimed", element=f"{tag}{i}")  # type: ignore[attr-defined]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n, t)) for n, t in zip(cluster.nodes, "abc")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        cluster.wait_for("convergence", lambda: all(_value(n, "jobs") == 60 and len(_value(n, "claimed")) == 60
                                                    for n in cluster.nodes), timeout_s=30)

        # the CLI: set with majority, get with majority, JSON output
        result = _cli("state", "set", "cfg", '{"mode": "fast"}', "--consistency", "majority", "--data-dir", str(a.data_dir))
        assert result.returncode == 0, result.stderr
        result = _cli("state", "get", "cfg", "--consistency", "all", "--json", "--data-dir", str(c.data_dir))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"key": "cfg", "type": "lwwregister", "value": {"mode": "fast"}}
        result = _cli("state", "incr", "jobs", "5", "--data-dir", str(b.data_dir))
        assert result.returncode == 0 and "jobs = 65" in result.stdout, result.stdout + result.stderr

        # kill two of three: a majority write on the survivor fails with a clear error (and a non-zero exit)
        cluster.kill(b)
        cluster.kill(c)
        result = _cli("state", "incr", "jobs", "--consistency", "majority", "--timeout", "1", "--data-dir", str(a.data_dir))
        assert result.returncode != 0
        assert "of the 2 replicas it needs" in result.stderr or "needs 2 of 3 replicas" in result.stderr, result.stderr
        with pytest.raises(ControlError, match="replicas"):
            a.call("state.update", kind="incr", key="jobs", consistency="all", timeout_s=1)
        assert _value(a, "jobs") == 67  # both writes were applied locally

        # restart after kill -9 keeps the local replica; the restarted nodes catch up with the survivor
        cluster.start_node(b)
        assert _value(b, "jobs") in (65, 66, 67)
        cluster.start_node(c)
        cluster.wait_for("catch-up after restart", lambda: all(_value(n, "jobs") == 67 for n in cluster.nodes), timeout_s=30)
        assert len(_value(c, "claimed")) == 60

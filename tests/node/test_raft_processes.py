"""The Raft group across real `agentnode join` processes on loopback, driven through the CLI and control sockets."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentnode.consensus.history import HistoryRecorder, check_history
from agentnode.control import ControlError
from agentnode.local_cluster import ClusterNode, LocalCluster
from agentnode.raft import outcome_of_error_kind

pytestmark = [pytest.mark.processes, pytest.mark.loopback]


def _cli(node: ClusterNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentnode.cli.main", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=60)


def _status(node: ClusterNode) -> dict[str, Any]:
    return node.client(timeout_s=5).call("raft_status")


def _leader(cluster: LocalCluster, voters: int) -> ClusterNode:
    """Wait until every live node names the same leader of a `voters`-voter group; return its process."""
    found: list[str] = []

    def agreed() -> bool:
        views = [_status(n) for n in cluster.nodes if n.alive]
        leaders = {v["leader"] for v in views}
        ok = len(leaders) == 1 and None not in leaders and all(len(v["voters"]) == voters for v in views)
        found[:] = list(leaders)
        return ok

    cluster.wait_for(f"a {voters}-voter Raft group with one leader", agreed, timeout_s=30)
    return next(n for n in cluster.nodes if n.node_id == found[0])


def _put_until_ok(node: ClusterNode, key: str, value: str, timeout_s: float = 15.0) -> float:
    """Retry a write until it commits; return the seconds it took (writes resume after a failover)."""
    start = time.monotonic()
    while True:
        try:
            if node.client(timeout_s=15).call("kv_put", key=key, value=value)["ok"]:
                return time.monotonic() - start
        except ControlError:
            pass
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"no write committed within {timeout_s} s")
        time.sleep(0.05)


def test_three_nodes_form_a_group_serve_the_cli_and_survive_a_leader_kill(tmp_path: Path) -> None:
    with LocalCluster(4, root=tmp_path, profile="local") as cluster:
        leader = _leader(cluster, voters=3)
        outsider = next(n for n in cluster.nodes if n.node_id not in _status(leader)["voters"])

        status = _cli(outsider, "raft", "status", "--json")
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)
        assert view["leader"] == leader.node_id and len(view["voters"]) == 3
        assert view["commit_index"] >= 1 and set(view["lag"]) == set(view["voters"])
        assert view["this_node"]["voter"] is False

        assert _cli(outsider, "kv", "put", "color", "blue").returncode == 0
        got = _cli(cluster.nodes[0], "kv", "get", "color")
        assert got.returncode == 0 and got.stdout.strip() == "blue"
        mismatch = _cli(cluster.nodes[1], "kv", "cas", "color", "red", "--expected", "green", "--json")
        assert mismatch.returncode == 1 and json.loads(mismatch.stdout)["value"] == "blue"
        assert _cli(cluster.nodes[1], "kv", "cas", "color", "red", "--expected", "blue").returncode == 0
        assert _cli(outsider, "kv", "delete", "color").returncode == 0
        assert _cli(cluster.nodes[2], "kv", "get", "color").returncode == 1  # absent

        lock = _cli(outsider, "lock", "acquire", "deploy", "--owner", "ci", "--json")
        assert lock.returncode == 0, lock.stderr
        token = json.loads(lock.stdout)["fencing_token"]
        held = _cli(cluster.nodes[0], "lock", "acquire", "deploy", "--owner", "someone-else")
        assert held.returncode == 1
        assert _cli(cluster.nodes[0], "lock", "release", "deploy", "--owner", "ci").returncode == 0
        again = json.loads(_cli(cluster.nodes[0], "lock", "acquire", "deploy", "--owner", "someone-else", "--json").stdout)
        assert again["fencing_token"] > token

        # kill -9 of the leader: a new leader is elected among the two others and writes resume
        cluster.kill(leader)
        survivor = next(n for n in cluster.nodes if n.alive and n is not outsider)
        waited = _put_until_ok(outsider, "after-failover", "yes")
        new_leader = _leader(cluster, voters=3)
        assert new_leader.node_id != leader.node_id
        assert json.loads(_cli(survivor, "kv", "get", "after-failover", "--json").stdout)["value"] == "yes"
        print(f"\nwrites resumed {waited:.2f} s after kill -9 of the leader")

        # the killed voter restarts from its journal and catches up with what it missed
        cluster.start_node(leader)

        def caught_up() -> bool:
            read = leader.client(timeout_s=5).call("kv_get", key="after-failover", stale=True)
            return read["value"] == "yes" and _status(leader)["this_node"]["voter"]

        cluster.wait_for("the restarted voter to catch up", caught_up, timeout_s=30)

        # a revoked node is refused by every node, and its own operations fail with a clear error
        revoke = _cli(survivor, "node", "revoke", outsider.node_id, "--reason", "test")
        assert revoke.returncode == 0, revoke.stderr
        others = [n for n in cluster.nodes if n.alive and n is not outsider]
        cluster.wait_for("every node to mark the revoked node dead",
                         lambda: all(n.view().get(outsider.node_id) == "dead" for n in others), timeout_s=30)
        refused = _cli(outsider, "kv", "put", "x", "y")
        assert refused.returncode == 1 and "revoked" in refused.stderr
        roster = json.loads(_cli(survivor, "node", "roster", "--json").stdout)
        assert outsider.node_id in roster["revoked"]


def test_five_voters_linearizable_history_under_leader_kills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTNODE_RAFT_BOOTSTRAP_EXPECT", "5")
    with LocalCluster(5, root=tmp_path, profile="local") as cluster:
        leader = _leader(cluster, voters=5)

        # concurrent claims of one agent name from every node: exactly one wins
        claims: list[dict[str, Any]] = []
        barrier = threading.Barrier(len(cluster.nodes))

        def claim(node: ClusterNode, i: int) -> None:
            barrier.wait(timeout=10)
            claims.append(node.client(timeout_s=15).call("name_claim", name="planner", owner=f"agent-{i}", ttl_ms=60_000))

        threads = [threading.Thread(target=claim, args=(n, i)) for i, n in enumerate(cluster.nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(claims) == 5 and sum(c["ok"] for c in claims) == 1
        winner = next(c["owner"] for c in claims if c["ok"])
        assert all(c["owner"] == winner for c in claims)

        # a recorded workload through every node's control socket while the leader is killed twice
        recorder = HistoryRecorder()
        lock = threading.Lock()
        stop = threading.Event()

        def now_ms() -> int:
            return time.monotonic_ns() // 1_000_000

        def client(name: str, seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                node = rng.choice([n for n in cluster.nodes if n.alive])
                key = rng.choice(["x", "y"])
                op = rng.choice(["get", "put", "cas", "delete"])
                value = str(rng.randrange(4))
                expected = rng.choice([None, "0", "1", "2", "3"])
                args: dict[str, Any] = {"key": key}
                if op == "put":
                    args["value"] = value
                elif op == "cas":
                    args.update(value=value, expected_absent=expected is None, **({} if expected is None else {"expected": expected}))
                with lock:
                    op_id = recorder.invoke(name, op, key, now_ms(), value=value.encode() if op in ("put", "cas") else None,
                                            expected=expected.encode() if op == "cas" and expected is not None else None)
                try:
                    result = node.client(timeout_s=15).call(f"kv_{op}", **args)
                except ControlError as exc:
                    with lock:
                        if outcome_of_error_kind(exc.kind) == "fail":
                            recorder.fail(op_id, now_ms())
                        else:
                            recorder.unknown(op_id)
                    continue
                except OSError:  # the node died with the request in flight
                    with lock:
                        recorder.unknown(op_id)
                    continue
                done = now_ms()
                answer = (None if result["value_hex"] is None else bytes.fromhex(result["value_hex"])) if op == "get" \
                    else result["ok"] if op == "cas" else None
                with lock:
                    recorder.ok(op_id, done, answer)

        workers = [threading.Thread(target=client, args=(f"c{i}", i)) for i in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.5)
            cluster.kill(leader)
            second = _leader(cluster, voters=5)
            time.sleep(1.0)
            cluster.kill(second)
            third = _leader(cluster, voters=5)
            time.sleep(1.5)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
        assert third.node_id not in (leader.node_id, second.node_id)
        history = recorder.close()
        (tmp_path / "history.jsonl").write_text("".join(op.to_json() + "\n" for op in history))
        assert sum(op.status == "ok" for op in history) >= 30, [op.status for op in history]
        verdicts = check_history(history)
        assert all(v.linearizable for v in verdicts.values()), verdicts
        # the same file passes the CLI checker
        checked = subprocess.run([sys.executable, "-m", "agentnode.cli.main", "raft", "check-history",
                                  str(tmp_path / "history.jsonl"), "--json"], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0 and json.loads(checked.stdout)["linearizable"] is True
        # with 3 of 5 voters left the group still commits
        _put_until_ok(third, "final", "ok")

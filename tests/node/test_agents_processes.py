"""Agents across real `agentnode join --demo-agents` processes on loopback, driven through the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentnode.local_cluster import ClusterNode, LocalCluster

pytestmark = [pytest.mark.processes, pytest.mark.loopback]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentnode.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def _json(node: ClusterNode, *args: str) -> Any:
    result = _cli(*args, "--data-dir", str(node.data_dir), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _log(node: ClusterNode, agent: str) -> list[dict[str, Any]]:
    path = node.data_dir / "demo-agents" / f"{agent}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _agent_count(node: ClusterNode) -> int:
    return len([a for a in node.call("agents.list") if not a["agent_id"].startswith("_")])


def test_three_nodes_unicast_request_broadcast_and_capability_failover(tmp_path: Path) -> None:
    with LocalCluster(3, root=tmp_path, extra_args=["--demo-agents"]) as cluster:
        cluster.wait_for("3 nodes to converge", cluster.converged, timeout_s=30)
        cluster.wait_for("every node to see the 12 demo agents", lambda: all(_agent_count(n) == 12 for n in cluster.nodes))
        listing = _json(cluster.nodes[0], "agents")
        assert {a["agent_id"] for a in listing if a["name"] == "echo"} == {f"echo@{n.node_id}" for n in cluster.nodes}
        assert all(a["status"] == "healthy" and not a["node_suspect"] for a in listing)

        # unicast and request in every direction (including a node to itself)
        for src in cluster.nodes:
            for dest in cluster.nodes:
                tag = f"{src.index}->{dest.index}"
                sent = _json(src, "send", f"echo@{dest.node_id}", f"unicast {tag}")
                assert sent["sent"] == 1
                answer = _json(src, "request", f"echo@{dest.node_id}", f"request {tag}")
                assert answer["response"] == f"request {tag}" and answer["agent_id"] == f"echo@{dest.node_id}"
        for dest in cluster.nodes:
            unicasts = Counter(e["data"] for e in _log(dest, "echo") if e["data"].startswith("unicast"))
            assert unicasts == {f"unicast {s.index}->{dest.index}": 1 for s in cluster.nodes}

        # an unknown agent is a clear error with a non-zero exit code
        missing = _cli("request", "nobody@nowhere", "x", "--data-dir", str(cluster.nodes[0].data_dir))
        assert missing.returncode != 0 and "no agent with this id" in missing.stderr

        # `agentnode subscribe` prints what is published on the topic, from any node
        subscriber = subprocess.Popen(
            [sys.executable, "-m", "agentnode.cli.main", "subscribe", "demo", "--count", "1", "--json",
             "--data-dir", str(cluster.nodes[0].data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cluster.wait_for("the CLI subscription to replicate", lambda: any(
                a["agent_id"] == f"_node@{cluster.nodes[0].node_id}" and "demo" in a["topics"]
                for a in cluster.nodes[2].call("agents.list")), timeout_s=20)

            # broadcast reaches every agent exactly once; a topic reaches its subscribers only
            _json(cluster.nodes[1], "broadcast", "hello everyone")
            _json(cluster.nodes[2], "publish", "demo", "topic news")
            out, err = subscriber.communicate(timeout=20)
        finally:
            if subscriber.poll() is None:
                subscriber.kill()
                subscriber.wait(timeout=10)
        assert subscriber.returncode == 0, err
        printed = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert [(p["topic"], p["data"]) for p in printed] == [("demo", "topic news")]

        def broadcast_done() -> bool:
            return all(sum(e["data"] == "hello everyone" for e in _log(n, a)) >= 1
                       for n in cluster.nodes for a in ("echo", "counter", "listener")) and all(
                any(e["data"] == "topic news" for e in _log(n, "listener")) for n in cluster.nodes)

        cluster.wait_for("the broadcast and the topic message everywhere", broadcast_done, timeout_s=20)
        time.sleep(0.5)
        for n in cluster.nodes:
            for a in ("echo", "counter", "listener"):
                got = [e for e in _log(n, a) if e["data"] in ("hello everyone", "topic news")]
                expected = ["hello everyone"] + (["topic news"] if a == "listener" else [])
                assert sorted(e["data"] for e in got) == sorted(expected), (n.index, a, got)

        # a capability request spreads over the agents, and fails over when a node is killed
        first = cluster.nodes[0]
        answered = Counter(_json(first, "request", "--capability", "counter", "job")["agent_id"] for _ in range(6))
        assert answered == {f"counter@{n.node_id}": 2 for n in cluster.nodes}
        victim = cluster.nodes[2]
        cluster.kill(victim)
        after = Counter(_json(first, "request", "--capability", "counter", "job", "--timeout", "20")["agent_id"]
                        for _ in range(4))
        assert set(after) <= {f"counter@{n.node_id}" for n in cluster.nodes[:2]} and sum(after.values()) == 4
        cluster.wait_for("the killed node's agents to vanish from lookups",
                         lambda: _agent_count(first) == 8, timeout_s=30)


def test_durable_messages_survive_kill_9_of_the_sender(tmp_path: Path) -> None:
    with LocalCluster(2, root=tmp_path, extra_args=["--demo-agents"]) as cluster:
        sender, receiver = cluster.nodes
        cluster.wait_for("convergence", cluster.converged, timeout_s=30)
        cluster.wait_for("agents", lambda: _agent_count(sender) == 8)
        target = f"counter@{receiver.node_id}"
        confirmed: list[str] = []
        stop = threading.Event()

        def stream() -> None:
            batch = 0
            while not stop.is_set():
                tag = f"batch{batch}"
                try:
                    sender.client(timeout_s=20).call("agents.send", to=target, data=tag, count=200, delivery="durable")
                except Exception:  # the node was killed mid-call: this batch is not confirmed
                    return
                confirmed.append(tag)
                batch += 1

        assert receiver.process is not None
        # No acks come back while the receiver is stopped, so every confirmed batch is still in the
        # sender's outbox when it is killed: the restart must resend them all (deterministic on a busy box).
        receiver.process.send_signal(signal.SIGSTOP)
        thread = threading.Thread(target=stream)
        thread.start()
        deadline = time.monotonic() + 20
        while len(confirmed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill(sender)  # kill -9 in the middle of the stream
        stop.set()
        thread.join(timeout=30)
        receiver.process.send_signal(signal.SIGCONT)
        assert confirmed, "no batch was confirmed before the kill"
        cluster.start_node(sender)
        expected = {f"{tag} #{i}" for tag in confirmed for i in range(200)}

        def all_delivered() -> bool:
            return expected <= {e["data"] for e in _log(receiver, "counter")}

        cluster.wait_for(f"all {len(expected)} confirmed durable messages at the receiver", all_delivered, timeout_s=60)
        time.sleep(1.0)  # late duplicates, if any, would show up now
        counts = Counter(e["data"] for e in _log(receiver, "counter"))
        assert max(counts.values()) == 1, [d for d, c in counts.items() if c > 1][:5]
        log_text = sender.log_path.read_text()
        assert "resending" in log_text  # the restart really resent from the outbox
        stats = sender.call("agents.stats")
        cluster.wait_for("the outbox to drain", lambda: sender.call("agents.stats")["outbox_rows"] == 0, timeout_s=30)
        assert stats["service"]["durable_resent"] > 0
        print(f"confirmed {len(expected)} durable messages; {stats['service']['durable_resent']} resent after kill -9")

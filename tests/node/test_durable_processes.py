"""Durable messages across a kill -9 of the RECEIVER, and to a node that is down (decisions 0123, 0124).

The sender is an `agentnode join --demo-agents` process driven through its control socket; the receiver
is a small embedded-Node script whose handler appends every message to a file (line-buffered, so a
record reaches the OS before the handler returns) and kills its own process with SIGKILL while handling
message `KILL_AT`. The kill happens inside a handler, after the handled marks of the messages before it
were committed (the handler sleeps first, and the pump commits during that sleep), so the test is
deterministic: every message must be recorded exactly once, including the ones the receiver had already
acknowledged (accepted into its inbox) but not handled when it died.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agentnode.local_cluster import ClusterNode, LocalCluster
from agentnode.transport.identity import issue_node_certificate

pytestmark = [pytest.mark.processes, pytest.mark.loopback]

COUNT = 300
KILL_AT = "m #120"
LATE = 20

RECEIVER = r'''
import asyncio, json, os, signal, sys
from agentnode.config import NodeConfig
from agentnode.runtime import Node

data_dir, bootstrap, cluster, listen, record, kill_at = sys.argv[1:7]


async def main() -> None:
    config = NodeConfig.build(data_dir=data_dir, listen=listen, bootstrap=[bootstrap], cluster=cluster, mdns=False,
                              profile="local")
    async with Node(config) as node:
        out = open(record, "a", buffering=1)

        async def handler(msg):
            await asyncio.sleep(0.002)  # a slow handler: acknowledged messages queue up in the inbox
            text = msg.payload.decode()
            if text == kill_at:
                await asyncio.sleep(0.1)  # the pump commits the handled marks of the messages before
                os.kill(os.getpid(), signal.SIGKILL)
            out.write(text + "\n")

        agent = await node.register_agent("rx", handler=handler)
        state = os.path.join(data_dir, "rx-state.json")
        while True:
            tmp = state + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"agent_id": agent.agent_id, "address": str(node.address),
                           "counters": node.agents.counters}, f)
            os.replace(tmp, state)
            await asyncio.sleep(0.1)


asyncio.run(main())
'''


def _state(rx_dir: Path) -> dict | None:
    try:
        return json.loads((rx_dir / "rx-state.json").read_text())
    except (OSError, ValueError):
        return None


def _start_receiver(script: Path, rx_dir: Path, sender: ClusterNode, cluster: LocalCluster, listen: str,
                    record: Path, kill_at: str) -> subprocess.Popen[bytes]:
    (rx_dir / "rx-state.json").unlink(missing_ok=True)
    log = open(rx_dir / "receiver.log", "ab")
    proc = subprocess.Popen([sys.executable, str(script), str(rx_dir), str(sender.address), cluster.cluster, listen,
                             str(record), kill_at], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while _state(rx_dir) is None:
        assert proc.poll() is None, (rx_dir / "receiver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the receiver did not start within 30 s"
        time.sleep(0.05)
    return proc


def _agents(node: ClusterNode) -> set[str]:
    return {a["agent_id"] for a in node.call("agents.list")}


def test_durable_messages_survive_kill_9_of_the_receiver_and_wait_for_it_while_down(tmp_path: Path) -> None:
    with LocalCluster(1, root=tmp_path / "cluster", extra_args=["--demo-agents"]) as cluster:
        sender = cluster.nodes[0]
        rx_dir = tmp_path / "rx"
        rx_node = issue_node_certificate(cluster.ca_dir, rx_dir, hosts=["127.0.0.1"])
        script = tmp_path / "receiver.py"
        script.write_text(RECEIVER)
        record = tmp_path / "record.txt"
        rx = f"rx@{rx_node}"
        proc = _start_receiver(script, rx_dir, sender, cluster, "127.0.0.1:0", record, KILL_AT)
        try:
            address = _state(rx_dir)["address"]  # type: ignore[index]
            cluster.wait_for("the sender to see the receiving agent", lambda: rx in _agents(sender), timeout_s=30)

            sent = sender.call("agents.send", to=rx, data="m", count=COUNT, delivery="durable")
            assert sent["sent"] == COUNT
            assert proc.wait(timeout=60) == -9  # killed itself while handling KILL_AT
            before_restart = Counter(record.read_text().splitlines())
            assert KILL_AT not in before_restart and len(before_restart) >= 100

            # The receiving node is down: once the registry has dropped the agent, a durable send to it
            # still succeeds (it waits in the outbox), and an id naming no known node fails at once.
            cluster.wait_for("the sender to drop the dead node's agent", lambda: rx not in _agents(sender),
                             timeout_s=45)
            late = sender.call("agents.send", to=rx, data="late", count=LATE, delivery="durable")
            assert late["sent"] == LATE
            with pytest.raises(Exception, match="(?i)unknown|no agent"):
                sender.call("agents.send", to="rx@no-such-node", data="x", delivery="durable")

            proc = _start_receiver(script, rx_dir, sender, cluster, address, record, "-")
            expected = {f"m #{i}" for i in range(COUNT)} | {f"late #{i}" for i in range(LATE)}

            def all_recorded() -> bool:
                return expected <= set(record.read_text().splitlines())

            cluster.wait_for(f"all {len(expected)} durable messages at the restarted receiver", all_recorded,
                             timeout_s=90)
            time.sleep(1.0)  # late duplicates, if any, would show up now
            counts = Counter(record.read_text().splitlines())
            assert set(counts) == expected
            assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1][:5]
            state = _state(rx_dir)
            assert state is not None
            # Acknowledged before the kill but not handled then: handed over again from the inbox.
            assert state["counters"]["durable_replayed"] > 0
            cluster.wait_for("the sender's outbox to drain",
                             lambda: sender.call("agents.stats")["outbox_rows"] == 0, timeout_s=30)
            service = sender.call("agents.stats")["service"]
            assert service["durable_to_absent"] >= 1
            print(f"receiver killed after {len(before_restart)} handled; replayed {state['counters']['durable_replayed']}"
                  f" from its inbox; sender retried {service['durable_retried']} rejects while rx re-registered")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

"""Load-balanced sends to a capability, failover when a node stops, and a durable send.

Three embedded nodes (real mutual TLS on loopback); node 1 asks "any agent that can summarize".

Run it: python docs/examples/agents_capabilities.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import agentnode
from agentnode.agents import Capability, Message
from agentnode.transport.identity import create_ca, issue_node_certificate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_ca(root / "ca")
        for name in ("n1", "n2", "n3"):
            issue_node_certificate(root / "ca", root / name)
        common = dict(listen="127.0.0.1:0", cluster="capabilities", mdns=False, profile="local")
        n1 = agentnode.Node(agentnode.NodeConfig(data_dir=root / "n1", **common))
        await n1.start()
        others = [agentnode.Node(agentnode.NodeConfig(data_dir=root / n, bootstrap=[str(n1.address)], **common))
                  for n in ("n2", "n3")]
        for node in others:
            await node.start()
        try:
            for i, node in enumerate(others, start=2):
                await node.register_agent("summarizer", ["summarize"], None,
                                          lambda m, i=i: f"summary by node {i}: {m.text()[:12]}...")
            while len(n1.find_agents("summarize")) < 2:
                await asyncio.sleep(0.05)

            # round robin spreads the requests; consistent hashing keeps one key on one agent
            spread = Counter([(await n1.request(Capability("summarize"), "a long text")).agent_id for _ in range(6)])
            print("round robin:", sorted(spread.values()))
            sticky = {(await n1.request(Capability("summarize", "consistent_hash", key="user-42"), "x")).agent_id
                      for _ in range(4)}
            print("consistent hash, one key ->", len(sticky), "agent")

            # a durable send is in node 1's SQLite outbox before send() returns
            inbox: asyncio.Queue[str] = asyncio.Queue()

            def record(message: Message) -> None:
                inbox.put_nowait(message.text())

            ledger = await others[0].register_agent("ledger", ["ledger"], None, record)
            while not n1.find_agents("ledger"):
                await asyncio.sleep(0.05)
            await n1.send(ledger.agent_id, "entry 1", delivery="durable", ttl=60)
            print("durable:", await asyncio.wait_for(inbox.get(), timeout=10))

            # node 3 stops: requests fail over to the agent that is left
            await others[1].stop()
            answers = {(await n1.request(Capability("summarize"), "after the stop", timeout=15)).text()[:17]
                       for _ in range(3)}
            print("after failover:", sorted(answers))
        finally:
            for node in (*others, n1):
                await node.stop()


if __name__ == "__main__":
    asyncio.run(main())

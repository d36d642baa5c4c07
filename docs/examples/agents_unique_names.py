"""Unique agent names: three embedded nodes lease one name through their Raft group.

Run it: python docs/examples/agents_unique_names.py
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import agentnode
from agentnode.agents import NameTaken
from agentnode.transport.identity import create_ca, issue_node_certificate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_ca(root / "ca")
        for name in ("a", "b", "c"):
            issue_node_certificate(root / "ca", root / name)
        async with contextlib.AsyncExitStack() as stack:
            nodes: list[agentnode.Node] = []
            for name in ("a", "b", "c"):
                config = agentnode.NodeConfig(
                    data_dir=root / name, listen="127.0.0.1:0", cluster="names-example", mdns=False, profile="local",
                    bootstrap=[str(nodes[0].address)] if nodes else [], name_lease_ttl_ms=5_000,
                )
                nodes.append(await stack.enter_async_context(agentnode.Node(config)))
            a, b, c = nodes

            async def group_formed() -> None:  # three nodes form the Raft group by themselves
                while (await c.raft.status())["leader"] is None:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(group_formed(), timeout=30)

            planner = await a.register_agent("planner", ["plan"], unique=True)
            print(f"a holds 'planner': {planner.agent_id} ({planner.name_state.state}, epoch {planner.name_state.epoch})")
            try:
                await b.register_agent("planner", ["plan"], unique=True)
            except NameTaken as exc:
                print(f"b refused: held by {exc.holder}")

            async def seen_by_c(agent_id: str) -> None:
                while [e.record.agent_id for e in c.find_agents(name="planner")] != [agent_id]:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(seen_by_c(planner.agent_id), timeout=10)
            print(f"c finds 'planner' at {c.find_agents(name='planner')[0].record.node_id == a.node_id and 'node a'}")

            await planner.deregister()  # releases the name at once
            again = await b.register_agent("planner", ["plan"], unique=True)
            print(f"b holds 'planner' now: {again.agent_id} ({again.name_state.state})")


if __name__ == "__main__":
    asyncio.run(main())

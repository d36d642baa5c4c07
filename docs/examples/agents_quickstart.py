"""Agents on two embedded nodes (real mutual TLS on loopback): register, find, send, request, topics, broadcast.

Run it: python docs/examples/agents_quickstart.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import agentnode
from agentnode.agents import AgentRegistered, Message, RemoteHandlerError
from agentnode.transport.identity import create_ca, issue_node_certificate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_ca(root / "ca")
        for name in ("a", "b"):
            issue_node_certificate(root / "ca", root / name)
        common = dict(listen="127.0.0.1:0", cluster="quickstart", mdns=False, profile="local")
        async with agentnode.Node(agentnode.NodeConfig(data_dir=root / "a", **common)) as a:
            async with agentnode.Node(agentnode.NodeConfig(data_dir=root / "b", bootstrap=[str(a.address)], **common)) as b:
                # 1. an agent on node b: a handler gets a Message; for a request, its return value is the answer
                async def translate(message: Message) -> str:
                    if message.text() == "boom":
                        raise ValueError("cannot translate 'boom'")
                    return message.text().upper()

                agent = await b.register_agent("translator", ["translate"], {"lang": "en"}, translate,
                                               description="Upper-cases text", version="1.0")

                # 2. node a learns about it through the replicated registry (an "agent up" event)
                async def agent_up() -> None:
                    async for event in a.events():
                        if isinstance(event, AgentRegistered) and event.record.agent_id == agent.agent_id:
                            return

                await asyncio.wait_for(agent_up(), timeout=10)
                print("found:", [e.record.agent_id for e in a.find_agents("translate")])

                # 3. request/response by agent id, and a one-way message (acknowledged, at-least-once)
                reply = await a.request(agent.agent_id, "hello", timeout=5)
                print("reply:", reply.text(), "from", reply.agent_id)
                await a.send(agent.agent_id, "just so you know")

                # 4. errors name their cause: the remote handler's error comes back
                try:
                    await a.request(agent.agent_id, "boom", timeout=5)
                except RemoteHandlerError as exc:
                    print("remote error:", exc.remote_error)

                # 5. topics and broadcast (Plumtree): each subscribed agent gets each message once
                news: asyncio.Queue[str] = asyncio.Queue()
                await a.subscribe("news", lambda m: news.put_nowait(m.text()))
                while not b.find_agents(topic="news"):  # the subscription is replicated to b
                    await asyncio.sleep(0.05)
                await b.publish("news", "agents can talk")
                print("topic:", await asyncio.wait_for(news.get(), timeout=10))
                await agent.deregister()


if __name__ == "__main__":
    asyncio.run(main())

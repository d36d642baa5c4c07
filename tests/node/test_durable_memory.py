"""Durable delivery over the in-memory transport: the receiver's persistent dedup across its restart, and
durable sends to an agent whose node is down (decisions 0123, 0124). Real runtime and SQLite, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from agentnode.agents import ExpiredError, Message, UnknownAgentError
from agentnode.config import NodeConfig
from agentnode.delivery import DURABLE
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport


def _node(hub: MemoryHub, tmp_path: Path, i: int) -> Node:
    config = NodeConfig.build(data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946",
                              bootstrap=[] if i == 1 else ["10.0.0.1:7946"], cluster="durable", mdns=False,
                              profile="local", seed=i)
    return Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False)


async def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _receiver(hub: MemoryHub, tmp_path: Path, sender: Node, got: list[bytes]) -> tuple[Node, str]:
    node = _node(hub, tmp_path, 2)
    await node.start()

    def handler(msg: Message) -> None:
        got.append(msg.payload)

    agent = await node.register_agent("rx", handler=handler)
    await _until("the sender to see rx", lambda: sender.agents.registry.lookup(agent.agent_id) is not None)
    return node, agent.agent_id


async def test_a_resend_of_a_handled_message_after_the_receiver_restarted_is_dropped(tmp_path: Path) -> None:
    hub = MemoryHub()
    sender = _node(hub, tmp_path, 1)
    await sender.start()
    got: list[bytes] = []
    receiver, rx = await _receiver(hub, tmp_path, sender, got)
    try:
        msg_id = await sender.send(rx, b"once", delivery="durable", confirm=True, timeout=10)
        await _until("the handler to run", lambda: got == [b"once"])
        await receiver.stop()  # forgets its in-memory dedup window
        receiver, rx = await _receiver(hub, tmp_path, sender, got)
        # The sender's resend path (as after its own crash, before it saw the ack): same id, same payload.
        service = sender.agents
        service.delivery.send(receiver.node_id, rx, b"once", service.now_ms(), src_agent=service.sender_id,
                              mode=DURABLE, msg_id=msg_id)
        service.schedule_pump()
        await _until("the receiver to drop the resend",
                     lambda: receiver.agents.counters["durable_duplicates_dropped"] == 1)
        await asyncio.sleep(0.1)
        assert got == [b"once"]
        assert receiver.agents.stats()["inbox_rows"] >= 1
    finally:
        await receiver.stop()
        await sender.stop()


async def test_durable_sends_wait_for_a_down_node_and_expire_by_ttl(tmp_path: Path) -> None:
    hub = MemoryHub()
    sender = _node(hub, tmp_path, 1)
    await sender.start()
    got: list[bytes] = []
    receiver, rx = await _receiver(hub, tmp_path, sender, got)
    try:
        await receiver.stop()
        await _until("the registry to drop the dead node's agent", lambda: sender.agents.registry.lookup(rx) is None,
                     timeout_s=30)
        # Known node, agent gone from the registry: stored, delivered once the node is back.
        await sender.send(rx, b"waited", delivery="durable")
        await sender.send_many(rx, [b"w1", b"w2"], delivery="durable")
        # With a TTL it expires while the node is down, and the sender is told why.
        with pytest.raises(ExpiredError):
            await sender.send(rx, b"stale", delivery="durable", ttl=0.3, confirm=True, timeout=10)
        # An id naming a node nobody has seen is most likely a typo: it fails at once.
        with pytest.raises(UnknownAgentError):
            await sender.send("rx@no-such-node", b"x", delivery="durable")
        with pytest.raises(UnknownAgentError):
            await sender.send("no-at-sign", b"x", delivery="durable")
        assert sender.agents.counters["durable_to_absent"] == 3
        receiver, rx = await _receiver(hub, tmp_path, sender, got)
        await _until("the stored messages to arrive", lambda: sorted(got) == [b"w1", b"w2", b"waited"])
        await _until("the outbox to drain", lambda: sender.agents.stats()["outbox_rows"] == 0)
        assert b"stale" not in got
    finally:
        await receiver.stop()
        await sender.stop()


async def test_a_durable_message_rejected_as_no_such_agent_is_offered_again_until_the_agent_registers(
        tmp_path: Path) -> None:
    hub = MemoryHub()
    sender = _node(hub, tmp_path, 1)
    await sender.start()
    got: list[bytes] = []
    receiver, rx = await _receiver(hub, tmp_path, sender, got)
    try:
        await receiver.stop()
        await _until("the registry to drop the agent", lambda: sender.agents.registry.lookup(rx) is None, timeout_s=30)
        receiver = _node(hub, tmp_path, 2)  # back, but its agent has not registered again yet
        await receiver.start()
        await _until("the node to be alive again", lambda: any(
            m.node_id == receiver.node_id and m.state == "alive" for m in sender.members()))
        await sender.send(rx, b"early", delivery="durable")
        await _until("a reject and a retry", lambda: sender.agents.counters["durable_retried"] >= 1)
        await receiver.register_agent("rx", handler=lambda msg: got.append(msg.payload))
        await _until("the message after the agent registered", lambda: got == [b"early"])
        await _until("the outbox to drain", lambda: sender.agents.stats()["outbox_rows"] == 0)
    finally:
        await receiver.stop()
        await sender.stop()

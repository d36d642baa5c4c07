"""The embedding API over the in-memory transport: real runtime, real timers, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentnode.agents import (
    AgentRegistered,
    AgentRemoved,
    BackpressureError,
    Capability,
    DeadlineExceededError,
    ExpiredError,
    Message,
    MessagingConfig,
    NodeUnreachableError,
    RemoteHandlerError,
    UnknownAgentError,
)
from agentnode.config import NodeConfig
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport


def _config(tmp_path: Path, i: int, bootstrap: list[str]) -> NodeConfig:
    return NodeConfig.build(data_dir=tmp_path / f"n{i}", listen=f"10.0.0.{i}:7946", bootstrap=bootstrap,
                            cluster="agents", mdns=False, profile="local", seed=i)


@contextlib.asynccontextmanager
async def _cluster(tmp_path: Path, size: int, messaging: MessagingConfig | None = None,
                   hub: MemoryHub | None = None) -> AsyncIterator[tuple[MemoryHub, list[Node]]]:
    hub = hub or MemoryHub()
    nodes = []
    for i in range(1, size + 1):
        config = _config(tmp_path, i, [] if i == 1 else ["10.0.0.1:7946"])
        nodes.append(Node(config, transport=MemoryTransport(hub, f"node{i:02d}", config.listen), control=False,
                          messaging=messaging))
    for node in nodes:
        await node.start()
    try:
        await _until("convergence", lambda: all(
            len([m for m in n.members() if m.state == "alive"]) == size for n in nodes))
        yield hub, nodes
    finally:
        for node in nodes:
            await node.stop()


async def _until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _sees(nodes: list[Node], agent_ids: list[str]) -> Callable[[], bool]:
    return lambda: all(n.agents.registry.lookup(a) is not None for n in nodes for a in agent_ids)


async def test_register_find_send_and_request_in_every_direction(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (_, nodes):
        got: dict[str, list[Message]] = {}

        def make(name: str) -> Callable[[Message], str | None]:
            def handler(message: Message) -> str | None:
                got.setdefault(name, []).append(message)
                return f"{name} got {message.text()}" if message.kind == "request" else None
            return handler

        agents = [await n.register_agent(f"echo{i}", ["echo"], {"lang": "en"}, make(f"echo{i}"),
                                         description="echoes", version="1.0") for i, n in enumerate(nodes)]
        ids = [a.agent_id for a in agents]
        await _until("every node to see every agent", _sees(nodes, ids))
        found = nodes[0].find_agents("echo")
        assert [e.record.agent_id for e in found] == sorted(ids)
        assert found[0].record.meta == {"lang": "en"} and found[0].record.version == "1.0"
        for src in nodes:
            for i, dest in enumerate(ids):
                await src.send(dest, f"hello from {src.node_id}")
                reply = await src.request(dest, "ping", timeout=5)
                assert reply.text() == f"echo{i} got ping" and reply.agent_id == dest
        for i in range(3):
            assert sorted(m.text() for m in got[f"echo{i}"] if m.kind == "message") == sorted(
                f"hello from {n.node_id}" for n in nodes)
        sent = [m for m in got["echo1"] if m.kind == "message"]
        assert all(m.sender_agent == f"_node@{m.sender_node}" for m in sent)


async def test_errors_name_their_cause(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        def boom(message: Message) -> None:
            raise ValueError("bad input " + message.text())

        async def slow(message: Message) -> str:
            await asyncio.sleep(5)
            return "late"

        bad = await b.register_agent("bad", [], None, boom)
        sleepy = await b.register_agent("sleepy", [], None, slow)
        await _until("registry", _sees([a], [bad.agent_id, sleepy.agent_id]))
        with pytest.raises(UnknownAgentError, match="no agent with this id"):
            await a.send("nobody@nowhere", b"x")
        with pytest.raises(RemoteHandlerError) as info:
            await a.request(bad.agent_id, "42", timeout=5)
        assert "ValueError: bad input 42" in info.value.remote_error
        with pytest.raises(DeadlineExceededError):
            await a.request(sleepy.agent_id, "x", timeout=0.3)
        with pytest.raises(ValueError, match="priority"):
            await a.send(bad.agent_id, b"x", priority="urgent")
        with pytest.raises(ValueError, match="delivery must be one of"):
            await a.send(bad.agent_id, b"x", delivery="twice")
        with pytest.raises(ValueError, match="payload must be bytes or str"):
            await a.send(bad.agent_id, 42)  # type: ignore[arg-type]


async def test_full_inbox_is_backpressure_or_waits(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        gate = asyncio.Event()
        handled: list[str] = []

        async def blocked(message: Message) -> None:
            await gate.wait()
            handled.append(message.text())

        agent = await b.register_agent("tiny", [], None, blocked, inbox_capacity=2)
        await _until("registry", _sees([a], [agent.agent_id]))
        await a.send(agent.agent_id, "m0")  # taken by the handler, which blocks
        await _until("the handler to take m0", lambda: agent.inbox_size == 0)
        await a.send(agent.agent_id, "m1")
        await a.send(agent.agent_id, "m2")
        with pytest.raises(BackpressureError, match="full"):
            await a.send(agent.agent_id, "m3")
        waiting = asyncio.create_task(a.send(agent.agent_id, "m4", on_full="wait", timeout=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, 10)
        await _until("all handled", lambda: len(handled) == 4)
        assert handled == ["m0", "m1", "m2", "m4"]  # m3 was refused, never silently dropped
        assert b.agents.delivery.counters["rejected_backpressure"] >= 1


async def test_ttl_expiry_is_reported_to_the_sender(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        gate = asyncio.Event()

        async def blocked(message: Message) -> None:
            await gate.wait()

        agent = await b.register_agent("slowpoke", [], None, blocked)
        await _until("registry", _sees([a], [agent.agent_id]))
        await a.send(agent.agent_id, "first")
        await _until("the handler to take it", lambda: agent.inbox_size == 0)
        await a.send(agent.agent_id, "stale", ttl=0.1)  # accepted into the inbox, expires there
        failures: list[object] = []

        async def watch() -> None:
            async for event in a.events():
                if isinstance(event, type(None)):
                    break
                if type(event).__name__ == "Expired":
                    failures.append(event)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        gate.set()
        await _until("the sender to observe the expiry", lambda: bool(failures), timeout_s=10)
        watcher.cancel()
        assert b.agents.counters["expired_in_inbox"] == 1
        # and a request whose TTL runs out in the inbox fails with a clear error
        gate.clear()
        await a.send(agent.agent_id, "block again")
        with pytest.raises((ExpiredError, DeadlineExceededError)):
            await a.request(agent.agent_id, "q", timeout=0.2)
        gate.set()


async def test_capability_spreads_and_fails_over_when_a_node_dies(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 3) as (hub, nodes):
        counts: Counter[str] = Counter()

        def worker(name: str) -> Callable[[Message], str]:
            def handle(message: Message) -> str:
                counts[name] += 1
                return name
            return handle

        workers = [await n.register_agent("worker", ["work"], None, worker(f"w{i}")) for i, n in enumerate(nodes[1:])]
        await _until("registry", _sees([nodes[0]], [w.agent_id for w in workers]))
        for _ in range(10):
            await nodes[0].request(Capability("work"), "job", timeout=5)
        assert counts == {"w0": 5, "w1": 5}  # round robin
        replies = {(await nodes[0].request(Capability("work", "consistent_hash", key="user-7"), "j")).text()
                   for _ in range(5)}
        assert len(replies) == 1  # sticky by key
        for _ in range(6):
            await nodes[0].send(Capability("work", "least_outstanding"), "job")
        # node 3 dies (cut off): its agent vanishes once it is declared dead, the capability fails over
        hub.partition([nodes[2].node_id], [nodes[0].node_id, nodes[1].node_id])
        results = [(await nodes[0].request(Capability("work"), "job", timeout=15)).text() for _ in range(4)]
        assert results == ["w0"] * 4
        await _until("the dead node's agent to vanish", lambda: [e.record.agent_id for e in nodes[0].find_agents("work")]
                     == [workers[0].agent_id], timeout_s=20)


async def test_broadcast_and_topics_reach_each_agent_once(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 4) as (_, nodes):
        seen: Counter[tuple[str, str]] = Counter()

        def recorder(name: str) -> Callable[[Message], None]:
            def handle(message: Message) -> None:
                seen[(name, message.kind + ":" + message.text())] += 1
            return handle

        agents = []
        for i, n in enumerate(nodes):
            agents.append(await n.register_agent(f"a{i}", [], None, recorder(f"a{i}")))
        await agents[1].subscribe("news")
        topic_msgs: list[str] = []
        sub = await nodes[3].subscribe("news", lambda m: topic_msgs.append(m.text()))
        await _until("registry with topics", lambda: all(len(n.find_agents(topic="news")) == 2 for n in nodes))
        await _until("the broadcast overlay", lambda: all(n.agents.broadcaster.active for n in nodes))
        for k in range(5):
            await nodes[k % 4].broadcast(f"b{k}")
        await nodes[2].publish("news", "headline")
        await _until("every broadcast at every agent", lambda: sum(seen.values()) == 4 * 5 + 1 and len(topic_msgs) == 1)
        await asyncio.sleep(0.3)
        assert all(v == 1 for v in seen.values()) and sum(seen.values()) == 21
        assert seen[("a1", "publish:headline")] == 1 and topic_msgs == ["headline"]
        await sub.cancel()
        await _until("unsubscribe replicated", lambda: len(nodes[0].find_agents(topic="news")) == 1)


async def test_agent_events_and_deregistration(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        events: list[object] = []

        async def watch() -> None:
            async for event in a.events():
                events.append(event)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        agent = await b.register_agent("ephemeral", ["x"], None, lambda m: "ok")
        await _until("agent up at a", lambda: any(isinstance(e, AgentRegistered) and e.record.agent_id == agent.agent_id
                                                  for e in events))
        await agent.deregister()
        await _until("agent down at a", lambda: any(isinstance(e, AgentRemoved) and e.agent_id == agent.agent_id
                                                    for e in events))
        watcher.cancel()
        with pytest.raises(UnknownAgentError):
            await a.request(agent.agent_id, "x", timeout=1)


async def test_unhealthy_agent_is_not_picked_but_node_is_not_suspect(tmp_path: Path) -> None:
    messaging = MessagingConfig(health_interval_s=0.1)
    async with _cluster(tmp_path, 2, messaging) as (_, (a, b)):
        ok = {"value": True}
        sick = await b.register_agent("sick", ["job"], None, lambda m: "sick", health=lambda: ok["value"])
        well = await b.register_agent("well", ["job"], None, lambda m: "well")
        await _until("registry", _sees([a], [sick.agent_id, well.agent_id]))
        ok["value"] = False
        await _until("sick to be unhealthy at a", lambda: [e.record.agent_id for e in a.find_agents("job")] == [well.agent_id])
        entry = a.agents.registry.lookup(sick.agent_id)
        assert entry is not None and not entry.record.healthy and not entry.node_suspect
        assert {(await a.request(Capability("job"), "x")).text() for _ in range(4)} == {"well"}


async def test_fifo_per_sender_and_agent_under_loss(tmp_path: Path) -> None:
    import random

    hub = MemoryHub(rng=random.Random(5))
    async with _cluster(tmp_path, 2, hub=hub) as (_, (a, b)):
        got: list[int] = []
        agent = await b.register_agent("fifo", [], None, lambda m: got.append(int(m.text())))
        await _until("registry", _sees([a], [agent.agent_id]))
        hub.set_loss(0.2)
        await asyncio.gather(*(a.send(agent.agent_id, str(i), confirm=True, timeout=30) for i in range(300)))
        hub.set_loss(0.0)
        await _until("all handled", lambda: len(got) == 300)
        assert got == list(range(300))  # FIFO per (sender node, agent, priority), each exactly once


async def test_unknown_capability_and_node_unreachable(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (hub, (a, b)):
        with pytest.raises(UnknownAgentError, match="no healthy agent has capability"):
            await a.send(Capability("nothing"), "x")
        agent = await b.register_agent("cut", [], None, lambda m: None)
        await _until("registry", _sees([a], [agent.agent_id]))
        hub.partition([a.node_id], [b.node_id])
        with pytest.raises((NodeUnreachableError, DeadlineExceededError)):
            await a.send(agent.agent_id, "x", timeout=30)


async def test_plain_and_awaitable_returning_handlers_keep_fifo_and_answer(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        plain: list[int] = []
        late: list[int] = []

        def sync_handler(m: Message) -> str:
            plain.append(int(m.text()))
            return f"ok {m.text()}"

        def returns_awaitable(m: Message) -> object:  # a plain function that still returns a coroutine
            async def finish() -> str:
                await asyncio.sleep(0.001 if int(m.text()) % 3 == 0 else 0)
                late.append(int(m.text()))
                return f"late {m.text()}"
            return finish()

        fast = await b.register_agent("plain", [], None, sync_handler)
        slow = await b.register_agent("awaits", [], None, returns_awaitable)
        await _until("registry", _sees([a], [fast.agent_id, slow.agent_id]))
        assert fast._inline and slow._inline  # both look like plain functions until one returns an awaitable
        await asyncio.gather(*(a.send(fast.agent_id, str(i), confirm=True) for i in range(200)))
        await asyncio.gather(*(a.send(slow.agent_id, str(i), confirm=True) for i in range(200)))
        await _until("all handled", lambda: len(plain) == 200 and len(late) == 200)
        assert plain == list(range(200)) and late == list(range(200))  # FIFO, exactly once, both paths
        assert not slow._inline  # it fell back to its worker for good
        assert (await a.request(fast.agent_id, "7")).text() == "ok 7"
        assert (await a.request(slow.agent_id, "9")).text() == "late 9"
        assert b.agents.stats()["handled"][slow.agent_id] == 201


async def test_send_many_keeps_order_confirms_and_names_backpressure(tmp_path: Path) -> None:
    async with _cluster(tmp_path, 2) as (_, (a, b)):
        got: list[str] = []
        sink = await b.register_agent("many", [], None, lambda m: got.append(m.text()), inbox_capacity=100_000)
        tiny = await b.register_agent("tiny", [], None, lambda m: None, inbox_capacity=1)
        await _until("registry", _sees([a], [sink.agent_id, tiny.agent_id]))
        ids = await a.send_many(sink.agent_id, [f"m{i}" for i in range(3000)])  # confirmed: every ack is in
        assert len(ids) == 3000 and len(set(ids)) == 3000
        assert got == [f"m{i}" for i in range(3000)]
        durable = await a.send_many(sink.agent_id, [f"d{i}" for i in range(500)], delivery="durable", confirm=True)
        assert len(durable) == 500 and got[3000:] == [f"d{i}" for i in range(500)]
        await _until("outbox emptied by the acks", lambda: a.agents.stats()["outbox_rows"] == 0)
        with pytest.raises(ValueError, match="one agent id"):
            await a.send_many(Capability("x"), ["y"])  # type: ignore[arg-type]
        with pytest.raises(UnknownAgentError):
            await a.send_many("nobody@nowhere", ["y"])
        with pytest.raises(BackpressureError):  # 50 in one frame overflow an inbox of 1: the first failure is raised
            await a.send_many(tiny.agent_id, ["z"] * 50, on_full="error", timeout=5)


async def test_waiting_for_send_queue_room_ends_at_the_timeout(tmp_path: Path) -> None:
    from agentnode.delivery import DeliveryConfig

    messaging = MessagingConfig(delivery=DeliveryConfig(window=1, channel_queue=0))
    async with _cluster(tmp_path, 2, messaging=messaging) as (hub, (a, b)):
        agent = await b.register_agent("stuck", [], None, lambda m: None)
        await _until("registry", _sees([a], [agent.agent_id]))
        hub.partition([a.node_id], [b.node_id])  # nothing is acknowledged: the one-message window stays full
        await a.send(agent.agent_id, "first", confirm=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BackpressureError, match="no room in the send queue within 0.3 s"):
            await a.send(agent.agent_id, "second", confirm=False, on_full="wait", timeout=0.3)
        assert 0.25 <= loop.time() - started < 5  # failed by the waiter sweep, not hung
        assert a.agents.stats()["service"]["send_waits"] == 1


async def test_a_registry_change_made_by_an_inline_handler_is_published(tmp_path: Path) -> None:
    """The request path pumps the delivery core alone (decision 0126); what a handler running inside that
    pump changes in the registry (here its load) must still be published."""
    async with _cluster(tmp_path, 2) as (_, nodes):
        a, b = nodes
        worker: list[Any] = []

        def handle(message: Message) -> str:
            worker[0].set_load(42)
            return "ok"

        worker.append(await b.register_agent("worker", ["work"], None, handle))
        agent_id = worker[0].agent_id
        await _until("registration", _sees([a], [agent_id]))
        assert (await a.request(agent_id, b"go", timeout=5)).text() == "ok"
        # The change is due (publish delay) before anything the delivery pump armed: a full pump is
        # pending or has armed the service's timer for it.
        service = b.agents
        due = service.registry.get_timer()
        assert due is not None
        assert service._pump_scheduled or (service._timer_at is not None and service._timer_at <= due)
        await _until("the new load at the other node", lambda: a.agents.registry.lookup(agent_id).record.load == 42,
                     timeout_s=2.0)

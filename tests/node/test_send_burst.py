"""A task sending without confirmation yields every SEND_BURST sends, behind the I/O that arrived meanwhile
(decisions 0125, 0127): a caller whose answer arrives during the burst runs before the burst goes on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from agentnode import agents
from agentnode.agents import SEND_BURST, _yield_behind_io
from agentnode.config import NodeConfig
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def _order(loop_factory: Callable[[], asyncio.AbstractEventLoop],
           yield_: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> list[str]:
    """A caller waits for an answer that a socket delivers while a bulk task is suspended in `yield_`:
    who runs first once the loop has read it?"""

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        order: list[str] = []
        answered = loop.create_future()

        def on_readable() -> None:  # the transport's read callback, in miniature
            reader.recv(16)
            if not answered.done():
                answered.set_result(None)

        async def caller() -> None:
            await answered
            order.append("caller")

        async def bulk() -> None:
            writer.send(b"answer")  # on the wire before the burst yields: the loop's next poll reads it
            await yield_(loop)
            order.append("bulk")

        loop.add_reader(reader.fileno(), on_readable)
        try:
            waiting = asyncio.create_task(caller())
            await asyncio.sleep(0)  # the caller is suspended on its answer
            await asyncio.wait_for(asyncio.gather(bulk(), waiting), 5)
        finally:
            loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()
        return order

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(scenario())


async def _sleep0(loop: asyncio.AbstractEventLoop) -> None:
    await asyncio.sleep(0)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_the_caller_woken_by_io_runs_before_the_yielding_burst_goes_on(loop_name: str) -> None:
    assert _order(LOOPS[loop_name], _yield_behind_io) == ["caller", "bulk"]
    # What `asyncio.sleep(0)` gives instead: the burst goes on first, the answered caller waits for it.
    assert _order(LOOPS[loop_name], _sleep0) == ["bulk", "caller"]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_task_cancelled_while_yielding_leaves_no_error_behind(loop_name: str) -> None:
    errors: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        task = asyncio.create_task(_yield_behind_io(loop))
        await asyncio.sleep(0)  # suspended inside, its hops queued
        task.cancel()
        for _ in range(5):  # the hops run against the cancelled future
            await asyncio.sleep(0)
        assert task.cancelled()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(scenario())
    assert errors == []


async def test_unconfirmed_sends_in_a_loop_yield_once_every_send_burst(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    yields = 0
    real = agents._yield_behind_io

    async def counting(loop: asyncio.AbstractEventLoop | None) -> None:
        nonlocal yields
        yields += 1
        await real(loop)

    monkeypatch.setattr(agents, "_yield_behind_io", counting)
    hub = MemoryHub()
    config = NodeConfig.build(data_dir=tmp_path / "n1", listen="10.0.0.1:7946", bootstrap=[], cluster="burst",
                              mdns=False, profile="local", seed=1)
    async with Node(config, transport=MemoryTransport(hub, "node01", config.listen), control=False) as node:
        got: list[bytes] = []
        sink = await node.register_agent("sink", ["sink"], handler=lambda m: got.append(m.payload))
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:  # another task of the application: it must get turns during the burst
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        ticks = 0
        for i in range(5 * SEND_BURST):
            await node.send(sink.agent_id, b"%d" % i, confirm=False)
        during = ticks
        stop.set()
        await other
        assert yields >= 4
        assert during >= 4
        for _ in range(200):
            if len(got) == 5 * SEND_BURST:
                break
            await asyncio.sleep(0.01)
        assert got == [b"%d" % i for i in range(5 * SEND_BURST)]

"""The connection manager's write path: when queued frames reach the stream.

* Replies made while a peer's frames are delivered leave in the same read callback (decision 0036):
  a request/response exchange (a Raft AppendEntries and its acknowledgement) does not wait a loop
  turn for the scheduled flush.
* Frames sent inside `write_promptly()` are written when the block ends (decision 0037): a Raft
  leader's entries leave before the loop polls again.
* Everything else coalesces until the loop turn ends (the throughput default).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from agentnode.transport.base import Address
from agentnode.transport.connections import ConnectionManager, TransportConfig, write_promptly
from agentnode.transport.framing import encode_frames

PEER = Address("127.0.0.1", 1)


class _Stream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def _no_dial(address: Address, expected: str | None) -> Any:
    raise OSError("no dialling in this test")


async def _manager(*peers: str) -> tuple[ConnectionManager, list[Any], list[_Stream]]:
    manager = ConnectionManager("a", TransportConfig(close_grace_ms=20), random.Random(0), _no_dial)
    manager.start(asyncio.get_running_loop())
    conns, streams = [], []
    for peer_id in peers:
        stream = _Stream()
        conn = manager.attach(stream, peer_id, outbound=False)
        assert conn is not None
        conns.append(conn)
        streams.append(stream)
    await asyncio.sleep(0)
    return manager, conns, streams


def _acknowledge(manager: ConnectionManager) -> None:
    """Handler: answer each ["req", n] with ["ack", n] to its sender."""
    manager.set_handler(lambda sender, frame: manager.send(PEER, ["ack", frame[1]], sender))


async def test_frames_sent_in_a_block_are_written_when_it_ends_one_write_per_peer() -> None:
    manager, _, (b, c) = await _manager("b", "c")
    try:
        with write_promptly():
            manager.send(PEER, ["one"], "b")
            manager.send(PEER, ["two"], "b")
            manager.send(PEER, ["x"], "c")
            assert b.writes == [] and c.writes == []  # nothing before the block ends
        assert b.writes == [encode_frames([["one"], ["two"]])]
        assert c.writes == [encode_frames([["x"]])]
        await asyncio.sleep(0)
        assert len(b.writes) == 1 and len(c.writes) == 1  # no second write from a scheduled flush
        manager.send(PEER, ["later", 1], "b")
        manager.send(PEER, ["later", 2], "b")
        assert len(b.writes) == 1  # outside a block: coalesced until the loop turn ends
        await asyncio.sleep(0)
        assert b.writes[1:] == [encode_frames([["later", 1], ["later", 2]])]
    finally:
        await manager.close()


async def test_a_block_writes_frames_queued_earlier_in_the_turn_first_in_order() -> None:
    manager, _, (b,) = await _manager("b")
    try:
        manager.send(PEER, ["early"], "b")  # schedules the loop-turn flush
        with write_promptly():
            manager.send(PEER, ["urgent"], "b")
        assert b.writes == [encode_frames([["early"], ["urgent"]])]
        await asyncio.sleep(0)
        assert len(b.writes) == 1  # the scheduled flush found nothing left
    finally:
        await manager.close()


async def test_nested_blocks_write_when_the_outermost_ends() -> None:
    manager, _, (b,) = await _manager("b")
    try:
        with write_promptly():
            with write_promptly():
                manager.send(PEER, ["inner"], "b")
            assert b.writes == []
            manager.send(PEER, ["outer"], "b")
        assert b.writes == [encode_frames([["inner"], ["outer"]])]
    finally:
        await manager.close()


async def test_a_paused_stream_keeps_the_frames_until_it_resumes() -> None:
    manager, (conn,), (b,) = await _manager("b")
    try:
        conn.pause_writing()
        with write_promptly():
            manager.send(PEER, ["held"], "b")
        assert b.writes == []
        conn.resume_writing()
        await asyncio.sleep(0)
        assert b.writes == [encode_frames([["held"]])]
    finally:
        await manager.close()


async def test_replies_inside_a_delivery_still_leave_together_when_it_ends() -> None:
    manager, (conn,), (b,) = await _manager("b")

    def reply(sender: str, frame: Any) -> None:
        with write_promptly():
            manager.send(PEER, ["ack", frame[1]], sender)

    manager.set_handler(reply)
    try:
        conn.data_received(encode_frames([["req", 1], ["req", 2]]))
        assert b.writes == [encode_frames([["ack", 1], ["ack", 2]])]  # one write, not one per reply
    finally:
        await manager.close()


async def test_a_block_inside_a_delivery_writes_other_peers_at_its_end() -> None:
    manager, (conn_b, _), (b, c) = await _manager("b", "c")
    seen: list[int] = []

    def forward(sender: str, frame: Any) -> None:
        with write_promptly():
            manager.send(PEER, ["fwd", frame[1]], "c")
        seen.append(len(c.writes))

    manager.set_handler(forward)
    try:
        conn_b.data_received(encode_frames([["req", 1], ["req", 2]]))
        assert seen == [1, 2]  # each forward left when its block ended
        assert c.writes == [encode_frames([["fwd", 1]]), encode_frames([["fwd", 2]])]
        assert b.writes == []
    finally:
        await manager.close()


async def test_a_block_for_a_peer_still_dialling_leaves_the_frames_queued() -> None:
    manager, _, _ = await _manager()
    try:
        with write_promptly():
            manager.send(PEER, ["nobody"], "z")  # dial fails (no dialler); frames dropped and counted
        for _ in range(20):
            if manager.stats().frames_dropped:
                break
            await asyncio.sleep(0.005)
        assert manager.stats().frames_dropped == 1
    finally:
        await manager.close()


async def test_replies_to_a_batch_of_frames_are_written_once_before_the_callback_returns() -> None:
    manager, (conn,), (stream,) = await _manager("b")
    _acknowledge(manager)
    try:
        conn.data_received(encode_frames([["req", 1], ["req", 2], ["req", 3]]))
        # written inside data_received, all three acknowledgements in one write, in order
        assert stream.writes == [encode_frames([["ack", 1], ["ack", 2], ["ack", 3]])]
        await asyncio.sleep(0)  # the flush that would have been scheduled finds nothing left
        assert len(stream.writes) == 1
    finally:
        await manager.close()


async def test_sends_outside_a_delivery_still_coalesce_until_the_loop_turn_ends() -> None:
    manager, (conn,), (stream,) = await _manager("b")
    try:
        manager.send(PEER, ["one"], "b")
        manager.send(PEER, ["two"], "b")
        assert stream.writes == []
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["one"], ["two"]])]
    finally:
        await manager.close()


async def test_a_flush_already_scheduled_before_the_delivery_keeps_everything_in_order() -> None:
    manager, (conn,), (stream,) = await _manager("b")
    _acknowledge(manager)
    try:
        manager.send(PEER, ["early"], "b")  # schedules the loop-turn flush
        conn.data_received(encode_frames([["req", 1]]))
        assert stream.writes == []  # the scheduled flush writes both, in send order
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["early"], ["ack", 1]])]
    finally:
        await manager.close()


async def test_a_paused_stream_gets_the_replies_when_it_resumes() -> None:
    manager, (conn,), (stream,) = await _manager("b")
    _acknowledge(manager)
    try:
        conn.pause_writing()
        conn.data_received(encode_frames([["req", 1]]))
        assert stream.writes == []
        conn.resume_writing()
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["ack", 1]])]
    finally:
        await manager.close()


async def test_callbacks_and_tasks_made_inside_a_block_send_normally_after_it_ended() -> None:
    """They copy the context while the block is open and run after it ended: their frames must be
    flushed at the end of their loop turn, not left for a block write that never comes (a request
    made inside `write_promptly()` armed the delivery timer there, and every later timer-driven
    frame then waited for some other flush: 32 ms request round trips)."""
    manager, _, (b,) = await _manager("b")
    loop = asyncio.get_running_loop()
    sent = asyncio.Event()

    def later() -> None:
        manager.send(PEER, ["from a callback"], "b")
        sent.set()

    async def task() -> None:
        await asyncio.sleep(0.01)
        manager.send(PEER, ["from a task"], "b")

    try:
        with write_promptly():
            manager.send(PEER, ["in the block"], "b")
            loop.call_later(0.005, later)
            spawned = asyncio.create_task(task())
        assert b.writes == [encode_frames([["in the block"]])]
        await asyncio.wait_for(sent.wait(), 1)
        await asyncio.sleep(0)
        assert b.writes[1:] == [encode_frames([["from a callback"]])]
        await asyncio.wait_for(spawned, 1)
        await asyncio.sleep(0)
        assert b.writes[2:] == [encode_frames([["from a task"]])]
    finally:
        await manager.close()

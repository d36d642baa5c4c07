"""Replies made while a peer's frames are delivered leave in the same read callback (decision 0036).

A request/response exchange (a Raft AppendEntries and its acknowledgement) used to wait one loop turn
for the scheduled flush; now what the handlers queued for that peer is written when the delivery ends.
Sends made outside a delivery still coalesce until the loop turn ends.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from agentnode.transport.base import Address
from agentnode.transport.connections import ConnectionManager, TransportConfig
from agentnode.transport.framing import encode_frames


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


async def _manager() -> tuple[ConnectionManager, Any, _Stream]:
    manager = ConnectionManager("a", TransportConfig(close_grace_ms=20), random.Random(0), _no_dial)
    manager.start(asyncio.get_running_loop())
    stream = _Stream()
    conn = manager.attach(stream, "b", outbound=False)
    assert conn is not None
    return manager, conn, stream


async def test_replies_to_a_batch_of_frames_are_written_once_before_the_callback_returns() -> None:
    manager, conn, stream = await _manager()
    peer = Address("127.0.0.1", 1)

    def reply(sender: str, frame: Any) -> None:
        manager.send(peer, ["ack", frame[1]], sender)

    manager.set_handler(reply)
    try:
        conn.data_received(encode_frames([["req", 1], ["req", 2], ["req", 3]]))
        # written inside data_received, all three acknowledgements in one write, in order
        assert stream.writes == [encode_frames([["ack", 1], ["ack", 2], ["ack", 3]])]
        await asyncio.sleep(0)  # the flush that would have been scheduled finds nothing left
        assert len(stream.writes) == 1
    finally:
        await manager.close()


async def test_sends_outside_a_delivery_still_coalesce_until_the_loop_turn_ends() -> None:
    manager, conn, stream = await _manager()
    peer = Address("127.0.0.1", 1)
    try:
        manager.send(peer, ["one"], "b")
        manager.send(peer, ["two"], "b")
        assert stream.writes == []
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["one"], ["two"]])]
    finally:
        await manager.close()


async def test_a_flush_already_scheduled_before_the_delivery_keeps_everything_in_order() -> None:
    manager, conn, stream = await _manager()
    peer = Address("127.0.0.1", 1)
    manager.set_handler(lambda sender, frame: manager.send(peer, ["ack", frame[1]], sender))
    try:
        manager.send(peer, ["early"], "b")  # schedules the loop-turn flush
        conn.data_received(encode_frames([["req", 1]]))
        assert stream.writes == []  # the scheduled flush writes both, in send order
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["early"], ["ack", 1]])]
    finally:
        await manager.close()


async def test_a_paused_stream_gets_the_replies_when_it_resumes() -> None:
    manager, conn, stream = await _manager()
    peer = Address("127.0.0.1", 1)
    manager.set_handler(lambda sender, frame: manager.send(peer, ["ack", frame[1]], sender))
    try:
        conn.pause_writing()
        conn.data_received(encode_frames([["req", 1]]))
        assert stream.writes == []
        conn.resume_writing()
        await asyncio.sleep(0)
        assert stream.writes == [encode_frames([["ack", 1]])]
    finally:
        await manager.close()

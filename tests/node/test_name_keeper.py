"""The asyncio lease keeper against a fake Raft service backed by the deterministic stand-in."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from agentnode.consensus import commands as c
from agentnode.consensus.base import ConsensusTimeout, NoQuorum
from agentnode.consensus.memory_group import MemoryCluster
from agentnode.name_keeper import NameKeeper
from agentnode.names import CONFIRMED, LOST, UNCONFIRMED, AgentNameConfirmed, NameConfig, NameState, NameTaken

TTL_MS = 600


def _ms() -> int:
    return int(time.monotonic() * 1000)


class FakeRaft:
    """`claim_name/renew_name/release_name` through a MemoryCluster; `gate` holds calls back, `fail` raises."""

    def __init__(self, group: MemoryCluster, node: str) -> None:
        self.group = group
        self.node = node
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.calls: list[str] = []

    async def _submit(self, command: c.Command) -> Any:
        self.calls.append(type(command).__name__)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.group.submit(self.node, command, int(time.time() * 1000))

    async def claim_name(self, name: str, owner: str, ttl_ms: int) -> Any:
        return await self._submit(c.ClaimName(name, owner, ttl_ms))

    async def renew_name(self, name: str, owner: str, ttl_ms: int) -> Any:
        return await self._submit(c.RenewName(name, owner, ttl_ms))

    async def release_name(self, name: str, owner: str) -> Any:
        return await self._submit(c.ReleaseName(name, owner))


def _keeper(raft: FakeRaft | None, node: str, seen: list[Any]) -> NameKeeper:
    def on_state(agent_id: str, state: NameState) -> None:
        seen.append(state.state)

    return NameKeeper(node, lambda: raft, _ms, random.Random(node), NameConfig(ttl_ms=TTL_MS), on_state, seen.append)


async def test_claim_renew_taken_and_release() -> None:
    group = MemoryCluster(["n1", "n2", "n3"])
    seen1: list[Any] = []
    seen2: list[Any] = []
    k1, k2 = _keeper(FakeRaft(group, "n1"), "n1", seen1), _keeper(FakeRaft(group, "n2"), "n2", seen2)
    try:
        state = await k1.claim("a", "alice")
        assert state.state == CONFIRMED and state.owner == "n1/a"
        assert AgentNameConfirmed("a", "alice", state.epoch) in seen1
        with pytest.raises(NameTaken) as taken:
            await k2.claim("b", "alice")
        assert taken.value.holder == "n1/a" and k2.state("b") is None
        await asyncio.sleep(TTL_MS * 2.5 / 1000)  # several renewals keep it
        assert k1.state("a").state == CONFIRMED and k1.core.counters["renewals"] >= 4
        assert await k1.release("a")
        assert (await k2.claim("b", "alice")).state == CONFIRMED  # free at once
    finally:
        await k1.close()
        await k2.close()
    assert k2.core.counters["releases"] == 1  # close() gave it back


async def test_no_answer_in_time_registers_unconfirmed_and_the_late_answer_confirms() -> None:
    group = MemoryCluster(["n1"])
    raft = FakeRaft(group, "n1")
    raft.gate = asyncio.Event()
    seen: list[Any] = []
    keeper = _keeper(raft, "n1", seen)
    try:
        started = time.monotonic()
        state = await keeper.claim("a", "alice", wait_ms=100)
        assert state.state == UNCONFIRMED and time.monotonic() - started < 1.0
        raft.gate.set()
        for _ in range(100):
            if keeper.state("a").state == CONFIRMED:
                break
            await asyncio.sleep(0.01)
        assert keeper.state("a").state == CONFIRMED and seen.count(CONFIRMED) == 1
    finally:
        await keeper.close()


async def test_errors_map_to_unconfirmed_and_a_rival_takes_an_expired_name() -> None:
    group = MemoryCluster(["n1", "n2", "n3"])
    raft1, raft2 = FakeRaft(group, "n1"), FakeRaft(group, "n2")
    seen1: list[Any] = []
    k1, k2 = _keeper(raft1, "n1", seen1), _keeper(raft2, "n2", [])
    nothing = _keeper(None, "n3", [])
    try:
        assert (await nothing.claim("c", "carol")).state == UNCONFIRMED  # no Raft service: not applied
        assert (await k1.claim("a", "alice")).state == CONFIRMED
        raft1.fail = ConsensusTimeout("outcome unknown")  # renewals never land
        for _ in range(200):
            if k1.state("a").state != CONFIRMED:
                break
            await asyncio.sleep(0.01)
        assert k1.state("a").state == UNCONFIRMED
        raft1.fail = NoQuorum("cut off")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                if (await k2.claim("b", "alice")).state == CONFIRMED:
                    break
            except NameTaken:
                await asyncio.sleep(0.05)
        assert k2.state("b").state == CONFIRMED
        raft1.fail = None  # healed: the old holder's retried claim is refused
        for _ in range(300):
            if k1.state("a").state == LOST:
                break
            await asyncio.sleep(0.01)
        assert k1.state("a").state == LOST and seen1[-1].holder == "n2/b"
    finally:
        for k in (k1, k2, nothing):
            await k.close()

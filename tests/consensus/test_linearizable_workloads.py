"""End to end: concurrent clients on the real adapter (with a leader crash) and on the stand-in
(with partitions) record histories that the checker must find linearizable."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

from agentnode.consensus import commands as c
from agentnode.consensus.base import ConsensusTimeout, NoQuorum
from agentnode.consensus.history import HistoryRecorder, check_history
from agentnode.consensus.memory_group import MemoryCluster
from agentnode.consensus.memory_link import MemoryRaftNetwork
from agentnode.consensus.pysyncobj_group import PySyncObjGroup

KEYS = ["x", "y"]


async def client_ops(name, rng, members, rec, tick, ops, pause_s=0.0):
    """Random get/put/delete/cas through random live members; `tick()` is a logical real-time clock."""
    for _ in range(ops):
        live = [m for m in members() if m is not None]
        if not live:
            return
        member = rng.choice(live)
        key = rng.choice(KEYS)
        kind = rng.choice(["get", "put", "put", "delete", "cas", "cas"])
        value = str(rng.randrange(4)).encode()
        expected = rng.choice([None, b"0", b"1", b"2", b"3"])
        if kind == "get":
            command = c.KvGet(key)
        elif kind == "put":
            command = c.KvPut(key, value)
        elif kind == "delete":
            command = c.KvDelete(key)
        else:
            command = c.KvCompareAndSet(key, expected, value)
        op_id = rec.invoke(name, kind, key, tick(), value=value if kind in ("put", "cas") else None,
                           expected=expected if kind == "cas" else None)
        try:
            if kind == "get":
                result = (await member.read(command)).value
            else:
                outcome = await member.propose(command)
                result = outcome.ok if kind == "cas" else None
        except NoQuorum:
            rec.fail(op_id, tick())
        except ConsensusTimeout:
            rec.unknown(op_id)
        except RuntimeError:  # the member was closed before the command was submitted
            rec.fail(op_id, tick())
        else:
            rec.ok(op_id, tick(), result)
        await asyncio.sleep(rng.random() * pause_s)


async def test_pysyncobj_history_with_leader_crash_is_linearizable(tmp_path: Path) -> None:
    counter = itertools.count()
    tick = lambda: next(counter)  # noqa: E731 - one event loop: event order is real-time order
    net = MemoryRaftNetwork()
    ids = ["a", "b", "c"]
    groups: dict[str, PySyncObjGroup | None] = {}
    for i in ids:
        groups[i] = PySyncObjGroup(i, ids, net.link(i), tmp_path / i)
        await groups[i].start()

    async def wait_leader():
        while not any(g is not None and g.status().role == "leader" and g.status().has_quorum
                      for g in groups.values()):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait_leader(), 15)
    rec = HistoryRecorder()

    crashed_at = []

    async def crash_leader():
        await asyncio.sleep(0.15)
        leader = next(n for n, g in groups.items() if g is not None and g.status().role == "leader")
        g = groups[leader]
        groups[leader] = None
        crashed_at.append(tick())
        await g.close()

    members = lambda: list(groups.values())  # noqa: E731
    tasks = [client_ops(f"c{i}", random.Random(i), members, rec, tick, 50, pause_s=0.01) for i in range(4)]
    await asyncio.wait_for(asyncio.gather(crash_leader(), *tasks), 120)
    history = rec.close()
    for g in groups.values():
        if g is not None:
            await g.close()
    statuses = {s: sum(1 for o in history if o.status == s) for s in ("ok", "fail", "unknown")}
    print("history:", len(history), statuses)
    results = check_history(history)
    assert statuses["ok"] > 100
    assert sum(1 for o in history if o.status == "ok" and o.invoked_ms > crashed_at[0]) > 20  # spans the crash
    assert all(r.linearizable is True for r in results.values()), results


async def test_memory_group_history_with_partitions_is_linearizable() -> None:
    counter = itertools.count()
    tick = lambda: next(counter)  # noqa: E731
    cluster = MemoryCluster(["a", "b", "c", "d", "e"])
    members = [cluster.member(v, tick) for v in cluster.voters]
    rec = HistoryRecorder()
    rng = random.Random(7)

    async def partitions():
        for _ in range(20):
            side = set(rng.sample(list(cluster.voters), rng.randint(1, 4)))
            cluster.set_reachable(lambda a, b, s=frozenset(side): (a in s) == (b in s))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        cluster.set_reachable(None)

    tasks = [client_ops(f"c{i}", random.Random(100 + i), lambda: members, rec, tick, 60) for i in range(5)]
    await asyncio.gather(partitions(), *tasks)
    history = rec.close()
    assert any(o.status == "fail" for o in history)  # NoQuorum happened on minority sides
    assert all(r.linearizable is True for r in check_history(history).values())
    assert [t for t in cluster.leaders_by_term] == list(range(1, cluster.term + 1))

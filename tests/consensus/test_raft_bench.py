"""Figures for the pysyncobj adapter (3 voters, one process, in-process link). Prints; asserts only behaviour.

Run: python -m pytest -q -s --runslow tests/consensus/test_raft_bench.py
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest

from agentnode.consensus import commands as c
from agentnode.consensus.base import NoQuorum
from agentnode.consensus.memory_link import MemoryRaftNetwork
from agentnode.consensus.pysyncobj_group import PySyncObjGroup

IDS = ["a", "b", "c"]


async def _leader(groups):
    while True:
        live = [g for g in groups.values() if g is not None]
        leaders = [g for g in live if g.status().role == "leader" and g.status().has_quorum]
        if len(leaders) == 1 and all(g.status().leader == leaders[0].node_id for g in live):
            return leaders[0]
        await asyncio.sleep(0.005)


def _pct(samples, q):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(q * len(samples)))]


@pytest.mark.slow
async def test_print_commit_latency_failover_and_no_quorum(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    figures = {}
    for rep in range(3):
        net = MemoryRaftNetwork()
        groups = {i: PySyncObjGroup(i, IDS, net.link(i), tmp_path / f"{rep}-{i}") for i in IDS}
        for g in groups.values():
            await g.start()
        t0 = loop.time()
        leader = await asyncio.wait_for(_leader(groups), 15)
        figures.setdefault("first election s", []).append(loop.time() - t0)
        follower = next(g for g in groups.values() if g is not leader)
        for name, member in (("leader", leader), ("forwarded", follower)):
            lat = []
            for i in range(500):
                s = loop.time()
                assert (await member.propose(c.KvPut("k", str(i).encode()))).ok
                lat.append((loop.time() - s) * 1000)
            figures.setdefault(f"sequential {name} p50 ms", []).append(statistics.median(lat))
            figures.setdefault(f"sequential {name} p99 ms", []).append(_pct(lat, 0.99))
            figures.setdefault(f"sequential {name} commits/s", []).append(1000 / statistics.mean(lat))
        s = loop.time()
        results = await asyncio.gather(*(leader.propose(c.KvPut(f"p{i}", b"v")) for i in range(256)))
        assert all(r.ok for r in results)
        figures.setdefault("256 concurrent commits/s", []).append(256 / (loop.time() - s))

        # failover: close the leader; time to a new leader's first commit
        s = loop.time()
        old = leader.node_id
        await groups[old].close()
        groups[old] = None
        new = await asyncio.wait_for(_leader(groups), 15)
        assert (await new.propose(c.Barrier())) > 0
        figures.setdefault("leader closed -> first commit s", []).append(loop.time() - s)

        # minority: isolate the new leader, wait until it knows, time NoQuorum
        others = [i for i in IDS if i not in (old, new.node_id)]
        net.partition([new.node_id], others)
        while new.status().has_quorum:
            await asyncio.sleep(0.005)
        s = loop.time()
        with pytest.raises(NoQuorum):
            await new.propose(c.Barrier())
        figures.setdefault("minority propose -> NoQuorum ms", []).append((loop.time() - s) * 1000)
        s = loop.time()
        with pytest.raises(NoQuorum):
            await new.propose(c.Barrier())
        figures.setdefault("same, quorum lost > bound ago, ms", []).append((loop.time() - s) * 1000)
        for g in groups.values():
            if g is not None:
                await g.close()
    print()
    for name, values in figures.items():
        print(f"{name:36s} median {statistics.median(values):9.3f}  (min {min(values):.3f} max {max(values):.3f}, n={len(values)})")

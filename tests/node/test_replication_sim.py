"""Simulation invariant: after the last write and the last fault, all live replicas converge within a bound.

Seeded workloads on the deterministic harness (`ReplicaNet`: virtual time, FIFO links with random
latency, loss, partitions, crashes and restarts). A failure prints the seed to replay.
"""

from __future__ import annotations

import random

import pytest

from agentnode.crdt import StateStore
from agentnode.crdt.store import Repair
from agentnode.state_benchmark import ReplicaNet

CONVERGENCE_BOUND_MS = 5_000
"""Time from the last write / heal / restart to identical replicas: a few digest intervals (1 s each)
plus retransmission after loss (ack timeout 1 s)."""

TYPES = (
    ("gcounter", "increment", lambda r: (r.randint(1, 5),)),
    ("pncounter", "decrement", lambda r: (r.randint(1, 5),)),
    ("orset", "add", lambda r: (f"e{r.randrange(20)}",)),
    ("orset", "remove", lambda r: (f"e{r.randrange(20)}",)),
    ("mvregister", "write", lambda r: (r.randrange(100),)),
)


def _workload(seed: int) -> ReplicaNet:
    rng = random.Random(seed)
    size = rng.randint(3, 7)
    net = ReplicaNet(size, seed=seed, loss=rng.choice([0.0, 0.0, 0.05, 0.15]))
    net.run(500)
    key_types: dict[str, int] = {}
    saved: dict[str, StateStore] = {}
    for step in range(rng.randint(80, 200)):
        net.run(rng.randint(0, 40))
        roll = rng.random()
        live = net.live()
        if roll < 0.03 and all(g == 0 for g in net.group.values()) and len(live) > 2:
            cut = rng.sample(live, rng.randint(1, len(live) // 2))
            net.partition(cut, [n for n in net.ids if n not in cut], detect_ms=rng.randint(0, 2_000))
        elif roll < 0.06:
            net.heal(detect_ms=rng.randint(0, 500), jitter_ms=200)
        elif roll < 0.08 and len(live) > 2:
            victim = rng.choice(live)
            saved[victim] = _persisted(net.nodes[victim].store)
            net.crash(victim)
        elif roll < 0.10 and saved:
            victim = sorted(saved)[0]
            net.restart(victim, saved.pop(victim))
        else:
            node = rng.choice(live)
            key = f"k{rng.randrange(12)}"
            t = key_types.setdefault(key, rng.randrange(len(TYPES)) if key != "k0" else 2)
            type_name, op, args = TYPES[t] if t != 3 else TYPES[rng.choice([2, 3])]
            if rng.random() < 0.03 and key != "k0":
                net.call(node, lambda c: c.delete(key, net.now))
                continue
            try:
                net.call(node, lambda c: c.update(key, type_name, op, args(rng), net.now))
            except ValueError:
                pass  # writing a deleted key is refused (CrdtUsageError): caller misuse, by design
    # Final faults end: heal everything and restart crashed replicas, then no more writes.
    net.heal(detect_ms=100)
    for victim in sorted(saved):
        net.restart(victim, saved[victim])
    return net


def _persisted(store: StateStore) -> StateStore:
    """What the SQLite file would give back: every key's state and the seen vector."""
    copy = StateStore(store.replica_id)
    for key, state in store.state_for([*store.keys(), *store.tombstones()]).items():
        copy.apply_state(key, state)
    copy.apply_repair(Repair((), store.seen(), True))
    return copy


@pytest.mark.parametrize("seed", range(10))
def test_live_replicas_converge_within_bound_after_last_write(seed: int) -> None:
    net = _workload(seed)
    quiet_at = net.now
    ok = net.run_until(quiet_at + CONVERGENCE_BOUND_MS, stop=net.converged)
    assert ok, (
        f"seed {seed}: replicas differ {CONVERGENCE_BOUND_MS} ms after the last write; replay with "
        f"pytest 'tests/node/test_replication_sim.py::test_live_replicas_converge_within_bound_after_last_write[{seed}]'"
    )
    values = {node_id: {k: net.nodes[node_id].value(k) for k in (f"k{i}" for i in range(12))} for node_id in net.live()}
    first = next(iter(values.values()))
    assert all(v == first for v in values.values())

"""Micro-benchmark of the store: local updates per second, delta bytes per update, remote applies.

The clock and the msgpack encoder are injected (crdt/ reads no clock and imports no msgpack):
`run_benchmark(time.perf_counter, msgpack.packb)`. Figures are printed by callers, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codec import to_wire
from .store import Delta, StateStore

__all__ = ["BenchResult", "format_results", "run_benchmark"]


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One workload's figures."""

    workload: str
    """What was measured (type and operation)."""
    updates: int
    """Local updates made."""
    updates_per_s: float
    """Local `StateStore.update` calls per second (delta creation included, encoding not)."""
    delta_bytes_mean: float
    """Mean msgpack size of `Delta.to_wire()` per update."""
    state_bytes: int
    """msgpack size of the final full state of the key(s)."""
    applies_per_s: float
    """`StateStore.apply_delta` calls per second on a second replica (decoding not included)."""


Workload = Callable[[StateStore, int], Delta]

WORKLOADS: dict[str, Workload] = {
    "gcounter.increment": lambda s, i: s.update("k", "gcounter", "increment", 1),
    "pncounter.decrement": lambda s, i: s.update("k", "pncounter", "decrement", 1),
    "lwwregister.assign": lambda s, i: s.update("k", "lwwregister", "assign", i, i),
    "mvregister.write": lambda s, i: s.update("k", "mvregister", "write", i),
    "orset.add(1k distinct)": lambda s, i: s.update("k", "orset", "add", i % 1000),
    "ormap.update(1k keys, mvregister)": lambda s, i: s.update("k", "ormap", "update", i % 1000, "mvregister", "write", i),
    "lwwmap.put(1k keys)": lambda s, i: s.update("k", "lwwmap", "put", i % 1000, i, i),
    "store: 1k keys x gcounter": lambda s, i: s.update(f"k{i % 1000}", "gcounter", "increment", 1),
}


def run_benchmark(
    clock: Callable[[], float],
    packb: Callable[[Any], bytes],
    updates: int = 5_000,
    workloads: list[str] | None = None,
) -> list[BenchResult]:
    """Run each workload `updates` times on replica "bench-a", replaying its deltas on "bench-b"."""
    results = []
    for name in workloads or list(WORKLOADS):
        make = WORKLOADS[name]
        src, dst = StateStore("bench-a"), StateStore("bench-b")
        deltas = []
        start = clock()
        for i in range(updates):
            deltas.append(make(src, i + 1))
        local_s = max(clock() - start, 1e-9)
        delta_bytes = sum(len(packb(d.to_wire())) for d in deltas) / max(len(deltas), 1)
        start = clock()
        for d in deltas:
            dst.apply_delta(d)
        apply_s = max(clock() - start, 1e-9)
        assert src.root_digest() == dst.root_digest(), name
        state_bytes = sum(len(packb(to_wire(state))) for state in src.state_for(src.keys()).values())
        results.append(BenchResult(name, updates, updates / local_s, delta_bytes, state_bytes, updates / apply_s))
    return results


def format_results(results: list[BenchResult]) -> str:
    """A plain-text table of results."""
    lines = [f"{'workload':36} {'updates/s':>11} {'delta B':>8} {'state B':>9} {'applies/s':>11}"]
    for r in results:
        lines.append(f"{r.workload:36} {r.updates_per_s:11.0f} {r.delta_bytes_mean:8.1f} {r.state_bytes:9d} {r.applies_per_s:11.0f}")
    return "\n".join(lines)

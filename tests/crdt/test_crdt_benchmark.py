"""The micro-benchmark runs and reports sane figures (printed, never compared with a speed)."""

from __future__ import annotations

import time

import msgpack

from agentnode.crdt.benchmark import WORKLOADS, format_results, run_benchmark


def test_benchmark_reports_every_workload(capsys: object) -> None:
    results = run_benchmark(time.perf_counter, msgpack.packb, updates=300)
    print("\n" + format_results(results))
    assert [r.workload for r in results] == list(WORKLOADS)
    for r in results:
        assert r.updates == 300 and r.updates_per_s > 0 and r.applies_per_s > 0
        # a delta is small and does not grow with the state: it carries one change
        assert 20 < r.delta_bytes_mean < 80, r
        assert r.state_bytes > 0

"""The messaging benchmark's simulated broadcast phase (the process phases run via `agentnode bench messaging`)."""

from __future__ import annotations

from agentnode.messaging_benchmark import simulate_broadcast


def test_simulated_plumtree_reaches_everyone_and_settles_into_a_tree() -> None:
    result = simulate_broadcast(150, messages=4, seed=3)
    assert result["all_reached"] and result["nodes"] == 150
    assert result["reach_ms_max"] is not None and result["reach_ms_max"] < 100
    assert result["duplicates_per_node_max"] < result["first_message"]["duplicates_per_node"]
    assert simulate_broadcast(150, messages=4, seed=3)["per_message"] == result["per_message"]  # one seed, one run


def test_cpu_clock_reports_sender_and_receiver_cpu_per_unit() -> None:
    import os
    import sys
    from types import SimpleNamespace

    from agentnode.messaging_benchmark import _CpuClock

    alone = _CpuClock(None).per("msg", 10)
    assert set(alone) == {"sender_cpu_us_per_msg"} and alone["sender_cpu_us_per_msg"] >= 0
    if sys.platform.startswith("linux"):
        clock = _CpuClock(SimpleNamespace(process=SimpleNamespace(pid=os.getpid())))  # this process as "receiver"
        sum(i * i for i in range(200_000))
        both = clock.per("request", 4)
        assert both["receiver_cpu_us_per_request"] >= 0 and both["sender_cpu_us_per_request"] > 0


def test_memory_round_trips_answer_every_request_and_report_cpu_per_round_trip() -> None:
    from agentnode.messaging_benchmark import _memory_round_trips, _run_loop

    result = _run_loop(lambda: _memory_round_trips(50))
    assert result["requests"] == 50
    assert 0 < result["cpu_us_per_request"] and 0 < result["wall_us_per_request"]

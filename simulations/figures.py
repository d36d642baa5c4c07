"""The numbers a run is judged by, computed from the world after it ran.

Per-node rates divide by node-seconds actually running; detection times are measured from the
fault to each observer's first suspect/dead; "false" suspicions/deaths are those of a node that
had been up the whole time (never crashed, stopped or paused since its first start) and was not
partitioned from its observer at any moment since the observer stopped seeing it alive (world.py
`_observe`, `_cut_between`, `SimNode.up_whole_time`; decision 0045).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentnode.simulations.scenarios import Timeline
    from agentnode.simulations.world import Watch, World

__sans_io__ = True

__all__ = ["compute_figures", "eligible_observers", "percentile", "reach_curve"]


def percentile(sorted_values: list[int] | list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def reach_curve(watch: Watch, observers: int) -> list[tuple[int, float]]:
    """(ms after the watch began, fraction of `observers` that had reached the state) at each step."""
    times = sorted(t - watch.since_ms for t in watch.first_ms.values())
    if observers <= 0:
        return []
    return [(t, (i + 1) / observers) for i, t in enumerate(times)]


def compute_figures(world: World, timeline: Timeline, duration_ms: int) -> dict[str, Any]:
    """Everything `agentnode simulate --json` prints."""
    c = world.counters
    node_s = world.node_ms / 1000.0
    node_h = node_s / 3600.0
    figures: dict[str, Any] = {
        "nodes": world.config.nodes,
        "seed": world.config.seed,
        "simulated_s": world.now_ms / 1000.0,
        "planned_s": duration_ms / 1000.0,
        "digest": world.trace.hexdigest(),
        "scheduler_events": world.scheduler.events_run,
        "node_hours": round(node_h, 4),
        "messages_per_node_per_s": _rate(c["frames_sent"], node_s),
        "bytes_per_node_per_s": _rate(c["bytes_sent"], node_s),
        "mean_frame_bytes": round(c["bytes_sent"] / c["frames_sent"], 1) if c["frames_sent"] else None,
        "suspicions": c["suspicions"],
        "deaths": c["deaths"],
        "false_suspicions": c["false_suspicions"],
        "false_deaths": c["false_deaths"],
        "false_suspicions_per_node_hour": _rate(c["false_suspicions"], node_h),
        "false_deaths_per_node_hour": _rate(c["false_deaths"], node_h),
        "refutations_seen": c["refutations_seen"],
        "frames": {k: c[k] for k in ("frames_sent", "frames_delivered", "frames_lost", "frames_reset",
                                       "frames_to_down_node", "pause_inbox_drops", "unreachable_reports")},
        "network": {"dropped_loss": world.network.dropped_loss, "dropped_partition": world.network.dropped_partition,
                    "dropped_clog": world.network.dropped_clog, "duplicated": world.network.duplicated,
                    "reordered": world.network.reordered},
        "running_at_end": world.running_count,
        "converged_at_end": world.converged(),
    }
    joined = timeline.marks.get("joined")
    first = next((entry for entry in world.convergence_log if joined is not None and entry[0] >= joined), None)
    if first is not None and first[0] != joined:
        first = None  # the next fault came before the joins converged: no join figure for this run
    figures["join_converge_ms"] = first[2] - joined if first and joined is not None else None
    """From the last initial start to the first instant every node held every other as a member
    (None when a later fault struck before that)."""
    figures["join_converge_from_first_start_ms"] = first[2] if first else None
    last = world.convergence_log[-1] if world.convergence_log else None
    if world.converged_at_ms is not None and last is not None:
        figures["reconverge_ms"] = last[2] - last[0]
    else:
        figures["reconverge_ms"] = None
    figures["last_disruption_ms"] = world.quiet_since_ms
    for w in world.watches:
        eligible = eligible_observers(world, w)
        delays = sorted(t - w.since_ms for obs, t in w.first_ms.items() if obs in eligible)
        figures[f"{w.label}_ms"] = {
            "p50": percentile(delays, 0.50), "p99": percentile(delays, 0.99), "max": delays[-1] if delays else None,
            "observers": len(eligible), "reached": len(delays), "missing": len(eligible) - len(delays),
        }
    return figures


def eligible_observers(world: World, w: Watch) -> set[int]:
    """Observers that ran from the watch's start to the end of the run (so could have seen it)."""
    return {n.index for n in world.nodes
            if n.running and n.index != w.subject and n.up_since_ms <= w.since_ms and (n.started_ms or 0) <= w.since_ms}


def _rate(count: int, per: float) -> float | None:
    return round(count / per, 3) if per > 0 else None

"""The run's picture: faults on a timeline against throughput, latency and membership (PNG).

Three panels share the time axis (0 = start of the faults phase):
- throughput: frames received per second, summed over the nodes (transport counters), plus the
  operations per second of every workload that drives a surface;
- latency: per-second median and maximum of each workload's operation latency (for membership
  that is the control call answering `peers`: a paused or overloaded node shows here);
- membership: the fewest and the most nodes any live node sees alive, and how many node
  processes run.
Faults are vertical lines labelled with the action; the shaded span is the faults phase.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentnode.chaos.checkers import Verdict
    from agentnode.chaos.scenario import Scenario
    from agentnode.chaos.workloads import FaultEvent, Sample

__all__ = ["render_timeline", "throughput_series"]

BUCKET_S = 1.0


def throughput_series(samples: Sequence[Sample]) -> tuple[list[float], list[float]]:
    """(times, frames received per second across the cluster) from the membership status samples."""
    per_node: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for s in samples:
        if s.op == "status" and s.ok and isinstance(s.value, dict):
            received = s.value.get("transport.frames_received")
            if isinstance(received, int):
                per_node[s.node].append((s.t_s, received))
    rates: dict[int, float] = defaultdict(float)
    for series in per_node.values():
        for (t0, a), (t1, b) in zip(series, series[1:]):
            if t1 > t0 and b >= a:  # a restart resets the counter: skip that interval
                rates[int(t1 // BUCKET_S)] += (b - a) / (t1 - t0)
    times = sorted(rates)
    return [t * BUCKET_S for t in times], [rates[t] for t in times]


def render_timeline(
    path: Path,
    scenario: Scenario,
    samples: Sequence[Sample],
    timeline: Sequence[FaultEvent],
    verdicts: Sequence[Verdict],
    faults_ended_s: float | None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat, ax_mem) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, constrained_layout=True)
    statuses = ", ".join(f"{v.check} {v.status}" for v in verdicts)
    fig.suptitle(f"chaos: {scenario.name} ({scenario.nodes} nodes, {scenario.profile} profile)\n{statuses}", fontsize=10)

    times, rates = throughput_series(samples)
    if times:
        ax_tp.plot(times, rates, label="frames received/s (all nodes)", color="tab:blue")
    for workload, series in _ops_per_second(samples).items():
        ax_tp.plot(*series, label=f"{workload} ops/s", linestyle="--")
    ax_tp.set_ylabel("throughput")
    ax_tp.legend(loc="upper right", fontsize=8)

    for workload, (t, p50, worst) in _latency(samples).items():
        ax_lat.plot(t, p50, label=f"{workload} median", linewidth=1.2)
        ax_lat.plot(t, worst, label=f"{workload} max", linewidth=0.8, alpha=0.7)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend(loc="upper right", fontsize=8)

    t, low, high, running = _membership(samples)
    if t:
        ax_mem.step(t, high, where="post", label="most members seen alive", color="tab:green")
        ax_mem.step(t, low, where="post", label="fewest members seen alive", color="tab:red")
        ax_mem.step(t, running, where="post", label="node processes answering", color="grey", linestyle=":")
    ax_mem.set_ylabel("members")
    ax_mem.set_ylim(-0.2, scenario.nodes + 0.8)
    ax_mem.set_xlabel("seconds since the faults phase began")
    ax_mem.legend(loc="lower right", fontsize=8)

    end = faults_ended_s if faults_ended_s is not None else scenario.duration_s
    for ax in (ax_tp, ax_lat, ax_mem):
        ax.axvspan(0, end, color="orange", alpha=0.06)
        for event in timeline:
            ax.axvline(event.t_s, color="red" if event.error else "black", linewidth=0.8, alpha=0.6)
        ax.grid(True, alpha=0.3)
    for k, event in enumerate(timeline):
        label = event.action + ("".join(f" n{n}" for n in event.nodes)) + (" (FAILED)" if event.error else "")
        ax_tp.annotate(
            label, xy=(event.t_s, 1.0), xycoords=("data", "axes fraction"), rotation=60, fontsize=7,
            ha="left", va="bottom", xytext=(2, 2 + 9 * (k % 2)), textcoords="offset points",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ops_per_second(samples: Sequence[Sample]) -> dict[str, tuple[list[float], list[float]]]:
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for s in samples:
        if s.workload != "membership" and s.ok:
            counts[s.workload][int(s.t_s // BUCKET_S)] += 1
    return {w: ([b * BUCKET_S for b in sorted(c)], [c[b] / BUCKET_S for b in sorted(c)]) for w, c in counts.items()}


def _latency(samples: Sequence[Sample]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    buckets: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.op == "status":
            continue
        name = "control peers" if s.workload == "membership" else f"{s.workload} {s.op}"
        buckets[name][int(s.t_s // BUCKET_S)].append(s.latency_ms)
    out = {}
    for name, per in buckets.items():
        keys = sorted(per)
        out[name] = ([k * BUCKET_S for k in keys], [_median(per[k]) for k in keys], [max(per[k]) for k in keys])
    return out


def _membership(samples: Sequence[Sample]) -> tuple[list[float], list[int], list[int], list[int]]:
    per: dict[int, dict[int, Any]] = defaultdict(dict)
    for s in samples:
        if s.workload == "membership" and s.op == "peers":
            per[int(s.t_s // BUCKET_S)][s.node] = s.value if s.ok else None
    t, low, high, running = [], [], [], []
    for bucket in sorted(per):
        values = [v for v in per[bucket].values() if isinstance(v, int)]
        t.append(bucket * BUCKET_S)
        low.append(min(values) if values else 0)
        high.append(max(values) if values else 0)
        running.append(len(values))
    return t, low, high, running


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

"""PNG plots of one run (matplotlib, Agg backend), for people who would rather look than read.

members_seen_alive.png  min/median/max over nodes of members seen alive, against the running count
detection.png           CDF of crash detection times (first suspicion, dead) over observers
bandwidth.png           bytes sent per node per second (min/median/max band) over time
reach.png               fraction of nodes that learnt an update vs time, next to the Serf model
figures.json            the --json figures
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agentnode.simulations.figures import eligible_observers, reach_curve  # noqa: E402
from agentnode.simulations.seed import fork  # noqa: E402
from agentnode.simulations.serf_model import logistic_reach, push_gossip_reach  # noqa: E402

if TYPE_CHECKING:
    from agentnode.simulations.scenarios import SimulationResult

__all__ = ["write_report"]

DPI = 110


def write_report(result: SimulationResult, directory: Path) -> list[Path]:
    """Write the plots and figures.json for `result` into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        _members_seen(result, directory / "members_seen_alive.png"),
        _bandwidth(result, directory / "bandwidth.png"),
    ]
    detection = _detection(result, directory / "detection.png")
    if detection is not None:
        written.append(detection)
    written.append(_reach(result, directory / "reach.png"))
    figures_path = directory / "figures.json"
    figures_path.write_text(json.dumps(result.figures, indent=2, sort_keys=True) + "\n")
    written.append(figures_path)
    return written


def _title(result: SimulationResult, what: str) -> str:
    s = result.spec
    return f"{what}\n{s.scenario}, {s.nodes} nodes, seed {s.seed}, {s.network} network"


def _marks(ax: plt.Axes, result: SimulationResult) -> None:
    for name, at in sorted(result.timeline.marks.items(), key=lambda kv: kv[1]):
        ax.axvline(at / 1000.0, color="grey", linestyle=":", linewidth=1)
        ax.annotate(name, (at / 1000.0, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=7, color="grey")


def _members_seen(result: SimulationResult, path: Path) -> Path:
    samples = result.world.samples
    t = [s["t_ms"] / 1000.0 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(t, [s["seen_alive_min"] for s in samples], [s["seen_alive_max"] for s in samples],
                    alpha=0.3, label="min..max over nodes", step="post")
    ax.step(t, [s["seen_alive_p50"] for s in samples], where="post", label="median node")
    ax.step(t, [max(0, s["running"] - 1) for s in samples], where="post", color="black", linestyle="--",
            linewidth=1, label="other nodes running")
    _marks(ax, result)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("members seen alive")
    ax.set_title(_title(result, "Members each node sees alive"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _bandwidth(result: SimulationResult, path: Path) -> Path:
    samples = result.world.samples[1:]
    t = [s["t_ms"] / 1000.0 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(t, [s["bytes_per_s_min"] / 1000 for s in samples], [s["bytes_per_s_max"] / 1000 for s in samples],
                    alpha=0.3, label="min..max over nodes", step="pre")
    ax.step(t, [s["bytes_per_s_p50"] / 1000 for s in samples], where="pre", label="median node")
    _marks(ax, result)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("kB sent per node per second")
    mean = result.figures.get("bytes_per_node_per_s")
    ax.set_title(_title(result, f"Bandwidth per node (run mean {mean / 1000 if mean else 0:.1f} kB/s)"), fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _detection(result: SimulationResult, path: Path) -> Path | None:
    watches = [w for w in result.world.watches if w.label in ("suspect", "dead")]
    if not watches:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for w in watches:
        eligible = eligible_observers(result.world, w)
        delays = sorted((t - w.since_ms) / 1000.0 for obs, t in w.first_ms.items() if obs in eligible)
        if delays:
            ax.step(delays, [(i + 1) / max(1, len(eligible)) for i in range(len(delays))], where="post",
                    label=f"{'first suspicion' if w.label == 'suspect' else 'marked dead'} "
                          f"(p50 {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s)")
    ax.set_xlabel("seconds after the crash")
    ax.set_ylabel("fraction of observers")
    ax.set_ylim(0, 1.02)
    ax.set_title(_title(result, "Crash detection time over observers (CDF)"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _reach(result: SimulationResult, path: Path) -> Path:
    n = result.spec.nodes
    fig, ax = plt.subplots(figsize=(8, 4.5))
    horizon_ms = 4_000
    for w in result.world.watches:
        if w.label not in ("join", "suspect"):
            continue
        curve = reach_curve(w, len(eligible_observers(result.world, w)))
        if curve:
            origin = curve[0][0]  # from the first node that learnt it: dissemination, not detection
            pts = [(t - origin, frac) for t, frac in curve]
            horizon_ms = max(horizon_ms, pts[-1][0] + 500)
            label = "ours: late joiner seen alive" if w.label == "join" else "ours: suspicion of the crashed node"
            ax.step([0] + [p[0] / 1000.0 for p in pts], [0] + [p[1] for p in pts], where="post", label=label, linewidth=2)
    grid = list(range(0, horizon_ms + 1, 20))
    ax.plot([t / 1000.0 for t in grid], [logistic_reach(n, t) for t in grid], "--", label="Serf model (logistic, fanout 3, 200 ms)")
    sim = push_gossip_reach(n, fork(result.spec.seed, "serf-model"))
    ax.step([p[0] / 1000.0 for p in sim], [p[1] for p in sim], where="post", linestyle=":",
            label="Serf model simulated (push gossip, fanout 3, 200 ms)")
    ax.set_xlabel("seconds since the first node learnt the update")
    ax.set_ylabel("fraction of nodes that know")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, horizon_ms / 1000.0)
    ax.set_title(_title(result, "Dissemination reach vs the Serf convergence model"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path

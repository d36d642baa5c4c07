"""`agentnode simulate`: run one seeded scenario of the deterministic simulator and print its figures."""

from __future__ import annotations

import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from agentnode.simulations.scenarios import SCENARIOS, RunSpec, run
from agentnode.simulations.seed import SEED_MAX

__all__ = ["register"]

_SHOWN = (
    ("join_converge_ms", "join: converged after the last start (ms)"),
    ("reconverge_ms", "re-converged after the last disruption (ms)"),
    ("suspect_ms", "crash: first suspicion per observer (ms)"),
    ("dead_ms", "crash: marked dead per observer (ms)"),
    ("join_ms", "late joiner seen alive per node (ms)"),
    ("false_suspicions_per_node_hour", "false suspicions per node-hour"),
    ("false_deaths_per_node_hour", "false deaths per node-hour"),
    ("messages_per_node_per_s", "messages per node per second"),
    ("bytes_per_node_per_s", "bytes per node per second"),
    ("converged_at_end", "converged at the end"),
    ("digest", "trace digest"),
)

_STATE_SHOWN = (
    ("writes_done", "state: writes made"),
    ("replicas_equal_s", "state: all replicas equal after the heal (s)"),
    ("reconverge_s", "state: equal and membership converged (s)"),
    ("membership_reconverge_s", "state: membership converged after the heal (s)"),
    ("service_bytes_heal_to_converged", "state: service bytes from heal to equal"),
    ("service_bytes", "state: service bytes, whole run"),
    ("converged_at_end", "state: replicas equal at the end"),
)


def register(app: typer.Typer) -> None:
    """Add `simulate` to the root app."""
    app.command("simulate", help=_help())(simulate)


def _help() -> str:
    names = "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values())
    return ("Run N real NodeCores in a seeded, deterministic simulated network and print the figures. "
            "The same seed replays the same run (same trace digest). Scenarios - " + names)


def simulate(
    nodes: int = typer.Option(50, "--nodes", min=1, help="Number of simulated nodes."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=SEED_MAX, help="Run seed (default: a random one, printed)."),
    scenario: str = typer.Option("steady", "--scenario", help="One of: " + ", ".join(SCENARIOS)),
    duration_s: Optional[float] = typer.Option(None, "--duration-s", help="Simulated seconds (default: the scenario's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON (no progress bar)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write PNG plots and figures.json into this directory."),
    network: str = typer.Option("lan", "--network", help="Latency profile: lan or wan."),
    membership: str = typer.Option("lan", "--membership", help="NodeCore membership profile (node/profiles.py)."),
    loss: Optional[float] = typer.Option(None, "--loss", help="Frame loss 0..1 (lossy scenario: default 0.1; others: none)."),
    crash_kind: str = typer.Option("host", "--crash-kind", help="crash scenario: host (silence) or process (refused)."),
    convergence_bound_s: float = typer.Option(30.0, "--convergence-bound-s", help="Invariant: converge within this after faults stop."),
    false_death_bound_s: float = typer.Option(30.0, "--false-death-bound-s", help="Invariant: a healthy node looks dead at most this long."),
    codec: str = typer.Option("msgpack", "--codec", help="msgpack (frames cross as bytes, as in production) or none."),
    cprofile: Optional[Path] = typer.Option(None, "--cprofile", help="Write a cProfile of the simulator loop to this file."),
    services: str = typer.Option("", "--services", help="Service cores beside membership, comma-separated: state, "
                                 "registry, consensus, names (state-*/consensus-* scenarios switch theirs on)."),
    registry_ops: int = typer.Option(200, "--registry-ops", help="Agent registrations/deregistrations (registry service)."),
    consensus_voters: int = typer.Option(3, "--consensus-voters", help="Voters of the consensus stand-in (first k nodes)."),
    state_keys: int = typer.Option(100, "--state-keys", help="Keys the state workload writes."),
    state_writes: int = typer.Option(500, "--state-writes", help="Updates the state workload makes."),
    state_bound_s: float = typer.Option(10.0, "--state-bound-s", help="Invariant: replicas equal within this after "
                                        "the last write, fault and membership convergence."),
) -> None:
    if seed is None:
        seed = random.SystemRandom().randrange(SEED_MAX)
    try:
        spec = RunSpec(nodes=nodes, seed=seed, scenario=scenario, duration_s=duration_s, network=network,
                       membership=membership, loss=loss, crash_kind=crash_kind, convergence_bound_s=convergence_bound_s,
                       false_death_bound_s=false_death_bound_s, codec=codec, services=services, state_keys=state_keys,
                       state_writes=state_writes, state_bound_s=state_bound_s, consensus_voters=consensus_voters,
                       registry_ops=registry_ops)
        from agentnode.profiles import profile_named

        profile_named(membership)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from agentnode.simulations.progress import SimulationProgress

    started = time.perf_counter()
    profiler = None
    if cprofile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with SimulationProgress(spec.duration_ms, label=f"{scenario} x{nodes}", enabled=False if json_out else None) as progress:
        result = run(spec, progress=progress)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(cprofile))
    figures = dict(result.figures)
    figures["scenario"] = scenario
    figures["wall_s"] = round(time.perf_counter() - started, 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["replay"] = spec.replay_command()
    figures["violation"] = None
    if result.violation is not None:
        v = result.violation
        figures["violation"] = {"invariant": v.invariant, "time_ms": v.time_ms, "message": v.message}
    if report is not None:
        from agentnode.simulations.report import write_report

        result.figures = figures
        files = write_report(result, report)
        figures["report_files"] = [str(p) for p in files]
    if json_out:
        typer.echo(json.dumps(figures, indent=2, sort_keys=True))
    else:
        _print_human(figures)
    if result.violation is not None:
        v = result.violation
        typer.echo(f"INVARIANT VIOLATED: {v.invariant} at {v.time_ms} ms (seed {seed})\n  {v.message}\n"
                   f"replay with:\n  {spec.replay_command()}", err=True)
        raise typer.Exit(1)


def _print_human(figures: dict) -> None:
    out = sys.stdout
    out.write(f"{figures['scenario']}: {figures['nodes']} nodes, seed {figures['seed']}, "
              f"{figures['simulated_s']:g} simulated s in {figures['wall_s']:.1f} wall s, "
              f"peak RSS {figures['peak_rss_mb']:.0f} MB\n")
    for key, label in _SHOWN:
        if key not in figures:
            continue
        value = figures[key]
        if isinstance(value, dict):
            value = (f"p50 {value['p50']}  p99 {value['p99']}  max {value['max']}  "
                     f"({value['reached']}/{value['observers']} observers)")
        out.write(f"  {label:45s} {value}\n")
    state = figures.get("state")
    if isinstance(state, dict):
        for key, label in _STATE_SHOWN:
            if key in state:
                out.write(f"  {label:45s} {state[key]}\n")
    consensus = figures.get("consensus")
    if isinstance(consensus, dict):
        out.write(f"  {'consensus: term / elections / commit index':45s} {consensus['term']} / {consensus['elections']} / "
                  f"{consensus['commit_index']}\n")
        out.write(f"  {'consensus: puts ok / refused (no quorum)':45s} {consensus['writes_ok']} / {consensus['writes_refused']}\n")
        out.write(f"  {'consensus: name leases granted / refused':45s} {consensus['name_grants']} / {consensus['name_refusals']}\n")
    registry = figures.get("registry")
    if isinstance(registry, dict):
        out.write(f"  {'registry: agents registered / deregistered':45s} {registry['registered']} / {registry['deregistered']}\n")
    if figures.get("report_files"):
        out.write(f"  report: {', '.join(figures['report_files'])}\n")
    out.write(f"  replay: {figures['replay']}\n")

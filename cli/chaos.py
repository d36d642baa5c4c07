"""`agentnode chaos run|list|doctor`: fault-injection scenarios against real node processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from agentnode.cli.output import EXIT, JsonOption, console, fail, print_json, print_table

_STATUS_STYLE = {"pass": "green", "fail": "red", "skip": "yellow", "error": "magenta"}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    chaos = typer.Typer(
        help="Chaos scenarios: real nodes in network namespaces with partitions, loss, delay, kill -9, clock skew, full disks.",
        no_args_is_help=True,
    )
    chaos.command("run", help="Run a scenario (file or built-in name) and print each checker's verdict.")(run)
    chaos.command("list", help="List the built-in scenarios.")(list_scenarios)
    chaos.command("doctor", help="Show which fault kinds work on this machine, and why the others do not.")(doctor)
    app.add_typer(chaos, name="chaos")


def run(
    scenario: str = typer.Argument(..., help="A scenario TOML file, or a built-in name (see `agentnode chaos list`)."),
    nodes: int = typer.Option(None, "--nodes", "-n", help="Override the scenario's node count."),
    seed: int = typer.Option(0, "--seed", help="Seed for the run's choices (random nodes, workload keys)."),
    report: Path = typer.Option(None, "--report", help="Write result.json, samples, node logs and timeline.png here."),
    keep: bool = typer.Option(False, "--keep", help="Keep the run directory (data dirs, logs) after the run."),
    json: bool = JsonOption,
) -> None:
    from agentnode.chaos.runner import run_scenario
    from agentnode.chaos.scenario import ScenarioError, load_scenario

    try:
        loaded = load_scenario(scenario)
        if nodes is not None:
            loaded = loaded.with_nodes(nodes)
    except ScenarioError as exc:
        fail(str(exc), "usage")
    progress = None if json else (lambda line: console.print(f"[dim]{line}[/dim]"))
    result = run_scenario(loaded, seed=seed, report_dir=report, keep=keep, progress=progress)
    if json:
        print_json(result.to_dict())
    else:
        _print_result(result)
    if result.status == "skip":
        raise typer.Exit(EXIT["ok"])
    if result.status != "pass":
        raise typer.Exit(EXIT["unhealthy"] if result.status == "fail" else EXIT["error"])


def list_scenarios(json: bool = JsonOption) -> None:
    from agentnode.chaos.scenario import builtin_scenarios

    found = builtin_scenarios()
    rows = [
        {
            "name": s.name, "ci": s.ci, "nodes": s.nodes, "duration_s": s.duration_s,
            "faults": sorted({f.action for f in s.faults}), "checks": [c.kind for c in s.checks],
            "description": " ".join(s.description.split()), "known_problem": s.known_problem,
        }
        for s in found.values()
    ]
    if json:
        print_json(rows)
        return
    print_table(
        None, ["name", "ci", "nodes", "seconds", "faults", "description"],
        [(r["name"], "yes" if r["ci"] else "", r["nodes"], f"{r['duration_s']:g}", ", ".join(r["faults"]), r["description"].split(". ")[0][:70]) for r in rows],
    )


def doctor(json: bool = JsonOption) -> None:
    from agentnode.chaos.capabilities import fault_support, probe, strict

    caps = probe()
    faults = fault_support()
    if json:
        print_json({
            "capabilities": {c.name: {"ok": c.ok, "reason": c.reason} for c in caps.values()},
            "faults": {f.name: {"ok": f.ok, "reason": f.reason} for f in faults.values()},
            "strict": strict(),
        })
    else:
        print_table("mechanisms", ["capability", "works", "why / why not"], [(c.name, "yes" if c.ok else "NO", c.reason) for c in caps.values()])
        print_table("fault kinds", ["fault", "works", "why / why not"], [(f.name, "yes" if f.ok else "NO", f.reason) for f in faults.values()])
    if not all(f.ok for f in faults.values()):
        raise typer.Exit(EXIT["unhealthy"])


def _print_result(result: Any) -> None:
    style = _STATUS_STYLE.get(result.status, "white")
    console.print(f"scenario [bold]{result.scenario}[/bold] on {result.nodes} nodes, seed {result.seed}: "
                  f"[{style}]{result.status.upper()}[/{style}] in {result.wall_s} s")
    if result.reason:
        console.print(f"  reason: {result.reason}")
    if result.known_problem:
        console.print(f"  [yellow]known product problem this scenario documents:[/yellow] {' '.join(result.known_problem.split())}")
    for event in result.timeline:
        mark = f" [red]FAILED: {event.error}[/red]" if event.error else ""
        console.print(f"  t={event.t_s:6.1f}s {event.detail}{mark}")
    for kind, info in result.workloads.items():
        if info.get("status") != "ran":
            console.print(f"  workload {kind}: [yellow]{info.get('status')}[/yellow] {info.get('reason', '')}")
    tcp = result.network.get("tcp_during_faults", {})
    if tcp:
        cells = ", ".join(f"n{i} {v['retrans_pct']}%" for i, v in tcp.items() if v.get("retrans_pct") is not None)
        console.print(f"  TCP retransmitted segments during the faults: {cells}")
    rules = result.network.get("rules_at_end_of_faults", {})
    if any(rules.values()):
        console.print(f"  fault rules: {rules.get('dropped_packets', 0)} packets dropped, {rules.get('duplicated_packets', 0)} duplicated")
    for verdict in result.verdicts:
        vstyle = _STATUS_STYLE.get(verdict.status, "white")
        console.print(f"  [{vstyle}]{verdict.status.upper():5}[/{vstyle}] {verdict.check}: {verdict.summary}")
    if result.report_dir:
        console.print(f"  report: {result.report_dir}/timeline.png, result.json")
    for problem in result.cleanup_problems:
        console.print(f"  [red]cleanup problem:[/red] {problem}")

"""Run one scenario end to end: cluster up, workloads on, faults on schedule, faults off, checks, report.

Time 0 of the timeline is when the faults phase starts (after the cluster formed and the workloads
started). At `duration_s` every remaining fault is removed (network healed, paused nodes resumed,
disks freed; killed nodes stay down unless the scenario restarts them), then the checks run while
the workloads keep observing. Every wait is bounded; the cluster and everything it created are
removed on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentnode.chaos.capabilities import fault_support, strict
from agentnode.chaos.checkers import Verdict, run_check
from agentnode.chaos.cluster import ChaosCluster, WaitTimeout
from agentnode.chaos.faults import LinkFault
from agentnode.chaos.scenario import Scenario, needed_fault_kinds, resolve_groups, resolve_index, resolve_set
from agentnode.chaos.workloads import WORKLOADS, FaultEvent, RunContext, Workload

__all__ = ["RunResult", "run_scenario"]

FORM_TIMEOUT_S = 45.0
"""The initial cluster must form within this; otherwise the run is an error, not a verdict."""


@dataclass
class RunResult:
    scenario: str
    seed: int
    nodes: int
    status: str
    """pass | fail | skip | error; `known_problem` says when a fail is the documented expectation."""
    reason: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    timeline: list[FaultEvent] = field(default_factory=list)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    report_dir: str | None = None
    known_problem: str = ""
    network: dict[str, Any] = field(default_factory=dict)
    """What the faults did on the wire: rule drop/dup counters, each node's TCP retransmissions, shaper stats."""
    cleanup_problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdicts"] = [v.to_dict() for v in self.verdicts]
        data["timeline"] = [asdict(e) for e in self.timeline]
        return data


def run_scenario(
    scenario: Scenario,
    *,
    seed: int = 0,
    nodes: int | None = None,
    report_dir: Path | None = None,
    keep: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Run `scenario` on real node processes in namespaces and return the checkers' verdicts."""
    say = progress or (lambda message: None)
    if nodes is not None:
        scenario = scenario.with_nodes(nodes)
    result = RunResult(scenario.name, seed, scenario.nodes, "error", known_problem=scenario.known_problem,
                       report_dir=str(report_dir) if report_dir is not None else None)
    support = fault_support()
    lacking = {k: support[k].reason for k in needed_fault_kinds(scenario) if not support[k].ok}
    if lacking:
        result.status = "error" if strict() else "skip"
        result.reason = "missing capabilities: " + "; ".join(f"{k}: {r}" for k, r in sorted(lacking.items()))
        return result
    began = time.monotonic()
    restore = _sigterm_raises()
    cluster = ChaosCluster(
        scenario.nodes, profile=scenario.profile, transport=scenario.transport,
        skewable=[resolve_index(n, scenario.nodes) for n in scenario.skewable], disk_mb=scenario.disk_mb, keep=keep,
        extra_args=_node_args(scenario),
    )
    ctx = RunContext(cluster, random.Random(seed))
    try:
        say(f"starting {scenario.nodes} nodes in namespaces ({cluster.prefix})")
        cluster.start()
        result.setup_s = {k: round(v, 3) for k, v in cluster.setup_s.items()}
        try:
            ctx.converged_s = round(cluster.wait_for("the initial cluster to form", cluster.converged, timeout_s=FORM_TIMEOUT_S), 2)
            say(f"cluster formed in {ctx.converged_s} s")
        except WaitTimeout as exc:
            result.reason = str(exc)
        _prepare_workloads(scenario, ctx, result)
        ctx.started = time.monotonic()
        ctx.converged_s = 0.0 if ctx.converged_s is not None else None
        for workload in ctx.workloads.values():
            if workload.skip_reason is None and workload.error_reason is None:
                workload.start()
        tcp_before = _tcp(cluster)
        if ctx.converged_s is not None:
            _run_faults(scenario, ctx, say)
        ctx.faults_ended_s = ctx.elapsed()
        result.network = _network_evidence(cluster, tcp_before)
        _end_faults(ctx)
        say("faults stopped; checking")
        checks = list(scenario.checks)
        if not any(c.kind == "no_unexpected_exit" for c in checks):
            from agentnode.chaos.scenario import CheckSpec

            checks.append(CheckSpec("no_unexpected_exit"))
        for check in checks:
            verdict = run_check(check.kind, ctx, check.params)
            say(f"{verdict.status.upper():5} {verdict.check}: {verdict.summary}")
            result.verdicts.append(verdict)
        _stop_workloads(ctx, result)
        result.timeline = list(ctx.timeline)
        result.status = _overall(result.verdicts)
        if report_dir is not None:
            _write_report(Path(report_dir), scenario, ctx, result)
    except Exception as exc:  # the run is an error, with the reason; cleanup below still runs
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
        _stop_workloads(ctx, result)
        if report_dir is not None:
            try:
                _copy_logs(Path(report_dir), cluster)
            except OSError:
                pass
    finally:
        result.cleanup_problems = cluster.close()
        restore()
        result.wall_s = round(time.monotonic() - began, 1)
    if report_dir is not None:
        (Path(report_dir) / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def apply_fault(ctx: RunContext, action: str, params: dict[str, Any]) -> tuple[int, ...]:
    """Apply one fault action now; return the node indices it touched."""
    cluster = ctx.cluster
    size = cluster.size
    if action == "partition":
        groups = resolve_groups(params, size)
        cluster.apply(cluster.net.partition(groups))
        ctx.partitions.append((round(ctx.elapsed(), 2), groups))
        return tuple(min(groups, key=len))
    if action == "one_way":
        cluster.apply(cluster.net.one_way(resolve_set(params.get("from"), size), resolve_set(params.get("to"), size)))
        return ()
    if action == "heal_partition":
        cluster.apply(cluster.net.heal_partitions())
        return ()
    if action == "link":
        fault = LinkFault(
            float(params.get("loss", 0)), float(params.get("duplicate", 0)), float(params.get("delay_ms", 0)),
            float(params.get("jitter_ms", 0)), bool(params.get("reorder", True)),
        )
        cluster.apply(cluster.net.link(resolve_set(params.get("from"), size), resolve_set(params.get("to"), size), fault))
        return ()
    if action == "clear_links":
        cluster.apply(cluster.net.clear_links())
        return ()
    if action == "clear_bandwidth":
        cluster.apply(cluster.net.clear_rates())
        return ()
    if action == "heal":
        cluster.apply(cluster.net.healed())
        return ()
    node = _node(ctx, params.get("node"), params.get("else_node"))
    if action == "bandwidth":
        cluster.apply(cluster.net.rate(node, int(params["kbit"])))
    elif action == "kill":
        cluster.kill(node)
    elif action == "stop":
        cluster.stop_node(node)
    elif action == "restart":
        refused = cluster.restart(node, wipe=bool(params.get("wipe", False)))
        if refused:
            ctx.outcomes.append((round(ctx.elapsed(), 2), node, refused))
    elif action == "pause":
        cluster.pause(node)
    elif action == "resume":
        cluster.resume(node)
    elif action == "skew":
        cluster.skew(node, float(params["seconds"]))
    elif action == "fill_disk":
        cluster.fill_disk(node)
    elif action == "free_disk":
        cluster.free_disk(node)
    else:
        raise ValueError(f"unknown fault action {action!r}")
    return (node,)


def _node(ctx: RunContext, value: Any, fallback: Any = None) -> int:
    if value == "random":
        live = [n.index for n in ctx.cluster.live()]
        if not live:
            raise ValueError("no live node to pick at random")
        return ctx.rng.choice(live)
    if value == "last":
        for event in reversed(ctx.timeline):
            if event.action in ("kill", "stop", "pause", "fill_disk") and event.nodes and not event.error:
                return event.nodes[0]
        raise ValueError("no earlier kill/stop/pause/fill_disk to refer to as \"last\"")
    if value == "leader":
        for workload in ctx.workloads.values():
            if workload.skip_reason or workload.error_reason:
                continue
            found = workload.resolve("leader")
            if found is not None:
                return found
        if fallback is not None:
            return resolve_index(fallback, ctx.cluster.size)
        raise ValueError("no running workload knows a leader (the Raft workload is unavailable)")
    return resolve_index(value, ctx.cluster.size)


def _run_faults(scenario: Scenario, ctx: RunContext, say: Callable[[str], None]) -> None:
    for fault in scenario.faults:
        _sleep_until(ctx, fault.at_s)
        at = ctx.elapsed()
        try:
            nodes = apply_fault(ctx, fault.action, fault.params)
            detail = fault.describe()
            if ctx.outcomes and ctx.outcomes[-1][0] >= at and ctx.outcomes[-1][1] in nodes:
                detail += f" -> the node did not start: {ctx.outcomes[-1][2]}"
            ctx.timeline.append(FaultEvent(round(at, 2), fault.action, detail, nodes))
            say(f"t={at:5.1f}s {detail}")
        except Exception as exc:  # a fault that cannot be applied is shown in the timeline and fails the run
            ctx.timeline.append(FaultEvent(round(at, 2), fault.action, fault.describe(), (), f"{type(exc).__name__}: {exc}"))
            say(f"t={at:5.1f}s {fault.describe()} FAILED: {exc}")
    _sleep_until(ctx, scenario.duration_s)


def _end_faults(ctx: RunContext) -> None:
    cluster = ctx.cluster
    at = ctx.elapsed()
    touched = []
    try:
        if cluster.network is not None and cluster.net != cluster.net.healed():
            cluster.apply(cluster.net.healed())
            touched.append("network healed")
        for node in cluster.nodes:
            if node.paused:
                cluster.resume(node.index)
                touched.append(f"node {node.index} resumed")
            if node.disk_mount and (node.data_dir / ".chaos-filler").exists():
                cluster.free_disk(node.index)
                touched.append(f"node {node.index} disk freed")
        ctx.timeline.append(FaultEvent(round(at, 2), "end", "faults stop: " + (", ".join(touched) or "nothing left to undo")))
    except Exception as exc:
        ctx.timeline.append(FaultEvent(round(at, 2), "end", "faults stop", (), f"{type(exc).__name__}: {exc}"))


def _node_args(scenario: Scenario) -> list[str]:
    """The `join` arguments the scenario's workloads need (e.g. `--demo-agents`), each once, in order."""
    found: list[str] = []
    for spec in scenario.workloads:
        for arg in getattr(WORKLOADS.get(spec.kind), "node_args", ()):
            if arg not in found:
                found.append(arg)
    return found


def _prepare_workloads(scenario: Scenario, ctx: RunContext, result: RunResult) -> None:
    for spec in scenario.workloads:
        factory = WORKLOADS.get(spec.kind)
        if factory is None:
            result.workloads[spec.kind] = {"status": "error", "reason": f"unknown workload {spec.kind!r}; known: {', '.join(sorted(WORKLOADS))}"}
            continue
        workload: Workload = factory(spec.params, ctx)
        ctx.workloads[spec.kind] = workload
        workload.skip_reason = workload.unavailable()
        if workload.skip_reason:
            result.workloads[spec.kind] = {"status": "skip", "reason": workload.skip_reason}
            continue
        try:
            workload.prepare()
        except Exception as exc:  # the surface exists but did not get ready: an error, not a skip
            workload.error_reason = f"{type(exc).__name__}: {exc}"
            result.workloads[spec.kind] = {"status": "error", "reason": workload.error_reason}
            continue
        result.workloads[spec.kind] = {"status": "ran"}


def _stop_workloads(ctx: RunContext, result: RunResult) -> None:
    for kind, workload in ctx.workloads.items():
        if workload.skip_reason or workload.error_reason:
            continue
        entry = result.workloads.setdefault(kind, {"status": "ran"})
        try:
            workload.stop()
            entry["summary"] = workload.summary()
        except Exception as exc:  # a workload bug must not stop the cleanup
            entry["summary_error"] = f"{type(exc).__name__}: {exc}"
        entry["samples"] = len(ctx.recorder.samples(kind))
        if workload.errors:
            entry["errors"] = workload.errors[:20]


def _tcp(cluster: ChaosCluster) -> dict[int, dict[str, int]]:
    assert cluster.network is not None
    return {i: cluster.network.tcp_counters(i) for i in range(cluster.size)}


def _network_evidence(cluster: ChaosCluster, before: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Counters over the faults phase (TCP counters belong to the node's namespace, so they survive restarts)."""
    assert cluster.network is not None
    after = _tcp(cluster)
    tcp = {}
    for i, end in after.items():
        start = before.get(i, {})
        out = end.get("out_segs", 0) - start.get("out_segs", 0)
        retrans = end.get("retrans_segs", 0) - start.get("retrans_segs", 0)
        tcp[str(i)] = {"out_segs": out, "retrans_segs": retrans, "retrans_pct": round(100 * retrans / out, 2) if out else None}
    evidence: dict[str, Any] = {"tcp_during_faults": tcp, "rules_at_end_of_faults": cluster.network.rule_counters()}
    shaper = cluster.network.shaper_stats()
    if shaper:
        evidence["shaper"] = shaper
    return evidence


def _sleep_until(ctx: RunContext, t_s: float) -> None:
    remaining = t_s - ctx.elapsed()
    if remaining > 0:
        time.sleep(remaining)


def _overall(verdicts: list[Verdict]) -> str:
    statuses = {v.status for v in verdicts}
    if "fail" in statuses:
        return "fail"
    if "error" in statuses:
        return "error"
    if statuses <= {"skip"}:
        return "skip"
    return "pass"


def _write_report(directory: Path, scenario: Scenario, ctx: RunContext, result: RunResult) -> None:
    from agentnode.chaos.report import render_timeline

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "samples.jsonl", "w") as out:
        for sample in ctx.recorder.samples():
            out.write(json.dumps(asdict(sample), default=str) + "\n")
    _copy_logs(directory, ctx.cluster)
    render_timeline(directory / "timeline.png", scenario, ctx.recorder.samples(), ctx.timeline, result.verdicts, ctx.faults_ended_s)


def _copy_logs(directory: Path, cluster: ChaosCluster) -> None:
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for node in cluster.nodes:
        if node.log_path.exists():
            shutil.copyfile(node.log_path, logs / f"node{node.index}.log")
    shaper_log = cluster.run_dir / "shaper.log"
    if shaper_log.exists():
        shutil.copyfile(shaper_log, logs / "shaper.log")


def _sigterm_raises() -> Callable[[], None]:
    """In the main thread, make SIGTERM unwind like Ctrl-C so the cleanup runs; return the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)

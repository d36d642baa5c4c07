"""Checkers: run after every scenario, each prints a verdict with its evidence.

A verdict is `pass`, `fail`, `skip` (the surface or workload it needs is missing: the reason says
which) or `error` (the checker could not decide, e.g. the cluster never formed). A checker never
passes on missing data: no samples means no verdict.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agentnode.chaos.cluster import WaitTimeout
from agentnode.chaos.scenario import resolve_index
from agentnode.chaos.workloads import (
    BroadcastWorkload,
    CrdtWrite,
    DurableMessagesWorkload,
    LockGrant,
    MembershipWorkload,
    RunContext,
    UnicastWorkload,
    read_delivery_log,
)
from agentnode.control import ControlError

__all__ = ["CHECKERS", "Verdict", "judge_crdt", "judge_durable", "judge_locks", "judge_minority_writes", "run_check"]

EVIDENCE_LINES_MAX = 20
"""Evidence is for a human: the first lines of each kind, then a count."""

_ENOSPC = re.compile(r"No space left on device|ENOSPC|Errno 28|disk (is )?full", re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last)"


@dataclass(frozen=True, slots=True)
class Verdict:
    check: str
    status: str
    """pass | fail | skip | error"""
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "summary": self.summary, "evidence": self.evidence}


Checker = Callable[[RunContext, dict[str, Any]], Verdict]


def run_check(kind: str, ctx: RunContext, params: dict[str, Any]) -> Verdict:
    checker = CHECKERS.get(kind)
    if checker is None:
        return Verdict(kind, "error", f"unknown check {kind!r}; known: {', '.join(sorted(CHECKERS))}")
    if ctx.converged_s is None and kind != "no_unexpected_exit":
        return Verdict(kind, "error", "the cluster never formed before the faults, so nothing after it means anything")
    try:
        return checker(ctx, params)
    except Exception as exc:  # a checker bug must show as such, not as a product verdict
        return Verdict(kind, "error", f"the checker failed: {type(exc).__name__}: {exc}")


# -- membership ------------------------------------------------------------------------------------


def membership_reforms(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """After the faults stop, every live node sees exactly the live nodes alive: one cluster again."""
    within_s = float(params.get("within_s", 30))
    cluster = ctx.cluster
    live = [n.index for n in cluster.live()]
    if not live:
        return Verdict("membership_reforms", "error", "no live node left to check")
    try:
        took = cluster.wait_for("one cluster of the live nodes", lambda: cluster.converged(live), timeout_s=within_s, interval_s=0.25)
    except WaitTimeout:
        views = _views_now(ctx, live)
        return Verdict(
            "membership_reforms", "fail",
            f"{len(live)} live nodes did not re-form one cluster within {within_s:g} s after the faults stopped",
            {"live_nodes": live, "views": views},
        )
    return Verdict(
        "membership_reforms", "pass",
        f"all {len(live)} live nodes see each other alive, {took:.1f} s after the faults stopped",
        {"seconds_after_faults": round(took, 2), "live_nodes": live},
    )


def membership_stable(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """No live, undisturbed node was declared dead by another while the faults ran (no false deaths)."""
    allowed = int(params.get("max_false_dead", 0))
    settle_s = float(params.get("settle_s", 8.0))
    views = ctx.recorder.views()
    if not views:
        return Verdict("membership_stable", "skip", "no membership samples (add a membership workload)")
    cluster = ctx.cluster
    windows = ctx.disturbed_windows(settle_s)

    def excused(node: int, t_s: float) -> bool:
        return any(a <= t_s <= b for a, b in windows.get(node, ()))

    ids = {n.node_id: n.index for n in cluster.nodes}
    start = ctx.converged_s or 0.0
    dead_seen: dict[str, list[float]] = {}
    suspect_samples = 0
    checked = 0
    for t_s, observer, view in views:
        if t_s < start or excused(observer, t_s):
            continue
        checked += 1
        disturbed = {n for n in range(cluster.size) if excused(n, t_s)}
        for node_id, state in view.items():
            target = ids.get(node_id)
            if target is None or target in disturbed or target == observer:
                continue
            if state in ("dead", "left"):
                dead_seen.setdefault(f"{observer}->{target}", []).append(round(t_s, 1))
            elif state == "suspect":
                suspect_samples += 1
        missing = [idx for nid, idx in ids.items() if idx not in disturbed and idx != observer and nid not in view]
        for target in missing:
            dead_seen.setdefault(f"{observer}->{target} (absent)", []).append(round(t_s, 1))
    growth = _counter_growth(ctx)
    evidence = {
        "excused_windows_s": {str(n): [[a, None if b == float("inf") else round(b, 1)] for a, b in w] for n, w in sorted(windows.items())},
        "view_samples_checked": checked,
        "samples_with_a_suspect": suspect_samples,
        "false_dead": {k: {"samples": len(v), "first_s": v[0], "last_s": v[-1]} for k, v in sorted(dead_seen.items())},
        "counter_growth_total": growth,
    }
    if checked == 0:
        return Verdict("membership_stable", "error", "no view of an undisturbed node was sampled after the cluster formed", evidence)
    pairs = len(dead_seen)
    if pairs > allowed:
        return Verdict("membership_stable", "fail", f"{pairs} observer->node pairs saw a live node dead or absent (allowed {allowed})", evidence)
    return Verdict(
        "membership_stable", "pass",
        f"no live node was declared dead in {checked} sampled views; {suspect_samples} sample(s) showed a suspect "
        f"(suspicions {growth.get('core.suspicions', 0)}, refutations {growth.get('core.refutations', 0)}, "
        f"failed probes {growth.get('core.probes_failed', 0)})",
        evidence,
    )


def no_unexpected_exit(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """Every node process that is not running was ended by the harness (no crash)."""
    del params
    crashed = {}
    for node in ctx.cluster.nodes:
        if node.process is None or node.alive:
            continue
        last = [e for e in ctx.timeline if node.index in e.nodes and e.action in ("kill", "stop", "restart")]
        if last and last[-1].action in ("kill", "stop"):
            continue
        crashed[str(node.index)] = {"exit_code": node.process.returncode, "log_tail": _log_tail(node, 15)}
    tracebacks = {str(n.index): _count(n, _TRACEBACK) for n in ctx.cluster.nodes if _count(n, _TRACEBACK)}
    evidence = {"crashed": crashed, "tracebacks_in_logs": tracebacks}
    evidence["refused_to_start"] = [{"t_s": t, "node": n, "said": said} for t, n, said in ctx.outcomes]
    if crashed:
        return Verdict("no_unexpected_exit", "fail", f"node(s) {', '.join(crashed)} exited on their own", evidence)
    noted = f"; tracebacks logged by node(s) {', '.join(tracebacks)} (see evidence)" if tracebacks else ""
    return Verdict("no_unexpected_exit", "pass", f"every node not running was ended by the harness{noted}", evidence)


def disk_full_clear_error(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """While its disk was full the node said so clearly; after space returned its files are intact."""
    index = resolve_index(params.get("node", 0), ctx.cluster.size)
    node = ctx.cluster.nodes[index]
    text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
    errors = [line.strip() for line in text.splitlines() if _ENOSPC.search(line)]
    files = {}
    corrupt = []
    for name in ("node-state.json", "peers.json"):
        path = node.data_dir / name
        if not path.exists():
            files[name] = "absent"
            continue
        try:
            json.loads(path.read_text())
            files[name] = "valid JSON"
        except ValueError as exc:
            files[name] = f"CORRUPT: {exc}"
            corrupt.append(name)
    leftovers = sorted(p.name for p in node.data_dir.glob(".*.tmp"))
    tracebacks = _count(node, _TRACEBACK)
    incarnations = _incarnations(ctx, index)
    evidence = {
        "error_lines": errors[:EVIDENCE_LINES_MAX],
        "error_line_count": len(errors),
        "files_after": files,
        "temp_files_left": leftovers,
        "incarnations_seen_in_order": incarnations,
        "tracebacks_in_log": tracebacks,
        "refused_to_start": [said for _t, n, said in ctx.outcomes if n == index],
        "node_running": node.alive,
    }
    problems = []
    if not errors:
        problems.append("no log line named the full disk (ENOSPC)")
    if corrupt:
        problems.append(f"corrupt file(s) after space returned: {', '.join(corrupt)}")
    if any(b <= a for a, b in zip(incarnations, incarnations[1:])):
        problems.append(f"incarnation did not rise across restarts: {incarnations}")
    if not node.alive:
        problems.append("the node is not running after space returned")
    if problems:
        return Verdict("disk_full_clear_error", "fail", "; ".join(problems), evidence)
    return Verdict(
        "disk_full_clear_error", "pass",
        f"{len(errors)} clear ENOSPC log line(s); files valid after space returned; node running",
        evidence,
    )


# -- surfaces that need a workload ------------------------------------------------------------------


def _needs_workload(check: str, workload: str, implementation: Checker | None = None) -> Checker:
    def checker(ctx: RunContext, params: dict[str, Any]) -> Verdict:
        found = ctx.workloads.get(workload)
        if found is None:
            return Verdict(check, "skip", f"needs the {workload!r} workload, which this scenario does not run")
        if found.skip_reason:
            return Verdict(check, "skip", f"{workload} workload unavailable: {found.skip_reason}")
        if found.error_reason:
            return Verdict(check, "error", f"{workload} workload never got ready: {found.error_reason}")
        if implementation is None:
            return Verdict(check, "error", f"no checker implementation for {check} yet")
        return implementation(ctx, params)

    checker.__doc__ = (implementation.__doc__ if implementation else "") + f" Needs the {workload} workload."
    return checker


def raft_linearizable(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """The recorded key-value history is linearizable (consensus/history.py, WGL per key)."""
    from agentnode.consensus.history import check_history

    workload = ctx.workloads["raft_kv"]
    workload.stop()  # the history must be complete: no operation may start after the check
    operations = workload.operations()  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for op in operations:
        counts[op.status] = counts.get(op.status, 0) + 1
    if counts.get("ok", 0) == 0:
        return Verdict("raft_linearizable", "error", "no key-value operation completed; nothing to check", {"operations": counts})
    results = check_history(operations, states_max=int(params.get("states_max", 200_000)))
    per_key = {k: {"linearizable": r.linearizable, "operations": r.operations, "states": r.states, "reason": r.reason} for k, r in results.items()}
    evidence = {"operations": counts, "keys": per_key}
    bad = [k for k, r in results.items() if r.linearizable is False]
    undecided = [k for k, r in results.items() if r.linearizable is None]
    if bad:
        key_ops = [op.to_json() for op in operations if op.key == bad[0]][:EVIDENCE_LINES_MAX]
        evidence["first_bad_key_operations"] = key_ops
        return Verdict("raft_linearizable", "fail", f"key(s) {', '.join(bad)} have no linearization", evidence)
    if undecided:
        return Verdict("raft_linearizable", "error", f"search bound reached for key(s) {', '.join(undecided)}: no verdict", evidence)
    return Verdict(
        "raft_linearizable", "pass",
        f"{len(operations)} operations on {len(results)} keys are linearizable "
        f"({counts.get('ok', 0)} ok, {counts.get('fail', 0)} failed, {counts.get('unknown', 0)} unknown)",
        evidence,
    )


def raft_one_leader_per_term(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """No two nodes claimed leadership in the same term (from every node's raft_status polls)."""
    del params
    workload = ctx.workloads["raft_kv"]
    statuses = list(workload.statuses)  # type: ignore[attr-defined]
    ids = {n.node_id: n.index for n in ctx.cluster.nodes}
    leaders: dict[Any, set[str]] = {}
    for _t, _polled, term, role, _leader, reporter in statuses:
        if role == "leader" and term is not None and reporter:
            leaders.setdefault(term, set()).add(reporter)
    evidence = {
        "status_polls": len(statuses),
        "leaders_by_term": {str(t): sorted(str(ids.get(x, x)) for x in v) for t, v in sorted(leaders.items(), key=lambda kv: str(kv[0]))},
    }
    if not leaders:
        return Verdict("raft_one_leader_per_term", "error", "no node ever reported itself leader", evidence)
    double = {t: v for t, v in leaders.items() if len(v) > 1}
    if double:
        return Verdict("raft_one_leader_per_term", "fail", f"{len(double)} term(s) had two self-declared leaders", evidence)
    return Verdict("raft_one_leader_per_term", "pass", f"{len(leaders)} term(s) observed, one leader each ({len(statuses)} polls)", evidence)


def raft_minority_fails_fast(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """Strong writes sent to a side without a majority of the Raft voters failed within `max_ms`.

    The side is judged by voters, not node count: with 3 voters among 5 nodes, the smaller group
    of nodes may hold the voter majority, and its writes rightly succeed.
    """
    max_ms = float(params.get("max_ms", 3000))
    grace_s = float(params.get("grace_s", 0.0))
    voters = set(getattr(ctx.workloads["raft_kv"], "voters", []))
    if not voters:
        return Verdict("minority_fails_fast", "error", "the Raft workload never learned the voter set")
    index_of = {n.node_id: n.index for n in ctx.cluster.nodes}
    voter_nodes = {index_of[v] for v in voters if v in index_of}
    windows = []
    sides: list[dict[str, Any]] = []
    for t_s, groups in ctx.partitions:
        end = next((e.t_s for e in ctx.timeline if e.t_s > t_s and e.action in ("heal", "heal_partition", "end")), float("inf"))
        rest = [n for n in range(ctx.cluster.size) if not any(n in g for g in groups)]
        quorumless: set[int] = set()
        for group in [*groups, rest]:
            if group and 2 * len(voter_nodes & set(group)) <= len(voter_nodes):
                quorumless.update(group)
        sides.append({"t_s": t_s, "groups": groups, "voters_at": sorted(voter_nodes), "without_voter_majority": sorted(quorumless)})
        windows.append((t_s + grace_s, end, quorumless))
    if not windows:
        return Verdict("minority_fails_fast", "error", "the scenario made no partition")
    writes = [s for s in ctx.recorder.samples("raft_kv") if s.op in ("put", "cas")]
    inside = [s for s in writes for (a, b, minority) in windows if s.node in minority and a <= s.t_s - s.latency_ms / 1000 <= b]
    if not inside:
        return Verdict("minority_fails_fast", "error", "no write was sent to the minority side during the partition")
    slow = [s for s in inside if s.latency_ms > max_ms]
    succeeded = [s for s in inside if s.ok]
    kinds: dict[str, int] = {}
    for s in inside:
        kinds[s.error or "ok"] = kinds.get(s.error or "ok", 0) + 1
    latencies = sorted(s.latency_ms for s in inside if not s.ok)
    evidence = {
        "partitions": sides,
        "minority_writes": len(inside),
        "outcomes": kinds,
        "failed_latency_ms": {"median": round(latencies[len(latencies) // 2], 1), "max": round(latencies[-1], 1)} if latencies else {},
        "slower_than_max": [{"t_s": round(s.t_s, 2), "node": s.node, "latency_ms": round(s.latency_ms), "error": s.error} for s in slow[:EVIDENCE_LINES_MAX]],
    }
    if slow:
        return Verdict("minority_fails_fast", "fail", f"{len(slow)} of {len(inside)} minority-side writes took longer than {max_ms:g} ms", evidence)
    return Verdict(
        "minority_fails_fast", "pass",
        f"all {len(inside)} writes on the side without a voter majority finished within {max_ms:g} ms "
        f"({len(succeeded)} succeeded, before the split was noticed; outcomes {kinds})",
        evidence,
    )


# -- replicated CRDT state -------------------------------------------------------------------------


def crdt_converged(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """After the faults stop, every live replica holds the same value for every written key, and no
    applied write is missing (counters equal the applied increments, sets hold every applied element)."""
    workload = ctx.workloads["crdt"]
    workload.stop()  # the writes must be final before replicas are compared
    within_s = float(params.get("within_s", 30))
    writes: list[CrdtWrite] = workload.recorded()  # type: ignore[attr-defined]
    if not any(w.outcome in ("ok", "applied") for w in writes):
        return Verdict("crdt_converged", "error", "no CRDT write was applied; nothing to check", {"writes": len(writes)})
    keys = sorted({w.key for w in writes})
    cluster = ctx.cluster
    live = [n.index for n in cluster.live()]
    if not live:
        return Verdict("crdt_converged", "error", "no live node left to read from")
    reads: dict[int, dict[str, Any]] = {}

    def agreed() -> bool:
        reads.clear()
        for index in live:
            reads[index] = {}
            for key in keys:
                try:
                    reads[index][key] = cluster.nodes[index].call("state.get", key=key).get("value")
                except (ControlError, OSError) as exc:
                    reads[index][key] = _NoAnswer(f"{type(exc).__name__}: {exc}")
        return not _differing(reads, keys)

    try:
        took = cluster.wait_for("every live CRDT replica to agree", agreed, timeout_s=within_s, interval_s=0.5)
    except WaitTimeout:
        differing = _differing(reads, keys)
        evidence = {
            "live_nodes": live,
            "differing_keys": {k: {str(i): _shown(reads[i][k]) for i in live} for k in differing[:EVIDENCE_LINES_MAX]},
        }
        return Verdict("crdt_converged", "fail", f"{len(differing)} of {len(keys)} keys still differ between live replicas "
                       f"{within_s:g} s after the faults stopped", evidence)
    del took
    since = _since_faults(ctx)
    verdict = judge_crdt(writes, reads[live[0]])
    divergence = _divergence(ctx)
    evidence = {**verdict.evidence, "seconds_after_faults": since, "live_nodes": live, "divergence_during_run": divergence}
    shown = f"; replicas equal when read {since:.1f} s after the faults stopped"
    if divergence.get("max_distinct_values", 0) > 1:
        shown += f" (during the run up to {divergence['max_distinct_values']} different values of {divergence['key']} at once)"
    return Verdict(verdict.check, verdict.status, verdict.summary + shown, evidence)


def _since_faults(ctx: RunContext) -> float:
    """Seconds from the end of the faults phase to now (checks run one after another)."""
    return round(ctx.elapsed() - (ctx.faults_ended_s or 0.0), 2)


def _divergence(ctx: RunContext) -> dict[str, Any]:
    """From the CRDT workload's per-second reads: the most distinct values one key had across replicas at once."""
    rounds: dict[int, set[str]] = {}
    for s in ctx.recorder.samples("crdt", "read"):
        if s.ok:
            rounds.setdefault(int(s.t_s), set()).add(_canonical(s.value))
    if not rounds:
        return {}
    worst = max(rounds, key=lambda t: len(rounds[t]))
    workload = ctx.workloads["crdt"]
    key = getattr(workload, "poll_key", "?")
    return {"key": key, "max_distinct_values": len(rounds[worst]), "at_s": worst, "seconds_sampled": len(rounds)}


def judge_crdt(writes: list[CrdtWrite], values: dict[str, Any]) -> Verdict:
    """Compare the converged value of every key with the writes that were sent to it.

    Outcomes (`CrdtWrite`): `ok` and `applied` writes are in the local replica, so they must
    survive; `unknown` ones may or may not be; `failed` ones must not appear.
    """
    problems: list[str] = []
    per_key: dict[str, Any] = {}
    for key in sorted({w.key for w in writes}):
        on_key = [w for w in writes if w.key == key]
        kind = on_key[0].kind
        value = values.get(key)
        sure = [w for w in on_key if w.outcome in ("ok", "applied")]
        maybe = [w for w in on_key if w.outcome == "unknown"]
        counts = {o: sum(1 for w in on_key if w.outcome == o) for o in ("ok", "applied", "unknown", "failed")}
        entry: dict[str, Any] = {"kind": kind, "writes": counts}
        if kind == "incr":
            low = sum(int(w.value) for w in sure)
            high = low + sum(int(w.value) for w in maybe)
            got = 0 if value is None else value
            entry.update(value=got, acknowledged_sum=sum(int(w.value) for w in on_key if w.outcome == "ok"), expected_range=[low, high])
            if not isinstance(got, int) or not low <= got <= high:
                problems.append(f"counter {key} = {got!r}, expected {low}" + (f"..{high}" if high != low else ""))
        elif kind == "add":
            got_set = set(value or [])
            lost = sorted({str(w.value) for w in sure} - got_set)
            allowed = {str(w.value) for w in sure + maybe}
            phantom = sorted(got_set - allowed)
            entry.update(elements=len(got_set), lost=lost[:EVIDENCE_LINES_MAX], phantom=phantom[:EVIDENCE_LINES_MAX])
            if lost:
                problems.append(f"set {key} lost {len(lost)} applied element(s)")
            if phantom:
                problems.append(f"set {key} holds {len(phantom)} element(s) no applied write added")
        else:
            allowed = {json.dumps(w.value, sort_keys=True) for w in sure + maybe}
            entry.update(value=value)
            if sure and value is None:
                problems.append(f"register {key} is empty although {len(sure)} write(s) were applied")
            elif value is not None and json.dumps(value, sort_keys=True) not in allowed:
                problems.append(f"register {key} = {value!r}, which no applied write set")
        per_key[key] = entry
    evidence = {"keys": per_key}
    if problems:
        return Verdict("crdt_converged", "fail", "; ".join(problems[:EVIDENCE_LINES_MAX]), evidence)
    totals = {o: sum(1 for w in writes if w.outcome == o) for o in ("ok", "applied", "unknown", "failed")}
    return Verdict(
        "crdt_converged", "pass",
        f"{len(per_key)} keys equal on every live replica and consistent with {len(writes)} writes "
        f"({totals['ok']} acknowledged, {totals['applied']} applied locally without their level, "
        f"{totals['unknown']} unknown, {totals['failed']} refused)",
        evidence,
    )


class _NoAnswer(str):
    """A replica that did not answer a read: never equal to anything, so the wait goes on."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _differing(reads: dict[int, dict[str, Any]], keys: list[str]) -> list[str]:
    nodes = sorted(reads)
    found = []
    for key in keys:
        seen = [reads[i].get(key) for i in nodes]
        if any(isinstance(v, _NoAnswer) for v in seen) or len({_canonical(v) for v in seen}) > 1:
            found.append(key)
    return found


def _shown(value: Any) -> Any:
    if isinstance(value, _NoAnswer):
        return f"no answer: {str(value)}"
    if isinstance(value, list) and len(value) > EVIDENCE_LINES_MAX:
        return {"elements": len(value), "first": value[:EVIDENCE_LINES_MAX]}
    return value


def crdt_minority_fails_fast(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """CRDT writes whose level needs more replicas than a partition side holds fail within `max_ms`,
    with ConsistencyNotMet (the clear error docs/state.md promises), after `grace_s` for detection.

    Sides are judged by node count: the replica roster keeps failed members (docs/state.md section 2),
    so N is the cluster size. A write can only fail once its node's failure detector has declared
    enough peers failed: with a membership workload recording views, `max_ms` counts from the later of
    the write and the first view of its node that shows too few replicas reachable (Lifeguard slows a
    minority's detection down: its own probes fail, so its awareness score rises). Writes whose node
    never showed that before the heal are reported, not judged."""
    max_ms = float(params.get("max_ms", 3000))
    grace_s = float(params.get("grace_s", 0.0))
    size = ctx.cluster.size
    windows = []
    for t_s, groups in ctx.partitions:
        end = next((e.t_s for e in ctx.timeline if e.t_s > t_s and e.action in ("heal", "heal_partition", "end")), float("inf"))
        rest = [n for n in range(size) if not any(n in g for g in groups)]
        side_of = {n: len(g) for g in [*groups, rest] for n in g}
        windows.append((t_s, t_s + grace_s, end, side_of))
    if not windows:
        return Verdict("minority_fails_fast", "error", "the scenario made no partition")
    writes: list[CrdtWrite] = ctx.workloads["crdt"].recorded()  # type: ignore[attr-defined]
    views = ctx.recorder.views()
    viewed = {node for _, node, _ in views}
    inside: list[CrdtWrite] = []
    due_from: list[float] = []
    undetected: list[CrdtWrite] = []
    for w in writes:
        for split, a, b, side_of in windows:
            required = _required(w.consistency, size) or 0
            if not (a <= w.t_s <= b and w.node in side_of and required > side_of[w.node]):
                continue
            if w.node not in viewed:  # no membership views: judged from the write itself
                inside.append(w)
                due_from.append(w.t_s)
                continue
            known = next((t for t, node, view in views if node == w.node and split <= t <= b
                          and sum(1 for state in view.values() if state in ("alive", "suspect")) < required), None)
            if known is None:
                undetected.append(w)
            else:
                inside.append(w)
                due_from.append(max(w.t_s, known))
    if undetected and not inside:
        return Verdict("minority_fails_fast", "skip",
                       f"{len(undetected)} minority-side write(s), but no writer's failure detector declared the other "
                       "side failed before the heal: nothing to judge",
                       {"undetected": [{"t_s": w.t_s, "node": w.node, "latency_ms": round(w.latency_ms)}
                                       for w in undetected[:EVIDENCE_LINES_MAX]]})
    verdict = judge_minority_writes(inside, max_ms, grace_s, due_from)
    verdict.evidence["undetected_writes"] = len(undetected)
    return verdict


def judge_minority_writes(inside: list[CrdtWrite], max_ms: float, grace_s: float,
                          due_from: list[float] | None = None) -> Verdict:
    """The CRDT half of `minority_fails_fast` on the writes already known to be on a too-small side.
    `due_from[i]`: when `inside[i]`'s `max_ms` starts (default: when it was sent)."""
    if not inside:
        return Verdict("minority_fails_fast", "error", "no CRDT write needing a majority was sent to a minority side during the partition")
    starts = due_from if due_from is not None else [w.t_s for w in inside]
    slow = [w for w, start in zip(inside, starts) if w.t_s + w.latency_ms / 1000 - start > max_ms / 1000]
    succeeded = [w for w in inside if w.outcome == "ok"]
    unclear = [w for w in inside if w.outcome != "ok" and not w.error.startswith("ConsistencyNotMet")]
    latencies = sorted(w.latency_ms for w in inside)
    kinds: dict[str, int] = {}
    for w in inside:
        name = w.error.split(":", 1)[0] if w.error else "ok"
        kinds[name] = kinds.get(name, 0) + 1
    evidence = {
        "minority_writes": len(inside),
        "grace_s": grace_s,
        "outcomes": kinds,
        "latency_ms": {"median": round(latencies[len(latencies) // 2], 1), "max": round(latencies[-1], 1)},
        "waited_for_detection_ms": {"max": round(max(start - w.t_s for w, start in zip(inside, starts)) * 1000)},
        "example_error": next((w.error for w in inside if w.error), ""),
        "slower_than_max": [{"t_s": w.t_s, "node": w.node, "latency_ms": round(w.latency_ms), "error": w.error} for w in slow[:EVIDENCE_LINES_MAX]],
        "succeeded": [{"t_s": w.t_s, "node": w.node, "key": w.key} for w in succeeded[:EVIDENCE_LINES_MAX]],
        "unclear_errors": [w.error for w in unclear[:EVIDENCE_LINES_MAX]],
    }
    problems = []
    if slow:
        problems.append(f"{len(slow)} of {len(inside)} took longer than {max_ms:g} ms")
    if succeeded:
        problems.append(f"{len(succeeded)} succeeded although the side cannot hold the replicas they need")
    if unclear:
        problems.append(f"{len(unclear)} failed with another error than ConsistencyNotMet")
    if problems:
        return Verdict("minority_fails_fast", "fail", "CRDT minority-side writes: " + "; ".join(problems), evidence)
    return Verdict(
        "minority_fails_fast", "pass",
        f"all {len(inside)} CRDT writes needing more replicas than their side holds failed with ConsistencyNotMet "
        f"within {max_ms:g} ms of being sent or of their node declaring the other side failed "
        f"(median {evidence['latency_ms']['median']} ms)",
        evidence,
    )


def _required(level: str, size: int) -> int | None:
    """Replicas a write at `level` needs in a roster of `size` (docs/state.md section 2)."""
    if level == "local":
        return 1
    if level == "one":
        return 2
    if level == "majority":
        return size // 2 + 1
    if level == "all":
        return size
    if level.isdigit():
        return min(int(level), size)
    return None


# -- durable messages -------------------------------------------------------------------------------


def durable_exactly_once(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """Every durable message whose send was confirmed reached the receiving handler, and none twice."""
    workload: DurableMessagesWorkload = ctx.workloads["durable_messages"]  # type: ignore[assignment]
    workload.stop()  # no send may start after the check
    within_s = float(params.get("within_s", 30))
    settle_s = float(params.get("settle_s", 1.0))
    confirmed, unconfirmed = workload.expected()
    if not confirmed:
        return Verdict("durable_exactly_once", "error", "no durable batch was confirmed; nothing to check",
                       {"unconfirmed_batches": len(workload.unconfirmed)})
    cluster = ctx.cluster
    receiver = cluster.nodes[workload.receiver]
    if not receiver.alive:
        return Verdict("durable_exactly_once", "error", f"the receiving node {workload.receiver} is not running, so delivery cannot be judged")

    def all_there() -> bool:
        return confirmed <= set(read_delivery_log(workload.log_path)[0])

    try:
        cluster.wait_for("every confirmed durable message at the receiver", all_there, timeout_s=within_s, interval_s=0.25)
        waited: float | None = _since_faults(ctx)
        time.sleep(settle_s)  # late duplicates, if any, show up now
    except WaitTimeout:
        waited = None
    delivered, torn = read_delivery_log(workload.log_path)
    verdict = judge_durable(confirmed, unconfirmed, delivered, torn)
    evidence = dict(verdict.evidence)
    evidence["seconds_after_faults"] = None if waited is None else round(waited, 2)
    evidence["workload"] = workload.summary()
    sender = cluster.nodes[workload.sender]
    resent = None
    if sender.alive:
        try:
            service = sender.call("agents.stats")["service"]
            evidence["sender_service_counters"] = {k: v for k, v in sorted(service.items()) if k.startswith("durable") and v}
            resent = int(service.get("durable_resent", 0))
        except (ControlError, OSError, KeyError, TypeError, ValueError) as exc:
            evidence["sender_service_counters"] = f"unavailable: {exc}"
    summary = verdict.summary if waited is None else verdict.summary + f"; all there {waited:.1f} s after the faults stopped"
    if verdict.status == "pass" and params.get("expect_resend") and not resent:
        return Verdict(verdict.check, "error", "inconclusive: the restarted sender resent nothing from its outbox, so the kill "
                       f"did not exercise what the scenario meant to ({verdict.summary})", evidence)
    if resent:
        summary += f"; the restarted sender resent {resent} from its outbox"
    return Verdict(verdict.check, verdict.status, summary, evidence)


def judge_durable(confirmed: set[str], unconfirmed: set[str], delivered: list[str], torn: int = 0) -> Verdict:
    """Confirmed messages all delivered; no message handled twice; nothing delivered that was never sent."""
    ours = [d for d in delivered if d.startswith(DURABLE_PREFIX)]
    counts: dict[str, int] = {}
    for d in ours:
        counts[d] = counts.get(d, 0) + 1
    missing = sorted(confirmed - counts.keys())
    twice = sorted(d for d, c in counts.items() if c > 1)
    phantom = sorted(d for d in counts if d not in confirmed and d not in unconfirmed)
    evidence = {
        "confirmed": len(confirmed),
        "unconfirmed_sent": len(unconfirmed),
        "unconfirmed_delivered": sum(1 for d in counts if d in unconfirmed),
        "handled": len(ours),
        "missing": len(missing),
        "first_missing": missing[:EVIDENCE_LINES_MAX],
        "handled_twice": len(twice),
        "first_handled_twice": [{"data": d, "times": counts[d]} for d in twice[:EVIDENCE_LINES_MAX]],
        "never_sent": phantom[:EVIDENCE_LINES_MAX],
        "torn_log_lines": torn,
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(confirmed)} confirmed messages never reached the handler")
    if twice:
        problems.append(f"{len(twice)} messages reached the handler more than once")
    if phantom:
        problems.append(f"{len(phantom)} handled messages were never sent")
    if problems:
        return Verdict("durable_exactly_once", "fail", "; ".join(problems), evidence)
    return Verdict(
        "durable_exactly_once", "pass",
        f"all {len(confirmed)} confirmed durable messages handled exactly once "
        f"({evidence['unconfirmed_delivered']} of {len(unconfirmed)} unconfirmed ones arrived, once each)",
        evidence,
    )


DURABLE_PREFIX = "chaos-b"
"""The data prefix of the durable workload's messages (the demo counter also logs broadcasts)."""


def minority_fails_fast(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """Writes sent to a side of a partition that cannot reach the replicas they need fail fast:
    Raft writes (by voters) and CRDT writes at majority-like levels (by node count), whichever ran."""
    verdicts = []
    if "raft_kv" in ctx.workloads:
        verdicts.append(_needs_workload("minority_fails_fast", "raft_kv", raft_minority_fails_fast)(ctx, params))
    if "crdt" in ctx.workloads:
        verdicts.append(_needs_workload("minority_fails_fast", "crdt", crdt_minority_fails_fast)(ctx, params))
    if not verdicts:
        return Verdict("minority_fails_fast", "skip", "needs the 'raft_kv' or the 'crdt' workload, which this scenario does not run")
    if len(verdicts) == 1:
        return verdicts[0]
    statuses = [v.status for v in verdicts]
    status = next((s for s in ("fail", "error", "pass") if s in statuses), "skip")
    return Verdict("minority_fails_fast", status, " | ".join([f"raft: {verdicts[0].summary}", f"crdt: {verdicts[1].summary}"]),
                   {"raft": verdicts[0].evidence, "crdt": verdicts[1].evidence})


# -- unicast and broadcast --------------------------------------------------------------------------


def requests_answered(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """No request ever got a wrong answer, and after the faults stop every live node's request to
    `echo@` every other live node is answered within `within_s`."""
    workload: UnicastWorkload = ctx.workloads["unicast"]  # type: ignore[assignment]
    workload.stop()
    within_s = float(params.get("within_s", 30))
    samples = ctx.recorder.samples("unicast")
    if not any(s.ok for s in samples):
        return Verdict("requests_answered", "error", "no request was ever answered; nothing to judge", {"requests": len(samples)})
    ended = ctx.faults_ended_s if ctx.faults_ended_s is not None else float("inf")
    during = [s for s in samples if s.t_s <= ended]
    errors: dict[str, int] = {}
    for s in during:
        if not s.ok:
            name = s.error.split(":", 1)[0]
            errors[name] = errors.get(name, 0) + 1
    cluster = ctx.cluster
    live = cluster.live()
    pending = {(a.index, b.index) for a in live for b in live if a.index != b.index}
    failures: dict[str, str] = {}

    def all_answer() -> bool:
        for a, b in sorted(pending):
            ok, error, _ = workload.request(cluster.nodes[a], cluster.nodes[b], f"chaos-u-check-{a}-{b}")
            if ok:
                pending.discard((a, b))
                failures.pop(f"{a}->{b}", None)
            else:
                failures[f"{a}->{b}"] = error
        return not pending

    evidence: dict[str, Any] = {
        "requests": len(samples),
        "during_faults": {"requests": len(during), "answered": sum(1 for s in during if s.ok), "errors": errors},
        "wrong_answers": workload.wrong_answers[:EVIDENCE_LINES_MAX],
    }
    try:
        cluster.wait_for("every live pair to answer a request", all_answer, timeout_s=within_s, interval_s=0.5)
        took: float | None = _since_faults(ctx)
    except WaitTimeout:
        took = None
    evidence["unanswered_pairs_after_faults"] = dict(sorted(failures.items())[:EVIDENCE_LINES_MAX])
    problems = []
    if workload.wrong_answers:
        problems.append(f"{len(workload.wrong_answers)} request(s) got an answer that was not their payload")
    if took is None:
        problems.append(f"{len(pending)} live pair(s) still unanswered {within_s:g} s after the faults stopped")
    if problems:
        return Verdict("requests_answered", "fail", "; ".join(problems), evidence)
    evidence["seconds_after_faults"] = round(took or 0.0, 2)
    d = evidence["during_faults"]
    return Verdict(
        "requests_answered", "pass",
        f"every live pair answered {took:.1f} s after the faults stopped; during the run {d['answered']} of "
        f"{d['requests']} requests were answered, none wrongly (errors: {errors or 'none'})",
        evidence,
    )


def broadcast_delivered(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """No listener on an undisturbed node handled a published message twice or one never published,
    and a message published once the live nodes form one cluster again reaches every live listener."""
    workload: BroadcastWorkload = ctx.workloads["broadcast"]  # type: ignore[assignment]
    workload.stop()
    within_s = float(params.get("within_s", 30))
    with workload.lock:
        published = [data for _t, _n, data in workload.published]
        attempted = set(workload.attempted)
    if not published:
        return Verdict("broadcast_delivered", "error", "no publish was accepted; nothing to judge")
    cluster = ctx.cluster
    live = [n.index for n in cluster.live()]
    if not live:
        return Verdict("broadcast_delivered", "error", "no live node left")
    evidence: dict[str, Any] = {"published": len(published)}
    try:
        cluster.wait_for("one cluster of the live nodes", lambda: cluster.converged(live), timeout_s=within_s, interval_s=0.25)
    except WaitTimeout:
        return Verdict("broadcast_delivered", "error", "the live nodes never formed one cluster again, so the probe cannot be judged")
    probe = f"chaos-final-{ctx.rng.randrange(1 << 30)}"  # not the workload's chaos-p prefix
    ok, error, _ = workload.publish(cluster.nodes[live[0]], probe)
    if not ok:
        return Verdict("broadcast_delivered", "fail", f"publishing the probe after the faults failed: {error}", evidence)

    def reached() -> list[int]:
        return [i for i in live if probe not in read_delivery_log(workload.listener_log(cluster.nodes[i]))[0]]

    try:
        took: float | None = cluster.wait_for("the probe at every live listener", lambda: not reached(), timeout_s=within_s, interval_s=0.25)
        time.sleep(float(params.get("settle_s", 1.0)))
    except WaitTimeout:
        took = None
    disturbed = ctx.disturbed()
    wanted = set(published)
    per_node: dict[str, Any] = {}
    problems = []
    for node in cluster.nodes:
        got, torn = read_delivery_log(workload.listener_log(node))
        ours = [d for d in got if d.startswith("chaos-p")]
        counts: dict[str, int] = {}
        for d in ours:
            counts[d] = counts.get(d, 0) + 1
        twice = sorted(d for d, c in counts.items() if c > 1)
        invented = sorted(d for d in counts if d not in attempted)
        per_node[str(node.index)] = {
            "received_of_published": f"{len(wanted & counts.keys())}/{len(wanted)}",
            "handled_twice": twice[:EVIDENCE_LINES_MAX], "never_published": invented[:EVIDENCE_LINES_MAX],
            "torn_log_lines": torn, "process_faults": node.index in disturbed,
        }
        if twice and node.index not in disturbed:
            problems.append(f"node {node.index}'s listener handled {len(twice)} message(s) twice")
        if invented:
            problems.append(f"node {node.index}'s listener handled {len(invented)} message(s) never published")
    evidence["listeners"] = per_node
    if took is None:
        problems.append(f"the probe published after the faults did not reach node(s) {', '.join(map(str, reached()))} within {within_s:g} s")
    if problems:
        return Verdict("broadcast_delivered", "fail", "; ".join(problems), evidence)
    evidence["probe_seconds"] = round(took or 0.0, 2)
    return Verdict(
        "broadcast_delivered", "pass",
        f"the probe reached all {len(live)} live listeners in {took:.1f} s; no undisturbed listener handled a message twice "
        f"({len(published)} published during the run)",
        evidence,
    )


# -- locks ------------------------------------------------------------------------------------------


def locks_fenced(ctx: RunContext, params: dict[str, Any]) -> Verdict:
    """Lock grants are mutually exclusive and their fencing tokens are unique and increase in real time."""
    workload = ctx.workloads["locks"]
    workload.stop()
    grants: list[LockGrant] = workload.recorded()  # type: ignore[attr-defined]
    verdict = judge_locks(grants, float(params.get("clock_margin_ms", 500)) / 1000)
    evidence = {**verdict.evidence, "workload": workload.summary()}
    return Verdict(verdict.check, verdict.status, verdict.summary, evidence)


def judge_locks(grants: list[LockGrant], margin_s: float = 0.5) -> Verdict:
    """Check recorded grants (times in seconds on the harness's monotonic clock).

    - tokens unique;
    - real-time order: a grant completed before another was requested has the smaller token;
    - exclusion: no grant was both requested and completed while an earlier grant was surely still
      held: after it completed, before its release was sent and before its TTL (counted from its
      request, minus `margin_s` for the leader's clock) ran out.
    """
    if len(grants) < 2:
        return Verdict("locks_fenced", "error", f"{len(grants)} lock grant(s) recorded; nothing to compare")
    by_token: dict[int, list[LockGrant]] = {}
    for g in grants:
        by_token.setdefault(g.token, []).append(g)
    reused = {t: [g.owner for g in gs] for t, gs in by_token.items() if len(gs) > 1}
    ordered = sorted(grants, key=lambda g: g.invoked_s)
    out_of_order = []
    overlaps = []
    for a in grants:
        held_until = min(a.release_invoked_s if a.release_invoked_s is not None else float("inf"), a.invoked_s + a.ttl_s - margin_s)
        for b in ordered:
            if b is a or b.invoked_s < a.completed_s:
                continue
            if b.token <= a.token and len(out_of_order) < EVIDENCE_LINES_MAX:
                out_of_order.append({"first": asdict(a), "later": asdict(b)})
            if b.completed_s < held_until and len(overlaps) < EVIDENCE_LINES_MAX:
                overlaps.append({"holder": asdict(a), "granted_meanwhile": asdict(b)})
    evidence = {
        "grants": len(grants),
        "tokens": [min(by_token), max(by_token)],
        "tokens_reused": {str(t): o for t, o in list(reused.items())[:EVIDENCE_LINES_MAX]},
        "out_of_order": out_of_order,
        "overlapping_grants": overlaps,
    }
    problems = []
    if reused:
        problems.append(f"{len(reused)} fencing token(s) granted twice")
    if out_of_order:
        problems.append(f"{len(out_of_order)} grant(s) got a token not above one granted before they were requested")
    if overlaps:
        problems.append(f"{len(overlaps)} grant(s) while another holder surely still held the lock")
    if problems:
        return Verdict("locks_fenced", "fail", "; ".join(problems), evidence)
    return Verdict("locks_fenced", "pass",
                   f"{len(grants)} grants, tokens {min(by_token)}..{max(by_token)} unique and increasing in real time, no overlapping holds",
                   evidence)


CHECKERS: dict[str, Checker] = {
    "membership_reforms": membership_reforms,
    "membership_stable": membership_stable,
    "no_unexpected_exit": no_unexpected_exit,
    "disk_full_clear_error": disk_full_clear_error,
    "crdt_converged": _needs_workload("crdt_converged", "crdt", crdt_converged),
    "raft_linearizable": _needs_workload("raft_linearizable", "raft_kv", raft_linearizable),
    "raft_one_leader_per_term": _needs_workload("raft_one_leader_per_term", "raft_kv", raft_one_leader_per_term),
    "minority_fails_fast": minority_fails_fast,
    "durable_exactly_once": _needs_workload("durable_exactly_once", "durable_messages", durable_exactly_once),
    "requests_answered": _needs_workload("requests_answered", "unicast", requests_answered),
    "broadcast_delivered": _needs_workload("broadcast_delivered", "broadcast", broadcast_delivered),
    "locks_fenced": _needs_workload("locks_fenced", "locks", locks_fenced),
}


# -- helpers ----------------------------------------------------------------------------------------


def _views_now(ctx: RunContext, live: list[int]) -> dict[str, Any]:
    names = {n.node_id: n.index for n in ctx.cluster.nodes}
    views: dict[str, Any] = {}
    for index in live:
        try:
            view = ctx.cluster.nodes[index].view()
        except (ControlError, OSError) as exc:
            views[str(index)] = f"no answer: {exc}"
            continue
        views[str(index)] = {str(names.get(nid, nid)): state for nid, state in sorted(view.items(), key=lambda kv: names.get(kv[0], 99))}
    return views


def _counter_growth(ctx: RunContext) -> dict[str, int]:
    workload = ctx.workloads.get("membership")
    if isinstance(workload, MembershipWorkload):
        return workload.summary().get("counter_growth_total", {})
    return {}


def _incarnations(ctx: RunContext, index: int) -> list[int]:
    seen: list[int] = []
    for sample in ctx.recorder.samples("membership", "status"):
        if sample.node == index and sample.ok and isinstance(sample.value, dict):
            inc = sample.value.get("incarnation")
            if isinstance(inc, int) and (not seen or seen[-1] != inc):
                seen.append(inc)
    return seen


def _log_tail(node: Any, lines: int) -> list[str]:
    try:
        return node.log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _count(node: Any, needle: str) -> int:
    try:
        return node.log_path.read_text(errors="replace").count(needle)
    except OSError:
        return 0


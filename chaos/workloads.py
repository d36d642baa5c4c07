"""Workloads that drive the nodes' public surfaces while faults run, recording what happened.

A workload is a plug-in: a class registered in `WORKLOADS` under its scenario `kind`. Each one
says which control operations it needs; `unavailable()` asks a live node which operations it
serves (the control endpoint lists them when asked for an unknown one), so a workload whose
surface has not landed in this node build is reported as skipped with that reason: never run
against a guess, never turned into a verdict.

Workloads run in their own thread and talk to nodes through the blocking control client (each
call bounded), recording `Sample`s into the run's `Recorder`.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agentnode.control import ControlError, NodeNotRunning

if TYPE_CHECKING:
    from agentnode.chaos.cluster import ChaosCluster, ChaosNode

__all__ = [
    "BroadcastWorkload",
    "CrdtWorkload",
    "CrdtWrite",
    "DurableMessagesWorkload",
    "FaultEvent",
    "MembershipWorkload",
    "Recorder",
    "RunContext",
    "Sample",
    "UnicastWorkload",
    "WORKLOADS",
    "Workload",
    "LockGrant",
    "LocksWorkload",
    "known_ops",
    "read_delivery_log",
]

SAMPLES_MAX = 500_000
"""Samples kept per run (a 1-hour soak of 10 nodes at 2 samples/s/node is 72k); beyond, counted as dropped."""
VIEWS_MAX = 200_000
CALL_TIMEOUT_S = 1.0
"""A control call to a live node answers in milliseconds; a paused node never does."""
STOP_JOIN_S = 10.0

_KNOWN = re.compile(r"known: (.*)$")


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation: an operation on a node, whether it worked, how long it took."""

    t_s: float
    workload: str
    node: int
    op: str
    ok: bool
    latency_ms: float
    value: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault the runner applied (or failed to apply), for the timeline and the checkers."""

    t_s: float
    action: str
    detail: str
    nodes: tuple[int, ...] = ()
    error: str = ""


class Recorder:
    """Thread-safe, bounded store of samples and membership views."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._views: list[tuple[float, int, dict[str, str]]] = []
        self.dropped = 0

    def add(self, sample: Sample) -> None:
        with self._lock:
            if len(self._samples) < SAMPLES_MAX:
                self._samples.append(sample)
            else:
                self.dropped += 1

    def add_view(self, t_s: float, node: int, view: dict[str, str]) -> None:
        with self._lock:
            if len(self._views) < VIEWS_MAX:
                self._views.append((t_s, node, view))
            else:
                self.dropped += 1

    def samples(self, workload: str | None = None, op: str | None = None) -> list[Sample]:
        with self._lock:
            found = list(self._samples)
        return [s for s in found if (workload is None or s.workload == workload) and (op is None or s.op == op)]

    def views(self) -> list[tuple[float, int, dict[str, str]]]:
        with self._lock:
            return list(self._views)


@dataclass
class RunContext:
    """What workloads and checkers share during one run."""

    cluster: ChaosCluster
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    recorder: Recorder = field(default_factory=Recorder)
    timeline: list[FaultEvent] = field(default_factory=list)
    workloads: dict[str, Workload] = field(default_factory=dict)
    partitions: list[tuple[float, list[list[int]]]] = field(default_factory=list)
    """(t_s, groups) of every partition applied, for checks that need the sides."""
    outcomes: list[tuple[float, int, str]] = field(default_factory=list)
    """(t_s, node, last words) of restarts the node itself refused (it exited while starting)."""
    faults_ended_s: float | None = None
    converged_s: float | None = None
    """Seconds the initial cluster took to form (None: it never did; the run is then meaningless)."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def disturbed(self) -> set[int]:
        """Nodes that had a process fault (kill, stop, restart, pause) at any time in the run."""
        found: set[int] = set()
        for event in self.timeline:
            if event.action in ("kill", "stop", "restart", "pause", "resume"):
                found.update(event.nodes)
        return found

    def disturbed_windows(self, settle_s: float) -> dict[int, list[tuple[float, float]]]:
        """Per node, the time spans in which its own process faults excuse others from seeing it alive.

        kill/stop/pause: from the fault until `settle_s` after the matching restart/resume (or the
        end); a restart alone: `settle_s` after it. The settle time lets the failure detector and
        the rejoin finish.
        """
        windows: dict[int, list[tuple[float, float]]] = {}
        down_since: dict[int, float] = {}
        for event in self.timeline:
            for node in event.nodes:
                if event.action in ("kill", "stop", "pause"):
                    down_since.setdefault(node, event.t_s)
                elif event.action in ("restart", "resume"):
                    start = down_since.pop(node, event.t_s)
                    windows.setdefault(node, []).append((start, event.t_s + settle_s))
        for node, start in down_since.items():
            windows.setdefault(node, []).append((start, float("inf")))
        return windows


def known_ops(node: ChaosNode) -> list[str] | None:
    """The control operations `node` serves, or None if it does not answer."""
    try:
        node.call("__chaos_list_ops__", timeout_s=CALL_TIMEOUT_S * 3)
    except ControlError as exc:
        match = _KNOWN.search(str(exc))
        if match:
            return [op.strip() for op in match.group(1).split(",") if op.strip()]
        return None
    except OSError:
        return None
    return None


class Workload:
    """Base: a thread calling `step()` every `interval_s` until stopped."""

    kind: ClassVar[str] = ""
    requires_ops: ClassVar[tuple[str, ...]] = ()
    surface: ClassVar[str] = ""
    """What public surface this drives, for the skip reason."""
    interval_s_default: ClassVar[float] = 0.5
    node_args: ClassVar[tuple[str, ...]] = ()
    """Extra `agentnode join` arguments every node needs for this workload (e.g. `--demo-agents`)."""

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        self.params = dict(params)
        self.ctx = ctx
        self.interval_s = float(self.params.get("interval_s", self.interval_s_default))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        self.skip_reason: str | None = None
        """Set by the runner: the surface is missing (checkers that need this workload skip)."""
        self.error_reason: str | None = None
        """Set by the runner: the surface exists but never got ready (checkers report an error)."""

    def unavailable(self) -> str | None:
        """Why this workload cannot run against this node build, or None."""
        if not self.requires_ops:
            return None
        for node in self.ctx.cluster.live():
            ops = known_ops(node)
            if ops is None:
                continue
            lacking = [op for op in self.requires_ops if op not in ops]
            if lacking:
                return (
                    f"the node has no {self.surface or self.kind} surface yet: control operation(s) "
                    f"{', '.join(lacking)} missing (it serves: {', '.join(ops)})"
                )
            return None
        return "no live node answered the control socket"

    def prepare(self) -> None:
        """Wait (bounded) until the surface is ready, before time 0 of the faults phase."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"chaos-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_JOIN_S)

    def step(self) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}

    def resolve(self, name: str) -> int | None:
        """Resolve a symbolic node name such as "leader"; None if this workload does not know it."""
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.step()
            except Exception as exc:  # a workload bug is recorded and shown, the run goes on
                if len(self.errors) < 100:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def _await_raft_leader(self, timeout_s: float) -> None:
        """Bounded wait until some live node reports a Raft leader with a quorum."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.ctx.cluster.live():
                ok, value, _, _ = self._timed(node, "raft_status")
                if ok and isinstance(value, dict) and value.get("leader") and value.get("has_quorum") is not False:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"the Raft group did not elect a leader within {timeout_s:g} s")

    def _start_clients(self, label: str) -> None:
        """One thread per client running `self._client(index)` (workloads with concurrent clients)."""
        threads: list[threading.Thread] = getattr(self, "_threads")
        for c in range(int(getattr(self, "clients"))):
            thread = threading.Thread(target=getattr(self, "_client"), args=(c,), name=f"chaos-{label}-c{c}", daemon=True)
            threads.append(thread)
            thread.start()

    def _timed(self, node: ChaosNode, op: str, **args: Any) -> tuple[bool, Any, float, str]:
        started = time.monotonic()
        try:
            value = node.call(op, timeout_s=CALL_TIMEOUT_S, **args)
            return True, value, (time.monotonic() - started) * 1000, ""
        except (ControlError, OSError) as exc:
            return False, None, (time.monotonic() - started) * 1000, f"{type(exc).__name__}: {exc}"


class MembershipWorkload(Workload):
    """Polls every node's member view (`peers`) and counters (`status`): what membership experiences.

    Membership has no operation of its own to drive; its load is the protocol traffic. The figures
    it records are each node's view over time, the cluster's frame throughput (from the transport
    counters), and the failure detector's counters (failed probes, suspicions, refutations).
    """

    kind = "membership"
    requires_ops = ("peers", "status")
    surface = "membership"
    status_every_s = 1.0

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self._next_status = 0.0
        self.last_status: dict[int, dict[str, Any]] = {}
        self.growth: dict[int, dict[str, int]] = {}
        """Per node, counter growth since the first sample; a restart (counter went down) adds the new value."""

    def step(self) -> None:
        cluster = self.ctx.cluster
        want_status = time.monotonic() >= self._next_status
        if want_status:
            self._next_status = time.monotonic() + float(self.params.get("status_every_s", self.status_every_s))
        for node in cluster.nodes:
            if not node.alive:
                continue
            t = self.ctx.elapsed()
            ok, value, ms, error = self._timed(node, "peers")
            view = {m["node_id"]: m["state"] for m in value} if ok else {}
            alive = sum(1 for s in view.values() if s == "alive")
            self.ctx.recorder.add(Sample(t, self.kind, node.index, "peers", ok, ms, alive, error))
            if ok:
                self.ctx.recorder.add_view(t, node.index, view)
            if want_status and ok:
                ok, value, ms, error = self._timed(node, "status")
                if ok:
                    self._grow(node.index, _status_counters(value))
                self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, "status", ok, ms, _status_counters(value) if ok else None, error))

    def _grow(self, index: int, counters: dict[str, Any]) -> None:
        previous = self.last_status.get(index)
        growth = self.growth.setdefault(index, {})
        if previous is not None:
            for k, v in counters.items():
                if k == "incarnation" or not isinstance(v, int):
                    continue
                before = previous.get(k, 0)
                growth[k] = growth.get(k, 0) + (v - before if v >= before else v)
        self.last_status[index] = counters

    def summary(self) -> dict[str, Any]:
        """Per-node counter growth over the run: what the failure detector and transport experienced."""
        deltas = {str(i): {k: v for k, v in sorted(g.items()) if v} for i, g in sorted(self.growth.items())}
        totals: dict[str, int] = {}
        for per_node in deltas.values():
            for k, v in per_node.items():
                totals[k] = totals.get(k, 0) + v
        return {"counter_growth": deltas, "counter_growth_total": totals}


def _status_counters(status: dict[str, Any]) -> dict[str, Any]:
    counters: dict[str, Any] = {}
    for k, v in (status.get("transport_stats") or {}).items():
        counters[f"transport.{k}"] = v
    for k, v in (status.get("core_counters") or {}).items():
        counters[f"core.{k}"] = v
    counters["incarnation"] = status.get("incarnation")
    return counters


class RaftKvWorkload(Workload):
    """Linearizable key-value clients (`kv_get`/`kv_put`/`kv_cas`) with the Raft history recorder.

    `clients` threads, client c bound to node c mod N, each issuing one operation at a time on a
    few shared keys. Outcomes follow consensus/history.py: a proven not-applied error (NoQuorum,
    NotLeader, NotVoter, overload, node not running) is `fail`; a timeout or anything else is
    `unknown`. A separate poller records every node's `raft_status` (term, role, leader) for the
    one-leader-per-term check and to resolve the fault target "leader".
    """

    kind = "raft_kv"
    requires_ops = ("kv_get", "kv_put", "kv_cas", "raft_status")
    surface = "Raft key-value"
    interval_s_default = 0.05
    op_timeout_s = 6.0
    """Longer than the node's own ConsensusTimeout, so the node, not the harness, decides the outcome."""
    not_applied = frozenset({"NoQuorum", "NotLeader", "NotVoter", "RaftOverloaded", "RaftUnavailable", "NodeNotRunning", "ValueError"})
    ready_timeout_s = 45.0

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        from agentnode.consensus.history import HistoryRecorder

        super().__init__(params, ctx)
        self.clients = int(self.params.get("clients", 3))
        self.keys = [f"chaos-k{k}" for k in range(int(self.params.get("keys", 2)))]
        self.history = HistoryRecorder()
        self.history_lock = threading.Lock()
        self.statuses: list[tuple[float, int, Any, Any, Any, Any]] = []
        """(t_s, polled node, term, role, leader id, reporting node id) from raft_status polls.

        A non-leader answers with the leader's own view when it can reach it, so `role` belongs to
        the reporting node id, not necessarily to the polled node."""
        self.voters: list[str] = []
        """The voter ids last reported by the group (only voters count for a Raft majority)."""
        self.error_kinds: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def prepare(self) -> None:
        self._await_raft_leader(float(self.params.get("ready_timeout_s", self.ready_timeout_s)))

    def start(self) -> None:
        super().start()  # the status poller
        self._start_clients("raft")

    def stop(self) -> None:
        super().stop()
        for thread in self._threads:
            thread.join(timeout=self.op_timeout_s + STOP_JOIN_S)

    def step(self) -> None:
        """Poll every live node's view of the group (every `status_interval_s`)."""
        for node in self.ctx.cluster.live():
            ok, value, _, _ = self._timed(node, "raft_status")
            if ok and isinstance(value, dict) and value.get("voters"):
                self.voters = sorted(str(v) for v in value["voters"])
            if ok and isinstance(value, dict):
                self.statuses.append((self.ctx.elapsed(), node.index, value.get("term"), value.get("role"), value.get("leader"), value.get("node_id")))
        self._stop.wait(float(self.params.get("status_interval_s", 0.5)))

    def resolve(self, name: str) -> int | None:
        return _raft_leader(self, name)

    def operations(self) -> list[Any]:
        with self.history_lock:
            return self.history.close()

    def summary(self) -> dict[str, Any]:
        with self.history_lock:
            done = self.history.operations
        by_status: dict[str, int] = {}
        for op in done:
            by_status[op.status] = by_status.get(op.status, 0) + 1
        return {"operations": by_status, "error_kinds": dict(sorted(self.error_kinds.items())), "status_polls": len(self.statuses)}

    def _client(self, c: int) -> None:
        rng = random.Random(f"{self.ctx.rng.random()}:{c}")
        seq = 0
        cluster = self.ctx.cluster
        while not self._stop.is_set():
            node = cluster.nodes[c % cluster.size]
            key = rng.choice(self.keys)
            kind = rng.choice(("get", "put", "cas"))
            seq += 1
            value = f"c{c}-{seq}"
            expected = None
            if kind == "cas":
                expected = self._last_read.get(key) if hasattr(self, "_last_read") else None
            args: dict[str, Any] = {"key": key}
            if kind == "put":
                args["value"] = value
            elif kind == "cas":
                args["value"] = value
                if expected is None:
                    args["expected_absent"] = True
                else:
                    args["expected"] = expected
            op_name = {"get": "kv_get", "put": "kv_put", "cas": "kv_cas"}[kind]
            with self.history_lock:
                op_id = self.history.invoke(f"c{c}", kind, key, self._now_ms(), value if kind != "get" else None, expected)
            started = time.monotonic()
            try:
                result = node.call(op_name, timeout_s=self.op_timeout_s, **args)
                error_kind = ""
            except NodeNotRunning:
                result, error_kind = None, "NodeNotRunning"
            except ControlError as exc:
                result, error_kind = None, exc.kind
            except OSError as exc:
                result, error_kind = None, "socket.timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            latency = (time.monotonic() - started) * 1000
            with self.history_lock:
                if not error_kind:
                    outcome: Any = None
                    if kind == "get":
                        outcome = result.get("value") if result.get("found") else None
                        self._remember(key, outcome)
                    elif kind == "cas":
                        outcome = bool(result.get("ok"))
                    self.history.ok(op_id, self._now_ms(), outcome)
                elif error_kind in self.not_applied:
                    self.history.fail(op_id, self._now_ms())
                else:
                    self.history.unknown(op_id)
                if error_kind:
                    self.error_kinds[error_kind] = self.error_kinds.get(error_kind, 0) + 1
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, kind, not error_kind, latency, None, error_kind))
            self._stop.wait(self.interval_s)

    def _remember(self, key: str, value: Any) -> None:
        if not hasattr(self, "_last_read"):
            self._last_read: dict[str, Any] = {}
        self._last_read[key] = value

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.ctx.started) * 1000)


@dataclass(frozen=True, slots=True)
class CrdtWrite:
    """One CRDT write a client sent, and what became of it.

    outcome: `ok` (acknowledged at its level), `applied` (ConsistencyNotMet: docs/state.md section 2
    says the write is applied locally first and spreads when peers return), `failed` (refused before
    it was applied) or `unknown` (no answer: it may or may not have been applied).
    """

    t_s: float
    node: int
    kind: str
    key: str
    value: Any
    consistency: str
    outcome: str
    latency_ms: float
    error: str = ""


class CrdtWorkload(Workload):
    """Clients on every node write replicated CRDT state (`state.update`) at several consistency levels.

    Client c is bound to node c mod N, so both sides of a partition write. Each step picks a kind
    (`incr` on a PN-counter by 1, `add` of a unique element to an add-only set, `set` of a unique
    value on an LWW register), a key and a level from `consistency` (default local and majority).
    Every write is recorded with its outcome (see `CrdtWrite`); `crdt_converged` then compares every
    live replica and checks that no acknowledged write was lost, and `minority_fails_fast` judges the
    majority writes sent to the minority side.
    """

    kind = "crdt"
    requires_ops = ("state.update", "state.get")
    surface = "replicated CRDT state (agentnode state ...)"
    interval_s_default = 0.1
    applied_errors = frozenset({"ConsistencyNotMet"})
    """Error kinds raised after the local replica applied the write (replication.py `_after_local_write`)."""
    not_applied = frozenset({"NodeNotRunning", "ValueError", "CrdtUsageError", "LimitExceededError", "ConsistencyUnavailable"})
    write_timeout_s = 5.0
    """The node's own default deadline for non-local levels (docs/state.md section 2)."""
    writes_max = 100_000

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        super().__init__(params, ctx)
        levels = self.params.get("consistency", ["local", "majority"])
        self.levels = [levels] if isinstance(levels, str) else [str(x) for x in levels]
        self.clients = int(self.params.get("clients", ctx.cluster.size))
        keys = int(self.params.get("keys", 2))
        self.keys = {
            "incr": [f"chaos-counter-{k}" for k in range(keys)],
            "add": [f"chaos-set-{k}" for k in range(keys)],
            "set": [f"chaos-register-{k}" for k in range(keys)],
        }
        self.kinds = [str(k) for k in self.params.get("kinds", ["incr", "add", "set"])]
        for kind in self.kinds:
            if kind not in self.keys:
                raise ValueError(f"crdt workload: unknown kind {kind!r}; use incr, add or set")
        self.timeout_s = float(self.params.get("timeout_s", self.write_timeout_s))
        self.poll_key = self.keys[self.kinds[0]][0]
        """The key read on every node each second, to show the replicas diverging and converging."""
        self.writes: list[CrdtWrite] = []
        self.writes_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        super().start()  # the divergence poller (step)
        for c in range(self.clients):
            thread = threading.Thread(target=self._client, args=(c,), name=f"chaos-crdt-c{c}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        super().stop()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + STOP_JOIN_S)

    def step(self) -> None:
        """Read the first counter on every live node (local level): how far the replicas diverge over time."""
        for node in self.ctx.cluster.live():
            ok, value, ms, error = self._timed(node, "state.get", key=self.poll_key)
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, "read", ok,
                                         ms, value.get("value") if ok else None, error))
        self._stop.wait(float(self.params.get("poll_interval_s", 1.0)))

    def written_keys(self) -> list[str]:
        with self.writes_lock:
            return sorted({w.key for w in self.writes})

    def recorded(self) -> list[CrdtWrite]:
        with self.writes_lock:
            return list(self.writes)

    def summary(self) -> dict[str, Any]:
        table: dict[str, int] = {}
        for w in self.recorded():
            name = f"{w.kind}@{w.consistency}:{w.outcome}"
            table[name] = table.get(name, 0) + 1
        return {"writes": dict(sorted(table.items()))}

    def _client(self, c: int) -> None:
        try:
            self._writes(c)
        except Exception as exc:  # a workload bug is shown in the run's result (checkers then see too few writes)
            self.errors.append(f"client {c}: {type(exc).__name__}: {exc}")

    def _writes(self, c: int) -> None:
        rng = random.Random(f"{self.ctx.rng.random()}:crdt:{c}")
        cluster = self.ctx.cluster
        seq = 0
        while not self._stop.is_set():
            node = cluster.nodes[c % cluster.size]
            kind = rng.choice(self.kinds)
            key = rng.choice(self.keys[kind])
            level = rng.choice(self.levels)
            seq += 1
            args: dict[str, Any] = {"kind": kind, "key": key, "consistency": level, "timeout_s": self.timeout_s}
            value: Any
            if kind == "incr":
                value = args["n"] = 1
            elif kind == "add":
                value = args["element"] = f"c{c}-{seq}"
            else:
                value = args["value"] = f"c{c}-{seq}"
            t = self.ctx.elapsed()
            started = time.monotonic()
            if not node.alive:
                outcome, error = "failed", "NodeNotRunning"
            else:
                try:
                    # the op has its own `timeout_s` argument, so the client's bound is set apart
                    node.client(self.timeout_s + 5.0).call("state.update", **args)
                    outcome, error = "ok", ""
                except ControlError as exc:
                    error = f"{exc.kind}: {exc}"
                    outcome = "applied" if exc.kind in self.applied_errors else "failed" if exc.kind in self.not_applied else "unknown"
                except OSError as exc:
                    outcome, error = "unknown", f"{type(exc).__name__}: {exc}"
            latency = (time.monotonic() - started) * 1000
            with self.writes_lock:
                if len(self.writes) < self.writes_max:
                    self.writes.append(CrdtWrite(round(t, 3), node.index, kind, key, value, level, outcome, latency, error))
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, f"write@{level}", outcome == "ok", latency, None, error))
            self._stop.wait(self.interval_s)


class DurableMessagesWorkload(Workload):
    """Streams durable messages (`agents.send`, `delivery="durable"`) from one node to a counter agent on another.

    Nodes run `--demo-agents`; `counter@<receiver>` appends every message its handler receives to
    `<data dir>/demo-agents/counter.log` (node/agents.py), which survives kill -9 of either node.
    Each step sends one batch of `batch` messages `chaos-b<k> #<i>`; the batch is *confirmed* when
    the call returns (docs/messaging.md: durable means committed to the sender's outbox before send
    returns). A batch whose call failed is *unconfirmed*: its messages may arrive, at most once.
    """

    kind = "durable_messages"
    requires_ops = ("agents.send", "agents.list")
    surface = "durable agent messages"
    interval_s_default = 0.2
    node_args = ("--demo-agents",)
    send_timeout_s = 20.0
    """A batch of durable sends is a group commit of milliseconds; on 2 busy cores allow seconds."""
    ready_timeout_s = 45.0
    batches_max = 10_000

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        from agentnode.chaos.scenario import resolve_index

        super().__init__(params, ctx)
        size = ctx.cluster.size
        self.sender = resolve_index(self.params.get("sender", 0), size)
        self.receiver = resolve_index(self.params.get("receiver", -1), size)
        if self.sender == self.receiver:
            raise ValueError("durable_messages: sender and receiver must be different nodes")
        self.batch = int(self.params.get("batch", 50))
        if not 2 <= self.batch <= 10_000:
            raise ValueError("durable_messages: batch must be 2..10,000 (a batch of 1 has no ' #i' suffix)")
        self.confirmed: list[str] = []
        self.unconfirmed: list[str] = []
        self.refused = 0
        """Sends not attempted because the sender was down (nothing sent)."""
        self.target = ""
        self._next = 0

    @property
    def log_path(self) -> Any:
        return self.ctx.cluster.nodes[self.receiver].data_dir / "demo-agents" / "counter.log"

    def prepare(self) -> None:
        cluster = self.ctx.cluster
        self.target = f"counter@{cluster.nodes[self.receiver].node_id}"
        sender = cluster.nodes[self.sender]
        deadline = time.monotonic() + float(self.params.get("ready_timeout_s", self.ready_timeout_s))
        while time.monotonic() < deadline:
            ok, value, _, _ = self._timed(sender, "agents.list")
            if ok and any(a.get("agent_id") == self.target for a in value):
                return
            time.sleep(0.3)
        raise TimeoutError(f"node {self.sender} did not see {self.target} within {self.ready_timeout_s} s")

    def expected(self) -> tuple[set[str], set[str]]:
        """(messages of confirmed batches, messages of unconfirmed batches)."""
        def expand(tags: list[str]) -> set[str]:
            return {f"{tag} #{i}" for tag in tags for i in range(self.batch)}

        return expand(list(self.confirmed)), expand(list(self.unconfirmed))

    def step(self) -> None:
        if len(self.confirmed) + len(self.unconfirmed) >= self.batches_max:
            return
        node = self.ctx.cluster.nodes[self.sender]
        if not node.alive:
            self.refused += 1
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, "send", False, 0.0, None, "NodeNotRunning"))
            return
        tag = f"chaos-b{self._next}"
        self._next += 1
        started = time.monotonic()
        try:
            node.call("agents.send", timeout_s=self.send_timeout_s, to=self.target, data=tag, count=self.batch, delivery="durable")
            self.confirmed.append(tag)
            error = ""
        except NodeNotRunning as exc:  # no node behind the socket (restarting): nothing of the batch was sent
            self.refused += 1
            error = f"NodeNotRunning: {exc}"
        except (ControlError, OSError) as exc:  # killed mid-call, or refused part-way: each message at most once
            self.unconfirmed.append(tag)
            error = f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}"
        self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, "send", not error, (time.monotonic() - started) * 1000, self.batch, error))

    def summary(self) -> dict[str, Any]:
        return {"sender": self.sender, "receiver": self.receiver, "batch": self.batch,
                "confirmed_batches": len(self.confirmed), "unconfirmed_batches": len(self.unconfirmed),
                "sends_while_sender_down": self.refused}


def read_delivery_log(path: Any) -> tuple[list[str], int]:
    """The `data` of every message a demo agent's log recorded, and how many lines were torn (kill -9)."""
    import json

    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], 0
    found, torn = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            found.append(str(json.loads(line)["data"]))
        except (ValueError, KeyError, TypeError):
            torn += 1
    return found, torn


class UnicastWorkload(Workload):
    """Every live node asks `echo@<another node>` (`agents.request`, round robin) each step.

    Records each request's latency and outcome, and whether the answer equals the payload (the
    echo agent answers with what it got). `requests_answered` then judges integrity during the
    run and recovery after the faults stop.
    """

    kind = "unicast"
    requires_ops = ("agents.request", "agents.list")
    surface = "agent unicast and request/response"
    interval_s_default = 0.25
    node_args = ("--demo-agents",)
    request_timeout_s = 2.0
    ready_timeout_s = 45.0

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.timeout_s = float(self.params.get("timeout_s", self.request_timeout_s))
        self.wrong_answers: list[dict[str, Any]] = []
        self._seq = 0

    def prepare(self) -> None:
        prepare_demo_agents(self, "echo")

    def request(self, source: ChaosNode, dest: ChaosNode, data: str) -> tuple[bool, str, float]:
        """One request from `source` to `echo@dest`; (answered correctly, error, latency ms)."""
        started = time.monotonic()
        try:
            # `timeout` is the op's own deadline; the control client waits a little longer
            reply = source.client(self.timeout_s + 3.0).call("agents.request", to=f"echo@{dest.node_id}", data=data, timeout=self.timeout_s)
        except (ControlError, OSError) as exc:
            return False, f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}", (time.monotonic() - started) * 1000
        latency = (time.monotonic() - started) * 1000
        if not isinstance(reply, dict) or reply.get("response") != data:
            if len(self.wrong_answers) < 100:
                self.wrong_answers.append({"from": source.index, "to": dest.index, "sent": data, "got": reply})
            return False, "wrong answer", latency
        return True, "", latency

    def step(self) -> None:
        nodes = self.ctx.cluster.nodes
        self._seq += 1
        for source in nodes:
            if not source.alive:
                continue
            dest = nodes[(source.index + 1 + self._seq % (len(nodes) - 1)) % len(nodes)] if len(nodes) > 1 else source
            data = f"chaos-u{self._seq}-{source.index}"
            ok, error, latency = self.request(source, dest, data)
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, source.index, f"request->{dest.index}", ok, latency, None, error))

    def summary(self) -> dict[str, Any]:
        samples = self.ctx.recorder.samples(self.kind)
        return {"requests": len(samples), "answered": sum(1 for s in samples if s.ok), "wrong_answers": len(self.wrong_answers)}


class BroadcastWorkload(Workload):
    """Every live node publishes on the topic `demo` each step; every `listener@<node>` logs what it gets.

    `broadcast_delivered` then reads the listeners' logs (demo-agents/listener.log) for duplicates and
    publishes a probe after the faults stop that every live listener must receive.
    """

    kind = "broadcast"
    requires_ops = ("agents.publish", "agents.list")
    surface = "broadcast"
    interval_s_default = 0.5
    node_args = ("--demo-agents",)
    topic = "demo"
    """The demo listener agents subscribe to this topic (node/agents.py start_demo_agents)."""
    ready_timeout_s = 45.0

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.published: list[tuple[float, int, str]] = []
        """(t_s, node, data) of every publish the node accepted."""
        self.attempted: set[str] = set()
        """Every payload handed to a node, accepted or not (a failed call may still have published)."""
        self.lock = threading.Lock()
        self._seq = 0

    def prepare(self) -> None:
        prepare_demo_agents(self, "listener")

    def publish(self, node: ChaosNode, data: str) -> tuple[bool, str, float]:
        started = time.monotonic()
        try:
            node.call("agents.publish", timeout_s=CALL_TIMEOUT_S * 3, topic=self.topic, data=data)
            return True, "", (time.monotonic() - started) * 1000
        except (ControlError, OSError) as exc:
            return False, f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}", (time.monotonic() - started) * 1000

    def step(self) -> None:
        self._seq += 1
        for node in self.ctx.cluster.live():
            data = f"chaos-p{self._seq}-{node.index}"
            t = self.ctx.elapsed()
            with self.lock:
                self.attempted.add(data)
            ok, error, latency = self.publish(node, data)
            if ok:
                with self.lock:
                    self.published.append((round(t, 3), node.index, data))
            self.ctx.recorder.add(Sample(self.ctx.elapsed(), self.kind, node.index, "publish", ok, latency, None, error))

    def listener_log(self, node: ChaosNode) -> Any:
        return node.data_dir / "demo-agents" / "listener.log"

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"published": len(self.published)}


def prepare_demo_agents(workload: Workload, agent: str) -> None:
    """Wait (bounded) until every live node sees `agent@<n>` of every live node in its registry."""
    cluster = workload.ctx.cluster
    deadline = time.monotonic() + float(workload.params.get("ready_timeout_s", 45.0))
    while time.monotonic() < deadline:
        want = {f"{agent}@{n.node_id}" for n in cluster.live()}
        ready = True
        for node in cluster.live():
            ok, value, _, _ = workload._timed(node, "agents.list")
            if not ok or not want <= {a.get("agent_id") for a in value}:
                ready = False
                break
        if ready:
            return
        time.sleep(0.3)
    raise TimeoutError(f"the nodes did not all see every {agent}@<node> agent within the ready timeout (started with --demo-agents?)")


@dataclass(frozen=True, slots=True)
class LockGrant:
    """A lock acquisition the Raft group granted, as one client saw it (seconds since the faults phase began)."""

    client: int
    node: int
    owner: str
    token: int
    invoked_s: float
    completed_s: float
    ttl_s: float
    release_invoked_s: float | None = None


class LocksWorkload(Workload):
    """Clients on several nodes compete for one lock (`lock_acquire`/`lock_release`, fencing tokens).

    Client c is bound to node c mod N and uses a fresh owner name per attempt, so every grant gets a
    fresh fencing token. A granted client holds the lock `hold_s`, then releases it. Every grant is
    recorded as a `LockGrant`; `locks_fenced` checks mutual exclusion and token order.
    """

    kind = "locks"
    requires_ops = ("lock_acquire", "lock_release", "raft_status")
    surface = "Raft locks (agentnode lock ...)"
    interval_s_default = 0.05
    lock_name = "chaos-lock"
    op_timeout_s = 6.0
    """Longer than the node's own ConsensusTimeout, so the node decides the outcome."""
    ready_timeout_s = 45.0

    def __init__(self, params: dict[str, Any], ctx: RunContext) -> None:
        super().__init__(params, ctx)
        self.clients = int(self.params.get("clients", 3))
        self.ttl_ms = int(self.params.get("ttl_ms", 2000))
        self.hold_s = float(self.params.get("hold_s", 0.1))
        self.grants: list[LockGrant] = []
        self.outcomes: dict[str, int] = {}
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def prepare(self) -> None:
        self._await_raft_leader(float(self.params.get("ready_timeout_s", self.ready_timeout_s)))

    def start(self) -> None:
        self._start_clients("lock")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * self.op_timeout_s + STOP_JOIN_S)

    def step(self) -> None:  # pragma: no cover - the clients run their own loops
        raise RuntimeError("the lock workload runs per-client threads")

    def resolve(self, name: str) -> int | None:
        return _raft_leader(self, name)

    def recorded(self) -> list[LockGrant]:
        with self.lock:
            return list(self.grants)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"grants": len(self.grants), "outcomes": dict(sorted(self.outcomes.items()))}

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _call(self, node: ChaosNode, op: str, **args: Any) -> tuple[Any, str]:
        try:
            return node.call(op, timeout_s=self.op_timeout_s, **args), ""
        except (ControlError, OSError) as exc:
            return None, str(getattr(exc, "kind", type(exc).__name__))

    def _client(self, c: int) -> None:
        try:
            self._attempts(c)
        except Exception as exc:  # a workload bug is shown in the run's result
            self.errors.append(f"client {c}: {type(exc).__name__}: {exc}")

    def _attempts(self, c: int) -> None:
        cluster = self.ctx.cluster
        seq = 0
        while not self._stop.is_set():
            node = cluster.nodes[c % cluster.size]
            seq += 1
            owner = f"chaos-c{c}-{seq}"
            invoked = self.ctx.elapsed()
            result, error = self._call(node, "lock_acquire", name=self.lock_name, owner=owner, ttl_ms=self.ttl_ms)
            completed = self.ctx.elapsed()
            granted = bool(result and result.get("ok") and result.get("owner") == owner)
            outcome = "granted" if granted else (error or f"refused:{(result or {}).get('reason', '')}")
            self._count(outcome)
            self.ctx.recorder.add(Sample(completed, self.kind, node.index, "acquire", granted, (completed - invoked) * 1000, None,
                                         "" if granted else outcome))
            if not granted:
                self._stop.wait(self.interval_s)
                continue
            token = int(result["fencing_token"])
            self._stop.wait(self.hold_s)
            released_at = self.ctx.elapsed()
            grant = LockGrant(c, node.index, owner, token, round(invoked, 4), round(completed, 4), self.ttl_ms / 1000, round(released_at, 4))
            with self.lock:
                self.grants.append(grant)
            released, error = self._call(node, "lock_release", name=self.lock_name, owner=owner, fencing_token=token)
            self._count("released" if released and released.get("ok") else f"release:{error or (released or {}).get('reason', '')}")


def _raft_leader(workload: Workload, name: str) -> int | None:
    """The index of the Raft leader as some live node reports it, for the fault target "leader"."""
    if name != "leader":
        return None
    ids = {n.node_id: n.index for n in workload.ctx.cluster.nodes}
    for node in workload.ctx.cluster.live():
        ok, value, _, _ = workload._timed(node, "raft_status")
        if ok and isinstance(value, dict) and value.get("leader") in ids:
            return ids[value["leader"]]
    return None


WORKLOADS: dict[str, Callable[[dict[str, Any], RunContext], Workload]] = {
    "membership": MembershipWorkload,
    "raft_kv": RaftKvWorkload,
    "crdt": CrdtWorkload,
    "locks": LocksWorkload,
    "durable_messages": DurableMessagesWorkload,
    "unicast": UnicastWorkload,
    "broadcast": BroadcastWorkload,
}
"""Scenario `kind` -> workload class. Each names the control operations it drives; a node build without
them makes the workload (and the checkers needing it) skip with that reason."""

"""The CRDT and durable-messaging checkers on recorded data (no processes): what passes, what fails, and
that missing data is never a pass."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentnode.chaos.checkers import judge_crdt, judge_durable, judge_minority_writes, run_check
from agentnode.chaos.runner import _node_args
from agentnode.chaos.scenario import builtin_scenarios
from agentnode.chaos.workloads import WORKLOADS, CrdtWrite, FaultEvent, RunContext, read_delivery_log


@dataclass
class FakeNode:
    index: int
    node_id: str
    data_dir: Path = field(default_factory=lambda: Path("/nonexistent"))
    log_path: Path = field(default_factory=lambda: Path("/nonexistent"))
    alive: bool = True


@dataclass
class FakeCluster:
    nodes: list[FakeNode]

    @property
    def size(self) -> int:
        return len(self.nodes)

    def live(self) -> list[FakeNode]:
        return [n for n in self.nodes if n.alive]


class FakeCrdt:
    skip_reason = None
    error_reason = None

    def __init__(self, writes: list[CrdtWrite]) -> None:
        self.writes = writes

    def recorded(self) -> list[CrdtWrite]:
        return list(self.writes)

    def stop(self) -> None:
        pass


def w(key: str, kind: str, value: Any, outcome: str = "ok", *, node: int = 0, t: float = 1.0, level: str = "local",
      ms: float = 2.0, error: str = "") -> CrdtWrite:
    return CrdtWrite(t, node, kind, key, value, level, outcome, ms, error)


def ctx_of(size: int = 5) -> RunContext:
    ctx = RunContext(FakeCluster([FakeNode(i, f"id{i}") for i in range(size)]), random.Random(0))  # type: ignore[arg-type]
    ctx.converged_s = 0.0
    return ctx


def test_counter_must_equal_the_applied_increments() -> None:
    writes = [w("c", "incr", 1), w("c", "incr", 1), w("c", "incr", 1, "applied", error="ConsistencyNotMet: x"),
              w("c", "incr", 1, "failed", error="NodeNotRunning")]
    assert judge_crdt(writes, {"c": 3}).status == "pass"
    lost = judge_crdt(writes, {"c": 2})
    assert lost.status == "fail" and "counter c = 2, expected 3" in lost.summary
    assert judge_crdt(writes, {"c": 4}).status == "fail"  # the refused write must not count
    unsure = [*writes, w("c", "incr", 1, "unknown", error="TimeoutError")]
    assert judge_crdt(unsure, {"c": 3}).status == "pass" and judge_crdt(unsure, {"c": 4}).status == "pass"
    assert judge_crdt(unsure, {"c": 5}).status == "fail"


def test_set_keeps_every_applied_element_and_invents_none() -> None:
    writes = [w("s", "add", "a"), w("s", "add", "b", "applied"), w("s", "add", "c", "unknown"), w("s", "add", "d", "failed")]
    assert judge_crdt(writes, {"s": ["a", "b"]}).status == "pass"
    assert judge_crdt(writes, {"s": ["a", "b", "c"]}).status == "pass"
    lost = judge_crdt(writes, {"s": ["a"]})
    assert lost.status == "fail" and lost.evidence["keys"]["s"]["lost"] == ["b"]
    phantom = judge_crdt(writes, {"s": ["a", "b", "d"]})
    assert phantom.status == "fail" and phantom.evidence["keys"]["s"]["phantom"] == ["d"]


def test_register_holds_a_written_value() -> None:
    writes = [w("r", "set", "v1"), w("r", "set", "v2", "applied")]
    assert judge_crdt(writes, {"r": "v2"}).status == "pass"
    assert judge_crdt(writes, {"r": "other"}).status == "fail"
    assert judge_crdt(writes, {"r": None}).status == "fail"


def test_crdt_converged_without_applied_writes_is_an_error_not_a_pass() -> None:
    ctx = ctx_of()
    ctx.workloads["crdt"] = FakeCrdt([w("c", "incr", 1, "failed")])  # type: ignore[assignment]
    assert run_check("crdt_converged", ctx, {}).status == "error"
    assert run_check("crdt_converged", ctx_of(), {}).status == "skip"  # the scenario runs no crdt workload


def test_minority_writes_must_fail_fast_with_the_clear_error() -> None:
    clear = "ConsistencyNotMet: write of 'c' needs 3 of 5 replicas but only 2 are reachable."
    good = [w("c", "incr", 1, "applied", level="majority", error=clear) for _ in range(3)]
    assert judge_minority_writes(good, 2000, 0).status == "pass"
    slow = judge_minority_writes([*good, w("c", "incr", 1, "applied", level="majority", ms=4000, error=clear)], 2000, 0)
    assert slow.status == "fail" and "took longer" in slow.summary
    unclear = judge_minority_writes([*good, w("c", "incr", 1, "unknown", level="majority", error="TimeoutError: timed out")], 2000, 0)
    assert unclear.status == "fail" and "another error" in unclear.summary
    succeeded = judge_minority_writes([*good, w("c", "incr", 1, level="majority")], 2000, 0)
    assert succeeded.status == "fail" and "succeeded" in succeeded.summary
    assert judge_minority_writes([], 2000, 0).status == "error"


def test_minority_fails_fast_picks_the_crdt_writes_on_the_small_side_after_the_grace() -> None:
    ctx = ctx_of(5)
    ctx.partitions.append((2.0, [[0, 1], [2, 3, 4]]))
    ctx.timeline.append(FaultEvent(9.0, "heal", "heal"))
    clear = "ConsistencyNotMet: needs 3 of 5"
    writes = [
        w("c", "incr", 1, "applied", node=0, t=2.1, level="majority", ms=2900, error=clear),  # inside the grace: excused
        w("c", "incr", 1, "applied", node=1, t=6.0, level="majority", error=clear),
        w("c", "incr", 1, node=2, t=6.0, level="majority"),  # the majority side may succeed
        w("c", "incr", 1, node=0, t=6.0, level="local"),  # local writes need nobody
        w("c", "incr", 1, node=0, t=10.0, level="majority"),  # after the heal
    ]
    ctx.workloads["crdt"] = FakeCrdt(writes)  # type: ignore[assignment]
    verdict = run_check("minority_fails_fast", ctx, {"grace_s": 3, "max_ms": 2000})
    assert verdict.status == "pass", verdict
    assert verdict.evidence["minority_writes"] == 1
    assert run_check("minority_fails_fast", ctx, {"grace_s": 0, "max_ms": 2000}).status == "fail"
    assert run_check("minority_fails_fast", ctx_of(), {}).status == "skip"


def test_minority_fails_fast_counts_from_when_the_writer_learnt_the_split() -> None:
    """With membership views, a write is due `max_ms` after its node's view first showed too few replicas
    reachable: Lifeguard may take longer than the grace to declare the other side failed in a minority."""
    ctx = ctx_of(5)
    ctx.partitions.append((2.0, [[0, 1], [2, 3, 4]]))
    ctx.timeline.append(FaultEvent(12.0, "heal", "heal"))
    whole = {f"id{i}": "alive" for i in range(5)}
    split = {**whole, "id2": "dead", "id3": "dead", "id4": "suspect"}  # 3 reachable: a majority write can still wait
    detected = {**split, "id4": "dead"}
    for t in (2.5, 5.0, 8.0):
        ctx.recorder.add_view(t, 0, whole if t < 5 else split)
    ctx.recorder.add_view(9.5, 0, detected)
    clear = "ConsistencyNotMet: reached 2 of the 3 replicas it needs (lost peers)"
    waited = w("c", "incr", 1, "applied", node=0, t=7.2, level="majority", ms=2500, error=clear)  # failed at 9.7 s
    ctx.workloads["crdt"] = FakeCrdt([waited])  # type: ignore[assignment]
    verdict = run_check("minority_fails_fast", ctx, {"grace_s": 5, "max_ms": 2000})
    assert verdict.status == "pass", verdict
    assert verdict.evidence["waited_for_detection_ms"]["max"] == 2300
    slow = w("c", "incr", 1, "applied", node=0, t=9.6, level="majority", ms=2500, error=clear)  # after detection
    ctx.workloads["crdt"] = FakeCrdt([waited, slow])  # type: ignore[assignment]
    assert run_check("minority_fails_fast", ctx, {"grace_s": 5, "max_ms": 2000}).status == "fail"
    # Node 1 never showed the split before the heal: its writes are reported, not judged.
    ctx.recorder.add_view(8.0, 1, whole)
    ctx.workloads["crdt"] = FakeCrdt([w("c", "incr", 1, "applied", node=1, t=8.0, level="majority", ms=4000, error=clear)])  # type: ignore[assignment]
    undetected = run_check("minority_fails_fast", ctx, {"grace_s": 5, "max_ms": 2000})
    assert undetected.status == "skip" and undetected.evidence["undetected"][0]["node"] == 1


def test_durable_judge_finds_loss_duplicates_and_inventions() -> None:
    confirmed = {"chaos-b0 #0", "chaos-b0 #1"}
    unconfirmed = {"chaos-b1 #0", "chaos-b1 #1"}
    assert judge_durable(confirmed, unconfirmed, ["chaos-b0 #0", "chaos-b0 #1", "chaos-b1 #0", "hello everyone"]).status == "pass"
    lost = judge_durable(confirmed, unconfirmed, ["chaos-b0 #0"])
    assert lost.status == "fail" and lost.evidence["first_missing"] == ["chaos-b0 #1"]
    twice = judge_durable(confirmed, unconfirmed, ["chaos-b0 #0", "chaos-b0 #1", "chaos-b1 #0", "chaos-b1 #0"])
    assert twice.status == "fail" and twice.evidence["first_handled_twice"] == [{"data": "chaos-b1 #0", "times": 2}]
    assert judge_durable(confirmed, unconfirmed, [*confirmed, "chaos-b9 #0"]).status == "fail"


def test_delivery_log_reader_counts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "counter.log"
    path.write_text(json.dumps({"data": "chaos-b0 #0"}) + "\n" + json.dumps({"data": "chaos-b0 #1"}) + "\n" + '{"data": "chaos-b0 #')
    assert read_delivery_log(path) == (["chaos-b0 #0", "chaos-b0 #1"], 1)
    assert read_delivery_log(tmp_path / "absent.log") == ([], 0)


def test_durable_check_without_a_confirmed_send_is_an_error() -> None:
    ctx = ctx_of(3)
    workload = WORKLOADS["durable_messages"]({"sender": 1, "receiver": 2}, ctx)
    ctx.workloads["durable_messages"] = workload
    verdict = run_check("durable_exactly_once", ctx, {})
    assert verdict.status == "error" and "nothing to check" in verdict.summary


def test_ci_scenarios_wire_the_new_workloads_and_the_nodes_get_demo_agents() -> None:
    scenarios = builtin_scenarios()
    heal = scenarios["partition-heal"]
    assert {c.kind for c in heal.checks} >= {"crdt_converged", "minority_fails_fast"}
    assert next(s for s in heal.workloads if s.kind == "crdt").params["consistency"] == ["local", "majority"]
    durable = scenarios["durable-kill"]
    assert "durable_exactly_once" in {c.kind for c in durable.checks}
    assert _node_args(durable) == ["--demo-agents"] and _node_args(heal) == []


def test_unicast_and_broadcast_checks_without_data_are_errors() -> None:
    ctx = ctx_of(3)
    ctx.workloads["unicast"] = WORKLOADS["unicast"]({}, ctx)
    ctx.workloads["broadcast"] = WORKLOADS["broadcast"]({}, ctx)
    unanswered = run_check("requests_answered", ctx, {})
    assert unanswered.status == "error" and "nothing to judge" in unanswered.summary
    unpublished = run_check("broadcast_delivered", ctx, {})
    assert unpublished.status == "error" and "nothing to judge" in unpublished.summary
    assert run_check("requests_answered", ctx_of(3), {}).status == "skip"


def test_lock_grants_must_exclude_each_other_and_order_their_tokens() -> None:
    from agentnode.chaos.checkers import judge_locks
    from agentnode.chaos.workloads import LockGrant

    a = LockGrant(0, 0, "a", 1, invoked_s=1.0, completed_s=1.1, ttl_s=2.0, release_invoked_s=1.2)
    b = LockGrant(1, 1, "b", 2, invoked_s=1.25, completed_s=1.3, ttl_s=2.0, release_invoked_s=1.4)
    assert judge_locks([a, b]).status == "pass"
    overlap = LockGrant(1, 1, "b", 2, invoked_s=1.12, completed_s=1.15, ttl_s=2.0, release_invoked_s=1.4)
    verdict = judge_locks([a, overlap])
    assert verdict.status == "fail" and "surely still held" in verdict.summary
    expired = LockGrant(0, 0, "a", 1, invoked_s=1.0, completed_s=1.1, ttl_s=2.0, release_invoked_s=None)  # never released
    after_ttl = LockGrant(1, 1, "b", 2, invoked_s=3.2, completed_s=3.3, ttl_s=2.0, release_invoked_s=3.4)
    assert judge_locks([expired, after_ttl]).status == "pass"  # the TTL ended the first hold
    older_token = LockGrant(1, 1, "b", 1, invoked_s=1.25, completed_s=1.3, ttl_s=2.0, release_invoked_s=1.4)
    reused = judge_locks([a, older_token])
    assert reused.status == "fail" and "granted twice" in reused.summary and reused.evidence["out_of_order"]
    assert judge_locks([a]).status == "error"

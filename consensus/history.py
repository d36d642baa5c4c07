"""Record client operations as JSON lines and check them for linearizability, key by key.

The model is one register per key with ``get``, ``put``, ``delete`` and ``cas`` (compare-and-set),
the semantics of the critical state's linearizable keys. The checker is the Wing & Gong search
with Lowe's memoisation (the "WGL" algorithm, as in Knossos and Porcupine): repeatedly pick an
operation that may take effect next (no un-linearized completed operation returned before it was
invoked), apply it to the model, and backtrack on a mismatch; the pair (set of linearized
operations, register value) is cached so each configuration is explored once.

Outcomes, as a client sees them:
- ``ok``: completed with a result; it must be linearized, at a point between invocation and completion.
- ``fail``: definitely did not take effect (for example `NoQuorum`); dropped from the check.
- ``unknown``: may or may not have taken effect (for example `ConsensusTimeout`, or still pending
  when the run ended): it may be linearized at any point after its invocation, or never, and its
  result is not checked.

Checks are linear per key (a linearizable history per key implies a linearizable history for
independent registers; Herlihy & Wing 1990, locality). The search is bounded by `states_max`;
beyond it the verdict is ``None`` (undecided), never a silent pass.
"""

from __future__ import annotations

__sans_io__ = True

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

__all__ = [
    "CheckResult",
    "HistoryRecorder",
    "Operation",
    "check_history",
    "check_key",
    "load_history",
]

OPS = ("get", "put", "delete", "cas")
STATUSES = ("ok", "fail", "unknown")
STATES_MAX = 1_000_000
"""Default bound on (linearized-set, value) configurations explored per key."""
OPS_PER_KEY_MAX = 100_000
PENDING_MAX = 100_000
"""Operations in flight in one recorder; more means a leak in the workload driver."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, as recorded."""

    client: str
    op: str
    """One of "get", "put", "delete", "cas"."""
    key: str
    invoked_ms: int
    completed_ms: int | None
    """None when the outcome is unknown (the operation may still take effect at any later time)."""
    status: str
    """"ok", "fail" (not applied) or "unknown"."""
    value: Any = None
    """put: the value written; cas: the new value (None deletes)."""
    expected: Any = None
    """cas: the value required beforehand (None means absent)."""
    result: Any = None
    """get: the value read (None: absent); cas: True/False; put/delete: ignored."""

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps({
            "client": self.client, "op": self.op, "key": self.key, "value": _to_json(self.value),
            "expected": _to_json(self.expected), "invoked_ms": self.invoked_ms, "completed_ms": self.completed_ms,
            "result": _to_json(self.result), "status": self.status,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Operation:
        """Parse one line of `to_json`; raise ValueError saying what is wrong."""
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("history line is not a JSON object")
        try:
            op = cls(
                client=str(raw["client"]), op=raw["op"], key=str(raw["key"]), invoked_ms=int(raw["invoked_ms"]),
                completed_ms=None if raw.get("completed_ms") is None else int(raw["completed_ms"]),
                status=raw["status"], value=_from_json(raw.get("value")), expected=_from_json(raw.get("expected")),
                result=_from_json(raw.get("result")),
            )
        except KeyError as exc:
            raise ValueError(f"history line lacks field {exc}") from None
        _validate(op)
        return op


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for one key."""

    key: str
    linearizable: bool | None
    """None: the search bound was reached before a verdict."""
    operations: int
    states: int
    """Configurations explored."""
    reason: str = ""
    witness: tuple[int, ...] = ()
    """On success: indexes (into the key's checked operations, sorted by invocation) in linearization order."""


class HistoryRecorder:
    """Collect operations as clients invoke and complete them; optionally stream JSON lines to `sink`."""

    def __init__(self, sink: Callable[[str], Any] | None = None) -> None:
        self._sink = sink
        self._pending: dict[int, dict[str, Any]] = {}
        self._done: list[Operation] = []
        self._next_id = 1

    def invoke(self, client: str, op: str, key: str, now_ms: int, value: Any = None, expected: Any = None) -> int:
        """Record an invocation; returns the id to complete it with."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        if len(self._pending) >= PENDING_MAX:
            raise RuntimeError(f"more than PENDING_MAX={PENDING_MAX} operations in flight; complete them first")
        op_id = self._next_id
        self._next_id += 1
        self._pending[op_id] = {"client": client, "op": op, "key": key, "invoked_ms": now_ms,
                                "value": value, "expected": expected}
        return op_id

    def ok(self, op_id: int, now_ms: int, result: Any = None) -> Operation:
        """The operation completed with `result` (get: value read; cas: True/False)."""
        return self._finish(op_id, "ok", now_ms, result)

    def fail(self, op_id: int, now_ms: int) -> Operation:
        """The operation definitely did not take effect."""
        return self._finish(op_id, "fail", now_ms, None)

    def unknown(self, op_id: int) -> Operation:
        """The outcome is unknown: it may take effect at any time after its invocation, or never."""
        return self._finish(op_id, "unknown", None, None)

    def close(self) -> list[Operation]:
        """Mark every still-pending operation unknown and return the whole history."""
        for op_id in list(self._pending):
            self.unknown(op_id)
        return list(self._done)

    @property
    def operations(self) -> list[Operation]:
        """Finished operations so far, in completion order."""
        return list(self._done)

    def _finish(self, op_id: int, status: str, now_ms: int | None, result: Any) -> Operation:
        try:
            raw = self._pending.pop(op_id)
        except KeyError:
            raise ValueError(f"operation {op_id} is not pending (never invoked, or already completed)") from None
        op = Operation(completed_ms=now_ms, status=status, result=result, **raw)
        _validate(op)
        self._done.append(op)
        if self._sink is not None:
            self._sink(op.to_json() + "\n")
        return op


def load_history(lines: Iterable[str]) -> list[Operation]:
    """Parse JSON lines (blank lines skipped)."""
    return [Operation.from_json(line) for line in lines if line.strip()]


def check_history(operations: Iterable[Operation], initial: Any = None,
                  states_max: int = STATES_MAX) -> dict[str, CheckResult]:
    """Check every key independently; the history is linearizable iff every verdict is True."""
    by_key: dict[str, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)
    return {key: check_key(by_key[key], initial, states_max) for key in sorted(by_key)}


def check_key(operations: Iterable[Operation], initial: Any = None, states_max: int = STATES_MAX) -> CheckResult:
    """WGL search over one key's operations (all must share the key)."""
    ops = [op for op in operations if op.status != "fail" and not (op.op == "get" and op.status == "unknown")]
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(f"check_key got operations on several keys {sorted(keys)}; use check_history")
    key = next(iter(keys), "")
    if len(ops) > OPS_PER_KEY_MAX:
        raise ValueError(f"{len(ops)} operations on key {key!r}; the limit is OPS_PER_KEY_MAX={OPS_PER_KEY_MAX}")
    ops.sort(key=lambda o: (o.invoked_ms, o.completed_ms if o.completed_ms is not None else math.inf))
    n = len(ops)
    inv = [op.invoked_ms for op in ops]
    ret = [op.completed_ms if op.status == "ok" and op.completed_ms is not None else math.inf for op in ops]
    required = 0
    for i, op in enumerate(ops):
        if op.status == "ok":
            required |= 1 << i
    frozen_ops = [(op.op, _freeze(op.value), _freeze(op.expected), _freeze(op.result), op.status == "ok") for op in ops]

    seen: set[tuple[int, Any]] = set()
    start_state = _freeze(initial)
    # Explicit DFS stack: (mask, state, candidates, next candidate position, path length)
    path: list[int] = []
    stack: list[tuple[int, Any, list[int], int]] = []

    def candidates(mask: int) -> list[int]:
        min_ret = math.inf
        for i in range(n):
            if not mask >> i & 1 and ret[i] < min_ret:
                min_ret = ret[i]
        return [i for i in range(n) if not mask >> i & 1 and inv[i] <= min_ret]

    if required == 0:
        return CheckResult(key, True, n, 0)
    seen.add((0, start_state))
    stack.append((0, start_state, candidates(0), 0))
    while stack:
        mask, state, cands, pos = stack[-1]
        if pos >= len(cands):
            stack.pop()
            if path:
                path.pop()
            continue
        stack[-1] = (mask, state, cands, pos + 1)
        i = cands[pos]
        legal, new_state = _step(state, frozen_ops[i])
        if not legal:
            continue
        new_mask = mask | 1 << i
        if new_mask & required == required:
            return CheckResult(key, True, n, len(seen), witness=tuple([*path, i]))
        config = (new_mask, new_state)
        if config in seen:
            continue
        if len(seen) >= states_max:
            return CheckResult(key, None, n, len(seen), f"search bound states_max={states_max} reached; no verdict")
        seen.add(config)
        path.append(i)
        stack.append((new_mask, new_state, candidates(new_mask), 0))
    return CheckResult(key, False, n, len(seen), "no order of the operations is consistent with a single register")


def _step(state: Any, op: tuple[str, Any, Any, Any, bool]) -> tuple[bool, Any]:
    kind, value, expected, result, known = op
    if kind == "get":
        return result == state, state
    if kind == "put":
        return True, value
    if kind == "delete":
        return True, None
    # cas
    if state == expected:
        return (not known or result is True), value
    return (not known or result is False), state


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _validate(op: Operation) -> None:
    if op.op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op.op!r}")
    if op.status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {op.status!r}")
    if op.status == "ok" and (op.completed_ms is None or op.completed_ms < op.invoked_ms):
        raise ValueError(f"an ok operation needs completed_ms >= invoked_ms ({op.invoked_ms}), got {op.completed_ms}")
    if op.op == "cas" and op.status == "ok" and not isinstance(op.result, bool):
        raise ValueError("an ok cas needs result True or False")


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return bytes.fromhex(value["$bytes"])
    return value

"""Linearizability checker: hand-built verdicts, JSON lines, and Hypothesis histories from a model."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.consensus.history import HistoryRecorder, Operation, check_history, check_key, load_history


def op(kind, inv, ret, value=None, result=None, expected=None, status="ok", client="c", key="k"):
    return Operation(client, kind, key, inv, ret, status, value, expected, result)


def verdict(ops):
    return check_key(ops).linearizable


def test_sequential_history_passes() -> None:
    assert verdict([op("put", 0, 1, 1), op("get", 2, 3, result=1), op("delete", 4, 5), op("get", 6, 7, result=None)])


def test_read_after_completed_write_must_see_it() -> None:
    assert verdict([op("put", 0, 10, 1), op("get", 20, 30, result=None)]) is False


def test_concurrent_read_may_see_either() -> None:
    for seen in (None, 1):
        assert verdict([op("put", 0, 10, 1), op("get", 5, 15, result=seen)])


def test_reads_cannot_flip_back_without_a_write() -> None:
    ops = [op("put", 0, 10, 1, client="w1"), op("put", 0, 10, 2, client="w2"),
           op("get", 20, 30, result=1), op("get", 40, 50, result=2)]
    assert verdict(ops) is False
    ops[-1] = op("get", 40, 50, result=1)
    assert verdict(ops)


def test_stale_read_is_caught() -> None:
    assert verdict([op("put", 0, 10, 1), op("put", 20, 30, 2), op("get", 40, 50, result=1)]) is False


def test_two_cas_cannot_both_win() -> None:
    ops = [op("cas", 0, 10, 1, expected=None, result=True, client="a"),
           op("cas", 0, 10, 2, expected=None, result=True, client="b")]
    assert verdict(ops) is False
    ops[1] = op("cas", 0, 10, 2, expected=None, result=False, client="b")
    assert verdict(ops)


def test_unknown_outcomes_may_or_may_not_take_effect() -> None:
    unknown = op("put", 0, None, 1, status="unknown")
    assert verdict([unknown, op("get", 20, 30, result=1)])
    assert verdict([unknown, op("get", 20, 30, result=None)])
    # ...but only once it was invoked:
    assert verdict([op("get", 0, 5, result=1), op("put", 10, None, 1, status="unknown")]) is False
    # a failed op never took effect
    assert verdict([op("put", 0, 10, 1, status="fail"), op("get", 20, 30, result=1)]) is False


def test_search_bound_gives_no_verdict_rather_than_a_pass() -> None:
    ops = [op("put", 0, 100, i, client=f"c{i}") for i in range(12)] + [op("get", 200, 300, result=99)]
    result = check_key(ops, states_max=50)
    assert result.linearizable is None and "bound" in result.reason


def test_recorder_writes_json_lines_that_load_back() -> None:
    sink = io.StringIO()
    rec = HistoryRecorder(sink.write)
    a = rec.invoke("c1", "put", "k", 0, value=b"\x00v")
    b = rec.invoke("c2", "cas", "k", 1, value=b"w", expected=b"\x00v")
    rec.ok(a, 5)
    rec.ok(b, 9, result=True)
    c = rec.invoke("c1", "get", "k", 10)
    rec.ok(c, 12, result=b"w")
    rec.invoke("c3", "put", "k", 13, value=b"z")  # still pending at the end
    history = rec.close()
    loaded = load_history(sink.getvalue().splitlines())
    assert loaded == history and loaded[-1].status == "unknown"
    assert all(r.linearizable for r in check_history(loaded).values())


# -- Hypothesis: histories generated from a sequential model are always linearizable -----------

SCHEDULE = st.lists(
    st.tuples(
        st.sampled_from(["get", "put", "delete", "cas"]),
        st.sampled_from(["k1", "k2"]),
        st.integers(0, 3),             # value / new
        st.integers(0, 3) | st.none(),  # cas expected
        st.integers(0, 50),            # invocation time
        st.integers(0, 10),            # linearization point offset
        st.integers(0, 10),            # completion offset after the point
        st.sampled_from(["ok"] * 6 + ["fail", "unknown", "unknown-skipped"]),
    ),
    max_size=14,
)


def build_history(schedule):
    """Run ops against a sequential register at distinct linearization points; record what clients see."""
    events = []
    for n, (kind, key, value, expected, inv, off, tail, status) in enumerate(schedule):
        point = (inv + off) * 100 + n  # distinct points
        events.append((point, n, kind, key, value, expected, inv * 100, (inv + off + tail) * 100 + 99, status))
    model: dict[str, int | None] = {}
    ops = []
    for point, n, kind, key, value, expected, inv, ret, status in sorted(events):
        applied = status in ("ok", "unknown")
        current = model.get(key)
        result = None
        if kind == "get":
            result = current
        elif kind == "put" and applied:
            model[key] = value
        elif kind == "delete" and applied:
            model[key] = None
        elif kind == "cas":
            result = current == expected
            if result and applied:
                model[key] = value
        shown = {"ok": "ok", "fail": "fail", "unknown": "unknown", "unknown-skipped": "unknown"}[status]
        ops.append(Operation(f"c{n}", kind, key, inv, ret if shown == "ok" else (ret if shown == "fail" else None),
                             shown, value if kind in ("put", "cas") else None, expected if kind == "cas" else None,
                             result if shown == "ok" else None))
    return ops


@settings(max_examples=300, deadline=None)
@given(SCHEDULE)
def test_model_generated_histories_are_linearizable(schedule) -> None:
    history = build_history(schedule)
    results = check_history(history)
    assert all(r.linearizable is True for r in results.values()), results


@settings(max_examples=200, deadline=None)
@given(SCHEDULE, st.integers(0, 100), st.integers(4, 9))
def test_a_read_of_a_never_written_value_is_caught(schedule, pick, bogus) -> None:
    history = build_history(schedule)
    gets = [i for i, o in enumerate(history) if o.op == "get" and o.status == "ok"]
    if not gets:
        return
    i = gets[pick % len(gets)]
    o = history[i]
    history[i] = Operation(o.client, o.op, o.key, o.invoked_ms, o.completed_ms, o.status, result=bogus)
    assert check_key([h for h in history if h.key == o.key]).linearizable is False

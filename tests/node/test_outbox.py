"""The durable outbox against a real SQLite file: group commit, ack, resend after a crash, full disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import KIND_DATA, MessageId
from agentnode.outbox import Outbox, OutboxEntry, OutboxFull, StorageError, _runs


def entry(counter: int, *, epoch: int = 1, payload: bytes = b"p", expires: int | None = None) -> OutboxEntry:
    return OutboxEntry(MessageId("node-a", epoch, counter), "node-b", "worker", "client", KIND_DATA, 1, payload,
                       expires, 1_000)


def test_put_pending_ack_in_send_order(tmp_path: Path) -> None:
    with Outbox.in_data_dir(tmp_path) as box:
        box.put_many([entry(i) for i in (3, 1, 2)])
        box.put(entry(1, epoch=2))
        assert len(box) == 4
        assert [e.msg_id for e in box.pending()] == [MessageId("node-a", 1, i) for i in (1, 2, 3)] + [
            MessageId("node-a", 2, 1)]
        assert box.pending(limit=1)[0] == entry(1)
        assert box.ack(MessageId("node-a", 1, 2)) and not box.ack(MessageId("node-a", 1, 2))
        assert box.ack_many([MessageId("node-a", 1, 1), MessageId("node-a", 9, 9)]) == 1
        assert len(box) == 2 and box.max_counter("node-a", 1) == 3
    assert (tmp_path / "outbox.sqlite3").exists()


def test_storing_an_id_twice_is_a_no_op(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        box.put(entry(1, payload=b"first"))
        box.put(entry(1, payload=b"again"))
        assert len(box) == 1 and box.pending()[0].payload == b"first"


def test_group_commit_makes_staged_entries_durable_together(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as writer, Outbox(path) as reader:
        for i in range(1, 1001):
            writer.stage(entry(i))
        assert writer.staged == 1000 and reader.pending() == []  # not durable before commit
        assert writer.commit() == 1000
        assert len(reader.pending()) == 1000
        assert writer.commit() == 0


def test_unclean_shutdown_keeps_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    crashed = Outbox(path)
    crashed.open()
    crashed.put_many([entry(i) for i in range(1, 11)])
    crashed.stage(entry(99))  # staged, never committed: lost in the crash
    # No close(): the WAL is not checkpointed. A new process opening the file must see the commits.
    with Outbox(path) as restarted:
        assert [e.msg_id.counter for e in restarted.pending()] == list(range(1, 11))
    crashed.close()


@pytest.mark.processes
def test_kill_9_after_send_returned_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import os, signal
        from agentnode.agent_messages import MessageId
        from agentnode.outbox import Outbox, OutboxEntry
        box = Outbox({str(path)!r})
        box.open()
        for batch in range(20):
            for i in range(100):
                box.stage(OutboxEntry(MessageId("a", 1, batch * 100 + i + 1), "b", "w", "", 0, 1, b"x" * 64, None, 0))
            box.commit()
        box.ack(MessageId("a", 1, 1))
        box.stage(OutboxEntry(MessageId("a", 1, 999_999), "b", "w", "", 0, 1, b"", None, 0))
        print("committed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "committed" in proc.stdout, proc.stderr
    with Outbox(path) as box:
        counters = [e.msg_id.counter for e in box.pending()]
    assert counters == list(range(2, 2001))


def test_full_disk_is_a_clear_error_and_rolls_back_the_batch(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=256 * 1024) as box:
        stored = 0
        with pytest.raises(OutboxFull, match="full"):
            for batch in range(100):
                for i in range(10):
                    box.stage(entry(batch * 10 + i + 1, payload=os.urandom(2_000)))
                box.commit()
                stored += 10
        assert stored > 0 and len(box) == stored and len(box.pending()) == stored  # failed batch rolled back
        assert box.staged == 0
        box.ack_many([e.msg_id for e in box.pending()[:50]])
        box.put(entry(10_000, payload=os.urandom(2_000)))  # room again after acks
        assert len(box) == stored - 50 + 1


def test_max_rows_bound(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_rows=5) as box:
        box.put_many([entry(i) for i in range(1, 6)])
        with pytest.raises(OutboxFull, match="max_rows"):
            box.stage(entry(6))
        box.ack(MessageId("node-a", 1, 1))
        box.put(entry(6))


def test_expire_removes_and_returns_stale_entries(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        box.put_many([entry(1, expires=500), entry(2, expires=1_500), entry(3)])
        assert [e.msg_id.counter for e in box.expire(1_000)] == [1]
        assert [e.msg_id.counter for e in box.pending()] == [2, 3] and len(box) == 2


def test_storage_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StorageError, match="cannot open the outbox"):
        Outbox(tmp_path / "dir.db").open()
    with pytest.raises(RuntimeError, match="call open"):
        Outbox(tmp_path / "x.db").pending()
    with pytest.raises(ValueError):
        Outbox(tmp_path / "x.db", synchronous="sometimes")


@settings(max_examples=200, deadline=None)
@given(st.sets(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 2), st.integers(1, 30)), max_size=40))
def test_runs_cover_exactly_the_keys_in_ranges_of_consecutive_counters(keys: set[tuple[str, int, int]]) -> None:
    """`ack_many`/`Inbox.done` delete by (origin, epoch, first..last) ranges: each range holds only given keys,
    together they hold every key, and two ranges never touch (each run is as long as it can be)."""
    runs = _runs(sorted(keys))
    covered = [(o, e, c) for o, e, first, last in runs for c in range(first, last + 1)]
    assert sorted(covered) == sorted(keys) and len(covered) == len(set(covered))
    for (o1, e1, _, l1), (o2, e2, f2, _) in zip(runs, runs[1:]):
        assert (o1, e1) < (o2, e2) or (o1, e1) == (o2, e2) and f2 > l1 + 1

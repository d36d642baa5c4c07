"""The durable outbox: messages sent in durable mode are in SQLite before `send` returns, and are sent
again after a crash and restart until acknowledged or expired. This module does I/O; it is not a core.

SQLite runs in WAL mode. With ``synchronous=NORMAL`` (the default here) a committed transaction
survives a process crash (kill -9) but the last transactions may be lost on power failure; pass
``synchronous="FULL"`` to survive power loss at the cost of one fsync per commit (SQLite docs,
"Write-Ahead Logging" and "PRAGMA synchronous").

Group commit: `stage` many entries, then one `commit` makes them all durable in one transaction. The
runtime stages every durable `send` of one event-loop iteration and resolves those sends only after
the commit, which is how tens of thousands of durable messages per second fit in a few fsyncs.

Checkpoints: the connection's automatic WAL checkpoint is off; a `WalCheckpointer` thread with a
connection of its own runs a PASSIVE checkpoint every `CHECKPOINT_EVERY` commits (or second), so the
fsyncs of a checkpoint never stall the event loop (decision 0122). Durability is unchanged: a commit is
in the WAL either way; the checkpoint only copies it into the main file.

Errors: a full disk (SQLITE_FULL), the `max_bytes` bound or the `max_rows` bound raise `OutboxFull`;
any other storage failure raises `StorageError`. Both roll back the staged batch: none of its sends
may be reported as accepted.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agentnode.agent_messages import MessageId

__all__ = ["Outbox", "OutboxEntry", "OutboxFull", "StorageError", "OUTBOX_FILE", "WalCheckpointer"]

OUTBOX_FILE = "outbox.sqlite3"
"""File name inside the node's data directory."""
DEFAULT_MAX_ROWS = 1_000_000
"""Messages the outbox holds before `OutboxFull` (bounded like every queue)."""
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CHECKPOINT_EVERY = 64
"""Commits between two background checkpoints (SQLite's own default is every 1000 WAL pages)."""
CHECKPOINT_IDLE_S = 1.0
"""The checkpointer also runs after this long without a trigger (so an idle WAL is copied back too)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    origin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    dest_node TEXT NOT NULL,
    dest_agent TEXT NOT NULL,
    src_agent TEXT NOT NULL,
    kind INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    expires_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, epoch, counter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# WITHOUT ROWID keeps one b-tree keyed by message id, so `ack` is one index seek, not two.
# Resend order is the primary-key order: (origin, epoch, counter) is the send order of one node.


class StorageError(RuntimeError):
    """The outbox could not be read or written (permissions, corruption, I/O error)."""


class OutboxFull(StorageError):
    """The disk, `max_bytes` or `max_rows` is exhausted: durable sends must fail until acks free room."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One durable message as stored."""

    msg_id: MessageId
    """Stable id; reused on resend so the receiver deduplicates it."""
    dest_node: str
    """Node it was sent to (resolve the agent again on resend if that node is gone)."""
    dest_agent: str
    src_agent: str
    kind: int
    priority: int
    payload: bytes
    expires_at_ms: int | None
    """Wall-clock ms (Unix epoch) after which it is dropped as expired; None = never."""
    created_at_ms: int
    """Wall-clock ms when it was stored."""


class WalCheckpointer:
    """Checkpoints one WAL-mode database from a thread with its own connection (SQLite releases the GIL
    while it works), so the fsyncs of a checkpoint run beside the event loop instead of inside a commit."""

    def __init__(self, path: Path, every: int = CHECKPOINT_EVERY) -> None:
        self.path = path
        self.every = every
        self.checkpoints = 0
        self.errors = 0
        self._commits = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"checkpoint-{self.path.name}", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Count one commit; every `every` commits wake the checkpointer."""
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            self._wake.set()

    def stop(self) -> None:
        """Stop and join the thread (bounded: a checkpoint in progress finishes first)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=1000")
        except sqlite3.Error:
            self.errors += 1
            return
        try:
            while not self._stop:
                self._wake.wait(CHECKPOINT_IDLE_S)
                self._wake.clear()
                if self._stop:
                    break
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error:
                    self.errors += 1  # busy or I/O: the next round tries again; the WAL keeps every commit
        finally:
            conn.close()


class Outbox:
    """SQLite-backed outbox in WAL mode. Construct, `open()`, then `stage`/`commit` (or `put`), `ack`, `pending`."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", max_rows: int = DEFAULT_MAX_ROWS,
                 max_bytes: int | None = None) -> None:
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if max_bytes is not None and max_bytes < 64 * 1024:
            raise ValueError("max_bytes must be at least 64 KiB (or None for no bound beyond the disk)")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        self._staged: list[tuple[object, ...]] = []
        self._rows = 0
        self._checkpointer: WalCheckpointer | None = None

    @classmethod
    def in_data_dir(cls, data_dir: str | Path, **kwargs: object) -> Outbox:
        """The outbox at `data_dir`/outbox.sqlite3."""
        return cls(Path(data_dir) / OUTBOX_FILE, **kwargs)  # type: ignore[arg-type]

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) and recover: rows committed before a crash are pending again."""
        if self._conn is not None:
            return
        try:
            conn = connect_wal(self.path, self.synchronous, self.max_bytes, _SCHEMA)
            self._rows = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the WalCheckpointer thread does it
        except sqlite3.Error as exc:
            raise _mapped(exc, f"cannot open the outbox {self.path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot create the outbox directory {self.path.parent}: {exc}") from exc
        self._conn = conn
        self._checkpointer = WalCheckpointer(self.path)
        self._checkpointer.start()

    def close(self) -> None:
        """Close cleanly (checkpoints the WAL). Staged, uncommitted entries are discarded."""
        self._staged.clear()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Committed rows."""
        return self._rows

    # -- writes ------------------------------------------------------------------------------------

    def stage(self, entry: OutboxEntry) -> None:
        """Add `entry` to the next `commit` (not durable yet)."""
        if self._rows + len(self._staged) >= self.max_rows:
            raise OutboxFull(f"the outbox holds {self._rows} messages (max_rows={self.max_rows}); "
                             "wait for acknowledgements or raise max_rows")
        self._staged.append((*entry.msg_id, entry.dest_node, entry.dest_agent, entry.src_agent,
                             entry.kind, entry.priority, entry.payload, entry.expires_at_ms, entry.created_at_ms))

    @property
    def staged(self) -> int:
        return len(self._staged)

    def commit(self) -> int:
        """Make every staged entry durable in one transaction; returns how many. Rolls back and raises on error."""
        if not self._staged:
            return 0
        conn = self._require()
        rows, self._staged = self._staged, []
        try:
            conn.execute("BEGIN")
            before = conn.total_changes
            # Storing an id twice is a no-op, so a resend path may re-put without duplicating.
            conn.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", rows)
            added = conn.total_changes - before
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _mapped(exc, f"cannot write {len(rows)} messages to the outbox") from exc
        self._rows += added
        self._committed()
        return len(rows)

    def put(self, entry: OutboxEntry) -> None:
        """Store one entry durably now (stage + commit)."""
        self.stage(entry)
        self.commit()

    def put_many(self, entries: Iterable[OutboxEntry]) -> int:
        """Store entries durably in one transaction."""
        for e in entries:
            self.stage(e)
        return self.commit()

    def ack(self, msg_id: MessageId) -> bool:
        """Forget an acknowledged message. True if it was stored."""
        return self.ack_many((msg_id,)) == 1

    def ack_many(self, msg_ids: Iterable[MessageId]) -> int:
        """Forget acknowledged messages in one transaction; returns how many were stored."""
        keys = sorted(set(msg_ids))  # MessageIds are (origin, epoch, counter) tuples: sorted as keys
        if not keys:
            return 0
        # Acks come mostly in send order, so consecutive counters collapse into one range delete each
        # (exact: every counter of a run is in `keys`).
        runs = _runs(keys)
        conn = self._require()
        try:
            conn.execute("BEGIN")
            before = conn.total_changes
            conn.executemany("DELETE FROM outbox WHERE origin=? AND epoch=? AND counter BETWEEN ? AND ?", runs)
            removed = conn.total_changes - before
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _mapped(exc, "cannot remove acknowledged messages from the outbox") from exc
        self._rows -= removed
        self._committed()
        return removed

    def expire(self, now_ms: int) -> list[OutboxEntry]:
        """Remove and return entries whose `expires_at_ms` <= `now_ms` (report them as Expired)."""
        conn = self._require()
        try:
            conn.execute("BEGIN")
            rows = conn.execute("SELECT * FROM outbox WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?",
                                (now_ms,)).fetchall()
            conn.execute("DELETE FROM outbox WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?", (now_ms,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _mapped(exc, "cannot expire outbox messages") from exc
        self._rows -= len(rows)
        return [_entry(r) for r in rows]

    # -- reads -------------------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[OutboxEntry]:
        """Committed, unacknowledged entries in send order (per origin and epoch); resend these after a restart."""
        conn = self._require()
        sql = "SELECT * FROM outbox ORDER BY origin, epoch, counter"
        try:
            rows = conn.execute(sql + (" LIMIT ?" if limit is not None else ""),
                                (() if limit is None else (limit,))).fetchall()
        except sqlite3.Error as exc:
            raise _mapped(exc, "cannot read the outbox") from exc
        return [_entry(r) for r in rows]

    def max_counter(self, origin: str, epoch: int) -> int:
        """Highest stored counter of (origin, epoch); 0 if none (lets a runtime continue a counter)."""
        row = self._require().execute("SELECT max(counter) FROM outbox WHERE origin=? AND epoch=?",
                                      (origin, epoch)).fetchone()
        return row[0] or 0

    def _committed(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.committed()

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("Outbox is not open; call open() (or use it as a context manager) first")
        return self._conn


def connect_wal(path: Path, synchronous: str, max_bytes: int | None, schema: str) -> sqlite3.Connection:
    """Open (creating the directory) one of the node's SQLite files the way all of them are opened:
    autocommit (transactions are explicit), WAL, the given `synchronous` level, a busy timeout, an
    optional size bound (`max_page_count`: SQLITE_FULL instead of filling the disk), then `schema`.
    Raises `sqlite3.Error` or `OSError`; callers map them to their own storage errors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        if max_bytes is not None:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(16, max_bytes // page)}")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


def _runs(keys: list[tuple[str, int, int]]) -> list[tuple[str, int, int, int]]:
    """Sorted, distinct (origin, epoch, counter) keys as (origin, epoch, first, last) runs of consecutive
    counters: one range statement per run instead of one per key (exact: every counter of a run is a key)."""
    runs: list[tuple[str, int, int, int]] = []
    if not keys:
        return runs
    origin, epoch, first = keys[0]
    last = first
    for o, e, c in keys:
        if c == last + 1 and e == epoch and o == origin:
            last = c
        elif c != first or o != origin or e != epoch:  # (the first key starts the first run)
            runs.append((origin, epoch, first, last))
            origin, epoch, first, last = o, e, c, c
    runs.append((origin, epoch, first, last))
    return runs


def _entry(r: tuple) -> OutboxEntry:  # type: ignore[type-arg]
    return OutboxEntry(MessageId(r[0], r[1], r[2]), r[3], r[4], r[5], r[6], r[7], bytes(r[8]), r[9], r[10])


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _mapped(exc: sqlite3.Error, what: str) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc).lower():
        return OutboxFull(f"{what}: the disk or the outbox size bound is full ({exc}); free space or raise max_bytes")
    return StorageError(f"{what}: {exc}")

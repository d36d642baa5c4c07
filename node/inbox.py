"""The durable inbox: the receiver's half of durable delivery. This module does I/O; it is not a core.

A durable message is recorded here (its id, and its payload until a handler has run) in one SQLite
transaction per batch, committed before the ack that lets the sender forget it leaves the node
(decision 0123). The record then serves two purposes across a receiver crash (kill -9) and restart:

- *not lost*: a message that was acked but whose handler had not finished is still `pending` and is
  handed to its agent again after the restart;
- *not twice*: a message whose handler finished is marked handled (batched, `done`), so a resend of the
  same id (the sender restarted before it saw the ack) is recognised by `accept` and dropped.

The remaining window: a crash after a handler returned and before the `done` batch holding its id was
committed (at most one loop turn) makes that message's handler run again after the restart.

Bound (garbage collection): per sender node the newest `per_sender` ids, ordered by (epoch, counter),
are kept; older handled ids are deleted once the sender exceeds the bound by 10 %. A resend of an id that
has fallen out of that window is handled again. Pending (unhandled) rows are never collected: they are
owed to a handler, and their number is bounded by the agents' inbox capacities. At most `max_senders`
sender nodes are remembered; beyond that, the handled ids of the sender seen longest ago are dropped.

SQLite runs in WAL mode with ``synchronous=NORMAL`` as the outbox does (decision 0073): committed
transactions survive kill -9. On power loss the last commits may be lost: a message acked just before
may then be lost (its sender has already forgotten it) and one handled just before may run again;
``synchronous="FULL"`` closes that at the cost of one fsync per batch.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentnode.agent_messages import MessageId
from agentnode.outbox import StorageError, WalCheckpointer, _mapped, _rollback, _runs, connect_wal

__all__ = ["Inbox", "InboxItem", "InboxWriteFailed", "INBOX_FILE", "DEFAULT_PER_SENDER", "DEFAULT_MAX_SENDERS"]

INBOX_FILE = "inbox.sqlite3"
"""File name inside the node's data directory."""
DEFAULT_PER_SENDER = 200_000
"""Handled ids remembered per sender node (the dedup window; about 60 bytes each on disk)."""
DEFAULT_MAX_SENDERS = 10_000
"""Sender nodes remembered (as delivery.MAX_DURABLE_SENDERS in memory)."""
_GC_SLACK = 10
"""Collect a sender once it holds per_sender + per_sender / _GC_SLACK ids (amortises the delete)."""
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox_seen (
    origin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    seen_at_ms INTEGER NOT NULL,
    PRIMARY KEY (origin, epoch, counter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_pending (
    origin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    src_agent TEXT NOT NULL,
    dest_agent TEXT NOT NULL,
    kind INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (origin, epoch, counter)
) WITHOUT ROWID;
"""
# Two tables keyed by message id: `inbox_seen` (small rows) is the dedup record, whose primary-key
# conflict is the duplicate check; `inbox_pending` holds the payloads owed to a handler. `done` deletes
# from `inbox_pending` by ranges of consecutive counters (handlers finish mostly in send order), which
# costs about a third of updating a row in place. The origin of a message id is its sender node.
_FORGET = ("DELETE FROM inbox_seen WHERE origin=? AND NOT EXISTS (SELECT 1 FROM inbox_pending p WHERE "
           "p.origin = inbox_seen.origin AND p.epoch = inbox_seen.epoch AND p.counter = inbox_seen.counter)")
"""Forget handled ids of one sender (an id still pending stays: it is owed to a handler)."""
_SEEN = "INSERT INTO inbox_seen VALUES (?,?,?,?) ON CONFLICT DO NOTHING"
_PENDING = "INSERT INTO inbox_pending VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"


class InboxWriteFailed(StorageError):
    """`accept` could not commit. `handled` says whether its `handle` callback had already run (then the
    caller must not hand those messages to their handlers a second time)."""

    def __init__(self, message: str, handled: bool) -> None:
        super().__init__(message)
        self.handled = handled


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One durable message as received."""

    msg_id: MessageId
    sender_node: str
    src_agent: str
    dest_agent: str
    kind: int
    priority: int
    payload: bytes
    expires_at_ms: int | None
    """Wall-clock ms (Unix epoch) after which it is stale; None = never."""


class Inbox:
    """SQLite-backed receipt log. Construct, `open()`, then `accept` (batch), `done` (batch), `pending`."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", per_sender: int = DEFAULT_PER_SENDER,
                 max_senders: int = DEFAULT_MAX_SENDERS) -> None:
        if synchronous.upper() not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNC_MODES)}")
        if per_sender < 1 or max_senders < 1:
            raise ValueError("per_sender and max_senders must be at least 1")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.per_sender = per_sender
        self.max_senders = max_senders
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._count: dict[str, int] = {}
        """Rows per sender node (origin), in the order senders were last seen (oldest first)."""

    @classmethod
    def in_data_dir(cls, data_dir: str | Path, **kwargs: object) -> Inbox:
        """The inbox at `data_dir`/inbox.sqlite3."""
        return cls(Path(data_dir) / INBOX_FILE, **kwargs)  # type: ignore[arg-type]

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = connect_wal(self.path, self.synchronous, None, _SCHEMA)
            rows = conn.execute("SELECT origin, count(*), max(seen_at_ms) FROM inbox_seen GROUP BY origin").fetchall()
            conn.execute("PRAGMA wal_autocheckpoint=0")  # a WalCheckpointer thread does it (as the outbox's)
        except sqlite3.Error as exc:
            raise _mapped(exc, f"cannot open the inbox {self.path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot create the inbox directory {self.path.parent}: {exc}") from exc
        self._count = {origin: n for origin, n, _ in sorted(rows, key=lambda r: (r[2], r[0]))}
        self._conn = conn
        self._checkpointer = WalCheckpointer(self.path)
        self._checkpointer.start()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Inbox:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return sum(self._count.values())

    # -- writes ------------------------------------------------------------------------------------

    def accept(self, items: Sequence[Any], now_ms: int,
               handle: Callable[[list[bool]], Sequence[InboxItem]] | None = None) -> list[bool]:
        """Record the ids of `items` (anything with a `msg_id`) in one transaction; returns per item True (new:
        hand it to its handler) or False (recorded before, in this life or an earlier one: drop it).
        `now_ms` is wall-clock ms.

        Without `handle`, every new item (an `InboxItem`) is stored as pending. With it, `handle(fresh)` runs
        inside the transaction: it runs the handlers it can run at once and returns the `InboxItem`s it
        could not (queued for a worker), which are stored as pending; then the transaction commits. A crash
        before that commit leaves none of them recorded and no ack sent, so the sender resends them, and a
        handler that had already run runs again (the window of decision 0123)."""
        if not items:
            return []
        conn = self._require()
        seen = [(*i.msg_id, now_ms) for i in items]  # (origin, epoch, counter, seen_at_ms)
        handled = False
        try:
            conn.execute("BEGIN")
            before = conn.total_changes
            conn.executemany(_SEEN, seen)
            if conn.total_changes - before == len(seen):
                fresh = [True] * len(seen)  # the common case: no duplicate, one executemany
            else:
                # Some were known: redo row by row to learn which (rare: resends across restarts).
                conn.execute("ROLLBACK")
                conn.execute("BEGIN")
                cur = conn.cursor()
                fresh = []
                for row in seen:
                    cur.execute(_SEEN, row)
                    fresh.append(cur.rowcount == 1)
            if handle is None:
                keep: Sequence[InboxItem] = [i for i, new in zip(items, fresh) if new]
            else:
                handled = True
                keep = handle(fresh)
            if keep:
                conn.executemany(_PENDING, [(i.msg_id.origin, i.msg_id.epoch, i.msg_id.counter, i.src_agent,
                                             i.dest_agent, i.kind, i.priority, i.payload, i.expires_at_ms)
                                            for i in keep])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise InboxWriteFailed(f"cannot record {len(seen)} durable messages in the inbox: {exc}",
                                   handled) from exc
        origins = [row[0] for row in seen]
        if not all(fresh):
            origins = [o for o, new in zip(origins, fresh) if new]
        added = Counter(origins)
        count = self._count
        # Each origin with new rows re-inserted, most recently seen last (in the order of its last new row).
        for origin in reversed(dict.fromkeys(reversed(origins))):
            count[origin] = count.pop(origin, 0) + added[origin]
        self._collect(list(added))
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return fresh

    def done(self, msg_ids: Iterable[MessageId]) -> int:
        """Mark messages handled (their payload is dropped; the id stays for dedup). One transaction."""
        keys = sorted(set(msg_ids))  # MessageIds are (origin, epoch, counter) tuples: sorted as keys
        if not keys:
            return 0
        runs = _runs(keys)  # consecutive counters -> one range delete (exact)
        conn = self._require()
        try:
            conn.execute("BEGIN")
            before = conn.total_changes
            conn.executemany("DELETE FROM inbox_pending WHERE origin=? AND epoch=? AND counter BETWEEN ? AND ?", runs)
            changed = conn.total_changes - before
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _mapped(exc, f"cannot mark {len(keys)} durable messages handled") from exc
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return changed

    def _collect(self, origins: Sequence[str]) -> None:
        conn = self._require()
        limit = self.per_sender + max(1, self.per_sender // _GC_SLACK)
        checked: set[str] = set()
        for origin in origins:
            if origin in checked or self._count.get(origin, 0) <= limit:
                continue
            checked.add(origin)
            try:
                cut = conn.execute("SELECT epoch, counter FROM inbox_seen WHERE origin=? ORDER BY epoch DESC, "
                                   "counter DESC LIMIT 1 OFFSET ?", (origin, self.per_sender)).fetchone()
                if cut is not None:
                    conn.execute(_FORGET + " AND (epoch < ? OR epoch = ? AND counter <= ?)",
                                 (origin, cut[0], cut[0], cut[1]))
                self._count[origin] = conn.execute("SELECT count(*) FROM inbox_seen WHERE origin=?",
                                                   (origin,)).fetchone()[0]
            except sqlite3.Error as exc:
                raise _mapped(exc, "cannot collect old inbox ids") from exc
        while len(self._count) > self.max_senders:
            oldest = next(iter(self._count))
            try:
                conn.execute(_FORGET, (oldest,))
                left = conn.execute("SELECT count(*) FROM inbox_seen WHERE origin=?", (oldest,)).fetchone()[0]
            except sqlite3.Error as exc:
                raise _mapped(exc, "cannot forget an old sender's inbox ids") from exc
            del self._count[oldest]
            if left:
                self._count[oldest] = left  # unhandled rows stay; it moves to the newest end
                break

    # -- reads -------------------------------------------------------------------------------------

    def pending(self) -> list[InboxItem]:
        """Recorded, not yet handled messages, in id order per sender: hand these to their agents after a restart."""
        conn = self._require()
        try:
            rows = conn.execute("SELECT * FROM inbox_pending ORDER BY origin, epoch, counter").fetchall()
        except sqlite3.Error as exc:
            raise _mapped(exc, "cannot read the inbox") from exc
        return [InboxItem(MessageId(r[0], r[1], r[2]), r[0], r[3], r[4], r[5], r[6], bytes(r[7]), r[8]) for r in rows]

    def seen(self, msg_id: MessageId) -> bool:
        """Whether `msg_id` is recorded (pending or handled)."""
        row = self._require().execute("SELECT 1 FROM inbox_seen WHERE origin=? AND epoch=? AND counter=?",
                                      (msg_id.origin, msg_id.epoch, msg_id.counter)).fetchone()
        return row is not None

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("Inbox is not open; call open() (or use it as a context manager) first")
        return self._conn

"""`node.state`: the asyncio face of the replicated CRDT store, and its SQLite persistence.

    async with Node(config) as node:
        await node.state.increment("jobs.done")                        # local: returns at once
        await node.state.add("claimed", "task-7", consistency="majority")
        print(await node.state.get("claimed", consistency="majority"))
        async for change in node.state.watch("claimed"): ...

Every call applies to the local replica first (so both sides of a partition keep writing) and then
replicates through `replication.Replicator`; `consistency` says how many replicas must hold the
write, or be merged into the read, before the call returns (`local`, `one`, an int n, `majority`,
`all`). `linearizable` is served by the Raft group instead: such keys live in its key-value map
(prefix `state/`), apart from the CRDT replicas, and counters and sets update by compare-and-set;
on the minority side of a partition these calls fail fast with `NoQuorum`.

Persistence: the local replica lives in `state.sqlite3` in the data directory (WAL mode,
synchronous=NORMAL: a committed change survives kill -9; the last ones may be lost on power
failure). A local write is committed before the call returns, and nothing this node sends (deltas,
acks, repairs) leaves before the changes it reflects are committed, so a restart never reuses an
event id a peer has seen. A full disk (or the `db_bytes_max` bound) raises `StateStorageError`; the
transaction rolls back, so the file stays consistent, and further writes are refused until a retry
commits. This module does I/O; the protocol is in `replication.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from agentnode import events as ev
from agentnode.crdt import CodecError, LWWRegister, StateStore, StoreLimits, VectorClock, WireLimits, from_wire, to_wire
from agentnode.crdt.store import Repair, markers_from_wire, markers_to_wire
from agentnode.outbox import connect_wal
from agentnode.replication import (
    FRAME_TYPES,
    Consistency,
    ConsistencyNotMet,
    ConsistencyUnavailable,
    KeyChanged,
    ReadDone,
    ReplicationConfig,
    Replicator,
    StateError,
    WriteDone,
)

__all__ = [
    "STATE_FILE",
    "ConsistencyNotMet",
    "ConsistencyUnavailable",
    "NodeState",
    "StateChange",
    "StateDb",
    "StateError",
    "StateStorageError",
]

log = logging.getLogger("agentnode.state")

STATE_FILE = "state.sqlite3"
"""File name inside the node's data directory."""
WATCH_QUEUE_MAX = 256
"""Changes buffered per watcher; a watcher further behind loses the oldest (the newest value always arrives)."""
WATCHERS_MAX = 10_000
"""Concurrent `watch` iterators per node."""
RETRY_STORAGE_MS = 1_000
"""How often a failed commit is retried."""
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS markers (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
# `markers`: a key's prune markers (decision 0024), apart from `entries` so rows written before they
# existed load unchanged; `meta.retired` lists replica ids retired for good.


class StateStorageError(StateError):
    """The local replica could not be read or written (full disk, size bound, corruption, permissions)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of a watched key, as the local replica sees it after the change."""

    key: str
    value: Any
    """The value now (None when deleted or absent)."""
    deleted: bool
    """The key holds a tombstone (or is gone)."""
    source: str
    """"initial" (the value when watching started), "local", "delta", "write", "repair" or "read"."""


# -- persistence -------------------------------------------------------------------------------


class StateDb:
    """The local replica on disk: one row per key (its full CRDT state), the keys' prune markers, plus the
    seen vector, the retired replica ids and the epoch."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", max_bytes: int | None = None) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        if max_bytes is not None and max_bytes < 64 * 1024:
            raise ValueError("max_bytes must be at least 64 KiB (or None for no bound beyond the disk)")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            conn = connect_wal(self.path, self.synchronous, self.max_bytes, _SCHEMA)
        except sqlite3.Error as exc:
            raise _mapped(exc, f"cannot open the state database {self.path}") from exc
        except OSError as exc:
            raise StateStorageError(f"cannot create the data directory {self.path.parent}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def begin_epoch(self) -> int:
        """The next boot epoch (strictly greater than any before), committed at once."""
        epoch = int(self._meta("epoch", -1)) + 1
        self.commit({}, None, epoch=epoch)
        return epoch

    def load(self, replica_id: str, limits: StoreLimits | None) -> tuple[StateStore, int]:
        """Rebuild the store; return it and the number of unreadable rows skipped (peers repair them)."""
        conn = self._require()
        store = StateStore(replica_id, limits)
        skipped = 0
        try:
            rows = conn.execute("SELECT key, state FROM entries ORDER BY key").fetchall()
            marker_rows = dict(conn.execute("SELECT key, value FROM markers").fetchall())
        except sqlite3.Error as exc:
            raise _mapped(exc, f"cannot read the state database {self.path}") from exc
        retired = self._meta("retired", [])
        for replica in retired if isinstance(retired, list) else []:
            if isinstance(replica, str) and replica and replica != replica_id:
                store.retire(replica)
        for key, blob in rows:
            try:
                marks = marker_rows.get(key)
                pruned = markers_from_wire(msgpack.unpackb(marks, raw=False), store.limits.wire) if marks else ()
                store.apply_state(key, from_wire(msgpack.unpackb(blob, raw=False), store.limits.wire), pruned)
            except (CodecError, ValueError, TypeError, msgpack.UnpackException) as exc:
                skipped += 1
                log.warning("skipping unreadable state of key %r: %s", key, exc)
            except Exception as exc:  # a limit lowered since it was written
                skipped += 1
                log.warning("skipping state of key %r: %s", key, exc)
        seen = self._meta("seen", [])
        counters = {seen[i]: seen[i + 1] for i in range(0, len(seen), 2)} if isinstance(seen, list) else {}
        # Restoring the seen vector keeps this replica's event counter above every event it issued.
        store.apply_repair(Repair((), VectorClock(counters), True))
        return store, skipped

    def commit(self, entries: dict[str, bytes | None], seen: list[Any] | None, *, epoch: int | None = None,
               markers: dict[str, bytes | None] | None = None, retired: list[str] | None = None) -> None:
        """Write changed keys (None deletes the row), their prune markers, the seen vector and the
        retired ids in one transaction."""
        conn = self._require()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                upserts = [(k, v) for k, v in entries.items() if v is not None]
                deletes = [(k,) for k, v in entries.items() if v is None]
                if upserts:
                    conn.executemany("INSERT OR REPLACE INTO entries (key, state) VALUES (?, ?)", upserts)
                if deletes:
                    conn.executemany("DELETE FROM entries WHERE key = ?", deletes)
                if markers:
                    marks = [(k, v) for k, v in markers.items() if v is not None]
                    unmarks = [(k,) for k, v in markers.items() if v is None]
                    if marks:
                        conn.executemany("INSERT OR REPLACE INTO markers (key, value) VALUES (?, ?)", marks)
                    if unmarks:
                        conn.executemany("DELETE FROM markers WHERE key = ?", unmarks)
                if retired is not None:
                    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('retired', ?)", (msgpack.packb(retired),))
                if seen is not None:
                    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('seen', ?)", (msgpack.packb(seen),))
                if epoch is not None:
                    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('epoch', ?)", (msgpack.packb(epoch),))
                    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('schema', ?)", (msgpack.packb(SCHEMA_VERSION),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLITE_FULL may have rolled back already
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _mapped(exc, f"cannot write the state database {self.path}") from exc

    def size_bytes(self) -> int:
        conn = self._require()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])

    def _meta(self, name: str, default: Any) -> Any:
        row = self._require().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return default
        try:
            return msgpack.unpackb(row[0], raw=False)
        except (ValueError, msgpack.UnpackException):
            return default

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateStorageError("the state database is not open")
        return self._conn


def _mapped(exc: sqlite3.Error, what: str) -> StateStorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "full" in str(exc).lower():
        return StateStorageError(
            f"{what}: the disk or the state size bound is full ({exc}). Nothing was corrupted: the last "
            "committed state is intact. Free disk space (or raise db_bytes_max); writes are refused until then."
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StateStorageError(f"{what}: the file is damaged ({exc}); move it away and restart (peers repair this replica)")
    return StateStorageError(f"{what}: {exc}")


# -- the asyncio service -----------------------------------------------------------------------


class NodeState:
    """`node.state`: get/update/delete with a consistency level, `watch`, persistence in the data directory.

    Constructed by the runtime (allocates only); `start()` opens the database and plugs the
    replication core into the node's frame channels and membership events.
    """

    def __init__(
        self,
        node: Any,
        *,
        config: ReplicationConfig | None = None,
        limits: StoreLimits | None = None,
        db_bytes_max: int | None = None,
        synchronous: str = "NORMAL",
    ) -> None:
        self._node = node
        self._config = config
        self._limits = limits
        self._db: StateDb | None = None
        self._db_bytes_max = db_bytes_max
        self._synchronous = synchronous
        self._core: Replicator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._pump_scheduled = False
        self._unsaved: dict[str, None] = {}
        self._saved_retired: list[str] = []
        self._storage_error: StateStorageError | None = None
        self._waiters: dict[int, asyncio.Future[WriteDone | ReadDone]] = {}
        self._watchers: dict[str, list[asyncio.Queue[StateChange]]] = {}
        self._watcher_count = 0
        self._closed = False
        self.counters: dict[str, int] = {
            "frames_dropped_unsaved": 0, "frames_backpressure": 0, "watch_dropped": 0, "commits": 0,
            "commit_failures": 0, "rows_skipped_on_load": 0,
        }

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the local replica, plug into the node; called by the runtime once its transport runs."""
        node = self._node
        self._loop = asyncio.get_running_loop()
        data_dir = Path(node.config.data_dir).expanduser().resolve()
        self._db = StateDb(data_dir / STATE_FILE, synchronous=self._synchronous, max_bytes=self._db_bytes_max)
        self._db.open()
        epoch = self._db.begin_epoch()
        store, skipped = self._db.load(node.node_id, self._limits)
        self._saved_retired = store.retired()
        self.counters["rows_skipped_on_load"] = skipped
        seed = node.config.seed
        rng = random.Random(f"{seed}:state" if seed is not None else os.urandom(16))
        self._core = Replicator(store, cluster=node.config.cluster, epoch=epoch, rng=rng, config=self._config)
        while self._core.next_event() is not None:
            pass
        for frame_type in FRAME_TYPES:
            node.add_channel(frame_type, self._on_frame)
        node.add_member_listener(self._on_member_event)
        log.info("state: %d keys loaded from %s (epoch %d)", len(store.keys()), self._db.path, epoch)

    def close(self) -> None:
        """Commit what is pending, end watchers and waiters, close the database."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._core is not None and self._db is not None:
            try:
                self._drain_events()
                self._commit()
            except StateStorageError as exc:
                log.error("state: changes not saved at shutdown: %s", exc)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(StateError("the node stopped before the replicas answered"))
        self._waiters.clear()
        for queues in self._watchers.values():
            for queue in queues:
                _put_dropping_oldest(queue, None)  # type: ignore[arg-type]  # end-of-stream marker
        if self._db is not None:
            self._db.close()

    # -- the API ------------------------------------------------------------------------------

    async def get(self, key: str, *, consistency: str | int | Consistency = "local", timeout_s: float | None = None) -> Any:
        """The value of `key` (None if absent or deleted), after merging `consistency` replicas."""
        if _linearizable(consistency):
            return _unpack((await self._raft().kv_get(LINEARIZABLE_PREFIX + key)).value)
        core = self._require()
        request_id = core.read(key, self._node.now_ms(), consistency, _ms(timeout_s))
        if request_id is not None:
            done = await self._wait(request_id)
            if done.error is not None:
                raise ConsistencyNotMet(done.error, required=done.required, got=done.replies)
        return core.value(key)

    async def update(self, key: str, type_name: str, op: str, *args: Any, consistency: str | int | Consistency = "local",
                     timeout_s: float | None = None) -> None:
        """Apply `op(*args)` to the CRDT `type_name` at `key` (created if absent), e.g.
        `update("hits", "gcounter", "increment", 1)`; return once `consistency` replicas hold it."""
        if _linearizable(consistency):
            await self._linearizable_update(key, type_name, op, args)
            return
        core = self._require_writable()
        try:
            request_id = core.update(key, type_name, op, args, self._node.now_ms(), consistency, _ms(timeout_s))
        finally:
            self._pump(commit_required=True)
        await self._finish_write(request_id)

    async def delete(self, key: str, *, consistency: str | int | Consistency = "local", timeout_s: float | None = None) -> None:
        """Delete `key` everywhere (the delete wins over concurrent writes; reuse the key only after GC)."""
        if _linearizable(consistency):
            await self._raft().kv_delete(LINEARIZABLE_PREFIX + key)
            return
        core = self._require_writable()
        try:
            request_id = core.delete(key, self._node.now_ms(), consistency, _ms(timeout_s))
        finally:
            self._pump(commit_required=True)
        await self._finish_write(request_id)

    async def set(self, key: str, value: Any, **kwargs: Any) -> None:
        """Last-writer-wins register: `value` replaces the current one (hybrid-clock timestamp)."""
        if _linearizable(kwargs.get("consistency")):
            await self._raft().kv_put(LINEARIZABLE_PREFIX + key, _pack(value))
            return
        current = self._require().store.get(key)
        floor = current.timestamp if isinstance(current, LWWRegister) else -1
        stamp = max(time.time_ns() // 1_000_000, floor + 1)
        await self.update(key, "lwwregister", "assign", value, stamp, **kwargs)

    async def increment(self, key: str, n: int = 1, **kwargs: Any) -> None:
        """Counter (PN-counter): add `n` (negative subtracts)."""
        if type(n) is not int or n == 0:
            raise ValueError("n must be a non-zero int")
        await self.update(key, "pncounter", "increment" if n > 0 else "decrement", abs(n), **kwargs)

    async def add(self, key: str, element: Any, **kwargs: Any) -> None:
        """Set (OR-set, add wins over a concurrent remove): add `element`."""
        await self.update(key, "orset", "add", element, **kwargs)

    async def remove(self, key: str, element: Any, **kwargs: Any) -> None:
        """Set: remove `element` (only the adds this replica has seen)."""
        await self.update(key, "orset", "remove", element, **kwargs)

    # -- linearizable: the Raft group's key-value map ------------------------------------------

    def _raft(self) -> Any:
        raft = getattr(self._node, "raft", None)
        if raft is None:
            raise ConsistencyUnavailable("linearizable reads and writes need the Raft group, which this node does not run")
        return raft

    async def _linearizable_update(self, key: str, type_name: str, op: str, args: tuple[Any, ...]) -> None:
        """Counters and sets as compare-and-set loops on one Raft key: each step is linearizable."""
        raft, name = self._raft(), LINEARIZABLE_PREFIX + key
        for _ in range(LINEARIZABLE_CAS_ATTEMPTS_MAX):
            current = (await raft.kv_get(name)).value
            value = _apply_plain(type_name, op, args, _unpack(current))
            result = await raft.kv_cas(name, current, _pack(value))
            if result.ok:
                return
        raise ConsistencyNotMet(
            f"linearizable update of {key!r} lost {LINEARIZABLE_CAS_ATTEMPTS_MAX} compare-and-set races in a row; retry",
            required=1, got=0,
        )

    def keys(self) -> list[str]:
        """Live keys of the local replica, sorted."""
        return self._require().store.keys()

    def type_of(self, key: str) -> str | None:
        return self._require().store.type_of(key)

    def local_value(self, key: str, default: Any = None) -> Any:
        return self._require().value(key, default)

    async def watch(self, key: str, *, initial: bool = True) -> AsyncIterator[StateChange]:
        """Changes of `key` as the local replica sees them (first its current value, unless `initial=False`),
        until the node stops. A slow consumer skips intermediate changes, never the latest."""
        core = self._require()
        if self._watcher_count >= WATCHERS_MAX:
            raise StateError(f"{WATCHERS_MAX} watchers are already open on this node; close some first")
        queue: asyncio.Queue[StateChange] = asyncio.Queue(WATCH_QUEUE_MAX)
        self._watchers.setdefault(key, []).append(queue)
        self._watcher_count += 1
        try:
            if initial and core.store.type_of(key) is not None:
                yield self._change(key, "initial")
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._watchers[key].remove(queue)
            if not self._watchers[key]:
                del self._watchers[key]
            self._watcher_count -= 1

    def stats(self) -> dict[str, Any]:
        core = self._require()
        store = core.store
        return {
            "keys": len(store.keys()),
            "tombstones": len(store.tombstones()),
            "retired": store.retired(),
            "prune_markers": store.marker_count(),
            "roster": core.roster(),
            "stream_lag": core.stream_lag(),
            "db_path": str(self._db.path) if self._db else None,
            "db_bytes": self._db.size_bytes() if self._db else None,
            "storage_error": str(self._storage_error) if self._storage_error else None,
            "epoch": core.epoch,
            "replication": dict(core.counters),
            "store": {name: getattr(store.stats, name) for name in store.stats.__dataclass_fields__},
            "service": dict(self.counters),
        }

    def retire(self, node_id: str) -> None:
        """Retire `node_id` for good (decommissioned): its entries are folded into one owner's and
        its id is refused from then on. Revoked nodes are retired automatically."""
        self._require().retire(node_id, self._node.now_ms())
        self._schedule_pump()

    @property
    def replicator(self) -> Replicator:
        """The sans-I/O core (tests and diagnostics)."""
        return self._require()

    # -- control endpoint ---------------------------------------------------------------------

    def add_control_ops(self, control: Any) -> None:
        """Register `state.*` operations on the node's control endpoint (used by `agentnode state`)."""

        async def get(args: dict[str, Any]) -> Any:
            key = _arg_key(args)
            value = await self.get(key, consistency=args.get("consistency", "local"), timeout_s=args.get("timeout_s"))
            return {"key": key, "type": self._require().store.type_of(key), "value": jsonable(value)}

        async def update(args: dict[str, Any]) -> Any:
            key = _arg_key(args)
            kind = args.get("kind")
            level = args.get("consistency", "local")
            timeout = args.get("timeout_s")
            if kind == "set":
                await self.set(key, args.get("value"), consistency=level, timeout_s=timeout)
            elif kind == "incr":
                await self.increment(key, int(args.get("n", 1)), consistency=level, timeout_s=timeout)
            elif kind in ("add", "remove"):
                element = args.get("element")
                await (self.add if kind == "add" else self.remove)(key, element, consistency=level, timeout_s=timeout)
            elif kind == "delete":
                await self.delete(key, consistency=level, timeout_s=timeout)
            else:
                raise ValueError(f"unknown state update kind {kind!r}; use set, incr, add, remove or delete")
            return {"key": key, "type": self._require().store.type_of(key), "value": jsonable(self.local_value(key))}

        async def keys(_: dict[str, Any]) -> Any:
            return self.keys()

        async def stats(_: dict[str, Any]) -> Any:
            return jsonable(self.stats())

        async def retire(args: dict[str, Any]) -> Any:
            node_id = args.get("node_id")
            if type(node_id) is not str or not node_id:
                raise ValueError("state.retire needs node_id: the id of a node gone for good")
            if len(node_id) > 64 or not all(c.isalnum() or c in "._-" for c in node_id):
                raise ValueError(f"{node_id!r} is not a node id (`agentnode peers` lists them)")
            self.retire(node_id)
            return {"retired": self._require().retired()}

        async def watch(args: dict[str, Any]) -> AsyncIterator[Any]:
            key = _arg_key(args)
            async for change in self.watch(key):
                yield {"key": change.key, "value": jsonable(change.value), "deleted": change.deleted, "source": change.source}

        control.add("state.get", get)
        control.add("state.update", update)
        control.add("state.keys", keys)
        control.add("state.stats", stats)
        control.add("state.retire", retire)
        control.add_stream("state.watch", watch)

    # -- plumbing -----------------------------------------------------------------------------

    def _on_frame(self, sender_id: str, frame: Any) -> None:
        if self._core is None or self._closed:
            return
        self._core.receive(sender_id, frame, self._node.now_ms())
        self._schedule_pump()

    def _on_member_event(self, event: ev.NodeEvent) -> None:
        core = self._core
        if core is None or self._closed:
            return
        now = self._node.now_ms()
        if isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberUpdated)):
            core.member_up(event.node_id, event.address, now)
        elif isinstance(event, (ev.MemberFailed, ev.MemberLeft)):
            raft = getattr(self._node, "raft", None)
            if raft is not None and raft.refuses(event.node_id):
                core.retire(event.node_id, now)  # revoked through the Raft group: gone for good (decision 0024)
            else:
                core.member_down(event.node_id, now, left=isinstance(event, ev.MemberLeft))
        else:
            return
        self._schedule_pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._core is None or self._closed:
            return
        now = self._node.now_ms()
        self._retire_revoked(now)
        self._core.handle_timer(now)
        self._pump()

    def _retire_revoked(self, now: int) -> None:
        """Retire failed roster members the Raft group has revoked since membership reported them."""
        raft = getattr(self._node, "raft", None)
        core = self._core
        if raft is None or core is None:
            return
        for node_id, live in core.roster().items():
            if not live and node_id != core.node_id and raft.refuses(node_id):
                core.retire(node_id, now)

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self, *, commit_required: bool = False) -> None:
        """Commit changed keys, then send frames, then wake waiters and watchers; re-arm the timer.

        With `commit_required` a failed commit raises `StateStorageError` to the caller (after
        the frames it would have sent are dropped: nothing leaves before it is on disk).
        """
        self._pump_scheduled = False
        core = self._core
        if core is None or self._closed:
            return
        events = self._drain_events()
        error: StateStorageError | None = None
        try:
            self._commit()
        except StateStorageError as exc:
            error = exc
        outgoing = core.messages_to_send()
        if error is None:
            for out in outgoing:
                if not self._node.send_frame(out.address, out.frame, out.peer_id):
                    self.counters["frames_backpressure"] += 1
        else:
            self.counters["frames_dropped_unsaved"] += len(outgoing)
        for event in events:
            self._dispatch(event)
        self._arm_timer(core.get_timer(), retry=error is not None)
        if error is not None and commit_required:
            raise error

    def _drain_events(self) -> list[Any]:
        core = self._core
        assert core is not None
        events = []
        while (event := core.next_event()) is not None:
            events.append(event)
            if isinstance(event, KeyChanged):
                self._unsaved[event.key] = None
        return events

    def _commit(self) -> None:
        core, db = self._core, self._db
        assert core is not None and db is not None
        if not self._unsaved and self._storage_error is None and core.store.retired() == self._saved_retired:
            return
        store = core.store
        keys = list(self._unsaved)
        states = store.state_for(keys)
        entries: dict[str, bytes | None] = {}
        markers: dict[str, bytes | None] = {}
        for key in keys:
            state = states.get(key)
            entries[key] = None if state is None else msgpack.packb(to_wire(state, _UNBOUNDED), use_bin_type=True)
            held = store.markers(key)
            markers[key] = msgpack.packb(markers_to_wire(held)) if held and state is not None else None
        seen: list[Any] = []
        for replica, counter in store.seen().items():
            seen.extend((replica, counter))
        retired = store.retired()
        try:
            db.commit(entries, seen, markers=markers, retired=retired if retired != self._saved_retired else None)
        except StateStorageError as exc:
            self.counters["commit_failures"] += 1
            if self._storage_error is None:
                log.error("state: %s", exc)
            self._storage_error = exc
            raise
        self.counters["commits"] += 1
        self._saved_retired = retired
        if self._storage_error is not None:
            log.info("state: the state database accepts writes again")
        self._storage_error = None
        self._unsaved.clear()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, KeyChanged):
            if event.source != "gc" and event.key in self._watchers:
                change = self._change(event.key, event.source)
                for queue in self._watchers[event.key]:
                    if _put_dropping_oldest(queue, change):
                        self.counters["watch_dropped"] += 1
        elif isinstance(event, (WriteDone, ReadDone)):
            fut = self._waiters.pop(event.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(event)

    def _change(self, key: str, source: str) -> StateChange:
        core = self._require()
        kind = core.store.type_of(key)
        return StateChange(key, core.value(key), kind in (None, "tombstone"), source)

    def _arm_timer(self, when: int | None, *, retry: bool) -> None:
        if retry:
            due = self._node.now_ms() + RETRY_STORAGE_MS
            when = due if when is None else min(when, due)
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if when is not None and self._loop is not None:
            self._timer_at = when
            self._timer = self._loop.call_at(max(when, self._node.now_ms()) / 1000.0, self._on_timer)

    async def _finish_write(self, request_id: int | None) -> None:
        if request_id is None:
            return
        done = await self._wait(request_id)
        if done.error is not None:
            raise ConsistencyNotMet(done.error, required=done.required, got=done.acks)  # type: ignore[union-attr]

    async def _wait(self, request_id: int) -> Any:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters[request_id] = fut
        self._schedule_pump()
        return await fut  # the core's deadline always answers; no extra timeout needed

    def _require(self) -> Replicator:
        if self._core is None or self._closed:
            raise StateError("node.state is not running; use it inside `async with Node(config) as node:`")
        return self._core

    def _require_writable(self) -> Replicator:
        core = self._require()
        if self._storage_error is not None:
            try:
                self._commit()
            except StateStorageError as exc:
                raise StateStorageError(f"write refused: {exc}") from None
        return core


_UNBOUNDED = WireLimits(items_max=2**62, depth_max=64, bytes_max=2**62, replicas_max=2**62)
"""The store checked limits when data got in; saving never refuses what the replica holds."""


def _ms(timeout_s: float | None) -> int | None:
    if timeout_s is None:
        return None
    if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError("timeout_s must be a positive number of seconds")
    return max(1, int(timeout_s * 1000))


def _arg_key(args: dict[str, Any]) -> str:
    key = args.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("a non-empty key is required")
    return key


def _put_dropping_oldest(queue: asyncio.Queue[Any], item: Any) -> bool:
    dropped = False
    if queue.full():
        queue.get_nowait()
        dropped = True
    queue.put_nowait(item)
    return dropped


def jsonable(value: Any) -> Any:
    """CRDT values as JSON: sets become sorted lists, tuples lists, bytes hex."""
    if isinstance(value, (frozenset, set)):
        items = [jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


LINEARIZABLE_PREFIX = "state/"
"""Linearizable keys live in the Raft group's key-value map, apart from the CRDT replicas."""
LINEARIZABLE_CAS_ATTEMPTS_MAX = 16
"""Compare-and-set retries for a linearizable counter or set update under contention."""


def _linearizable(consistency: object) -> bool:
    return isinstance(consistency, str) and consistency.strip().lower() == "linearizable"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes | None) -> Any:
    return None if data is None else msgpack.unpackb(data, raw=False)


def _apply_plain(type_name: str, op: str, args: tuple[Any, ...], current: Any) -> Any:
    """The sequential meaning of a CRDT operation, for values kept linearizably as plain data."""
    if type_name in ("gcounter", "pncounter") and op in ("increment", "decrement"):
        n = int(args[0]) if args else 1
        return (current or 0) + (n if op == "increment" else -n)
    if type_name == "orset" and op in ("add", "remove"):
        members = list(current or [])
        if op == "add" and args[0] not in members:
            members.append(args[0])
        elif op == "remove" and args[0] in members:
            members.remove(args[0])
        return sorted(members, key=repr)
    if type_name in ("lwwregister", "mvregister") and op in ("assign", "write"):
        return args[0]
    raise ValueError(f"{type_name}.{op} has no linearizable form; use set, increment, add or remove")

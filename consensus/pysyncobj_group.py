"""`ConsensusGroup` over pysyncobj 0.3.17, carried by the node's authenticated `RaftLink`.

How pysyncobj is contained (docs/decisions/0030-raft-over-node-transport.md):
- Its TCP transport is replaced by `_LinkTransport`: no socket is opened, and frames come only
  from the `RaftLink` (the node's mutually authenticated channel). Frames from ids that are not
  voters are dropped. Bytes are decoded by `raft_codec` (msgpack, allow-listed, never pickle).
- ONE replicated method, ``apply_entry(payload: bytes)``, hands each committed entry to the pure
  `CriticalState`. Its full dump is our own msgpack file (custom serializer/deserializer), so a
  snapshot sent by the leader is validated, never unpickled; ``useFork=False``.
- ``autoTick=False``: the group drives ``doTick(0)`` from an asyncio timer on the event loop, and
  in the loop turn after a received frame or a proposal (``call_soon``). Everything pysyncobj does
  therefore runs on the loop thread: no locks, no tick thread, no sleeping; result callbacks set
  the future directly (which only schedules its waiter).
- What pysyncobj sends during a tick is queued per voter and coalesced when the tick ends
  (`raft_codec.coalesce_messages`): consecutive append_entries merge, replaced heartbeats and
  acknowledgements are dropped, and an empty append_entries is held briefly
  (`RaftConfig.heartbeat_hold_ms`) so the next write's entries carry the commit index instead
  (docs/decisions/0035-raft-frame-coalescing-and-tick-scheduling.md).
- ``appendEntriesUseBatch=False`` for sub-millisecond commits; ``dynamicMembershipChange=True``
  with membership entries written as plain ``['add'|'rem', id]`` (no pickled Node objects).

Hazards that remain (pysyncobj's, see docs/consensus.md): the journal is not fsynced, the follower
log-truncation deviation from Raft §5.3, no pre-vote, and its own clock (``time.monotonic``) for
election timers, so this adapter is not deterministic; simulations use `MemoryCluster`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from .base import (
    Clock,
    ConsensusTimeout,
    GroupStatus,
    MembershipChangeRefused,
    NoQuorum,
    NotLeader,
    RaftLink,
    ReadResult,
)
from .commands import Command, CommandDecodeError, decode_entry, encode_entry
from .raft_codec import (
    CommandWireCache,
    RaftFrameError,
    coalesce_messages,
    command_from_wire,
    command_to_wire,
    decode_message,
    encode_message,
)
from .state_machine import CriticalState, SnapshotError

__all__ = ["PySyncObjGroup", "RaftConfig", "RaftStats"]

log = logging.getLogger(__name__)

DUMP_VERSION = 1
JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"
_MEMBERSHIP = 2
"""pysyncobj.syncobj._COMMAND_TYPE.MEMBERSHIP (0.3.17)."""
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_RETRY_SLEEP_S = 0.02
"""Pause between re-submissions that pysyncobj refused without appending (no leader yet)."""
OUTBOX_MESSAGES_MAX = 10_000
"""pysyncobj messages queued for one voter between two flushes (one tick); more are dropped."""


def _is_empty_append(message: dict[str, Any]) -> bool:
    return message.get("type") == "append_entries" and "prevLogIdx" in message and not message.get("entries")


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing and limits of one voter. Durations are milliseconds."""

    heartbeat_ms: int = 50
    """Leader AppendEntries period (pysyncobj appendEntriesPeriod; its default is 100 ms)."""
    election_timeout_ms_min: int = 300
    election_timeout_ms_max: int = 600
    """Randomised election timeout range. Raft §9.3 suggests 150-300 ms for 0.5-20 ms broadcast
    times; doubled here because ticks run on a shared Python event loop."""
    leader_fallback_ms: int = 600
    """A leader that heard from no majority for this long steps down (pysyncobj default: 30 s)."""
    tick_interval_ms: int = 10
    """Idle tick period; frames and proposals tick in the next loop turn."""
    heartbeat_hold_ms: int = 5
    """An append_entries without entries (heartbeat, or the commit notice pysyncobj sends right
    after every commit) waits this long for a later append_entries to the same voter that
    replaces it; with one write after another, the next write's entries carry the commit index
    and the notice and its reply (2 of 8 frames per commit) are never sent. Must stay well below
    the heartbeat period and the election timeout (Raft §5.2): 5 ms against 50 ms and 300 ms."""
    no_quorum_timeout_ms: int = 1_200
    """How long `propose` waits for a leader with a reachable majority before `NoQuorum`
    (2 x the max election timeout: one failed election round plus one that succeeds)."""
    commit_timeout_ms: int = 5_000
    """How long `propose` waits for the commit after submitting before `ConsensusTimeout`."""
    quorum_window_ms: int = 600
    """A peer counts as reachable if a frame from it arrived within this window."""
    log_compaction_min_entries: int = 5_000
    log_compaction_min_time_ms: int = 300_000
    """pysyncobj defaults: compact (write the dump, trim the journal) after 5000 entries or 300 s."""
    commands_queue_max: int = 1_000
    """Proposals queued inside pysyncobj before QUEUE_FULL (its default is 100k)."""
    snapshot_bytes_max: int = 32 << 20
    """Largest dump file accepted (received or on disk)."""
    forward_to_leader: bool = True
    """False: `propose` on a follower raises `NotLeader` instead of forwarding."""

    def __post_init__(self) -> None:
        if not 0 <= self.heartbeat_hold_ms < self.heartbeat_ms:
            raise ValueError("heartbeat_hold_ms must be >= 0 and below heartbeat_ms")
        for name in ("heartbeat_ms", "tick_interval_ms", "no_quorum_timeout_ms", "commit_timeout_ms",
                     "quorum_window_ms", "commands_queue_max", "snapshot_bytes_max", "log_compaction_min_time_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RaftConfig.{name} must be positive")
        if self.election_timeout_ms_min <= 3 * self.heartbeat_ms:
            raise ValueError("election_timeout_ms_min must exceed 3 x heartbeat_ms (pysyncobj requirement)")
        if self.election_timeout_ms_max <= self.election_timeout_ms_min:
            raise ValueError("election_timeout_ms_max must exceed election_timeout_ms_min")
        if self.leader_fallback_ms <= self.heartbeat_ms:
            raise ValueError("leader_fallback_ms must exceed heartbeat_ms")
        if self.log_compaction_min_entries < 2:
            raise ValueError("log_compaction_min_entries must be at least 2")


@dataclass(slots=True)
class RaftStats:
    """Counters the node exports as metrics."""

    frames_sent: int = 0
    messages_coalesced: int = 0
    """pysyncobj messages merged into another one or replaced by a later one before sending."""
    commit_notices_replaced: int = 0
    """Commit notices never built: the next write's entries carried the commit index within the hold."""
    outbox_full_drops: int = 0
    """Messages dropped because `OUTBOX_MESSAGES_MAX` were already queued for that voter in one tick."""
    frames_received: int = 0
    frames_rejected: int = 0
    """Frames from a voter that failed the codec (garbage, or a type outside the allow-list)."""
    frames_from_non_voters: int = 0
    encode_failures: int = 0
    handler_errors: int = 0
    """pysyncobj raised while handling a valid-looking frame; dropped."""
    tick_errors: int = 0
    commit_steps: int = 0
    """Acknowledgements that ran only the commit-and-apply part of a tick (decision 0037)."""
    appended_at_once: int = 0
    """Proposals appended and sent by the adapter itself, every follower in step (decision 0037)."""
    bad_entries: int = 0
    """Committed entries that did not decode (cannot happen unless files are corrupt)."""
    snapshot_bytes_refused: int = 0
    snapshot_chunks_received: int = 0
    """Chunks of a leader's dump installed because this voter lagged behind the leader's compacted log."""
    proposals: int = 0
    no_quorum: int = 0
    timeouts: int = 0


class _LinkTransport(Transport):  # type: ignore[misc]
    """pysyncobj Transport over a `RaftLink`: every voter counts as connected; sends are best effort."""

    def __init__(self, syncobj: Any, self_node: Node, other_nodes: Any, group: PySyncObjGroup) -> None:
        super().__init__(syncobj, self_node, other_nodes)
        self._group = group
        self._nodes: dict[str, Node] = {}
        for node in sorted(other_nodes, key=lambda n: n.id):
            self._nodes[node.id] = node
        self._snapshot_bytes = 0
        self._sorted_ids: list[str] | None = None
        self.cache = group.cache
        self._outbox: dict[str, list[dict[str, Any]]] = {}
        """Messages pysyncobj sent since the last `flush`, per voter, in order."""
        self._held: dict[str, tuple[dict[str, Any], float]] = {}
        """Per voter: an append_entries without entries held back, and when it must go at the latest."""
        self._awaited: dict[str, int] = {}
        self._last_append: tuple[dict[str, Any], bytes] | None = None
        """The last append_entries encoded and its bytes: followers in step get equal messages."""
        """Per voter: the highest log index it forwarded a proposal for and waits to see committed;
        a commit notice that reaches it is never held (the forwarded write would wait for it)."""

    def connect_known(self) -> None:
        """Announce every voter as connected; call once pysyncobj has installed its callbacks."""
        for node in list(self._nodes.values()):
            self._onNodeConnected(node)

    def voter_ids(self) -> list[str]:
        """The other voters, sorted (a cached list: do not mutate)."""
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self._nodes)
        return self._sorted_ids

    def addNode(self, node: Node) -> None:  # noqa: N802 (pysyncobj API)
        self._nodes[node.id] = node
        self._sorted_ids = None
        self._onNodeConnected(node)

    def dropNode(self, node: Node) -> None:  # noqa: N802
        self._held.pop(node.id, None)
        self._awaited.pop(node.id, None)
        self._sorted_ids = None
        if self._nodes.pop(node.id, None) is not None:
            self._onNodeDisconnected(node)

    def send(self, node: Node, message: Any) -> bool:
        """Queue for the next `flush` (the group flushes after every tick); best effort like a socket."""
        queue = self._outbox.get(node.id)
        if queue is None:
            queue = self._outbox[node.id] = []
        if len(queue) >= OUTBOX_MESSAGES_MAX:
            self._group.stats.outbox_full_drops += 1
            return False
        if message.get("type") == "apply_command_response" and type(message.get("log_idx")) is int:
            self._awaited[node.id] = max(self._awaited.get(node.id, 0), message["log_idx"])
        queue.append(message)
        return True

    def flush(self, now_s: float, hold_s: float) -> float | None:
        """Coalesce and send what pysyncobj queued; return when a held heartbeat is due (or None).

        A trailing append_entries without entries is held up to `hold_s` in case a later one
        replaces it (see `RaftConfig.heartbeat_hold_ms`); a held one that is due goes now.
        """
        outbox, self._outbox = self._outbox, {}
        for voter_id, queue in outbox.items():
            held = self._held.pop(voter_id, None)
            due = now_s + hold_s
            if held is not None:
                queue.insert(0, held[0])
                due = held[1]
            merged = coalesce_messages(queue)
            self._group.stats.messages_coalesced += len(queue) - len(merged)
            last = merged[-1]
            if hold_s > 0 and due > now_s and _is_empty_append(last) and not self._unblocks(voter_id, last):
                self._held[voter_id] = (last, due)
                merged.pop()
            for message in merged:
                self._send_now(voter_id, message)
        next_due: float | None = None
        for voter_id, (message, due) in list(self._held.items()):
            if due <= now_s:
                del self._held[voter_id]
                self._send_now(voter_id, message)
            elif next_due is None or due < next_due:
                next_due = due
        return next_due

    def _unblocks(self, voter_id: str, message: dict[str, Any]) -> bool:
        """Does this append_entries tell `voter_id` that a write it forwarded has committed?"""
        awaited = self._awaited.get(voter_id)
        if awaited is None or message["commit_index"] < awaited:
            return False
        del self._awaited[voter_id]
        return True

    def _send_now(self, voter_id: str, message: dict[str, Any]) -> None:
        stats = self._group.stats
        last = self._last_append
        if last is not None and last[0] == message:
            data = last[1]  # the same append_entries for the next follower: encoded once
        else:
            try:
                data = encode_message(message, self.cache)
            except RaftFrameError as exc:
                stats.encode_failures += 1
                log.warning("raft: not sending %s to %s: %s", message.get("type"), voter_id, exc)
                return
            if message["type"] == "append_entries":
                self._last_append = (message, data)
        stats.frames_sent += 1
        self._group.link.send(voter_id, data)

    def receive(self, voter_id: str, data: bytes) -> dict[str, Any] | None:
        """Feed one frame; return the message handled, or None if it was dropped."""
        stats = self._group.stats
        node = self._nodes.get(voter_id)
        if node is None:
            stats.frames_from_non_voters += 1
            return None
        try:
            message = decode_message(data, self.cache)
        except RaftFrameError as exc:
            stats.frames_rejected += 1
            log.debug("raft: dropped frame from %s: %s", voter_id, exc)
            return None
        chunk = message.get("serialized")
        if chunk is not None:
            stats.snapshot_chunks_received += 1
            self._snapshot_bytes = len(chunk[0]) + (0 if chunk[1] else self._snapshot_bytes)
            if self._snapshot_bytes > self._group.config.snapshot_bytes_max:
                stats.snapshot_bytes_refused += 1
                return None
        stats.frames_received += 1
        try:
            self._onMessageReceived(node, message)
        except Exception:  # a peer must never crash the node
            stats.handler_errors += 1
            log.exception("raft: pysyncobj failed on a %s frame from %s", message["type"], voter_id)
            return None
        return message

    def destroy(self) -> None:
        self._outbox.clear()
        self._last_append = None
        self._sorted_ids = None
        self._held.clear()
        self._awaited.clear()
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        self._nodes.clear()


class _Replica(SyncObj):  # type: ignore[misc]
    """The SyncObj with one replicated method; its state lives in `CriticalState`, not in SyncObj fields."""

    def __init__(self, state: CriticalState, stats: RaftStats, cache: CommandWireCache, **kwargs: Any) -> None:
        self._critical = state
        self._stats = stats
        self._cache = cache
        super().__init__(**kwargs)

    @replicated
    def apply_entry(self, payload: bytes) -> Any:
        return self.apply_payload(payload)

    def apply_payload(self, payload: bytes) -> Any:
        """What the replicated `apply_entry(payload)` does when pysyncobj applies it."""
        try:
            command, now_ms = self._cache.take_entry(payload)
        except CommandDecodeError:
            self._stats.bad_entries += 1
            log.error("raft: committed entry does not decode; skipped on every replica alike")
            return None
        return self._critical.apply(command, now_ms)


class PySyncObjGroup:
    """One Raft voter. Construct (no I/O), `await start()`, use, `await close()`.

    `voters` lists every voter id, this one included; `link` carries frames to and from them;
    `data_dir` holds the journal and the dump, so a restarted voter recovers and catches up.
    """

    def __init__(
        self,
        node_id: str,
        voters: list[str] | tuple[str, ...],
        link: RaftLink,
        data_dir: str | os.PathLike[str],
        config: RaftConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        if node_id not in voters:
            raise ValueError(f"voters must include this node's id {node_id!r}; got {list(voters)!r}")
        self._node_id = node_id
        self._initial_voters = sorted(dict.fromkeys(voters))
        self.link = link
        self.config = config or RaftConfig()
        self._data_dir = Path(data_dir)
        self._clock = clock or _wall_clock_ms
        self.state = CriticalState()
        """The local replica; read it only on the event loop."""
        self.stats = RaftStats()
        self.cache = CommandWireCache()
        """Codec work not to repeat (wire forms sent to several voters, payloads decoded on receipt)."""
        self._syncobj: _Replica | None = None
        self._transport: _LinkTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        self._soon_handle: asyncio.Handle | None = None
        """A tick scheduled for the next loop turn (after a frame or a proposal)."""
        self._submit_handle: asyncio.Handle | None = None
        self._last_heard: dict[str, float] = {}
        self._quorum_lost_at: float | None = None
        """Loop time since when `_quorum_ok()` has been false at every tick (None: it is true)."""
        self._pending: set[asyncio.Future[tuple[Any, int]]] = set()
        self._send_entries: Any = None
        """pysyncobj's own `__sendAppendEntries` (the instance attribute wraps it)."""
        self._apply_command: Any = None
        """pysyncobj's own `__doApplyCommand` (the instance attribute wraps it)."""
        self._notice_due: float | None = None
        """Loop time by which a deferred commit notice must be built and sent (None: none owed)."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    async def start(self) -> None:
        """Open the journal and dump, hook the link, and start ticking."""
        if self._syncobj is not None:
            raise RuntimeError("group already started")
        self._loop = asyncio.get_running_loop()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        conf = SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,
            dynamicMembershipChange=True,
            useFork=False,
            commandsWaitLeader=False,
            appendEntriesPeriod=cfg.heartbeat_ms / 1000,
            raftMinTimeout=cfg.election_timeout_ms_min / 1000,
            raftMaxTimeout=cfg.election_timeout_ms_max / 1000,
            leaderFallbackTimeout=cfg.leader_fallback_ms / 1000,
            connectionTimeout=max(3.5, cfg.election_timeout_ms_max / 1000),
            commandsQueueSize=cfg.commands_queue_max,
            logCompactionMinEntries=cfg.log_compaction_min_entries,
            logCompactionMinTime=cfg.log_compaction_min_time_ms / 1000,
            journalFile=str(self._data_dir / JOURNAL_FILE),
            fullDumpFile=str(self._data_dir / DUMP_FILE),
            serializer=self._write_dump,
            deserializer=self._read_dump,
        )

        def make_transport(syncobj: Any, self_node: Node, other_nodes: Any) -> _LinkTransport:
            self._transport = _LinkTransport(syncobj, self_node, other_nodes, self)
            return self._transport

        others = [Node(v) for v in self._initial_voters if v != self._node_id]
        self._syncobj = _Replica(
            self.state, self.stats, self.cache, selfNode=Node(self._node_id), otherNodes=others, conf=conf,
            nodeClass=Node, transportClass=make_transport,
        )
        assert self._syncobj._methodToID == {"apply_entry_v0": 0}, "raft_codec assumes one replicated method"
        _unplug_wakeups(self._syncobj)
        self._send_entries = self._syncobj._SyncObj__sendAppendEntries
        self._syncobj._SyncObj__sendAppendEntries = self._send_entries_or_defer
        self._apply_command = self._syncobj._SyncObj__doApplyCommand
        self._syncobj._SyncObj__doApplyCommand = self._do_apply_command
        assert self._transport is not None
        self._transport.connect_known()
        self.link.set_receiver(self._on_frame)
        self._arm(0.0)

    async def close(self) -> None:
        """Stop ticking, detach from the link, flush and close files; pending proposals time out."""
        if self._syncobj is None:
            return
        self.link.set_receiver(None)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for handle in (self._soon_handle, self._submit_handle):
            if handle is not None:
                handle.cancel()
        self._soon_handle = self._submit_handle = None
        syncobj, self._syncobj = self._syncobj, None
        syncobj.destroy()
        _close_pipe_notifier(syncobj)
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(ConsensusTimeout("the group was closed before the commit was seen; outcome unknown"))
        self._pending.clear()

    # -- the owner's tick -------------------------------------------------------------------

    def do_tick(self) -> None:
        """Run one pysyncobj tick now (on the event loop). `start()` already schedules them."""
        if self._syncobj is None:
            return
        try:
            self._syncobj.doTick(0.0)
        except Exception:
            self.stats.tick_errors += 1
            log.exception("raft: tick failed")
        self._flush()
        if self._quorum_ok():
            self._quorum_lost_at = None
        elif self._quorum_lost_at is None and self._loop is not None:
            self._quorum_lost_at = self._loop.time()

    # -- ConsensusGroup ---------------------------------------------------------------------

    async def propose(self, command: Command) -> Any:
        """See `ConsensusGroup.propose`."""
        now_ms = self._clock()
        payload = encode_entry(command, now_ms)  # ValueError for misuse, before any I/O
        syncobj = self._require_started()
        self.cache.remember_entry(payload, (command, now_ms))
        loop = asyncio.get_running_loop()
        self.stats.proposals += 1
        start = loop.time()
        quorum_deadline = start + self.config.no_quorum_timeout_ms / 1000
        while True:
            if not self._quorum_ok():  # the usual case skips a coroutine
                await self._wait_for_quorum(quorum_deadline, start)
            if not self.config.forward_to_leader and not syncobj._isLeader():
                raise NotLeader(self._leader_id())
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()
            self._pending.add(fut)
            command, callback = self.cache.own_command(payload), self._bridge(fut)
            if len(self._pending) > 1 or self._submit_handle is not None or not self._append_at_once(command, callback):
                # What `syncobj.apply_entry(payload, callback=...)` queues, without its pickle.dumps.
                syncobj._applyCommand(command, callback)
                self._submit_soon()
            try:
                result, error = await self._settled(fut)
            except asyncio.TimeoutError:
                self.stats.timeouts += 1
                raise ConsensusTimeout(waited_ms=int((loop.time() - start) * 1000)) from None
            finally:
                self._pending.discard(fut)
            if error == FAIL_REASON.SUCCESS:
                return result
            if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED,
                         FAIL_REASON.QUEUE_FULL) and loop.time() < quorum_deadline:
                # Refused before it was appended, or overwritten by another leader: not applied.
                await asyncio.sleep(_RETRY_SLEEP_S)
                continue
            if error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED,
                         FAIL_REASON.QUEUE_FULL):
                self.stats.no_quorum += 1
                raise NoQuorum(waited_ms=int((loop.time() - start) * 1000))
            self.stats.timeouts += 1
            raise ConsensusTimeout(
                f"the leader changed before the commit was confirmed (pysyncobj reason {error}); "
                "the command may or may not have been applied: read back before retrying"
            )

    async def read(self, query: Command, linearizable: bool = True) -> ReadResult:
        """See `ConsensusGroup.read`. Linearizable reads go through the log (one commit)."""
        if not getattr(type(query), "READONLY", False):
            raise ValueError(f"{type(query).__name__} changes state; use propose() for it")
        if linearizable:
            value = await self.propose(query)
            return ReadResult(value, True, self._applied_index(), self._leader_id())
        self._require_started()
        return ReadResult(self.state.query(query), False, self._applied_index(), self._leader_id())

    def status(self) -> GroupStatus:
        """See `ConsensusGroup.status`."""
        syncobj = self._syncobj
        if syncobj is None:
            return GroupStatus(self._node_id, "stopped", None, 0, 0, 0, tuple(self._initial_voters))
        raw = syncobj.getStatus()
        role = _ROLES.get(raw["state"], "follower")
        voters = tuple(sorted([self._node_id, *self._voter_ids()]))
        commit = raw["commit_idx"]
        lag: dict[str, int | None] = {}
        for voter in voters:
            if voter == self._node_id:
                lag[voter] = max(0, commit - raw["last_applied"])
            elif role == "leader":
                match = raw.get(f"match_idx_server_{voter}")
                lag[voter] = None if match is None else max(0, commit - match)
            else:
                lag[voter] = None
        return GroupStatus(
            node_id=self._node_id,
            role=role,
            leader=self._leader_id(),
            term=raw["raft_term"],
            commit_index=commit,
            applied_index=raw["last_applied"],
            voters=voters,
            lag=lag,
            has_quorum=self._quorum_ok(),
        )

    async def add_voter(self, voter_id: str) -> None:
        """See `ConsensusGroup.add_voter`. Start the new voter (with every voter listed) first."""
        await self._change_membership("add", voter_id)

    async def remove_voter(self, voter_id: str) -> None:
        """See `ConsensusGroup.remove_voter`."""
        if voter_id == self._node_id and self._syncobj is not None and self._syncobj._isLeader():
            raise MembershipChangeRefused("this voter is the leader; remove it from another voter after a new election")
        await self._change_membership("rem", voter_id)

    # -- internals --------------------------------------------------------------------------

    def _require_started(self) -> _Replica:
        if self._syncobj is None:
            raise RuntimeError(f"consensus group {self._node_id!r} is not started; await start() first")
        return self._syncobj

    def _voter_ids(self) -> list[str]:
        return self._transport.voter_ids() if self._transport is not None else []

    def _leader_id(self) -> str | None:
        leader = self._syncobj._getLeader() if self._syncobj is not None else None
        return None if leader is None else str(leader.id)

    def _applied_index(self) -> int:
        return int(self._syncobj.raftLastApplied) if self._syncobj is not None else 0

    def _on_frame(self, voter_id: str, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._syncobj is None:
            return
        message = transport.receive(voter_id, data)
        if message is not None:
            assert self._loop is not None
            self._last_heard[voter_id] = self._loop.time()
            # Right here, not a loop turn later: the acknowledgement leaves at once, and the tick
            # that commits runs while the frame that allows it is being handled.
            if self._may_commit(message):
                self._commit_step()
            elif self._tick_helps(message):
                self.do_tick()
            else:
                self._flush()

    def _may_commit(self, message: dict[str, Any]) -> bool:
        """A leader's successful acknowledgement above the commit index: it may commit entries."""
        syncobj = self._syncobj
        return (message["type"] == "next_node_idx" and message["success"] and not message["reset"]
                and message["next_node_idx"] - 1 > syncobj.raftCommitIndex and syncobj._isLeader())  # type: ignore[union-attr]

    def _commit_step(self) -> None:
        """Of a whole pysyncobj tick, only what such an acknowledgement makes useful (decision 0037):
        advance the commit index, apply what it covers (the waiters' results) and let pysyncobj
        send (or, decision 0036, owe) the commit notice. The rest of the tick (elections, the
        leader's step-down check, heartbeats, compaction) has nothing new to do because of an
        acknowledgement and runs at the idle tick, as before. About 20 µs less between a
        majority's acknowledgement and the waiter's wake-up on the leader.
        """
        syncobj = self._syncobj
        assert syncobj is not None
        try:
            _advance_commit_index(syncobj)
            if syncobj._SyncObj__applyLogEntries():
                syncobj._SyncObj__sendAppendEntries()  # the instance attribute: `_send_entries_or_defer`
        except Exception:
            self.stats.tick_errors += 1
            log.exception("raft: committing after an acknowledgement failed")
        self.stats.commit_steps += 1
        self._flush()

    def _tick_helps(self, message: dict[str, Any]) -> bool:
        """Whether a tick right after this frame can do anything the idle tick should not wait for.

        Two frequent frames need none: an acknowledgement at or below the commit index (the
        leader already counted a majority there), and entries on a follower nobody here waits
        on (applying them can wait for the idle tick; their acknowledgement is already queued).
        Skipping those ticks halves the pysyncobj ticks per commit.
        """
        syncobj = self._syncobj
        assert syncobj is not None
        kind = message["type"]
        if kind == "next_node_idx":
            return not (message["success"] and not message["reset"]
                        and message["next_node_idx"] - 1 <= syncobj.raftCommitIndex)
        if kind == "append_entries" and "prevLogIdx" in message:
            return bool(self._pending)
        return True

    def _submit_soon(self) -> None:
        """Hand the queued proposals to pysyncobj: the leader appends and sends them, a follower
        forwards them. Only that part of the tick runs (the rest of the tick has nothing new to do
        because of a proposal). A proposal with nothing else in flight goes at once (one write
        after another: no loop turn before the entries leave); otherwise all proposals of one
        loop turn go together in the next one, as one append_entries per voter."""
        if self._submit_handle is None and self._loop is not None:
            if len(self._pending) <= 1:
                self._on_submit()
            else:
                self._submit_handle = self._loop.call_soon(self._on_submit)

    def _append_at_once(self, command: bytes, callback: Any) -> bool:
        """A leader's proposal alone in flight with every follower in step: append and send it here.

        Does what pysyncobj 0.3.17's `_checkCommandsToApply` and `__sendAppendEntries` do for one
        regular command in that case: append it to the journal at index last + 1 in the current
        term, register its callback for the commit, reset the heartbeat deadline, and send each
        follower one append_entries with that entry after the last one (prev index and term),
        advancing its next index (Raft §5.3). Without pysyncobj's command queue and its lock,
        the Empty exception, the membership parse, the set union and the log slicing: about a
        third of the leader's time from proposal to the first write (decision 0037). Anything
        else returns False and takes pysyncobj's path: not the leader, read-only nodes, commands
        already queued (forwarded ones keep their order), a follower not connected, behind or
        being sent a snapshot (its next index is not last + 1).
        """
        syncobj, transport = self._syncobj, self._transport
        if syncobj is None or transport is None or not syncobj._isLeader() or syncobj._SyncObj__readonlyNodes \
                or syncobj._SyncObj__commandsQueue._FastQueue__queue:
            return False
        journal = syncobj._SyncObj__raftLog
        last_index, last_term = journal[-1][1], journal[-1][2]
        next_index = syncobj._SyncObj__raftNextIndex
        connected = syncobj._SyncObj__connectedNodes
        others = syncobj._SyncObj__otherNodes
        voter_ids = transport.voter_ids()
        if len(voter_ids) != len(others):
            return False
        nodes = []
        for voter_id in voter_ids:  # sorted: the same order on every run
            node = transport._nodes[voter_id]
            if node not in others or node not in connected or next_index.get(node) != last_index + 1:
                return False
            nodes.append(node)
        index, term = last_index + 1, syncobj._SyncObj__raftCurrentTerm
        try:
            journal.add(command, index, term)
            syncobj._SyncObj__commandsWaitingCommit[index].append((term, callback))
            syncobj._SyncObj__newAppendEntriesTime = _monotonic() + syncobj._SyncObj__conf.appendEntriesPeriod
            if self._notice_due is not None:  # these entries carry the commit index the notice owed
                self._notice_due = None
                self.stats.commit_notices_replaced += 1
            commit = syncobj._SyncObj__raftCommitIndex
            for node in nodes:
                next_index[node] = index + 1
                transport.send(node, {"type": "append_entries", "term": term, "commit_index": commit,
                                      "entries": [(command, index, term)], "prevLogIdx": last_index, "prevLogTerm": last_term})
        except Exception:  # as when pysyncobj's own submit step fails: logged, the waiter times out (outcome unknown)
            self.stats.tick_errors += 1
            log.exception("raft: appending a proposal failed")
        else:
            self.stats.appended_at_once += 1
        self._flush()
        return True

    def _on_submit(self) -> None:
        self._submit_handle = None
        syncobj = self._syncobj
        if syncobj is None:
            return
        try:
            syncobj._checkCommandsToApply()
        except Exception:
            self.stats.tick_errors += 1
            log.exception("raft: submitting proposals failed")
        self._flush()

    def _tick_soon(self) -> None:
        """Tick in the next loop turn: every frame that arrived in this turn is handled by then,
        so their replies and the entries they unblock leave together."""
        if self._soon_handle is None and self._loop is not None:
            self._soon_handle = self._loop.call_soon(self._on_soon)

    def _on_soon(self) -> None:
        self._soon_handle = None
        self.do_tick()

    def _send_entries_or_defer(self) -> None:
        """pysyncobj's `__sendAppendEntries`, except when all it would send is a commit notice.

        The leader calls it after every commit (appendEntriesUseBatch=False); with every follower
        holding the whole log and no heartbeat due, each message would be an append_entries
        without entries, which `flush` holds anyway (decision 0035) and the next write's entries
        replace. Building, queueing and dropping them was about a tenth of the leader's CPU per
        sequential commit, so the notice is owed instead and built when the hold runs out
        (`_flush`), unless a real send (entries, heartbeat) carries the commit index first.
        A follower waiting for a write it forwarded gets it at once, as before.
        """
        syncobj, loop, transport = self._syncobj, self._loop, self._transport
        hold_s = self.config.heartbeat_hold_ms / 1000
        if (syncobj is not None and loop is not None and transport is not None and hold_s > 0
                and not transport._awaited and _only_commit_notice(syncobj)):
            if self._notice_due is None:
                self._notice_due = loop.time() + hold_s
            return
        if self._notice_due is not None:
            self._notice_due = None
            self.stats.commit_notices_replaced += 1
        self._send_entries()

    def _do_apply_command(self, command: bytes) -> Any:
        """pysyncobj's `__doApplyCommand`, without unpickling a regular command whose payload the
        codec cache knows (this node proposed or encoded it; a pure function of the bytes): on the
        leader that is every entry it applies, on the critical path of each commit (decision 0037).
        Anything else (no-op, membership, version, a command not remembered) goes to pysyncobj."""
        payload = self.cache.own_payload(command) if type(command) is bytes else None
        if payload is None:
            return self._apply_command(command)
        return self._syncobj.apply_payload(payload)  # type: ignore[union-attr]

    def _flush(self) -> None:
        transport, loop = self._transport, self._loop
        if transport is None or loop is None:
            return
        now = loop.time()
        hold_s = self.config.heartbeat_hold_ms / 1000
        if self._notice_due is not None and self._notice_due <= now:
            self._notice_due = None
            syncobj = self._syncobj
            if syncobj is not None and syncobj._isLeader():  # a leader that stepped down owes nothing
                hold_s = 0.0  # it has waited its hold already
                try:
                    self._send_entries()
                except Exception:
                    self.stats.tick_errors += 1
                    log.exception("raft: sending the commit notice failed")
        due = transport.flush(now, hold_s)
        if self._notice_due is not None and (due is None or self._notice_due < due):
            due = self._notice_due
        if due is not None:
            self._arm(max(0.0, due - now))

    async def _settled(self, fut: asyncio.Future[tuple[Any, int]]) -> tuple[Any, int]:
        """Wait for pysyncobj's callback, at most `commit_timeout_ms` (then `asyncio.TimeoutError`).

        One timer and a plain await: `wait_for(shield(...))` cost three extra loop hops per commit.
        Cancelling the caller cancels `fut`; pysyncobj's late callback then finds it done.
        """
        loop = asyncio.get_running_loop()

        def expire() -> None:
            if not fut.done():
                fut.set_exception(asyncio.TimeoutError())

        timer = loop.call_later(self.config.commit_timeout_ms / 1000, expire)
        try:
            return await fut
        finally:
            timer.cancel()

    def _arm(self, delay_s: float) -> None:
        """(Re)arm the single tick timer to fire within `delay_s`."""
        loop = self._loop
        if loop is None or self._syncobj is None:
            return
        due = loop.time() + delay_s
        if self._tick_handle is not None:
            if self._tick_due <= due:
                return
            self._tick_handle.cancel()
        self._tick_due = due
        self._tick_handle = loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._tick_handle = None
        self.do_tick()
        self._arm(self.config.tick_interval_ms / 1000)

    def _bridge(self, fut: asyncio.Future[tuple[Any, int]]) -> Any:
        def callback(result: Any, error: int) -> None:
            # Runs inside pysyncobj's tick, always on the loop thread (autoTick=False). Setting the
            # result only schedules the waiter, so nothing runs inside pysyncobj's stack, and it
            # avoids call_soon_threadsafe's wake-up write per commit.
            if not fut.done():
                fut.set_result((result, error))

        return callback

    def _quorum_ok(self) -> bool:
        """A leader that heard from a majority recently, or a follower that heard from its leader."""
        syncobj, loop = self._syncobj, self._loop
        if syncobj is None or loop is None:
            return False
        horizon = loop.time() - self.config.quorum_window_ms / 1000
        voters = self._voter_ids()
        if syncobj._isLeader():
            heard = 1 + sum(1 for v in voters if self._last_heard.get(v, -1.0) >= horizon)
            return heard * 2 > len(voters) + 1
        leader = self._leader_id()
        return leader is not None and self._last_heard.get(leader, -1.0) >= horizon

    async def _wait_for_quorum(self, deadline: float, start: float) -> None:
        """Return once `_quorum_ok()`; raise `NoQuorum` once quorum has been missing for the bound.

        The bound counts from when quorum was lost, not from the call: a side that has been
        partitioned for a while fails at once, while a proposal made during an ordinary election
        still waits for it to finish.
        """
        loop = asyncio.get_running_loop()
        while not self._quorum_ok():
            if self._syncobj is None:
                raise NoQuorum("this member was closed before the command was submitted; it was NOT applied")
            lost_at = self._quorum_lost_at
            if lost_at is not None:
                deadline = min(deadline, lost_at + self.config.no_quorum_timeout_ms / 1000)
            if loop.time() >= deadline:
                self.stats.no_quorum += 1
                raise NoQuorum(waited_ms=int((loop.time() - start) * 1000))
            await asyncio.sleep(self.config.tick_interval_ms / 1000)

    async def _change_membership(self, op: str, voter_id: str) -> None:
        command_from_wire(["M", op, voter_id])  # validates the id the same way peers will
        syncobj = self._require_started()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._wait_for_quorum(start + self.config.no_quorum_timeout_ms / 1000, start)
        fut: asyncio.Future[tuple[Any, int]] = loop.create_future()
        self._pending.add(fut)
        # Plain ['add'|'rem', id] instead of addNodeToCluster's pickled Node object (see raft_codec).
        syncobj._applyCommand(command_from_wire(["M", op, voter_id])[1:], self._bridge(fut), _MEMBERSHIP)
        self._tick_soon()
        try:
            _, error = await self._settled(fut)
        except asyncio.TimeoutError:
            raise ConsensusTimeout(waited_ms=int((loop.time() - start) * 1000)) from None
        finally:
            self._pending.discard(fut)
        if error == FAIL_REASON.SUCCESS:
            return
        if error == FAIL_REASON.REQUEST_DENIED:
            raise MembershipChangeRefused(
                f"voter change {op} {voter_id!r} refused: another change is still committing, the voter is "
                "already (or not) a member, or it is the leader. Wait for the previous change and retry."
            )
        raise ConsensusTimeout(f"voter change {op} {voter_id!r} not confirmed (pysyncobj reason {error}); check status()")

    def _write_dump(self, path: str, data: Any) -> None:
        """pysyncobj serializer: our msgpack dump (state + the two boundary entries + voters), fsynced."""
        last, prev, cluster = data
        doc = {
            "v": DUMP_VERSION,
            "state": self.state.snapshot(),
            "last": [command_to_wire(last[0]), last[1], last[2]],
            "prev": [command_to_wire(prev[0]), prev[1], prev[2]],
            "voters": sorted(str(node.id) for node in cluster),
        }
        blob = msgpack.packb(doc, use_bin_type=True)
        with open(path, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def _read_dump(self, path: str) -> tuple[Any, Any, list[Node]]:
        """pysyncobj deserializer: validate everything, then restore the state (atomically)."""
        size = os.path.getsize(path)
        if size > self.config.snapshot_bytes_max:
            raise SnapshotError(f"dump {path} is {size} bytes, over snapshot_bytes_max")
        with open(path, "rb") as f:
            blob = f.read(size + 1)
        try:
            doc = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0)
        except Exception as exc:
            raise SnapshotError(f"dump {path} is not valid msgpack: {exc}") from None
        if not isinstance(doc, dict) or doc.get("v") != DUMP_VERSION or set(doc) != {"v", "state", "last", "prev", "voters"}:
            raise SnapshotError(f"dump {path} has an unknown layout")
        entries = []
        for key in ("last", "prev"):
            entry = doc[key]
            if not (isinstance(entry, list) and len(entry) == 3 and type(entry[1]) is int and type(entry[2]) is int):
                raise SnapshotError(f"dump {path}: bad {key} entry")
            try:
                entries.append((command_from_wire(entry[0]), entry[1], entry[2]))
            except RaftFrameError as exc:
                raise SnapshotError(f"dump {path}: {exc}") from None
        voters = doc["voters"]
        if not (isinstance(voters, list) and voters and all(isinstance(v, str) and v for v in voters)):
            raise SnapshotError(f"dump {path}: bad voter list")
        self.state.restore(doc["state"])  # raises SnapshotError and keeps the old state if invalid
        return entries[0], entries[1], [Node(v) for v in voters]


def _advance_commit_index(syncobj: Any) -> None:
    """The leader block of pysyncobj 0.3.17's `_onTick`, without its step-down check: the highest
    index of the current term stored on a majority becomes the commit index (Raft paper §5.3 and
    §5.4.2: entries of older terms are committed only through one of the current term)."""
    commit = syncobj._SyncObj__raftCommitIndex
    next_commit = commit
    last = syncobj._SyncObj__getCurrentLogIndex()
    match = syncobj._SyncObj__raftMatchIndex
    others = syncobj._SyncObj__otherNodes
    term = syncobj._SyncObj__raftCurrentTerm
    while commit < last:
        commit += 1
        count = 1
        for node in others:
            if match[node] >= commit:
                count += 1
        if count <= (len(others) + 1) / 2:
            break
        entries = syncobj._SyncObj__getEntries(commit, 1)
        if not entries or entries[0][2] != term:
            continue
        next_commit = commit
    if syncobj._SyncObj__raftCommitIndex != next_commit:
        syncobj._SyncObj__raftCommitIndex = next_commit
        syncobj._SyncObj__raftLog.setRaftCommitIndex(next_commit)
    syncobj._SyncObj__leaderCommitIndex = syncobj._SyncObj__raftCommitIndex


def _only_commit_notice(syncobj: Any) -> bool:
    """Would pysyncobj's `__sendAppendEntries` send only append_entries without entries, with no
    heartbeat due? (Leader; every connected follower's next index is past the last log entry.)"""
    if not syncobj._isLeader() or _monotonic() > syncobj._SyncObj__newAppendEntriesTime:
        return False
    last = syncobj._SyncObj__getCurrentLogIndex()
    next_index = syncobj._SyncObj__raftNextIndex
    connected = syncobj._SyncObj__connectedNodes
    for node in syncobj._SyncObj__otherNodes | syncobj._SyncObj__readonlyNodes:
        if node in connected and next_index[node] <= last:
            return False
    return True


class _NoPoller:
    """pysyncobj's poller with nothing to poll: the link opens no socket, so its `poll(0)` at the
    end of every tick was a system call that could never report anything."""

    def subscribe(self, descr: Any, callback: Any, event_mask: int) -> None:
        pass

    def unsubscribe(self, descr: Any) -> None:
        pass

    def poll(self, timeout: float) -> None:
        pass


class _NoNotifier:
    """pysyncobj's pipe notifier wakes its tick thread after each proposal (a pipe write, then a
    poll and a read at the next tick); with autoTick=False the owner ticks, so nothing is woken."""

    def notify(self) -> None:
        pass


def _unplug_wakeups(syncobj: Any) -> None:
    """Replace pysyncobj's poller and pipe notifier (three system calls per proposal, one per tick)."""
    _close_pipe_notifier(syncobj)
    if getattr(syncobj, "_SyncObj__pipeNotifier", None) is not None:
        syncobj._SyncObj__pipeNotifier = _NoNotifier()
    syncobj._poller = _NoPoller()


def _close_pipe_notifier(syncobj: Any) -> None:
    """pysyncobj 0.3.17 never closes the wake-up pipe it opens for appendEntriesUseBatch=False."""
    notifier = getattr(syncobj, "_SyncObj__pipeNotifier", None)
    for name in ("_PipeNotifier__pipeR", "_PipeNotifier__pipeW"):
        fd = getattr(notifier, name, None)
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass

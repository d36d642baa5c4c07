"""Replication of the node's CRDT store: the sans-I/O anti-entropy core behind `node.state`.

One `Replicator` per node wraps a `crdt.StateStore` and decides who gets what and when
(Akka Distributed Data semantics; delta-state CRDTs after Almeida, Shoker, Baquero, JPDC 2018):

- **Delta stream with causal delivery** (the paper's algorithm 2). Every local write and every
  applied delta lands in the store's log with a local sequence number. Per live peer the core
  ships `deltas_since(acked)` in log order, in batches every `delta_interval_ms`; each batch says
  which sequence it continues (`after`), the peer applies a batch only if it has everything up
  to `after` (otherwise it answers with a gap and the sender goes back), and acknowledges the last
  sequence with its seen vector. Forwarded deltas keep their order, so a peer never sees an effect
  before its causes; deltas the peer already reported seeing (or that came from it) are skipped.
- **Digest exchange** (push-pull, like memberlist's): every `digest_interval_ms` with one random
  peer, and at once with a peer that comes up new, is far behind (backlog over
  `backlog_deltas_max`) or whose deltas fell out of the bounded log. The initiator sends one
  8-byte digest per bucket (a power of two, about one bucket per `keys_per_bucket` keys, at least
  `digest_buckets_min`, at most 4096); the peer answers with per-key digests of the
  buckets that differ; the initiator sends the full states the peer lacks plus its own key
  digests; the peer sends back what the initiator lacks. Only differing keys travel. While a
  peer is being synchronised its delta stream waits, and resumes after the repair point
  (`base`), so causal delivery holds across the repair.
- **Consistency levels** per call: `local`, `one` (this node and one peer), `n` (n replicas,
  this one included; all if fewer exist), `majority` (floor(N/2)+1 of the roster) and `all`.
  Writes apply locally, then are sent to every live peer and complete after the required
  acknowledgements; reads ask every live peer and merge the required replies (read repair).
  N counts the roster: live members plus failed ones not yet forgotten (`forget_dead_after_ms`),
  so the side of a partition that holds a minority cannot claim a majority.
- **Garbage collection** of tombstones: peers report their seen vectors on acks and digests;
  every `gc_interval_ms`, when every roster member has reported, the store's two-phase rule runs
  (docs/state.md, "Garbage collection"). Members that left are dropped from the roster at once,
  failed ones after `forget_dead_after_ms`.
- **Folding removed replicas** (decision 0024): a replica retired for good (`retire`, e.g. a
  revoked node, or a failed member forgotten after `forget_dead_after_ms`) has its counter slots
  and dots folded into one owner's: the lowest id of the roster, once every member claims that
  same owner and the owner has seen every event of the retired replica any member reported. The
  owner ships each folded key with a prune marker; receivers strip the retired replica and join in
  one step; markers are collected once every member has seen the fold.

Shape of a NodeCore: API calls, `receive(sender_id, frame, now_ms)`, `handle_timer(now_ms)`,
`get_timer()`, `messages_to_send()`, `next_event()`; live peers come from `member_up`/`member_down`.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from agentnode.core import Outgoing
from agentnode.crdt import (
    CodecError,
    Crdt,
    CrdtUsageError,
    Delta,
    LimitExceededError,
    StateStore,
    VectorClock,
    from_wire,
    to_wire,
    wire_size,
)
from agentnode.crdt.store import PruneMarker, Repair, markers_from_wire, markers_to_wire
from agentnode.messages import MAX_CLUSTER_CHARS, MAX_ID_CHARS, PROTOCOL_VERSION

__sans_io__ = True

__all__ = [
    "ALL",
    "LOCAL",
    "MAJORITY",
    "ONE",
    "STATE_TYPE_MAX",
    "STATE_TYPE_MIN",
    "Consistency",
    "ConsistencyNotMet",
    "ConsistencyUnavailable",
    "KeyChanged",
    "ReadDone",
    "ReplicationConfig",
    "ReplicationEvent",
    "Replicator",
    "StateError",
    "WriteDone",
]

STATE_TYPE_MIN = 64
"""Frame types 64..79 belong to replication; membership uses 1..7, registry/messaging 32..63."""
STATE_TYPE_MAX = 79
T_DELTAS = 64
T_DELTA_ACK = 65
T_DIGEST = 66
T_KEY_DIGESTS = 67
T_REPAIR = 68
T_WRITE = 69
T_WRITE_ACK = 70
T_READ = 71
T_READ_REPLY = 72
FRAME_TYPES = (T_DELTAS, T_DELTA_ACK, T_DIGEST, T_KEY_DIGESTS, T_REPAIR, T_WRITE, T_WRITE_ACK, T_READ, T_READ_REPLY)

SEQ_MAX = 2**63 - 1
"""Sequence numbers, epochs and request ids are unsigned 63-bit integers."""
MAX_EVENTS = 100_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted."""
MAX_OUTBOX = 100_000
"""Frames waiting for `messages_to_send`; beyond this new frames are dropped and counted."""
MAX_PENDING_REQUESTS = 10_000
"""Reads and writes waiting for replies; more is caller misuse (await them)."""
PRUNE_IDLE_TICKS = 12
"""After a scan finds no key mentioning a retired replica, the owner rescans it only every this many
GC ticks (a minute at the default 5 s): late stale deltas can bring a context entry back."""
MAX_LEFT_REMEMBERED = 10_000
"""Members that left remembered as fold-owner candidates (decision 0024); beyond this the oldest go."""
MAX_ROUNDS = 256
"""Digest rounds in flight (one per peer at most)."""
KEY_DIGEST_BYTES = 8
"""Per-key digests travel truncated to 64 bits: a false "equal" needs a 2^-64 collision, and it
halves the bytes of a key-digest exchange."""
BUCKETS_MAX = 4096
"""Finest bucket level, kept incrementally; coarser power-of-two levels are folds of it."""
BUCKET_DIGEST_BYTES = 8
"""Largest digest bucket count accepted from a peer."""
CLAIMS_MAX = 64
"""Retired replicas named in the owner claims a replica attaches to its acks and digests (the
lowest ids first); more retired replicas than this are folded CLAIMS_MAX at a time."""
FRAME_BYTES_TARGET = 256 * 1024
"""Estimated size at which a delta batch, key-digest list or repair is cut (frames are capped at
1 MiB by the transport; a single value is at most 256 KiB, crdt StoreLimits.value_bytes_max)."""

LOCAL, ONE, N, MAJORITY, ALL, LINEARIZABLE = "local", "one", "n", "majority", "all", "linearizable"
_LEVELS = (LOCAL, ONE, N, MAJORITY, ALL)


class StateError(Exception):
    """Base of the errors `node.state` raises on purpose."""


class ConsistencyNotMet(StateError):
    """A read or write did not reach the replicas its consistency level needs.

    The local replica still holds a write (it spreads when peers return); a read fell back to nothing.
    """

    def __init__(self, message: str, *, required: int, got: int) -> None:
        super().__init__(message)
        self.required = required
        self.got = got


class ConsistencyUnavailable(StateError, ValueError):
    """The consistency level is not served by this node (e.g. `linearizable` without a Raft group)."""


@dataclass(frozen=True, slots=True)
class Consistency:
    """How many replicas a read or write involves (Akka ReadLocal/ReadFrom(n)/ReadMajority/ReadAll)."""

    level: str
    """"local", "one", "n", "majority" or "all"."""
    n: int = 1
    """Replicas for level "n", this node included."""

    @classmethod
    def parse(cls, value: str | int | Consistency) -> Consistency:
        """Accept a `Consistency`, "local"/"one"/"majority"/"all", an int n or "n=3"/"3"."""
        if isinstance(value, Consistency):
            return value
        if type(value) is int:
            return cls._n(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in (LOCAL, ONE, MAJORITY, ALL):
                return cls(text, {LOCAL: 1, ONE: 2}.get(text, 1))
            if text == LINEARIZABLE:
                raise ConsistencyUnavailable(
                    "linearizable is served by node.state through the Raft group, not by CRDT replication; "
                    "pass consistency='linearizable' to node.state, or use majority or all here"
                )
            digits = text.removeprefix("n=")
            if digits.isdigit():
                return cls._n(int(digits))
        raise ValueError(f"unknown consistency {value!r}; use local, one, majority, all, linearizable or a replica count like 3")

    @classmethod
    def _n(cls, n: int) -> Consistency:
        if not 1 <= n <= 10_000:
            raise ValueError(f"a replica count must be 1..10000, got {n}")
        return cls(LOCAL, 1) if n == 1 else cls(N, n)

    def required(self, roster_size: int) -> int:
        """Replicas (this one included) a call needs when the roster has `roster_size` members."""
        if self.level == LOCAL:
            return 1
        if self.level == MAJORITY:
            return roster_size // 2 + 1
        if self.level == ALL:
            return roster_size
        return min(self.n, roster_size)  # "one" and "n": all replicas if fewer exist (Akka WriteTo(n))

    def __str__(self) -> str:
        return str(self.n) if self.level == N else self.level


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Replication knobs; integer milliseconds."""

    delta_interval_ms: int = 20
    """Local changes within this window go out as one batch per peer (Akka propagates deltas every
    gossip-interval/5 = 400 ms; a LAN node can afford a shorter window)."""
    ack_timeout_ms: int = 1_000
    """A peer that has not acknowledged a batch by then gets the unacknowledged deltas again."""
    window_deltas: int = 4_096
    """Log positions sent but not acknowledged, per peer."""
    batch_deltas_max: int = 512
    """Deltas in one batch frame (Akka delta-crdt.max-delta-elements is 500)."""
    backlog_deltas_max: int = 1_000
    """A peer further behind than this is synchronised by digests instead of replaying the log."""
    digest_interval_ms: int = 1_000
    """Digest exchange with one random peer (memberlist push-pull is 30 s; a bucket digest is 2 KiB)."""
    digest_buckets_min: int = 64
    """Fewest buckets in a digest (64 x 8 bytes); the initiator picks the count and the peer follows."""
    keys_per_bucket: int = 8
    """Target keys per bucket: a changed key costs the per-key digests of its bucket (~17 bytes each)."""
    sync_stagger_ms: int = 100
    """When two peers start synchronising with each other, the one with the greater id waits this long
    for the other's round (serving it synchronises both), so one round does the work of two."""
    round_timeout_ms: int = 3_000
    """A digest round with no answer by then is abandoned (and retried at the next interval)."""
    gc_interval_ms: int = 5_000
    """How often causally stable tombstones are collected."""
    forget_dead_after_ms: int = 24 * 3600 * 1000
    """A failed member leaves the roster after this long (Serf reconnect_timeout and tombstone_timeout
    are 24 h); until then it counts in majority/all and holds tombstone collection back."""
    default_timeout_ms: int = 5_000
    """Deadline of a read or write that waits for replicas, unless the call gives one."""
    retire_forgotten: bool = True
    """A failed member forgotten after `forget_dead_after_ms` is retired: its entries are folded and
    its id is refused from then on (a node that comes back after that long must wipe its data
    directory, which gives it a new identity; docs/state.md)."""
    prune_keys_per_tick: int = 1_000
    """Keys the owner folds per `gc_interval_ms` (each fold ships the key's full state once)."""

    def __post_init__(self) -> None:
        for name in ("delta_interval_ms", "ack_timeout_ms", "sync_stagger_ms", "window_deltas", "batch_deltas_max", "backlog_deltas_max",
                     "digest_interval_ms", "round_timeout_ms", "gc_interval_ms", "forget_dead_after_ms",
                     "default_timeout_ms", "prune_keys_per_tick"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"ReplicationConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not 1 <= self.digest_buckets_min <= BUCKETS_MAX or self.digest_buckets_min & (self.digest_buckets_min - 1):
            raise ValueError(f"ReplicationConfig.digest_buckets_min must be a power of two in 1..{BUCKETS_MAX}")
        if self.keys_per_bucket < 1:
            raise ValueError("ReplicationConfig.keys_per_bucket must be at least 1")


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """The local replica of `key` changed (the runtime tells watchers)."""

    key: str
    source: str
    """"local", "delta", "write" (a peer's write at a consistency level), "repair", "read" or "gc"
    (a collected tombstone, a fold of a retired replica's entries or a collected prune marker:
    nothing user-visible changed, the stored state did)."""


@dataclass(frozen=True, slots=True)
class WriteDone:
    """A write at a consistency level above local finished."""

    request_id: int
    key: str
    acks: int
    """Replicas that hold the write, this one included."""
    required: int
    error: str | None
    """None when it met its consistency level; else what went wrong (raise `ConsistencyNotMet`)."""


@dataclass(frozen=True, slots=True)
class ReadDone:
    """A read at a consistency level above local finished; the merged value is in the local replica."""

    request_id: int
    key: str
    replies: int
    """Replicas whose state was merged, this one included."""
    required: int
    error: str | None


ReplicationEvent = Union[KeyChanged, WriteDone, ReadDone]


# -- internal state ----------------------------------------------------------------------------


class _Member:
    __slots__ = ("address", "live", "down_at")

    def __init__(self, address: str) -> None:
        self.address = address
        self.live = True
        self.down_at = 0


class _Stream:
    """Our delta stream to one peer."""

    __slots__ = ("acked", "sent", "sent_at", "syncing", "base")

    def __init__(self) -> None:
        self.acked = 0
        self.sent = 0
        self.sent_at = 0
        self.syncing = False
        self.base = 0
        """Sequence up to which a digest repair brought the peer (sent until acknowledged)."""


class _Inbound:
    """A peer's delta stream to us: its boot epoch and the last sequence applied."""

    __slots__ = ("epoch", "applied")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.applied = 0


class _Round:
    __slots__ = ("peer", "seq", "deadline", "count", "seen")

    def __init__(self, peer: str, seq: int, deadline: int, count: int, seen: VectorClock) -> None:
        self.peer = peer
        self.seq = seq
        """Our log position when the digest left: the peer will have everything up to it."""
        self.deadline = deadline
        self.count = count
        """Buckets in this round's digest."""
        self.seen = seen
        """Our seen vector when the digest left: a peer the round repaired completely may adopt it."""


class _Request:
    __slots__ = ("kind", "key", "required", "peers", "answered", "deadline")

    def __init__(self, kind: str, key: str, required: int, peers: list[str], deadline: int) -> None:
        self.kind = kind
        self.key = key
        self.required = required
        self.peers = dict.fromkeys(peers)
        self.answered: dict[str, None] = {}
        self.deadline = deadline


class _Bad(Exception):
    """A peer frame we cannot use; the argument is the counter to bump."""


_COUNTERS = (
    "frames_sent", "frames_received", "dropped_malformed", "dropped_version", "dropped_wrong_cluster",
    "dropped_not_member", "dropped_outbox_full", "dropped_stale_epoch", "events_dropped", "delta_batches_sent",
    "deltas_sent", "deltas_applied", "deltas_duplicate", "deltas_rejected_limit", "delta_gaps", "delta_resends",
    "syncs_started", "rounds_started", "rounds_completed", "rounds_timed_out", "rounds_truncated", "states_repaired",
    "states_rejected_limit", "repairs_sent", "repair_states_sent", "writes_started", "writes_failed",
    "reads_started", "reads_failed", "tombstones_collected", "bucket_mismatch",
    "replicas_retired", "keys_pruned", "prune_rejected_limit", "prune_waiting", "markers_collected", "dropped_retired",
)


class Replicator:
    """The sans-I/O replication core around one `StateStore` (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        *,
        cluster: str,
        epoch: int,
        rng: random.Random,
        config: ReplicationConfig | None = None,
    ) -> None:
        if type(epoch) is not int or not 0 <= epoch <= SEQ_MAX:
            raise ValueError("epoch must be a non-negative int, strictly greater after every restart (persist it)")
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        self.node_id = store.replica_id
        self.cluster = cluster
        self.epoch = epoch
        self.config = config or ReplicationConfig()
        self.store = store
        self._rng = rng
        self._roster: dict[str, _Member] = {}
        self._live: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._inbound: dict[str, _Inbound] = {}
        self._peer_seen: dict[str, VectorClock] = {}
        self._peer_claims: dict[str, dict[str, str]] = {}
        self._now_ms: int | None = None
        self._born_ms: int | None = None
        """First time this core saw the clock: for `forget_dead_after_ms` after it, every replica its
        (possibly restored) store has seen events from is an owner candidate (decision 0024)."""
        self._prune_idle: dict[str, int] = {}
        """Retired replica -> GC ticks to skip before the owner scans the store for it again."""
        self._left_at: dict[str, int] = {}
        """Members that left (not retired) -> when: still owner candidates for `forget_dead_after_ms`,
        so an owner that folded and restarted (a leave) is not replaced by a second folder meanwhile."""
        """Per member: retired replica -> the owner it named in the report that carried its seen vector."""
        self._rounds: dict[int, _Round] = {}
        self._sync_at: dict[str, int] = {}
        self._serving: dict[str, tuple[int, int, int, VectorClock]] = {}
        """Rounds a peer started with us: peer -> (round id, our log position then, bucket count, our seen then)."""
        self._requests: dict[int, _Request] = {}
        self._next_id = 1
        self._wire_cache: dict[int, tuple[list[Any], int]] = {}
        self._flush_at: int | None = None
        self._digest_at: int | None = None
        self._gc_at: int | None = None
        self._outbox: list[Outgoing] = []
        self._events: deque[ReplicationEvent] = deque()
        self._dirty: dict[str, None] = {}
        self._bucket_acc = [0] * BUCKETS_MAX
        self._bucket_keys: list[dict[str, None]] = [{} for _ in range(BUCKETS_MAX)]
        self._key_hash: dict[str, int] = {}
        self._key_bucket: dict[str, int] = {}
        self._summary_cache: dict[int, list[bytes]] = {}
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        for key in sorted([*store.keys(), *store.tombstones()]):
            self._dirty[key] = None

    # -- membership input ---------------------------------------------------------------------

    def member_up(self, node_id: str, address: str, now_ms: int) -> None:
        """Membership says `node_id` is alive (joined, came back, or changed address)."""
        if node_id == self.node_id:
            return
        if self.store.is_retired(node_id):
            self.counters["dropped_retired"] += 1  # folded away for good: it must come back under a new id
            return
        self._left_at.pop(node_id, None)
        member = self._roster.get(node_id)
        if member is None:
            member = self._roster[node_id] = _Member(address)
        member.address = address
        self._arm_periodic(now_ms)
        if member.live and node_id in self._streams:
            return
        member.live = True
        if node_id not in self._live:
            self._live.append(node_id)
            self._live.sort()
        stream = self._streams.get(node_id)
        if stream is None:
            # A peer we never streamed to: synchronise by digests rather than replaying the whole log.
            self._streams[node_id] = _Stream()
            self._start_sync(node_id, now_ms)
            return
        stream.sent = stream.acked
        backlog = self.store.last_seq - stream.acked
        if backlog > self.config.backlog_deltas_max or self.store.deltas_since(stream.acked, 1) is None:
            self._start_sync(node_id, now_ms)
        else:
            self._arm_flush(now_ms)

    def member_down(self, node_id: str, now_ms: int, *, left: bool = False) -> None:
        """Membership declared `node_id` failed (it still counts in the roster) or it left (it does not)."""
        member = self._roster.get(node_id)
        if member is None:
            return
        if node_id in self._live:
            self._live.remove(node_id)
        member.live = False
        member.down_at = now_ms
        if left:
            self._forget(node_id)
            if not self.store.is_retired(node_id):
                self._left_at[node_id] = now_ms
                if len(self._left_at) > MAX_LEFT_REMEMBERED:
                    del self._left_at[min(self._left_at, key=lambda n: (self._left_at[n], n))]
        for request_id in sorted(self._requests):
            self._check_request(request_id, now_ms)

    def retire(self, node_id: str, now_ms: int) -> None:
        """The roster removed `node_id` for good (revoked, decommissioned): forget it and fold its entries.

        Its frames are refused from then on and `member_up` ignores it. The fold itself happens
        later, on the owner, once it is safe (module docstring; decision 0024).
        """
        if node_id == self.node_id:
            raise ValueError("a node cannot retire itself; retire it from another member")
        if node_id in self._roster:
            self.member_down(node_id, now_ms, left=True)
        self._left_at.pop(node_id, None)
        if not self.store.is_retired(node_id):
            self.store.retire(node_id)
            self.counters["replicas_retired"] += 1
        self._arm_periodic(now_ms)

    def retired(self) -> list[str]:
        """Replica ids retired here (locally or learnt from prune markers), sorted."""
        return self.store.retired()

    def prune_owner(self) -> str:
        """The replica that folds retired replicas' entries, as this node sees it: the lowest id among
        the roster, this node, members that left less than `forget_dead_after_ms` ago and, for
        `forget_dead_after_ms` after this core started, every non-retired replica its store has seen
        events from (a restarted node does not know yet who failed: it must not name itself)."""
        candidates = [self.node_id, *self._roster, *self._left_at]
        if self._warming_up():
            candidates.extend(r for r, _ in self.store.seen().items() if not self.store.is_retired(r))
        return min(candidates)

    # -- API calls ----------------------------------------------------------------------------

    def update(self, key: str, type_name: str, op: str, args: Iterable[object], now_ms: int,
               consistency: str | int | Consistency = LOCAL, timeout_ms: int | None = None) -> int | None:
        """Apply `op(*args)` to `key` locally and replicate it.

        Returns None when the write is done (level local), else a request id answered by a
        `WriteDone` event. Raises `CrdtUsageError`/`LimitExceededError` for misuse or limits
        (nothing changed), `ValueError` for a bad consistency, `ConsistencyNotMet` when too few
        replicas are reachable to even try (the write is applied locally anyway).
        """
        level = Consistency.parse(consistency)
        self._check_room_for_request(level)
        delta = self.store.update(key, type_name, op, *args)
        return self._after_local_write(delta, level, now_ms, timeout_ms)

    def delete(self, key: str, now_ms: int, consistency: str | int | Consistency = LOCAL,
               timeout_ms: int | None = None) -> int | None:
        """Delete `key` (a tombstone that wins over concurrent writes); like `update` otherwise."""
        level = Consistency.parse(consistency)
        self._check_room_for_request(level)
        delta = self.store.delete(key)
        return self._after_local_write(delta, level, now_ms, timeout_ms)

    def read(self, key: str, now_ms: int, consistency: str | int | Consistency = LOCAL,
             timeout_ms: int | None = None) -> int | None:
        """Start a read. None: read the local replica now (`value`); else wait for `ReadDone`."""
        level = Consistency.parse(consistency)
        _check_key(key, self.store.limits.key_bytes_max)
        if level.level == LOCAL:
            return None
        self._check_room_for_request(level)
        required = level.required(len(self._roster) + 1)
        self._fail_fast("read", key, required)
        if required <= 1:
            return None
        request_id = self._new_request("read", key, required, now_ms, timeout_ms)
        for peer in self._live:
            self._send(peer, [T_READ, request_id, key])
        self.counters["reads_started"] += 1
        return request_id

    def value(self, key: str, default: Any = None) -> Any:
        """The local replica's value of `key`."""
        return self.store.value(key, default)

    def roster(self) -> dict[str, bool]:
        """Members counted by majority/all: node id -> live, this node included."""
        view = {m: r.live for m, r in self._roster.items()}
        view[self.node_id] = True
        return dict(sorted(view.items()))

    def live_peers(self) -> list[str]:
        return list(self._live)

    def stream_lag(self) -> dict[str, int]:
        """Per live peer: logged deltas it has not acknowledged yet."""
        return {p: self.store.last_seq - self._streams[p].acked for p in self._live if p in self._streams}

    def bucket_digests(self, count: int = BUCKETS_MAX) -> list[bytes]:
        """The digest summary at `count` buckets (a power of two): XOR of per-key hashes per bucket."""
        self._refresh()
        cached = self._summary_cache.get(count)
        if cached is not None:
            return cached
        acc = self._bucket_acc
        if count < BUCKETS_MAX:
            folded = acc[:count]
            for j in range(count, BUCKETS_MAX):
                folded[j & (count - 1)] ^= acc[j]
            acc = folded
        summary = [(a >> 64 ^ a & 0xFFFFFFFFFFFFFFFF).to_bytes(BUCKET_DIGEST_BYTES, "big") for a in acc]
        self._summary_cache[count] = summary
        return summary

    def root_digest(self) -> bytes:
        """One digest of the whole replica (equal on converged replicas)."""
        h = hashlib.blake2b(digest_size=16)
        for d in self.bucket_digests():
            h.update(d)
        return h.digest()

    def bucket_count(self) -> int:
        """Buckets this replica asks for in a digest round: about one per `keys_per_bucket` keys."""
        want = max(1, len(self.store) // self.config.keys_per_bucket)
        count = self.config.digest_buckets_min
        while count < want and count < BUCKETS_MAX:
            count *= 2
        return count

    def sync_with(self, node_id: str, now_ms: int) -> None:
        """Start a digest round with a live peer now (tests, operators)."""
        if node_id in self._live:
            self._start_round(node_id, now_ms)

    # -- core shape ---------------------------------------------------------------------------

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        """One replication frame from the authenticated `sender_id`; garbage is counted and dropped."""
        self.counters["frames_received"] += 1
        try:
            kind, body = self._open(frame)
            if self.store.is_retired(sender_id):
                raise _Bad("dropped_retired")
            if sender_id not in self._roster or not self._roster[sender_id].live:
                # Frames from a member we do not (yet) see alive: membership will report it; its
                # stream and repairs start then. Reads and writes are answered regardless.
                if kind not in (T_READ, T_WRITE):
                    raise _Bad("dropped_not_member")
            handler = self._handlers[kind]
            handler(self, sender_id, body, now_ms)
        except _Bad as exc:
            self.counters[str(exc)] += 1
        except CodecError:
            self.counters["dropped_malformed"] += 1

    def handle_timer(self, now_ms: int) -> None:
        """Ship delta batches, retransmit, expire rounds and requests, run digests and GC."""
        self._now_ms = now_ms
        if self._born_ms is None:
            self._born_ms = now_ms
        for request_id in [r for r, q in self._requests.items() if q.deadline <= now_ms]:
            self._finish_request(request_id, timed_out=True)
        for round_id in [r for r, rd in self._rounds.items() if rd.deadline <= now_ms]:
            rd = self._rounds.pop(round_id)
            self.counters["rounds_timed_out"] += 1
            stream = self._streams.get(rd.peer)
            if stream is not None and stream.syncing and rd.peer in self._live:
                self._start_round(rd.peer, now_ms)
        for peer in self._live:
            stream = self._streams[peer]
            if not stream.syncing and stream.sent > stream.acked and now_ms - stream.sent_at >= self.config.ack_timeout_ms:
                stream.sent = stream.acked  # go back: the batch or its ack was lost
                self.counters["delta_resends"] += 1
                self._flush_at = now_ms
        for peer in [p for p, t in self._sync_at.items() if t <= now_ms]:
            del self._sync_at[peer]
            stream = self._streams.get(peer)
            if stream is not None and stream.syncing and peer in self._live:
                self._start_round(peer, now_ms)
        if self._flush_at is not None and now_ms >= self._flush_at:
            self._flush_at = None
            for peer in list(self._live):
                self._fill(peer, now_ms)
        if self._digest_at is not None and now_ms >= self._digest_at:
            self._digest_at = now_ms + self._jitter(self.config.digest_interval_ms)
            if self._live:
                self._start_round(self._live[self._rng.randrange(len(self._live))], now_ms)
        if self._gc_at is not None and now_ms >= self._gc_at:
            self._gc_at = now_ms + self.config.gc_interval_ms
            self._reap(now_ms)
            self._collect_garbage()
            self._prune(now_ms)

    def get_timer(self) -> int | None:
        due = [t for t in (self._flush_at, self._digest_at, self._gc_at) if t is not None]
        if self._requests:
            due.append(min(q.deadline for q in self._requests.values()))
        if self._rounds:
            due.append(min(rd.deadline for rd in self._rounds.values()))
        if self._sync_at:
            due.append(min(self._sync_at.values()))
        for peer in self._live:
            stream = self._streams[peer]
            if not stream.syncing and stream.sent > stream.acked:
                due.append(stream.sent_at + self.config.ack_timeout_ms)
        return min(due) if due else None

    def messages_to_send(self) -> list[Outgoing]:
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> ReplicationEvent | None:
        return self._events.popleft() if self._events else None

    # -- local writes and requests ------------------------------------------------------------

    def _after_local_write(self, delta: Delta, level: Consistency, now_ms: int, timeout_ms: int | None) -> int | None:
        self._changed(delta.key, "local")
        self._arm_flush(now_ms)
        if level.level == LOCAL:
            return None
        required = level.required(len(self._roster) + 1)
        self._fail_fast("write", delta.key, required)
        if required <= 1:
            return None
        request_id = self._new_request("write", delta.key, required, now_ms, timeout_ms)
        wire = delta.to_wire(self.store.limits.wire)
        for peer in self._live:
            self._send(peer, [T_WRITE, request_id, wire])
        self.counters["writes_started"] += 1
        return request_id

    def _check_room_for_request(self, level: Consistency) -> None:
        if level.level != LOCAL and len(self._requests) >= MAX_PENDING_REQUESTS:
            raise StateError(f"{MAX_PENDING_REQUESTS} reads/writes are already waiting for replicas; await some first")

    def _fail_fast(self, what: str, key: str, required: int) -> None:
        reachable = len(self._live) + 1
        if reachable < required:
            self.counters["writes_failed" if what == "write" else "reads_failed"] += 1
            tail = " The write is applied here and spreads when peers return." if what == "write" else ""
            raise ConsistencyNotMet(
                f"{what} of {key!r:.60} needs {required} of {len(self._roster) + 1} replicas but only {reachable} "
                f"{'is' if reachable == 1 else 'are'} reachable.{tail}",
                required=required, got=reachable,
            )

    def _new_request(self, kind: str, key: str, required: int, now_ms: int, timeout_ms: int | None) -> int:
        if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms < 1):
            raise ValueError("timeout_ms must be a positive int")
        request_id = self._next_id
        self._next_id += 1
        deadline = now_ms + (timeout_ms or self.config.default_timeout_ms)
        self._requests[request_id] = _Request(kind, key, required, self._live, deadline)
        return request_id

    def _check_request(self, request_id: int, now_ms: int) -> None:
        q = self._requests.get(request_id)
        if q is None:
            return
        if 1 + len(q.answered) >= q.required:
            self._finish_request(request_id, timed_out=False)
            return
        possible = 1 + len(q.answered) + sum(1 for p in q.peers if p not in q.answered and p in self._live)
        if possible < q.required:
            self._finish_request(request_id, timed_out=False)

    def _finish_request(self, request_id: int, *, timed_out: bool) -> None:
        q = self._requests.pop(request_id)
        got = 1 + len(q.answered)
        error = None
        if got < q.required:
            why = "timed out" if timed_out else "lost peers"
            error = f"{q.kind} of {q.key!r:.60} reached {got} of the {q.required} replicas it needs ({why})"
            if q.kind == "write":
                error += "; the write is applied here and spreads when peers return"
            self.counters["writes_failed" if q.kind == "write" else "reads_failed"] += 1
        if q.kind == "write":
            self._emit(WriteDone(request_id, q.key, got, q.required, error))
        else:
            self._emit(ReadDone(request_id, q.key, got, q.required, error))

    # -- frames -------------------------------------------------------------------------------

    def _open(self, frame: Any) -> tuple[int, list[Any]]:
        if type(frame) is not list or len(frame) < 3:
            raise _Bad("dropped_malformed")
        if frame[0] != PROTOCOL_VERSION or type(frame[0]) is not int:
            raise _Bad("dropped_version")
        if type(frame[1]) is not str or len(frame[1]) > MAX_CLUSTER_CHARS or frame[1] != self.cluster:
            raise _Bad("dropped_wrong_cluster")
        kind = frame[2]
        if type(kind) is not int or kind not in self._handlers:
            raise _Bad("dropped_malformed")
        return kind, frame[3:]

    def _on_deltas(self, sender: str, body: list[Any], now_ms: int) -> None:
        epoch, after, upto, base, flat = _fields(body, 5)
        epoch, after, upto, base = _uint(epoch), _uint(after), _uint(upto), _uint(base)
        if upto < after or type(flat) is not list or len(flat) % 2 or len(flat) > 2 * self.config.batch_deltas_max * 4:
            raise _Bad("dropped_malformed")
        inbound = self._inbound.get(sender)
        if inbound is None or epoch > inbound.epoch:
            inbound = self._inbound[sender] = _Inbound(epoch)
        elif epoch < inbound.epoch:
            raise _Bad("dropped_stale_epoch")
        if base > inbound.applied:
            inbound.applied = base  # the sender repaired us up to `base` by digests
        if after > inbound.applied:
            self.counters["delta_gaps"] += 1
            self._send(sender, [T_DELTA_ACK, epoch, inbound.applied, True, _vv_flat(self.store.seen()), *self._claims()])
            return
        last = after
        decoded: list[tuple[int, Delta]] = []
        for i in range(0, len(flat), 2):
            seq = _uint(flat[i])
            if seq <= last or seq > upto:
                raise _Bad("dropped_malformed")
            last = seq
            if seq > inbound.applied:
                decoded.append((seq, Delta.from_wire(flat[i + 1], self.store.limits.wire)))
        for seq, delta in decoded:
            self._apply_delta(delta, "delta", now_ms)
            inbound.applied = seq
        inbound.applied = max(inbound.applied, upto)  # the rest of the stretch was skipped: we had it
        self._send(sender, [T_DELTA_ACK, epoch, inbound.applied, False, _vv_flat(self.store.seen()), *self._claims()])

    def _on_delta_ack(self, sender: str, body: list[Any], now_ms: int) -> None:
        epoch, seq, gap, seen = _fields(body, 4, 5)[:4]
        epoch, seq = _uint(epoch), _uint(seq)
        if type(gap) is not bool:
            raise _Bad("dropped_malformed")
        self._report(sender, seen, body[4] if len(body) == 5 else None)
        stream = self._streams.get(sender)
        if epoch != self.epoch or stream is None or stream.syncing:
            return
        if seq > self.store.last_seq:
            raise _Bad("dropped_malformed")
        if seq > stream.acked:
            stream.acked = seq
            stream.sent = max(stream.sent, seq)
            if seq >= stream.base:
                stream.base = 0
        if gap:
            # The peer lost our stream (it restarted, or frames were lost): go back to what it has.
            stream.acked = stream.sent = seq
            if self.store.deltas_since(seq, 1) is None or self.store.last_seq - seq > self.config.backlog_deltas_max:
                self._start_sync(sender, now_ms)
                return
        self._arm_flush(now_ms)

    def _on_digest(self, sender: str, body: list[Any], now_ms: int) -> None:
        round_id, count, digests, seen = _fields(body, 4, 5)[:4]
        round_id = _uint(round_id)
        if type(count) is not int or not 1 <= count <= BUCKETS_MAX or count & (count - 1):
            raise _Bad("bucket_mismatch")
        if type(digests) is not list or len(digests) != count:
            raise _Bad("dropped_malformed")
        self._report(sender, seen, body[4] if len(body) == 5 else None)
        seq0 = self.store.last_seq
        mine = self.bucket_digests(count)
        differ = [i for i in range(count) if digests[i] != mine[i]]
        keys_flat: list[Any] = []
        size = 0
        used: list[int] = []
        truncated = False
        for b in differ:
            if size > FRAME_BYTES_TARGET:
                truncated = True
                break
            used.append(b)
            for key, d in self.store.digest(self._keys_in([b], count)).items():
                keys_flat.extend((key, d[:KEY_DIGEST_BYTES]))
                size += len(key) + KEY_DIGEST_BYTES + 4
        self._send(sender, [T_KEY_DIGESTS, round_id, count, used, keys_flat, truncated])
        if not differ:
            self._synced(sender, seq0, now_ms)  # equal replicas: the peer has everything we had at seq0
            # ...and we hold everything it had when its digest left: its seen vector is ours too.
            self._adopt_seen(self._peer_seen[sender])
        elif not truncated:
            self._serving[sender] = (round_id, seq0, count, self.store.seen())

    def _on_key_digests(self, sender: str, body: list[Any], now_ms: int) -> None:
        round_id, count, used, keys_flat, truncated = _fields(body, 5)
        round_id = _uint(round_id)
        rd = self._rounds.get(round_id)
        if rd is None or rd.peer != sender or count != rd.count:
            return  # late answer to an abandoned round
        del self._rounds[round_id]
        used = self._bucket_list(used, count)
        remote = _key_digests(keys_flat)
        if type(truncated) is not bool:
            raise _Bad("dropped_malformed")
        complete = not truncated
        if used:
            within = self._keys_in(used, count)
            complete &= self._send_repair(sender, round_id, remote, within, used, rd.seen if complete else None)
        self.counters["rounds_completed"] += 1
        stream = self._streams.get(sender)
        if stream is None or sender not in self._live:
            return
        if complete:
            # Everything we had when the digest left is now at the peer (or in flight before our next batch).
            self._synced(sender, rd.seq, now_ms)
        else:
            self.counters["rounds_truncated"] += 1
            self._start_round(sender, now_ms)

    def _on_repair(self, sender: str, body: list[Any], now_ms: int) -> None:
        round_id, repair_wire, used, keys_flat = _fields(body, 4)
        repair = Repair.from_wire(repair_wire, self.store.limits.wire)
        reply_needed = used is not None
        serving = self._serving.pop(sender, None)
        if reply_needed:
            if serving is None or serving[0] != round_id:
                reply_needed = False  # not a round we served (or a stale one): just apply the states
            else:
                used = self._bucket_list(used, serving[2])
                remote = _key_digests(keys_flat)
        rejected = self.counters["states_rejected_limit"]
        for key, state in repair.states:
            self._apply_state(key, state, "repair", repair.markers_of(key))
        if repair.complete and self.counters["states_rejected_limit"] == rejected:
            # A complete repair is sent only at the end of a round whose digests covered every
            # differing bucket: we now hold every key at least as the sender did at `repair.seen`.
            self._adopt_seen(repair.seen)
        if reply_needed and used:
            assert serving is not None
            complete = self._send_repair(sender, round_id, remote, self._keys_in(used, serving[2]), None, serving[3])
            if complete:
                # Serving the peer's round repaired it too: it now has all we had when we compared digests.
                self._synced(sender, serving[1], now_ms)

    def _on_write(self, sender: str, body: list[Any], now_ms: int) -> None:
        request_id, delta_wire = _fields(body, 2)
        request_id = _uint(request_id)
        delta = Delta.from_wire(delta_wire, self.store.limits.wire)
        if self._apply_delta(delta, "write", now_ms):
            self._send(sender, [T_WRITE_ACK, request_id])

    def _on_write_ack(self, sender: str, body: list[Any], now_ms: int) -> None:
        self._answered(sender, _uint(_fields(body, 1)[0]), "write", now_ms)

    def _on_read(self, sender: str, body: list[Any], now_ms: int) -> None:
        request_id, key = _fields(body, 2)
        request_id = _uint(request_id)
        if type(key) is not str or not key or len(key) > 1024:
            raise _Bad("dropped_malformed")
        held = self.store.state_for([key]).get(key)
        reply = [T_READ_REPLY, request_id, key, None if held is None else to_wire(held, self.store.limits.wire)]
        markers = self.store.markers(key)
        if markers and held is not None:
            reply.append(markers_to_wire(markers))
        self._send(sender, reply)

    def _on_read_reply(self, sender: str, body: list[Any], now_ms: int) -> None:
        request_id, key, state_wire = _fields(body, 3, 4)[:3]
        request_id = _uint(request_id)
        q = self._requests.get(request_id)
        if q is None or q.kind != "read" or q.key != key:
            return
        if state_wire is not None:
            pruned = markers_from_wire(body[3], self.store.limits.wire) if len(body) == 4 else ()
            self._apply_state(key, from_wire(state_wire, self.store.limits.wire), "read", pruned)
        self._answered(sender, request_id, "read", now_ms)

    _handlers = {
        T_DELTAS: _on_deltas,
        T_DELTA_ACK: _on_delta_ack,
        T_DIGEST: _on_digest,
        T_KEY_DIGESTS: _on_key_digests,
        T_REPAIR: _on_repair,
        T_WRITE: _on_write,
        T_WRITE_ACK: _on_write_ack,
        T_READ: _on_read,
        T_READ_REPLY: _on_read_reply,
    }

    # -- delta stream -------------------------------------------------------------------------

    def _fill(self, peer: str, now_ms: int) -> None:
        """Send the next batch(es) of logged deltas to `peer`, within its window."""
        stream = self._streams[peer]
        if stream.syncing:
            return
        seen = self._peer_seen.get(peer)
        cfg = self.config
        while stream.sent < self.store.last_seq and stream.sent - stream.acked < cfg.window_deltas:
            entries = self.store.deltas_since(stream.sent, cfg.batch_deltas_max)
            if entries is None:
                self._start_sync(peer, now_ms)
                return
            after = stream.sent
            flat: list[Any] = []
            size = 0
            last = after
            for seq, delta in entries:
                if size > FRAME_BYTES_TARGET:
                    break
                last = seq
                dot = delta.dot
                if dot.replica == peer or (seen is not None and seen.covers_dot(dot.replica, dot.counter)):
                    continue
                wire, n = self._delta_wire(seq, delta)
                flat.extend((seq, wire))
                size += n
            self._send(peer, [T_DELTAS, self.epoch, after, last, stream.base, flat])
            self.counters["delta_batches_sent"] += 1
            self.counters["deltas_sent"] += len(flat) // 2
            stream.sent = last
            stream.sent_at = now_ms

    def _delta_wire(self, seq: int, delta: Delta) -> tuple[list[Any], int]:
        hit = self._wire_cache.get(seq)
        if hit is None:
            wire = delta.to_wire(self.store.limits.wire)
            hit = (wire, wire_size(delta.state) + len(delta.key) + 24)
            self._wire_cache[seq] = hit
            if len(self._wire_cache) > self.config.window_deltas * 2:
                del self._wire_cache[next(iter(self._wire_cache))]
        return hit

    def _apply_delta(self, delta: Delta, source: str, now_ms: int) -> bool:
        """Join a peer's delta; False only when a limit refused it (the peer should not count it)."""
        try:
            if self.store.apply_delta(delta):
                self.counters["deltas_applied"] += 1
                self._changed(delta.key, source)
                self._arm_flush(now_ms)  # forward it: causal delivery travels transitively
            else:
                self.counters["deltas_duplicate"] += 1
        except LimitExceededError:
            self.counters["deltas_rejected_limit"] += 1
            return False
        except CrdtUsageError:
            raise _Bad("dropped_malformed") from None
        return True

    def _apply_state(self, key: str, state: Crdt, source: str, pruned: tuple[PruneMarker, ...] = ()) -> None:
        try:
            if self.store.apply_state(key, state, pruned):
                self.counters["states_repaired"] += 1
                self._changed(key, source)
        except LimitExceededError:
            self.counters["states_rejected_limit"] += 1
        except CrdtUsageError:
            raise _Bad("dropped_malformed") from None

    # -- digest rounds ------------------------------------------------------------------------

    def _start_sync(self, peer: str, now_ms: int) -> None:
        stream = self._streams[peer]
        stream.syncing = True
        stream.sent = stream.acked
        self.counters["syncs_started"] += 1
        if self.node_id < peer:
            self._start_round(peer, now_ms)
        else:
            # Both sides usually start at once (both saw the other come up): the greater id waits,
            # since serving the other side's round synchronises it as well.
            self._sync_at[peer] = now_ms + self.config.sync_stagger_ms

    def _synced(self, peer: str, seq: int, now_ms: int) -> None:
        """`peer` holds everything this replica had at log position `seq`: resume its stream after it."""
        stream = self._streams.get(peer)
        if stream is None or peer not in self._live:
            return
        if seq > stream.acked:
            stream.acked = seq
            stream.sent = max(stream.sent, seq)
            stream.base = seq
        if stream.syncing:
            stream.syncing = False
            stream.sent = stream.acked
            self._sync_at.pop(peer, None)
            for rid in [r for r, rd in self._rounds.items() if rd.peer == peer]:
                del self._rounds[rid]
        self._arm_flush(now_ms)

    def _start_round(self, peer: str, now_ms: int) -> None:
        if any(rd.peer == peer for rd in self._rounds.values()) or len(self._rounds) >= MAX_ROUNDS:
            return
        round_id = self._next_id
        self._next_id += 1
        count = self.bucket_count()
        seen = self.store.seen()
        self._rounds[round_id] = _Round(peer, self.store.last_seq, now_ms + self.config.round_timeout_ms, count, seen)
        self._send(peer, [T_DIGEST, round_id, count, self.bucket_digests(count), _vv_flat(seen), *self._claims()])
        self.counters["rounds_started"] += 1

    def _send_repair(self, peer: str, round_id: int, remote: dict[str, bytes], within: list[str], used: list[int] | None,
                     seen: VectorClock | None = None) -> bool:
        """Send the states `peer` lacks among `within`; True unless the repair had to be cut short.

        With `seen` (our seen vector when the compared digests were taken, every differing bucket
        compared) an uncut repair is marked complete: after it the peer holds every key at least as
        we held it then, so it may adopt `seen` (decision 0025: without that, seen vectors of
        replicas synchronised by digests keep gaps and garbage collection stalls).
        """
        local = self.store.digest(within)
        keys = sorted(k for k in local if local[k][:KEY_DIGEST_BYTES] != remote.get(k))
        states: list[tuple[str, Crdt]] = []
        size = 0
        complete = True
        held = self.store.state_for(keys)
        for key, state in held.items():
            if size > FRAME_BYTES_TARGET and states:
                complete = False
                break
            states.append((key, state))
            size += wire_size(state) + len(key) + 8
        whole = complete and seen is not None
        repair = Repair(tuple(states), seen if whole else self.store.seen(), whole, self.store.markers_for(k for k, _ in states))
        digests: list[Any] | None = None
        if used is not None:
            digests = []
            for key, d in local.items():
                digests.extend((key, d[:KEY_DIGEST_BYTES]))
        self._send(peer, [T_REPAIR, round_id, repair.to_wire(self.store.limits.wire), used, digests])
        self.counters["repairs_sent"] += 1
        self.counters["repair_states_sent"] += len(states)
        return complete

    def _keys_in(self, buckets: list[int], count: int) -> list[str]:
        """Held keys in the given buckets of the `count`-bucket level, sorted."""
        self._refresh()
        keys: list[str] = []
        for b in buckets:
            for j in range(b, BUCKETS_MAX, count):
                keys.extend(self._bucket_keys[j])
        return sorted(keys)

    def _bucket_list(self, value: Any, count: int) -> list[int]:
        if type(value) is not list or len(value) > count:
            raise _Bad("dropped_malformed")
        out = []
        for b in value:
            if type(b) is not int or not 0 <= b < count:
                raise _Bad("dropped_malformed")
            out.append(b)
        return sorted(set(out))

    # -- bucket summary (incremental) ---------------------------------------------------------

    def _changed(self, key: str, source: str) -> None:
        self._dirty[key] = None
        self._emit(KeyChanged(key, source))

    def _refresh(self) -> None:
        """Fold changed keys into the per-bucket XOR of key hashes (O(changes), not O(keys))."""
        if not self._dirty:
            return
        dirty = list(self._dirty)
        self._dirty.clear()
        self._summary_cache.clear()
        digests = self.store.digest(dirty)
        for key in dirty:
            b = self._bucket_of(key)
            old = self._key_hash.pop(key, 0)
            d = digests.get(key)
            if d is None:
                self._bucket_keys[b].pop(key, None)
                new = 0
            else:
                self._bucket_keys[b][key] = None
                new = int.from_bytes(hashlib.blake2b(key.encode() + b"\0" + d, digest_size=16).digest(), "big")
                self._key_hash[key] = new
            self._bucket_acc[b] ^= old ^ new

    def _bucket_of(self, key: str) -> int:
        b = self._key_bucket.get(key)
        if b is None:
            b = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % BUCKETS_MAX
            if len(self._key_bucket) < 4 * self.store.limits.keys_max:
                self._key_bucket[key] = b
        return b

    # -- roster and garbage collection --------------------------------------------------------

    def _forget(self, node_id: str) -> None:
        self._peer_claims.pop(node_id, None)
        self._roster.pop(node_id, None)
        self._sync_at.pop(node_id, None)
        self._serving.pop(node_id, None)
        self._streams.pop(node_id, None)
        self._inbound.pop(node_id, None)
        self._peer_seen.pop(node_id, None)

    def _reap(self, now_ms: int) -> None:
        for node_id in [n for n, t in self._left_at.items() if now_ms - t >= self.config.forget_dead_after_ms]:
            del self._left_at[node_id]
        for node_id in sorted(self._roster):
            m = self._roster[node_id]
            if not m.live and now_ms - m.down_at >= self.config.forget_dead_after_ms:
                self._forget(node_id)
                if self.config.retire_forgotten and not self.store.is_retired(node_id):
                    self.store.retire(node_id)
                    self.counters["replicas_retired"] += 1

    def _warming_up(self) -> bool:
        """True for `forget_dead_after_ms` after this core started: its roster may still lack members."""
        return self._born_ms is None or self._now_ms is None or self._now_ms - self._born_ms < self.config.forget_dead_after_ms

    def _member_seen(self) -> dict[str, VectorClock] | None:
        """Every roster member's last reported seen vector; None while one has never reported.

        While warming up (a restarted node does not know who failed while it was away), every
        non-retired replica its store has seen events from must be back in the roster too: else a
        node restarted alone would collect tombstones and prune markers on its own (decision 0024).
        """
        if self._warming_up():
            for r, _ in self.store.seen().items():
                if r != self.node_id and r not in self._roster and not self.store.is_retired(r) and r not in self._left_at:
                    return None
        member_seen: dict[str, VectorClock] = {}
        for node_id in self._roster:
            seen = self._peer_seen.get(node_id)
            if seen is None:
                return None  # a member that never reported holds collection back
            member_seen[node_id] = seen
        return member_seen

    def _collect_garbage(self) -> None:
        if not self.store.tombstones() and not self.store.marker_count():
            return
        member_seen = self._member_seen()
        if member_seen is None:
            return
        if self.store.tombstones():
            before = self.store.tombstones()
            report = self.store.collect_garbage(member_seen)
            if report.collected:
                self.counters["tombstones_collected"] += report.collected
                after = set(self.store.tombstones())
                for key in before:
                    if key not in after:
                        self._changed(key, "gc")
        if self.store.marker_count():
            changed = self.store.collect_markers(member_seen)
            self.counters["markers_collected"] = self.store.stats.markers_collected
            for key in changed:
                self._changed(key, "gc")

    def _adopt_seen(self, seen: VectorClock) -> None:
        """Count `seen`'s events as seen here (only after holding every key at least as its owner did)."""
        if not self.store.seen().covers(seen):
            self.store.apply_repair(Repair((), seen, True))

    def _claims(self) -> list[Any]:
        """The optional trailing field of acks and digests: [retired, the owner we see, ...] (empty: omitted)."""
        retired = [r for r in self.store.retired() if r != self.node_id][:CLAIMS_MAX]
        if not retired:
            return []
        owner = self.prune_owner()
        flat: list[Any] = []
        for r in retired:
            flat.extend((r, owner))
        return [flat]

    def _report(self, sender: str, seen: Any, claims: Any) -> None:
        """A member's seen vector and, from the same moment, the owners it names for retired replicas."""
        self._peer_seen[sender] = _vv(seen)
        named: dict[str, str] = {}
        if claims is not None:
            if type(claims) is not list or len(claims) % 2 or len(claims) > 2 * CLAIMS_MAX:
                raise _Bad("dropped_malformed")
            for i in range(0, len(claims), 2):
                r, owner = claims[i], claims[i + 1]
                if type(r) is not str or type(owner) is not str or not r or not owner or max(len(r), len(owner)) > MAX_ID_CHARS:
                    raise _Bad("dropped_malformed")
                named[r] = owner
        self._peer_claims[sender] = named

    def _prune(self, now_ms: int) -> None:
        """As the owner, fold retired replicas' entries once it is safe (decision 0024).

        Safe means: (1) every roster member has reported, in the same frame as its seen vector, that
        it sees this node as the owner for the retired replica, so no other node folds it (a second
        owner would need this node's claim, and this node names itself); (2) this replica has seen
        every event of the retired replica that any member reported, so the fold holds all of its
        effects (reports made after a member retired it are final: it takes no frame from it).
        """
        retired = [r for r in self.store.retired() if r != self.node_id][:CLAIMS_MAX]
        if not retired or self.prune_owner() != self.node_id:
            return
        member_seen = self._member_seen()
        if member_seen is None:
            return
        mine = self.store.seen()
        budget = self.config.prune_keys_per_tick
        folded = 0
        for r in retired:
            if any(self._peer_claims.get(m, {}).get(r) != self.node_id for m in self._roster):
                continue
            if any(vv.get(r) > mine.get(r) for vv in member_seen.values()):
                self.counters["prune_waiting"] += 1  # a member holds events of r we lack: anti-entropy first
                continue
            idle = self._prune_idle.get(r, 0)
            if idle:
                self._prune_idle[r] = idle - 1
                continue
            keys = self.store.keys_mentioning(r, budget)
            if not keys:
                self._prune_idle[r] = PRUNE_IDLE_TICKS
            for key in keys:
                try:
                    delta = self.store.prune(key, r)
                except LimitExceededError:
                    self.counters["prune_rejected_limit"] += 1
                    continue
                budget -= 1
                if delta is not None:
                    folded += 1
                    self.counters["keys_pruned"] += 1
                    self._changed(key, "gc")
            if budget <= 0:
                break
        if folded:
            self._arm_flush(now_ms)

    # -- plumbing -----------------------------------------------------------------------------

    def _answered(self, sender: str, request_id: int, kind: str, now_ms: int) -> None:
        q = self._requests.get(request_id)
        if q is None or q.kind != kind or sender not in q.peers:
            return
        q.answered[sender] = None
        self._check_request(request_id, now_ms)

    def _arm_flush(self, now_ms: int) -> None:
        if self._live and (self._flush_at is None or self._flush_at > now_ms + self.config.delta_interval_ms):
            self._flush_at = now_ms + self.config.delta_interval_ms
        self._arm_periodic(now_ms)

    def _arm_periodic(self, now_ms: int) -> None:
        self._now_ms = now_ms
        if self._born_ms is None:
            self._born_ms = now_ms
        if self._digest_at is None:
            self._digest_at = now_ms + self._jitter(self.config.digest_interval_ms)
        if self._gc_at is None:
            self._gc_at = now_ms + self.config.gc_interval_ms

    def _jitter(self, interval: int) -> int:
        """Between half and the whole interval, so peers do not exchange digests in lockstep."""
        return interval // 2 + self._rng.randrange(interval // 2 + 1)

    def _send(self, peer: str, fields: list[Any]) -> None:
        member = self._roster.get(peer)
        if member is None:
            return
        if len(self._outbox) >= MAX_OUTBOX:
            self.counters["dropped_outbox_full"] += 1
            return
        self._outbox.append(Outgoing(member.address, peer, [PROTOCOL_VERSION, self.cluster, *fields]))
        self.counters["frames_sent"] += 1

    def _emit(self, event: ReplicationEvent) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)


# -- field helpers -----------------------------------------------------------------------------


def _fields(body: list[Any], n: int, n_max: int | None = None) -> list[Any]:
    """`body` if it has `n` fields (or up to `n_max`: optional trailing fields), else a malformed frame."""
    if not n <= len(body) <= (n if n_max is None else n_max):
        raise _Bad("dropped_malformed")
    return body


def _check_key(key: object, key_bytes_max: int) -> None:
    if type(key) is not str or not key:
        raise CrdtUsageError(f"state keys are non-empty str, got {key!r:.60}")
    if len(key.encode("utf-8", "surrogatepass")) > key_bytes_max:
        raise CrdtUsageError(f"key is longer than key_bytes_max={key_bytes_max} bytes")


def _uint(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= SEQ_MAX:
        raise _Bad("dropped_malformed")
    return value


def _vv_flat(vv: VectorClock) -> list[Any]:
    flat: list[Any] = []
    for replica, counter in vv.items():
        flat.extend((replica, counter))
    return flat


def _vv(flat: Any) -> VectorClock:
    if type(flat) is not list or len(flat) % 2 or len(flat) > 2 * 10_000:
        raise _Bad("dropped_malformed")
    counters: dict[str, int] = {}
    for i in range(0, len(flat), 2):
        replica, counter = flat[i], flat[i + 1]
        if type(replica) is not str or not replica or len(replica) > MAX_ID_CHARS or replica in counters:
            raise _Bad("dropped_malformed")
        if type(counter) is not int or not 1 <= counter <= SEQ_MAX:
            raise _Bad("dropped_malformed")
        counters[replica] = counter
    return VectorClock(counters)


def _key_digests(flat: Any) -> dict[str, bytes]:
    if type(flat) is not list or len(flat) % 2 or len(flat) > 2 * 200_000:
        raise _Bad("dropped_malformed")
    out: dict[str, bytes] = {}
    for i in range(0, len(flat), 2):
        key, d = flat[i], flat[i + 1]
        if type(key) is not str or not key or len(key) > 1024 or type(d) is not bytes or len(d) != KEY_DIGEST_BYTES:
            raise _Bad("dropped_malformed")
        out[key] = d
    return out

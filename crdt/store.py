"""StateStore: named CRDTs on one replica, with what anti-entropy needs (sans-I/O core).

The store is the pure core under the node's state subsystem. It never sends anything; it
returns deltas and answers questions, and the node decides who gets what and when:

(a) Delta propagation with causal delivery (Almeida et al. 2018, algorithm 2). Every local
    write or delete gets a store-level dot `(replica, n)` and lands in a bounded log with a
    local sequence number. A node keeps, per neighbour, the last sequence the neighbour
    acknowledged, ships `deltas_since(acked)` in order, and the neighbour applies them in
    order with `apply_delta` and acknowledges the last sequence. Applied deltas are logged
    too, so they travel on transitively; a delta whose dot was already seen is dropped (that
    makes duplicates harmless and stops loops). When the log no longer reaches back to the
    acknowledged sequence, `deltas_since` returns None and the node falls back to (b).
(b) Digest anti-entropy after partitions or loss. `bucket_digests()` summarises the store in a
    fixed number of buckets; for buckets that differ, peers exchange `digest(keys)`, then each
    side ships `repair_for(their digests)` and the other applies it with `apply_repair`.

Deletes leave a `Tombstone` that wins over any state of the key; tombstones are collected by
`collect_garbage` once causally stable (rule in docs/crdt.md, section "Garbage collection").
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import Crdt, checked_replica
from .causal import CausalContext, Dot
from .codec import DEFAULT_LIMITS, WireLimits, digest as wire_digest, from_wire, to_wire, type_for_name, type_names, wire_size
from .errors import CodecError, CrdtUsageError, LimitExceededError
from .tombstone import Tombstone
from .values import check_plain
from .vector_clock import ReplicaId, VectorClock

__all__ = ["Delta", "GcReport", "PruneMarker", "Repair", "StateStore", "StoreLimits", "StoreStats", "markers_from_wire", "markers_to_wire"]

BUCKETS_DEFAULT = 64
"""Digest buckets: 64 x 16 bytes = 1 KiB summarises the whole store in one gossip message."""


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds of one store."""

    keys_max: int = 100_000
    """Live keys plus tombstones. Akka Distributed Data: "The number of top level entries should
    not exceed 100000"."""
    key_bytes_max: int = 256
    """Length of a key in UTF-8 bytes."""
    value_bytes_max: int = 256 * 1024
    """Estimated encoded size of one key's state (Akka Artery's maximum-frame-size is 256 KiB,
    so any single value still fits one frame)."""
    log_entries_max: int = 10_000
    """Deltas kept for propagation; older gaps are repaired by digest exchange."""
    wire: WireLimits = field(default_factory=WireLimits)
    """Limits for encoding and decoding one value."""

    def __post_init__(self) -> None:
        for name in ("keys_max", "key_bytes_max", "value_bytes_max", "log_entries_max"):
            if type(getattr(self, name)) is not int or getattr(self, name) <= 0:
                raise ValueError(f"StoreLimits.{name} must be a positive int, got {getattr(self, name)!r}")


PRUNE_MARKERS_MAX = 64
"""Prune markers one key may carry at once (removed replicas being folded at the same time); more
is a peer's garbage. Markers live only until every member has seen the fold (decision 0024)."""


@dataclass(frozen=True, slots=True, order=True)
class PruneMarker:
    """`removed`'s entries of a key were folded into `owner`'s by the owner's store event `counter`.

    While a key holds the marker, every state joined into it is stripped of `removed` first, so a
    replica that has not folded yet cannot bring the removed entries back (Akka `PruningPerformed`).
    """

    removed: ReplicaId
    owner: ReplicaId
    counter: int
    """The owner's store-level event that folded the key: `Dot(owner, counter)`."""

    @property
    def dot(self) -> Dot:
        return Dot(self.owner, self.counter)


def markers_to_wire(markers: Iterable[PruneMarker]) -> list[Any]:
    """`[removed, owner, counter, ...]` in marker order."""
    flat: list[Any] = []
    for m in sorted(markers):
        flat.extend((m.removed, m.owner, m.counter))
    return flat


def markers_from_wire(value: object, limits: WireLimits = DEFAULT_LIMITS) -> tuple[PruneMarker, ...]:
    """Decode markers; raise `CodecError` on anything malformed."""
    if type(value) is not list or len(value) % 3 or len(value) // 3 > PRUNE_MARKERS_MAX:
        raise CodecError(f"prune markers must be a flat [removed, owner, counter, ...] list of at most {PRUNE_MARKERS_MAX}")
    out: dict[str, PruneMarker] = {}
    for i in range(0, len(value), 3):
        removed, owner, counter = value[i : i + 3]
        for rid in (removed, owner):
            if type(rid) is not str or not rid or len(rid) > limits.replica_id_bytes_max:
                raise CodecError("prune marker replica ids must be non-empty short strings")
        if removed == owner or removed in out:
            raise CodecError("prune marker folds a replica into itself or names it twice")
        if type(counter) is not int or not 1 <= counter < 2**63:
            raise CodecError("prune marker counter must be an int >= 1")
        out[removed] = PruneMarker(removed, owner, counter)
    return tuple(sorted(out.values()))


def _marker_wins(a: PruneMarker, b: PruneMarker) -> bool:
    """Which of two markers for one removed replica a key keeps: the lower owner, then the later event.

    Two owners folding one replica cannot happen when owners agree (decision 0024); the rule only
    keeps replicas convergent if it ever did.
    """
    return (a.owner, -a.counter) < (b.owner, -b.counter)


@dataclass(frozen=True, slots=True)
class Delta:
    """One store-level change: `state` is a CRDT delta (or a Tombstone) for `key`."""

    key: str
    """The store key it changes."""
    dot: Dot
    """The store-level event id: origin replica and its event counter."""
    state: Crdt
    """The delta state; nobody mutates it after creation."""
    pruned: tuple[PruneMarker, ...] = ()
    """The key's prune markers when `state` is a pruned full state (receivers strip, then join)."""

    def to_wire(self, limits: WireLimits = DEFAULT_LIMITS) -> list[Any]:
        """`[key, origin replica, counter, crdt wire value(, markers)]`, msgpack-ready."""
        out = [self.key, self.dot.replica, self.dot.counter, to_wire(self.state, limits)]
        if self.pruned:
            out.append(markers_to_wire(self.pruned))
        return out

    @classmethod
    def from_wire(cls, value: object, limits: WireLimits = DEFAULT_LIMITS) -> Delta:
        """Decode a peer's delta; raise `CodecError` on anything malformed."""
        if type(value) is not list or len(value) not in (4, 5):
            raise CodecError("delta must be [key, replica, counter, state(, markers)]")
        key, replica, counter, state = value[:4]
        _check_wire_key(key)
        if type(replica) is not str or not replica or len(replica) > limits.replica_id_bytes_max:
            raise CodecError("delta origin must be a non-empty short string")
        if type(counter) is not int or not 1 <= counter < 2**63:
            raise CodecError("delta counter must be an int >= 1")
        pruned = markers_from_wire(value[4], limits) if len(value) == 5 else ()
        return cls(key, Dot(replica, counter), from_wire(state, limits), pruned)


@dataclass(frozen=True, slots=True)
class Repair:
    """Full states for the keys a peer's digests showed different, plus what we had seen."""

    states: tuple[tuple[str, Crdt], ...]
    """(key, full state or tombstone), in key order."""
    seen: VectorClock
    """The sender's seen version vector when it built the repair."""
    complete: bool
    """True if `states` covers every key that differed, so the receiver may adopt `seen`."""
    pruned: tuple[tuple[str, tuple[PruneMarker, ...]], ...] = ()
    """(key, its prune markers) for the keys of `states` that have any, in key order."""

    def to_wire(self, limits: WireLimits = DEFAULT_LIMITS) -> list[Any]:
        """`[[key, crdt wire, ...], [replica, counter, ...], complete(, [key, markers, ...])]`, msgpack-ready."""
        flat: list[Any] = []
        for key, state in self.states:
            flat.append(key)
            flat.append(to_wire(state, limits))
        seen: list[Any] = []
        for replica, counter in self.seen.items():
            seen.extend((replica, counter))
        out: list[Any] = [flat, seen, self.complete]
        if self.pruned:
            marks: list[Any] = []
            for key, markers in self.pruned:
                marks.extend((key, markers_to_wire(markers)))
            out.append(marks)
        return out

    def markers_of(self, key: str) -> tuple[PruneMarker, ...]:
        """The prune markers sent with `key`'s state (empty if none)."""
        for k, markers in self.pruned:
            if k == key:
                return markers
        return ()

    @classmethod
    def from_wire(cls, value: object, limits: WireLimits = DEFAULT_LIMITS) -> Repair:
        """Decode a peer's repair; raise `CodecError` on anything malformed."""
        if type(value) is not list or len(value) not in (3, 4):
            raise CodecError("repair must be [states, seen, complete(, markers)]")
        flat, seen_flat, complete = value[:3]
        if type(flat) is not list or len(flat) % 2 or type(seen_flat) is not list or len(seen_flat) % 2:
            raise CodecError("repair states and seen must be flat pair lists")
        if type(complete) is not bool:
            raise CodecError("repair complete flag must be a bool")
        if len(flat) // 2 > limits.items_max or len(seen_flat) // 2 > limits.replicas_max:
            raise CodecError("repair is over the item limits")
        states = []
        keys: set[str] = set()
        for i in range(0, len(flat), 2):
            _check_wire_key(flat[i])
            if flat[i] in keys:
                raise CodecError(f"repair names key {flat[i]!r:.40} twice")
            keys.add(flat[i])
            states.append((flat[i], from_wire(flat[i + 1], limits)))
        counters: dict[str, int] = {}
        for i in range(0, len(seen_flat), 2):
            replica, counter = seen_flat[i], seen_flat[i + 1]
            if type(replica) is not str or not replica or replica in counters:
                raise CodecError("repair seen vector has a bad or repeated replica id")
            if type(counter) is not int or not 1 <= counter < 2**63:
                raise CodecError("repair seen vector counter must be an int >= 1")
            counters[replica] = counter
        pruned: list[tuple[str, tuple[PruneMarker, ...]]] = []
        if len(value) == 4:
            marks = value[3]
            if type(marks) is not list or len(marks) % 2 or len(marks) // 2 > len(states):
                raise CodecError("repair markers must be a flat [key, markers, ...] list, one per state at most")
            for i in range(0, len(marks), 2):
                if marks[i] not in keys:
                    raise CodecError("repair markers name a key without a state")
                pruned.append((marks[i], markers_from_wire(marks[i + 1], limits)))
        return cls(tuple(states), VectorClock._trusted(counters), complete, tuple(sorted(pruned)))


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one `collect_garbage` call did."""

    tombstones: int
    """Tombstones held after the call."""
    armed: int
    """Tombstones that became stable in this call (every member has seen the delete)."""
    collected: int
    """Tombstones dropped in this call (every member has also seen every concurrent write)."""


@dataclass(slots=True)
class StoreStats:
    """Counters for metrics (plain ints; the node exports them)."""

    local_updates: int = 0
    deltas_applied: int = 0
    duplicates_dropped: int = 0
    type_conflicts: int = 0
    rejected_over_limit: int = 0
    states_merged: int = 0
    tombstones_collected: int = 0
    keys_pruned: int = 0
    """Keys this replica folded as the owner of a removed replica."""
    keys_stripped: int = 0
    """Joins that stripped a removed replica's entries because of a prune marker."""
    markers_collected: int = 0


class StateStore:
    """Named CRDTs of one replica. Pure and synchronous; all outputs are returned values."""

    def __init__(self, replica_id: ReplicaId, limits: StoreLimits | None = None) -> None:
        checked_replica(replica_id)
        self._replica = replica_id
        self._limits = limits or StoreLimits()
        self._entries: dict[str, Crdt] = {}
        self._sizes: dict[str, int] = {}
        self._digests: dict[str, bytes] = {}
        self._horizons: dict[str, VectorClock] = {}
        self._seen = CausalContext()
        self._markers: dict[str, dict[ReplicaId, PruneMarker]] = {}
        self._retired: dict[ReplicaId, None] = {}
        self._log: deque[tuple[int, Delta]] = deque()
        self._seq = 0
        self.stats = StoreStats()

    @property
    def replica_id(self) -> ReplicaId:
        """This replica's id (the origin of its dots)."""
        return self._replica

    @property
    def limits(self) -> StoreLimits:
        """The store's limits."""
        return self._limits

    # --- local writes ---

    def update(self, key: str, type_name: str, op: str, *args: object) -> Delta:
        """Run `op(*args)` on the CRDT at `key` (created empty if absent); return the delta to ship.

        Examples: `update("hits", "gcounter", "increment", 2)`,
        `update("agents", "ormap", "update", "a1", "mvregister", "write", card)`.
        Raise `CrdtUsageError` for an unknown type/op, a key holding another type or a deleted
        key; `LimitExceededError` if the key would exceed `value_bytes_max` or `keys_max`
        (nothing is changed then).
        """
        self._check_key(key)
        cls = type_for_name(type_name)
        if cls is None or cls is Tombstone:
            raise CrdtUsageError(f"unknown CRDT type {type_name!r:.40}; use one of {[t for t in type_names() if t != 'tombstone']}")
        entry = self._entries.get(key)
        if entry is None:
            self._check_room(key)
            target: Crdt = cls()
            near = True
        elif isinstance(entry, Tombstone):
            raise CrdtUsageError(
                f"key {key!r:.60} was deleted; it cannot be written until its tombstone is collected (use a new key)"
            )
        elif type(entry) is not cls:
            raise CrdtUsageError(f"key {key!r:.60} holds a {entry.TYPE_NAME}, not a {type_name}")
        else:
            size = self._sizes.get(key, 0)
            near = size + _args_size(args) + 64 > self._limits.value_bytes_max
            target = entry.copy() if near else entry
        state = target.apply_op(self._replica, op, args)
        if near:
            size = self._measure(key, target)
        else:
            size = self._sizes.get(key, 0) + wire_size(state, self._limits.wire)
        self._commit(key, target, size)
        delta = Delta(key, self._seen.next_dot(self._replica), state)
        self._append_log(delta)
        self.stats.local_updates += 1
        return delta

    def delete(self, key: str) -> Delta:
        """Delete `key` (live, unknown or already deleted); return the tombstone delta to ship."""
        self._check_key(key)
        if key not in self._entries:
            self._check_room(key)
        dot = self._seen.next_dot(self._replica)
        tomb = Tombstone(dot)
        held = self._entries.get(key)
        if isinstance(held, Tombstone):
            tomb.merge(held)  # join as receivers will: the greater dot wins
        self._commit(key, tomb, wire_size(tomb))
        delta = Delta(key, dot, Tombstone(dot))
        self._append_log(delta)
        self.stats.local_updates += 1
        return delta

    # --- reads ---

    def get(self, key: str) -> Crdt | None:
        """A copy of the CRDT at `key`; None if absent or deleted."""
        entry = self._entries.get(key)
        if entry is None or isinstance(entry, Tombstone):
            return None
        return entry.copy()

    def value(self, key: str, default: Any = None) -> Any:
        """The user-visible value at `key`, or `default` if absent or deleted."""
        entry = self._entries.get(key)
        if entry is None or isinstance(entry, Tombstone):
            return default
        return entry.value()

    def type_of(self, key: str) -> str | None:
        """The type name at `key` ("tombstone" if deleted), None if absent."""
        entry = self._entries.get(key)
        return None if entry is None else entry.TYPE_NAME

    def keys(self) -> list[str]:
        """Live keys, sorted."""
        return sorted(k for k, e in self._entries.items() if not isinstance(e, Tombstone))

    def tombstones(self) -> list[str]:
        """Deleted keys whose tombstones are still held, sorted."""
        return sorted(k for k, e in self._entries.items() if isinstance(e, Tombstone))

    def __len__(self) -> int:
        """Entries held, tombstones included."""
        return len(self._entries)

    # --- delta propagation ---

    def apply_delta(self, delta: Delta) -> bool:
        """Join a peer's delta; return False if its dot was already seen (a duplicate).

        Raise `LimitExceededError` if joining it would break a limit (the store is unchanged and
        the dot stays unseen, so a later repair can still bring it); the node counts and drops.
        """
        if self._seen.contains(delta.dot):
            self.stats.duplicates_dropped += 1
            return False
        self._join_into(delta.key, delta.state, delta.pruned)
        self._seen.add(delta.dot)
        self._append_log(delta)
        self.stats.deltas_applied += 1
        return True

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest logged delta (0 if none yet)."""
        return self._seq

    def deltas_since(self, seq: int, max_count: int | None = None) -> list[tuple[int, Delta]] | None:
        """Logged deltas after `seq` in order, as (seq, delta); None if the log no longer reaches back.

        Ship them in order and have the peer acknowledge the last seq it applied. None means
        deltas were dropped from the bounded log: repair that peer with digests instead.
        """
        if seq >= self._seq:
            return []
        oldest = self._log[0][0] if self._log else self._seq + 1
        if seq + 1 < oldest:
            return None
        start = seq + 1 - oldest
        end = len(self._log) if max_count is None else min(len(self._log), start + max_count)
        return [self._log[i] for i in range(start, end)]

    # --- digest anti-entropy ---

    def digest(self, keys: Iterable[str] | None = None) -> dict[str, bytes]:
        """key -> 16-byte digest of its canonical encoding (tombstones included), in key order.

        With `keys`, only those that are held (absent keys are left out).
        """
        names = sorted(self._entries) if keys is None else sorted(k for k in set(keys) if k in self._entries)
        return {k: self._digest_of(k) for k in names}

    def bucket_of(self, key: str, buckets: int = BUCKETS_DEFAULT) -> int:
        """The digest bucket of `key` (BLAKE2b of the key, so every replica agrees)."""
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % buckets

    def bucket_digests(self, buckets: int = BUCKETS_DEFAULT) -> list[bytes]:
        """One 16-byte digest per bucket over its (key, digest) pairs; equal lists mean equal stores."""
        hashers = [hashlib.blake2b(digest_size=16) for _ in range(buckets)]
        for key in sorted(self._entries):
            h = hashers[self.bucket_of(key, buckets)]
            h.update(key.encode())
            h.update(b"\0")
            h.update(self._digest_of(key))
        return [h.digest() for h in hashers]

    def keys_in_buckets(self, indexes: Iterable[int], buckets: int = BUCKETS_DEFAULT) -> list[str]:
        """Held keys (tombstones included) that fall into the given buckets, sorted."""
        wanted = set(indexes)
        return sorted(k for k in self._entries if self.bucket_of(k, buckets) in wanted)

    def root_digest(self) -> bytes:
        """One digest of the whole store."""
        h = hashlib.blake2b(digest_size=16)
        for d in self.bucket_digests():
            h.update(d)
        return h.digest()

    def differing_keys(self, remote: Mapping[str, bytes], within: Iterable[str] | None = None) -> list[str]:
        """Keys whose digest differs from `remote`'s, or that only one side holds, sorted.

        `within` limits the local side to those keys (e.g. `keys_in_buckets` of differing
        buckets, with `remote` the peer's `digest` of the same buckets).
        """
        local = self.digest(within)
        return sorted(k for k in local.keys() | remote.keys() if local.get(k) != remote.get(k))

    def state_for(self, keys: Iterable[str]) -> dict[str, Crdt]:
        """Copies of the full states (or tombstones) of the held keys among `keys`, in key order."""
        return {k: self._entries[k].copy() for k in sorted(set(keys)) if k in self._entries}

    def apply_state(self, key: str, state: Crdt, pruned: Iterable[PruneMarker] = ()) -> bool:
        """Join a full state (or tombstone) from a repair, with its prune markers; True if the entry changed."""
        self._check_key(key)
        before = self._digests.get(key) or (self._digest_of(key) if key in self._entries else None)
        self._join_into(key, state, tuple(pruned))
        self.stats.states_merged += 1
        return self._digest_of(key) != before

    def repair_for(self, remote: Mapping[str, bytes], within: Iterable[str] | None = None) -> Repair:
        """The states a peer with digests `remote` lacks or holds differently.

        Complete (the peer may adopt our seen vector) when `within` is None, i.e. `remote` is
        the peer's digest of its whole store.
        """
        keys = [k for k in self.differing_keys(remote, within) if k in self._entries]
        states = tuple(self.state_for(keys).items())
        return Repair(states, self.seen(), within is None, self.markers_for(keys))

    def apply_repair(self, repair: Repair) -> int:
        """Apply a peer's repair; return how many entries changed.

        A complete repair also merges the peer's seen vector: after it every key here is at least
        the peer's state, so everything the peer had seen is reflected here too.
        """
        changed = 0
        rejected = False
        for key, state in repair.states:
            try:
                changed += self.apply_state(key, state, repair.markers_of(key))
            except LimitExceededError:
                rejected = True
        if repair.complete and not rejected:
            self._seen.merge(CausalContext.from_parts(repair.seen.to_dict(), ()))
        return changed

    # --- causality and garbage collection ---

    def seen(self) -> VectorClock:
        """Store-level events seen here without gaps (send it to peers for `collect_garbage`)."""
        return self._seen.version_vector()

    def collect_garbage(self, member_seen: Mapping[ReplicaId, VectorClock]) -> GcReport:
        """Collect tombstones that are causally stable among the current members.

        `member_seen` maps every *current* member (from the roster) to the latest `seen()` it
        acknowledged; this replica's own is taken live. Two phases per tombstone: it is *armed*
        when every member has seen the delete, recording each member's own counter at that time
        (the horizon: every write concurrent with the delete is below it); it is *collected*
        once every member has seen the horizon, so no concurrent write can still arrive.
        """
        members = dict(member_seen)
        members[self._replica] = self.seen()
        stable: VectorClock | None = None
        for vv in members.values():
            stable = vv if stable is None else stable.meet(vv)
        assert stable is not None
        armed = collected = 0
        for key in self.tombstones():
            tomb = self._entries[key]
            assert isinstance(tomb, Tombstone)
            horizon = self._horizons.get(key)
            if horizon is None:
                if stable.covers_dot(tomb.dot.replica, tomb.dot.counter):
                    self._horizons[key] = VectorClock({m: vv.get(m) for m, vv in members.items()})
                    armed += 1
            elif stable.covers(horizon):
                self._drop(key)
                collected += 1
        self.stats.tombstones_collected += collected
        return GcReport(len(self.tombstones()), armed, collected)

    # --- removed replicas (pruning; decision 0024, docs/crdt.md "Removed replicas") ---

    def retire(self, replica: ReplicaId) -> None:
        """Record that `replica` left for good: its entries may be folded (`prune`) and it never writes again."""
        checked_replica(replica)
        if replica == self._replica:
            raise CrdtUsageError("a replica cannot retire itself; another member retires it")
        self._retired[replica] = None

    def is_retired(self, replica: ReplicaId) -> bool:
        """True if `replica` was retired here or a prune marker named it."""
        return replica in self._retired

    def retired(self) -> list[ReplicaId]:
        """Replicas recorded as gone for good, sorted."""
        return sorted(self._retired)

    def keys_mentioning(self, replica: ReplicaId, limit: int | None = None) -> list[str]:
        """Live keys whose state holds an entry of `replica` (a counter slot, a dot), sorted; at most `limit`."""
        out: list[str] = []
        for key in sorted(self._entries):
            if self._entries[key].mentions(replica):
                out.append(key)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def markers(self, key: str) -> tuple[PruneMarker, ...]:
        """The prune markers `key` holds (empty if none)."""
        held = self._markers.get(key)
        return tuple(sorted(held.values())) if held else ()

    def markers_for(self, keys: Iterable[str]) -> tuple[tuple[str, tuple[PruneMarker, ...]], ...]:
        """(key, markers) for the keys among `keys` that hold markers, in key order."""
        return tuple((k, self.markers(k)) for k in sorted(set(keys)) if k in self._markers)

    def marker_count(self) -> int:
        """Prune markers held over all keys."""
        return sum(len(m) for m in self._markers.values())

    def prune(self, key: str, removed: ReplicaId) -> Delta | None:
        """As the owner, fold `removed`'s entries of `key` into this replica's; return the delta to ship.

        Call only when `removed` is retired and its operations are causally stable (every member
        has seen its last event; the replicator checks). The delta is the key's full folded state
        with the key's prune markers; receivers strip `removed` and join it in one step, so the
        value never dips. None if the key does not mention `removed`. Raise `LimitExceededError`
        if the folded state would exceed `value_bytes_max` (nothing changes).
        """
        self._check_key(key)
        checked_replica(removed)
        if removed == self._replica:
            raise CrdtUsageError("a replica cannot prune itself")
        entry = self._entries.get(key)
        if entry is None or isinstance(entry, Tombstone) or not entry.mentions(removed):
            return None
        held = self._markers.get(key, {})
        if removed not in held and len(held) >= PRUNE_MARKERS_MAX:
            raise LimitExceededError("prune_markers_max", f"key {key!r:.60} already holds {PRUNE_MARKERS_MAX} prune markers")
        target = entry.copy()
        target.fold(removed, self._replica)
        size = self._measure(key, target)
        dot = self._seen.next_dot(self._replica)
        self._retired.setdefault(removed, None)
        markers = dict(held)
        markers[removed] = PruneMarker(removed, self._replica, dot.counter)
        self._commit(key, target, size)
        self._markers[key] = markers
        delta = Delta(key, dot, target.copy(), tuple(sorted(markers.values())))
        self._append_log(delta)
        self.stats.keys_pruned += 1
        return delta

    def collect_markers(self, member_seen: Mapping[ReplicaId, VectorClock]) -> list[str]:
        """Drop prune markers every member has seen (the fold's dot is stable); return the keys changed.

        `member_seen` is the same map as for `collect_garbage`. Once every member has applied the
        fold, each has stripped the removed replica; a stale state mentioning it can then only come
        from outside the roster (the hazard decision 0093 already names for tombstones).
        """
        stable = self.seen()
        for vv in member_seen.values():
            stable = stable.meet(vv)
        changed: list[str] = []
        for key in sorted(self._markers):
            held = self._markers[key]
            keep = {r: m for r, m in held.items() if not stable.covers_dot(m.owner, m.counter)}
            if len(keep) != len(held):
                self.stats.markers_collected += len(held) - len(keep)
                if keep:
                    self._markers[key] = keep
                else:
                    del self._markers[key]
                self._digests.pop(key, None)
                changed.append(key)
        return changed

    # --- internals ---

    def _check_key(self, key: object) -> None:
        if type(key) is not str or not key:
            raise CrdtUsageError(f"store keys are non-empty str, got {key!r:.60}")
        if len(key) > self._limits.key_bytes_max or len(key.encode("utf-8", "surrogatepass")) > self._limits.key_bytes_max:
            raise CrdtUsageError(f"key is longer than key_bytes_max={self._limits.key_bytes_max} bytes")

    def _check_room(self, key: str) -> None:
        if len(self._entries) >= self._limits.keys_max:
            self.stats.rejected_over_limit += 1
            raise LimitExceededError("keys_max", f"store holds {len(self._entries)} keys (keys_max); delete keys or raise the limit")

    def _measure(self, key: str, state: Crdt) -> int:
        size = wire_size(state, self._limits.wire)
        if size > self._limits.value_bytes_max:
            self.stats.rejected_over_limit += 1
            raise LimitExceededError(
                "value_bytes_max", f"key {key!r:.60} would encode to ~{size} bytes, over value_bytes_max={self._limits.value_bytes_max}"
            )
        return size

    def _join_into(self, key: str, state: Crdt, pruned: tuple[PruneMarker, ...] = ()) -> None:
        """Join `state` into the entry at `key`, honouring limits, type precedence and prune markers.

        With prune markers the strip and the join commit together (or not at all), so the value
        never shows a removed replica's effects missing.
        """
        entry = self._entries.get(key)
        markers: dict[ReplicaId, PruneMarker] | None = None
        stripped = False
        if pruned or key in self._markers:
            held = entry
            entry, state, markers = self._strip_pruned(key, entry, state, pruned)
            stripped = entry is not held
        if entry is None:
            self._check_room(key)
            self._commit(key, state.copy(), self._measure(key, state))
        elif isinstance(entry, Tombstone) and not isinstance(state, Tombstone):
            return
        elif type(entry) is type(state):
            size = self._sizes.get(key, 0)
            extra = wire_size(state, self._limits.wire)
            if stripped or size + extra > self._limits.value_bytes_max:
                target = entry if stripped else entry.copy()
                target.merge(state)
                self._commit(key, target, self._measure(key, target))
            else:
                entry.merge(state)
                self._commit(key, entry, size + extra)
        elif isinstance(state, Tombstone):
            self._commit(key, state.copy(), wire_size(state))
            return
        else:
            # Two replicas created the key with different types: the greater type name wins everywhere.
            self.stats.type_conflicts += 1
            if state.TYPE_NAME > entry.TYPE_NAME:
                self._commit(key, state.copy(), self._measure(key, state))
            elif stripped:
                self._commit(key, entry, self._measure(key, entry))
        if markers is not None and not isinstance(self._entries[key], Tombstone):
            for m in markers.values():
                self._retired.setdefault(m.removed, None)
            self._markers[key] = markers
            self._digests.pop(key, None)

    def _strip_pruned(
        self, key: str, entry: Crdt | None, state: Crdt, pruned: tuple[PruneMarker, ...]
    ) -> tuple[Crdt | None, Crdt, dict[ReplicaId, PruneMarker] | None]:
        """Strip removed replicas named by the key's markers from `state` (and, for markers new here,
        from a copy of the local entry); return (entry, state, the joined markers if they changed)."""
        held = self._markers.get(key, {})
        joined = dict(held)
        for m in pruned:
            cur = joined.get(m.removed)
            if cur is None or _marker_wins(m, cur):
                joined[m.removed] = m
        if len(joined) > PRUNE_MARKERS_MAX:
            raise LimitExceededError("prune_markers_max", f"key {key!r:.60} would hold over {PRUNE_MARKERS_MAX} prune markers")
        fresh = [r for r in sorted(joined) if r not in held]
        if entry is not None and not isinstance(entry, Tombstone) and any(entry.mentions(r) for r in fresh):
            entry = entry.copy()
            for r in fresh:
                if entry.mentions(r):
                    entry.strip(r)
            self.stats.keys_stripped += 1
        if not isinstance(state, Tombstone) and any(state.mentions(r) for r in joined):
            state = state.copy()
            for r in sorted(joined):
                state.strip(r)
            self.stats.keys_stripped += 1
        changed = joined != held or (entry is not None and entry is not self._entries.get(key))
        return entry, state, (joined if changed else None)

    def _commit(self, key: str, entry: Crdt, size: int) -> None:
        if isinstance(entry, Tombstone):
            self._markers.pop(key, None)  # the tombstone wins over any state: nothing left to strip
        self._entries[key] = entry
        self._sizes[key] = size
        self._digests.pop(key, None)
        self._horizons.pop(key, None)

    def _drop(self, key: str) -> None:
        self._markers.pop(key, None)
        del self._entries[key]
        self._sizes.pop(key, None)
        self._digests.pop(key, None)
        self._horizons.pop(key, None)

    def _append_log(self, delta: Delta) -> None:
        self._seq += 1
        self._log.append((self._seq, delta))
        if len(self._log) > self._limits.log_entries_max:
            self._log.popleft()

    def _digest_of(self, key: str) -> bytes:
        d = self._digests.get(key)
        if d is None:
            wire = to_wire(self._entries[key], _UNBOUNDED)
            held = self._markers.get(key)
            if held:  # markers are part of the key's replicated state: replicas differing only there repair
                wire = [wire, markers_to_wire(held.values())]
            d = self._digests[key] = wire_digest(wire)
        return d


_UNBOUNDED = WireLimits(items_max=2**62, depth_max=64, bytes_max=2**62, replicas_max=2**62)
"""Digests cover what the store holds; limits were applied when it got in."""


def _args_size(args: tuple[object, ...]) -> int:
    try:
        return check_plain(list(args), 64, 1_000_000)
    except ValueError:
        return 0


def _check_wire_key(key: object) -> None:
    if type(key) is not str or not key or len(key) > 1024:
        raise CodecError("store key must be a non-empty string of at most 1024 characters")

"""The critical state every voter replicates: roster, name leases, locks, linearizable keys.

Pure and deterministic: `apply` depends only on the state and the entry (command plus the
proposer-stamped `now_ms`), never on a local clock, set order, `hash()` or `id()`. Replicas that
apply the same log reach byte-identical `snapshot()` values; `digest()` lets tests and simulations
compare them.

Time inside the machine never runs backwards: `now` is the maximum `now_ms` seen in the log, so a
proposer with a slow clock cannot revive an expired lease. A proposer with a fast clock can expire
leases early by its skew; keep voter clocks NTP-synced and TTLs well above the skew.
"""

from __future__ import annotations

__sans_io__ = True

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

from .commands import (
    ID_CHARS_MAX,
    INT_MAX,
    KEY_CHARS_MAX,
    VALUE_BYTES_MAX,
    AcquireLock,
    AdmitNode,
    Barrier,
    ClaimName,
    Command,
    GetLock,
    GetRoster,
    IsRevoked,
    KvCompareAndSet,
    KvDelete,
    KvGet,
    KvPut,
    LookupName,
    ReleaseLock,
    ReleaseName,
    RenewName,
    RevokeNode,
)

__all__ = [
    "CriticalState",
    "KvResult",
    "Lease",
    "LeaseResult",
    "LockHold",
    "LockResult",
    "RosterResult",
    "RosterView",
    "SnapshotError",
    "SNAPSHOT_VERSION",
]

SNAPSHOT_VERSION = 1
ROSTER_SIZE_MAX = 10_000
"""Admitted plus revoked ids. Consul's guidance is <= 5,000 agents per gossip pool."""
NAMES_MAX = 10_000
LOCKS_MAX = 10_000
KV_KEYS_MAX = 1_024
"""With VALUE_BYTES_MAX = 4 KiB this caps the key map at 4 MiB of values."""


class SnapshotError(ValueError):
    """A snapshot value that this version cannot restore (corrupt file or a peer's garbage)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A live name lease."""

    name: str
    owner: str
    expires_at_ms: int
    epoch: int
    """Increases with every new grant (not with renewals); lets holders detect a lost-and-regained name."""


@dataclass(frozen=True, slots=True)
class LockHold:
    """A live lock hold."""

    lock: str
    owner: str
    fencing_token: int
    """Strictly increases with every new grant of the lock; storage must reject writes with an older token."""
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class RosterResult:
    """Outcome of AdmitNode/RevokeNode. `reason` is a stable snake_case code when `ok` is False."""

    ok: bool
    node_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RosterView:
    """Result of GetRoster."""

    admitted: tuple[str, ...]
    revoked: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """Outcome of a name command. On refusal `lease` is the current holder's lease, if any."""

    ok: bool
    lease: Lease | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LockResult:
    """Outcome of a lock command. On refusal `hold` is the current hold, if any."""

    ok: bool
    hold: LockHold | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class KvResult:
    """Outcome of a key command; `value` is the value after a write, or the current one on a CAS mismatch."""

    ok: bool
    value: bytes | None
    reason: str = ""


class CriticalState:
    """The replicated state machine. Feed it committed entries in log order."""

    def __init__(self) -> None:
        self._now_ms = 0
        self._applied = 0
        self._grant_counter = 0
        self._admitted: dict[str, None] = {}
        self._revoked: dict[str, str] = {}
        self._names: dict[str, Lease] = {}
        self._locks: dict[str, LockHold] = {}
        self._kv: dict[str, bytes] = {}

    @property
    def now_ms(self) -> int:
        """Log time: the largest proposer timestamp applied so far."""
        return self._now_ms

    @property
    def applied(self) -> int:
        """Entries applied (queries included) since the empty state."""
        return self._applied

    def apply(self, command: Command, now_ms_from_log: int) -> Any:
        """Apply one committed entry and return its result. Never raises for a valid command."""
        if now_ms_from_log > self._now_ms:
            self._now_ms = now_ms_from_log
        self._applied += 1
        handler = _HANDLERS.get(type(command))
        if handler is None:
            raise TypeError(f"{type(command).__name__} is not a consensus command")
        return handler(self, command)

    def query(self, command: Command) -> Any:
        """Answer a read-only command from local state without changing it (a possibly stale read)."""
        if not getattr(type(command), "READONLY", False):
            raise ValueError(f"{type(command).__name__} changes state; propose it through the group instead")
        handler = _HANDLERS[type(command)]
        return handler(self, command)

    def is_revoked(self, node_id: str) -> bool:
        """Fast local check for the transport's admission path."""
        return node_id in self._revoked

    def snapshot(self) -> dict[str, Any]:
        """The whole state as msgpack-ready plain values, with every collection sorted."""
        return {
            "v": SNAPSHOT_VERSION,
            "now_ms": self._now_ms,
            "applied": self._applied,
            "grants": self._grant_counter,
            "admitted": sorted(self._admitted),
            "revoked": [[k, self._revoked[k]] for k in sorted(self._revoked)],
            "names": [[n.name, n.owner, n.expires_at_ms, n.epoch] for _, n in sorted(self._names.items())],
            "locks": [[h.lock, h.owner, h.fencing_token, h.expires_at_ms] for _, h in sorted(self._locks.items())],
            "kv": [[k, self._kv[k]] for k in sorted(self._kv)],
        }

    def restore(self, value: Any) -> None:
        """Replace the state with a `snapshot()` value; raise `SnapshotError` (state unchanged) if invalid."""
        fresh = _parse_snapshot(value)
        self._now_ms = fresh._now_ms
        self._applied = fresh._applied
        self._grant_counter = fresh._grant_counter
        self._admitted = fresh._admitted
        self._revoked = fresh._revoked
        self._names = fresh._names
        self._locks = fresh._locks
        self._kv = fresh._kv

    def digest(self) -> str:
        """SHA-256 of the encoded snapshot: equal digests mean equal replicas."""
        return hashlib.sha256(msgpack.packb(self.snapshot(), use_bin_type=True)).hexdigest()

    # -- handlers ---------------------------------------------------------------------------

    def _admit(self, c: AdmitNode) -> RosterResult:
        if c.node_id in self._revoked:
            return RosterResult(False, c.node_id, "revoked")
        if c.node_id in self._admitted:
            return RosterResult(True, c.node_id, "already_admitted")
        if len(self._admitted) + len(self._revoked) >= ROSTER_SIZE_MAX:
            return RosterResult(False, c.node_id, "roster_full")
        self._admitted[c.node_id] = None
        return RosterResult(True, c.node_id)

    def _revoke(self, c: RevokeNode) -> RosterResult:
        if c.node_id in self._revoked:
            return RosterResult(True, c.node_id, "already_revoked")
        if c.node_id not in self._admitted and len(self._admitted) + len(self._revoked) >= ROSTER_SIZE_MAX:
            return RosterResult(False, c.node_id, "roster_full")
        self._admitted.pop(c.node_id, None)
        self._revoked[c.node_id] = c.reason
        return RosterResult(True, c.node_id)

    def _claim(self, c: ClaimName) -> LeaseResult:
        current = self._live_lease(c.name)
        if current is not None and current.owner != c.owner:
            return LeaseResult(False, current, "held")
        if current is not None:
            lease = Lease(c.name, c.owner, self._expiry(c.ttl_ms), current.epoch)
        else:
            if c.name not in self._names and not self._room(self._names, NAMES_MAX):
                return LeaseResult(False, None, "table_full")
            lease = Lease(c.name, c.owner, self._expiry(c.ttl_ms), self._next_grant())
        self._names[c.name] = lease
        return LeaseResult(True, lease)

    def _renew(self, c: RenewName) -> LeaseResult:
        current = self._live_lease(c.name)
        if current is None:
            return LeaseResult(False, None, "expired")
        if current.owner != c.owner:
            return LeaseResult(False, current, "held")
        lease = Lease(c.name, c.owner, self._expiry(c.ttl_ms), current.epoch)
        self._names[c.name] = lease
        return LeaseResult(True, lease)

    def _release_name(self, c: ReleaseName) -> LeaseResult:
        current = self._live_lease(c.name)
        if current is None:
            self._names.pop(c.name, None)
            return LeaseResult(True, None, "expired")
        if current.owner != c.owner:
            return LeaseResult(False, current, "held")
        del self._names[c.name]
        return LeaseResult(True, None)

    def _acquire(self, c: AcquireLock) -> LockResult:
        current = self._live_hold(c.lock)
        if current is not None and current.owner != c.owner:
            return LockResult(False, current, "held")
        if current is not None:
            hold = LockHold(c.lock, c.owner, current.fencing_token, self._expiry(c.ttl_ms))
        else:
            if c.lock not in self._locks and not self._room(self._locks, LOCKS_MAX):
                return LockResult(False, None, "table_full")
            # One counter for all grants: strictly increasing per lock, and nothing to remember
            # about a lock after it is released.
            hold = LockHold(c.lock, c.owner, self._next_grant(), self._expiry(c.ttl_ms))
        self._locks[c.lock] = hold
        return LockResult(True, hold)

    def _release_lock(self, c: ReleaseLock) -> LockResult:
        current = self._locks.get(c.lock)
        if current is None or current.owner != c.owner or current.fencing_token != c.fencing_token:
            return LockResult(False, self._live_hold(c.lock), "not_holder")
        del self._locks[c.lock]
        return LockResult(True, None)

    def _put(self, c: KvPut) -> KvResult:
        if c.key not in self._kv and len(self._kv) >= KV_KEYS_MAX:
            return KvResult(False, None, "table_full")
        self._kv[c.key] = c.value
        return KvResult(True, c.value)

    def _delete(self, c: KvDelete) -> KvResult:
        existed = self._kv.pop(c.key, None) is not None
        return KvResult(True, None, "" if existed else "absent")

    def _cas(self, c: KvCompareAndSet) -> KvResult:
        current = self._kv.get(c.key)
        if current != c.expected:
            return KvResult(False, current, "mismatch")
        if c.new is None:
            self._kv.pop(c.key, None)
        else:
            if c.key not in self._kv and len(self._kv) >= KV_KEYS_MAX:
                return KvResult(False, current, "table_full")
            self._kv[c.key] = c.new
        return KvResult(True, c.new)

    def _is_revoked(self, c: IsRevoked) -> bool:
        return c.node_id in self._revoked

    def _roster(self, c: GetRoster) -> RosterView:
        return RosterView(tuple(sorted(self._admitted)), tuple(sorted(self._revoked)))

    def _lookup(self, c: LookupName) -> Lease | None:
        return self._live_lease(c.name)

    def _get_lock(self, c: GetLock) -> LockHold | None:
        return self._live_hold(c.lock)

    def _get(self, c: KvGet) -> bytes | None:
        return self._kv.get(c.key)

    def _barrier(self, c: Barrier) -> int:
        return self._applied

    # -- helpers ----------------------------------------------------------------------------

    def _live_lease(self, name: str) -> Lease | None:
        lease = self._names.get(name)
        return lease if lease is not None and lease.expires_at_ms > self._now_ms else None

    def _live_hold(self, lock: str) -> LockHold | None:
        hold = self._locks.get(lock)
        return hold if hold is not None and hold.expires_at_ms > self._now_ms else None

    def _expiry(self, ttl_ms: int) -> int:
        return min(self._now_ms + ttl_ms, INT_MAX)

    def _next_grant(self) -> int:
        self._grant_counter += 1
        return self._grant_counter

    def _room(self, table: dict[str, Any], limit: int) -> bool:
        """True if `table` can take one more entry, after dropping every expired one if it is full."""
        if len(table) < limit:
            return True
        # Dropping *all* expired entries makes the outcome independent of iteration order.
        expired = [k for k, v in table.items() if v.expires_at_ms <= self._now_ms]
        for k in expired:
            del table[k]
        return len(table) < limit


_HANDLERS: dict[type, Any] = {
    AdmitNode: CriticalState._admit,
    RevokeNode: CriticalState._revoke,
    ClaimName: CriticalState._claim,
    RenewName: CriticalState._renew,
    ReleaseName: CriticalState._release_name,
    AcquireLock: CriticalState._acquire,
    ReleaseLock: CriticalState._release_lock,
    KvPut: CriticalState._put,
    KvDelete: CriticalState._delete,
    KvCompareAndSet: CriticalState._cas,
    IsRevoked: CriticalState._is_revoked,
    GetRoster: CriticalState._roster,
    LookupName: CriticalState._lookup,
    GetLock: CriticalState._get_lock,
    KvGet: CriticalState._get,
    Barrier: CriticalState._barrier,
}
"""Dispatch table: one handler per command type (house style rule 7)."""


def _parse_snapshot(value: Any) -> CriticalState:
    def fail(what: str) -> SnapshotError:
        return SnapshotError(f"invalid critical-state snapshot: {what}")

    def is_int(x: Any, minimum: int = 0) -> bool:
        return type(x) is int and minimum <= x <= INT_MAX

    def is_id(x: Any, chars_max: int = ID_CHARS_MAX) -> bool:
        return isinstance(x, str) and 0 < len(x) <= chars_max

    if not isinstance(value, dict):
        raise fail("not a map")
    if value.get("v") != SNAPSHOT_VERSION:
        raise fail(f"version {value.get('v')!r}, this node reads {SNAPSHOT_VERSION}")
    expected_keys = {"v", "now_ms", "applied", "grants", "admitted", "revoked", "names", "locks", "kv"}
    if set(value) != expected_keys:
        raise fail(f"keys {sorted(map(str, value))}")
    state = CriticalState()
    for key in ("now_ms", "applied", "grants"):
        if not is_int(value[key]):
            raise fail(f"{key} is not a non-negative int")
    state._now_ms, state._applied, state._grant_counter = value["now_ms"], value["applied"], value["grants"]
    lists = ("admitted", "revoked", "names", "locks", "kv")
    if not all(isinstance(value[k], (list, tuple)) for k in lists):
        raise fail("a collection is not a list")
    if len(value["admitted"]) + len(value["revoked"]) > ROSTER_SIZE_MAX:
        raise fail("roster over ROSTER_SIZE_MAX")
    if len(value["names"]) > NAMES_MAX or len(value["locks"]) > LOCKS_MAX or len(value["kv"]) > KV_KEYS_MAX:
        raise fail("a table is over its limit")
    for node_id in value["admitted"]:
        if not is_id(node_id):
            raise fail("bad admitted id")
        state._admitted[node_id] = None
    for item in value["revoked"]:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and is_id(item[0]) and isinstance(item[1], str)):
            raise fail("bad revoked entry")
        state._revoked[item[0]] = item[1]
    for item in value["names"]:
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and is_id(item[0]) and is_id(item[1])
                and is_int(item[2]) and is_int(item[3], 1) and item[3] <= state._grant_counter):
            raise fail("bad name lease")
        state._names[item[0]] = Lease(item[0], item[1], item[2], item[3])
    for item in value["locks"]:
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and is_id(item[0]) and is_id(item[1])
                and is_int(item[2], 1) and item[2] <= state._grant_counter and is_int(item[3])):
            raise fail("bad lock hold")
        state._locks[item[0]] = LockHold(item[0], item[1], item[2], item[3])
    for item in value["kv"]:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and is_id(item[0], KEY_CHARS_MAX)
                and isinstance(item[1], bytes) and len(item[1]) <= VALUE_BYTES_MAX):
            raise fail("bad key/value")
        state._kv[item[0]] = item[1]
    if set(state._admitted) & set(state._revoked):
        raise fail("an id is both admitted and revoked")
    return state

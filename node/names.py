"""Unique agent names: the lease keeper core (sans-I/O).

An agent registered with ``unique=True`` owns its name through a lease in the Raft group's critical
state (`consensus.state_machine`: ClaimName / RenewName / ReleaseName). This core decides, per
agent, which lease operation to run next and what the node may advertise meanwhile; the asyncio
driver (`agentnode.name_keeper`) runs the operations and feeds their outcomes back.

States an agent's name is in (advertised in its registry record, see `NAME_MARKER_KEY`):
- ``confirmed``: a claim or renewal committed, and by this node's clock the lease still runs;
- ``unconfirmed``: no committed lease known to be live (no quorum yet, a single node, or a renewal
  that did not land in time); the claim is retried in the background and nobody is promised
  uniqueness;
- ``lost``: the group answered that another owner holds the name; final for this registration.

Timing (docs/decisions/0085-name-lease-ttl-and-renewal.md): renew every TTL/3 with jitter (etcd's
clientv3 KeepAlive renews at TTL/3), and treat the lease as over locally at
``sent + TTL * (1 - SKEW_FRACTION)``, measured from when the successful request was *sent*
(Chubby's conservative client-side lease: the master's countdown started no earlier).
"""

from __future__ import annotations

__sans_io__ = True

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CONFIRMED",
    "LOST",
    "NAME_MARKER_KEY",
    "NAME_TTL_MS_DEFAULT",
    "PENDING",
    "UNCONFIRMED",
    "AgentNameConfirmed",
    "AgentNameLost",
    "AgentNameUnconfirmed",
    "NameConfig",
    "NameEvent",
    "NameLeases",
    "NameOp",
    "NameState",
    "NameTableFull",
    "NameTaken",
    "lease_owner",
    "marker_of",
    "parse_marker",
]

NAME_TTL_MS_DEFAULT = 30_000
"""Lease length. Chubby's default session lease is 12 s and Consul's session TTL is at least 10 s;
30 s keeps a dead node's names blocked for at most half a minute while a renewal every 10 s costs
one small Raft commit per unique name (docs/decisions/0085)."""
NAME_TTL_MS_MIN = 300
"""Below this a renewal round trip plus a leader election no longer fits in a third of the lease."""
RENEW_DIVISOR = 3
"""Renew when a third of the lease has run (etcd clientv3 KeepAlive: TTL/3), leaving two more tries."""
RENEW_JITTER = 0.1
"""+-10% on each renewal time so many names do not renew in lockstep."""
SKEW_FRACTION = 0.1
"""Part of the TTL this node gives up locally for voter clock skew (the log's time is the proposer's)."""
RETRY_MIN_MS = 250
"""First retry of a claim that found no quorum; doubles up to `retry_max_ms`."""
RETRY_MAX_MS = 10_000
EVENTS_MAX = 10_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted."""
NAMES_MAX = 1_024
"""Unique names one node keeps (the registry hosts at most MAX_AGENTS_PER_NODE = 1024 agents)."""
OWNER_CHARS_MAX = 128
"""consensus.commands.ID_CHARS_MAX: the longest lease owner the state machine accepts."""
NAME_MARKER_KEY = "agentnode.name"
"""Reserved metadata key in the agent's registry record: ``confirmed:<epoch>``, ``unconfirmed`` or ``lost``."""

PENDING = "pending"
CONFIRMED = "confirmed"
UNCONFIRMED = "unconfirmed"
LOST = "lost"

ErrorKind = Literal["not_applied", "unknown"]


class NameTaken(ValueError):
    """`register_agent(unique=True)` for a name another agent holds; pick another name or wait."""

    def __init__(self, name: str, holder: str, expires_at_ms: int) -> None:
        super().__init__(f"agent name {name!r} is held by {holder} until {expires_at_ms} "
                         "(epoch ms, renewed while its node lives); pick another name, or retry after it is released")
        self.name = name
        self.holder = holder
        """The lease owner: "<node id>/<agent id>"."""
        self.expires_at_ms = expires_at_ms
        """When the holder's lease runs out unless renewed (the group's log time, epoch milliseconds)."""


class NameTableFull(ValueError):
    """The group's name table is full (consensus.state_machine.NAMES_MAX live leases)."""


@dataclass(frozen=True, slots=True)
class NameConfig:
    """Lease timing; integer milliseconds."""

    ttl_ms: int = NAME_TTL_MS_DEFAULT
    retry_max_ms: int = RETRY_MAX_MS

    def __post_init__(self) -> None:
        if not NAME_TTL_MS_MIN <= self.ttl_ms <= 24 * 3600 * 1000:
            raise ValueError(f"name lease ttl_ms must be {NAME_TTL_MS_MIN}..86400000 (30000 is the default)")
        if self.retry_max_ms < RETRY_MIN_MS:
            raise ValueError(f"retry_max_ms must be at least {RETRY_MIN_MS}")


@dataclass(frozen=True, slots=True)
class NameOp:
    """A lease operation for the driver to run, then report with `NameLeases.on_result(op_id, ...)`."""

    op_id: int
    kind: Literal["claim", "renew", "release"]
    agent_id: str
    name: str
    owner: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class NameState:
    """What this node knows of one agent's name lease."""

    agent_id: str
    name: str
    owner: str
    state: str
    """PENDING, CONFIRMED, UNCONFIRMED or LOST."""
    epoch: int
    """Grant number of the lease last confirmed (0: never confirmed)."""
    valid_until_ms: int | None
    """Local time until which CONFIRMED holds without another renewal."""
    holder: str | None = None
    """When LOST: the owner that holds the name."""


@dataclass(frozen=True, slots=True)
class AgentNameConfirmed:
    """The group committed this agent's lease (first time, or again after it was unconfirmed)."""

    agent_id: str
    name: str
    epoch: int


@dataclass(frozen=True, slots=True)
class AgentNameUnconfirmed:
    """The agent keeps its name locally, but no committed lease is known to run (retrying)."""

    agent_id: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class AgentNameLost:
    """Another owner holds the agent's name: its record stops advertising it (final for this registration)."""

    agent_id: str
    name: str
    holder: str
    reason: str


NameEvent = AgentNameConfirmed | AgentNameUnconfirmed | AgentNameLost


def lease_owner(node_id: str, agent_id: str) -> str:
    """The lease owner for an agent: "<node id>/<agent id>" (the agent id hashed if that is too long).

    The node id is the certificate identity, so no other node can renew or release this lease; the
    same node re-registering the same agent id after a restart takes its own lease back at once."""
    owner = f"{node_id}/{agent_id}"
    if len(owner) <= OWNER_CHARS_MAX:
        return owner
    digest = hashlib.sha256(agent_id.encode()).hexdigest()[:32]
    return f"{node_id[:OWNER_CHARS_MAX - 34]}/#{digest}"


def marker_of(state: str, epoch: int) -> str:
    """The metadata value advertised for a state (PENDING advertises as unconfirmed)."""
    if state == CONFIRMED:
        return f"{CONFIRMED}:{epoch}"
    return LOST if state == LOST else UNCONFIRMED


def parse_marker(value: str | None) -> tuple[str, int] | None:
    """(state, epoch) from a record's marker, None for a record without one (a non-unique name)."""
    if value is None:
        return None
    if value.startswith(CONFIRMED + ":"):
        epoch = value[len(CONFIRMED) + 1:]
        if epoch.isdigit() and len(epoch) <= 19:
            return CONFIRMED, int(epoch)
        return UNCONFIRMED, 0
    return (LOST, 0) if value == LOST else (UNCONFIRMED, 0)


class _Entry:
    __slots__ = ("agent_id", "name", "owner", "state", "epoch", "valid_until", "holder", "next_at", "inflight",
                 "sent_at", "retry_ms")

    def __init__(self, agent_id: str, name: str, owner: str) -> None:
        self.agent_id = agent_id
        self.name = name
        self.owner = owner
        self.state = PENDING
        self.epoch = 0
        self.valid_until: int | None = None
        self.holder: str | None = None
        self.next_at: int | None = None
        self.inflight: int | None = None
        self.sent_at = 0
        self.retry_ms = RETRY_MIN_MS


class NameLeases:
    """Per-agent name lease states. Call `claim`/`release`, run the returned ops, report `on_result`;
    call `handle_timer` at `get_timer()`; drain `next_event`."""

    def __init__(self, node_id: str, rng: random.Random, config: NameConfig | None = None) -> None:
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        self.node_id = node_id
        self.config = config or NameConfig()
        self._rng = rng
        self._entries: dict[str, _Entry] = {}
        self._ops: dict[int, tuple[str, str]] = {}
        """op id -> (agent id, kind) for operations in flight."""
        self._next_op = 1
        self._events: deque[NameEvent] = deque()
        self.counters: dict[str, int] = dict.fromkeys(
            ("claims", "renewals", "releases", "confirmed", "unconfirmed", "lost", "taken", "not_applied", "unknown",
             "local_expiries", "events_dropped", "results_stale"), 0)

    # -- API ------------------------------------------------------------------------------------

    def claim(self, agent_id: str, name: str, now_ms: int) -> NameOp:
        """Start keeping `name` for `agent_id`: returns the first claim to run."""
        if agent_id in self._entries:
            raise ValueError(f"agent {agent_id!r} already keeps a name lease; release it first")
        if len(self._entries) >= NAMES_MAX:
            raise ValueError(f"this node keeps {NAMES_MAX} unique names already")
        entry = _Entry(agent_id, name, lease_owner(self.node_id, agent_id))
        self._entries[agent_id] = entry
        return self._start(entry, "claim", now_ms)

    def release(self, agent_id: str) -> NameOp | None:
        """Stop keeping `agent_id`'s name; returns the release to run (None if it holds nothing)."""
        entry = self._entries.pop(agent_id, None)
        if entry is None:
            return None
        if entry.inflight is not None:
            self._ops.pop(entry.inflight, None)
        if entry.state == LOST:
            return None
        self.counters["releases"] += 1
        op = NameOp(self._next_op, "release", entry.agent_id, entry.name, entry.owner, self.config.ttl_ms)
        self._next_op += 1
        return op

    def on_result(self, op_id: int, now_ms: int, result: Any = None, error: ErrorKind | None = None,
                  detail: str = "") -> str | None:
        """Report an operation's outcome: a `LeaseResult`, or `error` ("not_applied": certainly not
        applied; "unknown": maybe applied). Returns the agent's state afterwards; "taken"/"full" when
        the first claim was refused (the entry is gone); None for an operation no longer tracked."""
        tracked = self._ops.pop(op_id, None)
        if tracked is None:
            self.counters["results_stale"] += 1
            return None
        agent_id, kind = tracked
        entry = self._entries[agent_id]
        entry.inflight = None
        if error is not None:
            self.counters[error] += 1
            return self._failed(entry, now_ms, detail or error)
        if result.ok:
            lease = result.lease
            regained = entry.state != CONFIRMED or lease.epoch != entry.epoch
            entry.state, entry.epoch, entry.holder = CONFIRMED, lease.epoch, None
            entry.valid_until = entry.sent_at + int(self.config.ttl_ms * (1 - SKEW_FRACTION))
            entry.next_at = entry.sent_at + self._jittered(self.config.ttl_ms // RENEW_DIVISOR)
            entry.retry_ms = RETRY_MIN_MS
            if entry.valid_until <= now_ms:  # the answer came too late to promise anything
                return self._downgrade(entry, now_ms, "the lease was confirmed too late to still count")
            if regained:
                self.counters["confirmed"] += 1
                self._emit(AgentNameConfirmed(entry.agent_id, entry.name, entry.epoch))
            return entry.state
        reason = result.reason
        holder = result.lease.owner if result.lease is not None else None
        if reason == "held" and holder is not None:
            if entry.state == PENDING:
                self.counters["taken"] += 1
                del self._entries[agent_id]
                return "taken"
            self.counters["lost"] += 1
            entry.state, entry.holder, entry.valid_until, entry.next_at = LOST, holder, None, None
            self._emit(AgentNameLost(entry.agent_id, entry.name, holder, f"the group gave the name to {holder}"))
            return entry.state
        if reason == "table_full" and entry.state == PENDING:
            del self._entries[agent_id]
            return "full"
        if reason == "expired":  # our renewal came after the lease ran out: claim again at once
            if entry.state == CONFIRMED:
                self._downgrade(entry, now_ms, "the lease expired before the renewal landed")
            entry.next_at = now_ms
            return entry.state
        return self._failed(entry, now_ms, f"the group refused the {kind}: {reason}")

    def handle_timer(self, now_ms: int) -> list[NameOp]:
        """Downgrade leases that ran out locally; return the renewals and claims that are due."""
        ops = []
        for agent_id in sorted(self._entries):
            entry = self._entries[agent_id]
            if entry.state == CONFIRMED and entry.valid_until is not None and now_ms >= entry.valid_until:
                self.counters["local_expiries"] += 1
                self._downgrade(entry, now_ms, "no renewal committed before the lease ran out (no quorum?)")
                entry.next_at = now_ms if entry.inflight is None else entry.next_at
            if entry.inflight is None and entry.next_at is not None and now_ms >= entry.next_at:
                ops.append(self._start(entry, "renew" if entry.state == CONFIRMED else "claim", now_ms))
        return ops

    def get_timer(self) -> int | None:
        due = []
        for entry in self._entries.values():
            if entry.inflight is None and entry.next_at is not None:
                due.append(entry.next_at)
            if entry.state == CONFIRMED and entry.valid_until is not None:
                due.append(entry.valid_until)
        return min(due) if due else None

    def stop_waiting(self, agent_id: str, now_ms: int) -> None:
        """The caller stops waiting for the first claim: a PENDING name becomes UNCONFIRMED (the claim goes on)."""
        entry = self._entries.get(agent_id)
        if entry is not None and entry.state == PENDING:
            self._downgrade(entry, now_ms, "no quorum answered the claim in time; retrying in the background")

    def inflight(self, agent_id: str) -> int | None:
        """The op id of the operation in flight for `agent_id`, if any."""
        entry = self._entries.get(agent_id)
        return None if entry is None else entry.inflight

    def state(self, agent_id: str) -> NameState | None:
        entry = self._entries.get(agent_id)
        if entry is None:
            return None
        return NameState(entry.agent_id, entry.name, entry.owner, entry.state, entry.epoch, entry.valid_until,
                         entry.holder)

    def states(self) -> list[NameState]:
        return [s for a in sorted(self._entries) if (s := self.state(a)) is not None]

    def next_event(self) -> NameEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals ------------------------------------------------------------------------------

    def _start(self, entry: _Entry, kind: Literal["claim", "renew"], now_ms: int) -> NameOp:
        op = NameOp(self._next_op, kind, entry.agent_id, entry.name, entry.owner, self.config.ttl_ms)
        self._next_op += 1
        self._ops[op.op_id] = (entry.agent_id, kind)
        entry.inflight, entry.sent_at, entry.next_at = op.op_id, now_ms, None
        self.counters["claims" if kind == "claim" else "renewals"] += 1
        return op

    def _failed(self, entry: _Entry, now_ms: int, why: str) -> str:
        """No answer we can use: keep a confirmed lease until it runs out locally, retry soon."""
        if entry.state == PENDING:
            self._downgrade(entry, now_ms, why)
        if entry.state == CONFIRMED:
            left = (entry.valid_until or now_ms) - now_ms
            entry.next_at = now_ms + max(1, min(RETRY_MIN_MS, left // 2))
        elif entry.state == UNCONFIRMED:
            entry.next_at = now_ms + self._jittered(entry.retry_ms)
            entry.retry_ms = min(entry.retry_ms * 2, self.config.retry_max_ms, max(RETRY_MIN_MS, self.config.ttl_ms // RENEW_DIVISOR))
        return entry.state

    def _downgrade(self, entry: _Entry, now_ms: int, reason: str) -> str:
        entry.state, entry.valid_until = UNCONFIRMED, None
        if entry.next_at is None and entry.inflight is None:
            entry.next_at = now_ms
        self.counters["unconfirmed"] += 1
        self._emit(AgentNameUnconfirmed(entry.agent_id, entry.name, reason))
        return entry.state

    def _jittered(self, ms: int) -> int:
        return max(1, int(ms * (1 + self._rng.uniform(-RENEW_JITTER, RENEW_JITTER))))

    def _emit(self, event: NameEvent) -> None:
        if len(self._events) >= EVENTS_MAX:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)

"""SWIM membership rules: member states and their one transition table, Lifeguard suspicion and local
health awareness, the randomised round-robin probe order, and the timing formulas.

Everything here is a plain object without I/O; `agentnode.core.NodeCore` drives it.

Sources: SWIM (Das, Gupta, Motivala, DSN 2002); Lifeguard (Dadgar, Phillips, Currey, arXiv 1707.00788,
2018); HashiCorp memberlist `state.go`, `suspicion.go`, `awareness.go`, `util.go`.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentnode import events as ev
from agentnode.messages import KIND_ALIVE, KIND_DEAD, KIND_LEFT, KIND_SUSPECT

__sans_io__ = True

__all__ = [
    "ALIVE",
    "DEAD",
    "LEFT",
    "SUSPECT",
    "TIMEOUT",
    "TRANSITIONS",
    "Awareness",
    "Member",
    "MemberInterner",
    "MemberRecord",
    "ProbeOrder",
    "Suspicion",
    "push_pull_interval_ms",
    "suspicion_timeouts_ms",
]

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)
STATE_OF_KIND = {KIND_ALIVE: ALIVE, KIND_SUSPECT: SUSPECT, KIND_DEAD: DEAD, KIND_LEFT: LEFT}
KIND_OF_STATE = {v: k for k, v in STATE_OF_KIND.items()}

TIMEOUT = 100
"""Local input: the suspicion timer of a suspect member ran out (not a wire kind)."""

STRICT = True
"""The incoming incarnation must be greater than the one held."""
AT_LEAST = False
"""The incoming incarnation may also be equal."""

TRANSITIONS: dict[tuple[str, int], tuple[str, bool, type]] = {
    # (held state, incoming update kind) -> (new state, incarnation rule, event).  SWIM §4.2 precedence:
    # alive(i) beats suspect(j)/alive(j) if i > j; suspect(i) beats alive(j) if i >= j, suspect(j) if i > j;
    # dead (confirm) beats everything at i >= j.  Lifeguard/memberlist add graceful leave, which beats
    # alive/suspect/dead at i >= j.  Ours: alive(i > j) re-admits a dead or departed member (memberlist
    # does too), which is what lets a healed partition or a restarted node come back.
    (ALIVE, KIND_ALIVE): (ALIVE, STRICT, ev.MemberUpdated),
    (ALIVE, KIND_SUSPECT): (SUSPECT, AT_LEAST, ev.MemberSuspected),
    (ALIVE, KIND_DEAD): (DEAD, AT_LEAST, ev.MemberFailed),
    (ALIVE, KIND_LEFT): (LEFT, AT_LEAST, ev.MemberLeft),
    (SUSPECT, KIND_ALIVE): (ALIVE, STRICT, ev.MemberAlive),
    (SUSPECT, KIND_SUSPECT): (SUSPECT, STRICT, ev.MemberSuspected),
    (SUSPECT, KIND_DEAD): (DEAD, AT_LEAST, ev.MemberFailed),
    (SUSPECT, KIND_LEFT): (LEFT, AT_LEAST, ev.MemberLeft),
    (SUSPECT, TIMEOUT): (DEAD, AT_LEAST, ev.MemberFailed),
    (DEAD, KIND_ALIVE): (ALIVE, STRICT, ev.MemberAlive),
    (DEAD, KIND_LEFT): (LEFT, AT_LEAST, ev.MemberLeft),
    (LEFT, KIND_ALIVE): (ALIVE, STRICT, ev.MemberAlive),
    # Absent pairs are ignored: (DEAD, suspect|dead), (LEFT, suspect|dead|left), (ALIVE|DEAD|LEFT, TIMEOUT).
    # Same-incarnation suspect of a suspect is not a transition but a Lifeguard confirmation (Suspicion).
}

LIVE_STATES = (ALIVE, SUSPECT)
"""States that are probed and gossiped to."""


def transition(state: str, kind: int, held: int, incoming: int) -> tuple[str, type] | None:
    """Apply the table: the (new state, event type) for `kind` at `incoming` vs `held`, or None to ignore."""
    rule = TRANSITIONS.get((state, kind))
    if rule is None:
        return None
    new_state, strict, event = rule
    if incoming < held or (strict and incoming == held):
        return None
    return new_state, event


def suspicion_timeouts_ms(min_ms_per_log10_nodes: int, max_mult: int, n_nodes: int) -> tuple[int, int]:
    """memberlist util.go suspicionTimeout: min = k * max(1, log10 N) (k = SuspicionMult * ProbeInterval);
    max = max_mult * min (SuspicionMaxTimeoutMult)."""
    node_scale = max(1.0, math.log10(max(1, n_nodes)))
    low = int(min_ms_per_log10_nodes * node_scale)
    return low, low * max_mult


def push_pull_interval_ms(interval_ms: int, n_nodes: int) -> int:
    """memberlist util.go pushPullScale: above 32 nodes, interval * (ceil(log2 N - log2 32) + 1)."""
    if n_nodes <= 32:
        return interval_ms
    return interval_ms * (math.ceil(math.log2(n_nodes) - math.log2(32)) + 1)


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it."""

    node_id: str
    """Its node id."""
    address: str
    """Where it listens ("host:port")."""
    state: str
    """"alive", "suspect", "dead" or "left"."""
    incarnation: int
    """Its incarnation number as last heard."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Its tags."""


class MemberRecord:
    """One member's fields as some node holds them: treated as immutable once built, and replaced on
    any change (decision 0059). Equal records are shared through a `MemberInterner`, so thousands of
    simulated cores hold one record per (member, state, incarnation) instead of one per observer; what
    only one observer knows (when a state began, its suspicion timer) lives in that core's side tables.
    """

    __slots__ = ("node_id", "address", "state", "incarnation", "metadata")

    def __init__(self, node_id: str, address: str, state: str, incarnation: int,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.node_id = node_id
        self.address = address
        self.state = state
        self.incarnation = incarnation
        self.metadata: Mapping[str, str] = metadata if metadata is not None else _NO_METADATA

    def snapshot(self) -> Member:
        """A frozen copy."""
        return Member(self.node_id, self.address, self.state, self.incarnation, dict(self.metadata))


_NO_METADATA: Mapping[str, str] = {}
"""The one empty metadata map records share (never mutated)."""

MEMBER_INTERNER_MAX = 1 << 20
"""Distinct records an interner remembers; when full it starts afresh (held records stay valid, only
sharing with later ones is lost). ~200 bytes each: ~200 MB at the bound."""


class MemberInterner:
    """Shares equal `MemberRecord`s and queued gossip `Update`s between the cores given the same one.

    The simulator gives one interner to all its cores (10,000 cores x 10,000 members would otherwise
    hold 10^8 records); a production node gets a private one. Sharing is safe because the core never
    mutates a record it got from here. Sized by `MEMBER_INTERNER_MAX`, never unbounded.
    """

    __slots__ = ("_records", "_updates", "_max")

    def __init__(self, max_entries: int = MEMBER_INTERNER_MAX) -> None:
        self._records: dict[tuple[Any, ...], MemberRecord] = {}
        self._updates: dict[tuple[Any, ...], Any] = {}
        self._max = max_entries

    def record(self, node_id: str, address: str, state: str, incarnation: int,
               metadata: Mapping[str, str] | None) -> MemberRecord:
        """The shared record with these fields (ids and addresses are `sys.intern`ed)."""
        key = (node_id, incarnation, state, address, tuple(metadata.items()) if metadata else ())
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= self._max:
                self._records = {}
            rec = MemberRecord(_intern(node_id), _intern(address), state, incarnation,
                               metadata if metadata else None)
            self._records[key] = rec
        return rec

    def update(self, update: Any) -> Any:
        """The shared copy of a gossip `Update` (a 6-tuple whose last field is metadata or None)."""
        kind, node_id, incarnation, address, origin, metadata = update
        key = (kind, node_id, incarnation, address, origin, None if metadata is None else tuple(metadata.items()))
        shared = self._updates.get(key)
        if shared is None:
            if len(self._updates) >= self._max:
                self._updates = {}
            shared = tuple.__new__(type(update), (kind, _intern(node_id), incarnation, _intern(address),
                                                  _intern(origin), metadata))
            self._updates[key] = shared
        return shared


class Suspicion:
    """Lifeguard dynamic suspicion timer (memberlist suspicion.go).

    Starts at `max_ms`; each independent confirmation (a suspect message from another accuser) shrinks
    it as  timeout = max - (max - min) * log(n + 1) / log(k + 1),  reaching `min_ms` at k confirmations.
    """

    __slots__ = ("incarnation", "start_ms", "k", "min_ms", "max_ms", "accusers", "deadline_ms", "rechecks", "rechecked_ms")

    def __init__(self, incarnation: int, accuser: str, k: int, min_ms: int, max_ms: int, now_ms: int) -> None:
        self.incarnation = incarnation
        self.start_ms = now_ms
        self.k = k
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.accusers: dict[str, None] = {accuser: None}
        """The first accuser plus up to k confirmers (bounded)."""
        self.deadline_ms = now_ms + (max_ms if k >= 1 else min_ms)
        self.rechecks = 0
        """Times the timer ran out while our health was poor and was extended for a re-check probe (0044)."""
        self.rechecked_ms = -1
        """When the timer was last extended for a re-check (0044): a further extension needs contact since."""

    @property
    def confirmations(self) -> int:
        """Independent confirmations heard so far (the first accuser does not count)."""
        return len(self.accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Count `accuser`'s confirmation; True if it was new (then re-gossip it), and the deadline moved."""
        n = len(self.accusers) - 1
        if n >= self.k or accuser in self.accusers:
            return False
        self.accusers[accuser] = None
        n += 1
        frac = math.log(n + 1) / math.log(self.k + 1)
        timeout = max(self.min_ms, int(self.max_ms - frac * (self.max_ms - self.min_ms)))
        deadline = self.start_ms + timeout
        # After a re-check extension (decision 0044) one more confirmation does not cut the time the
        # re-check probe needs; k of them (others agree) do.
        self.deadline_ms = max(deadline, self.deadline_ms) if self.rechecks and n < self.k else deadline
        return True


class Awareness:
    """Lifeguard local health multiplier (memberlist awareness.go): score in [0, max - 1].

    Missed nacks and refuted accusations raise it, successful probes lower it; timeouts and the probe
    interval are multiplied by score + 1, so a slow node stops accusing healthy ones.
    """

    __slots__ = ("score", "max_score")

    def __init__(self, max_multiplier: int) -> None:
        self.score = 0
        self.max_score = max_multiplier - 1

    def apply(self, delta: int) -> None:
        """Move the score by `delta`, clamped."""
        self.score = min(self.max_score, max(0, self.score + delta))

    def scale(self, ms: int) -> int:
        """`ms` stretched by the current health (score + 1)."""
        return ms * (self.score + 1)


class ProbeOrder:
    """Randomised round-robin over members (SWIM §4.3): each member is probed once per pass.

    Bounded detection time: a member waits at most 2 passes for its probe. A new member goes to a random
    position of the current pass (memberlist state.go aliveNode, by the same append-and-swap). Removal is lazy: the caller skips
    members that are no longer probe-able, and each pass is rebuilt from the live members.
    """

    __slots__ = ("_order", "_next", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._order: list[str] = []
        self._next = 0
        self._rng = rng

    def add(self, node_id: str) -> None:
        """Put a new member at a random position of the rest of this pass: append it and swap it with a
        random entry of the rest (memberlist state.go aliveNode does the same swap). O(1), where an
        insert shifted the list: at 10,000 members that memmove was a visible share of a join."""
        order = self._order
        lo = self._next
        pos = lo + self._rng.randrange(len(order) - lo + 1)
        order.append(node_id)
        order[pos], order[-1] = order[-1], order[pos]

    def next(self, live: list[str], is_live: Mapping[str, MemberRecord]) -> str | None:
        """The next member to probe, rebuilding a shuffled pass from `live` when one ends."""
        for _ in range(2):
            order = self._order
            while self._next < len(order):
                node_id = order[self._next]
                self._next += 1
                rec = is_live.get(node_id)
                if rec is not None and (rec.state == ALIVE or rec.state == SUSPECT):
                    return node_id
            if not live:
                return None
            self._order = list(live)
            self._rng.shuffle(self._order)
            self._next = 0
        return None


_intern = sys.intern

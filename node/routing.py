"""Where a message goes: the live peer set the agent cores share, and load balancing over agents.

`LivePeers` is the member list as the registry, delivery and broadcast cores see it (fed from
membership events): node id -> address, a suspect flag, and O(1) uniform sampling from an injected
`random.Random` (a list plus positions, never set iteration).

`Balancer` picks one agent among candidates that share a capability:
- ``round_robin``: rotate per capability key (Dapr service invocation's default over mDNS instances);
- ``least_outstanding``: fewest requests in flight, ties by a rotating cursor (Envoy LEAST_REQUEST idea);
- ``latency``: lowest EWMA of observed response times (alpha 0.3, the Finagle/Linkerd "peak EWMA" family
  without the peak term), untried agents first so each gets measured;
- ``consistent_hash``: a ring of `VNODES` virtual points per agent hashed with BLAKE2b (Karger et al. 1997;
  virtual nodes as in Dynamo, SOSP 2007), so one key keeps going to one agent while the set is stable and
  only ~1/n of keys move when an agent joins or leaves.
Failover: pass the agents already tried in `exclude`; each strategy picks among the rest, and the ring
walks clockwise to the next distinct agent.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__sans_io__ = True

__all__ = [
    "Balancer",
    "Candidate",
    "HashRing",
    "LivePeers",
    "NoCandidate",
    "STRATEGIES",
    "VNODES",
]

STRATEGIES = ("round_robin", "least_outstanding", "latency", "consistent_hash")
VNODES = 64
"""Virtual points per agent on the hash ring (64-160 keeps the load spread within ~10-20%)."""
EWMA_ALPHA = 0.3
"""Weight of the newest latency sample."""
MAX_TRACKED_AGENTS = 100_000
"""Agents whose outstanding count / latency is remembered; beyond this the oldest are forgotten."""
MAX_RING_CACHE = 256
"""Hash rings cached by candidate set."""


class NoCandidate(LookupError):
    """No agent is left to try (none has the capability, or all were tried)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One agent a message could go to."""

    agent_id: str
    node_id: str


class LivePeers:
    """Live members (alive or suspect) other than this node, with addresses; uniform sampling in O(k)."""

    __slots__ = ("_ids", "_pos", "_address", "_suspect")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._address: dict[str, str] = {}
        self._suspect: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._pos

    def add(self, node_id: str, address: str) -> bool:
        """Add or refresh `node_id`; clears its suspect flag. True if it was not live before."""
        self._address[node_id] = address
        self._suspect[node_id] = False
        if node_id in self._pos:
            return False
        self._pos[node_id] = len(self._ids)
        self._ids.append(node_id)
        return True

    def remove(self, node_id: str) -> bool:
        """Forget `node_id`. True if it was live."""
        pos = self._pos.pop(node_id, None)
        if pos is None:
            return False
        last = self._ids.pop()
        if last != node_id:
            self._ids[pos] = last
            self._pos[last] = pos
        del self._address[node_id]
        del self._suspect[node_id]
        return True

    def set_suspect(self, node_id: str, suspect: bool) -> None:
        if node_id in self._pos:
            self._suspect[node_id] = suspect

    def suspect(self, node_id: str) -> bool:
        return self._suspect.get(node_id, False)

    def address(self, node_id: str) -> str | None:
        return self._address.get(node_id)

    @property
    def addresses(self) -> Mapping[str, str]:
        """Node id -> address of every live member: a read-only view, for a loop that looks up many."""
        return self._address

    def ids(self) -> list[str]:
        """Live node ids, sorted (deterministic)."""
        return sorted(self._ids)

    def sample(self, count: int, rng: random.Random, exclude: Iterable[str] = ()) -> list[str]:
        """Up to `count` distinct random live members not in `exclude`; O(count) expected for small excludes."""
        skip = dict.fromkeys(x for x in exclude if x in self._pos)
        n = len(self._ids) - len(skip)
        if n <= 0 or count <= 0:
            return []
        if n <= count * 2:
            pool = [x for x in self._ids if x not in skip]
            rng.shuffle(pool)
            return pool[:count]
        picked: dict[str, None] = {}
        ids = self._ids
        while len(picked) < count:
            x = ids[rng.randrange(len(ids))]
            if x not in skip:
                picked[x] = None
        return list(picked)


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing over agent ids with `vnodes` virtual points each; deterministic across processes."""

    __slots__ = ("_points", "_owners", "_agents")

    def __init__(self, agent_ids: Iterable[str], vnodes: int = VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        pairs = sorted((_point(f"{a}#{i}"), a) for a in set(agent_ids) for i in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [a for _, a in pairs]
        self._agents = len({a for _, a in pairs})

    def lookup(self, key: str, exclude: Iterable[str] = ()) -> str | None:
        """The agent owning `key`, or the next distinct one clockwise that is not excluded."""
        if not self._points:
            return None
        skip = set(exclude)
        i = bisect.bisect_left(self._points, _point(key)) % len(self._points)
        seen: set[str] = set()
        for step in range(len(self._points)):
            owner = self._owners[(i + step) % len(self._points)]
            if owner not in skip:
                return owner
            seen.add(owner)
            if len(seen) >= self._agents:
                return None
        return None


class Balancer:
    """Per-node load-balancing state: rotation cursors, outstanding requests, latency EWMAs, cached rings."""

    def __init__(self, *, vnodes: int = VNODES) -> None:
        self._vnodes = vnodes
        self._cursor: dict[str, int] = {}
        self._outstanding: dict[str, int] = {}
        self._latency: dict[str, float] = {}
        self._rings: dict[tuple[str, ...], HashRing] = {}

    def pick(
        self,
        candidates: Sequence[Candidate],
        strategy: str = "round_robin",
        *,
        key: str | None = None,
        group: str = "",
        exclude: Iterable[str] = (),
    ) -> Candidate:
        """One candidate not in `exclude` (agent ids), chosen by `strategy`; raises `NoCandidate`."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        skip = set(exclude)
        pool = sorted((c for c in candidates if c.agent_id not in skip), key=lambda c: (c.agent_id, c.node_id))
        if not pool:
            raise NoCandidate(f"no agent left for {group or 'this request'} (tried {len(skip)})")
        if strategy == "consistent_hash":
            if key is None:
                raise ValueError("consistent_hash needs a key (for example the conversation or entity id)")
            ids = tuple(sorted({c.agent_id for c in candidates}))
            ring = self._rings.get(ids)
            if ring is None:
                if len(self._rings) >= MAX_RING_CACHE:
                    del self._rings[next(iter(self._rings))]
                ring = self._rings[ids] = HashRing(ids, self._vnodes)
            chosen = ring.lookup(key, skip)
            for c in pool:
                if c.agent_id == chosen:
                    return c
            return pool[0]
        if strategy == "round_robin":
            return self._rotate(pool, group)
        if strategy == "least_outstanding":
            low = min(self._outstanding.get(c.agent_id, 0) for c in pool)
            return self._rotate([c for c in pool if self._outstanding.get(c.agent_id, 0) == low], group)
        untried = [c for c in pool if c.agent_id not in self._latency]
        if untried:
            return self._rotate(untried, group)
        return min(pool, key=lambda c: (self._latency[c.agent_id], c.agent_id))

    def started(self, agent_id: str) -> None:
        """A request to `agent_id` is in flight."""
        self._track(self._outstanding)
        self._outstanding[agent_id] = self._outstanding.get(agent_id, 0) + 1

    def finished(self, agent_id: str, latency_ms: int | None = None) -> None:
        """The request finished; `latency_ms` (if it succeeded) feeds the EWMA."""
        n = self._outstanding.get(agent_id, 0)
        if n <= 1:
            self._outstanding.pop(agent_id, None)
        else:
            self._outstanding[agent_id] = n - 1
        if latency_ms is not None:
            old = self._latency.get(agent_id)
            self._track(self._latency)
            self._latency[agent_id] = float(latency_ms) if old is None else old + EWMA_ALPHA * (latency_ms - old)

    def outstanding(self, agent_id: str) -> int:
        return self._outstanding.get(agent_id, 0)

    def latency_ms(self, agent_id: str) -> float | None:
        return self._latency.get(agent_id)

    def forget(self, agent_id: str) -> None:
        """Drop what is known about an agent that went away."""
        self._outstanding.pop(agent_id, None)
        self._latency.pop(agent_id, None)

    def _rotate(self, pool: list[Candidate], group: str) -> Candidate:
        i = self._cursor.get(group, 0)
        if group not in self._cursor and len(self._cursor) >= MAX_TRACKED_AGENTS:
            del self._cursor[next(iter(self._cursor))]
        self._cursor[group] = i + 1
        return pool[i % len(pool)]

    @staticmethod
    def _track(table: dict[str, object]) -> None:
        if len(table) >= MAX_TRACKED_AGENTS:
            del table[next(iter(table))]

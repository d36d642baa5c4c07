"""A deterministic stand-in for the Raft group, for the simulator and socket-free tests.

It models what the node can observe of Raft, not the message exchange: one committed log, a
leader, terms, per-voter replicas that lag while cut off, and majority reachability decided by an
injected ``reachable(a, b)`` predicate (the simulator derives it from its network model).

Rules, chosen to match Raft's guarantees (Ongaro & Ousterhout 2014, §5.2-5.4):
- A leader serves a proposer only while it is two-way linked to a majority of voters (itself
  included) and to the proposer. Otherwise a new election runs: the term increases and the
  proposer (if it is a voter that reaches a majority) or the lowest-id voter reachable from it and
  reaching a majority wins. No candidate means `NoQuorum`, and nothing is applied.
- Each election increments the term and records exactly one leader for it, so "at most one leader
  per term" holds by construction (`leaders_by_term` lets invariant checkers verify it).
- A committed entry reaches every voter linked to the leader at once; others catch up when they
  are linked again (`sync()` or the next commit). The election restriction (§5.4.1) is modelled by
  catching the new leader up from the committed log before it serves.

Everything is synchronous and driven by the caller (`submit`, `read`, `sync` take `now_ms`);
`MemoryGroup` wraps one member in the async `ConsensusGroup` API.
"""

from __future__ import annotations

__sans_io__ = True

from typing import Any, Callable, Iterable

from .base import Clock, GroupStatus, MembershipChangeRefused, NoQuorum, NotLeader, ReadResult
from .commands import Command, encode_entry
from .state_machine import CriticalState

__all__ = ["MemoryCluster", "MemoryGroup"]

Reachable = Callable[[str, str], bool]
"""reachable(a, b): can a message from a arrive at b right now?"""

LOG_ENTRIES_MAX = 1_000_000
"""The model keeps the whole log (no compaction); a run that needs more is a runaway workload."""


def _always(a: str, b: str) -> bool:
    return True


class MemoryCluster:
    """The shared truth of one simulated Raft group; hand out members with `member()`."""

    def __init__(self, voters: Iterable[str], reachable: Reachable | None = None) -> None:
        self._voters: list[str] = sorted(dict.fromkeys(voters))
        if not self._voters:
            raise ValueError("a Raft group needs at least one voter id")
        self._reachable: Reachable = reachable or _always
        self._term = 0
        self._leader: str | None = None
        self._log: list[tuple[Command, int]] = []
        self._replicas: dict[str, CriticalState] = {v: CriticalState() for v in self._voters}
        self._applied: dict[str, int] = {v: 0 for v in self._voters}
        self._leaders_by_term: dict[int, str] = {}
        self.elections = 0
        """Elections held so far (a churn figure for reports)."""

    # -- configuration ----------------------------------------------------------------------

    def set_reachable(self, reachable: Reachable | None) -> None:
        """Swap the reachability predicate (None: everything reachable), e.g. on a partition or heal."""
        self._reachable = reachable or _always

    def member(self, node_id: str, clock: Clock, forward: bool = True) -> MemoryGroup:
        """An async `ConsensusGroup` handle for `node_id` (a voter, or a client that forwards)."""
        return MemoryGroup(self, node_id, clock, forward)

    # -- the synchronous core ---------------------------------------------------------------

    @property
    def voters(self) -> tuple[str, ...]:
        return tuple(self._voters)

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> str | None:
        """The current leader, or None before the first election."""
        return self._leader

    @property
    def leaders_by_term(self) -> dict[int, str]:
        """Term -> the one leader elected in it (a copy)."""
        return dict(self._leaders_by_term)

    @property
    def commit_index(self) -> int:
        return len(self._log)

    def replica(self, voter_id: str) -> CriticalState:
        """A voter's state machine, as far as it has caught up (read-only use, please)."""
        return self._replicas[voter_id]

    def submit(self, node_id: str, command: Command, now_ms: int, forward: bool = True) -> Any:
        """Commit `command` on behalf of `node_id` and return its result.

        Raises `NoQuorum` (nothing applied) if no leader reachable from `node_id` has a majority,
        `NotLeader` if `forward` is False and `node_id` is not the leader, `ValueError` for an
        invalid or oversized command (the same check the real group applies).
        """
        encode_entry(command, now_ms)  # same size and type checks as the real log
        leader = self._serving_leader(node_id)
        if not forward and leader != node_id:
            raise NotLeader(leader)
        if len(self._log) >= LOG_ENTRIES_MAX:
            raise RuntimeError(f"memory group log reached LOG_ENTRIES_MAX={LOG_ENTRIES_MAX}; shorten the run")
        self._log.append((command, now_ms))
        result = None
        for voter in self._voters:
            if self._linked(leader, voter):
                last = self._catch_up(voter)
                if voter == leader:
                    result = last
        return result

    def read(self, node_id: str, query: Command, linearizable: bool, now_ms: int, forward: bool = True) -> ReadResult:
        """Answer a read-only command, through the log if `linearizable`, else from `node_id`'s replica."""
        if not getattr(type(query), "READONLY", False):
            raise ValueError(f"{type(query).__name__} changes state; use propose() for it")
        if linearizable:
            value = self.submit(node_id, query, now_ms, forward)
            return ReadResult(value, True, self.commit_index, self._leader)
        replica = self._replicas.get(node_id)
        if replica is None:
            raise ValueError(f"{node_id!r} is not a voter and holds no replica; read with linearizable=True")
        return ReadResult(replica.query(query), False, self._applied[node_id], self._leader)

    def sync(self) -> None:
        """Let the current leader catch up every voter it is linked to (a heartbeat round)."""
        if self._leader is not None and self._has_majority(self._leader):
            for voter in self._voters:
                if self._linked(self._leader, voter):
                    self._catch_up(voter)

    def change_voters(self, node_id: str, add: str | None = None, remove: str | None = None) -> None:
        """Add or remove one voter, committed through the current leader (Raft §6 single-server change)."""
        if (add is None) == (remove is None):
            raise ValueError("change exactly one voter per call: pass add= or remove=")
        leader = self._serving_leader(node_id)
        if add is not None:
            if add in self._replicas:
                raise MembershipChangeRefused(f"{add!r} is already a voter")
            self._voters = sorted([*self._voters, add])
            self._replicas[add] = CriticalState()
            self._applied[add] = 0
            if self._linked(leader, add):
                self._catch_up(add)
        else:
            assert remove is not None
            if remove not in self._replicas:
                raise MembershipChangeRefused(f"{remove!r} is not a voter")
            if remove == leader:
                raise MembershipChangeRefused(f"{remove!r} is the leader; transfer leadership before removing it")
            self._voters = [v for v in self._voters if v != remove]
            del self._replicas[remove]
            del self._applied[remove]

    def status(self, node_id: str) -> GroupStatus:
        """`node_id`'s view of the group."""
        leader = self._leader
        healthy = leader is not None and self._has_majority(leader) and self._linked(node_id, leader)
        if node_id == leader:
            role = "leader"
        elif node_id in self._replicas:
            role = "follower"
        else:
            role = "client"
        lag: dict[str, int | None] = {}
        for voter in self._voters:
            lag[voter] = (self.commit_index - self._applied[voter]) if node_id == leader else None
        return GroupStatus(
            node_id=node_id,
            role=role,
            leader=leader if healthy else None,
            term=self._term,
            commit_index=self.commit_index,
            applied_index=self._applied.get(node_id, 0),
            voters=tuple(self._voters),
            lag=lag,
            has_quorum=healthy,
        )

    def digests(self) -> dict[str, str]:
        """Voter -> state digest; equal digests for voters with equal applied indexes is the invariant."""
        return {v: self._replicas[v].digest() for v in self._voters}

    # -- internals --------------------------------------------------------------------------

    def _linked(self, a: str, b: str) -> bool:
        return a == b or (self._reachable(a, b) and self._reachable(b, a))

    def _has_majority(self, voter: str) -> bool:
        linked = sum(1 for v in self._voters if self._linked(voter, v))
        return voter in self._replicas and linked * 2 > len(self._voters)

    def _serving_leader(self, node_id: str) -> str:
        leader = self._leader
        if leader is not None and self._has_majority(leader) and self._linked(node_id, leader):
            return leader
        candidates = [v for v in self._voters if self._linked(node_id, v) and self._has_majority(v)]
        if not candidates:
            raise NoQuorum(
                f"no voter reachable from {node_id!r} is linked to a majority of {len(self._voters)} voters; "
                "the command was NOT applied"
            )
        winner = node_id if node_id in candidates else candidates[0]
        self._term += 1
        assert self._term not in self._leaders_by_term, "two leaders in one term"
        self._leaders_by_term[self._term] = winner
        self._leader = winner
        self.elections += 1
        self._catch_up(winner)
        return winner

    def _catch_up(self, voter: str) -> Any:
        """Apply the committed entries `voter` is missing; return the last result."""
        replica = self._replicas[voter]
        result = None
        for index in range(self._applied[voter], len(self._log)):
            command, now_ms = self._log[index]
            result = replica.apply(command, now_ms)
        self._applied[voter] = len(self._log)
        return result


class MemoryGroup:
    """One member of a `MemoryCluster` behind the async `ConsensusGroup` API; completes without awaiting."""

    def __init__(self, cluster: MemoryCluster, node_id: str, clock: Clock, forward: bool = True) -> None:
        self._cluster = cluster
        self._node_id = node_id
        self._clock = clock
        self._forward = forward
        self._closed = False

    @property
    def node_id(self) -> str:
        return self._node_id

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    async def propose(self, command: Command) -> Any:
        self._check_open()
        return self._cluster.submit(self._node_id, command, self._clock(), self._forward)

    async def read(self, query: Command, linearizable: bool = True) -> ReadResult:
        self._check_open()
        return self._cluster.read(self._node_id, query, linearizable, self._clock(), self._forward)

    def status(self) -> GroupStatus:
        return self._cluster.status(self._node_id)

    async def add_voter(self, voter_id: str) -> None:
        self._check_open()
        self._cluster.change_voters(self._node_id, add=voter_id)

    async def remove_voter(self, voter_id: str) -> None:
        self._check_open()
        self._cluster.change_voters(self._node_id, remove=voter_id)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"consensus member {self._node_id!r} is closed; call start() again or make a new one")

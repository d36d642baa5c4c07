"""What the node sees of the Raft group, and the seam the node provides to it.

`ConsensusGroup` is the async API the node calls (propose, read, status, membership). It has two
implementations: `PySyncObjGroup` (real Raft over the node's authenticated transport) and
`MemoryGroup` (a deterministic stand-in for simulations and socket-free tests).

`RaftLink` is the other direction: the node hands the group a way to send bytes to a voter and
to receive bytes from one, both over the node's mutually authenticated transport. Nothing reaches
the Raft implementation except through it, so an unauthenticated peer never reaches a decoder.

Errors split by outcome, because that is what a caller must act on:
- `NoQuorum`, `NotLeader`: the command was NOT applied; retrying is safe.
- `ConsensusTimeout`: the outcome is unknown; read back (or make the command idempotent) before retrying.
- `ValueError`/`TypeError`: caller misuse (bad command, oversized value); fix the call.
"""

from __future__ import annotations

__sans_io__ = True

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from .commands import Command

__all__ = [
    "ConsensusError",
    "ConsensusGroup",
    "ConsensusTimeout",
    "GroupStatus",
    "MembershipChangeRefused",
    "NoQuorum",
    "NotLeader",
    "RaftLink",
    "RaftReceiver",
    "ReadResult",
    "Role",
]

Role = str
"""One of "leader", "follower", "candidate", "stopped"."""


class ConsensusError(Exception):
    """Base class for consensus-group errors."""


class NoQuorum(ConsensusError):
    """No leader with a reachable majority within the bound; the command was not applied."""

    def __init__(self, message: str = "", *, waited_ms: int = 0) -> None:
        super().__init__(
            message
            or f"no Raft leader with a reachable majority after {waited_ms} ms; the command was NOT applied. "
            "This side is probably partitioned from most voters: check `status()` and the network, retry later."
        )
        self.waited_ms = waited_ms


class NotLeader(ConsensusError):
    """This member is not the leader and was asked not to forward; the command was not applied."""

    def __init__(self, leader: str | None) -> None:
        hint = f"send it to voter {leader!r}" if leader else "no leader is known yet; retry shortly"
        super().__init__(f"this member is not the Raft leader: {hint}; the command was NOT applied")
        self.leader = leader


class ConsensusTimeout(ConsensusError):
    """The command was submitted but no commit was seen in time: it may or may not have been applied."""

    def __init__(self, message: str = "", *, waited_ms: int = 0) -> None:
        super().__init__(
            message
            or f"no commit confirmation after {waited_ms} ms; the command may or may not have been applied. "
            "Read the affected state (or use an idempotent command such as a compare-and-set) before retrying."
        )
        self.waited_ms = waited_ms


class MembershipChangeRefused(ConsensusError):
    """A voter change was refused (another change in flight, unknown voter, or removing the leader)."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A read answer, labelled with how fresh it is."""

    value: Any
    linearizable: bool
    """True: ordered through the log after every write acknowledged before the read started."""
    applied_index: int
    """Log entries this member had applied when it answered; a stale read may lag the leader."""
    leader: str | None
    """The leader this member believed in when it answered."""

    @property
    def stale(self) -> bool:
        """True for a local read that may miss recent writes."""
        return not self.linearizable


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A member's view of the group; every field is local knowledge and may be out of date."""

    node_id: str
    role: Role
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    voters: tuple[str, ...]
    """Sorted voter ids, this member included."""
    lag: dict[str, int | None] = field(default_factory=dict)
    """Voter id -> entries behind the commit index; None where this member cannot know (followers)."""
    has_quorum: bool = False
    """This member recently heard from a leader that reaches a majority (or is such a leader)."""


@runtime_checkable
class ConsensusGroup(Protocol):
    """The Raft group as the node uses it. Construct (no I/O), `await start()`, use, `await close()`."""

    @property
    def node_id(self) -> str:
        """This member's voter id."""
        ...

    async def start(self) -> None:
        """Open files and begin ticking."""
        ...

    async def close(self) -> None:
        """Stop ticking and release files; pending proposals fail with `ConsensusTimeout`."""
        ...

    async def propose(self, command: Command) -> Any:
        """Commit `command` and return the state machine's result (forwarded to the leader if needed).

        Raises `NoQuorum` fast (within the configured bound) when no leader with a majority is
        reachable, `NotLeader` when forwarding is disabled, `ConsensusTimeout` when the outcome is
        unknown, `ValueError` for an invalid or oversized command.
        """
        ...

    async def read(self, query: Command, linearizable: bool = True) -> ReadResult:
        """Answer a read-only command; `linearizable=False` answers locally (maybe stale, labelled so)."""
        ...

    def status(self) -> GroupStatus:
        """This member's view: leader, term, commit index, voters, per-voter lag."""
        ...

    async def add_voter(self, voter_id: str) -> None:
        """Add one voter; wait for the change to commit before starting another."""
        ...

    async def remove_voter(self, voter_id: str) -> None:
        """Remove one voter (not the current leader); wait for the change to commit."""
        ...


class RaftReceiver(Protocol):
    """Called on the event loop for each frame from an authenticated voter."""

    def __call__(self, voter_id: str, data: bytes) -> None: ...


@runtime_checkable
class RaftLink(Protocol):
    """Moves opaque Raft frames between voters over the node's mutually authenticated transport.

    The node implements it (mapping voter ids to authenticated peer ids); `MemoryRaftNetwork`
    implements it in-process for tests. Best effort, FIFO per peer, never blocks.
    """

    def send(self, voter_id: str, data: bytes) -> None:
        """Queue `data` for `voter_id`; drop it silently if the voter is unreachable."""
        ...

    def set_receiver(self, receiver: RaftReceiver | None) -> None:
        """Install (or remove, with None) the callback for frames from authenticated voters."""
        ...


Clock = Callable[[], int]
"""Returns epoch milliseconds; the proposer's stamp for lease and lock times."""

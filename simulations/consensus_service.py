"""The consensus stand-in (`consensus.memory_group.MemoryCluster`) in the simulated world.

The stand-in models what a node can observe of Raft (one committed log, terms, one leader per
term, majority reachability) and has no messages of its own, so its traffic cannot cross the
simulated network; instead its `reachable(a, b)` predicate is read from the world at every call:
a frame from a to b gets through when both nodes run, neither is paused, and no partition blocks
the link. Crashes, pauses and partitions of voters therefore change who can lead exactly as they
change who can talk (docs/decisions/0056).

Voters are the first `voters` nodes (the bootstrap nodes, as node/raft.py's voter selection picks
the longest-standing members). Log entries are stamped with the world's time: the stand-in has no
leader clock, and node clocks start at unrelated origins (leases count in log time).

Two workloads use it: key-value puts from random nodes (writes must resume once faults stop) and
agent-name leases (claim/renew/release of a small name space from random nodes), whose grants the
`name-lease-unique` invariant checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentnode.consensus.base import NoQuorum
from agentnode.consensus.commands import ClaimName, KvPut, ReleaseName, RenewName
from agentnode.consensus.memory_group import MemoryCluster
from agentnode.simulations.seed import fork
from agentnode.simulations.world import node_name

if TYPE_CHECKING:
    from agentnode.names import NameOp
    from agentnode.simulations.services import ServiceNode
    from agentnode.simulations.world import World

__sans_io__ = True

__all__ = ["ConsensusConfig", "ConsensusLog", "ConsensusService", "LeaseGrant"]

GRANTS_MAX = 1_000_000
"""Lease grants kept for the uniqueness check (a run that makes more is a runaway workload)."""


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    voters: int = 3
    """Voter count (3 or 5 in practice); the first `voters` nodes."""
    interval_ms: int = 200
    """One key-value put and one name operation from random healthy nodes this often."""
    names: int = 4
    """Agent names contended for (few, so claims collide)."""
    lease_ttl_ms: int = 3_000
    start_ms: int = 0
    end_ms: int = 0
    """The workloads run in [start_ms, end_ms)."""

    def __post_init__(self) -> None:
        if self.voters < 1 or self.interval_ms < 1 or self.names < 1 or self.lease_ttl_ms < 1:
            raise ValueError("voters, interval_ms, names and lease_ttl_ms must be positive")


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A name lease as the state machine granted (or renewed) it, in log time."""

    name: str
    owner: str
    granted_ms: int
    expires_ms: int
    epoch: int


@dataclass(slots=True)
class ConsensusLog:
    writes_ok: int = 0
    writes_refused: int = 0
    """NoQuorum: no leader with a majority reachable from the writer (nothing applied)."""
    last_ok_ms: int = -1
    last_refused_ms: int = -1
    last_refused_by_majority_side_ms: int = -1
    """Last NoQuorum seen by a node that could reach a majority of voters: after faults stop it must not recur."""
    claims_ok: int = 0
    claims_refused: int = 0
    grants: list[LeaseGrant] = field(default_factory=list)
    holders: dict[str, LeaseGrant] = field(default_factory=dict)
    """name -> the latest grant not released (expired ones stay until replaced)."""
    double_leases: list[tuple[LeaseGrant, LeaseGrant]] = field(default_factory=list)
    """(live grant, conflicting grant to another owner): what `name-lease-unique` reports."""
    leaders_seen: dict[int, str] = field(default_factory=dict)
    """term -> leader, as observed through the voters' status at each check."""


class ConsensusService:
    """One MemoryCluster for the whole world, its reachability, and its workloads."""

    def __init__(self, world: World, config: ConsensusConfig, cluster: MemoryCluster | None = None) -> None:
        if config.voters > world.config.nodes:
            raise ValueError(f"{config.voters} voters need at least as many nodes (the world has {world.config.nodes})")
        self.world = world
        self.config = config
        self.voter_ids = [node_name(i) for i in range(config.voters)]
        self._index = {node.node_id: node.index for node in world.nodes}
        self.cluster = cluster if cluster is not None else MemoryCluster(self.voter_ids)
        self.cluster.set_reachable(self.reachable)
        self.log = ConsensusLog()
        self._rng = fork(world.config.seed, "workload", "consensus")
        self._held: dict[str, str] = {}
        """owner node -> the name it believes it holds (renews it, sometimes releases it)."""

    def reachable(self, a: str, b: str) -> bool:
        """Can a frame from node `a` reach node `b` now (the world's view)?"""
        ia, ib = self._index.get(a), self._index.get(b)
        if ia is None or ib is None:
            return False
        nodes = self.world.nodes
        return nodes[ia].healthy and nodes[ib].healthy and not self.world.network.blocked(ia, ib)

    def voter_index(self, voter_id: str) -> int:
        return self._index[voter_id]

    def majority_reachable_from(self, node_id: str) -> bool:
        linked = sum(1 for v in self.voter_ids if v == node_id or (self.reachable(node_id, v) and self.reachable(v, node_id)))
        return linked * 2 > len(self.voter_ids)

    def schedule(self) -> None:
        c = self.config
        t = c.start_ms
        while t < c.end_ms:
            self.world.call_at(t, self._tick)
            t += c.interval_ms

    # ---- the workloads ---------------------------------------------------------------------

    def _tick(self, now_ms: int) -> None:
        world = self.world
        healthy = [n for n in world.nodes if n.healthy]
        if not healthy:
            return
        self.cluster.sync()
        writer = healthy[self._rng.randrange(len(healthy))].node_id
        self._put(writer, now_ms)
        claimer = healthy[self._rng.randrange(len(healthy))].node_id
        self._name_op(claimer, now_ms)

    def _put(self, node_id: str, now_ms: int) -> None:
        command = KvPut(f"sim/{self._rng.randrange(16)}", b"%d" % now_ms)
        try:
            self.cluster.submit(node_id, command, now_ms)
        except NoQuorum:
            self.log.writes_refused += 1
            self.log.last_refused_ms = now_ms
            if self.majority_reachable_from(node_id):
                self.log.last_refused_by_majority_side_ms = now_ms
            self.world.trace.record(b"Q%d %s put refused" % (now_ms, node_id.encode()))
            return
        self.log.writes_ok += 1
        self.log.last_ok_ms = now_ms
        self.world.trace.record(b"Q%d %s put ok %d %d" % (now_ms, node_id.encode(), self.cluster.term, self.cluster.commit_index))

    def _name_op(self, node_id: str, now_ms: int) -> None:
        c = self.config
        held = self._held.get(node_id)
        if held is not None:
            if self._rng.random() < 0.2:
                command: Any = ReleaseName(held, node_id)
            else:
                command = RenewName(held, node_id, c.lease_ttl_ms)
        else:
            command = ClaimName(f"agent-{self._rng.randrange(c.names)}", node_id, c.lease_ttl_ms)
        try:
            result = self.cluster.submit(node_id, command, now_ms)
        except NoQuorum:
            self.log.claims_refused += 1
            self.world.trace.record(b"Q%d %s name refused" % (now_ms, node_id.encode()))
            return
        self.world.trace.record(b"Q%d %s name " % (now_ms, node_id.encode()) + repr((command, result)).encode())
        if isinstance(command, ReleaseName):
            self._held.pop(node_id, None)
        elif not (result.ok and result.lease is not None):
            self._held.pop(node_id, None)
        else:
            self._held[node_id] = command.name
        self._record(command, result, now_ms)

    def run_name_op(self, node: ServiceNode, op: NameOp, local_now_ms: int) -> None:
        """Run one `NameLeases` operation through the stand-in and report it back, as name_keeper does.

        The stand-in answers at once; NoQuorum is "not_applied" (nothing was applied). Releases are
        not tracked by the core, so their results are not reported."""
        now_ms = self.world.now_ms
        if op.kind == "claim":
            command: Any = ClaimName(op.name, op.owner, op.ttl_ms)
        elif op.kind == "renew":
            command = RenewName(op.name, op.owner, op.ttl_ms)
        else:
            command = ReleaseName(op.name, op.owner)
        names = node.names
        assert names is not None
        try:
            result = self.cluster.submit(self._node_of_owner(op.owner), command, now_ms)
        except NoQuorum:
            self.log.claims_refused += 1
            self.world.trace.record(b"N%d %s refused" % (now_ms, repr(op).encode()))
            if op.kind != "release":
                names.on_result(op.op_id, local_now_ms, error="not_applied", detail="no quorum")
            return
        self.world.trace.record(b"N%d " % now_ms + repr((op, result)).encode())
        self._record(command, result, now_ms)
        if op.kind != "release":
            names.on_result(op.op_id, local_now_ms, result)

    def _node_of_owner(self, owner: str) -> str:
        return owner.split("/", 1)[0]

    def _record(self, command: Any, result: Any, now_ms: int) -> None:
        """Track grants and releases for `name-lease-unique`."""
        log = self.log
        if isinstance(command, ReleaseName):
            current = log.holders.get(command.name)
            if result.ok and current is not None and current.owner == command.owner:
                del log.holders[command.name]
            return
        if result.ok and result.lease is not None:
            log.claims_ok += 1
            lease = result.lease
            grant = LeaseGrant(lease.name, lease.owner, now_ms, lease.expires_at_ms, lease.epoch)
            current = log.holders.get(lease.name)
            if current is not None and current.owner != grant.owner and current.expires_ms > grant.granted_ms:
                log.double_leases.append((current, grant))
            log.holders[lease.name] = grant
            if len(log.grants) < GRANTS_MAX:
                log.grants.append(grant)
        else:
            log.claims_refused += 1

    def figures(self) -> dict[str, Any]:
        log = self.log
        return {
            "voters": list(self.voter_ids),
            "term": self.cluster.term,
            "elections": self.cluster.elections,
            "commit_index": self.cluster.commit_index,
            "writes_ok": log.writes_ok,
            "writes_refused": log.writes_refused,
            "last_ok_ms": log.last_ok_ms,
            "name_grants": len(log.grants),
            "name_refusals": log.claims_refused,
            "leaders_seen": len(log.leaders_seen),
        }

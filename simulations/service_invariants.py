"""Invariants over the service cores, checked by the world like the membership ones.

`CrdtConverged` (issue 6): once the last write is made, faults have stopped and membership has
converged, every live replica holds the same state of every key within `bound_ms`. It compares
replica root digests (the replicator's own 128-bit summary of all keys), and names differing keys
and values when it fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from agentnode.simulations.workloads import RegistryLog, StateLog

if TYPE_CHECKING:
    from agentnode.simulations.consensus_service import ConsensusService
    from agentnode.simulations.world import World

__sans_io__ = True

__all__ = [
    "ConsensusWritesResume", "CrdtConverged", "NameAdvertisedUnique", "NameLeaseUnique", "OneLeaderPerTerm",
    "RegistryConverged", "live_replicas",
]

DETAILS_MAX = 5
"""How many differing keys a violation message names."""
SETTLED_SCAN_MS = 1_000
"""Once converged for the current quiet period, replicas are re-compared this often (not every check)."""


def live_replicas(world: World) -> list[tuple[int, Any]]:
    """(node index, Replicator) of every healthy node running a state service."""
    out = []
    for node in world.nodes:
        if node.healthy and node.core is not None:
            replicator = getattr(node.core, "replicator", None)
            if replicator is not None:
                out.append((node.index, replicator))
    return out


class _ConvergenceClock:
    """What the convergence invariants share: a clock that starts at the last write, fault or membership
    convergence (`since`), a bound, and, once everything is equal, a re-scan only every SETTLED_SCAN_MS.
    Diverging again with no new write or fault restarts the clock: that is a bug too, and gets the bound."""

    def __init__(self, bound_ms: int) -> None:
        self.bound_ms = bound_ms
        self._since = -1
        self._settled = False
        self._next_scan_ms = 0

    def _stop_clock(self) -> None:
        self._since = -1

    def _scan_due(self, since: int, now_ms: int, final: bool) -> bool:
        if since != self._since:
            self._since, self._settled = since, False
        return not (self._settled and now_ms < self._next_scan_ms and not final)

    def _overdue(self, equal: bool, now_ms: int, on_settled: Callable[[int], None]) -> bool:
        """Record the outcome of a scan; True once unequal for longer than the bound since `self._since`."""
        if equal:
            if not self._settled:
                self._settled = True
                on_settled(self._since)
            self._next_scan_ms = now_ms + SETTLED_SCAN_MS
            return False
        if self._settled:
            self._settled = False
            self._since = now_ms
        return now_ms - self._since > self.bound_ms


class CrdtConverged(_ConvergenceClock):
    """All live replicas equal within `bound_ms` of the latest of: the last write, the last fault,
    membership convergence. Counting from membership convergence is deliberate: replication learns
    its peers from membership (member_up), so it cannot beat it; membership has its own bound."""

    name = "crdt-converged"

    def __init__(self, bound_ms: int, log: StateLog, *, meter: Callable[[], int] | None = None) -> None:
        if bound_ms <= 0:
            raise ValueError("bound_ms must be positive")
        super().__init__(bound_ms)
        self.log = log
        self.converged_log: list[tuple[int, int, int]] = []
        """(since, converged at, replicas) for every quiet period in which the replicas converged."""
        self.meter = meter
        self.bytes_log: list[int] = []
        """`meter()` (service bytes sent so far) at each entry of `converged_log`."""
        self.equal_after_ms: int | None = None
        """When set (a heal), the first check at or after it with all replicas equal is recorded in
        `first_equal_ms`, whether or not membership has converged yet (a figure, not a rule)."""
        self.first_equal_ms: int | None = None

    def watch_equal_after(self, at_ms: int) -> None:
        self.equal_after_ms = at_ms
        self.first_equal_ms = None

    def since_ms(self, world: World) -> int | None:
        """When the current convergence clock started, or None while faults or membership are unsettled."""
        if not world.quiet or world.converged_at_ms is None:
            return None
        return max(self.log.last_write_ms, world.quiet_since_ms, world.converged_at_ms)

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        if self.equal_after_ms is not None and self.first_equal_ms is None and now_ms >= self.equal_after_ms:
            if len({r.root_digest() for _, r in live_replicas(world)}) <= 1:
                self.first_equal_ms = now_ms
        since = self.since_ms(world)
        if since is None:
            self._stop_clock()
            return None
        if not self._scan_due(since, now_ms, final):
            return None
        replicas = live_replicas(world)
        digests = {r.root_digest() for _, r in replicas}

        def settled(since: int) -> None:
            self.converged_log.append((since, now_ms, len(replicas)))
            self.bytes_log.append(self.meter() if self.meter is not None else 0)

        if not self._overdue(len(digests) <= 1, now_ms, settled):
            return None
        since = self._since
        return (f"{len(replicas)} live replicas hold {len(digests)} different states {now_ms - since} ms after "
                f"the last write/fault/membership convergence at {since} ms (bound {self.bound_ms} ms): "
                + "; ".join(_differences(world, replicas)))


def _differences(world: World, replicas: list[tuple[int, Any]]) -> list[str]:
    keys: set[str] = set()
    for _, r in replicas:
        keys.update(r.store.keys())
        keys.update(r.store.tombstones())
    found = []
    for key in sorted(keys):
        values: dict[str, list[str]] = {}
        for index, r in replicas:
            values.setdefault(repr(_plain(r.value(key))), []).append(world.nodes[index].node_id)
        if len(values) > 1:
            parts = [f"{v} on {len(ids)} ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                     for v, ids in sorted(values.items())]
            found.append(f"key {key!r}: " + " vs ".join(parts))
            if len(found) >= DETAILS_MAX:
                break
    if not found:
        found.append("values agree but replica digests differ (causal metadata or tombstones)")
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, dict):
        return sorted(value.items(), key=repr)
    return value


class OneLeaderPerTerm:
    """At most one leader per term (Raft election safety, §5.2), as the voters report it: at every
    check each running voter's status is read, and a term seen with two different leaders fails."""

    name = "one-leader-per-term"

    def __init__(self, service: ConsensusService) -> None:
        self.service = service

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        service = self.service
        seen = service.log.leaders_seen
        for voter in service.voter_ids:
            node = world.nodes[service.voter_index(voter)]
            if not node.running:
                continue
            status = service.cluster.status(voter)
            if status.role != "leader":
                continue
            other = seen.setdefault(status.term, voter)
            if other != voter:
                return (f"term {status.term} has two leaders: {other} and {voter} (elections so far: "
                        f"{service.cluster.elections})")
        return None


class ConsensusWritesResume:
    """Once faults stop (and membership converged), a write from a node that reaches a majority of
    voters is never refused more than `bound_ms` later: the group re-forms and serves again."""

    name = "consensus-writes-resume"

    def __init__(self, bound_ms: int, service: ConsensusService) -> None:
        if bound_ms <= 0:
            raise ValueError("bound_ms must be positive")
        self.bound_ms = bound_ms
        self.service = service

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        if not world.quiet:
            return None
        deadline = world.quiet_since_ms + self.bound_ms
        refused = self.service.log.last_refused_by_majority_side_ms
        if refused > deadline:
            return (f"a write from a node that reaches a majority of voters was refused at {refused} ms, over "
                    f"{self.bound_ms} ms after the last fault at {world.quiet_since_ms} ms")
        return None


class NameLeaseUnique:
    """No agent name is leased to two owners at once (the critical state's lease table, through
    the consensus stand-in): a grant to a new owner before the previous owner's lease expired or
    was released fails."""

    name = "name-lease-unique"

    def __init__(self, service: ConsensusService) -> None:
        self.service = service

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        doubles = self.service.log.double_leases
        if not doubles:
            return None
        held, grant = doubles[0]
        return (f"name {grant.name!r} leased to {grant.owner} at {grant.granted_ms} ms while {held.owner} held it "
                f"until {held.expires_ms} ms (lease epochs {held.epoch}, {grant.epoch}); {len(doubles)} such grant(s)")


class RegistryConverged(_ConvergenceClock):
    """Every live node's registry shows exactly the agents hosted on running nodes, within `bound_ms`
    of the latest of: the last registration change, the last fault, membership convergence."""

    name = "registry-converged"

    def __init__(self, bound_ms: int, log: RegistryLog) -> None:
        if bound_ms <= 0:
            raise ValueError("bound_ms must be positive")
        super().__init__(bound_ms)
        self.log = log
        self.converged_log: list[tuple[int, int]] = []
        """(since, converged at) per quiet period in which every view matched."""

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        if not world.quiet or world.converged_at_ms is None:
            self._stop_clock()
            return None
        since = max(self.log.last_op_ms, world.quiet_since_ms, world.converged_at_ms)
        if not self._scan_due(since, now_ms, final):
            return None
        registries = [(n, n.core.registry) for n in world.nodes  # type: ignore[union-attr]
                      if n.healthy and getattr(n.core, "registry", None) is not None]
        truth = sorted((r.agent_id, n.node_id) for n, reg in registries for r in reg.local_agents())
        wrong = []
        for node, reg in registries:
            view = sorted((e.record.agent_id, e.record.node_id) for e in reg.find(healthy_only=False))
            if view != truth:
                missing = sorted(set(truth) - set(view))
                extra = sorted(set(view) - set(truth))
                wrong.append(f"{node.node_id} misses {missing[:3]} and shows {extra[:3]}")
        if not self._overdue(not wrong, now_ms, lambda since: self.converged_log.append((since, now_ms))):
            return None
        since = self._since
        return (f"{len(wrong)} of {len(registries)} registries differ from the {len(truth)} agents hosted on running "
                f"nodes {now_ms - since} ms after {since} ms (bound {self.bound_ms} ms): " + "; ".join(wrong[:DETAILS_MAX]))


class NameAdvertisedUnique:
    """No unique agent name is held as CONFIRMED, and still valid by its node's own clock, by two
    owners at one instant: the `NameLeases` core's client-side lease (renew at TTL/3, give up
    SKEW_FRACTION of the TTL) must end before the group can grant the name to someone else."""

    name = "name-advertised-unique"

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        holders: dict[str, list[str]] = {}
        for node in world.nodes:
            names = getattr(node.core, "names", None) if node.running else None
            if names is None:
                continue
            local = node.local_ms(now_ms)
            for st in names.states():
                if st.state == "confirmed" and st.valid_until_ms is not None and local < st.valid_until_ms:
                    holders.setdefault(st.name, []).append(f"{st.owner} (epoch {st.epoch}, valid {st.valid_until_ms - local} ms more)")
        for name in sorted(holders):
            if len(holders[name]) > 1:
                return f"unique name {name!r} is confirmed by {len(holders[name])} owners at once: " + "; ".join(holders[name])
        return None

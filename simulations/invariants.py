"""Invariants checked while the world runs; the first one to fail stops the run with its seed.

Each invariant is an object with a `name` and `check(world, now_ms, final) -> str | None`
returning a message when violated. The list is open: CRDT convergence, at most one Raft leader
per term and agent-name uniqueness plug in the same way, reading their cores through
`world.nodes[i].core` or collecting what they need through `world.event_hooks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from agentnode.simulations.views import STATE_NAMES

if TYPE_CHECKING:
    from agentnode.simulations.world import World

__sans_io__ = True

__all__ = ["Invariant", "MembershipConverges", "NoLingeringFalseDeath", "default_invariants"]

DETAILS_MAX = 5
"""How many offending nodes a violation message names."""


class Invariant(Protocol):
    name: str

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        """None if the invariant holds at `now_ms`, else a message saying who broke it and how."""
        ...


class MembershipConverges:
    """Once faults stop, every running node sees every running node alive and no stopped node
    alive or suspect, within `bound_ms`."""

    name = "membership-converges"

    def __init__(self, bound_ms: int) -> None:
        if bound_ms <= 0:
            raise ValueError("bound_ms must be positive")
        self.bound_ms = bound_ms

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        if not world.quiet or world.converged_at_ms is not None or now_ms - world.quiet_since_ms <= self.bound_ms:
            return None
        return (f"membership has not converged {self.bound_ms} ms after the last disruption at "
                f"{world.quiet_since_ms} ms: " + "; ".join(_disagreements(world)))


class NoLingeringFalseDeath:
    """No healthy node stays suspect, dead or left in a healthy, reachable peer's view for more
    than `bound_ms`, counted from the later of the accusation, either node's last (re)start or
    resume, and the last partition heal."""

    name = "no-lingering-false-death"

    def __init__(self, bound_ms: int, *, scan_interval_ms: int = 1_000) -> None:
        if bound_ms <= 0:
            raise ValueError("bound_ms must be positive")
        self.bound_ms = bound_ms
        self.scan_interval_ms = scan_interval_ms
        self._next_scan_ms = 0

    def check(self, world: World, now_ms: int, final: bool) -> str | None:
        if now_ms < self._next_scan_ms and not final:
            return None
        self._next_scan_ms = now_ms + self.scan_interval_ms
        cutoff = now_ms - self.bound_ms
        if cutoff < world.last_heal_ms:
            return None
        nodes = world.nodes
        cap = world.views.capacity
        net = world.network
        found = []
        for key, since in world.views.not_alive_since.items():
            if since > cutoff:
                continue
            observer, subject = divmod(key, cap)
            obs, subj = nodes[observer], nodes[subject]
            if not (obs.healthy and subj.healthy) or obs.up_since_ms > cutoff or subj.up_since_ms > cutoff:
                continue
            if subj.left or net.blocked(observer, subject) or net.blocked(subject, observer):
                continue
            state = STATE_NAMES.get(world.views.state(observer, subject), "?")
            found.append((since, f"{obs.node_id} has seen healthy {subj.node_id} as {state} since {since} ms"))
        if not found:
            return None
        found.sort()
        return (f"{len(found)} healthy node(s) wrongly not alive for over {self.bound_ms} ms: "
                + "; ".join(text for _, text in found[:DETAILS_MAX]))


def default_invariants(*, convergence_bound_ms: int, false_death_bound_ms: int) -> list[Invariant]:
    """The membership invariants every scenario runs."""
    return [MembershipConverges(convergence_bound_ms), NoLingeringFalseDeath(false_death_bound_ms)]


def _disagreements(world: World) -> list[str]:
    alive = world.views.alive_seen_by
    suspect = world.views.suspect_seen_by
    want = world.running_count - 1
    out = []
    for node in world.nodes:
        i = node.index
        if node.running and alive[i] != want:
            out.append(f"{node.node_id} (running) seen alive by {alive[i]}/{want}")
        elif not node.running and (alive[i] or suspect[i]):
            out.append(f"{node.node_id} (stopped) still seen alive by {alive[i]}, suspect by {suspect[i]}")
        if len(out) >= DETAILS_MAX:
            break
    return out

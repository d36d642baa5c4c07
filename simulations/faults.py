"""The fault catalogue: what the world can do to nodes and links, and plans that schedule it.

Faults are frozen values; a plan is a time-ordered tuple of `(at_ms, fault)`. Generators that
build plans (churn, mass restart, swizzle-clog) draw only from the `random.Random` they are
given, so the seed decides the schedule too (TigerBeetle `options_swarm`, FoundationDB
swizzle-clogging).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

__sans_io__ = True

__all__ = [
    "Clog", "Crash", "Drift", "Duplicate", "Fault", "FaultPlan", "Heal", "Leave", "Loss", "NodeLoss",
    "Partition", "Pause", "Reorder", "Restart", "Start", "Unclog",
    "churn", "mass_restart", "swizzle_clog",
]


@dataclass(frozen=True, slots=True)
class Start:
    """Start a node for the first time: it joins through the bootstrap list."""

    node: int


@dataclass(frozen=True, slots=True)
class Crash:
    """Stop a node without warning; its in-memory state is lost."""

    node: int
    kind: str = "host"
    """"host": the machine is gone, frames vanish silently; "process": the port refuses connections."""

    def __post_init__(self) -> None:
        if self.kind not in ("host", "process"):
            raise ValueError(f"crash kind {self.kind!r} is not 'host' or 'process'")


@dataclass(frozen=True, slots=True)
class Restart:
    """Start a crashed or departed node again."""

    node: int
    keep_data: bool = True
    """With its data directory: the persisted incarnation and peer cache survive. Without: incarnation 0."""


@dataclass(frozen=True, slots=True)
class Leave:
    """Graceful leave: the core announces it, then the process exits after the world's leave grace."""

    node: int


@dataclass(frozen=True, slots=True)
class Pause:
    """Freeze a node (SIGSTOP, a long GC pause): no timers, frames queue in its socket buffers."""

    node: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Partition:
    """Split the network into groups; with `one_way`, only lower groups lose frames to higher ones."""

    groups: tuple[tuple[int, ...], ...]
    one_way: bool = False


@dataclass(frozen=True, slots=True)
class Heal:
    """Remove every partition."""


@dataclass(frozen=True, slots=True)
class Loss:
    """Uniform frame loss on every link from now on (0 turns it off)."""

    probability: float


@dataclass(frozen=True, slots=True)
class NodeLoss:
    """Loss on frames to and from one node (a bad NIC, a congested rack switch)."""

    node: int
    inbound: float = 0.0
    outbound: float = 0.0


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Deliver a second copy of a frame with this probability."""

    probability: float


@dataclass(frozen=True, slots=True)
class Reorder:
    """Hold a frame back past later frames on its link with this probability."""

    probability: float


@dataclass(frozen=True, slots=True)
class Clog:
    """Throttle a node's bandwidth; frames queue behind each other and tail-drop."""

    node: int
    egress_bytes_per_s: int | None = None
    ingress_bytes_per_s: int | None = None


@dataclass(frozen=True, slots=True)
class Unclog:
    node: int


@dataclass(frozen=True, slots=True)
class Drift:
    """Change a node's clock: `ppm` is its rate error from now on, `step_ms` a forward jump now."""

    node: int
    ppm: int = 0
    step_ms: int = 0

    def __post_init__(self) -> None:
        if not -500_000 < self.ppm < 500_000:
            raise ValueError("clock drift ppm must be within +-500000")
        if self.step_ms < 0:
            raise ValueError("a monotonic clock only steps forward: step_ms must be >= 0")


Fault = Union[Start, Crash, Restart, Leave, Pause, Partition, Heal, Loss, NodeLoss, Duplicate, Reorder, Clog, Unclog, Drift]
FaultPlan = tuple[tuple[int, Fault], ...]

DISRUPTIVE = (Start, Crash, Restart, Leave, Pause, Partition, Heal, Clog, Unclog, Drift)
"""Faults after which membership is expected to re-converge; loss, duplication and reordering are
background noise the protocol must live with, not events it recovers from."""


def churn(rng: random.Random, nodes: list[int], start_ms: int, end_ms: int, *, interval_ms: int,
          down_fraction_max: float = 0.1, down_ms_min: int = 5_000, down_ms_max: int = 20_000) -> list[tuple[int, Fault]]:
    """Every `interval_ms` one node goes down (crash or graceful leave) and comes back later,
    with or without its data directory; at most `down_fraction_max` of `nodes` are down at once,
    and everyone is back by `end_ms`."""
    if interval_ms <= 0:
        raise ValueError("churn interval_ms must be positive")
    plan: list[tuple[int, Fault]] = []
    back_at: dict[int, int] = {}
    down_max = max(1, int(len(nodes) * down_fraction_max))
    t = start_ms
    while t + down_ms_min < end_ms:
        for node in [n for n, at in back_at.items() if at <= t]:
            del back_at[node]
        if len(back_at) < down_max:
            candidates = [n for n in nodes if n not in back_at]
            node = rng.choice(candidates)
            plan.append((t, Leave(node) if rng.random() < 0.3 else Crash(node, rng.choice(("host", "process")))))
            up = min(end_ms, t + rng.randint(down_ms_min, down_ms_max))
            plan.append((up, Restart(node, keep_data=rng.random() < 0.5)))
            back_at[node] = up
        t += interval_ms
    return sorted(plan, key=lambda entry: entry[0])


def mass_restart(rng: random.Random, nodes: list[int], at_ms: int, *, fraction: float = 0.5,
                 down_ms_max: int = 10_000, keep_data_fraction: float = 0.5) -> list[tuple[int, Fault]]:
    """Crash `fraction` of `nodes` at once (a rack losing power) and bring them back within
    `down_ms_max`, some with their data directory and some without."""
    count = max(1, int(len(nodes) * fraction))
    victims = sorted(rng.sample(nodes, count))
    plan: list[tuple[int, Fault]] = [(at_ms, Crash(n, "host")) for n in victims]
    for n in victims:
        plan.append((at_ms + rng.randint(1_000, max(1_000, down_ms_max)), Restart(n, keep_data=rng.random() < keep_data_fraction)))
    return sorted(plan, key=lambda entry: entry[0])


def swizzle_clog(rng: random.Random, nodes: list[int], start_ms: int, *, count: int, step_ms: int,
                 bytes_per_s: int) -> list[tuple[int, Fault]]:
    """FoundationDB swizzle-clog: clog a random subset one by one, then unclog in random order."""
    chosen = rng.sample(nodes, min(count, len(nodes)))
    plan: list[tuple[int, Fault]] = []
    t = start_ms
    for n in chosen:
        plan.append((t, Clog(n, egress_bytes_per_s=bytes_per_s, ingress_bytes_per_s=bytes_per_s)))
        t += step_ms
    for n in rng.sample(chosen, len(chosen)):
        plan.append((t, Unclog(n)))
        t += step_ms
    return plan

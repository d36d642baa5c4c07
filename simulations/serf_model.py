"""The Serf convergence model, to plot our measured reach curve against.

Serf's "Convergence Simulator" page (hashicorp/serf history,
website/source/assets/javascripts/lib/_simulator.js; see docs/simulation.md) is a logistic curve:
    fraction(round) = 1 / (1 + (N+1) * exp(-(fanout/2) * (1-loss) * (1-failed) * round))
with one round per gossip interval (memberlist LAN: 200 ms, fanout 3). `logistic_reach` evaluates
it. `push_gossip_reach` simulates the process it models, seeded: every informed node gossips to
`fanout` random nodes each interval (with its own timer phase) until it has sent the update
`retransmits` times (memberlist: RetransmitMult 4 x ceil(log10(N+1))).
"""

from __future__ import annotations

import math
import random

__sans_io__ = True

__all__ = ["SERF_FANOUT", "SERF_GOSSIP_INTERVAL_MS", "logistic_reach", "push_gossip_reach", "retransmit_limit"]

SERF_FANOUT = 3
"""memberlist DefaultLANConfig.GossipNodes."""
SERF_GOSSIP_INTERVAL_MS = 200
"""memberlist DefaultLANConfig.GossipInterval."""
RETRANSMIT_MULT = 4
"""memberlist DefaultLANConfig.RetransmitMult."""
ROUNDS_MAX = 1_000
"""Bound on simulated gossip rounds."""


def retransmit_limit(n: int, mult: int = RETRANSMIT_MULT) -> int:
    """memberlist util.go retransmitLimit: mult * ceil(log10(n + 1))."""
    return mult * max(1, math.ceil(math.log10(n + 1)))


def logistic_reach(n: int, t_ms: int, *, fanout: int = SERF_FANOUT, interval_ms: int = SERF_GOSSIP_INTERVAL_MS,
                   loss: float = 0.0, failed: float = 0.0) -> float:
    """Fraction of `n` nodes the Serf model says have the update `t_ms` after it was sent."""
    rounds = t_ms / interval_ms
    return 1.0 / (1.0 + (n + 1) * math.exp(-(fanout / 2.0) * (1.0 - loss) * (1.0 - failed) * rounds))


def push_gossip_reach(n: int, rng: random.Random, *, fanout: int = SERF_FANOUT,
                      interval_ms: int = SERF_GOSSIP_INTERVAL_MS, retransmits: int | None = None,
                      loss: float = 0.0, latency_ms: int = 1) -> list[tuple[int, float]]:
    """(ms since the origin learnt it, fraction of nodes informed), one point per newly informed node."""
    if n < 1:
        raise ValueError("n must be at least 1")
    limit = retransmit_limit(n) if retransmits is None else retransmits
    phase = [rng.randrange(interval_ms) for _ in range(n)]
    informed_at: dict[int, int] = {0: 0}
    sent: dict[int, int] = {0: 0}
    curve = [(0, 1.0 / n)]
    t = 0
    for _ in range(ROUNDS_MAX):
        if len(sent) == 0 or len(informed_at) == n:
            break
        # every node with budget left fires once in [t, t + interval), at its own phase
        firing = sorted((t + phase[node], node) for node in sent)
        fresh: list[tuple[int, int]] = []
        for at, node in firing:
            if informed_at[node] > at:
                continue
            for _ in range(fanout):
                if sent[node] >= limit:
                    break
                sent[node] += 1
                peer = rng.randrange(n - 1) if n > 1 else 0
                peer = peer + 1 if peer >= node else peer
                if loss and rng.random() < loss:
                    continue
                fresh.append((at + latency_ms, peer))
        for at, peer in sorted(fresh):
            if peer not in informed_at:
                informed_at[peer] = at
                sent[peer] = 0
        sent = {node: count for node, count in sent.items() if count < limit}
        t += interval_ms
    times = sorted(informed_at.values())
    return [(at, (i + 1) / n) for i, at in enumerate(times)] if len(times) > 1 else curve

"""Scale checks of the membership goals with the hand router of test_core.py (opt-in: --runslow).

- crash detection: every node of a 1000-node LAN cluster marks a crashed node dead within 5 s;
- accuracy: no healthy node is declared dead over 10 simulated minutes at 10 % frame loss.
Figures are printed (run with -s); docs/protocols/membership.md quotes them.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from agentnode import events as ev
from agentnode.messages import KIND_ALIVE, PushPullReply, Update, encode
from agentnode.profiles import LAN

_spec = importlib.util.spec_from_file_location("core_router", Path(__file__).with_name("test_core.py"))
assert _spec is not None and _spec.loader is not None
_router = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_router)
Cluster = _router.Cluster


def formed(n: int, seed: int):  # type: ignore[no-untyped-def]
    """A LAN cluster of n nodes that all know each other (skips the join ramp)."""
    c = Cluster(n, profile=LAN, seed=seed, join=False)
    states = tuple(Update(KIND_ALIVE, k, 0, core.address, "", {}) for k, core in c.cores.items())
    frame = encode(PushPullReply(states), "test")
    for k, core in c.cores.items():
        core.receive("n0000" if k != "n0000" else "n0001", frame, 0)
        c.pump(k)
    c.run(5_000)
    assert all(core.live_count() == n - 1 for core in c.cores.values())
    return c


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_1000_nodes_see_a_crash_dead_within_5_s(seed: int) -> None:
    c = formed(1000, seed)
    start, wall = len(c.events), time.time()
    c.crash("n0500")
    t0 = c.now
    c.run(8_000)
    dead = [t - t0 for t, _, e in c.events[start:] if isinstance(e, ev.MemberFailed) and e.node_id == "n0500"]
    print(f"seed {seed}: dead at {len(dead)} observers, first {min(dead)} ms, last {max(dead)} ms, "
          f"{time.time() - wall:.1f} wall s for 8 simulated s")
    assert len(dead) == 999
    assert max(dead) < 5_000


@pytest.mark.slow
@pytest.mark.parametrize(("n", "minutes"), [(10, 10), (30, 10), (100, 10), (1000, 10)])
def test_no_false_deaths_at_10_percent_loss(n: int, minutes: int) -> None:
    c = formed(n, 1)
    c.loss = 0.1
    start = len(c.events)
    c.run(minutes * 60_000)
    false_dead = [e for _, _, e in c.events[start:] if isinstance(e, ev.MemberFailed)]
    refuted = sum(core.counters["refutations"] for core in c.cores.values())
    print(f"{n} nodes, {minutes} min at 10% loss: {len(false_dead)} false deaths, {refuted} refutations")
    assert false_dead == []
    assert c.all_alive()

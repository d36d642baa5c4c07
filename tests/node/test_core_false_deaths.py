"""Regression tests for the two false-death mechanisms of issue 4 (decisions 0043, 0044), each
reproduced on hand-built NodeCores with a tiny router whose drop rule recreates the losses of the
failing run.

1. `agentnode simulate --nodes 100 --seed 1 --scenario lossy --duration-s 600`: an observer heard a
   suspicion, every copy of the suspect's refutation to it was lost, yet its own probe of the suspect
   was answered through a ping-req helper; it still declared the suspect dead.
2. `agentnode simulate --nodes 30 --seed 5|6|7|14 --scenario swarm --duration-s 60`: a node cut off by
   a partition declared its stale suspicions dead right after the heal, and a second copy of that
   verdict killed the suspect at nodes that had just turned the first copy into a suspicion.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from agentnode import events as ev
from agentnode.core import NodeCore
from agentnode.membership import suspicion_timeouts_ms
from agentnode.messages import KIND_ALIVE, KIND_DEAD, KIND_SUSPECT, Gossip, Update, decode, encode
from agentnode.profiles import LAN

CLUSTER = "test"
LATENCY_MS = 1

Drop = Callable[[str, str, object], bool]
"""(sender, receiver, decoded message) -> True to lose the frame."""


class Net:
    """N cores, fixed latency, a drop rule; timers fire at `get_timer()`."""

    def __init__(self, n: int, *, seed: int = 1) -> None:
        self.now = 0
        self.cores: dict[str, NodeCore] = {}
        self.by_address: dict[str, str] = {}
        self.events: list[tuple[int, str, ev.NodeEvent]] = []
        self.drop: Drop = lambda src, dst, msg: False
        self._heap: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._timer_at: dict[str, int | None] = {}
        rng = random.Random(seed)
        for i in range(n):
            node_id = f"n{i:02d}"
            address = f"10.0.0.{i}:7946"
            core = NodeCore(node_id, address, cluster=CLUSTER, profile=LAN, rng=random.Random(rng.random()))
            self.cores[node_id] = core
            self.by_address[address] = node_id
        for i, (node_id, core) in enumerate(self.cores.items()):
            core.start(0)
            if i:
                core.add_seeds(["10.0.0.0:7946"], 0)
            self.pump(node_id)

    def pump(self, node_id: str) -> None:
        core = self.cores[node_id]
        for out in core.messages_to_send():
            dst = self.by_address.get(out.address)
            if dst is None:
                continue
            if self.drop(node_id, dst, decode(out.frame, CLUSTER)):
                continue
            self._push(self.now + LATENCY_MS, 1, (node_id, dst, out.frame))
        while (event := core.next_event()) is not None:
            self.events.append((self.now, node_id, event))
        when = core.get_timer()
        if when is not None and self._timer_at.get(node_id) != when:
            self._timer_at[node_id] = when
            self._push(max(when, self.now), 0, (node_id, when))

    def _push(self, at: int, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def run_until(self, until_ms: int) -> None:
        while self._heap and self._heap[0][0] <= until_ms:
            at, _, kind, payload = heapq.heappop(self._heap)
            self.now = at
            if kind == 0:
                node_id, when = payload  # type: ignore[misc]
                if self._timer_at.get(node_id) != when:
                    continue
                self._timer_at[node_id] = None
                self.cores[node_id].handle_timer(at)
                self.pump(node_id)
            else:
                src, dst, frame = payload  # type: ignore[misc]
                self.cores[dst].receive(src, frame, at)
                self.pump(dst)
        self.now = until_ms

    def state(self, observer: str, subject: str) -> str | None:
        member = self.cores[observer].member(subject)
        return None if member is None else member.state

    def failed(self, about: str, since_ms: int = 0) -> list[tuple[int, str]]:
        return [(t, o) for t, o, e in self.events if isinstance(e, ev.MemberFailed) and e.node_id == about and t >= since_ms]


def _carries(msg: object, kind: int, about: str, min_incarnation: int = 0) -> bool:
    updates = getattr(msg, "updates", None) or getattr(msg, "states", None) or ()
    return any(u.kind == kind and u.node_id == about and u.incarnation >= min_incarnation for u in updates)


def test_an_answered_probe_clears_a_suspicion_whose_refutations_were_all_lost() -> None:
    """Case 1 (lossy seed 1): the suspect's acks to the observer and every copy of its refutation to the
    observer are lost, but helpers' relayed acks get through. SWIM §4.2: the answered probe un-marks
    the suspicion, so the observer never declares the suspect dead."""
    net = Net(8)
    net.run_until(5_000)
    observer, suspect, accuser = "n05", "n06", "n01"
    assert net.state(observer, suspect) == "alive"

    def drop(src: str, dst: str, msg: object) -> bool:
        if dst != observer:
            return False
        return src == suspect or _carries(msg, KIND_ALIVE, suspect, 1)

    net.drop = drop
    start = net.now
    rumour = encode(Gossip((Update(KIND_SUSPECT, suspect, 0, "10.0.0.6:7946", accuser, None),)), CLUSTER)
    net.cores[observer].receive(accuser, rumour, start)
    net.pump(observer)
    assert net.state(observer, suspect) == "suspect"
    net.run_until(start + 15_000)  # several suspicion timeouts (max 2.1 s at 8 nodes)
    assert net.failed(suspect) == []
    assert net.state(observer, suspect) == "alive"
    assert net.cores[observer].counters["suspicions_cleared"] >= 1
    assert net.cores[suspect].incarnation >= 1  # it refuted (to the others; the observer missed it)


def test_a_crashed_suspect_is_still_declared_dead() -> None:
    """The un-marking needs an ack: a crashed node sends none, so detection is unchanged."""
    net = Net(8)
    net.run_until(5_000)
    victim = "n04"
    net.drop = lambda src, dst, msg: victim in (src, dst)
    crash = net.now
    net.run_until(crash + 6_000)
    observers = [k for k in net.cores if k != victim]
    assert {net.state(o, victim) for o in observers} == {"dead"}
    assert max(t for t, _ in net.failed(victim)) - crash < 5_000
    # Confirmed by others, a suspicion is never held back for a re-check, whatever our health.
    assert sum(net.cores[o].counters["suspicion_rechecks"] for o in observers) == 0


def test_a_second_copy_of_a_stale_verdict_does_not_kill() -> None:
    """Case 2 cascade (swarm seeds 5-7): a third party's dead(i) about a member held alive becomes a
    suspicion (decision 0041); another copy of the same verdict must not turn it into a death before
    the suspect could refute. A verdict from anyone else, or after our own failed probe, still does."""
    net = Net(6)
    net.run_until(5_000)
    observer, subject, cut_off = "n02", "n03", "n05"
    # The observer has not heard from the subject for longer than the minimum suspicion timeout (a
    # verdict about a member heard from since is dropped outright: the next test).
    net.drop = lambda src, dst, msg: (src, dst) == (subject, observer)
    net.run_until(net.now + 2 * LAN.suspicion_min_ms_per_log10_nodes)
    net.drop = lambda src, dst, msg: False
    assert net.state(observer, subject) == "alive"
    verdict = encode(Gossip((Update(KIND_DEAD, subject, 0, "10.0.0.3:7946", cut_off, None),)), CLUSTER)
    core = net.cores[observer]
    core.receive(cut_off, verdict, net.now)
    assert net.state(observer, subject) == "suspect"
    core.receive("n04", verdict, net.now + 100)  # the same verdict, relayed by someone else
    assert net.state(observer, subject) == "suspect"
    assert core.counters["stale_verdicts"] == 1
    net.pump(observer)
    net.run_until(net.now + 10_000)
    assert net.failed(subject) == []
    assert net.state(observer, subject) == "alive"
    # A verdict from a second, independent node is evidence: it is accepted as before (once the
    # subject has been silent towards us for long enough, as above).
    net.drop = lambda src, dst, msg: (src, dst) == (subject, observer)
    net.run_until(net.now + 2 * LAN.suspicion_min_ms_per_log10_nodes)
    net.cores[observer].receive(cut_off, verdict, net.now)
    other = encode(Gossip((Update(KIND_DEAD, subject, net.cores[subject].incarnation, "10.0.0.3:7946", "n01", None),)),
                   CLUSTER)
    net.cores[observer].receive("n01", other, net.now)
    assert net.state(observer, subject) in ("suspect", "dead")


def test_a_verdict_about_a_member_heard_from_since_is_dropped_and_the_member_told() -> None:
    """A true dead verdict follows at least the minimum suspicion timeout of silence from its subject.
    One about a member that spoke to us within that time comes from the far side of a healed
    partition (partition-heal seed 1 after decision 0059's join change): it must not even become a
    suspicion here, and the member hears it and refutes, which clears the verdict everywhere (0045)."""
    net = Net(6)
    net.run_until(5_000)
    observer, subject, cut_off = "n02", "n03", "n05"
    net.cores[observer].receive(subject, encode(Gossip(()), CLUSTER), net.now)  # it just spoke to us
    verdict = encode(Gossip((Update(KIND_DEAD, subject, 0, "10.0.0.3:7946", cut_off, None),)), CLUSTER)
    core = net.cores[observer]
    core.receive(cut_off, verdict, net.now + 10)
    core.receive("n04", verdict, net.now + 20)
    assert net.state(observer, subject) == "alive"
    assert core.counters["stale_verdicts"] == 2
    net.pump(observer)  # the notice to the subject
    net.run_until(net.now + 2_000)
    assert net.cores[subject].incarnation == 1, "the subject did not refute the verdict it was told of"
    assert net.failed(subject) == []
    # Once the subject has been silent for the minimum suspicion timeout, a verdict counts again.
    net.drop = lambda src, dst, msg: src == subject
    net.run_until(net.now + 2 * LAN.suspicion_min_ms_per_log10_nodes)
    fresh = encode(Gossip((Update(KIND_DEAD, subject, 1, "10.0.0.3:7946", cut_off, None),)), CLUSTER)
    core.receive(cut_off, fresh, net.now)
    assert net.state(observer, subject) in ("suspect", "dead")


def test_a_node_cut_off_rechecks_its_stale_suspicions_after_the_heal() -> None:
    """Case 2 source (swarm seeds 5, 6, 14): a node cut off from everyone suspects the others with no
    confirmations and poor local health. The partition heals just before its timers run out: it must
    probe again (and hear the suspects answer) instead of declaring them dead."""
    net = Net(6)
    net.run_until(5_000)
    island = "n05"
    cut = {"on": True}
    net.drop = lambda src, dst, msg: cut["on"] and island in (src, dst)
    start = net.now
    net.run_until(start + 1_500)
    suspected = [(t, e.node_id) for t, o, e in net.events if o == island and t >= start and isinstance(e, ev.MemberSuspected)]
    assert suspected, "the island suspects its peers"
    first_at, first = suspected[0]
    assert net.cores[island].health_score > 0
    _, max_ms = suspicion_timeouts_ms(LAN.suspicion_min_ms_per_log10_nodes, LAN.suspicion_max_timeout_mult, 6)
    heal_at = first_at + max_ms - 5  # heal 5 ms before its first timer would have run out
    net.run_until(heal_at)
    assert net.state(island, first) == "suspect"
    cut["on"] = False
    net.run_until(heal_at + 30_000)
    assert net.failed(first, since_ms=heal_at) == [], "declared a healthy node dead right after the heal"
    assert net.cores[island].counters["suspicion_rechecks"] >= 1
    assert all(net.state(o, s) == "alive" for o in net.cores for s in net.cores if o != s)


"""NodeCore driven by hand: integer fake time, a tiny message router, no asyncio, no sockets.

`Cluster` is the router: it drains each core's outbox into a delivery heap (fixed latency, optional
loss, partitions, crashes) and fires timers at `get_timer()`. A lost frame is one never delivered.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

import pytest

from agentnode import events as ev
from agentnode.core import NodeCore, Outgoing
from agentnode.profiles import LAN, LOCAL, MembershipProfile

SMALL = replace(LAN, name="small-test")


class Cluster:
    """N cores on a simulated network with integer milliseconds."""

    def __init__(self, n: int, *, profile: MembershipProfile = SMALL, seed: int = 1, latency_ms: int = 1,
                 loss: float = 0.0, start: bool = True, join: bool = True) -> None:
        self.now = 0
        self.profile = profile
        self.latency_ms = latency_ms
        self.loss = loss
        self.rng = random.Random(seed)
        self.cores: dict[str, NodeCore] = {}
        self.by_address: dict[str, str] = {}
        self.events: list[tuple[int, str, ev.NodeEvent]] = []
        self.group: dict[str, int] = {}
        self.down: set[str] = set()
        self.unreachable_reports = True
        self._heap: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._timer_at: dict[str, int | None] = {}
        self.sent = 0
        for i in range(n):
            self.add(f"n{i:04d}", start=start, seeds=["10.0.0.0:7946"] if (join and i > 0) else [])

    def add(self, node_id: str, *, start: bool = True, seeds: list[str] | None = None, incarnation: int = 0,
            address: str | None = None) -> NodeCore:
        address = address or f"10.0.{len(self.cores) // 250}.{len(self.cores) % 250}:7946"
        core = NodeCore(node_id, address, cluster="test", profile=self.profile,
                        rng=random.Random(f"{node_id}-{self.rng.random()}"), incarnation=incarnation)
        self.cores[node_id] = core
        self.by_address[address] = node_id
        self.group[node_id] = 0
        if start:
            core.start(self.now)
            if seeds:
                core.add_seeds(seeds, self.now)
            self.pump(node_id)
        return core

    def pump(self, node_id: str) -> None:
        core = self.cores[node_id]
        for out in core.messages_to_send():
            self._route(node_id, out)
        while (event := core.next_event()) is not None:
            self.events.append((self.now, node_id, event))
        when = core.get_timer()
        if when is not None and self._timer_at.get(node_id) != when:
            self._timer_at[node_id] = when
            self._push(max(when, self.now), 0, (node_id, when))

    def _push(self, at: int, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def _route(self, src: str, out: Outgoing) -> None:
        self.sent += 1
        dst = self.by_address.get(out.address)
        if dst is None or dst in self.down or (out.peer_id is not None and out.peer_id != dst):
            if self.unreachable_reports and dst not in self.down:
                self._push(self.now + self.latency_ms, 2, (src, out.address, out.peer_id))
            return
        if self.group[src] != self.group[dst]:
            return
        if self.loss and self.rng.random() < self.loss:
            return
        self._push(self.now + self.latency_ms, 1, (src, dst, out.frame))

    def run(self, duration_ms: int) -> None:
        self.run_until(self.now + duration_ms)

    def run_until(self, until_ms: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until_ms:
            at, _, kind, payload = heapq.heappop(heap)
            self.now = at
            if kind == 0:
                node_id, when = payload  # type: ignore[misc]
                if node_id in self.down or self._timer_at.get(node_id) != when:
                    continue
                self._timer_at[node_id] = None
                self.cores[node_id].handle_timer(at)
                self.pump(node_id)
            elif kind == 1:
                src, dst, frame = payload  # type: ignore[misc]
                if dst in self.down:
                    continue
                self.cores[dst].receive(src, frame, at)
                self.pump(dst)
            else:
                src, address, peer_id = payload  # type: ignore[misc]
                if src in self.down:
                    continue
                self.cores[src].peer_unreachable(address, peer_id, at)
                self.pump(src)
        self.now = until_ms

    def crash(self, node_id: str) -> None:
        self.down.add(node_id)

    def restart(self, node_id: str, seeds: list[str] | None = None) -> NodeCore:
        old = self.cores[node_id]
        self.down.discard(node_id)
        self._timer_at[node_id] = None
        core = NodeCore(node_id, old.address, cluster="test", profile=self.profile,
                        rng=random.Random(f"{node_id}-restart-{self.now}"), incarnation=old.incarnation + 1)
        self.cores[node_id] = core
        core.start(self.now)
        if seeds:
            core.add_seeds(seeds, self.now)
        self.pump(node_id)
        return core

    def state_of(self, observer: str, node_id: str) -> str | None:
        member = self.cores[observer].member(node_id)
        return None if member is None else member.state

    def views(self, node_id: str, among: list[str] | None = None) -> set[str | None]:
        ids = among if among is not None else [k for k in self.cores if k not in self.down and k != node_id]
        return {self.state_of(o, node_id) for o in ids}

    def all_alive(self, ids: list[str] | None = None) -> bool:
        ids = ids if ids is not None else [k for k in self.cores if k not in self.down]
        return all(self.state_of(o, t) == "alive" for o in ids for t in ids)

    def address(self, node_id: str) -> str:
        return self.cores[node_id].address

    def events_of(self, kind: type, about: str | None = None) -> list[tuple[int, str, ev.NodeEvent]]:
        return [e for e in self.events if isinstance(e[2], kind) and (about is None or getattr(e[2], "node_id", None) == about)]


def test_join_via_seed_learns_full_list() -> None:
    c = Cluster(5)
    c.run(5_000)
    assert c.all_alive()
    for core in c.cores.values():
        assert len(core.members()) == 5
    joined = c.events_of(ev.MemberJoined)
    assert {(o, e.node_id) for _, o, e in joined} >= {("n0001", "n0000"), ("n0000", "n0004")}


def test_new_node_gets_full_list_by_push_pull_from_one_seed() -> None:
    c = Cluster(6)
    c.run(5_000)
    late = c.add("late", seeds=[c.address("n0003")])
    c.run(1 + 2 * c.latency_ms)  # one push-pull round trip
    assert {m.node_id for m in late.members()} == set(c.cores)
    assert late.counters["joins_sent"] >= 1


def test_probe_and_ack_keep_everyone_alive_without_suspicion() -> None:
    c = Cluster(8)
    c.run(30_000)
    assert c.all_alive()
    for core in c.cores.values():
        assert core.counters["pings_sent"] > 30
        assert core.counters["acks_received"] > 30
        assert core.counters["suspicions"] == 0
        assert core.health_score == 0


def test_crashed_node_is_suspected_then_declared_dead_everywhere() -> None:
    c = Cluster(10)
    c.run(5_000)
    c.crash("n0007")
    t0 = c.now
    c.run(15_000)
    assert c.views("n0007") == {"dead"}
    suspected = c.events_of(ev.MemberSuspected, "n0007")
    failed = c.events_of(ev.MemberFailed, "n0007")
    assert suspected and failed
    assert min(t for t, _, _ in suspected) < min(t for t, _, _ in failed)
    assert max(t for t, _, _ in failed) - t0 < 10_000
    others = [k for k in c.cores if k != "n0007"]
    assert c.all_alive(others)


def test_indirect_probe_via_ping_req_saves_a_node_behind_a_broken_link() -> None:
    c = Cluster(5)
    c.run(5_000)
    # n0000 cannot talk to n0001 directly (both directions), everyone else can.
    route = c._route

    def broken(src: str, out: Outgoing) -> None:
        dst = c.by_address.get(out.address)
        if {src, dst} == {"n0000", "n0001"}:
            c.sent += 1
            return
        route(src, out)

    c._route = broken  # type: ignore[method-assign]
    c.run(30_000)
    assert c.cores["n0000"].counters["ping_reqs_sent"] > 0
    assert sum(core.counters["ping_reqs_served"] for core in c.cores.values()) > 0
    assert c.state_of("n0000", "n0001") == "alive"
    assert c.state_of("n0001", "n0000") == "alive"
    assert c.cores["n0000"].counters["suspicions"] == 0


def test_suspect_refutes_with_higher_incarnation() -> None:
    c = Cluster(4)
    c.run(5_000)
    target = c.cores["n0002"]
    inc = target.incarnation
    # n0000 accuses n0002 by hand (as if its probe failed) and gossips it to everyone.
    accuser = c.cores["n0000"]
    from agentnode.messages import KIND_SUSPECT, Gossip, Update, encode

    frame = encode(Gossip((Update(KIND_SUSPECT, "n0002", inc, target.address, "n0000", None),)), "test")
    for k in ("n0001", "n0003"):
        c.cores[k].receive("n0000", frame, c.now)
        c.pump(k)
    assert c.state_of("n0001", "n0002") == "suspect"
    c.run(3_000)
    assert target.incarnation == inc + 1
    assert target.counters["refutations"] == 1
    assert c.views("n0002") == {"alive"}
    assert any(e.incarnation == inc + 1 for _, _, e in c.events_of(ev.IncarnationChanged) if _ == _)
    assert c.events_of(ev.MemberAlive, "n0002")
    assert not c.events_of(ev.MemberFailed)
    assert accuser.member("n0002").incarnation == inc + 1


def test_confirmations_shorten_the_suspicion_timeout() -> None:
    """Lifeguard: the same suspicion times out sooner when independent accusers confirm it."""
    from agentnode.messages import KIND_SUSPECT, Gossip, Update, encode

    # Local health off: the observer is cut off here (only its own timers run), and an unhealthy node
    # re-checks a suspect before declaring it (decision 0044; tests/node/test_core_false_deaths.py).
    healthy = replace(SMALL, awareness_max_multiplier=1)

    def time_to_dead(confirmers: int) -> int:
        c = Cluster(12, profile=healthy)
        c.run(10_000)
        c.crash("n0011")
        observer = c.cores["n0000"]
        address = c.address("n0011")
        accusers = [f"n{i:04d}" for i in range(1, 2 + confirmers)]
        start = c.now
        for a in accusers:
            frame = encode(Gossip((Update(KIND_SUSPECT, "n0011", 0, address, a, None),)), "test")
            observer.receive(a, frame, start)
        c.pump("n0000")
        assert observer.member("n0011").state == "suspect"
        # Step only the observer's timers: other nodes' gossip must not interfere.
        while observer.member("n0011").state == "suspect":
            now = observer.get_timer()
            assert now is not None
            observer.handle_timer(now)
            observer.messages_to_send()
        return now - start

    # The observer also probes the suspect itself (it learnt of the suspicion from others), and its own
    # failed probe is one more independent confirmation: 1, 2 and (capped at k = 2) 2 confirmations.
    alone, one, two = time_to_dead(0), time_to_dead(1), time_to_dead(2)
    lo = SMALL.suspicion_min_ms_per_log10_nodes * 1.0792  # min timeout: log10(12) = 1.0792
    hi = lo * SMALL.suspicion_max_timeout_mult
    assert alone > one
    assert one == two == pytest.approx(lo, abs=2)
    assert lo < alone < hi


def test_graceful_leave_is_left_not_dead() -> None:
    c = Cluster(6)
    c.run(5_000)
    c.cores["n0003"].leave(c.now)
    c.pump("n0003")
    c.run(500)
    c.crash("n0003")  # the process exits after leaving
    c.run(20_000)
    assert c.views("n0003") == {"left"}
    assert c.events_of(ev.MemberLeft, "n0003")
    assert not c.events_of(ev.MemberFailed, "n0003")
    assert not c.events_of(ev.MemberSuspected, "n0003")


def form_without_seeds(c: Cluster) -> None:
    """Give every core the full member list directly (no seeds to fall back on)."""
    from agentnode.messages import KIND_ALIVE, PushPullReply, Update, encode

    states = tuple(Update(KIND_ALIVE, k, core.incarnation, core.address, "", {}) for k, core in c.cores.items())
    frame = encode(PushPullReply(states), "test")
    for k, core in c.cores.items():
        core.receive("n0000" if k != "n0000" else "n0001", frame, c.now)
        c.pump(k)


@pytest.mark.parametrize("with_seeds", [True, False])
def test_partition_heals_into_one_cluster(with_seeds: bool) -> None:
    c = Cluster(8, join=with_seeds)
    if not with_seeds:
        form_without_seeds(c)
    c.run(5_000)
    assert c.all_alive()
    a = [f"n{i:04d}" for i in range(4)]
    b = [f"n{i:04d}" for i in range(4, 8)]
    for k in b:
        c.group[k] = 1
    c.run(30_000)
    # Each side declared the other dead.
    assert all(c.state_of(x, y) == "dead" for x in a for y in b)
    assert all(c.state_of(y, x) == "dead" for x in a for y in b)
    assert c.all_alive(a) and c.all_alive(b)
    for k in b:
        c.group[k] = 0
    c.run(20_000)
    assert c.all_alive(), {k: [(m.node_id, m.state) for m in core.members()] for k, core in c.cores.items()}
    assert c.events_of(ev.MemberAlive)
    if not with_seeds:
        # Only the low-rate pings of dead members can have found the other side.
        assert sum(core.counters["reconnects"] for core in c.cores.values()) > 0


def test_full_restart_of_every_node_reforms_one_cluster() -> None:
    c = Cluster(5)
    c.run(5_000)
    for k in list(c.cores):
        c.crash(k)
    c.run(2_000)
    seeds = [c.address("n0000"), c.address("n0001")]
    for k in reversed(list(c.cores)):  # the seeds come back last
        c.restart(k, seeds=seeds)
        c.run(300)
    c.run(15_000)
    assert c.all_alive()


def test_restarted_node_refutes_its_death_with_a_higher_incarnation() -> None:
    c = Cluster(6)
    c.run(5_000)
    c.crash("n0004")
    c.run(20_000)
    assert c.views("n0004") == {"dead"}
    dead_inc = c.cores["n0000"].member("n0004").incarnation
    # The runtime restarts it with the persisted incarnation (no bump), seeds from its peer cache.
    c.down.discard("n0004")
    old = c.cores["n0004"]
    core = NodeCore("n0004", old.address, cluster="test", profile=c.profile, rng=random.Random(4),
                    incarnation=dead_inc)
    c.cores["n0004"] = core
    c._timer_at["n0004"] = None
    core.start(c.now)
    core.add_seeds([c.address("n0001")], c.now)
    c.pump("n0004")
    c.run(10_000)
    assert core.incarnation > dead_inc
    assert c.views("n0004") == {"alive"}
    assert any(isinstance(e, ev.IncarnationChanged) for t, k, e in c.events if k == "n0004")


def test_wrong_cluster_and_garbage_frames_are_counted_and_dropped() -> None:
    c = Cluster(2)
    c.run(2_000)
    core = c.cores["n0000"]
    before = dict(core.counters)
    from agentnode.messages import Gossip, encode

    core.receive("n0001", encode(Gossip(()), "other-cluster"), c.now)
    core.receive("n0001", [99, "test", 5, []], c.now)
    core.receive("n0001", b"\x00garbage", c.now)
    core.receive("n0001", [1, "test", 1, -5, "x", []], c.now)
    core.receive("n0001", {"a": 1}, c.now)
    assert core.counters["dropped_wrong_cluster"] == before["dropped_wrong_cluster"] + 1
    assert core.counters["dropped_version"] == before["dropped_version"] + 1
    assert core.counters["dropped_malformed"] == before["dropped_malformed"] + 3
    assert core.messages_to_send() == []
    assert [m.state for m in core.members()] == ["alive", "alive"]


def test_two_clusters_never_merge() -> None:
    a = NodeCore("a", "h:1", cluster="blue", profile=LOCAL, rng=random.Random(1))
    b = NodeCore("b", "h:2", cluster="green", profile=LOCAL, rng=random.Random(2))
    a.start(0)
    b.start(0)
    a.add_seeds(["h:2"], 0)
    for out in a.messages_to_send():
        b.receive("a", out.frame, 1)
    assert [m.node_id for m in b.members()] == ["b"]
    assert b.counters["dropped_wrong_cluster"] >= 1
    assert b.messages_to_send() == []


def test_timer_contract_and_caller_errors() -> None:
    core = NodeCore("a", "h:1", cluster="c", profile=LOCAL, rng=random.Random(1))
    assert core.get_timer() is None
    core.start(1000)
    t = core.get_timer()
    assert t is not None and t >= 1000
    with pytest.raises(RuntimeError):
        core.start(1000)
    with pytest.raises(ValueError):
        core.add_seeds("h:2", 1000)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NodeCore("", "h:1", cluster="c", profile=LOCAL, rng=random.Random(1))
    with pytest.raises(ValueError):
        NodeCore("a", "h:1", cluster="c", profile=LOCAL, rng=random.Random(1), metadata={"k": 1})  # type: ignore[dict-item]


def test_same_seed_same_trace() -> None:
    def trace() -> list[tuple[int, str, str]]:
        c = Cluster(10, seed=7, loss=0.05)
        c.run(5_000)
        c.crash("n0005")
        c.run(10_000)
        return [(t, k, repr(e)) for t, k, e in c.events]

    assert trace() == trace()


def test_local_health_rises_when_helpers_do_not_nack_and_recovers() -> None:
    """Lifeguard LHA: a node that hears nothing back (its own links are bad) slows its probing down."""
    c = Cluster(6)
    c.run(5_000)
    c.group["n0000"] = 1  # n0000 is cut off from everyone: its probes fail and no helper nacks
    c.run(3_000)
    core = c.cores["n0000"]
    assert core.health_score >= 3
    pings = core.counters["pings_sent"]
    c.run(4_000)
    # At score s the period is 500 ms * (s + 1): far fewer than the 8 probes of a healthy node.
    assert core.counters["pings_sent"] - pings <= 4 * 2
    c.group["n0000"] = 0
    c.run(60_000)
    assert core.health_score == 0
    assert c.all_alive()


def test_unreachable_report_starts_indirect_probes_at_once() -> None:
    core = NodeCore("a", "h:1", cluster="c", profile=LOCAL, rng=random.Random(1))
    core.start(0)
    from agentnode.messages import KIND_ALIVE, Gossip, Update, encode

    ups = tuple(Update(KIND_ALIVE, k, 0, f"h:{i + 2}", "", {}) for i, k in enumerate("bcd"))
    core.receive("b", encode(Gossip(ups), "c"), 0)
    core.messages_to_send()
    now = core.get_timer()
    while now is not None and core.counters["pings_sent"] == 0:
        core.handle_timer(now)
        now = core.get_timer()
    ping = core.messages_to_send()[-1]
    assert core.counters["ping_reqs_sent"] == 0
    core.peer_unreachable(ping.address, ping.peer_id, now + 1)
    assert core.counters["ping_reqs_sent"] == 1  # LOCAL: one helper
    sent = core.messages_to_send()
    assert any(out.frame[2] == 3 for out in sent)  # a ping-req went out
    assert core.counters["suspicions"] == 0


def test_dead_members_are_reaped_after_the_reap_time() -> None:
    profile = replace(SMALL, dead_reap_ms=20_000)
    c = Cluster(4, profile=profile)
    c.run(5_000)
    c.crash("n0003")
    c.run(10_000)
    assert c.views("n0003") == {"dead"}
    c.run(60_000)
    assert c.views("n0003") == {None}
    assert all(core.counters["members_reaped"] == 1 for k, core in c.cores.items() if k != "n0003")

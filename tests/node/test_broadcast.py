"""Plumtree broadcast core driven by hand: integer time, frames through msgpack, a router that can
drop chosen frames. A lost frame is one never delivered."""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import BroadcastGossip, decode
from agentnode.broadcast import Broadcast, BroadcastConfig, BroadcastReceived

C = "test"


class Net:
    def __init__(self, n: int, *, seed: int = 1, latency: tuple[int, int] = (1, 1),
                 config: BroadcastConfig | None = None) -> None:
        self.now = 0
        self.rng = random.Random(seed)
        self.latency = latency
        self.ids = [f"n{i:04d}" for i in range(n)]
        self.cores = {i: Broadcast(i, cluster=C, epoch=1, rng=random.Random(f"{seed}-{i}"), config=config)
                      for i in self.ids}
        self.heap: list[tuple[int, int, str, str, bytes]] = []
        self.seq = 0
        self.drop: Callable[[str, str, object], bool] = lambda src, dst, msg: False
        self.dead: set[str] = set()
        self.received: dict[object, dict[str, int]] = defaultdict(dict)
        self.frames_by_node: Counter[str] = Counter()
        for a in self.ids:
            for b in self.ids:
                if a != b:
                    self.cores[a].member_up(b, f"addr-{b}", 0)
        self.pump_all()

    def pump(self, node: str) -> None:
        core = self.cores[node]
        for out in core.messages_to_send():
            self.frames_by_node[node] += 1
            data = msgpack.packb(out.frame, use_bin_type=True)
            if out.peer_id in self.dead or self.drop(node, out.peer_id, decode(out.frame, C)):
                continue
            self.seq += 1
            heapq.heappush(self.heap, (self.now + self.rng.randint(*self.latency), self.seq, node, out.peer_id, data))
        while (e := core.next_event()) is not None:
            assert isinstance(e, BroadcastReceived)
            assert node not in self.received[e.msg_id], "delivered twice"
            self.received[e.msg_id][node] = self.now

    def pump_all(self) -> None:
        for n in self.ids:
            self.pump(n)

    def run(self, until: int) -> None:
        while True:
            timers = [t for n, c in self.cores.items() if n not in self.dead and (t := c.get_timer()) is not None]
            nxt = min(([self.heap[0][0]] if self.heap else []) + timers, default=None)
            if nxt is None or nxt > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, nxt)
            while self.heap and self.heap[0][0] <= self.now:
                _, _, src, dst, data = heapq.heappop(self.heap)
                if dst not in self.dead:
                    self.cores[dst].receive(src, msgpack.unpackb(data, raw=False), self.now)
                    self.pump(dst)
            for n, core in self.cores.items():
                if n in self.dead:
                    continue
                t = core.get_timer()
                if t is not None and t <= self.now:
                    core.handle_timer(self.now)
                    self.pump(n)

    def broadcast(self, origin: str, payload: bytes, topic: str = "") -> object:
        mid = self.cores[origin].broadcast(payload, self.now, topic=topic)
        self.pump(origin)
        return mid

    def duplicates(self) -> int:
        return sum(c.counters["duplicates"] for n, c in self.cores.items() if n not in self.dead)


def test_views_are_bounded_symmetric_and_connected() -> None:
    net = Net(150)
    net.run(3_000)
    cfg = BroadcastConfig()
    for n, core in net.cores.items():
        assert 1 <= len(core.active) <= cfg.active_max, n
        for peer in core.active:
            assert n in net.cores[peer].active, (n, peer)
    # connected: BFS over active links
    seen, todo = {net.ids[0]}, [net.ids[0]]
    while todo:
        for p in net.cores[todo.pop()].active:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    assert len(seen) == 150


def test_reaches_every_node_once_and_the_tree_removes_duplicates() -> None:
    net = Net(300, latency=(1, 3))
    net.run(3_000)
    warm = net.broadcast(net.ids[0], b"warm-up")
    net.run(net.now + 1_000)
    assert len(net.received[warm]) == 300
    before = net.duplicates()
    rng = random.Random(7)
    mids = []
    for _ in range(20):
        origin = rng.choice(net.ids)
        start = net.now
        mids.append((net.broadcast(origin, b"x" * 100), start))
        net.run(net.now + 500)
    dups = net.duplicates() - before
    for mid, start in mids:
        assert len(net.received[mid]) == 300
        assert max(net.received[mid].values()) - start <= 100  # simulated ms, 1-3 ms links
    per_node_per_msg = dups / (300 * 20)
    print(f"duplicates per node per message after warm-up: {per_node_per_msg:.3f}")
    assert per_node_per_msg <= 0.1  # steady state: the eager links form a tree
    eager_sizes = [len(c.eager) for c in net.cores.values()]
    assert sum(eager_sizes) / len(eager_sizes) < 2.5  # a tree: ~2 (N-1) / N eager links per node


def test_per_node_cost_does_not_grow_with_cluster_size() -> None:
    costs = {}
    for n in (50, 400):
        net = Net(n)
        net.run(3_000)
        net.broadcast(net.ids[0], b"warm")
        net.run(net.now + 1_000)
        net.frames_by_node.clear()
        for i in range(10):
            net.broadcast(net.ids[i], b"m")
            net.run(net.now + 200)
        costs[n] = max(net.frames_by_node.values()) / 10
    print(f"max frames per node per broadcast: {costs}")
    assert costs[400] <= costs[50] * 1.5 + 1 and costs[400] <= BroadcastConfig().active_max * 2


def test_lost_eager_link_is_repaired_by_ihave_and_graft() -> None:
    net = Net(60)
    net.run(3_000)
    net.broadcast(net.ids[0], b"warm")
    net.run(net.now + 1_000)
    # Cut every eager link of a busy node for gossip only; IHAVE/GRAFT still pass.
    hub = max(net.ids, key=lambda n: len(net.cores[n].eager))
    cut = {(hub, p) for p in net.cores[hub].eager} | {(p, hub) for p in net.cores[hub].eager}
    first = [True]

    def drop(src: str, dst: str, msg: object) -> bool:
        return isinstance(msg, BroadcastGossip) and (src, dst) in cut and first[0]

    net.drop = drop
    mid = net.broadcast(net.ids[1], b"after cut")
    net.run(net.now + 60)
    first[0] = False  # grafted resends may pass
    net.run(net.now + 1_000)
    assert len(net.received[mid]) == 60
    assert sum(c.counters["grafts_sent"] for c in net.cores.values()) > 0
    assert sum(c.counters["repaired"] for c in net.cores.values()) > 0


def test_heavy_gossip_loss_still_reaches_everyone() -> None:
    net = Net(100, seed=3)
    net.run(3_000)
    loss = random.Random(11)
    net.drop = lambda src, dst, msg: isinstance(msg, BroadcastGossip) and loss.random() < 0.3
    mids = [net.broadcast(net.ids[i * 7], bytes([i])) for i in range(10)]
    net.run(net.now + 3_000)
    for mid in mids:
        assert len(net.received[mid]) == 100


def test_dead_members_leave_the_view_and_broadcast_still_reaches_the_living() -> None:
    net = Net(80, seed=5)
    net.run(3_000)
    victims = net.ids[10:30]
    for v in victims:
        net.dead.add(v)
        for n in net.ids:
            if n not in net.dead:
                net.cores[n].member_down(v, net.now)
    net.pump_all()
    net.run(net.now + 3_000)
    for n in net.ids:
        if n not in net.dead:
            assert not set(net.cores[n].active) & set(victims)
            assert len(net.cores[n].active) >= 1
    mid = net.broadcast(net.ids[0], b"after deaths", topic="news")
    net.run(net.now + 2_000)
    assert set(net.received[mid]) == set(net.ids) - net.dead


def test_topic_travels_with_the_message_and_own_broadcast_is_delivered_locally() -> None:
    net = Net(5)
    net.run(2_000)
    core = net.cores[net.ids[2]]
    mid = core.broadcast(b"hello", net.now, topic="weather")
    ev = core.next_event()
    assert ev == BroadcastReceived(mid, "weather", b"hello", 0, net.ids[2])
    net.pump(net.ids[2])
    net.run(net.now + 500)
    assert len(net.received[mid]) == 4  # the origin's own event was taken above


def test_same_seed_same_behaviour() -> None:
    def trace() -> tuple:
        net = Net(40, seed=9, latency=(1, 5))
        net.run(2_000)
        mids = [net.broadcast(net.ids[i], b"x") for i in range(5)]
        net.run(net.now + 1_000)
        return tuple(sorted(net.received[m].items()) for m in mids), tuple(tuple(net.cores[i].active) for i in net.ids), \
            net.duplicates()
    assert trace() == trace()


def test_caller_misuse() -> None:
    core = Broadcast("n", cluster=C, epoch=0, rng=random.Random(1))
    with pytest.raises(ValueError, match="bytes"):
        core.broadcast("text", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BroadcastConfig(active_min=5, active_max=4)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=8), max_leaves=30))
def test_garbage_is_counted_never_raised(frame: object) -> None:
    core = Broadcast("n", cluster=C, epoch=0, rng=random.Random(1))
    core.member_up("peer", "addr", 0)
    for t in range(48, 56):
        core.receive("peer", [1, C, t, frame, frame, frame, frame][: 3 + (t % 5)], 0)
    core.receive("peer", frame, 0)
    assert core.counters["frames_received"] == 9


def test_first_broadcast_over_a_fresh_overlay_does_not_flood() -> None:
    net = Net(200, seed=7, latency=(1, 3))
    net.run(3_000)
    assert all(len(c.eager) <= c.config.eager_at_start for c in net.cores.values()), "new links start lazy"
    before = sum(c.counters["duplicates"] for c in net.cores.values())
    mid = net.broadcast(net.ids[0], b"first")
    net.run(net.now + 1_000)
    assert len(net.received[mid]) == 200
    duplicates = sum(c.counters["duplicates"] for c in net.cores.values()) - before
    assert duplicates / 200 <= 2.0  # issue 5's target; every link eager gave 4-5 per node

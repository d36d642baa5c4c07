"""Registry core driven by hand: integer time, frames through msgpack, a tiny router with loss."""

from __future__ import annotations

import heapq
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import AgentSkill, RegistrySet, encode
from agentnode.registry import (
    AgentHealthChanged,
    AgentIdTaken,
    AgentRegistered,
    AgentRemoved,
    AgentUpdated,
    Registry,
    RegistryConfig,
    RegistryFull,
)

CLUSTER = "test"


class Net:
    """N registries; every node knows every other as a live member; frames take 1 ms, some are lost."""

    def __init__(self, n: int, *, seed: int = 1, loss: float = 0.0, config: RegistryConfig | None = None) -> None:
        self.now = 0
        self.loss = loss
        self.rng = random.Random(seed)
        self.nodes = {f"n{i:03d}": Registry(f"n{i:03d}", cluster=CLUSTER, epoch=1, rng=random.Random(f"{seed}-{i}"),
                                            config=config) for i in range(n)}
        self.heap: list[tuple[int, int, str, str, bytes]] = []
        self.seq = 0
        self.frames = 0
        self.log: list[tuple[int, str, str, bytes]] = []
        for a in self.nodes:
            for b in self.nodes:
                if a != b:
                    self.nodes[a].member_up(b, f"addr-{b}", self.now)
        self.pump_all()

    def pump_all(self) -> None:
        for node_id in self.nodes:
            self.pump(node_id)

    def pump(self, node_id: str) -> None:
        for out in self.nodes[node_id].messages_to_send():
            data = msgpack.packb(out.frame, use_bin_type=True)
            self.frames += 1
            self.log.append((self.now, node_id, out.peer_id, data))
            if self.rng.random() < self.loss:
                continue
            self.seq += 1
            heapq.heappush(self.heap, (self.now + 1, self.seq, node_id, out.peer_id, data))

    def run(self, until: int) -> None:
        while True:
            timers = [(t, n) for n, r in self.nodes.items() if (t := r.get_timer()) is not None]
            nxt = min([h[0] for h in self.heap[:1]] + [t for t, _ in timers], default=None)
            if nxt is None or nxt > until:
                self.now = until
                return
            self.now = max(self.now, nxt)
            while self.heap and self.heap[0][0] <= self.now:
                _, _, src, dst, data = heapq.heappop(self.heap)
                if dst in self.nodes:
                    self.nodes[dst].receive(src, msgpack.unpackb(data, raw=False), self.now)
                    self.pump(dst)
            for node_id, reg in self.nodes.items():
                t = reg.get_timer()
                if t is not None and t <= self.now:
                    reg.handle_timer(self.now)
                    self.pump(node_id)

    def events(self, node_id: str) -> list[object]:
        out = []
        while (e := self.nodes[node_id].next_event()) is not None:
            out.append(e)
        return out


def test_registration_reaches_every_node_and_lookups_are_deterministic() -> None:
    net = Net(5)
    a = net.nodes["n000"]
    a.register("translator", net.now, name="T", capabilities=["translate", "fr"], metadata={"lang": "fr"},
               description="Translates", version="1.2", skills=[AgentSkill("tr", "Translate", "", ("nlp",))])
    net.nodes["n003"].register("summarizer", net.now, capabilities=["summarize", "translate"])
    net.run(200)
    for node_id, reg in net.nodes.items():
        found = reg.find("translate")
        assert [e.record.agent_id for e in found] == ["summarizer", "translator"], node_id
        entry = reg.lookup("translator")
        assert entry is not None and entry.record.node_id == "n000"
        assert entry.record.meta == {"lang": "fr"} and entry.record.skills[0].tags == ("nlp",)
        assert entry.address == ("" if node_id == "n000" else "addr-n000")
    assert isinstance(net.events("n004")[0], AgentRegistered)


def test_deregister_and_updates_propagate() -> None:
    net = Net(4)
    a = net.nodes["n000"]
    a.register("x", net.now, capabilities=["c"])
    net.run(100)
    a.set_load("x", 7, net.now)
    a.subscribe("x", "news", net.now)
    net.run(200)
    b = net.nodes["n002"]
    assert b.lookup("x").record.load == 7
    assert [e.record.agent_id for e in b.find(topic="news")] == ["x"]
    assert b.subscriber_nodes("news") == ["n000"]
    net.events("n002")
    a.unsubscribe("x", "news", net.now)
    a.deregister("x", net.now)
    net.run(400)
    assert b.lookup("x") is None and b.find("c") == [] and b.find(topic="news") == []
    assert any(isinstance(e, AgentRemoved) and e.reason == "deregistered" for e in net.events("n002"))


def test_changes_within_the_publish_delay_go_out_as_one_version() -> None:
    net = Net(3)
    a = net.nodes["n000"]
    a.register("x", net.now)
    for load in range(1, 20):
        a.set_load("x", load, net.now)
    net.run(100)
    assert a.counters["publishes"] == 1
    assert net.nodes["n001"].lookup("x").record.load == 19


def test_agents_on_a_dead_node_disappear_and_come_back_if_it_refutes() -> None:
    net = Net(3)
    net.nodes["n000"].register("x", net.now, capabilities=["c"])
    net.run(100)
    b = net.nodes["n001"]
    net.events("n001")
    b.member_down("n000", net.now)
    assert b.lookup("x") is None and b.find("c") == []
    assert net.events("n001") == [AgentRemoved("x", "n000", "node_failed")]
    b.member_up("n000", "addr-n000", net.now)
    assert b.lookup("x") is not None
    assert [type(e) for e in net.events("n001")] == [AgentRegistered]


def test_a_set_relayed_for_a_dead_node_stays_hidden() -> None:
    net = Net(3)
    net.nodes["n000"].register("x", net.now)
    net.run(100)
    b = net.nodes["n001"]
    b.member_down("n000", net.now, left=True)
    stale = RegistrySet("n000", 1, 99, (net.nodes["n000"].lookup("x").record,))
    b.receive("n002", msgpack.unpackb(msgpack.packb(encode(stale, CLUSTER), use_bin_type=True)), net.now)
    assert b.lookup("x") is None and b.counters["sets_limbo"] == 1
    b.member_up("n000", "addr-n000", net.now)
    assert b.stamp("n000") == (1, 99)


def test_suspect_node_is_reported_separately_from_agent_health() -> None:
    net = Net(2)
    a, b = net.nodes["n000"], net.nodes["n001"]
    a.register("x", net.now, capabilities=["c"], health_timeout_ms=500)
    net.run(100)
    b.member_suspect("n000", net.now)
    entry = b.lookup("x")
    assert entry.node_suspect and entry.record.healthy
    assert b.find("c", include_suspect=False) == []
    b.member_up("n000", "addr-n000", net.now)
    assert not b.lookup("x").node_suspect
    net.events("n000")
    net.run(700)  # no heartbeat for 500 ms
    assert [e for e in net.events("n000") if isinstance(e, AgentHealthChanged)] == [
        AgentHealthChanged("x", False, "no heartbeat")]
    assert b.find("c") == [] and len(b.find("c", healthy_only=False)) == 1
    assert not b.lookup("x").node_suspect
    a.heartbeat("x", net.now)
    a.report_health("x", False, net.now, "callback said no")
    a.report_health("x", True, net.now)
    net.run(900)
    assert [e.record.agent_id for e in b.find("c")] == ["x"]


def test_anti_entropy_repairs_heavy_loss() -> None:
    net = Net(20, loss=0.5, config=RegistryConfig(push_fanout=2, anti_entropy_interval_ms=200))
    for i, reg in enumerate(net.nodes.values()):
        reg.register(f"agent-{i}", net.now, capabilities=["work"])
    net.run(10_000)
    for node_id, reg in net.nodes.items():
        assert len(reg.find("work")) == 20, node_id
        assert {reg.stamp(o) for o in net.nodes} == {(1, 1)}


def test_new_member_receives_sets_directly() -> None:
    net = Net(3)
    net.nodes["n000"].register("x", net.now)
    net.run(100)
    late = Registry("n999", cluster=CLUSTER, epoch=1, rng=random.Random(5))
    net.nodes["n999"] = late
    for other in ("n000", "n001", "n002"):
        late.member_up(other, f"addr-{other}", net.now)
        net.nodes[other].member_up("n999", "addr-n999", net.now)
        net.pump(other)
    net.pump("n999")
    net.run(net.now + 5)
    assert late.lookup("x") is not None


def test_restart_with_higher_epoch_replaces_old_records() -> None:
    net = Net(2)
    net.nodes["n000"].register("old", net.now)
    net.run(100)
    fresh = Registry("n000", cluster=CLUSTER, epoch=2, rng=random.Random(9))
    net.nodes["n000"] = fresh
    fresh.member_up("n001", "addr-n001", net.now)
    fresh.register("new", net.now)
    net.run(300)
    b = net.nodes["n001"]
    assert b.lookup("old") is None and b.lookup("new") is not None and b.stamp("n000") == (2, 1)


def test_caller_misuse_raises_clear_errors() -> None:
    net = Net(2)
    a, b = net.nodes["n000"], net.nodes["n001"]
    a.register("x", net.now)
    net.run(100)
    with pytest.raises(AgentIdTaken, match="already hosted by node n000"):
        b.register("x", net.now)
    with pytest.raises(AgentIdTaken):
        a.register("x", net.now)
    with pytest.raises(ValueError, match="invalid agent record"):
        a.register("y", net.now, capabilities=["c" * 500])
    with pytest.raises(ValueError, match="updatable fields"):
        a.update("x", net.now, node_id="elsewhere")
    with pytest.raises(KeyError, match="register it first"):
        a.set_load("nope", 1, net.now)
    with pytest.raises(ValueError):
        a.set_load("x", -1, net.now)
    with pytest.raises(ValueError, match="epoch"):
        Registry("n", cluster=CLUSTER, epoch=-1, rng=random.Random())


def test_registry_full() -> None:
    reg = Registry("n", cluster=CLUSTER, epoch=0, rng=random.Random(1))
    from agentnode.agent_messages import MAX_AGENTS_PER_NODE
    for i in range(MAX_AGENTS_PER_NODE):
        reg.register(f"a{i}", 0)
    with pytest.raises(RegistryFull):
        reg.register("one-more", 0)


def test_same_seed_gives_same_frames() -> None:
    def trace() -> list[tuple[int, str, str, bytes]]:
        net = Net(6, seed=3, loss=0.2, config=RegistryConfig(anti_entropy_interval_ms=100))
        for i, reg in enumerate(net.nodes.values()):
            reg.register(f"a{i}", 0, capabilities=["c"])
        net.run(2_000)
        return net.log
    assert trace() == trace()


def test_updated_event_carries_previous_record() -> None:
    net = Net(2)
    a = net.nodes["n000"]
    a.register("x", net.now, capabilities=["a"])
    net.run(100)
    net.events("n001")
    a.update("x", net.now, capabilities=["b"])
    net.run(200)
    (ev,) = net.events("n001")
    assert isinstance(ev, AgentUpdated) and ev.previous.capabilities == ("a",) and ev.record.capabilities == ("b",)
    assert net.nodes["n001"].find("a") == [] and len(net.nodes["n001"].find("b")) == 1


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=6), max_leaves=30))
def test_garbage_is_counted_never_raised(frame: object) -> None:
    reg = Registry("n", cluster=CLUSTER, epoch=0, rng=random.Random(1))
    reg.receive("peer", frame, 0)
    reg.receive("peer", [1, CLUSTER, 33, frame, 1, 1, frame], 0)
    reg.receive("peer", [1, CLUSTER, 32, frame, frame], 0)
    assert reg.counters["frames_received"] == 3

"""Delivery core driven by hand: integer time, frames through msgpack, a router with loss, duplication,
reordering and black holes. A lost frame is one never delivered."""

from __future__ import annotations

import heapq
import random
from collections import defaultdict

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import KIND_REQUEST, PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL, MessageId, decode
from agentnode.delivery import (
    Backpressure,
    DeadlineExceeded,
    Delivery,
    DeliveryConfig,
    DeliveryError,
    Expired,
    HandlerError,
    Incoming,
    MessageDelivered,
    NodeUnreachable,
    ResponseReceived,
    SendQueueFull,
    UnknownAgent,
)

C = "test"
FAST = DeliveryConfig(initial_rto_ms=50, max_rto_ms=400, jitter=0.0, max_attempts=5, window=8, channel_queue=32,
                      channel_idle_ms=10_000)


class Net:
    """Delivery cores on a simulated network; `loss`/`dup` per frame, latency uniform in `delay`."""

    def __init__(self, ids: list[str], *, seed: int = 0, loss: float = 0.0, dup: float = 0.0,
                 delay: tuple[int, int] = (1, 1), config: DeliveryConfig = FAST, epoch: int = 1) -> None:
        self.now = 0
        self.rng = random.Random(seed)
        self.loss, self.dup, self.delay = loss, dup, delay
        self.config = config
        self.cores = {i: Delivery(i, cluster=C, epoch=epoch, rng=random.Random(f"{seed}-{i}"), config=config)
                      for i in ids}
        self.heap: list[tuple[int, int, str, str, bytes]] = []
        self.seq = 0
        self.blackhole: set[str] = set()
        self.sent_frames: list[tuple[int, str, str, object]] = []
        self.got: dict[str, list[object]] = defaultdict(list)
        for a in ids:
            for b in ids:
                if a != b:
                    self.cores[a].member_up(b, f"addr-{b}", 0)

    def pump(self, node: str) -> None:
        core = self.cores[node]
        for out in core.messages_to_send():
            assert out.address == f"addr-{out.peer_id}"
            data = msgpack.packb(out.frame, use_bin_type=True)
            self.sent_frames.append((self.now, node, out.peer_id, decode(out.frame, C)))
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if out.peer_id in self.blackhole or node in self.blackhole or self.rng.random() < self.loss:
                    continue
                self.seq += 1
                heapq.heappush(self.heap, (self.now + self.rng.randint(*self.delay), self.seq, node, out.peer_id, data))
        while (e := core.next_event()) is not None:
            self.got[node].append(e)

    def pump_all(self) -> None:
        for n in self.cores:
            self.pump(n)

    def run(self, until: int) -> None:
        self.pump_all()
        while True:
            timers = [t for c in self.cores.values() if (t := c.get_timer()) is not None]
            nxt = min(([self.heap[0][0]] if self.heap else []) + timers, default=None)
            if nxt is None or nxt > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, nxt)
            while self.heap and self.heap[0][0] <= self.now:
                _, _, src, dst, data = heapq.heappop(self.heap)
                if dst in self.cores:
                    self.cores[dst].receive(src, msgpack.unpackb(data, raw=False), self.now)
                    self.pump(dst)
            for n, core in self.cores.items():
                t = core.get_timer()
                if t is not None and t <= self.now:
                    core.handle_timer(self.now)
                    self.pump(n)

    def take(self, node: str, cls: type) -> list:
        return [e for e in self.got[node] if isinstance(e, cls)]


def test_at_least_once_delivers_in_order_and_acks_each() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("worker", capacity=100)
    ids = [net.cores["a"].send("b", "worker", f"m{i}".encode(), 0, src_agent="client") for i in range(20)]
    net.run(1_000)
    got = net.take("b", Incoming)
    assert [e.payload for e in got] == [f"m{i}".encode() for i in range(20)]
    assert all(e.sender_node == "a" and e.src_agent == "client" and e.reliable for e in got)
    assert [e.msg_id for e in net.take("a", MessageDelivered)] == ids
    assert ids[0] == MessageId("a", 1, 1) and ids[-1] == MessageId("a", 1, 20)
    assert net.cores["a"].counters["retransmissions"] == 0


def test_lost_first_transmission_is_retried() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w")
    net.blackhole.add("b")
    net.cores["a"].send("b", "w", b"x", 0)
    net.run(10)
    net.blackhole.clear()
    net.run(500)
    assert [e.payload for e in net.take("b", Incoming)] == [b"x"]
    assert len(net.take("a", MessageDelivered)) == 1
    assert net.cores["a"].counters["retransmissions"] == 1


def test_exponential_backoff_capped_then_node_unreachable() -> None:
    net = Net(["a", "b"])
    net.blackhole.add("b")
    net.cores["a"].send("b", "w", b"x", 0)
    net.run(5_000)
    times = [t for t, src, _, _ in net.sent_frames if src == "a"]
    assert times == [0, 50, 150, 350, 750]  # 50, 100, 200, 400 (cap) between the 5 attempts
    (failure,) = net.take("a", NodeUnreachable)
    assert failure.confirmed is False and "5 attempts" in failure.detail
    assert isinstance(DeliveryError(failure), Exception) and "NodeUnreachable" in str(DeliveryError(failure))


def test_jitter_spreads_retry_times_within_bounds() -> None:
    cfg = DeliveryConfig(initial_rto_ms=100, max_rto_ms=100, jitter=0.25, max_attempts=50, channel_idle_ms=10_000)
    net = Net(["a", "b"], config=cfg)
    net.blackhole.add("b")
    net.cores["a"].send("b", "w", b"x", 0)
    net.run(3_000)
    times = [t for t, src, _, _ in net.sent_frames if src == "a"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(75 <= g <= 125 for g in gaps) and len(set(gaps)) > 3


def test_duplicated_frames_reach_the_handler_once() -> None:
    net = Net(["a", "b"], dup=1.0, delay=(1, 30), seed=4)
    net.cores["b"].open_inbox("w", capacity=1000)
    for i in range(40):
        net.cores["a"].send("b", "w", str(i).encode(), 0)
    net.run(3_000)
    assert [e.payload for e in net.take("b", Incoming)] == [str(i).encode() for i in range(40)]
    assert len(net.take("a", MessageDelivered)) == 40
    assert net.cores["b"].counters["duplicates"] > 0


def test_unknown_agent_is_a_confirmed_failure() -> None:
    net = Net(["a", "b"])
    mid = net.cores["a"].send("b", "nobody", b"x", 0)
    net.run(500)
    (f,) = net.take("a", UnknownAgent)
    assert f.msg_id == mid and f.confirmed and "nobody" in f.detail
    assert net.take("a", MessageDelivered) == []


def test_send_to_a_non_member_fails_at_once() -> None:
    net = Net(["a", "b"])
    net.cores["a"].send("zzz", "w", b"x", 0)
    net.pump("a")
    (f,) = net.take("a", NodeUnreachable)
    assert "not a live member" in f.detail


def test_ttl_expires_queued_message_with_a_reason_and_later_ones_are_not_blocked() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w")
    net.blackhole.add("b")
    first = net.cores["a"].send("b", "w", b"old", 0, ttl_ms=120)
    net.run(130)
    (f,) = net.take("a", Expired)
    assert f.msg_id == first and "TTL" in f.detail
    net.blackhole.clear()
    net.cores["a"].send("b", "w", b"new", net.now)
    net.run(1_000)
    assert [e.payload for e in net.take("b", Incoming)] == [b"new"]  # seq 1 skipped via the floor
    assert net.cores["b"].counters["skipped"] == 1
    assert len(net.take("a", MessageDelivered)) == 1


def test_ttl_travels_as_remaining_time() -> None:
    net = Net(["a", "b"], delay=(10, 10))
    net.cores["b"].open_inbox("w")
    net.cores["a"].send("b", "w", b"x", 0, ttl_ms=1000)
    net.run(100)
    (inc,) = net.take("b", Incoming)
    assert inc.expires_ms == 10 + 1000


def test_drop_expired_in_inbox_tells_the_sender() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w", capacity=1)
    net.cores["a"].send("b", "w", b"x", 0, ttl_ms=100)
    net.run(10)
    (inc,) = net.take("b", Incoming)
    assert net.cores["b"].inbox_size("w") == 1
    net.cores["b"].drop_expired(inc, 200)
    net.run(300)
    assert net.cores["b"].inbox_size("w") == 0
    assert [type(e) for e in net.got["a"]] == [MessageDelivered, Expired]
    assert net.take("a", Expired)[0].confirmed


def test_full_inbox_rejects_with_backpressure_never_silently() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w", capacity=2)
    ids = [net.cores["a"].send("b", "w", bytes([i]), 0) for i in range(4)]
    net.run(500)
    assert [e.payload for e in net.take("b", Incoming)] == [b"\x00", b"\x01"]
    assert [e.msg_id for e in net.take("a", MessageDelivered)] == ids[:2]
    assert [e.msg_id for e in net.take("a", Backpressure)] == ids[2:]
    assert net.cores["b"].counters["rejected_backpressure"] == 2


def test_wait_if_full_holds_until_capacity_frees() -> None:
    net = Net(["a", "b"])
    b = net.cores["b"]
    b.open_inbox("w", capacity=1)
    net.cores["a"].send("b", "w", b"1", 0)
    net.cores["a"].send("b", "w", b"2", 0, wait_if_full=True, ttl_ms=2_000)
    net.cores["a"].send("b", "w", b"3", 0, wait_if_full=True, ttl_ms=2_000)
    net.run(300)
    assert [e.payload for e in net.take("b", Incoming)] == [b"1"]
    b.release("w")
    net.run(600)
    assert [e.payload for e in net.take("b", Incoming)] == [b"1", b"2"]
    b.release("w")
    net.run(1_000)
    assert [e.payload for e in net.take("b", Incoming)] == [b"1", b"2", b"3"]
    assert len(net.take("a", MessageDelivered)) == 3 and net.take("a", Backpressure) == []


def test_wait_if_full_gives_up_with_backpressure_at_ttl() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w", capacity=1)
    net.cores["a"].send("b", "w", b"1", 0)
    mid = net.cores["a"].send("b", "w", b"2", 0, wait_if_full=True, ttl_ms=700)
    net.run(2_000)
    (f,) = net.take("a", Backpressure)
    assert f.msg_id == mid and "TTL" in f.detail


def test_request_response_and_handler_error() -> None:
    net = Net(["a", "b"])
    b = net.cores["b"]
    b.open_inbox("calc")
    ok = net.cores["a"].request("b", "calc", b"2+2", 0, timeout_ms=1_000, src_agent="asker")
    bad = net.cores["a"].request("b", "calc", b"1/0", 0, timeout_ms=1_000)
    net.run(5)
    reqs = net.take("b", Incoming)
    assert [r.kind for r in reqs] == [KIND_REQUEST, KIND_REQUEST]
    b.respond(reqs[0], b"4", net.now)
    b.respond(reqs[1], b"", net.now, error="ZeroDivisionError: division by zero")
    net.run(500)
    (resp,) = net.take("a", ResponseReceived)
    assert resp.request_id == ok and resp.payload == b"4" and resp.from_agent == "calc" and resp.dest_node == "b"
    (err,) = net.take("a", HandlerError)
    assert err.msg_id == bad and "ZeroDivisionError" in err.detail
    with pytest.raises(ValueError, match="answers requests only"):
        b.respond(Incoming(ok, "a", "", "calc", 0, 1, b"", None, True), b"", 0)


def test_a_response_carries_the_ack_of_its_request_in_one_frame() -> None:
    a = Delivery("a", cluster=C, epoch=1, rng=random.Random(1), config=FAST)
    b = Delivery("b", cluster=C, epoch=1, rng=random.Random(2), config=FAST)
    a.member_up("b", "addr-b", 0)
    b.member_up("a", "addr-a", 0)
    b.open_inbox("calc")
    rid = a.request("b", "calc", b"2+2", 0, timeout_ms=1_000)
    (out,) = a.messages_to_send()
    b.receive("a", msgpack.unpackb(msgpack.packb(out.frame), raw=False), 1)
    req = b.next_event()
    assert isinstance(req, Incoming)
    b.respond(req, b"4", 1)
    frames = b.messages_to_send()
    assert len(frames) == 1, "the ack of the request rides in the response's frame"
    msg = decode(frames[0].frame, C)
    assert msg.acks is not None and msg.acks.entries[0].upto == 1 and len(msg.envelopes) == 1
    a.receive("b", msgpack.unpackb(msgpack.packb(frames[0].frame), raw=False), 2)
    (resp,) = [e for e in iter(a.next_event, None) if isinstance(e, ResponseReceived)]
    assert resp.request_id == rid and resp.payload == b"4"
    assert a.counters["acks_stale"] == 0


def test_a_request_ends_in_its_answer_alone_and_a_response_in_nothing() -> None:
    """Decision 0126: no `MessageDelivered` for a request (its outcome is the answer) nor for a response
    (nobody awaits it); both directions are still acknowledged, so no retransmission follows."""
    net = Net(["a", "b"])
    b = net.cores["b"]
    b.open_inbox("calc")
    rid = net.cores["a"].request("b", "calc", b"2+2", 0, timeout_ms=1_000)
    net.run(5)
    (req,) = net.take("b", Incoming)
    b.release("calc")
    b.respond(req, b"4", net.now)
    net.run(900)
    assert [type(e) for e in net.got["a"]] == [ResponseReceived] and net.got["a"][0].request_id == rid
    assert [type(e) for e in net.got["b"]] == [Incoming]
    assert net.cores["a"].counters["transmissions"] == 1 and b.counters["transmissions"] == 1
    assert net.cores["a"].counters["delivered_acks"] == 1 and b.counters["delivered_acks"] == 1


def test_acked_messages_do_not_wake_the_timer() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("x")
    for i in range(20):
        net.cores["a"].send("b", "x", b"%d" % i, 0)
    net.run(30)
    assert len(net.take("a", MessageDelivered)) == 20
    # Only the idle-channel sweep is left: no wake-up for the 20 retry timers of acked messages.
    assert net.cores["a"].get_timer() == FAST.channel_idle_ms // 4


def test_send_many_is_send_in_order_and_all_or_nothing() -> None:
    net = Net(["a", "b"])
    a = net.cores["a"]
    net.cores["b"].open_inbox("x")
    first = a.send("b", "x", b"single", 0)
    many = a.send_many("b", "x", [b"%d" % i for i in range(30)], 0)
    assert len(many) == 30 and many[0].counter == first.counter + 1
    room = a.capacity("b", "x")
    with pytest.raises(SendQueueFull, match="no room for"):
        a.send_many("b", "x", [b"y"] * (room + 1), 0)
    assert a.capacity("b", "x") == room  # nothing was queued
    with pytest.raises(ValueError, match="one msg_id per payload"):
        a.send_many("b", "x", [b"y"], 0, mode="durable", msg_ids=[])
    net.run(200)
    assert [e.payload for e in net.take("b", Incoming)] == [b"single"] + [b"%d" % i for i in range(30)]
    assert [e.msg_id for e in net.take("a", MessageDelivered)] == [first, *many]


def test_retransmission_waits_while_the_channel_makes_progress() -> None:
    a = Delivery("a", cluster=C, epoch=1, rng=random.Random(1), config=FAST)
    b = Delivery("b", cluster=C, epoch=1, rng=random.Random(2), config=FAST)
    a.member_up("b", "addr-b", 0)
    b.member_up("a", "addr-a", 0)
    b.open_inbox("x")
    a.send("b", "x", b"1", 0)
    (f1,) = a.messages_to_send()
    a.send("b", "x", b"2", 30)  # due for retry at 30 + 50
    a.messages_to_send()  # this frame is slow, not lost
    b.receive("a", f1.frame, 45)
    (ack,) = b.messages_to_send()
    a.receive("b", ack.frame, 45)  # the channel moved at 45
    a.handle_timer(80)
    assert a.counters["retransmissions"] == 0 and a.messages_to_send() == []
    assert a.get_timer() == 95  # one RTO after the last progress (RFC 6298 5.3)
    a.handle_timer(95)
    assert a.counters["retransmissions"] == 1 and len(a.messages_to_send()) == 1


def test_request_deadline_then_late_response_is_counted() -> None:
    net = Net(["a", "b"])
    b = net.cores["b"]
    b.open_inbox("slow")
    rid = net.cores["a"].request("b", "slow", b"?", 0, timeout_ms=300)
    net.run(10)
    (req,) = net.take("b", Incoming)
    net.run(400)
    (f,) = net.take("a", DeadlineExceeded)
    assert f.msg_id == rid
    b.respond(req, b"too late", net.now)
    net.run(800)
    assert net.take("a", ResponseReceived) == []
    assert net.cores["a"].counters["late_responses"] == 1


def test_member_down_fails_pending_work_but_keeps_durable() -> None:
    net = Net(["a", "b"])
    a = net.cores["a"]
    net.cores["b"].open_inbox("w")
    net.blackhole.add("b")
    plain = a.send("b", "w", b"plain", 0)
    durable = a.send("b", "w", b"durable", 0, mode="durable")
    rid = a.request("b", "w", b"q", 0, timeout_ms=10_000)
    net.run(20)
    a.member_down("b", net.now)
    net.pump("a")
    failed = {e.msg_id for e in net.take("a", NodeUnreachable)}
    assert failed == {plain, rid}
    net.run(3_000)  # durable keeps waiting while b is down, beyond max_attempts
    net.blackhole.clear()
    a.member_up("b", "addr-b", net.now)
    net.run(net.now + 500)
    assert [e.payload for e in net.take("b", Incoming)] == [b"durable"]
    assert [e.msg_id for e in net.take("a", MessageDelivered)] == [durable]


def test_durable_id_is_deduplicated_across_a_sender_restart() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w")
    mid = net.cores["a"].send("b", "w", b"once", 0, mode="durable")
    net.pump("a")
    # b receives, but a "crashes" before the ack arrives: a new epoch resends the outbox row with its id.
    net.run(1)
    restarted = Delivery("a", cluster=C, epoch=2, rng=random.Random(1), config=FAST)
    restarted.member_up("b", "addr-b", net.now)
    net.cores["a"] = restarted
    net.heap = [h for h in net.heap if h[3] != "a"]
    restarted.send("b", "w", b"once", net.now, mode="durable", msg_id=mid)
    net.run(500)
    assert [e.payload for e in net.take("b", Incoming)] == [b"once"]
    assert net.cores["b"].counters["durable_duplicates"] == 1
    assert [e.msg_id for e in net.got["a"] if isinstance(e, MessageDelivered)][-1] == mid


def test_priority_goes_first_and_overtakes_a_full_normal_channel() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w", capacity=1000)
    a = net.cores["a"]
    for i in range(20):
        a.send("b", "w", f"n{i}".encode(), 0, priority=PRIORITY_LOW)
    a.send("b", "w", b"urgent", 0, priority=PRIORITY_HIGH)
    net.run(1_000)
    got = [e.payload for e in net.take("b", Incoming)]
    assert got[0] == b"urgent"
    assert got[1:] == [f"n{i}".encode() for i in range(20)]


def test_send_queue_full_is_a_local_error_and_capacity_reports_room() -> None:
    net = Net(["a", "b"])
    a = net.cores["a"]
    assert a.capacity("b", "w") == FAST.window + FAST.channel_queue
    for _ in range(FAST.window + FAST.channel_queue):
        a.send("b", "w", b"x", 0)
    assert a.capacity("b", "w") == 0
    with pytest.raises(SendQueueFull, match="full"):
        a.send("b", "w", b"x", 0)
    a.send("b", "other", b"x", 0)  # another channel still has room


def test_caller_misuse() -> None:
    a = Net(["a", "b"]).cores["a"]
    with pytest.raises(ValueError, match="bytes"):
        a.send("b", "w", "text", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        a.send("b", "w", b"", 0, mode="exactly_once")
    with pytest.raises(ValueError, match="wait_if_full"):
        a.send("b", "w", b"", 0, wait_if_full=True)
    with pytest.raises(ValueError, match="outbox"):
        a.send("b", "w", b"", 0, msg_id=MessageId("a", 1, 1))
    with pytest.raises(ValueError, match="timeout_ms"):
        a.request("b", "w", b"", 0, timeout_ms=0)
    with pytest.raises(ValueError):
        DeliveryConfig(window=10, reorder_buffer=5)


def test_best_effort_is_sent_once_and_rejections_still_come_back() -> None:
    net = Net(["a", "b"])
    net.cores["b"].open_inbox("w", capacity=1)
    net.cores["a"].send("b", "w", b"1", 0, mode="best_effort")
    lost = net.cores["a"].send("b", "w", b"2", 0, mode="best_effort")
    nobody = net.cores["a"].send("b", "nobody", b"3", 0, mode="best_effort")
    net.run(1_000)
    assert [(e.payload, e.reliable) for e in net.take("b", Incoming)] == [(b"1", False)]
    assert [e.msg_id for e in net.take("a", Backpressure)] == [lost]
    assert [e.msg_id for e in net.take("a", UnknownAgent)] == [nobody]
    assert net.take("a", MessageDelivered) == []
    assert net.cores["a"].counters["retransmissions"] == 0


def test_local_delivery_and_local_request() -> None:
    net = Net(["a"])
    a = net.cores["a"]
    a.open_inbox("me", capacity=1)
    rid = a.request("a", "me", b"ping", 0, timeout_ms=100)
    net.pump("a")
    (req,) = net.take("a", Incoming)
    a.release("me")
    a.respond(req, b"pong", 1)
    a.send("a", "ghost", b"", 1)
    net.pump("a")
    assert net.take("a", ResponseReceived)[0].request_id == rid
    assert len(net.take("a", UnknownAgent)) == 1


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=12), max_leaves=40))
def test_garbage_is_counted_never_raised(frame: object) -> None:
    core = Delivery("n", cluster=C, epoch=1, rng=random.Random(1))
    core.receive("peer", frame, 0)
    core.receive("peer", [1, C, 40, [frame]], 0)
    core.receive("peer", [1, C, 41, [frame], [frame]], 0)
    assert core.counters["frames_received"] == 3


@settings(max_examples=int(__import__("os").environ.get("DELIVERY_EXAMPLES", "60")), deadline=None)
@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0.0, 0.6),
    dup=st.floats(0.0, 0.5),
    max_delay=st.integers(1, 200),
    sends=st.lists(st.tuples(st.sampled_from(["a", "c"]), st.sampled_from(["w1", "w2"]),
                             st.sampled_from([PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW]), st.integers(0, 300)),
                   min_size=1, max_size=60),
)
def test_exactly_once_fifo_under_any_loss_duplication_reordering(seed, loss, dup, max_delay, sends) -> None:
    """Whatever the schedule, once the network heals every message reaches its handler exactly once,
    FIFO per (sender node, agent, priority), and every sender sees exactly one MessageDelivered per message."""
    cfg = DeliveryConfig(initial_rto_ms=40, max_rto_ms=300, jitter=0.2, max_attempts=10_000, window=4,
                         channel_queue=200, reorder_buffer=4, channel_idle_ms=3_000_000)
    net = Net(["a", "b", "c"], seed=seed, loss=loss, dup=dup, delay=(1, max_delay), config=cfg)
    b = net.cores["b"]
    b.open_inbox("w1", capacity=10_000)
    b.open_inbox("w2", capacity=10_000)
    expected: dict[tuple[str, str, int], list[bytes]] = defaultdict(list)
    ids: dict[str, list[MessageId]] = defaultdict(list)
    t = 0
    for i, (src, agent, prio, gap) in enumerate(sends):
        t += gap
        net.run(t)
        payload = f"{src}-{i}".encode()
        ids[src].append(net.cores[src].send("b", agent, payload, net.now, priority=prio))
        expected[(src, agent, prio)].append(payload)
    net.run(t + 5_000)
    net.loss, net.dup = 0.0, 0.0  # the network heals: eventual delivery
    net.run(t + 60_000)
    got: dict[tuple[str, str, int], list[bytes]] = defaultdict(list)
    for e in net.take("b", Incoming):
        got[(e.sender_node, e.dest_agent, e.priority)].append(e.payload)
    assert got == expected
    for src in ("a", "c"):
        delivered = [e.msg_id for e in net.take(src, MessageDelivered)]
        assert sorted(delivered) == sorted(ids[src]) and len(set(delivered)) == len(delivered)
        assert [e for e in net.got[src] if not isinstance(e, MessageDelivered)] == []

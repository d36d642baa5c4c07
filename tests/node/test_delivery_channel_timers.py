"""One retransmission timer and one TTL timer per send channel (decision 0118): the timer heap does not
grow with the messages in flight, and retries and expiries still happen per message, on time."""

from __future__ import annotations

import random

from agentnode.delivery import Delivery, DeliveryConfig, Expired, Incoming, MessageDelivered

C = "test"
CFG = DeliveryConfig(initial_rto_ms=50, max_rto_ms=400, jitter=0.25, max_attempts=5, window=64, channel_queue=512,
                     channel_idle_ms=10_000)


def _pair() -> tuple[Delivery, Delivery]:
    a = Delivery("a", cluster=C, epoch=1, rng=random.Random(1), config=CFG)
    b = Delivery("b", cluster=C, epoch=1, rng=random.Random(2), config=CFG)
    a.member_up("b", "addr-b", 0)
    b.member_up("a", "addr-a", 0)
    b.open_inbox("x", capacity=10_000)
    return a, b


def _events(core: Delivery) -> list[object]:
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def test_timer_heap_stays_small_with_a_full_window_and_ttls() -> None:
    a, _ = _pair()
    for i in range(400):
        a.send("b", "x", b"%d" % i, i // 10, ttl_ms=5_000)
    assert len(a.messages_to_send()) > 0
    # 64 in flight, 336 queued, all with a TTL: one retry timer and one TTL timer for the channel
    # (plus re-arms for an earlier retry when jitter drew one), not 2 x 400 heap entries.
    assert len(a._timers) < 40


def test_lost_window_is_retransmitted_per_message_then_acked() -> None:
    a, b = _pair()
    for i in range(20):
        a.send("b", "x", b"%d" % i, i)
    a.messages_to_send()  # lost
    now = 0
    while a.counters["retransmissions"] < 20:
        now = a.get_timer()
        assert now is not None and now < 1_000
        a.handle_timer(now)
    assert a.counters["retransmissions"] == 20
    frames = a.messages_to_send()
    for f in frames:
        b.receive("a", f.frame, now)
    assert [e.payload for e in _events(b) if isinstance(e, Incoming)] == [b"%d" % i for i in range(20)]
    for f in b.messages_to_send():
        a.receive("b", f.frame, now)
    assert len([e for e in _events(a) if isinstance(e, MessageDelivered)]) == 20
    assert a.get_timer() == CFG.channel_idle_ms // 4  # nothing left to retry: only the idle sweep


def test_ttls_out_of_order_each_expire_on_time() -> None:
    a, _ = _pair()
    late = a.send("b", "x", b"late", 0, ttl_ms=300)
    early = a.send("b", "x", b"early", 0, ttl_ms=100)  # breaks the channel's expiry order
    a.messages_to_send()  # lost; the retries keep failing until the TTLs run out
    expired: list[tuple[int, object]] = []
    while len(expired) < 2:
        now = a.get_timer()
        assert now is not None and now <= 400
        a.handle_timer(now)
        a.messages_to_send()
        expired += [(now, e.msg_id) for e in _events(a) if isinstance(e, Expired)]
    assert expired == [(100, early), (300, late)]

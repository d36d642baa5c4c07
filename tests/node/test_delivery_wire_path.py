"""The envelope-free receive path (decision 0119): `batch_wire` accepts and refuses exactly what `decode`
does, and `fast_constructor` builds the same frozen objects as the dataclass constructor."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentnode.agent_messages import (
    FLAG_DURABLE,
    FLAG_WAIT_IF_FULL,
    Acks,
    AckEntry,
    Batch,
    Envelope,
    FrameError,
    MessageId,
    batch_wire,
    decode,
    encode,
    fast_constructor,
)
from agentnode.agents import Message
from agentnode.delivery import Delivery, Incoming, MessageDelivered

C = "test"


def _env(**changes: object) -> Envelope:
    fields = dict(session=5, seq=3, floor=2, msg_id=MessageId("a", 1, 9), kind=0, dest_agent="w", src_agent="s",
                  priority=1, ttl_ms=0, flags=0, correlation=None, payload=b"p")
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_batch_wire_matches_decode_on_a_valid_frame() -> None:
    batch = Batch((_env(), _env(seq=4, kind=2, correlation=MessageId("b", 2, 1))),
                  Acks((AckEntry("x", 1, 7, 3, (5,)),), ()))
    frame = msgpack.unpackb(msgpack.packb(encode(batch, C), use_bin_type=True), raw=False)
    envelopes, acks = batch_wire(frame, C)
    assert [Envelope(*e) for e in envelopes] == list(decode(frame, C).envelopes)  # type: ignore[union-attr]
    assert type(envelopes[0][3]) is MessageId and type(envelopes[1][10]) is MessageId
    assert acks == batch.acks


@pytest.mark.parametrize("bad", [
    {"seq": 1, "floor": 2},  # floor above seq
    {"session": 0},  # a channel position without a session
    {"kind": 2},  # a response without a correlation id
    {"payload": "text"},
    {"msg_id": ["", 1, 1]},
    {"msg_id": ["a", -1, 1]},
    {"priority": 9},
])
def test_batch_wire_refuses_what_decode_refuses(bad: dict[str, object]) -> None:
    wire = encode(Batch((_env(),)), C)
    fields = ["session", "seq", "floor", "msg_id", "kind", "dest_agent", "src_agent", "priority", "ttl_ms", "flags",
              "correlation", "payload"]
    for name, value in bad.items():
        wire[3][0][fields.index(name)] = value
    frame = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
    with pytest.raises(FrameError) as by_decode:
        decode(frame, C)
    with pytest.raises(FrameError) as by_wire:
        batch_wire(frame, C)
    assert by_wire.value.counter == by_decode.value.counter == "dropped_malformed"


def test_fast_constructor_builds_equal_frozen_objects() -> None:
    mid = MessageId("a", 1, 2)
    for cls, args in [(Incoming, (mid, "n", "s", "d", 1, 0, b"x", None, True, False)),
                      (MessageDelivered, (mid, "n", "d")),
                      (Message, (mid, b"x", "d", "s", "n", "message", 1, ""))]:
        fast = fast_constructor(cls)(*args)
        assert fast == cls(*args) and hash(fast) == hash(cls(*args)) and type(fast) is cls
        with pytest.raises(AttributeError):
            fast.msg_id = MessageId("b", 1, 1)  # still frozen


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _WithWeakref:
    a: int
    b: str


@dataclass(frozen=True, slots=True)
class _Derived(_WithWeakref):
    c: int


def test_fast_constructor_falls_back_when_the_layout_differs() -> None:
    """A class whose slots a plain twin cannot match (a `__weakref__` slot, inherited slots) is built
    through its slot descriptors: the same object either way."""
    for cls, args in [(_WithWeakref, (1, "x")), (_Derived, (1, "x", 2))]:
        make = fast_constructor(cls)
        assert "twin" not in make.__code__.co_names
        fast = make(*args)
        assert fast == cls(*args) and type(fast) is cls
        with pytest.raises(AttributeError):
            fast.a = 5  # type: ignore[misc]
    assert "twin" in fast_constructor(Incoming).__code__.co_names  # the common case takes the twin


def test_fast_constructor_refuses_classes_that_validate() -> None:
    from agentnode.delivery import DeliveryConfig

    with pytest.raises(TypeError, match="__post_init__"):
        fast_constructor(DeliveryConfig)


def test_acks_in_wire_form_decode_like_encoded_acks() -> None:
    from agentnode.agent_messages import REASON_EXPIRED, RejectEntry, acks_frame, batch_frame

    entries = [["w", 1, 7, 3, [5, 6]], ["v", 0, 2, 9, []]]
    rejects = [RejectEntry(MessageId("a", 1, 4), "w", 1, 7, 4, REASON_EXPIRED, "late")]
    expected = Acks((AckEntry("w", 1, 7, 3, (5, 6)), AckEntry("v", 0, 2, 9, ())), tuple(rejects))
    for frame in (acks_frame(entries, rejects, C), batch_frame([], (entries, rejects), C)):
        wire = msgpack.unpackb(msgpack.packb(frame, use_bin_type=True), raw=False)
        got = decode(wire, C)
        assert (got if isinstance(got, Acks) else got.acks) == expected  # type: ignore[union-attr]
    bad = acks_frame([["w", 1, 7, 3, "x"]], [], C)
    with pytest.raises(FrameError):
        decode(bad, C)


# -- the in-order run path (`Delivery._consume_run`) against the general per-envelope path -----------------


class _PerEnvelope(Delivery):
    """The receive path with the run loop switched off: every envelope through `_consume`."""

    def _consume_run(self, sender, envelopes, start, rc, now_ms):  # type: ignore[no-untyped-def]
        return start


def _receiver(cls: type[Delivery], capacity: dict[str, int]) -> Delivery:
    d = cls("r", cluster=C, epoch=1, rng=random.Random(1))
    d.member_up("s", "s:1", 0)
    for agent, cap in capacity.items():
        d.open_inbox(agent, cap)
    return d


def _wire_env(session: int, seq: int, floor: int, counter: int, kind: int, dest: str, priority: int, flags: int,
              ttl: int) -> list[object]:
    return [session, seq, floor, ["s", 1, counter], kind, dest, "src", priority, ttl, flags, None, b"p%d" % seq]


def _observe(d: Delivery) -> tuple[object, ...]:
    events = []
    while (e := d.next_event()) is not None:
        events.append(e)
    frames = [o.frame for o in d.messages_to_send()]
    return events, frames, dict(d.counters), {a: d.inbox_size(a) for a in ("w", "v", "gone")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_run_path_gives_the_outcomes_of_the_per_envelope_path(data: st.DataObject) -> None:
    """Frames of in-order, reordered, duplicate, durable, request and rejected envelopes over two agents
    with small inboxes: the run path yields the same events, acks, rejects, counters and inbox sizes."""
    capacity = {"w": data.draw(st.integers(1, 12)), "v": data.draw(st.integers(1, 12))}
    fast, slow = _receiver(Delivery, capacity), _receiver(_PerEnvelope, capacity)
    next_seq = {("w", 1): 1, ("v", 1): 1, ("w", 0): 1, ("gone", 1): 1}
    counter = 0
    sent: list[list[object]] = []
    for _ in range(data.draw(st.integers(1, 6))):
        envs: list[list[object]] = []
        for _ in range(data.draw(st.integers(1, 14))):
            choice = data.draw(st.integers(0, 9))
            if choice == 0 and sent:  # a retransmission (the same envelope again)
                envs.append(list(data.draw(st.sampled_from(sent))))
                continue
            key = data.draw(st.sampled_from(sorted(next_seq)))
            seq = next_seq[key]
            if data.draw(st.booleans()):
                next_seq[key] = seq + 1
            else:  # a gap: this one arrives before the one it skips
                seq += 1
                next_seq[key] = seq + 1 if data.draw(st.booleans()) else seq - 1
            counter += 1
            flags = data.draw(st.sampled_from([0, FLAG_DURABLE, FLAG_WAIT_IF_FULL, FLAG_DURABLE | FLAG_WAIT_IF_FULL]))
            durable_counter = data.draw(st.integers(1, 4)) if flags & FLAG_DURABLE and data.draw(st.booleans()) else counter
            env = _wire_env(7, max(1, seq), 1, durable_counter, data.draw(st.sampled_from([0, 0, 0, 1])), key[0],
                            key[1], flags, data.draw(st.sampled_from([0, 50])))
            envs.append(env)
            sent.append(env)
        now = data.draw(st.integers(0, 100))
        for d in (fast, slow):
            frame = msgpack.unpackb(msgpack.packb([1, C, 40, [list(e) for e in envs]], use_bin_type=True), raw=False)
            frame[3] = [[*e[:3], list(e[3]), *e[4:]] for e in frame[3]]
            d.receive("s", frame, now)
        assert _observe(fast) == _observe(slow)
        for agent in ("w", "v"):
            if data.draw(st.booleans()):
                k = data.draw(st.integers(0, 5))
                fast.release(agent, k)
                slow.release(agent, k)

"""The envelope-free receive path (decision 0119): `batch_wire` accepts and refuses exactly what `decode`
does, and `fast_constructor` builds the same frozen objects as the dataclass constructor."""

from __future__ import annotations

import msgpack
import pytest

from agentnode.agent_messages import (
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
from agentnode.delivery import Incoming, MessageDelivered

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

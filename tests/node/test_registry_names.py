"""Registry lookups by name: a leased name answers its holder only (markers from node/names.py)."""

from __future__ import annotations

import random

import msgpack

from agentnode.names import NAME_MARKER_KEY, marker_of
from agentnode.registry import Registry

CLUSTER = "test"


def _pair() -> tuple[Registry, Registry]:
    a = Registry("na", cluster=CLUSTER, epoch=1, rng=random.Random(1))
    b = Registry("nb", cluster=CLUSTER, epoch=1, rng=random.Random(2))
    a.member_up("nb", "addr-b", 0)
    b.member_up("na", "addr-a", 0)
    return a, b


def _exchange(a: Registry, b: Registry, now: int) -> None:
    """Publish both sides' changes and deliver every frame until quiet."""
    for _ in range(10):
        a.handle_timer(now)
        b.handle_timer(now)
        moved = False
        for src, dst, sender in ((a, b, "na"), (b, a, "nb")):
            for out in src.messages_to_send():
                dst.receive(sender, msgpack.unpackb(msgpack.packb(out.frame, use_bin_type=True), raw=False), now)
                moved = True
        if not moved:
            return


def _names(r: Registry, name: str) -> list[str]:
    return [e.record.agent_id for e in r.find(name=name, healthy_only=False)]


def test_a_confirmed_holder_hides_every_other_agent_of_that_name_and_the_newest_epoch_wins() -> None:
    a, b = _pair()
    a.register("alice@na", 0, name="alice", metadata={NAME_MARKER_KEY: marker_of("confirmed", 3)})
    b.register("alice@nb", 0, name="alice", metadata={NAME_MARKER_KEY: marker_of("unconfirmed", 0)})
    b.register("alice-plain@nb", 0, name="alice")
    _exchange(a, b, 100)
    assert _names(a, "alice") == _names(b, "alice") == ["alice@na"]
    # a newer grant elsewhere (the old holder has not yet heard it lost): the newest grant answers
    b.update("alice@nb", 200, metadata={NAME_MARKER_KEY: marker_of("confirmed", 4)})
    _exchange(a, b, 300)
    assert _names(a, "alice") == _names(b, "alice") == ["alice@nb"]
    # the old holder learns it lost the name: it stops advertising it, the holder stays the answer
    a.update("alice@na", 400, metadata={NAME_MARKER_KEY: marker_of("lost", 0)})
    b.deregister("alice@nb", 400)
    _exchange(a, b, 500)
    # no confirmed holder left: unconfirmed and plain agents of the name answer, the lost one never
    assert _names(a, "alice") == _names(b, "alice") == ["alice-plain@nb"]
    assert [e.record.agent_id for e in a.find(healthy_only=False)] == ["alice-plain@nb", "alice@na"]


def test_lookup_by_name_follows_renames_deregistration_and_node_failure() -> None:
    a, b = _pair()
    b.register("x", 0, name="bob", capabilities=["chat"], metadata={NAME_MARKER_KEY: marker_of("confirmed", 1)})
    _exchange(a, b, 100)
    assert _names(a, "bob") == ["x"]
    assert [e.record.agent_id for e in a.find("chat", name="bob")] == ["x"]
    assert a.find("other", name="bob") == []
    b.update("x", 200, name="robert")
    _exchange(a, b, 300)
    assert _names(a, "bob") == [] and _names(a, "robert") == ["x"]
    a.member_down("nb", 400)
    assert _names(a, "robert") == []
    a.member_up("nb", "addr-b", 500)
    assert _names(a, "robert") == ["x"]
    b.deregister("x", 600)
    _exchange(a, b, 700)
    assert _names(a, "robert") == [] and a._by_name == {}

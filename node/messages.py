"""Membership wire messages and their codec: frozen messages in, plain msgpack-ready lists out.

A frame is a list ``[VERSION, cluster, type, *fields]``. The cluster name travels in every frame so
two clusters that can reach each other never merge. `decode` validates everything a peer could
get wrong and raises `FrameError` (with the counter name to bump); it never raises anything else.

Piggybacked membership updates are `Update` named tuples rather than dataclasses: they are the
most numerous objects on the hot path, and a tuple is already msgpack's array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

__sans_io__ = True

__all__ = [
    "Ack",
    "FrameError",
    "Gossip",
    "Message",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "PushPullReply",
    "Update",
    "KIND_ALIVE",
    "KIND_DEAD",
    "KIND_LEFT",
    "KIND_SUSPECT",
    "PROTOCOL_VERSION",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; frames of other versions are counted and dropped."""

KIND_ALIVE = 0
KIND_SUSPECT = 1
KIND_DEAD = 2
KIND_LEFT = 3

MAX_ID_CHARS = 128
"""Longest node id accepted from a peer."""
MAX_ADDRESS_CHARS = 300
"""Longest "host:port" accepted from a peer (a DNS name is at most 253 characters)."""
MAX_CLUSTER_CHARS = 128
"""Longest cluster name."""
MAX_INCARNATION = 2**63 - 1
"""Incarnations and sequence numbers are unsigned 63-bit integers."""
MAX_UPDATES_PER_FRAME = 64
"""Piggybacked updates accepted on one ping/ack/gossip frame."""
MAX_STATES_PER_PUSH_PULL = 20_000
"""Member records accepted in one push-pull (memberlist caps push-pull state at 20 MiB)."""
MAX_METADATA_ENTRIES = 32
"""Tags per member."""
MAX_METADATA_CHARS = 512
"""Longest tag key or value."""

_TYPE_PING = 1
_TYPE_ACK = 2
_TYPE_PING_REQ = 3
_TYPE_NACK = 4
_TYPE_GOSSIP = 5
_TYPE_PUSH_PULL = 6
_TYPE_PUSH_PULL_REPLY = 7


class FrameError(Exception):
    """A peer sent a frame we cannot use; `counter` names the drop counter to bump."""

    def __init__(self, counter: str, detail: str) -> None:
        super().__init__(detail)
        self.counter = counter


class Update(NamedTuple):
    """One membership fact: `node_id` is in state `kind` at `incarnation` (SWIM alive/suspect/confirm)."""

    kind: int
    """KIND_ALIVE, KIND_SUSPECT, KIND_DEAD or KIND_LEFT."""
    node_id: str
    """Whom it is about."""
    incarnation: int
    """The incarnation it refers to."""
    address: str
    """Where that node listens (known to the sender)."""
    origin: str
    """Who accused (suspect), who declared (dead); "" otherwise."""
    metadata: Mapping[str, str] | None
    """Tags, carried on alive updates only."""


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM ping: answer with `Ack(seq)` to `from_address`."""

    seq: int
    """Sender's probe sequence number."""
    from_address: str
    """Where the sender listens."""
    updates: tuple[Update, ...]
    """Piggybacked gossip."""


@dataclass(frozen=True, slots=True)
class Ack:
    """SWIM ack for `Ping(seq)`; relayed by a ping-req helper with the origin's `seq`."""

    seq: int
    """The sequence number being acknowledged."""
    updates: tuple[Update, ...]
    """Piggybacked gossip."""


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM ping-req: ping `target_id` for me and relay its ack; send a `Nack` if it stays silent."""

    seq: int
    """Origin's probe sequence number, echoed in the relayed `Ack`/`Nack`."""
    target_id: str
    """Node to probe."""
    target_address: str
    """Where it listens."""
    from_address: str
    """Where the origin listens."""


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard nack: a ping-req helper got no ack in time (tells the origin that the helper itself works)."""

    seq: int
    """Origin's probe sequence number."""


@dataclass(frozen=True, slots=True)
class Gossip:
    """Dedicated gossip round carrying queued updates (memberlist gossip())."""

    updates: tuple[Update, ...]
    """The updates."""


@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy / join: here is my full state, send me yours (memberlist pushPull)."""

    join: bool
    """True when the sender is joining through a seed."""
    from_address: str
    """Where the sender listens."""
    states: tuple[Update, ...]
    """Every member the sender knows, itself included."""


@dataclass(frozen=True, slots=True)
class PushPullReply:
    """Answer to `PushPull`: the receiver's full state."""

    states: tuple[Update, ...]
    """Every member the replier knows, itself included."""


Message = Union[Ping, Ack, PingReq, Nack, Gossip, PushPull, PushPullReply]


def encode(message: Message, cluster: str) -> list[Any]:
    """The wire form of `message`: a list of msgpack-native values."""
    t = type(message)
    if t is Ping:
        return [PROTOCOL_VERSION, cluster, _TYPE_PING, message.seq, message.from_address, message.updates]  # type: ignore[union-attr]
    if t is Ack:
        return [PROTOCOL_VERSION, cluster, _TYPE_ACK, message.seq, message.updates]  # type: ignore[union-attr]
    if t is Gossip:
        return [PROTOCOL_VERSION, cluster, _TYPE_GOSSIP, message.updates]  # type: ignore[union-attr]
    if t is PingReq:
        m: Any = message
        return [PROTOCOL_VERSION, cluster, _TYPE_PING_REQ, m.seq, m.target_id, m.target_address, m.from_address]
    if t is Nack:
        return [PROTOCOL_VERSION, cluster, _TYPE_NACK, message.seq]  # type: ignore[union-attr]
    if t is PushPull:
        m = message
        return [PROTOCOL_VERSION, cluster, _TYPE_PUSH_PULL, m.join, m.from_address, m.states]
    if t is PushPullReply:
        return [PROTOCOL_VERSION, cluster, _TYPE_PUSH_PULL_REPLY, message.states]  # type: ignore[union-attr]
    raise TypeError(f"not a membership message: {message!r}")


def decode(frame: Any, cluster: str) -> Message:
    """Validate `frame` and return its typed message; raise `FrameError` for anything unusable."""
    if type(frame) is not list and type(frame) is not tuple:
        raise FrameError("dropped_malformed", "frame is not an array")
    if len(frame) < 3:
        raise FrameError("dropped_malformed", "frame too short")
    if frame[0] != PROTOCOL_VERSION or type(frame[0]) is not int:
        raise FrameError("dropped_version", f"unknown protocol version {frame[0]!r}")
    if frame[1] != cluster:
        raise FrameError("dropped_wrong_cluster", "frame from another cluster")
    decoder = _DECODERS.get(frame[2]) if type(frame[2]) is int else None
    if decoder is None:
        raise FrameError("dropped_malformed", f"unknown message type {frame[2]!r}")
    try:
        return decoder(frame)
    except FrameError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        raise FrameError("dropped_malformed", f"bad field: {exc}") from None


def _seq(value: Any) -> int:
    if type(value) is not int or value < 0 or value > MAX_INCARNATION:
        raise FrameError("dropped_malformed", "bad sequence number")
    return value


def _text(value: Any, limit: int, allow_empty: bool = False) -> str:
    if type(value) is not str or len(value) > limit or (not value and not allow_empty):
        raise FrameError("dropped_malformed", "bad text field")
    return value


_NO_METADATA: dict[str, str] = {}
"""Shared empty tags (never mutated)."""


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not value and type(value) is dict:
        return _NO_METADATA
    if type(value) is not dict or len(value) > MAX_METADATA_ENTRIES:
        raise FrameError("dropped_malformed", "bad metadata")
    for k, v in value.items():
        if type(k) is not str or type(v) is not str or len(k) > MAX_METADATA_CHARS or len(v) > MAX_METADATA_CHARS:
            raise FrameError("dropped_malformed", "bad metadata entry")
    return dict(value)


def _update(raw: Any) -> Update:
    if (type(raw) is not list and not isinstance(raw, tuple)) or len(raw) != 6:
        raise FrameError("dropped_malformed", "bad update")
    kind, node_id, incarnation, address, origin, metadata = raw
    if type(kind) is not int or not 0 <= kind <= KIND_LEFT:
        raise FrameError("dropped_malformed", "bad update kind")
    if type(node_id) is not str or not 0 < len(node_id) <= MAX_ID_CHARS:
        raise FrameError("dropped_malformed", "bad node id")
    if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
        raise FrameError("dropped_malformed", "bad incarnation")
    if type(address) is not str or len(address) > MAX_ADDRESS_CHARS:
        raise FrameError("dropped_malformed", "bad address")
    if type(origin) is not str or len(origin) > MAX_ID_CHARS:
        raise FrameError("dropped_malformed", "bad origin")
    if metadata is not None:
        metadata = _metadata(metadata)
        return _new_update(Update, (kind, node_id, incarnation, address, origin, metadata))
    if type(raw) is Update:
        return raw
    return _new_update(Update, raw)


_new_update = tuple.__new__


def _updates(raw: Any, limit: int) -> tuple[Update, ...]:
    if type(raw) is not list and type(raw) is not tuple:
        raise FrameError("dropped_malformed", "updates is not an array")
    if len(raw) > limit:
        raise FrameError("dropped_malformed", "too many updates")
    if not raw:
        return ()
    # The hot path of a join (a push-pull carries every member): `_update`'s checks inlined into one
    # loop, tags-less and empty-tag updates reuse the decoded list; anything unusual goes to `_update`.
    out = []
    append = out.append
    new = _new_update
    no_metadata = _NO_METADATA
    for u in raw:
        if type(u) is list and len(u) == 6:
            kind, node_id, incarnation, address, origin, metadata = u
            if (type(kind) is int and 0 <= kind <= KIND_LEFT
                    and type(node_id) is str and 0 < len(node_id) <= MAX_ID_CHARS
                    and type(incarnation) is int and 0 <= incarnation <= MAX_INCARNATION
                    and type(address) is str and len(address) <= MAX_ADDRESS_CHARS
                    and type(origin) is str and len(origin) <= MAX_ID_CHARS):
                if metadata is None:
                    append(new(Update, u))
                    continue
                if type(metadata) is dict and not metadata:
                    append(new(Update, (kind, node_id, incarnation, address, origin, no_metadata)))
                    continue
        append(_update(u))
    return tuple(out)


def _exact(frame: Any, n: int) -> None:
    if len(frame) != n:
        raise FrameError("dropped_malformed", "wrong field count")


def _decode_ping(f: Any) -> Ping:
    _exact(f, 6)
    return Ping(_seq(f[3]), _text(f[4], MAX_ADDRESS_CHARS), _updates(f[5], MAX_UPDATES_PER_FRAME))


def _decode_ack(f: Any) -> Ack:
    _exact(f, 5)
    return Ack(_seq(f[3]), _updates(f[4], MAX_UPDATES_PER_FRAME))


def _decode_ping_req(f: Any) -> PingReq:
    _exact(f, 7)
    return PingReq(_seq(f[3]), _text(f[4], MAX_ID_CHARS), _text(f[5], MAX_ADDRESS_CHARS), _text(f[6], MAX_ADDRESS_CHARS))


def _decode_nack(f: Any) -> Nack:
    _exact(f, 4)
    return Nack(_seq(f[3]))


def _decode_gossip(f: Any) -> Gossip:
    _exact(f, 4)
    return Gossip(_updates(f[3], MAX_UPDATES_PER_FRAME))


def _decode_push_pull(f: Any) -> PushPull:
    _exact(f, 6)
    if type(f[3]) is not bool:
        raise FrameError("dropped_malformed", "bad join flag")
    return PushPull(f[3], _text(f[4], MAX_ADDRESS_CHARS), _updates(f[5], MAX_STATES_PER_PUSH_PULL))


def _decode_push_pull_reply(f: Any) -> PushPullReply:
    _exact(f, 4)
    return PushPullReply(_updates(f[3], MAX_STATES_PER_PUSH_PULL))


_DECODERS = {
    _TYPE_PING: _decode_ping,
    _TYPE_ACK: _decode_ack,
    _TYPE_PING_REQ: _decode_ping_req,
    _TYPE_NACK: _decode_nack,
    _TYPE_GOSSIP: _decode_gossip,
    _TYPE_PUSH_PULL: _decode_push_pull,
    _TYPE_PUSH_PULL_REPLY: _decode_push_pull_reply,
}

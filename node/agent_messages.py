"""Registry, messaging and broadcast wire messages and their codec, in the style of `agentnode.messages`.

A frame is a list ``[VERSION, cluster, type, *fields]`` like a membership frame; the types used here
start at `AGENT_TYPE_MIN` so one dispatcher can tell the two families apart (`is_agent_frame`).
`decode` validates everything a peer could get wrong and raises `FrameError` (with the counter name
to bump); it never raises anything else. Nothing is unpickled; payloads are opaque bytes.

Message ids are `MessageId(origin, epoch, counter)`: the sending node, its boot epoch (strictly
greater after every restart) and a per-epoch counter. No uuid, no randomness: ids replay exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Union

from agentnode.messages import MAX_CLUSTER_CHARS, MAX_ID_CHARS, MAX_INCARNATION, PROTOCOL_VERSION, FrameError

__sans_io__ = True

__all__ = [
    "AGENT_TYPE_MAX",
    "AGENT_TYPE_MIN",
    "AckEntry",
    "Acks",
    "acks_frame",
    "AgentRecord",
    "AgentSkill",
    "AgentMessage",
    "Batch",
    "batch_frame",
    "BroadcastDisconnect",
    "BroadcastGossip",
    "BroadcastGraft",
    "BroadcastIHave",
    "BroadcastNeighbor",
    "BroadcastNeighborReply",
    "BroadcastPrune",
    "Envelope",
    "FrameError",
    "KIND_DATA",
    "KIND_ERROR",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "MessageId",
    "Outgoing",
    "PRIORITIES",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "REASONS",
    "REASON_BACKPRESSURE",
    "REASON_BUSY",
    "REASON_EXPIRED",
    "REASON_UNKNOWN_AGENT",
    "RegistryDigest",
    "RegistrySet",
    "RejectEntry",
    "STATUS_HEALTHY",
    "STATUS_UNHEALTHY",
    "STATUSES",
    "decode",
    "batch_wire",
    "encode",
    "envelope_wire",
    "fast_constructor",
    "is_agent_frame",
]

AGENT_TYPE_MIN = 32
"""Frame types 32..63 belong to this module; membership uses 1..7."""
AGENT_TYPE_MAX = 63

# -- limits (peer data above these is counted and dropped) ---------------------------------------

MAX_AGENT_ID_CHARS = 128
"""Longest agent id or name."""
MAX_CAPABILITIES = 32
"""Capabilities per agent."""
MAX_CAPABILITY_CHARS = 128
"""Longest capability or topic name."""
MAX_TOPICS = 64
"""Topic subscriptions per agent."""
MAX_METADATA_ENTRIES = 32
"""Metadata entries per agent (same bound as member tags)."""
MAX_METADATA_CHARS = 512
"""Longest metadata key or value."""
MAX_DESCRIPTION_CHARS = 2048
"""Longest agent or skill description (A2A AgentCard.description)."""
MAX_SKILLS = 32
"""Skills per agent (A2A AgentCard.skills)."""
MAX_TAGS = 16
"""Tags per skill."""
MAX_AGENTS_PER_NODE = 1024
"""Agents one node may host; its record set travels whole, so this bounds a RegistrySet."""
MAX_DIGEST_ENTRIES = 20_000
"""Owners in one registry digest (memberlist caps push-pull state similarly)."""
MAX_LOAD = 1_000_000
"""Load is a non-negative integer (for example outstanding requests or permille CPU)."""
MAX_PAYLOAD_BYTES = 1 << 20
"""Largest message or broadcast payload (1 MiB; frames are capped by the transport too)."""
MAX_ENVELOPES_PER_BATCH = 1024
"""Messages in one data frame."""
MAX_ACK_ENTRIES = 4096
"""Channel acks or rejects in one frame."""
MAX_SELECTIVE_ACKS = 64
"""Out-of-order sequence numbers acknowledged on top of the cumulative ack."""
MAX_IHAVE_ENTRIES = 1024
"""Message ids announced in one IHAVE frame."""
MAX_ERROR_CHARS = 4096
"""Longest error text carried back (handler error, reject detail)."""
MAX_TTL_MS = 7 * 24 * 3600 * 1000
"""Longest time-to-live a message may carry (one week)."""
MAX_HOPS = 255
"""Broadcast hop counter ceiling."""

KIND_DATA = 0
"""One-way message."""
KIND_REQUEST = 1
"""Request: the receiver answers with KIND_RESPONSE or KIND_ERROR carrying `correlation`."""
KIND_RESPONSE = 2
"""Answer to a request; payload is the handler's result."""
KIND_ERROR = 3
"""Answer to a request whose handler raised; payload is the UTF-8 error text."""

PRIORITY_HIGH = 0
PRIORITY_NORMAL = 1
PRIORITY_LOW = 2
PRIORITIES = (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW)
"""Priority classes, most urgent first; each has its own FIFO channel."""

FLAG_DURABLE = 1
"""The message comes from the sender's durable outbox; its id is stable across sender restarts."""
FLAG_WAIT_IF_FULL = 2
"""If the receiver's inbox is full, keep retrying until the deadline instead of failing at once."""
_FLAGS_ALL = FLAG_DURABLE | FLAG_WAIT_IF_FULL

REASON_UNKNOWN_AGENT = 1
"""No agent with that id is registered on the receiving node."""
REASON_BACKPRESSURE = 2
"""The receiving agent's inbox was full (message consumed, not delivered)."""
REASON_EXPIRED = 3
"""Its time-to-live ran out before a handler took it."""
REASON_BUSY = 4
"""Inbox full and the sender asked to wait: not consumed, retransmit later."""
REASONS = {
    REASON_UNKNOWN_AGENT: "unknown_agent",
    REASON_BACKPRESSURE: "backpressure",
    REASON_EXPIRED: "expired",
    REASON_BUSY: "busy",
}

STATUS_HEALTHY = 0
STATUS_UNHEALTHY = 1
STATUSES = {STATUS_HEALTHY: "healthy", STATUS_UNHEALTHY: "unhealthy"}

_T_REGISTRY_DIGEST = 32
_T_REGISTRY_SET = 33
_T_BATCH = 40
_T_ACKS = 41
_T_GOSSIP = 48
_T_IHAVE = 49
_T_GRAFT = 50
_T_PRUNE = 51
_T_NEIGHBOR = 52
_T_NEIGHBOR_REPLY = 53
_T_DISCONNECT = 54


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame to send; the same fields as `agentnode.core.Outgoing`, so one runtime pump drains both.

    Defined here rather than imported so that `core.py` can import the agent cores without a cycle.
    """

    address: str
    """"host:port" where the peer listens (learned from membership)."""
    peer_id: str | None
    """The node id the peer must prove."""
    frame: Any
    """One msgpack-serialisable value."""


class MessageId(NamedTuple):
    """Globally unique message id: origin node, its boot epoch, a per-epoch counter."""

    origin: str
    epoch: int
    counter: int


@dataclass(frozen=True, slots=True)
class AgentSkill:
    """One skill of an agent (A2A AgentSkill: id, name, description, tags)."""

    id: str
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What the cluster knows about one agent. Immutable; a change is a new record."""

    agent_id: str
    """Unique in the cluster."""
    name: str
    """Human-readable name (unique names are leased through the Raft group, not here)."""
    node_id: str
    """The node hosting it; only that node publishes this record."""
    capabilities: tuple[str, ...] = ()
    """Sorted capability names; lookups by capability use these."""
    metadata: tuple[tuple[str, str], ...] = ()
    """Sorted (key, value) pairs."""
    description: str = ""
    """A2A AgentCard.description."""
    version: str = ""
    """A2A AgentCard.version."""
    skills: tuple[AgentSkill, ...] = ()
    """A2A AgentCard.skills."""
    topics: tuple[str, ...] = ()
    """Sorted topics the agent subscribes to (replicated with the record)."""
    status: int = STATUS_HEALTHY
    """STATUS_HEALTHY or STATUS_UNHEALTHY: the agent's own health, not its node's membership state."""
    load: int = 0
    """Non-negative load figure published by the hosting node."""

    @property
    def meta(self) -> dict[str, str]:
        """Metadata as a dict."""
        return dict(self.metadata)

    @property
    def healthy(self) -> bool:
        return self.status == STATUS_HEALTHY


@dataclass(frozen=True, slots=True)
class RegistryDigest:
    """Anti-entropy: the (owner, epoch, version) of every record set the sender holds."""

    reply: bool
    """True when the receiver should answer with its own digest (first leg of a push-pull)."""
    entries: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class RegistrySet:
    """The whole record set of one owner node at (epoch, version); newer replaces older."""

    owner: str
    epoch: int
    version: int
    records: tuple[AgentRecord, ...]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message inside a `Batch`. Reliable messages travel on a channel (sender node, dest agent, priority)."""

    session: int
    """Channel incarnation, unique and increasing per sender node (epoch-based); 0 for best-effort."""
    seq: int
    """Channel sequence number (1, 2, ...); 0 for best-effort messages, which have no channel."""
    floor: int
    """Lowest seq the sender still tracks: the receiver may skip missing seqs below it (RFC 3758 FORWARD-TSN)."""
    msg_id: MessageId
    kind: int
    """KIND_DATA, KIND_REQUEST, KIND_RESPONSE or KIND_ERROR."""
    dest_agent: str
    """Receiving agent ("" for a response to a node-level caller)."""
    src_agent: str
    """Sending agent ("" for a node-level caller)."""
    priority: int
    ttl_ms: int
    """Remaining time to live when sent; 0 means none."""
    flags: int
    """FLAG_DURABLE | FLAG_WAIT_IF_FULL."""
    correlation: MessageId | None
    """For responses and errors: the request's id."""
    payload: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages from one node to another, most urgent priority first."""

    envelopes: tuple[Envelope, ...]
    acks: Acks | None = None
    """Acknowledgements and rejects for the receiver's own channels, piggybacked so that a response and the
    ack of its request travel in one frame (decision 0115); None when there are none. Applied first."""


class AckEntry(NamedTuple):
    """Cumulative (plus selective) acknowledgement of one channel."""

    dest_agent: str
    priority: int
    session: int
    upto: int
    """Every seq <= upto was consumed (delivered or rejected)."""
    selective: tuple[int, ...]
    """Seqs above `upto` already buffered."""


class RejectEntry(NamedTuple):
    """A message the receiver did not hand to a handler, and why."""

    msg_id: MessageId
    dest_agent: str
    priority: int
    session: int
    seq: int
    """Channel seq; 0 for best-effort or for a drop after acceptance (late notice)."""
    reason: int
    detail: str


@dataclass(frozen=True, slots=True)
class Acks:
    """Acknowledgements and rejects together, so a reject is never lost while its covering ack arrives."""

    entries: tuple[AckEntry, ...]
    rejects: tuple[RejectEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class BroadcastGossip:
    """Plumtree eager push (GOSSIP): the message itself."""

    msg_id: MessageId
    topic: str
    """"" for a broadcast to every node, else the topic name."""
    payload: bytes
    hops: int


@dataclass(frozen=True, slots=True)
class BroadcastIHave:
    """Plumtree lazy push (IHAVE): ids of messages the sender has, with their hop counts."""

    entries: tuple[tuple[MessageId, int], ...]


@dataclass(frozen=True, slots=True)
class BroadcastGraft:
    """Plumtree GRAFT: make our link eager again and send these messages."""

    msg_ids: tuple[MessageId, ...]


@dataclass(frozen=True, slots=True)
class BroadcastPrune:
    """Plumtree PRUNE: the link is redundant; make it lazy."""


@dataclass(frozen=True, slots=True)
class BroadcastNeighbor:
    """HyParView NEIGHBOR: please add me to your active view."""

    urgent: bool
    """True when the sender has no active peer (HyParView high priority: must be accepted)."""


@dataclass(frozen=True, slots=True)
class BroadcastNeighborReply:
    accepted: bool


@dataclass(frozen=True, slots=True)
class BroadcastDisconnect:
    """HyParView DISCONNECT: I dropped you from my active view."""


AgentMessage = Union[
    RegistryDigest, RegistrySet, Batch, Acks, BroadcastGossip, BroadcastIHave, BroadcastGraft,
    BroadcastPrune, BroadcastNeighbor, BroadcastNeighborReply, BroadcastDisconnect,
]


def is_agent_frame(frame: Any) -> bool:
    """True when `frame` looks like one of ours (so a dispatcher can route it here)."""
    return (
        (type(frame) is list or type(frame) is tuple)
        and len(frame) >= 3
        and type(frame[2]) is int
        and AGENT_TYPE_MIN <= frame[2] <= AGENT_TYPE_MAX
    )


# -- encode -----------------------------------------------------------------------------------------


def _record_wire(r: AgentRecord) -> list[Any]:
    return [
        r.agent_id, r.name, r.node_id, list(r.capabilities), [list(kv) for kv in r.metadata], r.description,
        r.version, [[s.id, s.name, s.description, list(s.tags)] for s in r.skills], list(r.topics), r.status, r.load,
    ]


def fast_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for the frozen slots dataclass `cls`: the same object as `cls(...)` (equal,
    same hash, still frozen) in a fraction of the time. For per-message events on the hot path only
    (decisions 0119, 0120); every field must be given, in declaration order, and `__post_init__` does
    not run.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`. Here the fields are
    stored into an instance of a plain twin class with the same `__slots__` (one attribute store each,
    as for any mutable object), whose `__class__` is then set to `cls`: CPython allows that between
    classes of the same layout, and the object is from then on an ordinary, frozen `cls` instance. A
    class whose layout the twin cannot match (inherited slots, `__weakref__`, a `__dict__`) gets the
    slower path: each field set through its slot descriptor."""
    names = [f.name for f in fields(cls)]
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} validates in __post_init__; construct it normally")
    args = ", ".join(f"a{i}" for i in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    if tuple(getattr(cls, "__slots__", ())) == tuple(names) and cls.__bases__ == (object,):
        twin = type(f"_{cls.__name__}Fields", (), {"__slots__": tuple(names)})
        namespace["twin"] = twin
        body = "".join(f"    o.{name} = a{i}\n" for i, name in enumerate(names))
        exec(f"def make({args}):\n    o = new(twin)\n{body}    o.__class__ = cls\n    return o\n",  # noqa: S102
             namespace)
        try:
            namespace["make"](*([None] * len(names)))  # the layouts match, or TypeError here, once
        except TypeError:
            pass
        else:
            return _named(namespace["make"], cls)
    for i, name in enumerate(names):
        namespace[f"s{i}"] = getattr(cls, name).__set__
    body = "".join(f"    s{i}(o, a{i})\n" for i in range(len(names)))
    exec(f"def make({args}):\n    o = new(cls)\n{body}    return o\n", namespace)  # noqa: S102 (as dataclasses does)
    return _named(namespace["make"], cls)


def _named(make: Any, cls: type) -> Callable[..., Any]:
    make.__name__ = make.__qualname__ = f"fast_{cls.__name__}"
    return make  # type: ignore[no-any-return]


def _mid(m: MessageId) -> list[Any]:
    return [m.origin, m.epoch, m.counter]


def _acks_wire(m: Acks) -> list[Any]:
    return [[[a.dest_agent, a.priority, a.session, a.upto, list(a.selective)] for a in m.entries],
            [[_mid(r.msg_id), r.dest_agent, r.priority, r.session, r.seq, r.reason, r.detail] for r in m.rejects]]


def acks_frame(entries: list[list[Any]], rejects: Sequence[RejectEntry], cluster: str) -> list[Any]:
    """An `Acks` frame from entries already in wire form ([dest_agent, priority, session, upto, [selective]]):
    the delivery core writes its acks without an `AckEntry` and an `Acks` object per frame (decision 0119)."""
    return [PROTOCOL_VERSION, cluster, _T_ACKS, entries, _rejects_wire(rejects)]


def _rejects_wire(rejects: Sequence[RejectEntry]) -> list[Any]:
    return [[_mid(r.msg_id), r.dest_agent, r.priority, r.session, r.seq, r.reason, r.detail] for r in rejects]


def batch_frame(envelopes: list[list[Any]], acks: Acks | tuple[list[list[Any]], Sequence[RejectEntry]] | None,
                cluster: str) -> list[Any]:
    """A `Batch` frame from envelopes already in wire form (the delivery core builds them once, when it
    stages a message, instead of an `Envelope` object per transmission; decision 0117). Each is
    [session, seq, floor, msg_id, kind, dest_agent, src_agent, priority, ttl_ms, flags, correlation, payload]
    with ids as (origin, epoch, counter) sequences."""
    frame = [PROTOCOL_VERSION, cluster, _T_BATCH, envelopes]
    if type(acks) is tuple:  # (entries in wire form, rejects), as for `acks_frame`
        frame += [acks[0], _rejects_wire(acks[1]) if acks[1] else []]
    elif acks is not None:
        frame += _acks_wire(acks)  # type: ignore[arg-type]
    return frame


def encode(message: AgentMessage, cluster: str) -> list[Any]:
    """The wire form of `message`: a list of msgpack-native values."""
    head = [PROTOCOL_VERSION, cluster]
    m: Any = message
    t = type(message)
    if t is Batch:
        return batch_frame([
            [e.session, e.seq, e.floor, _mid(e.msg_id), e.kind, e.dest_agent, e.src_agent, e.priority, e.ttl_ms,
             e.flags, None if e.correlation is None else _mid(e.correlation), e.payload]
            for e in m.envelopes
        ], m.acks, cluster)
    if t is Acks:
        return head + [_T_ACKS, *_acks_wire(m)]
    if t is RegistryDigest:
        return head + [_T_REGISTRY_DIGEST, m.reply, [list(e) for e in m.entries]]
    if t is RegistrySet:
        return head + [_T_REGISTRY_SET, m.owner, m.epoch, m.version, [_record_wire(r) for r in m.records]]
    if t is BroadcastGossip:
        return head + [_T_GOSSIP, _mid(m.msg_id), m.topic, m.payload, m.hops]
    if t is BroadcastIHave:
        return head + [_T_IHAVE, [[_mid(i), h] for i, h in m.entries]]
    if t is BroadcastGraft:
        return head + [_T_GRAFT, [_mid(i) for i in m.msg_ids]]
    if t is BroadcastPrune:
        return head + [_T_PRUNE]
    if t is BroadcastNeighbor:
        return head + [_T_NEIGHBOR, m.urgent]
    if t is BroadcastNeighborReply:
        return head + [_T_NEIGHBOR_REPLY, m.accepted]
    if t is BroadcastDisconnect:
        return head + [_T_DISCONNECT]
    raise TypeError(f"not an agent message: {message!r}")


# -- decode -----------------------------------------------------------------------------------------


def decode(frame: Any, cluster: str) -> AgentMessage:
    """Validate `frame` and return its typed message; raise `FrameError` for anything unusable."""
    if type(frame) is not list and type(frame) is not tuple:
        raise FrameError("dropped_malformed", "frame is not an array")
    if len(frame) < 3:
        raise FrameError("dropped_malformed", "frame too short")
    if type(frame[0]) is not int or frame[0] != PROTOCOL_VERSION:
        raise FrameError("dropped_version", f"unknown protocol version {frame[0]!r}")
    if type(frame[1]) is not str or len(frame[1]) > MAX_CLUSTER_CHARS or frame[1] != cluster:
        raise FrameError("dropped_wrong_cluster", "frame from another cluster")
    decoder = _DECODERS.get(frame[2]) if type(frame[2]) is int else None
    if decoder is None:
        raise FrameError("dropped_malformed", f"unknown message type {frame[2]!r}")
    try:
        return decoder(frame)
    except FrameError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, UnicodeError) as exc:
        raise FrameError("dropped_malformed", f"bad field: {exc}") from None


def _bad(what: str) -> FrameError:
    return FrameError("dropped_malformed", what)


def _int(value: Any, hi: int = MAX_INCARNATION, lo: int = 0) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _bad("bad integer field")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _bad("bad flag")
    return value


def _text(value: Any, limit: int, allow_empty: bool = True) -> str:
    if type(value) is not str or len(value) > limit or (not value and not allow_empty):
        raise _bad("bad text field")
    return value


def _bytes(value: Any, limit: int = MAX_PAYLOAD_BYTES) -> bytes:
    if type(value) is not bytes or len(value) > limit:
        raise _bad("bad payload")
    return value


def _array(value: Any, limit: int) -> list[Any] | tuple[Any, ...]:
    if type(value) is not list and type(value) is not tuple:
        raise _bad("expected an array")
    if len(value) > limit:
        raise _bad("array too long")
    return value


def _names(value: Any, limit: int, chars: int) -> tuple[str, ...]:
    items = _array(value, limit)
    out = tuple(sorted({_text(v, chars, allow_empty=False) for v in items}))
    return out


def _msg_id(value: Any) -> MessageId:
    if type(value) is MessageId:  # a frame that never crossed the wire (tests, one process): ours already
        return value
    if (type(value) is not list and type(value) is not tuple) or len(value) != 3:
        raise _bad("bad message id")
    origin, epoch, counter = value
    if type(origin) is not str or not origin or len(origin) > MAX_ID_CHARS:
        raise _bad("bad text field")
    if type(epoch) is not int or type(counter) is not int or not 0 <= epoch <= MAX_INCARNATION \
            or not 0 <= counter <= MAX_INCARNATION:
        raise _bad("bad integer field")
    return MessageId(origin, epoch, counter)


def _exact(frame: Any, n: int) -> None:
    if len(frame) != n:
        raise _bad("wrong field count")


def _skill(raw: Any) -> AgentSkill:
    s = _array(raw, 4)
    if len(s) != 4:
        raise _bad("bad skill")
    return AgentSkill(
        _text(s[0], MAX_AGENT_ID_CHARS, allow_empty=False), _text(s[1], MAX_AGENT_ID_CHARS),
        _text(s[2], MAX_DESCRIPTION_CHARS), _names(s[3], MAX_TAGS, MAX_CAPABILITY_CHARS),
    )


def decode_record(raw: Any) -> AgentRecord:
    """One record from its wire list (also used by tests and by the registry's validation)."""
    r = _array(raw, 11)
    if len(r) != 11:
        raise _bad("bad agent record")
    meta_raw = _array(r[4], MAX_METADATA_ENTRIES)
    meta: dict[str, str] = {}
    for kv in meta_raw:
        pair = _array(kv, 2)
        if len(pair) != 2:
            raise _bad("bad metadata entry")
        meta[_text(pair[0], MAX_METADATA_CHARS)] = _text(pair[1], MAX_METADATA_CHARS)
    status = _int(r[9], max(STATUSES))
    return AgentRecord(
        agent_id=_text(r[0], MAX_AGENT_ID_CHARS, allow_empty=False),
        name=_text(r[1], MAX_AGENT_ID_CHARS),
        node_id=_text(r[2], MAX_ID_CHARS, allow_empty=False),
        capabilities=_names(r[3], MAX_CAPABILITIES, MAX_CAPABILITY_CHARS),
        metadata=tuple(sorted(meta.items())),
        description=_text(r[5], MAX_DESCRIPTION_CHARS),
        version=_text(r[6], MAX_AGENT_ID_CHARS),
        skills=tuple(_skill(s) for s in _array(r[7], MAX_SKILLS)),
        topics=_names(r[8], MAX_TOPICS, MAX_CAPABILITY_CHARS),
        status=status,
        load=_int(r[10], MAX_LOAD),
    )


def _decode_digest(f: Any) -> RegistryDigest:
    _exact(f, 5)
    entries = []
    for raw in _array(f[4], MAX_DIGEST_ENTRIES):
        e = _array(raw, 3)
        if len(e) != 3:
            raise _bad("bad digest entry")
        entries.append((_text(e[0], MAX_ID_CHARS, allow_empty=False), _int(e[1]), _int(e[2])))
    return RegistryDigest(_bool(f[3]), tuple(entries))


def _decode_set(f: Any) -> RegistrySet:
    _exact(f, 7)
    owner = _text(f[3], MAX_ID_CHARS, allow_empty=False)
    records = tuple(decode_record(r) for r in _array(f[6], MAX_AGENTS_PER_NODE))
    for rec in records:
        if rec.node_id != owner:
            raise _bad("record set holds a record of another node")
    if len({r.agent_id for r in records}) != len(records):
        raise _bad("record set holds one agent twice")
    return RegistrySet(owner, _int(f[4]), _int(f[5]), records)


def _envelope(e: Any) -> Envelope:
    return Envelope(*envelope_wire(e))


def envelope_wire(e: Any) -> list[Any]:
    """One envelope in wire form, validated field by field in one pass (the hot path of every data frame),
    with its ids as `MessageId`: the delivery core reads the list by position (`ENV_*`), so a data frame
    costs no object per message before the handler's (decision 0119)."""
    return _envelopes_wire((e,))[0]


def _envelopes_wire(raw: list[Any] | tuple[Any, ...]) -> list[list[Any]]:
    """`envelope_wire` for every envelope of a frame, in one loop (no call per envelope)."""
    out: list[list[Any]] = []
    append = out.append
    # The constants as locals: this loop runs once per message received, and a local read is cheaper
    # than a global one.
    int_, str_, list_, mid_type, new_id = int, str, list, MessageId, _new_id
    max_seq, max_kind, max_priority, max_ttl, max_flags = MAX_INCARNATION, KIND_ERROR, PRIORITY_LOW, MAX_TTL_MS, _FLAGS_ALL
    max_name, max_payload, max_origin = MAX_AGENT_ID_CHARS, MAX_PAYLOAD_BYTES, MAX_ID_CHARS
    for e in raw:
        if type(e) is not list_ or len(e) != 12:
            if type(e) is tuple and len(e) == 12:
                e = list(e)
            else:
                raise _bad("bad envelope")
        session, seq, floor, mid, kind, dest, src, priority, ttl, flags, corr, payload = e
        if (type(session) is not int_ or type(seq) is not int_ or type(floor) is not int_ or type(kind) is not int_
                or type(priority) is not int_ or type(ttl) is not int_ or type(flags) is not int_
                or not 0 <= session <= max_seq or not 0 <= floor <= seq <= max_seq
                or not 0 <= kind <= max_kind or not 0 <= priority <= max_priority or not 0 <= ttl <= max_ttl
                or not 0 <= flags <= max_flags):
            if type(floor) is int and type(seq) is int and floor > seq >= 0 and floor <= MAX_INCARNATION:
                raise _bad("bad channel position")
            raise _bad("bad integer field")
        if (session == 0) != (seq == 0):
            raise _bad("bad channel position")
        if corr is not None:
            e[10] = _msg_id(corr)
            if kind != KIND_RESPONSE and kind != KIND_ERROR:
                raise _bad("responses and only responses carry a correlation id")
        elif kind == KIND_RESPONSE or kind == KIND_ERROR:
            raise _bad("responses and only responses carry a correlation id")
        if type(dest) is not str_ or len(dest) > max_name or type(src) is not str_ or len(src) > max_name:
            raise _bad("bad text field")
        if type(payload) is not bytes or len(payload) > max_payload:
            raise _bad("bad payload")
        if type(mid) is not mid_type:
            if type(mid) is not list_ or len(mid) != 3:
                e[3] = _msg_id(mid)
            else:
                origin, epoch, counter = mid
                if (type(origin) is not str_ or not origin or len(origin) > max_origin or type(epoch) is not int_
                        or type(counter) is not int_ or not 0 <= epoch <= max_seq or not 0 <= counter <= max_seq):
                    e[3] = _msg_id(mid)  # raises the precise error
                e[3] = new_id(mid_type, mid)
        append(e)
    return out


def batch_wire(frame: Any, cluster: str) -> tuple[list[list[Any]], Acks | None]:
    """A data frame's envelopes in validated wire form (see `envelope_wire`) and its piggybacked acks.
    Same checks and `FrameError`s as `decode`; for the delivery core's receive path."""
    if type(frame) is not list and type(frame) is not tuple or len(frame) < 4:
        raise FrameError("dropped_malformed", "frame too short")
    if type(frame[0]) is not int or frame[0] != PROTOCOL_VERSION:
        raise FrameError("dropped_version", f"unknown protocol version {frame[0]!r}")
    if type(frame[1]) is not str or len(frame[1]) > MAX_CLUSTER_CHARS or frame[1] != cluster:
        raise FrameError("dropped_wrong_cluster", "frame from another cluster")
    if frame[2] != _T_BATCH or (len(frame) != 4 and len(frame) != 6):
        raise FrameError("dropped_malformed", "not a data frame")
    try:
        envelopes = _envelopes_wire(_array(frame[3], MAX_ENVELOPES_PER_BATCH))
        return envelopes, (None if len(frame) == 4 else _acks_from(frame[4], frame[5]))
    except FrameError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, UnicodeError) as exc:
        raise FrameError("dropped_malformed", f"bad field: {exc}") from None


_new_id = tuple.__new__
ENV_SESSION, ENV_SEQ, ENV_FLOOR, ENV_MSG_ID, ENV_KIND, ENV_DEST, ENV_SRC, ENV_PRIORITY, ENV_TTL, ENV_FLAGS, \
    ENV_CORRELATION, ENV_PAYLOAD = range(12)
"""Positions of an envelope's fields in its wire form (`batch_frame`, `envelope_wire`)."""


def _decode_batch(f: Any) -> Batch:
    if len(f) == 4:
        return Batch(tuple([_envelope(e) for e in _array(f[3], MAX_ENVELOPES_PER_BATCH)]))
    _exact(f, 6)
    return Batch(tuple([_envelope(e) for e in _array(f[3], MAX_ENVELOPES_PER_BATCH)]), _acks_from(f[4], f[5]))


def _decode_acks(f: Any) -> Acks:
    _exact(f, 5)
    return _acks_from(f[3], f[4])


def _acks_from(raw_entries: Any, raw_rejects: Any) -> Acks:
    out = []
    for raw in _array(raw_entries, MAX_ACK_ENTRIES):
        # One pass per entry (every data frame in the other direction carries one; decision 0119).
        if (type(raw) is not list and type(raw) is not tuple) or len(raw) != 5:
            raise _bad("bad ack entry")
        dest, priority, session, upto, raw_sel = raw
        if type(dest) is not str or len(dest) > MAX_AGENT_ID_CHARS:
            raise _bad("bad text field")
        if (type(priority) is not int or type(session) is not int or type(upto) is not int
                or not 0 <= priority <= PRIORITY_LOW or not 0 <= session <= MAX_INCARNATION
                or not 0 <= upto <= MAX_INCARNATION):
            raise _bad("bad integer field")
        sel = tuple(_int(s) for s in _array(raw_sel, MAX_SELECTIVE_ACKS)) if raw_sel else ()
        if not raw_sel and type(raw_sel) is not list and type(raw_sel) is not tuple:
            raise _bad("expected an array")
        out.append(_new_id(AckEntry, (dest, priority, session, upto, sel)))
    rejects = []
    for raw in _array(raw_rejects, MAX_ACK_ENTRIES) if raw_rejects else ():
        r = _array(raw, 7)
        if len(r) != 7:
            raise _bad("bad reject entry")
        reason = _int(r[5], max(REASONS), 1)
        rejects.append(RejectEntry(_msg_id(r[0]), _text(r[1], MAX_AGENT_ID_CHARS), _int(r[2], PRIORITY_LOW),
                                   _int(r[3]), _int(r[4]), reason, _text(r[6], MAX_ERROR_CHARS)))
    return Acks(tuple(out), tuple(rejects))


def _decode_gossip(f: Any) -> BroadcastGossip:
    _exact(f, 7)
    return BroadcastGossip(_msg_id(f[3]), _text(f[4], MAX_CAPABILITY_CHARS), _bytes(f[5]), _int(f[6], MAX_HOPS))


def _decode_ihave(f: Any) -> BroadcastIHave:
    _exact(f, 4)
    out = []
    for raw in _array(f[3], MAX_IHAVE_ENTRIES):
        e = _array(raw, 2)
        if len(e) != 2:
            raise _bad("bad ihave entry")
        out.append((_msg_id(e[0]), _int(e[1], MAX_HOPS)))
    return BroadcastIHave(tuple(out))


def _decode_graft(f: Any) -> BroadcastGraft:
    _exact(f, 4)
    return BroadcastGraft(tuple(_msg_id(i) for i in _array(f[3], MAX_IHAVE_ENTRIES)))


def _decode_prune(f: Any) -> BroadcastPrune:
    _exact(f, 3)
    return BroadcastPrune()


def _decode_neighbor(f: Any) -> BroadcastNeighbor:
    _exact(f, 4)
    return BroadcastNeighbor(_bool(f[3]))


def _decode_neighbor_reply(f: Any) -> BroadcastNeighborReply:
    _exact(f, 4)
    return BroadcastNeighborReply(_bool(f[3]))


def _decode_disconnect(f: Any) -> BroadcastDisconnect:
    _exact(f, 3)
    return BroadcastDisconnect()


_DECODERS = {
    _T_REGISTRY_DIGEST: _decode_digest,
    _T_REGISTRY_SET: _decode_set,
    _T_BATCH: _decode_batch,
    _T_ACKS: _decode_acks,
    _T_GOSSIP: _decode_gossip,
    _T_IHAVE: _decode_ihave,
    _T_GRAFT: _decode_graft,
    _T_PRUNE: _decode_prune,
    _T_NEIGHBOR: _decode_neighbor,
    _T_NEIGHBOR_REPLY: _decode_neighbor_reply,
    _T_DISCONNECT: _decode_disconnect,
}


def record_from_mapping(value: Mapping[str, Any]) -> AgentRecord:
    """Build a record from a JSON-like mapping (CLI/control API convenience); validates like the wire."""
    return decode_record([
        value.get("agent_id"), value.get("name", ""), value.get("node_id"), list(value.get("capabilities", ())),
        [[k, v] for k, v in dict(value.get("metadata", {})).items()], value.get("description", ""),
        value.get("version", ""), [[s["id"], s.get("name", ""), s.get("description", ""), list(s.get("tags", ()))]
                                   for s in value.get("skills", ())],
        list(value.get("topics", ())), value.get("status", STATUS_HEALTHY), value.get("load", 0),
    ])

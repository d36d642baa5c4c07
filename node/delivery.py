"""Unicast delivery between agents: channels, acks, retries, dedup, TTL, priority, inbox backpressure,
request/response correlation. Sans-I/O; the runtime resolves agent ids to nodes through the registry.

Guarantees (docs/protocols/messaging.md states them for users):
- **best-effort**: sent once, no ack; rejections (unknown agent, full inbox) still come back as events.
- **at-least-once**: acked; retransmitted with exponential backoff and jitter until acked, at most
  `max_attempts` times (then `NodeUnreachable`); the receiver's channel state (cumulative seq + reorder
  buffer) is the dedup window, so a handler sees each message once.
- **durable**: as at-least-once, but never given up for lack of acks (only by TTL), paused while the
  node is down, and deduplicated by message id at the receiver as well (the id survives a sender
  restart because the runtime stores it in the outbox before `send` returns).
- **ordering**: FIFO per channel = (sender node, receiving agent, priority class): among the messages
  of one channel that are handed to the handler, the order is the send order. Messages the sender
  gave up on (TTL, unreachable) are skipped, never reordered (the sender's `floor`, RFC 3758 style).
  Priorities are separate channels: a high-priority message overtakes normal ones.
- **backpressure**: `send` raises `SendQueueFull` when the sender's bounded queues are full; a full
  receiving inbox rejects with `Backpressure`, or, with `wait_if_full`, holds the channel and retries
  until the message's TTL. Never a silent drop: every message ends in exactly one outcome event
  (`MessageDelivered` or a failure), except that a late `Expired` notice may follow `MessageDelivered`
  when the message expired in the receiver's inbox before a handler took it. A request's outcome is
  its answer (`ResponseReceived`, `HandlerError`) or a failure, and a response's is a failure or
  nothing: neither emits `MessageDelivered` (decision 0126).
- **ack meaning**: "accepted into the receiving agent's inbox". A failure without `confirmed` (timeouts)
  means "not confirmed": the message may still have been handled.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from operator import itemgetter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import heapq

from agentnode.agent_messages import (
    FLAG_DURABLE,
    FLAG_WAIT_IF_FULL,
    KIND_DATA,
    KIND_ERROR,
    KIND_REQUEST,
    KIND_RESPONSE,
    MAX_ACK_ENTRIES,
    MAX_ENVELOPES_PER_BATCH,
    MAX_ERROR_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_SELECTIVE_ACKS,
    MAX_TTL_MS,
    PRIORITIES,
    PRIORITY_NORMAL,
    REASON_BACKPRESSURE,
    REASON_BUSY,
    REASON_EXPIRED,
    REASON_UNKNOWN_AGENT,
    Acks,
    Batch,
    FrameError,
    MessageId,
    Outgoing,
    RejectEntry,
    acks_frame,
    batch_frame,
    batch_wire,
    decode,
    fast_constructor,
)

_new_id = tuple.__new__
"""`MessageId` built as `_new_id(MessageId, (origin, epoch, counter))`: the NamedTuple without its Python `__new__`."""
from agentnode.routing import LivePeers

__sans_io__ = True

__all__ = [
    "Backpressure",
    "DeadlineExceeded",
    "Delivery",
    "DeliveryConfig",
    "DeliveryError",
    "DeliveryEvent",
    "Expired",
    "HandlerError",
    "Incoming",
    "MessageDelivered",
    "MessageFailed",
    "MODES",
    "NodeUnreachable",
    "ResponseReceived",
    "SendQueueFull",
    "UnknownAgent",
]

BEST_EFFORT = "best_effort"
AT_LEAST_ONCE = "at_least_once"
DURABLE = "durable"
MODES = (BEST_EFFORT, AT_LEAST_ONCE, DURABLE)

MAX_EVENTS = 1_000_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted (a runtime bug if hit)."""
MAX_REJECTS_REMEMBERED = 64
"""Rejects per receive channel kept to answer retransmissions of a rejected message the same way."""
MAX_DURABLE_SENDERS = 10_000
"""Sender nodes whose durable message ids are remembered."""
MAX_PENDING_REQUESTS = 1_000_000
"""Requests awaiting a response; `request` raises SendQueueFull beyond this."""


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Delivery knobs. Durations in integer milliseconds."""

    initial_rto_ms: int = 200
    """First retransmission timeout (RFC 6298 uses 1 s for the open Internet; LAN round trips are ~1 ms)."""
    max_rto_ms: int = 5_000
    """Backoff cap (RFC 6298 §2.5 allows a cap of at least 60 s; we favour fast recovery on a LAN)."""
    jitter: float = 0.25
    """Each timeout is scaled by a uniform factor in [1 - jitter, 1 + jitter] (avoids retry storms)."""
    max_attempts: int = 8
    """Transmissions of an at-least-once message before it fails with NodeUnreachable (durable: unlimited)."""
    window: int = 1024
    """Unacknowledged messages in flight per channel."""
    channel_queue: int = 4_096
    """Messages waiting behind the window per channel; `send` raises SendQueueFull beyond it."""
    total_queue: int = 200_000
    """Messages tracked (queued + in flight) across all channels."""
    max_batch: int = 256
    """Messages per data frame."""
    reorder_buffer: int = 2048
    """Out-of-order messages a receive channel holds (must be >= window)."""
    inbox_capacity: int = 1_024
    """Default bounded inbox per local agent."""
    channel_idle_ms: int = 600_000
    """An idle, empty channel is forgotten after this long; must exceed the longest retry span."""
    durable_dedup: int = 8_192
    """Durable message ids remembered per sender node."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_rto_ms <= self.max_rto_ms:
            raise ValueError("need 0 < initial_rto_ms <= max_rto_ms")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.max_attempts < 1 or self.window < 1 or self.channel_queue < 0 or self.total_queue < 1:
            raise ValueError("max_attempts, window and total_queue must be positive")
        if not 1 <= self.max_batch <= MAX_ENVELOPES_PER_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_ENVELOPES_PER_BATCH}")
        if self.reorder_buffer < self.window:
            raise ValueError("reorder_buffer must be >= window, or in-window messages would be dropped")
        if self.inbox_capacity < 1 or self.durable_dedup < 1:
            raise ValueError("inbox_capacity and durable_dedup must be positive")
        if self.channel_idle_ms < self.max_rto_ms * self.max_attempts:
            raise ValueError("channel_idle_ms must exceed max_rto_ms * max_attempts (the longest retry span)")


# -- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message for a local agent: hand it to the agent's inbox, then call `release` when taken out."""

    msg_id: MessageId
    sender_node: str
    src_agent: str
    dest_agent: str
    kind: int
    """KIND_DATA or KIND_REQUEST (answer a request with `respond`)."""
    priority: int
    payload: bytes
    expires_ms: int | None
    """Local time after which the message is stale (call `drop_expired` instead of handling it)."""
    reliable: bool
    """False for best-effort messages."""
    durable: bool = False
    """Sent in durable mode: the runtime records it in the receiver's inbox before the ack leaves (node/inbox.py)."""


@dataclass(frozen=True, slots=True)
class MessageDelivered:
    """The receiving node accepted the message into the agent's inbox (ack)."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to request `request_id`."""

    request_id: MessageId
    dest_node: str
    from_agent: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class UnknownAgent:
    """No such agent on the destination node."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class NodeUnreachable:
    """The destination node is not a live member, or never acknowledged."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class DeadlineExceeded:
    """The request got no response before its deadline."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class HandlerError:
    """The remote handler raised; `detail` is its error text."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class Backpressure:
    """The receiving agent's inbox was full (and stayed full until the TTL, with wait_if_full)."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class Expired:
    """The message's TTL ran out before a handler took it."""

    msg_id: MessageId
    dest_node: str
    dest_agent: str
    detail: str
    confirmed: bool = False


_incoming = fast_constructor(Incoming)
_delivered = fast_constructor(MessageDelivered)

MessageFailed = Union[UnknownAgent, NodeUnreachable, DeadlineExceeded, HandlerError, Backpressure, Expired]
DeliveryEvent = Union[Incoming, MessageDelivered, ResponseReceived, MessageFailed]

_REASON_EVENT: dict[int, Any] = {
    REASON_UNKNOWN_AGENT: UnknownAgent,
    REASON_BACKPRESSURE: Backpressure,
    REASON_EXPIRED: Expired,
}


class DeliveryError(Exception):
    """A failure outcome raised to a caller (the runtime raises this from `send`/`request` awaits)."""

    def __init__(self, outcome: MessageFailed) -> None:
        super().__init__(f"{type(outcome).__name__}: {outcome.detail} (agent {outcome.dest_agent!r} on {outcome.dest_node})")
        self.outcome = outcome


class SendQueueFull(Exception):
    """Local backpressure: this node's send queues are full. Wait (see `capacity`) or fail the caller."""


# -- internal state -----------------------------------------------------------------------------------

_QUEUED, _INFLIGHT, _DONE = 0, 1, 2
_T_BATCH_FRAME = 40
"""`agent_messages` frame type of a data frame (`Batch`), routed to the envelope-free receive path."""
_T_RETRY, _T_TTL, _T_REQUEST, _T_SWEEP, _T_CH_RETRY, _T_CH_TTL = 0, 1, 2, 3, 4, 5


class _Msg:
    __slots__ = ("msg_id", "dest_node", "dest_agent", "src_agent", "kind", "priority", "flags", "correlation",
                 "payload", "durable", "reliable", "expires_ms", "seq", "state", "attempts", "retry_at", "sacked", "busy", "channel")

    def __init__(self, msg_id: MessageId, dest_node: str, dest_agent: str, src_agent: str, kind: int, priority: int,
                 flags: int, correlation: MessageId | None, payload: bytes, durable: bool, expires_ms: int | None,
                 channel: _SendChannel | None = None) -> None:
        self.msg_id = msg_id
        self.dest_node = dest_node
        self.dest_agent = dest_agent
        self.src_agent = src_agent
        self.kind = kind
        self.priority = priority
        self.flags = flags
        self.correlation = correlation
        self.payload = payload
        self.durable = durable
        self.reliable = True
        self.expires_ms = expires_ms
        self.seq = 0
        self.state = _QUEUED
        self.attempts = 0
        self.retry_at = 0
        self.sacked = False
        self.busy = False
        self.channel = channel


class _SendChannel:
    __slots__ = ("key", "session", "next_seq", "queue", "inflight", "last_ms", "progress_ms", "retry_at", "ttl_at",
                 "expiries", "low")

    def __init__(self, key: tuple[str, str, int], session: int, now_ms: int) -> None:
        self.key = key
        self.session = session
        self.next_seq = 1
        self.low = 1
        """No seq below this is in flight (it only rises): see `first`."""
        self.queue: deque[_Msg] = deque()
        self.inflight: dict[int, _Msg] = {}
        self.last_ms = now_ms
        self.progress_ms = -(1 << 62)
        """When an ack last advanced this channel (RFC 6298 §5.3: restart the retransmission timer then)."""
        self.retry_at: int | None = None
        """The channel's one retransmission timer (RFC 6298 keeps one per connection; decision 0118): armed
        for the earliest `retry_at` of its messages, which are scanned when it fires, not one heap entry each."""
        self.ttl_at: int | None = None
        """The channel's TTL timer, armed for the head of `expiries`."""
        self.expiries: deque[_Msg] = deque()
        """Messages with a TTL in expiry order (the usual case: one TTL per sender, so appends keep the
        order); done heads are dropped as acks arrive. A message that would break the order gets a timer
        of its own instead."""

    def floor(self) -> int:
        return self.first() if self.inflight else self.next_seq

    def first(self) -> int:
        """The lowest seq in flight (call with `inflight` not empty). Found from `low` upwards, amortised
        O(1): seqs enter `inflight` in ascending order and never below `low`. `next(iter(inflight))` would
        rescan, on every call, the slots the dict's earlier deletions emptied at its front."""
        inflight, low = self.inflight, self.low
        while low not in inflight:
            low += 1
        self.low = low
        return low


class _RecvChannel:
    __slots__ = ("session", "upto", "buffer", "rejected", "last_ms")

    def __init__(self, session: int, now_ms: int) -> None:
        self.session = session
        self.upto = 0
        self.buffer: dict[int, list[Any]] = {}
        """Out-of-order envelopes in wire form (`agent_messages.envelope_wire`) by seq."""
        self.rejected: dict[int, RejectEntry] = {}
        self.last_ms = now_ms


class _Pending:
    __slots__ = ("msg", "deadline_ms")

    def __init__(self, msg: _Msg, deadline_ms: int) -> None:
        self.msg = msg
        self.deadline_ms = deadline_ms


_COUNTERS = (
    "frames_sent", "frames_received", "dropped_malformed", "dropped_wrong_cluster", "dropped_version",
    "events_dropped", "sent", "sent_best_effort", "transmissions", "retransmissions", "delivered_acks",
    "failed", "send_queue_full", "acks_stale", "rejects_received", "received", "delivered", "duplicates",
    "durable_duplicates", "reordered", "reorder_overflow", "skipped", "stale_session", "rejected_unknown_agent",
    "rejected_backpressure", "busy", "late_responses", "responses", "expired_in_inbox", "channels_swept",
)


class Delivery:
    """The sans-I/O delivery core for one node. API calls, `receive`, `handle_timer`; drain outputs."""

    def __init__(self, node_id: str, *, cluster: str, epoch: int, rng: random.Random,
                 config: DeliveryConfig | None = None) -> None:
        if not isinstance(epoch, int) or not 0 <= epoch < 2**30:
            raise ValueError("epoch must be an int in 0..2**30-1, strictly greater after every restart (persist it)")
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        self.node_id = node_id
        self.cluster = cluster
        self.epoch = epoch
        self.config = config or DeliveryConfig()
        self._rng = rng
        self._peers = LivePeers()
        self._counter = 0
        self._session = epoch << 32
        self._send: dict[tuple[str, str, int], _SendChannel] = {}
        self._by_node: dict[str, dict[tuple[str, str, int], None]] = {}
        self._tracked = 0
        self._recv: dict[tuple[str, str, int], _RecvChannel] = {}
        self._durable_seen: dict[str, OrderedDict[MessageId, None]] = {}
        # OrderedDict: evicting the oldest id is O(1); `del d[next(iter(d))]` on a plain dict scans the
        # dummies its earlier deletions left at the front (measured ~5 µs per durable message at 8192), and
        # trimming a plain dict in batches re-hashes the ids it keeps (measured 2.5x the OrderedDict's cost).
        self._inbox: dict[str, int] = {}
        self._capacity: dict[str, int] = {}
        self._requests: dict[MessageId, _Pending] = {}
        self._staged: dict[str, list[list[Any]]] = {}
        """Envelopes in wire form (`batch_frame`) per destination node, for the next `messages_to_send`."""
        self._ack_due: dict[str, dict[tuple[str, str, int], None]] = {}
        self._rejects: dict[str, list[RejectEntry]] = {}
        self._timers: list[tuple[int, int, int, Any]] = []
        self._timer_seq = 0
        self._sweep_at: int | None = None
        self._events: deque[DeliveryEvent] = deque()
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # -- membership ------------------------------------------------------------------------------

    def member_up(self, node_id: str, address: str, now_ms: int) -> None:
        """`node_id` is alive at `address`: paused durable channels to it resume at once."""
        if node_id == self.node_id:
            return
        if not self._peers.add(node_id, address):
            return
        for key in list(self._by_node.get(node_id, ())):
            ch = self._send[key]
            for m in list(ch.inflight.values()):
                self._stage(m, now_ms)
            self._pump_channel(ch, now_ms)

    def member_suspect(self, node_id: str, now_ms: int) -> None:
        self._peers.set_suspect(node_id, True)

    def member_down(self, node_id: str, now_ms: int) -> None:
        """`node_id` is dead or gone: its non-durable messages and requests fail with NodeUnreachable."""
        self._peers.remove(node_id)
        self._staged.pop(node_id, None)
        for key in list(self._by_node.get(node_id, ())):
            ch = self._send[key]
            for m in list(ch.inflight.values()) + list(ch.queue):
                if not m.durable and m.state != _DONE:
                    self._fail(m, NodeUnreachable, f"node {node_id} was declared dead", now_ms, prompt=False)
            if not ch.inflight and not any(m.state != _DONE for m in ch.queue):
                self._drop_channel(ch)
        for pending in [p for p in self._requests.values() if p.msg.dest_node == node_id]:
            self._requests.pop(pending.msg.msg_id, None)
            self._emit(NodeUnreachable(pending.msg.msg_id, node_id, pending.msg.dest_agent,
                                       f"node {node_id} was declared dead before it answered"))

    # -- local agents' inboxes ---------------------------------------------------------------------

    def open_inbox(self, agent_id: str, capacity: int | None = None) -> None:
        """Accept messages for `agent_id` on this node (call when it registers)."""
        cap = self.config.inbox_capacity if capacity is None else capacity
        if cap < 1:
            raise ValueError("inbox capacity must be at least 1")
        self._capacity[agent_id] = cap
        self._inbox.setdefault(agent_id, 0)

    def close_inbox(self, agent_id: str) -> None:
        """Stop accepting messages for `agent_id`; later ones are rejected as UnknownAgent."""
        self._capacity.pop(agent_id, None)
        self._inbox.pop(agent_id, None)

    def release(self, agent_id: str, count: int = 1) -> None:
        """`count` messages left the agent's inbox (a handler took them)."""
        n = self._inbox.get(agent_id)
        if n is not None:
            self._inbox[agent_id] = n - count if n > count else 0

    def inbox_size(self, agent_id: str) -> int:
        return self._inbox.get(agent_id, 0)

    def drop_expired(self, incoming: Incoming, now_ms: int) -> None:
        """The runtime found `incoming` stale in the inbox: free its slot and tell the sender (Expired)."""
        self.release(incoming.dest_agent)
        self.counters["expired_in_inbox"] += 1
        detail = "expired in the receiving agent's inbox before a handler took it"
        if incoming.sender_node == self.node_id:
            self._emit(Expired(incoming.msg_id, self.node_id, incoming.dest_agent, detail, True))
            self._requests.pop(incoming.msg_id, None)
            return
        self._reject(incoming.sender_node, RejectEntry(incoming.msg_id, incoming.dest_agent, incoming.priority, 0, 0,
                                                       REASON_EXPIRED, detail))

    # -- sending -----------------------------------------------------------------------------------

    def send(self, dest_node: str, dest_agent: str, payload: bytes, now_ms: int, *, src_agent: str = "",
             mode: str = AT_LEAST_ONCE, priority: int = PRIORITY_NORMAL, ttl_ms: int = 0,
             wait_if_full: bool = False, msg_id: MessageId | None = None) -> MessageId:
        """Queue a one-way message; its outcome arrives as an event. Raises SendQueueFull or ValueError."""
        return self._submit(dest_node, dest_agent, payload, now_ms, KIND_DATA, None, src_agent, mode, priority,
                            ttl_ms, wait_if_full, msg_id)

    def send_many(self, dest_node: str, dest_agent: str, payloads: Sequence[bytes], now_ms: int, *,
                  src_agent: str = "", mode: str = AT_LEAST_ONCE, priority: int = PRIORITY_NORMAL, ttl_ms: int = 0,
                  wait_if_full: bool = False, msg_ids: Sequence[MessageId] | None = None) -> list[MessageId]:
        """`send` for many payloads to one agent, in order, in one call (decision 0117): one validation, one
        channel lookup, one pump of the window. All or nothing: SendQueueFull if they do not all fit
        (`capacity` says how many do). Outcomes arrive as events per message, as for `send`."""
        if msg_ids is not None and len(msg_ids) != len(payloads):
            raise ValueError("give one msg_id per payload (or none)")
        if not payloads:
            return []
        if dest_node == self.node_id or mode != AT_LEAST_ONCE and mode != DURABLE or (
                dest_node not in self._peers and mode != DURABLE):
            # Local, best-effort or unreachable: the per-message path gives the same outcomes.
            return [self.send(dest_node, dest_agent, p, now_ms, src_agent=src_agent, mode=mode, priority=priority,
                              ttl_ms=ttl_ms, wait_if_full=wait_if_full, msg_id=None if msg_ids is None else msg_ids[i])
                    for i, p in enumerate(payloads)]
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES} (0 = high)")
        if not isinstance(ttl_ms, int) or not 0 <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"ttl_ms must be an int in 0..{MAX_TTL_MS} (0 = no TTL)")
        if not dest_agent:
            raise ValueError("dest_agent must name an agent")
        if wait_if_full and ttl_ms == 0:
            raise ValueError("wait_if_full needs a reliable mode and a ttl_ms (how long to wait)")
        if msg_ids is not None and mode != DURABLE:
            raise ValueError("only durable messages reuse a stored msg_id (resend from the outbox)")
        for p in payloads:
            if type(p) is not bytes or len(p) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"payload must be bytes of at most {MAX_PAYLOAD_BYTES} (serialise it first)")
        n = len(payloads)
        if self.capacity(dest_node, dest_agent, priority) < n:
            self.counters["send_queue_full"] += 1
            raise SendQueueFull(f"no room for {n} messages to {dest_agent!r} on {dest_node}; send fewer (see capacity)")
        key = (dest_node, dest_agent, priority)
        ch = self._send.get(key)
        if ch is None:
            self._session += 1
            ch = self._send[key] = _SendChannel(key, self._session, now_ms)
            self._by_node.setdefault(dest_node, {})[key] = None
            self._arm_sweep(now_ms)
        durable = mode == DURABLE
        flags = (FLAG_DURABLE if durable else 0) | (FLAG_WAIT_IF_FULL if wait_if_full else 0)
        expires = now_ms + ttl_ms if ttl_ms else None
        if msg_ids is None:
            node_id, epoch, first = self.node_id, self.epoch, self._counter + 1
            self._counter += n
            ids = [_new_id(MessageId, (node_id, epoch, c)) for c in range(first, first + n)]
        else:
            ids = list(msg_ids)
        msgs = [_Msg(msg_id, dest_node, dest_agent, src_agent, KIND_DATA, priority, flags, None, p, durable, expires, ch)
                for msg_id, p in zip(ids, payloads)]
        ch.queue.extend(msgs)
        if expires is not None:
            expiries = ch.expiries
            if expiries and expires < expiries[-1].expires_ms:  # type: ignore[operator]
                for m in msgs:
                    self._track_expiry(ch, m)  # out of order: timers of their own
            else:
                expiries.extend(msgs)  # one TTL for all of them: they keep the order
                if ch.ttl_at is None:
                    ch.ttl_at = expires
                    self._push_timer(expires, _T_CH_TTL, ch)
        ch.last_ms = now_ms
        self._tracked += n
        self.counters["sent"] += n
        self._pump_channel(ch, now_ms)
        return ids

    def request(self, dest_node: str, dest_agent: str, payload: bytes, now_ms: int, *, timeout_ms: int,
                src_agent: str = "", mode: str = AT_LEAST_ONCE, priority: int = PRIORITY_NORMAL,
                wait_if_full: bool = False) -> MessageId:
        """Send a request; expect ResponseReceived, HandlerError or another failure event with its id."""
        if not isinstance(timeout_ms, int) or not 0 < timeout_ms <= MAX_TTL_MS:
            raise ValueError(f"timeout_ms must be an int in 1..{MAX_TTL_MS}")
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            self.counters["send_queue_full"] += 1
            raise SendQueueFull(f"{MAX_PENDING_REQUESTS} requests are pending; wait for answers")
        return self._submit(dest_node, dest_agent, payload, now_ms, KIND_REQUEST, None, src_agent, mode, priority,
                            timeout_ms, wait_if_full, None)

    def respond(self, request: Incoming, payload: bytes, now_ms: int, *, error: str | None = None) -> MessageId:
        """Answer `request` with `payload`, or with the handler's `error` text (the requester gets HandlerError)."""
        if request.kind != KIND_REQUEST:
            raise ValueError("respond() answers requests only (Incoming.kind == KIND_REQUEST)")
        if error is not None:
            payload = error[:MAX_ERROR_CHARS].encode("utf-8", "replace")[:MAX_ERROR_CHARS]
        elif type(payload) is not bytes or len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload must be bytes of at most {MAX_PAYLOAD_BYTES} (serialise it first)")
        mode = AT_LEAST_ONCE if request.reliable else BEST_EFFORT
        return self._enqueue(request.sender_node, request.src_agent, payload, now_ms,
                             KIND_ERROR if error is not None else KIND_RESPONSE, request.msg_id, request.dest_agent,
                             mode, request.priority, 0, False, None)

    def next_msg_id(self) -> MessageId:
        """Allocate an id for a later `send(..., mode="durable", msg_id=...)`: store it in the outbox first."""
        self._counter += 1
        return _new_id(MessageId, (self.node_id, self.epoch, self._counter))

    def capacity(self, dest_node: str, dest_agent: str, priority: int = PRIORITY_NORMAL) -> int:
        """How many more messages `send` accepts for that channel right now."""
        ch = self._send.get((dest_node, dest_agent, priority))
        c = self.config
        room = c.window + c.channel_queue if ch is None else c.window + c.channel_queue - len(ch.inflight) - len(ch.queue)
        total = c.total_queue - self._tracked
        if total < room:
            room = total
        return room if room > 0 else 0

    def pending_requests(self) -> int:
        return len(self._requests)

    # -- core shape ----------------------------------------------------------------------------------

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        """One data or ack frame from the authenticated `sender_id`; garbage is counted and dropped."""
        self.counters["frames_received"] += 1
        if (type(frame) is list or type(frame) is tuple) and len(frame) > 3 and frame[2] == _T_BATCH_FRAME:
            # Data frames skip the `Envelope` objects: envelopes stay in (validated) wire form (decision 0119).
            try:
                envelopes, acks = batch_wire(frame, self.cluster)
            except FrameError as exc:
                self.counters[exc.counter] += 1
                return
            if sender_id == self.node_id:
                self.counters["dropped_malformed"] += 1
                return
            if acks is not None:
                self._on_acks(sender_id, acks, now_ms)
            self._on_batch(sender_id, envelopes, now_ms)
            return
        try:
            msg = decode(frame, self.cluster)
        except FrameError as exc:
            self.counters[exc.counter] += 1
            return
        if sender_id == self.node_id:
            self.counters["dropped_malformed"] += 1
            return
        if type(msg) is Batch:  # only from a frame that `batch_wire` refused as a data frame: cannot happen
            self.counters["dropped_malformed"] += 1
        elif type(msg) is Acks:
            self._on_acks(sender_id, msg, now_ms)
        else:
            self.counters["dropped_malformed"] += 1

    def handle_timer(self, now_ms: int) -> None:
        """Retransmit, expire, time out requests and sweep idle channels, as due at `now_ms`."""
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            due, _, kind, key = heapq.heappop(timers)
            if kind == _T_RETRY:
                self._on_retry(key, due, now_ms)
            elif kind == _T_TTL:
                self._on_ttl(key, now_ms)
            elif kind == _T_REQUEST:
                self._on_request_deadline(key, due, now_ms)
            elif kind == _T_CH_RETRY:
                if key.retry_at == due:
                    self._on_channel_retry(key, now_ms)
            elif kind == _T_CH_TTL:
                if key.ttl_at == due:
                    self._on_channel_ttl(key, now_ms)
        if self._sweep_at is not None and now_ms >= self._sweep_at:
            self._sweep_at = None
            self._sweep(now_ms)

    def get_timer(self) -> int | None:
        """When to call `handle_timer` next. Timers of messages already acked or answered are discarded
        here, so the runtime is not woken once per message only to find nothing to do (decision 0115)."""
        timers = self._timers
        while timers:
            due, _, kind, key = timers[0]
            if kind == _T_RETRY:
                if key.state == _INFLIGHT and key.retry_at == due:
                    break
            elif kind == _T_TTL:
                if key.state != _DONE:
                    break
            elif kind == _T_REQUEST:
                pending = self._requests.get(key)
                if pending is not None and pending.deadline_ms == due:
                    break
            elif kind == _T_CH_RETRY:
                if key.retry_at == due:
                    if key.inflight:
                        break
                    key.retry_at = None  # everything acked: nothing to retry
            elif kind == _T_CH_TTL:
                if key.ttl_at == due:
                    expiries = key.expiries
                    while expiries and expiries[0].state == _DONE:
                        expiries.popleft()
                    if expiries:
                        break
                    key.ttl_at = None
            else:
                break
            heapq.heappop(timers)
        due = timers[0][0] if timers else None
        if self._sweep_at is not None and (due is None or self._sweep_at < due):
            due = self._sweep_at
        return due

    def messages_to_send(self) -> list[Outgoing]:
        """Drain frames: per destination node its acks/rejects, then data batches (urgent first).

        When a node has both, the first ack chunk rides in the first data frame (a response carries the
        ack of its request: one frame, one decode, one pump at the requester; decision 0115).
        """
        if not self._staged and not self._ack_due and not self._rejects:
            return []
        out: list[Outgoing] = []
        cluster = self.cluster
        staged = self._staged
        self._staged = {}
        piggyback: dict[str, tuple[list[list[Any]], list[RejectEntry]]] = {}
        addresses = self._peers.addresses
        ack_due, recv = self._ack_due, self._recv
        if self._rejects:
            nodes = list(dict.fromkeys([*ack_due, *self._rejects]))
        else:
            nodes = list(ack_due)
        for node in nodes:
            address = addresses.get(node)
            keys = ack_due.pop(node, {})
            rejects = self._rejects.pop(node, []) if self._rejects else []
            if address is None:
                continue
            entries = []  # in wire form (`acks_frame`): no AckEntry or Acks object per frame
            for key in keys:
                rc = recv.get(key)
                if rc is not None:
                    sel = sorted(rc.buffer)[:MAX_SELECTIVE_ACKS] if rc.buffer else []
                    entries.append([key[1], key[2], rc.session, rc.upto, sel])
            for i in range(0, max(len(entries), len(rejects)), MAX_ACK_ENTRIES):
                chunk = (entries[i:i + MAX_ACK_ENTRIES], rejects[i:i + MAX_ACK_ENTRIES])
                if i == 0 and staged.get(node):
                    piggyback[node] = chunk
                else:
                    out.append(Outgoing(address, node, acks_frame(chunk[0], chunk[1], cluster)))
        step = self.config.max_batch
        for node, envs in staged.items():
            address = addresses.get(node)
            if address is None:
                continue
            if len(envs) > 1:
                envs.sort(key=_priority_of)  # stable: FIFO within a priority
            acks = piggyback.get(node)
            for i in range(0, len(envs), step):
                out.append(Outgoing(address, node, batch_frame(envs[i:i + step], acks, cluster)))
                acks = None
        self.counters["frames_sent"] += len(out)
        return out

    def data_pending(self) -> bool:
        """True when `messages_to_send` has data to send (not only acks or rejects). A runtime may hold
        lone acks for a loop turn, so that they do not delay what the events just woke up (decision 0115)."""
        return any(self._staged.values())

    def next_event(self) -> DeliveryEvent | None:
        return self._events.popleft() if self._events else None

    # -- sender internals -----------------------------------------------------------------------------

    def _submit(self, dest_node: str, dest_agent: str, payload: bytes, now_ms: int, kind: int,
                correlation: MessageId | None, src_agent: str, mode: str, priority: int, ttl_ms: int,
                wait_if_full: bool, msg_id: MessageId | None) -> MessageId:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if type(payload) is not bytes or len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload must be bytes of at most {MAX_PAYLOAD_BYTES} (serialise it first)")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES} (0 = high)")
        if not isinstance(ttl_ms, int) or not 0 <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"ttl_ms must be an int in 0..{MAX_TTL_MS} (0 = no TTL)")
        if kind in (KIND_DATA, KIND_REQUEST) and not dest_agent:
            raise ValueError("dest_agent must name an agent")
        if wait_if_full and (mode == BEST_EFFORT or ttl_ms == 0):
            raise ValueError("wait_if_full needs a reliable mode and a ttl_ms (how long to wait)")
        if msg_id is not None and mode != DURABLE:
            raise ValueError("only durable messages reuse a stored msg_id (resend from the outbox)")
        return self._enqueue(dest_node, dest_agent, payload, now_ms, kind, correlation, src_agent, mode, priority,
                             ttl_ms, wait_if_full, msg_id)

    def _enqueue(self, dest_node: str, dest_agent: str, payload: bytes, now_ms: int, kind: int,
                 correlation: MessageId | None, src_agent: str, mode: str, priority: int, ttl_ms: int,
                 wait_if_full: bool, msg_id: MessageId | None) -> MessageId:
        """`_submit` after its checks: what `respond` calls directly, its other fields coming from a request
        the receive path validated."""
        if self._tracked >= self.config.total_queue:
            self.counters["send_queue_full"] += 1
            raise SendQueueFull(f"{self._tracked} messages are queued on this node; wait or slow down")
        if msg_id is None:
            self._counter += 1
            msg_id = _new_id(MessageId, (self.node_id, self.epoch, self._counter))
        flags = (FLAG_DURABLE if mode == DURABLE else 0) | (FLAG_WAIT_IF_FULL if wait_if_full else 0)
        m = _Msg(msg_id, dest_node, dest_agent, src_agent, kind, priority, flags, correlation, payload,
                 mode == DURABLE, now_ms + ttl_ms if ttl_ms else None)
        m.reliable = mode != BEST_EFFORT
        self.counters["sent"] += 1
        if kind == KIND_REQUEST:
            self._requests[msg_id] = _Pending(m, now_ms + ttl_ms)
            self._push_timer(now_ms + ttl_ms, _T_REQUEST, msg_id)
        if dest_node == self.node_id:
            self._local(m, now_ms)
            return msg_id
        live = self._peers.addresses  # (membership test without `LivePeers.__contains__`: twice per message)
        if dest_node not in live and mode != DURABLE:
            self._fail(m, NodeUnreachable, f"node {dest_node} is not a live member", now_ms)
            return msg_id
        if mode == BEST_EFFORT:
            self.counters["sent_best_effort"] += 1
            self._staged.setdefault(dest_node, []).append(self._envelope(m, None, now_ms))
            return msg_id
        key = (dest_node, dest_agent, priority)
        ch = self._send.get(key)
        if ch is None:
            self._session += 1
            ch = self._send[key] = _SendChannel(key, self._session, now_ms)
            self._by_node.setdefault(dest_node, {})[key] = None
            self._arm_sweep(now_ms)
        if len(ch.inflight) + len(ch.queue) >= self.config.window + self.config.channel_queue:
            self.counters["send_queue_full"] += 1
            self._requests.pop(msg_id, None)
            raise SendQueueFull(f"channel to {dest_agent!r} on {dest_node} is full; wait or slow down")
        m.channel = ch
        ch.last_ms = now_ms
        self._tracked += 1
        expires = m.expires_ms
        if expires is not None and kind != KIND_REQUEST:  # a request's deadline timer (above) covers its TTL
            expiries = ch.expiries
            if expiries and ch.ttl_at is not None and expires >= expiries[-1].expires_ms:  # type: ignore[operator]
                expiries.append(m)  # `_track_expiry`'s common case: in order, the channel's timer is armed
            else:
                self._track_expiry(ch, m)
        inflight = ch.inflight
        if ch.queue or len(inflight) >= self.config.window or dest_node not in live:
            ch.queue.append(m)
            self._pump_channel(ch, now_ms)
            return msg_id
        # `_pump_channel` for this one message (nothing queued before it, room in the window): straight
        # into the window and the frame staged for its node.
        seq = m.seq = ch.next_seq
        ch.next_seq = seq + 1
        m.state = _INFLIGHT
        inflight[seq] = m
        m.attempts = 1
        c = self.config
        rto = c.initial_rto_ms
        if c.jitter:  # `uniform(-jitter, jitter)` spelt out: the same numbers, one Python call less
            rto = max(1, int(rto * (1.0 + (-c.jitter + 2 * c.jitter * self._rng.random()))))
        due = m.retry_at = now_ms + rto
        staged = self._staged.get(dest_node)
        if staged is None:
            staged = self._staged[dest_node] = []
        staged.append([ch.session, seq, ch.first(), msg_id, kind, dest_agent, src_agent, priority, ttl_ms, flags,
                       correlation, payload])
        self.counters["transmissions"] += 1
        if ch.retry_at is None or due < ch.retry_at:
            self._arm_retry(ch, due)
        return msg_id

    def _pump_channel(self, ch: _SendChannel, now_ms: int) -> None:
        """Move queued messages into the window and transmit them: `_transmit` inlined for the first
        attempt, the loop that runs once per message sent. The messages of one call share one jittered
        retry time and the channel's timer (decision 0118)."""
        c = self.config
        window = c.window
        queue, inflight = ch.queue, ch.inflight
        if not queue or len(inflight) >= window:
            return
        dest_node = ch.key[0]
        staged = None
        if dest_node in self._peers:
            staged = self._staged.get(dest_node)
            if staged is None:
                staged = self._staged[dest_node] = []
        session = ch.session
        sent = 0
        floor = ch.first() if inflight else 0
        first_due: int | None = None
        room = window - len(inflight)
        seq = ch.next_seq - 1
        popleft = queue.popleft
        expires, ttl = None, 0  # the TTL left is computed once per run of equal expiry times
        while queue and room > 0:
            m = popleft()
            if m.state == _DONE:
                continue
            room -= 1
            seq += 1
            m.seq = seq
            m.state = _INFLIGHT
            inflight[seq] = m
            if not floor:
                floor = seq
            m.attempts = 1  # a message leaves the queue once; retransmissions go through _transmit
            if first_due is None:
                # One jittered RTO for the messages this call sends: they share a frame, so they share
                # its retry time too (one draw per frame instead of one per message).
                rto = c.initial_rto_ms
                if c.jitter:
                    rto = max(1, int(rto * (1.0 + self._rng.uniform(-c.jitter, c.jitter))))
                first_due = now_ms + rto
            m.retry_at = first_due
            if staged is not None:
                if m.expires_ms != expires:
                    expires = m.expires_ms
                    ttl = 0 if expires is None else max(1, expires - now_ms)
                staged.append([session, seq, floor, m.msg_id, m.kind, m.dest_agent, m.src_agent,
                               m.priority, ttl, m.flags, m.correlation, m.payload])
                sent += 1
        ch.next_seq = seq + 1
        self.counters["transmissions"] += sent
        if first_due is not None and (ch.retry_at is None or first_due < ch.retry_at):
            self._arm_retry(ch, first_due)

    def _transmit(self, m: _Msg, now_ms: int) -> None:
        m.attempts += 1
        c = self.config
        rto = min(c.max_rto_ms, c.initial_rto_ms << min(m.attempts - 1, 30))
        if c.jitter:
            rto = max(1, int(rto * (1.0 + self._rng.uniform(-c.jitter, c.jitter))))
        m.retry_at = now_ms + rto
        self._retry_timer(m)
        self._stage(m, now_ms)

    def _stage(self, m: _Msg, now_ms: int) -> None:
        if m.dest_node not in self._peers:
            return
        self._staged.setdefault(m.dest_node, []).append(self._envelope(m, m.channel, now_ms))
        self.counters["transmissions"] += 1

    def _envelope(self, m: _Msg, ch: _SendChannel | None, now_ms: int) -> list[Any]:
        """`m` in wire form (see `batch_frame`): built once per transmission, no intermediate object."""
        ttl = 0 if m.expires_ms is None else max(1, m.expires_ms - now_ms)
        if ch is None:
            session = floor = 0
        else:
            session = ch.session
            floor = ch.floor()
        return [session, m.seq, floor, m.msg_id, m.kind, m.dest_agent, m.src_agent, m.priority, ttl, m.flags,
                m.correlation, m.payload]

    def _on_retry(self, m: _Msg, due: int, now_ms: int) -> None:
        if m.state != _INFLIGHT or m.retry_at != due:
            return
        if m.sacked:
            m.retry_at = now_ms + self.config.max_rto_ms
            self._retry_timer(m)
            return
        if not m.durable and not m.busy and m.attempts >= self.config.max_attempts:
            self._fail(m, NodeUnreachable, f"no acknowledgement after {m.attempts} attempts", now_ms)
            return
        ch = m.channel
        if ch is not None and not m.busy:
            # The channel moved within one RTO: the receiver is busy working through the window, not
            # losing it. Wait one RTO from that progress, as TCP restarts its timer on new acks.
            resume = ch.progress_ms + min(self.config.max_rto_ms, self.config.initial_rto_ms << min(m.attempts - 1, 30))
            if resume > now_ms:
                m.retry_at = resume
                self._retry_timer(m)
                return
        self.counters["retransmissions"] += 1
        self._transmit(m, now_ms)

    def _retry_timer(self, m: _Msg) -> None:
        """Make sure a timer fires by `m.retry_at`: its channel's, or one of its own off a channel."""
        ch = m.channel
        if ch is None:
            self._push_timer(m.retry_at, _T_RETRY, m)
        elif ch.retry_at is None or m.retry_at < ch.retry_at:
            self._arm_retry(ch, m.retry_at)

    def _arm_retry(self, ch: _SendChannel, due: int) -> None:
        ch.retry_at = due
        self._push_timer(due, _T_CH_RETRY, ch)

    def _on_channel_retry(self, ch: _SendChannel, now_ms: int) -> None:
        """The channel timer fired: retry its messages that are due, then re-arm for the next one. A scan
        of the window (at most `window` messages) about once per RTO, instead of a heap entry per message."""
        ch.retry_at = None
        for m in [m for m in ch.inflight.values() if m.retry_at <= now_ms]:
            self._on_retry(m, m.retry_at, now_ms)
        if ch.inflight:
            due = min(m.retry_at for m in ch.inflight.values())
            if ch.retry_at is None or due < ch.retry_at:
                self._arm_retry(ch, due)

    def _track_expiry(self, ch: _SendChannel, m: _Msg) -> None:
        assert m.expires_ms is not None
        expiries = ch.expiries
        if expiries and m.expires_ms < expiries[-1].expires_ms:  # type: ignore[operator]
            self._push_timer(m.expires_ms, _T_TTL, m)  # out of order: a timer of its own
            return
        expiries.append(m)
        if ch.ttl_at is None:
            ch.ttl_at = m.expires_ms
            self._push_timer(m.expires_ms, _T_CH_TTL, ch)

    def _on_channel_ttl(self, ch: _SendChannel, now_ms: int) -> None:
        ch.ttl_at = None
        expiries = ch.expiries
        while expiries and (expiries[0].state == _DONE or expiries[0].expires_ms <= now_ms):  # type: ignore[operator]
            self._on_ttl(expiries.popleft(), now_ms)
        if expiries and ch.ttl_at is None:
            ch.ttl_at = expiries[0].expires_ms
            self._push_timer(ch.ttl_at, _T_CH_TTL, ch)  # type: ignore[arg-type]

    def _on_ttl(self, m: _Msg, now_ms: int) -> None:
        if m.state == _DONE or (m.state == _INFLIGHT and m.sacked):
            return
        if m.busy:
            self._fail(m, Backpressure, "the receiving inbox stayed full until the message's TTL", now_ms)
        elif m.kind == KIND_REQUEST:
            self._fail(m, DeadlineExceeded, "no response before the deadline", now_ms)
        else:
            self._fail(m, Expired, "TTL ran out before the receiver accepted it", now_ms)

    def _on_request_deadline(self, msg_id: MessageId, due: int, now_ms: int) -> None:
        pending = self._requests.get(msg_id)
        if pending is None or pending.deadline_ms != due:
            return
        m = pending.msg
        if m.state != _DONE and not m.sacked and m.channel is not None:
            self._fail(m, Backpressure if m.busy else DeadlineExceeded, "no response before the deadline", now_ms)
        else:
            del self._requests[msg_id]
            self._emit(DeadlineExceeded(msg_id, m.dest_node, m.dest_agent, "no response before the deadline"))

    def _fail(self, m: _Msg, cls: Any, detail: str, now_ms: int, *, confirmed: bool | None = None,
              prompt: bool = True) -> None:
        """Finish `m` with failure `cls`; on a channel this moves the floor so the receiver may skip it."""
        was_inflight = m.state == _INFLIGHT
        self._finish(m)
        ch = m.channel
        if was_inflight and ch is not None:
            ch.inflight.pop(m.seq, None)
            if prompt and ch.inflight:
                # Tell the receiver the new floor at once (RFC 3758 FORWARD-TSN) by resending the oldest.
                self._stage(ch.inflight[ch.first()], now_ms)
            self._pump_channel(ch, now_ms)
        if m.kind == KIND_REQUEST:
            if self._requests.pop(m.msg_id, None) is None:
                return
        self.counters["failed"] += 1
        event = cls(m.msg_id, m.dest_node, m.dest_agent, detail)
        if confirmed is not None and confirmed != event.confirmed:
            event = cls(m.msg_id, m.dest_node, m.dest_agent, detail, confirmed)
        self._emit(event)

    def _finish(self, m: _Msg) -> None:
        if m.state != _DONE and m.channel is not None:
            self._tracked -= 1
        m.state = _DONE

    def _on_acks(self, sender: str, msg: Acks, now_ms: int) -> None:
        for r in msg.rejects:
            self._on_reject(sender, r, now_ms)
        for a in msg.entries:
            ch = self._send.get((sender, a.dest_agent, a.priority))
            if ch is None or ch.session != a.session:
                self.counters["acks_stale"] += 1
                continue
            ch.last_ms = now_ms
            inflight = ch.inflight
            events = self._events
            acked = 0
            if inflight:
                # Seqs in flight are this channel's, ascending: pop them by number from the floor up to
                # the ack (bounded by the seqs issued) instead of re-iterating the dict per message, which
                # rescans the slots its earlier deletions emptied at the front.
                pop = inflight.pop
                tracked = 0
                for seq in range(ch.first(), min(a.upto, ch.next_seq - 1) + 1):
                    m = pop(seq, None)
                    if m is None:
                        continue  # failed or answered before its ack
                    acked += 1
                    if m.state != _DONE:  # _finish, inlined: this loop runs once per acknowledged message
                        tracked += 1
                        m.state = _DONE
                    if m.kind == KIND_DATA:  # a request's outcome is its answer; a response's nobody awaits
                        if len(events) < MAX_EVENTS:
                            events.append(_delivered(m.msg_id, sender, m.dest_agent))
                        else:
                            self._emit(_delivered(m.msg_id, sender, m.dest_agent))
                self._tracked -= tracked
            if acked:
                ch.progress_ms = now_ms
                self.counters["delivered_acks"] += acked
                expiries = ch.expiries
                while expiries and expiries[0].state == _DONE:
                    expiries.popleft()
            for seq in a.selective:
                m = inflight.get(seq)
                if m is not None:
                    m.sacked = True
            if ch.queue:  # room for queued messages (`_pump_channel` has nothing to do otherwise)
                self._pump_channel(ch, now_ms)

    def _on_reject(self, sender: str, r: RejectEntry, now_ms: int) -> None:
        self.counters["rejects_received"] += 1
        cls = _REASON_EVENT.get(r.reason)
        if r.seq == 0:
            # Best-effort rejection or a late notice (expired in the inbox after it was acked).
            if cls is None:
                return
            self._requests.pop(r.msg_id, None)
            if r.msg_id.origin == self.node_id:
                self.counters["failed"] += 1
                self._emit(cls(r.msg_id, sender, r.dest_agent, r.detail, True))
            return
        ch = self._send.get((sender, r.dest_agent, r.priority))
        m = None if ch is None or ch.session != r.session else ch.inflight.get(r.seq)
        if m is None or m.msg_id != r.msg_id:
            return
        if r.reason == REASON_BUSY:
            # Not consumed (the receiver dropped it from its buffer): retransmit until the TTL.
            m.busy = True
            m.sacked = False
            m.attempts = 0
            return
        if cls is not None:
            # Consumed by the receiver: it is not a hole, so no prompt is needed.
            self._fail(m, cls, r.detail, now_ms, confirmed=True, prompt=False)

    def _local(self, m: _Msg, now_ms: int) -> None:
        """Sender and receiver on this node: deliver at once (FIFO trivially; a full inbox fails at once)."""
        if m.kind in (KIND_RESPONSE, KIND_ERROR):
            self._on_response(self.node_id, m.src_agent, m.kind, m.correlation, m.payload)
            return
        if m.dest_agent not in self._capacity:
            self._fail(m, UnknownAgent, f"no agent {m.dest_agent!r} on this node", now_ms, confirmed=True)
            return
        if self._inbox[m.dest_agent] >= self._capacity[m.dest_agent]:
            self.counters["rejected_backpressure"] += 1
            self._fail(m, Backpressure, f"inbox of {m.dest_agent!r} is full", now_ms, confirmed=True)
            return
        self._inbox[m.dest_agent] += 1
        self.counters["delivered"] += 1
        self._emit(Incoming(m.msg_id, self.node_id, m.src_agent, m.dest_agent, m.kind, m.priority, m.payload,
                            m.expires_ms, m.reliable, m.durable))
        if m.reliable and m.kind == KIND_DATA:
            self._emit(MessageDelivered(m.msg_id, self.node_id, m.dest_agent))

    # -- receiver internals -------------------------------------------------------------------------------

    def _on_batch(self, sender: str, envelopes: list[list[Any]], now_ms: int) -> None:
        c = self.config
        counters = self.counters
        counters["received"] += len(envelopes)
        last_key: tuple[str, str, int] | None = None
        rc: _RecvChannel | None = None
        i, n = 0, len(envelopes)
        while i < n:
            env = envelopes[i]
            i += 1
            session = env[0]
            if session == 0:
                self._consume(sender, env, None, now_ms)
                continue
            key = (sender, env[5], env[7])
            if key != last_key or rc is None or session != rc.session:
                # A new channel in this frame (frames hold runs of one channel): look it up once per run.
                rc = self._recv.get(key)
                if rc is None or session > rc.session:
                    rc = self._recv[key] = _RecvChannel(session, now_ms)
                    self._arm_sweep(now_ms)
                elif session < rc.session:
                    counters["stale_session"] += 1
                    rc = None
                    continue
                rc.last_ms = now_ms
                self._ack_due.setdefault(sender, {})[key] = None
                last_key = key
            seq = env[1]
            if seq == rc.upto + 1 and not rc.buffer:
                # In order with nothing held back (the common case): consume without buffering; the
                # channel's run of plain messages from here in one loop when they fit the inbox.
                if env[4] <= KIND_REQUEST:
                    done = self._consume_run(sender, envelopes, i - 1, rc, now_ms)
                    if done >= i:
                        i = done
                        continue
                if self._consume(sender, env, rc, now_ms):
                    rc.upto = seq
                continue
            floor = env[2]
            if floor - 1 > rc.upto:
                counters["skipped"] += floor - 1 - rc.upto
                rc.upto = floor - 1
                for old in [s for s in rc.buffer if s <= rc.upto]:
                    del rc.buffer[old]
            if seq <= rc.upto:
                counters["duplicates"] += 1
                rejected = rc.rejected.get(seq)
                if rejected is not None:
                    self._rejects.setdefault(sender, []).append(rejected)
            elif seq in rc.buffer:
                counters["duplicates"] += 1
            elif seq - rc.upto > c.reorder_buffer:
                counters["reorder_overflow"] += 1
            else:
                if seq != rc.upto + 1:
                    counters["reordered"] += 1
                rc.buffer[seq] = env
            self._drain(sender, rc, now_ms)

    def _consume_run(self, sender: str, envelopes: list[list[Any]], start: int, rc: _RecvChannel, now_ms: int) -> int:
        """`_consume` for the in-order envelopes of `rc` from `start` on, in one loop: the receive path of
        nearly every data frame. Takes a prefix of envelopes of the channel (same session, agent and
        priority), in sequence, data or request, that fit the agent's inbox; returns where that prefix
        ends (`start` when the first one needs the general path: unknown agent, full inbox). The
        outcome per envelope is `_consume`'s: delivered, or dropped as a durable duplicate."""
        first = envelopes[start]
        agent = first[5]
        capacity = self._capacity.get(agent)
        if capacity is None:
            return start
        inbox = self._inbox
        room = capacity - inbox[agent]
        events = self._events
        end = min(len(envelopes), start + room, start + MAX_EVENTS - len(events))
        if end <= start:
            return start
        session, priority = first[0], first[7]
        upto = rc.upto
        seen = self._durable_seen.get(sender)
        dedup = self.config.durable_dedup
        append = events.append
        make = _incoming
        j = start
        delivered = 0
        while j < end:
            env = envelopes[j]
            # 0 session, 1 seq, 3 msg_id, 4 kind, 5 dest_agent, 6 src_agent, 7 priority, 8 ttl, 9 flags, 11 payload
            if env[1] != upto + 1 or env[0] != session or env[5] != agent or env[7] != priority or env[4] > KIND_REQUEST:
                break
            upto += 1
            j += 1
            if env[9] & FLAG_DURABLE:
                msg_id = env[3]
                if seen is None:
                    self._remember_durable(sender, msg_id, True)  # the sender's first: creates its window
                    seen = self._durable_seen[sender]
                elif msg_id in seen:
                    self.counters["durable_duplicates"] += 1
                    continue
                else:  # `_remember_durable`, inlined
                    if len(seen) >= dedup:
                        seen.popitem(False)
                    seen[msg_id] = None
                durable = True
            else:
                durable = False
            ttl = env[8]
            append(make(env[3], sender, env[6], agent, env[4], priority, env[11], now_ms + ttl if ttl else None,
                        True, durable))
            delivered += 1
        rc.upto = upto
        inbox[agent] += delivered
        self.counters["delivered"] += delivered
        return j

    def _drain(self, sender: str, rc: _RecvChannel, now_ms: int) -> None:
        buffer = rc.buffer
        while rc.upto + 1 in buffer:
            env = buffer[rc.upto + 1]
            if not self._consume(sender, env, rc, now_ms):
                del buffer[rc.upto + 1]
                return
            del buffer[rc.upto + 1]
            rc.upto += 1

    def _consume(self, sender: str, env: list[Any], rc: _RecvChannel | None, now_ms: int) -> bool:
        """Deliver or reject one in-order envelope (wire form). False only for "busy" (inbox full, sender waits)."""
        #   0        1    2      3       4     5           6          7         8       9      10           11
        # [session, seq, floor, msg_id, kind, dest_agent, src_agent, priority, ttl_ms, flags, correlation, payload]
        flags = env[9]
        durable = bool(flags & FLAG_DURABLE)
        if durable:
            seen = self._durable_seen.get(sender)
            if seen is not None and env[3] in seen:
                self.counters["durable_duplicates"] += 1
                return True
        kind = env[4]
        if kind == KIND_RESPONSE or kind == KIND_ERROR:
            self._on_response(sender, env[6], kind, env[10], env[11])
            self._remember_durable(sender, env[3], durable)
            return True
        agent = env[5]
        capacity = self._capacity.get(agent)
        if capacity is None:
            self.counters["rejected_unknown_agent"] += 1
            self._reject_env(sender, env, rc, REASON_UNKNOWN_AGENT, f"no agent {agent!r} on node {self.node_id}")
            return True
        inbox = self._inbox
        if inbox[agent] >= capacity:
            if rc is not None and flags & FLAG_WAIT_IF_FULL:
                self.counters["busy"] += 1
                self._rejects.setdefault(sender, []).append(RejectEntry(
                    env[3], agent, env[7], env[0], env[1], REASON_BUSY, "inbox full, retry"))
                return False
            self.counters["rejected_backpressure"] += 1
            self._reject_env(sender, env, rc, REASON_BACKPRESSURE,
                             f"inbox of {agent!r} on node {self.node_id} is full ({capacity})")
            return True
        inbox[agent] += 1
        self.counters["delivered"] += 1
        if durable:
            self._remember_durable(sender, env[3], durable)
        ttl = env[8]
        event = _incoming(env[3], sender, env[6], agent, kind, env[7], env[11], now_ms + ttl if ttl else None,
                          rc is not None, durable)
        events = self._events
        if len(events) < MAX_EVENTS:
            events.append(event)
        else:
            self._emit(event)
        return True

    def _reject_env(self, sender: str, env: list[Any], rc: _RecvChannel | None, reason: int, detail: str) -> None:
        entry = RejectEntry(env[3], env[5], env[7], env[0], env[1], reason, detail)
        if rc is not None:
            if len(rc.rejected) >= MAX_REJECTS_REMEMBERED:
                del rc.rejected[next(iter(rc.rejected))]
            rc.rejected[env[1]] = entry
        self._reject(sender, entry)

    def _reject(self, node: str, entry: RejectEntry) -> None:
        self._rejects.setdefault(node, []).append(entry)

    def _remember_durable(self, sender: str, msg_id: MessageId, durable: bool) -> None:
        if not durable:
            return
        seen = self._durable_seen.get(sender)
        if seen is None:
            if len(self._durable_seen) >= MAX_DURABLE_SENDERS:
                del self._durable_seen[next(iter(self._durable_seen))]
            seen = self._durable_seen[sender] = OrderedDict()
        if len(seen) >= self.config.durable_dedup:
            seen.popitem(last=False)
        seen[msg_id] = None

    def _on_response(self, node: str, from_agent: str, kind: int, correlation: MessageId | None, payload: bytes) -> None:
        pending = None if correlation is None else self._requests.pop(correlation, None)
        if pending is None or correlation is None:
            self.counters["late_responses"] += 1
            return
        self.counters["responses"] += 1
        m = pending.msg
        if m.state != _DONE and m.channel is not None:
            # The response proves delivery even if the ack has not arrived yet.
            self._finish(m)
            m.channel.inflight.pop(m.seq, None)
        if kind == KIND_ERROR:
            self._emit(HandlerError(correlation, node, from_agent, payload.decode("utf-8", "replace")))
        else:
            self._emit(ResponseReceived(correlation, node, from_agent, payload))

    # -- housekeeping -------------------------------------------------------------------------------------

    def _sweep(self, now_ms: int) -> None:
        idle = self.config.channel_idle_ms
        for key in [k for k, rc in self._recv.items() if now_ms - rc.last_ms >= idle and not rc.buffer]:
            del self._recv[key]
            self.counters["channels_swept"] += 1
        for ch in [ch for ch in self._send.values()
                   if now_ms - ch.last_ms >= idle and not ch.inflight and not ch.queue]:
            self._drop_channel(ch)
            self.counters["channels_swept"] += 1
        if self._recv or self._send:
            self._arm_sweep(now_ms)

    def _drop_channel(self, ch: _SendChannel) -> None:
        self._send.pop(ch.key, None)
        keys = self._by_node.get(ch.key[0])
        if keys is not None:
            keys.pop(ch.key, None)
            if not keys:
                del self._by_node[ch.key[0]]

    def _arm_sweep(self, now_ms: int) -> None:
        if self._sweep_at is None:
            self._sweep_at = now_ms + self.config.channel_idle_ms // 4

    def _push_timer(self, due: int, kind: int, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, self._timer_seq, kind, key))

    def _emit(self, event: DeliveryEvent) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)

    def channels(self) -> Iterator[tuple[str, str, int]]:
        """Keys (dest node, dest agent, priority) of the open send channels, for diagnostics."""
        return iter(list(self._send))


_priority_of = itemgetter(7)
"""The priority field of an envelope in wire form (a C-level sort key)."""

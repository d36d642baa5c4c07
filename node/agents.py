"""Agents and messaging in the running node: the asyncio service around the registry, delivery and
broadcast cores, and the embedding API that `Node` exposes (register_agent, send, request, publish,
subscribe, broadcast, find_agents).

The service is a thin adapter in the style of the runtime (house style rule 8): it feeds the three
sans-I/O cores (frames, membership events, API calls), drains what they want sent and what they
report, and re-arms one timer at the earliest of their timers. What it adds is I/O and asyncio:
- each local agent has an inbox queue and worker task(s) that call its handler, answer requests
  with the handler's result (or its error text) and release the inbox slot the core counted;
- durable sends are written to the SQLite outbox (group commit: one transaction per loop turn)
  before `send` returns, acknowledged entries are removed, and pending ones are resent at start;
- the boot epoch that makes message ids unique across restarts is persisted in the data directory;
- a health loop reports handler liveness and the optional user health callback to the registry,
  so "agent unhealthy" travels in the agent's record, apart from "node suspect" (membership).

Ordering guarantee (docs/messaging.md): FIFO per (sender node, receiving agent, priority class)
for messages handed to the handler, with one worker per agent (the default `concurrency=1`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from agentnode import events as ev
from agentnode.agent_messages import (
    AGENT_TYPE_MAX,
    AGENT_TYPE_MIN,
    KIND_DATA,
    KIND_REQUEST,
    MAX_TTL_MS,
    PRIORITIES,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    AgentRecord,
    AgentSkill,
    MessageId,
    fast_constructor,
)
from agentnode.broadcast import Broadcast, BroadcastConfig, BroadcastReceived
from agentnode.datadir import write_atomic
from agentnode.delivery import (
    AT_LEAST_ONCE,
    BEST_EFFORT,
    DURABLE,
    MODES,
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
from agentnode.name_keeper import NameKeeper
from agentnode.names import (
    NAME_MARKER_KEY,
    AgentNameConfirmed,
    AgentNameLost,
    AgentNameUnconfirmed,
    NameConfig,
    NameState,
    NameTableFull,
    NameTaken,
    marker_of,
    parse_marker,
)
from agentnode.durable_backlog import DurableBacklog
from agentnode.inbox import Inbox, InboxItem, InboxWriteFailed
from agentnode.outbox import Outbox, OutboxEntry, OutboxFull, StorageError
from agentnode.registry import (
    AgentEntry,
    AgentHealthChanged,
    AgentRegistered,
    AgentRemoved,
    AgentUpdated,
    Registry,
    RegistryConfig,
)
from agentnode.routing import STRATEGIES, Balancer, Candidate, NoCandidate
from agentnode.transport.base import Address
from agentnode.transport.connections import write_promptly

if TYPE_CHECKING:
    from agentnode.runtime import Node

__all__ = [
    "Agent",
    "AgentAPI",
    "AgentEntry",
    "AgentHealthChanged",
    "AgentNameConfirmed",
    "AgentNameLost",
    "AgentNameUnconfirmed",
    "AgentRecord",
    "AgentRegistered",
    "AgentRemoved",
    "AgentService",
    "AgentSkill",
    "AgentUpdated",
    "BackpressureError",
    "Capability",
    "DeadlineExceededError",
    "DeliveryError",
    "ExpiredError",
    "Message",
    "MessagingConfig",
    "NameTableFull",
    "NameTaken",
    "NodeUnreachableError",
    "RemoteHandlerError",
    "Reply",
    "Subscription",
    "UnknownAgentError",
    "add_start_hook",
    "entry_json",
    "start_demo_agents",
]

log = logging.getLogger("agentnode.agents")

EPOCH_FILE = "agent-epoch.json"
"""Boot epoch of the agent cores, increased at every start (message ids must never repeat)."""
MAX_EPOCH = 2**30 - 1
"""Delivery packs the epoch into session numbers (epoch << 32), so it must stay below 2**30."""
MAX_FAILOVER = 8
"""Agents tried for one capability send before giving up (each failure names its cause)."""
BROADCAST_BACKLOG = 4_096
"""Broadcast/topic messages waiting per agent; beyond this they are dropped and counted (not acked)."""
SUBSCRIPTION_QUEUE = 10_000
"""Items a control-endpoint subscription buffers for a slow CLI reader; beyond this they are dropped and counted."""
ROOM_WAKE = 256
"""Senders waiting for queue room woken per pump (a full window's worth), oldest first."""
WAITER_SWEEP_S = 0.05
"""How often callers past their deadline are failed (bounds the deadline's overshoot)."""
SEND_CHUNK = 1_000
"""Messages a control `agents.send --count N` keeps in flight at once."""
MAX_ADDRESSES = 10_000
"""Parsed peer addresses cached by the pump (cleared when full)."""
SEND_BURST = 8
"""Unconfirmed sends accepted between two pumps before `send` yields to the loop once (decisions 0125,
0127): a task sending in a tight loop never suspends otherwise, and a 160-message burst held the loop
for ~2 ms while requests, their answers and acks waited. 8 sends are ~0.06 ms of sender CPU."""
RESEND_BATCH = 10_000
"""Outbox entries handed to delivery per loop turn at start (bounds the start-up stall)."""
BUILTIN_NAME = "_node"
"""Name of the built-in agent the node sends and subscribes as (CLI sends, `Node.subscribe`)."""

Priority = Union[int, Literal["high", "normal", "low"]]
Payload = Union[bytes, bytearray, memoryview, str]
_PRIORITY_NAMES = {"high": PRIORITY_HIGH, "normal": PRIORITY_NORMAL, "low": PRIORITY_LOW}
_PLAIN_RESULTS = (bytes, str, dict, list, int, float, bool)
"""Handler results that are certainly not awaitable (skips `inspect.isawaitable` on the hot path)."""
_AGENT_FRAME_TYPES = (32, 33, 40, 41, 48, 49, 50, 51, 52, 53, 54)
assert all(AGENT_TYPE_MIN <= t <= AGENT_TYPE_MAX for t in _AGENT_FRAME_TYPES)


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagingConfig:
    """Messaging knobs of one node; durations in seconds at this (user-facing) edge."""

    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)
    default_timeout_s: float = 10.0
    """Request timeout, and how long a `send` waits for an acknowledgement, when the caller gives none."""
    on_full: Literal["error", "wait"] = "error"
    """Backpressure policy: fail at once with BackpressureError, or wait (up to the timeout/TTL) for room."""
    health_interval_s: float = 1.0
    """How often handler liveness and the user health callbacks are checked and load is published."""
    handler_stall_s: float = 30.0
    """A handler busy with one message longer than this makes its agent unhealthy (liveness)."""
    health_check_timeout_s: float = 2.0
    """A user health callback that does not answer within this is a failed check."""
    outbox_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite synchronous mode of the durable outbox (decision 0073): NORMAL survives kill -9, FULL power loss."""
    outbox_max_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if self.default_timeout_s <= 0 or self.default_timeout_s * 1000 > MAX_TTL_MS:
            raise ValueError("default_timeout_s must be positive and at most 7 days")
        if self.on_full not in ("error", "wait"):
            raise ValueError("on_full must be 'error' (fail at once) or 'wait' (wait up to the timeout)")
        if self.health_interval_s <= 0 or self.handler_stall_s <= 0 or self.health_check_timeout_s <= 0:
            raise ValueError("health_interval_s, handler_stall_s and health_check_timeout_s must be positive")
        if self.outbox_synchronous not in ("NORMAL", "FULL"):
            raise ValueError("outbox_synchronous must be NORMAL or FULL")
        if self.outbox_max_rows < 1:
            raise ValueError("outbox_max_rows must be at least 1")


# -- values the API hands out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability:
    """Address a message to one agent among those with `name`, picked by `strategy`, with failover.

    Strategies: round_robin, least_outstanding, latency, consistent_hash (needs `key`).
    """

    name: str
    strategy: str = "round_robin"
    key: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "consistent_hash" and self.key is None:
            raise ValueError("consistent_hash needs a key, for example Capability('chat', 'consistent_hash', key=user_id)")


@dataclass(frozen=True, slots=True)
class Message:
    """What a handler receives."""

    msg_id: MessageId
    payload: bytes
    agent_id: str
    """The receiving agent."""
    sender_agent: str
    """The sending agent ("" when unknown)."""
    sender_node: str
    kind: Literal["message", "request", "broadcast", "publish"]
    priority: int = PRIORITY_NORMAL
    topic: str = ""
    """The topic of a published message ("" for a broadcast or a direct message)."""

    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.payload)


_message = fast_constructor(Message)
_outbox_entry = fast_constructor(OutboxEntry)
"""`OutboxEntry(...)` with every field given: one per durable send (decision 0122)."""
"""`Message(...)` with every field given, at half the cost: one per handled message (decision 0119)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a request."""

    payload: bytes
    agent_id: str
    """The agent that answered (useful after a capability request)."""
    node_id: str
    rtt_ms: float

    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.payload)


_reply = fast_constructor(Reply)
"""`Reply(...)` with every field given: one per answered request."""

Handler = Callable[[Message], Union[Awaitable[Any], Any]]
"""`handler(message)`; for a request its return value (bytes, str, None or JSON-able) is the answer."""
HealthCheck = Callable[[], Union[Awaitable[bool], bool]]


# -- errors (each names its cause) ----------------------------------------------------------------------


class UnknownAgentError(DeliveryError):
    """No such agent (not in the registry, or the destination node does not host it)."""


class NodeUnreachableError(DeliveryError):
    """The agent's node is dead, left, or never acknowledged."""


class DeadlineExceededError(DeliveryError, TimeoutError):
    """No answer before the deadline (the request may still have been handled)."""


class RemoteHandlerError(DeliveryError):
    """The remote handler raised; `remote_error` is its error text."""

    @property
    def remote_error(self) -> str:
        return self.outcome.detail


class BackpressureError(DeliveryError):
    """A queue was full: the receiving agent's inbox, or this node's send queues."""


class ExpiredError(DeliveryError):
    """The message's TTL ran out before a handler took it."""


_ERROR_FOR: dict[type, type[DeliveryError]] = {
    UnknownAgent: UnknownAgentError,
    NodeUnreachable: NodeUnreachableError,
    DeadlineExceeded: DeadlineExceededError,
    HandlerError: RemoteHandlerError,
    Backpressure: BackpressureError,
    Expired: ExpiredError,
}
_FAILOVER_ERRORS = (UnknownAgentError, NodeUnreachableError, BackpressureError)


async def _yield_behind_io(loop: asyncio.AbstractEventLoop | None) -> None:
    """Suspend until the loop has polled for I/O and run the tasks that I/O woke (decision 0127).

    `asyncio.sleep(0)` queues the caller's next step at once, ahead of the frames the loop is about to
    read, so a caller woken by one of them (an answered request) waits behind the next burst. Two hops
    put this caller's wake-up behind theirs on either loop: uvloop reads in its own phase after the
    queue, asyncio's loop appends the read to the queue behind what is there."""
    assert loop is not None
    future = loop.create_future()
    loop.call_soon(_hop, loop, future)
    await future


def _hop(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    loop.call_soon(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the caller was cancelled meanwhile
        future.set_result(None)


def _error(outcome: Any) -> DeliveryError:
    return _ERROR_FOR[type(outcome)](outcome)


# -- start hooks (the CLI's --demo-agents) -------------------------------------------------------------

_START_HOOKS: list[Callable[[Node], Awaitable[None]]] = []


def add_start_hook(hook: Callable[[Node], Awaitable[None]]) -> None:
    """Run `hook(node)` when any node of this process has started its agent service (CLI use: demo agents)."""
    _START_HOOKS.append(hook)


# -- the embedding API (mixed into Node) ---------------------------------------------------------------


class AgentAPI:
    """Agent and messaging methods of `Node`; they delegate to the node's `AgentService`."""

    _agent_service: AgentService | None

    @property
    def agents(self) -> AgentService:
        """The agent service (started with the node)."""
        service = getattr(self, "_agent_service", None)
        if service is None:
            from agentnode.runtime import NodeStopped

            raise NodeStopped("the node has not started; use `async with Node(config) as node:`")
        return service

    async def register_agent(
        self,
        name: str,
        capabilities: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        handler: Handler | None = None,
        **options: Any,
    ) -> Agent:
        """Host an agent on this node; see `AgentService.register_agent` for the options."""
        return await self.agents.register_agent(name, capabilities, metadata, handler, **options)

    async def deregister_agent(self, agent_id: str) -> None:
        """Undo `register_agent`: peers stop routing to it; queued messages are answered UnknownAgent."""
        await self.agents.deregister_agent(agent_id)

    def send(self, to: str | Capability, payload: Payload, **options: Any) -> Awaitable[MessageId]:
        """One-way message to an agent id or a `Capability`; see `AgentService.send`. Await it.

        (A plain method returning the service's coroutine: one coroutine frame less per message.)"""
        return self.agents.send(to, payload, **options)

    def send_many(self, to: str, payloads: Sequence[Payload], **options: Any) -> Awaitable[list[MessageId]]:
        """Many one-way messages to one agent id, in order, cheaply; see `AgentService.send_many`. Await it."""
        return self.agents.send_many(to, payloads, **options)

    def request(self, to: str | Capability, payload: Payload, **options: Any) -> Awaitable[Reply]:
        """Request/response with correlation; see `AgentService.request`. Await it."""
        return self.agents.request(to, payload, **options)

    async def publish(self, topic: str, payload: Payload) -> MessageId:
        """Deliver `payload` to every agent subscribed to `topic`, cluster-wide (Plumtree)."""
        return await self.agents.publish(topic, payload)

    async def broadcast(self, payload: Payload) -> MessageId:
        """Deliver `payload` to every agent in the cluster once (Plumtree)."""
        return await self.agents.broadcast(payload)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Call `handler` for every message published on `topic` (the subscription is replicated)."""
        return await self.agents.subscribe(topic, handler)

    def find_agents(self, capability: str | None = None, *, topic: str | None = None, name: str | None = None,
                    healthy_only: bool = True) -> list[AgentEntry]:
        """Agents visible in the replicated registry, sorted by agent id; with `name`, a leased name's holder only."""
        return self.agents.find_agents(capability, topic=topic, name=name, healthy_only=healthy_only)


# -- handles ----------------------------------------------------------------------------------------------


class Agent:
    """A local agent: send from it, subscribe it to topics, report its health or load, deregister it."""

    def __init__(self, service: AgentService, agent_id: str, name: str, handler: Handler | None,
                 health: HealthCheck | None, concurrency: int, broadcasts: bool) -> None:
        self.agent_id = agent_id
        self.name = name
        self._service = service
        self._handler = handler
        self._health = health
        self._broadcasts = broadcasts
        self._topic_handlers: dict[str, list[Handler]] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._broadcast_backlog = 0
        self._workers: list[asyncio.Task[None]] = []
        self._concurrency = concurrency
        self._busy_since: dict[int, float] = {}
        self._inline = handler is not None and concurrency == 1 and not _is_async(handler)
        """Run the handler straight from the pump when the inbox is empty (decision 0115): a plain function
        with one worker, so FIFO holds; cleared for good if it ever returns an awaitable."""
        self._inline_task: asyncio.Task[None] | None = None
        """The rest of an inline call that returned an awaitable; the worker waits for it (FIFO)."""
        self.handled = 0
        self.handler_errors = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"Agent({self.agent_id!r})"

    @property
    def name_state(self) -> NameState | None:
        """The lease on this agent's unique name (None unless registered with ``unique=True``)."""
        return self._service.names.state(self.agent_id)

    @property
    def record(self) -> AgentRecord:
        """This agent's current registry record."""
        entry = self._service.registry.lookup(self.agent_id)
        assert entry is not None
        return entry.record

    async def send(self, to: str | Capability, payload: Payload, **options: Any) -> MessageId:
        """Send as this agent (the receiver sees it as `sender_agent`)."""
        return await self._service.send(to, payload, sender=self.agent_id, **options)

    async def send_many(self, to: str, payloads: Sequence[Payload], **options: Any) -> list[MessageId]:
        """`send_many` as this agent."""
        return await self._service.send_many(to, payloads, sender=self.agent_id, **options)

    async def request(self, to: str | Capability, payload: Payload, **options: Any) -> Reply:
        return await self._service.request(to, payload, sender=self.agent_id, **options)

    async def subscribe(self, topic: str, handler: Handler | None = None) -> Subscription:
        """Subscribe this agent to `topic`; messages go to `handler` (default: the agent's handler)."""
        return await self._service.subscribe_agent(self, topic, handler)

    async def unsubscribe(self, topic: str) -> None:
        self._topic_handlers.pop(topic, None)
        self._service.registry.unsubscribe(self.agent_id, topic, self._service.now_ms())
        self._service.schedule_pump()

    def set_load(self, load: int) -> None:
        """Publish a load figure with the record (otherwise the inbox length is published)."""
        self._service.registry.set_load(self.agent_id, load, self._service.now_ms())
        self._service.schedule_pump()

    def report_health(self, healthy: bool, reason: str = "") -> None:
        self._service.registry.report_health(self.agent_id, healthy, self._service.now_ms(), reason)
        self._service.schedule_pump()

    async def deregister(self) -> None:
        await self._service.deregister_agent(self.agent_id)

    @property
    def inbox_size(self) -> int:
        return self._queue.qsize()


class Subscription:
    """A topic subscription; `cancel()` undoes it."""

    def __init__(self, service: AgentService, agent: Agent, topic: str, handler: Handler) -> None:
        self.topic = topic
        self._service = service
        self._agent = agent
        self._handler = handler
        self.active = True

    async def cancel(self) -> None:
        if not self.active:
            return
        self.active = False
        handlers = self._agent._topic_handlers.get(self.topic, [])
        if self._handler in handlers:
            handlers.remove(self._handler)
        if not handlers and not self._agent.closed:
            await self._agent.unsubscribe(self.topic)


class _Waiter:
    __slots__ = ("future", "agent_id", "started", "kind", "node_id", "deadline", "balanced", "group")

    def __init__(self, future: asyncio.Future[Any], agent_id: str, node_id: str, started: float, kind: int,
                 deadline: float, balanced: bool, group: list[int] | None = None) -> None:
        self.group = group
        """`send_many`: one future for many messages; [messages not yet acknowledged] (the first failure wins)."""
        self.future = future
        self.agent_id = agent_id
        self.node_id = node_id
        self.started = started
        self.kind = kind
        self.deadline = deadline
        """time.monotonic() after which the caller gets DeadlineExceededError (swept, not one timer each)."""
        self.balanced = balanced
        """Sent to a Capability: feed the balancer's outstanding counts and latency."""


class _Staged:
    __slots__ = ("entry", "ttl_ms", "wait_if_full", "future")

    def __init__(self, entry: OutboxEntry, ttl_ms: int, wait_if_full: bool, future: asyncio.Future[None] | None) -> None:
        self.entry = entry
        self.ttl_ms = ttl_ms
        self.wait_if_full = wait_if_full
        self.future = future


_COUNTERS = (
    "sent", "requests", "replies", "failures_unobserved", "failovers", "handled", "handler_errors",
    "expired_in_inbox", "broadcasts_delivered", "broadcast_backlog_dropped", "durable_committed",
    "durable_acked", "durable_resent", "durable_expired_at_start", "outbox_errors", "send_waits",
    "late_incoming", "durable_duplicates_dropped", "durable_replayed", "inbox_errors",
    "durable_to_absent", "durable_retried",
)
DURABLE_BACKLOG = 16_384
"""Committed durable messages waiting for room in the delivery queue before durable sends wait too."""
DURABLE_RETRY_S = 1.0
"""Delay before a durable message the receiving node rejected as "no such agent" is offered again."""
DURABLE_ABSENT_GRACE_MS = 60_000
"""How long a durable message without TTL keeps being offered to a node that does not know its agent
(e.g. restarted, agent not registered again yet), counted from the first such reject (decision 0124)."""
HANDLED_FLUSH = 256
"""Handled durable ids a worker collects before it commits them itself (else the next pump does)."""


class AgentService:
    """Drives the registry, delivery and broadcast cores for one node and hosts its local agents."""

    def __init__(self, node: Node, data_dir: Path, rng: random.Random, config: MessagingConfig | None = None) -> None:
        self._node = node
        self._data_dir = Path(data_dir)
        self.config = config or MessagingConfig()
        self._rng = rng
        self.node_id = node.node_id
        self.epoch = self._next_epoch()
        cluster = node.config.cluster
        fork = lambda label: random.Random(f"{rng.getrandbits(64)}:{label}")  # noqa: E731
        self.registry = Registry(self.node_id, cluster=cluster, epoch=self.epoch, rng=fork("registry"),
                                 config=self.config.registry)
        self.delivery = Delivery(self.node_id, cluster=cluster, epoch=self.epoch, rng=fork("delivery"),
                                 config=self.config.delivery)
        self.broadcaster = Broadcast(self.node_id, cluster=cluster, epoch=self.epoch, rng=fork("broadcast"),
                                     config=self.config.broadcast)
        self.balancer = Balancer()
        self.names = NameKeeper(self.node_id, lambda: getattr(self._node, "raft", None), self.now_ms, fork("names"),
                                NameConfig(ttl_ms=node.config.name_lease_ttl_ms), self._on_name_state,
                                self._node._publish_event)
        """Leases on unique agent names through the Raft group (docs/messaging.md, "Unique names")."""
        self._claiming: dict[str, None] = {}
        """Agent ids whose unique name is being claimed (registration in progress)."""
        self.sender_id = f"{BUILTIN_NAME}@{self.node_id}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time = node._require_loop().time
        self._agents: dict[str, Agent] = {}
        self._waiters: dict[MessageId, _Waiter] = {}
        self._durable: dict[MessageId, _Staged] = {}
        """Committed durable messages not yet acknowledged or finally failed."""
        self._staged: list[_Staged] = []
        self._deferred: DurableBacklog[_Staged] = DurableBacklog()
        """Committed durable messages waiting for room in the delivery queue, FIFO per channel."""
        self._acks: list[MessageId] = []
        self._group: asyncio.Future[None] | None = None
        """Resolved by the group commit of the durable sends staged in this loop turn (one future for all)."""
        self._absent_since: dict[MessageId, int] = {}
        """Durable messages rejected as "no such agent": wall ms of the first reject (DURABLE_ABSENT_GRACE_MS)."""
        self._outbox = Outbox.in_data_dir(self._data_dir, synchronous=self.config.outbox_synchronous,
                                          max_rows=self.config.outbox_max_rows)
        self._inbox = Inbox.in_data_dir(self._data_dir, synchronous=self.config.outbox_synchronous)
        """Durable receipts (decision 0123): committed before the ack leaves, marked once the handler ran."""
        self._received: list[Incoming] = []
        """Durable messages received this pump, waiting for their receipt commit."""
        self._handled: list[MessageId] = []
        """Durable messages whose handler finished, waiting for the `done` commit."""
        self._replay: dict[str, list[Incoming]] = {}
        """Durable messages received before a restart and not handled then, by agent (until it registers)."""
        self._pump_scheduled = False
        self._pumping = False
        """Inside `_pump` (a transport that delivers synchronously must not re-enter it)."""
        self._lone_acks_held = False
        """The last pump left acks for the next one (at most one turn in a row)."""
        self._burst = 0
        """Unconfirmed sends accepted since the last pump (SEND_BURST)."""
        self._addresses: dict[str, Address] = {}
        """Peer addresses parsed once, not per frame."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._room: deque[tuple[float, asyncio.Future[None]]] = deque()
        """Senders waiting for send-queue room: (their deadline, the future a pump or the sweep resolves)."""
        self._health_task: asyncio.Task[None] | None = None
        self._builtin: Agent | None = None
        self._demo_task: asyncio.Task[None] | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # -- life cycle -------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Route agent frames and membership events here (call before the membership core starts)."""
        for frame_type in _AGENT_FRAME_TYPES:
            self._node.add_channel(frame_type, self._on_frame)
        self._node.add_member_listener(self._on_member_event)

    async def start(self) -> None:
        """Open the outbox, resend what a previous life left pending, start the health loop and hooks."""
        self._loop = asyncio.get_running_loop()
        self._outbox.open()
        self._inbox.open()
        wall = _wall_ms()
        self._load_inbox(wall)
        expired = self._outbox.expire(wall)
        self.counters["durable_expired_at_start"] += len(expired)
        for entry in expired:
            log.warning("durable message %s to %s expired while this node was down", entry.msg_id, entry.dest_agent)
        pending = self._outbox.pending()
        for i, entry in enumerate(pending):
            ttl_ms = 0 if entry.expires_at_ms is None else max(1, entry.expires_at_ms - wall)
            staged = _Staged(entry, ttl_ms, False, None)
            self._deferred.add(_channel(entry), staged)
            self._durable[entry.msg_id] = staged
        self.counters["durable_resent"] += len(pending)
        if pending:
            log.info("resending %d durable messages from the outbox", len(pending))
        for member in self._node.members():
            if member.state in ("alive", "suspect") and member.node_id != self.node_id:
                self._member_up(member.node_id, member.address)
        self._health_task = self._loop.create_task(self._health_loop())
        self.schedule_pump()
        for hook in list(_START_HOOKS):
            await hook(self._node)

    async def close(self) -> None:
        """Stop the workers, commit what is staged, close the outbox."""
        if self._closed:
            return
        try:
            await self.names.close()  # give unique names back while the Raft service still runs
        except Exception:  # closing must finish; unreleased names expire by their TTL
            log.exception("releasing agent names failed")
        self._closed = True
        for handle in (self._timer, self._sweep):
            if handle is not None:
                handle.cancel()
        tasks = [t for a in self._agents.values() for t in (*a._workers, a._inline_task) if t is not None]
        tasks += [t for t in (self._health_task, self._demo_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self._flush_outbox()
        except Exception:  # closing must finish
            log.exception("final outbox flush failed")
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(NodeUnreachableError(NodeUnreachable(
                    MessageId(self.node_id, self.epoch, 0), waiter.node_id, waiter.agent_id, "this node stopped")))
        self._waiters.clear()
        for _, room in self._room:
            if not room.done():
                room.set_exception(NodeUnreachableError(NodeUnreachable(
                    MessageId(self.node_id, self.epoch, 0), "", "", "this node stopped while the sender waited for room")))
        self._room.clear()
        self._outbox.close()
        if self._handled:
            self._flush_handled()
        self._inbox.close()

    # -- agents -------------------------------------------------------------------------------------------

    async def register_agent(
        self,
        name: str,
        capabilities: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        handler: Handler | None = None,
        *,
        agent_id: str | None = None,
        description: str = "",
        version: str = "",
        skills: Sequence[AgentSkill] = (),
        topics: Iterable[str] = (),
        inbox_capacity: int | None = None,
        concurrency: int = 1,
        health: HealthCheck | None = None,
        broadcasts: bool = True,
        unique: bool = False,
    ) -> Agent:
        """Host an agent here and publish its record to every node.

        `agent_id` defaults to "name@node_id" (unique in the cluster). With `unique`, the name is
        leased cluster-wide through the Raft group: `NameTaken` if another agent holds it; without a
        quorum the agent registers with its name "unconfirmed" and the claim is retried in the
        background (see `Agent.name_state`, events `AgentNameConfirmed/Unconfirmed/Lost`). `handler(message)` is called
        for each message, one at a time unless `concurrency` > 1 (then FIFO holds only for the start of
        handling); `health()` (optional, sync or async) is polled every `health_interval_s` and a False,
        an exception or a timeout marks the agent unhealthy. With `broadcasts`, `broadcast()` reaches it.
        """
        self._require_running()
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string, for example 'summarizer'")
        if name.startswith("_") and agent_id != self.sender_id:
            raise ValueError("agent names starting with '_' are reserved for the node's built-in agent")
        if handler is not None and not callable(handler):
            raise ValueError("handler must be callable: handler(message) -> answer")
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 1024:
            raise ValueError("concurrency must be an int in 1..1024 (1 keeps FIFO handling)")
        agent_id = agent_id or f"{name}@{self.node_id}"
        if agent_id in self._agents or agent_id in self._claiming:
            raise ValueError(f"agent {agent_id!r} is already registered on this node; deregister it first")
        metadata = dict(metadata or {})
        if any(key.startswith("agentnode.") for key in metadata):
            raise ValueError("metadata keys starting with 'agentnode.' are reserved (the name lease is advertised there)")
        topics = tuple(topics)
        if unique:
            metadata[NAME_MARKER_KEY] = await self._claim_name(agent_id, name)
        try:
            self.registry.register(agent_id, self.now_ms(), name=name, capabilities=tuple(capabilities),
                                   metadata=metadata, description=description, version=version,
                                   skills=tuple(skills), topics=topics)
        except BaseException:
            if unique:
                await self.names.release(agent_id)
            raise
        self.delivery.open_inbox(agent_id, inbox_capacity)
        agent = Agent(self, agent_id, name, handler, health, concurrency, broadcasts)
        for topic in topics:
            if handler is not None:
                agent._topic_handlers.setdefault(topic, []).append(handler)
        assert self._loop is not None
        agent._workers = [self._loop.create_task(self._work(agent, i), name=f"agent {agent_id} worker {i}")
                          for i in range(concurrency)]
        self._agents[agent_id] = agent
        self.schedule_pump()
        return agent

    async def deregister_agent(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            raise KeyError(f"agent {agent_id!r} is not registered on this node")
        agent.closed = True
        now = self.now_ms()
        self.registry.deregister(agent_id, now)
        self.delivery.close_inbox(agent_id)
        tasks = [t for t in (*agent._workers, agent._inline_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Whatever the workers had not taken: requests are answered, the rest counted (never silent).
        while not agent._queue.empty():
            item = agent._queue.get_nowait()
            if isinstance(item, Incoming):
                self._answer_gone(item, now)
        if self._builtin is agent:
            self._builtin = None
        self.schedule_pump()
        if self.names.state(agent_id) is not None:
            await self.names.release(agent_id)  # after the record is gone: free for others at once

    def local_agents(self) -> list[Agent]:
        return [self._agents[a] for a in sorted(self._agents)]

    def find_agents(self, capability: str | None = None, *, topic: str | None = None, name: str | None = None,
                    healthy_only: bool = True) -> list[AgentEntry]:
        return self.registry.find(capability, topic=topic, name=name, healthy_only=healthy_only)

    async def _claim_name(self, agent_id: str, name: str) -> str:
        """Lease `name` for `agent_id` (NameTaken if held); returns the marker the record advertises."""
        from agentnode.consensus.commands import ClaimName

        try:
            ClaimName(name, "owner", self.names.core.config.ttl_ms)
        except ValueError as exc:
            raise ValueError(f"{name!r} cannot be a unique agent name: {exc}") from None
        self._claiming[agent_id] = None
        try:
            state = await self.names.claim(agent_id, name)
        finally:
            self._claiming.pop(agent_id, None)
        if self._closed:
            await self.names.release(agent_id)
            self._require_running()
        return marker_of(state.state, state.epoch)

    def _on_name_state(self, agent_id: str, state: NameState) -> None:
        """The lease keeper changed what `agent_id`'s name is: advertise it in the record."""
        record = self.registry.local_record(agent_id)
        marker = marker_of(state.state, state.epoch)
        if record is None or self._closed or record.meta.get(NAME_MARKER_KEY) == marker:
            return
        self.registry.update(agent_id, self.now_ms(), metadata={**record.meta, NAME_MARKER_KEY: marker})
        self.schedule_pump()

    # -- sending ------------------------------------------------------------------------------------------

    async def send(
        self,
        to: str | Capability,
        payload: Payload,
        *,
        delivery: str = AT_LEAST_ONCE,
        ttl: float | None = None,
        priority: Priority = "normal",
        confirm: bool | None = None,
        on_full: Literal["error", "wait"] | None = None,
        timeout: float | None = None,
        sender: str | None = None,
    ) -> MessageId:
        """Send `payload` to an agent id, or to one agent of a `Capability` (load-balanced, with failover).

        `delivery`: "best_effort" (no ack), "at_least_once" (acked, retried, deduplicated) or "durable"
        (in the SQLite outbox before this returns; resent after a restart until acked or expired).
        `ttl` (seconds) drops the message when stale, with an ExpiredError the sender sees.
        `confirm` (default: True for at_least_once, False otherwise) waits for the receiver's ack
        ("accepted into the agent's inbox", at most `timeout` s) and raises the failure's error; unconfirmed
        failures go to `node.events()`. `on_full="wait"` waits for room instead of failing at once.
        """
        self._require_running()
        body = _payload(payload)
        prio, ttl_ms, confirm, policy, timeout_s, src = self._send_options(delivery, ttl, priority, confirm, on_full,
                                                                           timeout, sender)
        self.counters["sent"] += 1
        if isinstance(to, Capability):
            if delivery != AT_LEAST_ONCE or not confirm:
                # Without an awaited outcome there is nothing to fail over on: pick once.
                entry = self._pick(to, set())
                return await self._send_to(entry.agent_id, entry.node_id, body, delivery, ttl_ms, prio, confirm, policy,
                                           timeout_s, src, True)
            return await self._failover(to, lambda c: self._send_to(c.agent_id, c.node_id, body, delivery, ttl_ms, prio,
                                                                    confirm, policy, timeout_s, src, True))
        node_id = self._resolve_durable(to) if delivery == DURABLE else self._resolve(to)
        if delivery == DURABLE and not confirm:
            # Stored, then handed to delivery as its queue has room (decision 0122): no wait for that room
            # here, only for the group commit shared with this turn's other sends.
            if len(self._deferred) >= DURABLE_BACKLOG:
                await self._durable_room(to, node_id, policy, timeout_s)
            wait_if_full = policy == "wait"
            if wait_if_full and ttl_ms == 0:
                ttl_ms = _seconds_ms(timeout_s, "timeout")
            return await self._stage_durable(to, node_id, body, ttl_ms, prio, wait_if_full, src)
        if delivery == DURABLE or self.delivery.capacity(node_id, to, prio) <= 0:
            return await self._send_to(to, node_id, body, delivery, ttl_ms, prio, confirm, policy, timeout_s, src, False)
        # The common case without a coroutine level: room is there and nothing is stored first.
        msg_id = self._submit_one(to, node_id, body, delivery, ttl_ms, prio, policy, timeout_s, src)
        if confirm:
            await self._new_waiter(msg_id, to, node_id, KIND_DATA, timeout_s, False)
        else:
            self._burst += 1
            if self._burst >= SEND_BURST:
                # Nothing else suspends this call: let the pump, answers and other tasks run (decision 0125),
                # and the callers those answers wake run before this burst goes on (decision 0127).
                self._burst = 0
                await _yield_behind_io(self._loop)
        return msg_id

    def _send_options(self, delivery: str, ttl: float | None, priority: Priority, confirm: bool | None,
                      on_full: str | None, timeout: float | None,
                      sender: str | None) -> tuple[int, int, bool, str, float, str]:
        """`send`/`send_many` options checked and defaulted: (priority, ttl ms, confirm, on_full policy,
        timeout s, sender). Caller misuse raises ValueError saying what to pass instead."""
        if delivery not in MODES:
            raise ValueError(f"delivery must be one of {', '.join(MODES)}")
        prio = _priority(priority)
        ttl_ms = _seconds_ms(ttl, "ttl") if ttl is not None else 0
        confirm = (delivery == AT_LEAST_ONCE) if confirm is None else confirm
        if confirm and delivery == BEST_EFFORT:
            raise ValueError("best_effort messages are not acknowledged; use delivery='at_least_once' to confirm")
        timeout_s = self.config.default_timeout_s if timeout is None else timeout
        if timeout_s <= 0:
            raise ValueError("timeout must be positive (seconds)")
        return prio, ttl_ms, confirm, on_full or self.config.on_full, timeout_s, sender or self.sender_id

    async def send_many(
        self,
        to: str,
        payloads: Sequence[Payload],
        *,
        delivery: str = AT_LEAST_ONCE,
        ttl: float | None = None,
        priority: Priority = "normal",
        confirm: bool | None = None,
        on_full: Literal["error", "wait"] | None = None,
        timeout: float | None = None,
        sender: str | None = None,
    ) -> list[MessageId]:
        """`send` for many payloads to one agent id, in order, at a fraction of the per-message cost
        (one lookup, one delivery call and one waiter per window's worth; decision 0117).

        The options mean what they mean for `send`; `confirm` waits until every message is acknowledged
        and raises the first failure's error (the other messages' outcomes still happen). With
        `on_full="error"`, messages that do not fit the send queue fail the call before any of them is
        sent in that chunk; with "wait", the call sends as room frees up.
        """
        self._require_running()
        if isinstance(to, Capability):
            raise ValueError("send_many addresses one agent id; use send() for a Capability (balancing, failover)")
        bodies = [_payload(p) for p in payloads]
        prio, ttl_ms, confirm, policy, timeout_s, src = self._send_options(delivery, ttl, priority, confirm, on_full,
                                                                           timeout, sender)
        node_id = self._resolve_durable(to) if delivery == DURABLE else self._resolve(to)
        wait_if_full = policy == "wait" and delivery != BEST_EFFORT
        if wait_if_full and ttl_ms == 0:
            ttl_ms = _seconds_ms(timeout_s, "timeout")
        self.counters["sent"] += len(bodies)
        assert self._loop is not None
        future: asyncio.Future[None] | None = self._loop.create_future() if confirm and bodies else None
        group = [len(bodies)]
        deadline = time.monotonic() + timeout_s
        started = time.perf_counter()
        ids: list[MessageId] = []
        pos = 0
        while pos < len(bodies):
            if delivery == DURABLE:  # stored first, handed to delivery as room frees up (decision 0122)
                await self._durable_room(to, node_id, policy, max(0.001, deadline - time.monotonic()))
                room = len(bodies)
            else:
                await self._room_for(node_id, to, prio, policy, max(0.001, deadline - time.monotonic()))
                room = self.delivery.capacity(node_id, to, prio) if delivery != BEST_EFFORT else len(bodies)
            chunk = bodies[pos:pos + max(1, room)]
            if delivery == DURABLE:
                chunk_ids = await self._stage_durable_many(to, node_id, chunk, ttl_ms, prio, wait_if_full, src)
            else:
                try:
                    chunk_ids = self.delivery.send_many(node_id, to, chunk, self.now_ms(), src_agent=src, mode=delivery,
                                                        priority=prio, ttl_ms=ttl_ms, wait_if_full=wait_if_full)
                except SendQueueFull as exc:
                    raise self._local_backpressure(to, node_id, str(exc)) from None
                self.schedule_pump()
            if future is not None:
                # One waiter object for the whole call: every field is the same for its messages.
                shared = _Waiter(future, to, node_id, started, KIND_DATA, deadline, False, group)
                self._waiters.update(dict.fromkeys(chunk_ids, shared))
                if self._sweep is None:
                    self._sweep = self._loop.call_later(WAITER_SWEEP_S, self._sweep_waiters)
            ids += chunk_ids
            pos += len(chunk)
        if future is not None:
            await future
        return ids

    async def request(
        self,
        to: str | Capability,
        payload: Payload,
        *,
        timeout: float | None = None,
        priority: Priority = "normal",
        on_full: Literal["error", "wait"] | None = None,
        sender: str | None = None,
    ) -> Reply:
        """Send a request and await its answer (correlated by message id) for at most `timeout` seconds.

        Raises UnknownAgentError, NodeUnreachableError, DeadlineExceededError, RemoteHandlerError (the
        remote handler raised; its error text is carried back) or BackpressureError.
        """
        self._require_running()
        body = _payload(payload)
        prio = _priority(priority)
        timeout_s = self.config.default_timeout_s if timeout is None else timeout
        timeout_ms = _seconds_ms(timeout_s, "timeout")
        if timeout_ms == 0:
            raise ValueError("timeout must be positive (seconds)")
        policy = on_full or self.config.on_full
        src = sender or self.sender_id
        self.counters["requests"] += 1
        if isinstance(to, Capability):
            deadline = time.monotonic() + timeout_s

            def attempt(c: Candidate) -> Awaitable[Reply]:
                left = max(0.001, deadline - time.monotonic())
                return self._request_to(c.agent_id, c.node_id, body, max(1, int(left * 1000)), prio, policy, src, True)

            return await self._failover(to, attempt)
        return await self._request_to(to, self._resolve(to), body, timeout_ms, prio, policy, src, False)

    async def publish(self, topic: str, payload: Payload) -> MessageId:
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string (use broadcast() to reach every agent)")
        return self._broadcast(topic, _payload(payload))

    async def broadcast(self, payload: Payload) -> MessageId:
        return self._broadcast("", _payload(payload))

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Subscribe this node (as its built-in agent) to `topic`."""
        if self._builtin is None:
            self._builtin = await self.register_agent(BUILTIN_NAME, agent_id=self.sender_id, broadcasts=False,
                                                      concurrency=1)
        return await self.subscribe_agent(self._builtin, topic, handler)

    async def subscribe_agent(self, agent: Agent, topic: str, handler: Handler | None) -> Subscription:
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")
        chosen = handler or agent._handler
        if chosen is None:
            raise ValueError(f"agent {agent.agent_id!r} has no handler; pass one to subscribe()")
        agent._topic_handlers.setdefault(topic, []).append(chosen)
        self.registry.subscribe(agent.agent_id, topic, self.now_ms())
        self.schedule_pump()
        return Subscription(self, agent, topic, chosen)

    # -- internals: sending -------------------------------------------------------------------------------

    def _resolve(self, agent_id: str) -> str:
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError("address an agent by its id (a string) or a Capability(...)")
        node_id = self.registry.node_of(agent_id)
        if node_id is None:
            raise UnknownAgentError(UnknownAgent(MessageId(self.node_id, self.epoch, 0), "", agent_id,
                                                 "no agent with this id is known in the cluster (see find_agents())"))
        return node_id

    def _resolve_durable(self, agent_id: str) -> str:
        """`_resolve` for durable sends, which also accept an agent the registry does not list (its node is
        down, or restarting and not re-registered yet) if its id names a node this node knows, in any state:
        the message waits in the outbox until the node is back or its TTL runs out (decision 0124). An id
        naming no known node fails at once with UnknownAgentError (most likely a typo)."""
        node_id = self.registry.node_of(agent_id) if isinstance(agent_id, str) and agent_id else None
        if node_id is not None:
            return node_id
        node = agent_id.rpartition("@")[2] if isinstance(agent_id, str) and "@" in agent_id else ""
        if node and node != self.node_id and any(m.node_id == node for m in self._node.members()):
            self.counters["durable_to_absent"] += 1
            return node
        return self._resolve(agent_id)

    def _pick(self, cap: Capability, tried: set[str]) -> Candidate:
        entries = self.registry.find(cap.name)
        calm = [e for e in entries if not e.node_suspect]
        pool = [Candidate(e.record.agent_id, e.record.node_id) for e in (calm if any(
            e.record.agent_id not in tried for e in calm) else entries)]
        try:
            return self.balancer.pick(pool, cap.strategy, key=cap.key, group=cap.name, exclude=tried)
        except NoCandidate:
            detail = (f"no healthy agent has capability {cap.name!r}" if not entries
                      else f"all {len(tried)} agents with capability {cap.name!r} failed")
            raise UnknownAgentError(UnknownAgent(MessageId(self.node_id, self.epoch, 0), "", cap.name, detail)) from None

    async def _failover(self, cap: Capability, attempt: Callable[[Candidate], Awaitable[Any]]) -> Any:
        tried: set[str] = set()
        last: DeliveryError | None = None
        for _ in range(MAX_FAILOVER):
            try:
                choice = self._pick(cap, tried)
            except UnknownAgentError:
                if last is not None:
                    raise last from None
                raise
            try:
                return await attempt(choice)
            except _FAILOVER_ERRORS as exc:
                last = exc
                tried.add(choice.agent_id)
                self.counters["failovers"] += 1
                log.info("capability %s: %s failed (%s); trying another agent", cap.name, choice.agent_id, exc)
        assert last is not None
        raise last

    async def _send_to(self, agent_id: str, node_id: str, body: bytes, mode: str, ttl_ms: int, prio: int,
                       confirm: bool, policy: str, timeout_s: float, src: str, balanced: bool) -> MessageId:
        wait_if_full = policy == "wait" and mode != BEST_EFFORT
        if wait_if_full and ttl_ms == 0:
            ttl_ms = _seconds_ms(timeout_s, "timeout")
        if self.delivery.capacity(node_id, agent_id, prio) <= 0:  # no coroutine on the common path
            await self._room_for(node_id, agent_id, prio, policy, timeout_s)
        if mode == DURABLE:
            msg_id = await self._stage_durable(agent_id, node_id, body, ttl_ms, prio, wait_if_full, src)
            if not confirm:
                return msg_id
            future = self._new_waiter(msg_id, agent_id, node_id, KIND_DATA, timeout_s, balanced)
        else:
            msg_id = self._submit_one(agent_id, node_id, body, mode, ttl_ms, prio, policy, timeout_s, src)
            if not confirm:
                return msg_id
            future = self._new_waiter(msg_id, agent_id, node_id, KIND_DATA, timeout_s, balanced)
        await future
        return msg_id

    def _submit_one(self, agent_id: str, node_id: str, body: bytes, mode: str, ttl_ms: int, prio: int, policy: str,
                    timeout_s: float, src: str) -> MessageId:
        """Hand one non-durable message to the delivery core (the caller checked for room)."""
        wait_if_full = policy == "wait" and mode != BEST_EFFORT
        if wait_if_full and ttl_ms == 0:
            ttl_ms = _seconds_ms(timeout_s, "timeout")
        try:
            msg_id = self.delivery.send(node_id, agent_id, body, self.now_ms(), src_agent=src, mode=mode,
                                        priority=prio, ttl_ms=ttl_ms, wait_if_full=wait_if_full)
        except SendQueueFull as exc:
            raise self._local_backpressure(agent_id, node_id, str(exc)) from None
        self.schedule_pump()
        return msg_id

    async def _request_to(self, agent_id: str, node_id: str, body: bytes, timeout_ms: int, prio: int, policy: str,
                          src: str, balanced: bool) -> Reply:
        if self.delivery.capacity(node_id, agent_id, prio) <= 0:
            await self._room_for(node_id, agent_id, prio, policy, timeout_ms / 1000)
        try:
            msg_id = self.delivery.request(node_id, agent_id, body, self.now_ms(), timeout_ms=timeout_ms,
                                           src_agent=src, priority=prio, wait_if_full=policy == "wait")
        except SendQueueFull as exc:
            raise self._local_backpressure(agent_id, node_id, str(exc)) from None
        # The core enforces the deadline; the sweep's bound only guards against a lost event.
        future = self._new_waiter(msg_id, agent_id, node_id, KIND_REQUEST, timeout_ms / 1000 + 1.0, balanced)
        # Pump now rather than on the next loop turn, and write the frame before awaiting rather than
        # after whatever else is ready (another task's burst of sends): a request is latency-bound, not
        # batch-bound (decisions 0115, 0125). The delivery core alone changed (decision 0126).
        with write_promptly():
            self._pump(False)
        started = time.perf_counter()
        result = await future
        self.counters["replies"] += 1
        return _reply(result.payload, result.from_agent, result.dest_node, (time.perf_counter() - started) * 1000)

    def _new_waiter(self, msg_id: MessageId, agent_id: str, node_id: str, kind: int, timeout_s: float,
                    balanced: bool) -> asyncio.Future[Any]:
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        self._waiters[msg_id] = _Waiter(future, agent_id, node_id, time.perf_counter(), kind,
                                        time.monotonic() + timeout_s, balanced)
        if balanced:
            self.balancer.started(agent_id)
        if self._sweep is None:
            self._sweep = loop.call_later(WAITER_SWEEP_S, self._sweep_waiters)
        return future

    def _sweep_waiters(self) -> None:
        """Fail callers whose deadline passed (one periodic sweep instead of a timer per message)."""
        self._sweep = None
        now = time.monotonic()
        for msg_id in [m for m, w in self._waiters.items() if w.deadline <= now]:
            waiter = self._waiters.pop(msg_id)
            self._finished(waiter, None)
            if not waiter.future.done():
                waiter.future.set_exception(DeadlineExceededError(DeadlineExceeded(
                    msg_id, waiter.node_id, waiter.agent_id, "no acknowledgement or answer before the deadline")))
        if self._room:
            for deadline, room in self._room:
                if deadline <= now and not room.done():
                    room.set_result(None)  # it re-checks the room, finds its deadline passed and fails
            self._room = deque(entry for entry in self._room if not entry[1].done())
        if (self._waiters or self._room) and not self._closed:
            assert self._loop is not None
            self._sweep = self._loop.call_later(WAITER_SWEEP_S, self._sweep_waiters)

    def _finished(self, waiter: _Waiter, ok: bool | None) -> None:
        if waiter.balanced:
            self.balancer.finished(waiter.agent_id, int((time.perf_counter() - waiter.started) * 1000) if ok else None)

    async def _room_for(self, node_id: str, agent_id: str, prio: int, policy: str, timeout_s: float) -> None:
        if self.delivery.capacity(node_id, agent_id, prio) > 0:
            return
        if policy != "wait":
            raise self._local_backpressure(agent_id, node_id, "this node's send queue to that agent is full")
        self.counters["send_waits"] += 1
        deadline = time.monotonic() + timeout_s
        while self.delivery.capacity(node_id, agent_id, prio) <= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._local_backpressure(agent_id, node_id, f"no room in the send queue within {timeout_s:g} s")
            assert self._loop is not None
            room: asyncio.Future[None] = self._loop.create_future()
            # Woken by a pump that freed room, or by the waiter sweep once `deadline` passed (no timer each).
            self._room.append((deadline, room))
            if self._sweep is None:
                self._sweep = self._loop.call_later(WAITER_SWEEP_S, self._sweep_waiters)
            await room

    async def _durable_room(self, agent_id: str, node_id: str, policy: str, timeout_s: float) -> None:
        """Durable sends do not wait for the delivery queue, only while DURABLE_BACKLOG committed messages
        are already waiting for it (the bound on what the outbox holds in memory)."""
        if len(self._deferred) < DURABLE_BACKLOG:
            return
        detail = f"{len(self._deferred)} stored durable messages wait for the delivery queue"
        if policy != "wait":
            raise self._local_backpressure(agent_id, node_id, detail)
        self.counters["send_waits"] += 1
        deadline = time.monotonic() + timeout_s
        while len(self._deferred) >= DURABLE_BACKLOG:
            if deadline - time.monotonic() <= 0:
                raise self._local_backpressure(agent_id, node_id, f"{detail} (waited {timeout_s:g} s)")
            assert self._loop is not None
            room: asyncio.Future[None] = self._loop.create_future()
            self._room.append((deadline, room))  # woken as for _room_for
            if self._sweep is None:
                self._sweep = self._loop.call_later(WAITER_SWEEP_S, self._sweep_waiters)
            await room

    def _local_backpressure(self, agent_id: str, node_id: str, detail: str) -> BackpressureError:
        return BackpressureError(Backpressure(MessageId(self.node_id, self.epoch, 0), node_id, agent_id, detail))

    async def _stage_durable(self, agent_id: str, node_id: str, body: bytes, ttl_ms: int, prio: int,
                             wait_if_full: bool, src: str) -> MessageId:
        msg_id = self.delivery.next_msg_id()
        wall = _wall_ms()
        entry = _outbox_entry(msg_id, node_id, agent_id, src, KIND_DATA, prio, body,
                              wall + ttl_ms if ttl_ms else None, wall)
        try:
            self._outbox.stage(entry)
        except OutboxFull as exc:
            raise self._local_backpressure(agent_id, node_id, str(exc)) from None
        assert self._loop is not None
        future = self._group
        if future is None:
            # The first send of this group carries the group's future; the others only wait on it.
            future = self._group = self._loop.create_future()
            self._staged.append(_Staged(entry, ttl_ms, wait_if_full, future))
            self.schedule_pump()
        else:
            self._staged.append(_Staged(entry, ttl_ms, wait_if_full, None))
        await future
        return msg_id

    async def _stage_durable_many(self, agent_id: str, node_id: str, bodies: list[bytes], ttl_ms: int, prio: int,
                                  wait_if_full: bool, src: str) -> list[MessageId]:
        """Stage many durable messages; one future resolves when their (single) group commit is done."""
        wall = _wall_ms()
        expires = wall + ttl_ms if ttl_ms else None
        entries = [_outbox_entry(self.delivery.next_msg_id(), node_id, agent_id, src, KIND_DATA, prio, body, expires,
                                 wall) for body in bodies]
        outbox = self._outbox
        if len(outbox) + outbox.staged + len(entries) > outbox.max_rows:
            raise self._local_backpressure(agent_id, node_id, f"the outbox has no room for {len(entries)} more messages "
                                           f"(max_rows={outbox.max_rows}); wait for acknowledgements or raise it")
        for entry in entries:
            outbox.stage(entry)
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        staged = self._staged
        for entry in entries[:-1]:
            staged.append(_Staged(entry, ttl_ms, wait_if_full, None))
        staged.append(_Staged(entries[-1], ttl_ms, wait_if_full, future))  # all commit in one transaction
        self.schedule_pump()
        await future
        return [e.msg_id for e in entries]

    def _broadcast(self, topic: str, body: bytes) -> MessageId:
        self._require_running()
        msg_id = self.broadcaster.broadcast(body, self.now_ms(), topic=topic)
        self.schedule_pump()
        return msg_id

    # -- the adapter loop ---------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The node's clock (`Node.now_ms`), read here without two calls on the way: once per frame."""
        return int(self._time() * 1000)

    def schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None and not self._closed:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _on_frame(self, sender_id: str, frame: Any) -> None:
        t = frame[2]
        now = self.now_ms()
        if t == 40 or t == 41:
            self.delivery.receive(sender_id, frame, now)
            full = False  # the delivery core alone changed (decision 0126)
        else:
            if t == 32 or t == 33:
                self.registry.receive(sender_id, frame, now)
            else:
                self.broadcaster.receive(sender_id, frame, now)
            full = True
        # Pump in this turn (decision 0115): the answer or ack leaves without waiting a loop turn.
        if self._pumping:
            self.schedule_pump()
        else:
            self._pump(full)

    def _on_member_event(self, event: ev.NodeEvent) -> None:
        if isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberUpdated)):
            self._member_up(event.node_id, event.address)
        elif isinstance(event, ev.MemberSuspected):
            now = self.now_ms()
            self.registry.member_suspect(event.node_id, now)
            self.delivery.member_suspect(event.node_id, now)
            self.broadcaster.member_suspect(event.node_id, now)
        elif isinstance(event, (ev.MemberFailed, ev.MemberLeft)):
            now = self.now_ms()
            self.registry.member_down(event.node_id, now, left=isinstance(event, ev.MemberLeft))
            self.delivery.member_down(event.node_id, now)
            self.broadcaster.member_down(event.node_id, now)
        else:
            return
        self.schedule_pump()

    def _member_up(self, node_id: str, address: str) -> None:
        if node_id == self.node_id:
            return
        now = self.now_ms()
        self.registry.member_up(node_id, address, now)
        self.delivery.member_up(node_id, address, now)
        self.broadcaster.member_up(node_id, address, now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        now = self.now_ms()
        self.registry.handle_timer(now)
        self.delivery.handle_timer(now)
        self.broadcaster.handle_timer(now)
        self._pump()

    def _pump(self, full: bool = True) -> None:
        """Drain the cores: run what their events ask for, send their frames, re-arm the timer.

        `full=False` after a change to the delivery core alone (a delivery frame, a request): the
        registry and broadcast cores are left to the pump their own changes schedule. That is the
        round-trip path, which skips their six polls (decision 0126)."""
        if full:
            self._pump_scheduled = False
        self._burst = 0
        if self._closed:
            return
        if self._pumping:
            self.schedule_pump()
            return
        self._pumping = True
        try:
            self._pump_once(full)
        finally:
            self._pumping = False

    def _pump_once(self, full: bool) -> None:
        if self._handled:
            self._flush_handled()
        if self._acks or self._staged or self._deferred:
            try:
                self._flush_outbox()
            except Exception:
                log.exception("durable outbox flush failed")
        progress = False
        delivery, registry, broadcaster = self.delivery, self.registry, self.broadcaster
        while (d := delivery.next_event()) is not None:
            progress = True
            self._on_delivery_event(d)
        if self._received or self._replay:
            self._accept_durable()  # before messages_to_send: receipts are committed before their acks leave
        if full:
            while (r := registry.next_event()) is not None:
                self._on_registry_event(r)
            while (b := broadcaster.next_event()) is not None:
                self._on_broadcast(b)
        send = self._node.send_frame
        addresses = self._addresses
        cores: tuple[Any, ...] = (delivery, registry, broadcaster) if full else (delivery,)
        if progress and not self._lone_acks_held and not delivery.data_pending():
            # Only acks to send: hold them one loop turn, so the callers this pump just woke up (an
            # answered request) run first; the next pump sends them, with whatever arrives meanwhile.
            self._lone_acks_held = True
            cores = (registry, broadcaster) if full else ()
            self.schedule_pump()
        else:
            self._lone_acks_held = False
        for core in cores:
            for out in core.messages_to_send():
                address = addresses.get(out.address)
                if address is None:
                    if len(addresses) >= MAX_ADDRESSES:
                        addresses.clear()
                    address = addresses[out.address] = Address.parse(out.address)
                send(address, out.frame, out.peer_id)
        if progress and self._room:
            # Wake a few waiters per pump (FIFO), not all of them: each re-checks the room it needs.
            for _ in range(min(len(self._room), ROOM_WAKE)):
                _, room = self._room.popleft()
                if not room.done():
                    room.set_result(None)
        when = delivery.get_timer()
        if full:
            for t in (registry.get_timer(), broadcaster.get_timer()):
                if t is not None and (when is None or t < when):
                    when = t
        # Re-arm only for an earlier deadline: a timer that fires early finds nothing due and re-arms,
        # which is cheaper than cancelling and re-arming on every pump.
        if when is not None and (self._timer_at is None or when < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            assert self._loop is not None
            self._timer = self._loop.call_at(max(when, self.now_ms()) / 1000.0, self._on_timer)

    def _accept_durable(self) -> None:
        """Record this pump's durable messages and hand the new ones to their agents, in one transaction
        (decision 0123); a message recorded before (a resend after a restart) is dropped. A plain-function
        handler with an idle inbox runs inside the transaction, so its message is stored as handled at
        once (no payload); a queued message is stored with its payload until its handler ran. Either way
        the commit precedes the ack, which leaves later in this pump. Then hand over the messages a
        previous life left unhandled, for agents registered by now."""
        received, self._received = self._received, []
        if received:
            wall = _wall_ms()
            try:
                self._inbox.accept(received, wall, lambda fresh: self._handle_received(received, fresh))
            except InboxWriteFailed as exc:
                self.counters["inbox_errors"] += 1
                log.error("cannot record %d durable messages in the inbox; handling them without the crash "
                          "guarantee: %s", len(received), exc)
                if not exc.handled:
                    for event in received:
                        self._dispatch(event)
        if self._replay:
            for agent_id in [a for a in self._replay if a in self._agents]:
                for event in self._replay.pop(agent_id):
                    self._dispatch(event)
        if self._handled:
            self._flush_handled()  # inline handlers ran above: close their window in this pump

    def _retry_absent(self, event: UnknownAgent) -> bool:
        """Offer a durable message the receiving node did not know the agent for again later, until its TTL
        (or DURABLE_ABSENT_GRACE_MS from the first reject, without TTL); False = give up, report the failure."""
        s = self._durable[event.msg_id]
        e = s.entry
        wall = _wall_ms()
        first = self._absent_since.setdefault(event.msg_id, wall)
        limit = e.expires_at_ms if e.expires_at_ms is not None else first + DURABLE_ABSENT_GRACE_MS
        retry_ms = int(DURABLE_RETRY_S * 1000)
        if wall + retry_ms >= limit or self._closed:
            return False
        self.counters["durable_retried"] += 1
        again = _Staged(e, 0 if e.expires_at_ms is None else max(1, e.expires_at_ms - wall - retry_ms),
                        s.wait_if_full, None)
        self._durable[event.msg_id] = again
        assert self._loop is not None
        self._loop.call_later(DURABLE_RETRY_S, self._offer_again, again)
        return True

    def _offer_again(self, staged: _Staged) -> None:
        if self._closed or self._durable.get(staged.entry.msg_id) is not staged:
            return
        self._deferred.add(_channel(staged.entry), staged)
        self.schedule_pump()

    def _handle_received(self, received: list[Incoming], fresh: list[bool]) -> list[InboxItem]:
        """`Inbox.accept`'s callback: run or queue the new messages; return those to store with their payload."""
        keep: list[InboxItem] = []
        wall, now = _wall_ms(), self.now_ms()
        agents, handled = self._agents, self._handled
        for event, new in zip(received, fresh):
            if not new:
                self.counters["durable_duplicates_dropped"] += 1
                self.delivery.release(event.dest_agent)
                continue
            agent = agents.get(event.dest_agent)
            if agent is not None and agent._inline and not agent._busy_since and agent._queue.empty():
                mark = len(handled)
                self._run_inline(agent, event)
                if agent._inline_task is None:
                    del handled[mark:]  # handled inside this transaction: nothing pending to mark done
                    continue
            elif agent is None:
                self._dispatch(event)  # agent gone: counted and answered there
                continue
            else:
                agent._queue.put_nowait(event)
            keep.append(InboxItem(event.msg_id, event.sender_node, event.src_agent, event.dest_agent, event.kind,
                                  event.priority, event.payload,
                                  None if event.expires_ms is None else wall + event.expires_ms - now))
        return keep

    def _dispatch(self, event: Incoming) -> None:
        agent = self._agents.get(event.dest_agent)
        if agent is None:
            self.counters["late_incoming"] += 1
            self._answer_gone(event, self.now_ms())
            return
        if agent._inline and not agent._busy_since and agent._queue.empty():
            self._run_inline(agent, event)
            return
        agent._queue.put_nowait(event)

    def _flush_handled(self) -> None:
        handled, self._handled = self._handled, []
        try:
            self._inbox.done(handled)
        except StorageError as exc:
            self.counters["inbox_errors"] += 1
            log.error("cannot mark %d durable messages handled (they may run again after a crash): %s",
                      len(handled), exc)

    def _load_inbox(self, wall: int) -> None:
        now = self.now_ms()
        pending = self._inbox.pending()
        for item in pending:
            expires = None if item.expires_at_ms is None else now + item.expires_at_ms - wall
            self._replay.setdefault(item.dest_agent, []).append(Incoming(
                item.msg_id, item.sender_node, item.src_agent, item.dest_agent, item.kind, item.priority,
                item.payload, expires, True, True))
        self.counters["durable_replayed"] += len(pending)
        if pending:
            log.info("handing %d durable messages received before a restart to their agents again", len(pending))

    def _flush_outbox(self) -> None:
        """Group commit: stage -> one transaction -> hand to delivery -> resolve the senders."""
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                self.counters["durable_acked"] += self._outbox.ack_many(acks)
            except StorageError as exc:
                self.counters["outbox_errors"] += 1
                log.error("cannot remove acknowledged messages from the outbox: %s", exc)
        if self._staged:
            staged, self._staged = self._staged, []
            self._group = None
            try:
                self._outbox.commit()
            except StorageError as exc:
                self.counters["outbox_errors"] += 1
                for s in staged:
                    if s.future is not None and not s.future.done():
                        s.future.set_exception(self._local_backpressure(s.entry.dest_agent, s.entry.dest_node, str(exc))
                                               if isinstance(exc, OutboxFull) else exc)
                return
            self.counters["durable_committed"] += len(staged)
            for s in staged:
                self._durable[s.entry.msg_id] = s
                if s.future is not None and not s.future.done():
                    s.future.set_result(None)
            deferred = self._deferred
            for s in staged:
                deferred.add(_channel(s.entry), s)
        if self._deferred:
            now = self.now_ms()
            capacity = self.delivery.capacity
            runs, more = self._deferred.take(lambda key: capacity(*key), RESEND_BATCH)
            for _, items in runs:
                i = 0
                while i < len(items):
                    # Messages of one channel with the same options go in one send_many call.
                    first = items[i]
                    j = i + 1
                    while j < len(items) and _same_channel(items[j], first):
                        j += 1
                    e = first.entry
                    self.delivery.send_many(e.dest_node, e.dest_agent, [s.entry.payload for s in items[i:j]], now,
                                            src_agent=e.src_agent, mode=DURABLE, priority=e.priority,
                                            ttl_ms=min(first.ttl_ms, MAX_TTL_MS),
                                            wait_if_full=first.wait_if_full and first.ttl_ms > 0,
                                            msg_ids=[s.entry.msg_id for s in items[i:j]])
                    i = j
            # A channel without room is handed its messages when the ack, expiry or failure that frees
            # room runs a pump; only a cut at RESEND_BATCH needs the next turn.
            if more:
                self.schedule_pump()  # cut at RESEND_BATCH: the next turn hands over the next batch

    def _on_delivery_event(self, event: Any) -> None:
        t = type(event)
        if t is Incoming:
            if event.durable:
                self._received.append(event)  # handled after its receipt is committed (_accept_durable)
                return
            agent = self._agents.get(event.dest_agent)
            if agent is None:
                self.counters["late_incoming"] += 1
                self._answer_gone(event, self.now_ms())
                return
            if agent._inline and not agent._busy_since and agent._queue.empty():
                self._run_inline(agent, event)
                return
            agent._queue.put_nowait(event)
            return
        if t is MessageDelivered:
            if event.msg_id in self._durable:
                del self._durable[event.msg_id]
                if self._absent_since:
                    self._absent_since.pop(event.msg_id, None)
                self._acks.append(event.msg_id)
                self.schedule_pump()
            waiter = self._waiters.get(event.msg_id)
            if waiter is not None and waiter.kind == KIND_DATA:
                del self._waiters[event.msg_id]
                group = waiter.group
                if group is not None:
                    group[0] -= 1
                    if group[0] == 0 and not waiter.future.done():
                        waiter.future.set_result(None)
                    return
                self._finished(waiter, True)
                if not waiter.future.done():
                    waiter.future.set_result(event)
            return
        if t is ResponseReceived:
            waiter = self._waiters.pop(event.request_id, None)
            if waiter is not None:
                self._finished(waiter, True)
                if not waiter.future.done():
                    waiter.future.set_result(event)
            return
        # A failure outcome.
        if event.msg_id in self._durable:
            if t is UnknownAgent and self._retry_absent(event):
                return
            del self._durable[event.msg_id]
            self._absent_since.pop(event.msg_id, None)
            self._acks.append(event.msg_id)  # reported, so it leaves the outbox (messaging.md)
            self.schedule_pump()
        waiter = self._waiters.pop(event.msg_id, None)
        if waiter is not None:
            self._finished(waiter, False)
            if not waiter.future.done():
                waiter.future.set_exception(_error(event))
            return
        self.counters["failures_unobserved"] += 1
        self._node._publish_event(event)

    def _on_registry_event(self, event: Any) -> None:
        if isinstance(event, AgentRemoved):
            self.balancer.forget(event.agent_id)
        self._node._publish_event(event)

    def _on_broadcast(self, event: BroadcastReceived) -> None:
        topic = event.topic
        for agent_id in sorted(self._agents):
            agent = self._agents[agent_id]
            if topic:
                handlers = agent._topic_handlers.get(topic)
                if not handlers:
                    continue
            elif not agent._broadcasts or agent._handler is None:
                continue
            if agent._broadcast_backlog >= BROADCAST_BACKLOG:
                self.counters["broadcast_backlog_dropped"] += 1
                continue
            agent._broadcast_backlog += 1
            agent._queue.put_nowait(event)

    # -- internals: local agents ------------------------------------------------------------------------

    def _run_inline(self, agent: Agent, item: Incoming) -> None:
        """Handle `item` now, from the pump: no queue, no worker wake-up, the answer leaves in this pump.

        Only for a plain-function handler whose inbox is empty and idle, so the order is the worker's.
        """
        self.delivery.release(agent.agent_id)
        if item.expires_ms is not None:
            now = self.now_ms()
            if now > item.expires_ms:
                self.delivery.drop_expired(item, now)
                self.counters["expired_in_inbox"] += 1
                if item.durable:
                    self._handled.append(item.msg_id)
                self.schedule_pump()
                return
        msg = _message(item.msg_id, item.payload, agent.agent_id, item.src_agent, item.sender_node,
                       "request" if item.kind == KIND_REQUEST else "message", item.priority, "")
        try:
            result = agent._handler(msg)  # type: ignore[misc]
            if result is not None and type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                # Not a plain function after all: finish this one in a task, queue the rest to the worker.
                agent._inline = False
                assert self._loop is not None
                agent._busy_since[0] = time.monotonic()
                agent._inline_task = self._loop.create_task(self._finish_inline(agent, item, result))
                return
        except Exception as exc:
            self._handler_failed(agent, item, msg, exc)
        else:
            if item.kind == KIND_REQUEST:
                self._answer_request(item, result)
        agent.handled += 1
        self.counters["handled"] += 1
        if item.durable:
            self._handled.append(item.msg_id)

    async def _finish_inline(self, agent: Agent, item: Incoming, pending: Awaitable[Any]) -> None:
        msg_kind = "request" if item.kind == KIND_REQUEST else "message"
        try:
            result = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._handler_failed(agent, item, Message(item.msg_id, item.payload, agent.agent_id, item.src_agent,
                                                      item.sender_node, msg_kind, item.priority), exc)  # type: ignore[arg-type]
        else:
            if item.kind == KIND_REQUEST:
                self._answer_request(item, result)
        finally:
            agent._busy_since.pop(0, None)
        agent.handled += 1
        self.counters["handled"] += 1
        if item.durable:
            self._handled.append(item.msg_id)
            self.schedule_pump()

    def _handler_failed(self, agent: Agent, item: Any, msg: Message, exc: Exception) -> None:
        agent.handler_errors += 1
        self.counters["handler_errors"] += 1
        if type(item) is Incoming and item.kind == KIND_REQUEST:
            self._respond(item, b"", f"{type(exc).__name__}: {exc}")
        else:
            log.warning("handler of %s raised on %s: %r", agent.agent_id, msg.kind, exc)

    def _answer_request(self, item: Incoming, result: Any) -> None:
        try:
            answer = _answer(result)
        except ValueError as exc:
            self._respond(item, b"", f"{type(exc).__name__}: {exc}")
            return
        self._respond(item, answer, None)

    async def _work(self, agent: Agent, slot: int) -> None:
        queue = agent._queue
        delivery = self.delivery
        while True:
            item = await queue.get()
            if agent._inline_task is not None:
                task, agent._inline_task = agent._inline_task, None
                await asyncio.gather(task, return_exceptions=True)
            now = self.now_ms()
            if type(item) is Incoming:
                delivery.release(agent.agent_id)
                if item.expires_ms is not None and now > item.expires_ms:
                    delivery.drop_expired(item, now)
                    self.counters["expired_in_inbox"] += 1
                    if item.durable:
                        self._handled.append(item.msg_id)
                    self.schedule_pump()
                    continue
                msg = Message(item.msg_id, item.payload, agent.agent_id, item.src_agent, item.sender_node,
                              "request" if item.kind == KIND_REQUEST else "message", item.priority)
                handlers: Sequence[Handler] = (agent._handler,) if agent._handler is not None else ()
            else:
                agent._broadcast_backlog -= 1
                msg = Message(item.msg_id, item.payload, agent.agent_id, "", item.msg_id.origin,
                              "publish" if item.topic else "broadcast", PRIORITY_NORMAL, item.topic)
                handlers = agent._topic_handlers.get(item.topic, ()) if item.topic else (agent._handler,)  # type: ignore[assignment]
                self.counters["broadcasts_delivered"] += 1
            agent._busy_since[slot] = time.monotonic()
            try:
                result: Any = None
                if not handlers and type(item) is Incoming:
                    raise RuntimeError(f"agent {agent.agent_id} has no handler")
                for handler in list(handlers):
                    result = handler(msg)
                    if inspect.isawaitable(result):
                        result = await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                agent.handler_errors += 1
                self.counters["handler_errors"] += 1
                if type(item) is Incoming and item.kind == KIND_REQUEST:
                    self._respond(item, b"", f"{type(exc).__name__}: {exc}")
                else:
                    log.warning("handler of %s raised on %s: %r", agent.agent_id, msg.kind, exc)
            else:
                if type(item) is Incoming and item.kind == KIND_REQUEST:
                    self._respond(item, _answer(result), None)
            finally:
                agent._busy_since.pop(slot, None)
            agent.handled += 1
            self.counters["handled"] += 1
            if type(item) is Incoming and item.durable:
                self._handled.append(item.msg_id)
                if len(self._handled) >= HANDLED_FLUSH:
                    self._flush_handled()
                else:
                    self.schedule_pump()

    def _respond(self, item: Incoming, payload: bytes, error: str | None) -> None:
        try:
            self.delivery.respond(item, payload, self.now_ms(), error=error)
        except (SendQueueFull, ValueError) as exc:
            log.warning("cannot answer request %s: %s", item.msg_id, exc)
        if not self._pumping:  # from an inline handler, the running pump sends it
            self.schedule_pump()

    def _answer_gone(self, item: Incoming, now: int) -> None:
        self.delivery.release(item.dest_agent)
        if item.durable:
            self._handled.append(item.msg_id)  # resolved: its agent is gone (counted as late_incoming)
        if item.kind == KIND_REQUEST:
            self._respond(item, b"", f"UnknownAgent: agent {item.dest_agent!r} was deregistered")

    async def _health_loop(self) -> None:
        interval = self.config.health_interval_s
        while True:
            await asyncio.sleep(interval)
            for agent in list(self._agents.values()):
                healthy, reason = await self._check(agent)
                if agent.closed:
                    continue
                now = self.now_ms()
                try:
                    self.registry.report_health(agent.agent_id, healthy, now, reason)
                    load = min(agent._queue.qsize() + len(agent._busy_since), 1_000_000)
                    if load != self.registry.lookup(agent.agent_id).record.load:  # type: ignore[union-attr]
                        self.registry.set_load(agent.agent_id, load, now)
                except KeyError:
                    continue
            self.schedule_pump()

    async def _check(self, agent: Agent) -> tuple[bool, str]:
        if any(t.done() for t in agent._workers):
            return False, "handler worker stopped"
        stall = self.config.handler_stall_s
        now = time.monotonic()
        if any(now - since > stall for since in agent._busy_since.values()):
            return False, f"handler busy with one message for more than {stall:g} s"
        if agent._health is None:
            return True, "handler alive"
        try:
            result = agent._health()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.config.health_check_timeout_s)
        except TimeoutError:
            return False, "health check timed out"
        except Exception as exc:
            return False, f"health check raised {type(exc).__name__}: {exc}"
        return (True, "health check passed") if result else (False, "health check returned False")

    # -- helpers ----------------------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._closed or self._loop is None:
            from agentnode.runtime import NodeStopped

            raise NodeStopped("the node is not running; use `async with Node(config) as node:`")

    def _next_epoch(self) -> int:
        path = self._data_dir / EPOCH_FILE
        try:
            previous = int(json.loads(path.read_text()).get("epoch", 0))
        except (OSError, ValueError, AttributeError):
            previous = 0
        epoch = previous + 1
        if epoch > MAX_EPOCH:
            raise RuntimeError(f"agent epoch exhausted in {path}; remove the file only with an empty outbox")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"epoch": epoch}).encode())
        return epoch

    def stats(self) -> dict[str, Any]:
        """Counters of the service and its cores, for `agentnode agents --stats` and metrics."""
        return {
            "epoch": self.epoch,
            "agents": len(self._agents),
            "handled": {a: self._agents[a].handled for a in sorted(self._agents)},
            "outbox_rows": len(self._outbox),
            "inbox_rows": len(self._inbox),
            "service": dict(self.counters),
            "delivery": dict(self.delivery.counters),
            "registry": dict(self.registry.counters),
            "broadcast": dict(self.broadcaster.counters),
            "broadcast_active_view": self.broadcaster.active,
            "names": dict(self.names.core.counters),
        }

    # -- control endpoint -----------------------------------------------------------------------------

    def register_control(self, control: Any) -> None:
        """Operations the CLI uses (`agentnode agents/send/request/publish/broadcast/subscribe`)."""

        async def agents(args: dict[str, Any]) -> Any:
            entries = self.find_agents(args.get("capability"), topic=args.get("topic"), name=args.get("name"),
                                       healthy_only=bool(args.get("healthy_only", False)))
            return [entry_json(e) for e in entries]

        async def register(args: dict[str, Any]) -> Any:
            """Register a handler-less agent (scripts and tests: it holds a name; requests to it fail "no handler")."""
            capabilities = args.get("capabilities") or []
            if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
                raise ValueError("capabilities must be a list of strings")
            agent = await self.register_agent(str(args.get("name") or ""), capabilities, None, None,
                                              agent_id=args.get("agent_id") or None, unique=bool(args.get("unique")))
            state = agent.name_state
            return {"agent_id": agent.agent_id, "name": agent.name, "node_id": self.node_id,
                    "name_lease": None if state is None else {"state": state.state, "epoch": state.epoch}}

        async def deregister(args: dict[str, Any]) -> Any:
            agent_id = str(args.get("agent_id") or "")
            await self.deregister_agent(agent_id)
            return {"deregistered": agent_id}

        async def send(args: dict[str, Any]) -> Any:
            to = _target(args)
            count = int(args.get("count", 1))
            if not 1 <= count <= 10_000_000:
                raise ValueError("count must be in 1..10,000,000")
            data = str(args.get("data", ""))
            options = {k: args[k] for k in ("delivery", "ttl", "priority", "confirm", "on_full", "timeout") if
                       args.get(k) is not None}
            started = time.perf_counter()
            ids: list[MessageId] = []
            for base in range(0, count, SEND_CHUNK):
                n = min(SEND_CHUNK, count - base)
                bodies = [data if count == 1 else f"{data} #{base + i}" for i in range(n)]
                ids += await asyncio.gather(*(self.send(to, b, **options) for b in bodies))
            elapsed = time.perf_counter() - started
            return {"sent": count, "msg_ids": [list(m) for m in ids[:10]], "seconds": round(elapsed, 4),
                    "msgs_per_s": round(count / elapsed, 1) if elapsed > 0 else None}

        async def request(args: dict[str, Any]) -> Any:
            reply = await self.request(_target(args), str(args.get("data", "")),
                                       **{k: args[k] for k in ("timeout", "priority", "on_full") if args.get(k) is not None})
            return {"response": reply.text(), "agent_id": reply.agent_id, "node_id": reply.node_id,
                    "rtt_ms": round(reply.rtt_ms, 3)}

        async def publish(args: dict[str, Any]) -> Any:
            topic = str(args.get("topic", ""))
            data = str(args.get("data", ""))
            msg_id = await (self.publish(topic, data) if topic else self.broadcast(data))
            return {"msg_id": list(msg_id), "topic": topic}

        async def subscribe(args: dict[str, Any]) -> AsyncIterator[Any]:
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIPTION_QUEUE)

            def on_message(message: Message) -> None:
                item = {"topic": message.topic, "data": message.text(), "msg_id": list(message.msg_id),
                        "from_node": message.sender_node}
                if queue.full():
                    self.counters["broadcast_backlog_dropped"] += 1
                    return
                queue.put_nowait(item)

            subscription = await self.subscribe(str(args.get("topic", "")), on_message)
            count = args.get("count")
            try:
                yield {"subscribed": subscription.topic, "agent_id": self.sender_id}
                n = 0
                while count is None or n < int(count):
                    yield await queue.get()
                    n += 1
            finally:
                await subscription.cancel()

        async def stats(_: dict[str, Any]) -> Any:
            return self.stats()

        control.add("agents.list", agents)
        control.add("agents.register", register)
        control.add("agents.deregister", deregister)
        control.add("agents.send", send)
        control.add("agents.request", request)
        control.add("agents.publish", publish)
        control.add("agents.stats", stats)
        control.add_stream("agents.subscribe", subscribe)


# -- helpers -----------------------------------------------------------------------------------------------


def entry_json(entry: AgentEntry) -> dict[str, Any]:
    """A registry entry as plain JSON (CLI, control endpoint)."""
    r = entry.record
    return {
        "agent_id": r.agent_id, "name": r.name, "node_id": r.node_id, "capabilities": list(r.capabilities),
        "metadata": dict(r.metadata), "description": r.description, "version": r.version,
        "skills": [{"id": s.id, "name": s.name, "description": s.description, "tags": list(s.tags)} for s in r.skills],
        "topics": list(r.topics), "status": "healthy" if r.healthy else "unhealthy", "load": r.load,
        "node_suspect": entry.node_suspect, "name_lease": _name_lease_json(r),
    }


def _name_lease_json(record: AgentRecord) -> dict[str, Any] | None:
    """The advertised name lease: None for a non-unique name, else {"state", "epoch"}."""
    parsed = parse_marker(record.meta.get(NAME_MARKER_KEY))
    return None if parsed is None else {"state": parsed[0], "epoch": parsed[1]}


def _target(args: dict[str, Any]) -> str | Capability:
    if args.get("capability"):
        return Capability(str(args["capability"]), str(args.get("strategy") or "round_robin"), args.get("key"))
    to = args.get("to")
    if not to:
        raise ValueError("give an agent id, or --capability NAME")
    return str(to)


def _payload(payload: Payload) -> bytes:
    if type(payload) is bytes:
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise ValueError(f"payload must be bytes or str, not {type(payload).__name__}; serialise it first (json.dumps)")


def _channel(e: OutboxEntry) -> tuple[str, str, int]:
    return (e.dest_node, e.dest_agent, e.priority)


def _same_channel(a: _Staged, b: _Staged) -> bool:
    x, y = a.entry, b.entry
    return (x.dest_node == y.dest_node and x.dest_agent == y.dest_agent and x.priority == y.priority
            and x.src_agent == y.src_agent and a.ttl_ms == b.ttl_ms and a.wait_if_full == b.wait_if_full)


def _is_async(handler: Any) -> bool:
    """True for `async def` handlers (also as a bound method, partial or object with `async __call__`)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


def _answer(result: Any) -> bytes:
    if result is None:
        return b""
    if isinstance(result, (bytes, bytearray, memoryview, str)):
        return _payload(result)
    try:
        return json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"handler returned {type(result).__name__}; return bytes, str or JSON-able values") from exc


def _priority(priority: Priority) -> int:
    if isinstance(priority, str):
        value = _PRIORITY_NAMES.get(priority)
        if value is None:
            raise ValueError("priority must be 'high', 'normal' or 'low' (or 0, 1, 2)")
        return value
    if priority not in PRIORITIES:
        raise ValueError("priority must be 'high', 'normal' or 'low' (or 0, 1, 2)")
    return priority


def _seconds_ms(seconds: float, what: str) -> int:
    if not isinstance(seconds, (int, float)) or seconds < 0 or seconds * 1000 > MAX_TTL_MS:
        raise ValueError(f"{what} must be a number of seconds between 0 and {MAX_TTL_MS // 1000}")
    return max(1, int(seconds * 1000)) if seconds > 0 else 0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# -- demo agents (`agentnode join --demo-agents`, `agentnode dev up`) ---------------------------------------

DEMO_DIR = "demo-agents"
"""Where demo agents log what they receive (one JSON line per message), inside the data directory."""
DEMO_TICK_S = 2.0
"""How often the demo ticker asks some echo agent something, so a newcomer sees messages flow."""


async def start_demo_agents(node: Node) -> list[Agent]:
    """Register the demo agents on `node`: echo, counter and listener, plus a ticker task.

    - `echo@<node>` (capability "echo") answers a request with its payload;
    - `counter@<node>` (capability "counter") answers a request with how many messages it received;
    - `listener@<node>` subscribes to the topic "demo";
    - `sink@<node>` (capability "sink", no broadcasts) answers with the payload and records nothing (benchmarks).
    Each appends every message it receives to `<data dir>/demo-agents/<name>.log` (JSON lines, flushed
    per message, so a test can check exactly-once delivery even after kill -9 of another node).
    """
    directory = Path(node.config.data_dir) / DEMO_DIR
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    def recorder(name: str, answer: Callable[[Message], Any]) -> Handler:
        stream = open(directory / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115  (kept open for the node's life)

        def handle(message: Message) -> Any:
            counts[name] = counts.get(name, 0) + 1
            stream.write(json.dumps({"t": time.time(), "msg_id": list(message.msg_id), "kind": message.kind, "topic": message.topic,
                                     "data": message.text(), "from": message.sender_agent or message.sender_node}) + "\n")
            stream.flush()
            return answer(message) if message.kind == "request" else None

        return handle

    echo = await node.register_agent("echo", ["echo"], {"demo": "true"}, recorder("echo", lambda m: m.payload),
                                     description="Answers a request with its payload.", version="1")
    counter = await node.register_agent("counter", ["counter"], {"demo": "true"},
                                        recorder("counter", lambda m: str(counts.get("counter", 0))),
                                        description="Counts the messages it receives.", version="1")
    listener = await node.register_agent("listener", ["listen"], {"demo": "true"}, recorder("listener", lambda m: "ok"),
                                         description="Subscribed to the topic 'demo'.", version="1", topics=["demo"])
    sink = await node.register_agent("sink", ["sink"], {"demo": "true"}, lambda m: m.payload, broadcasts=False,
                                     inbox_capacity=65_536,
                                     description="Answers requests with the payload, records nothing (benchmarks).")
    service = node.agents

    async def tick() -> None:
        n = 0
        while True:
            await asyncio.sleep(DEMO_TICK_S)
            n += 1
            try:
                reply = await service.request(Capability("echo"), f"tick {n} from {service.node_id}", timeout=2.0)
                log.info("demo: %s answered tick %d in %.2f ms", reply.agent_id, n, reply.rtt_ms)
            except DeliveryError as exc:
                log.info("demo: tick %d failed: %s", n, exc)

    assert service._loop is not None
    service._demo_task = service._loop.create_task(tick())
    return [echo, counter, listener, sink]

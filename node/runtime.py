"""The asyncio runtime: feeds the sans-I/O NodeCore, sends what it says, re-arms one timer.

No protocol decision lives here (house style rule 8). The runtime owns the I/O around the core:
the transport, discovery, the data directory, the control endpoint, and the event stream the
embedding API exposes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from agentnode import events as ev
from agentnode.agents import AgentAPI, AgentService, MessagingConfig
from agentnode.clock import ClockService
from agentnode.config import NodeConfig
from agentnode.control import ControlServer
from agentnode.core import NodeCore
from agentnode.datadir import DataDir
from agentnode.profiles import profile_named
from agentnode.state import NodeState
from agentnode.transport.base import Address, BackpressureError, FrameHandler, Transport
from agentnode.transport.discovery import Discovery, PeerCache, discovery_for

__all__ = ["GC_GEN0_THRESHOLD", "Node", "NodeStopped", "tune_gc"]

log = logging.getLogger("agentnode.node")

EVENT_QUEUE_MAX = 1024
"""Per-subscriber event buffer; a subscriber that falls further behind loses the oldest events (counted)."""
PEER_CACHE_INTERVAL_MS = 5_000
"""How often the alive member list is written to the peer cache (a restart re-seeds from it)."""
LEAVE_GRACE_S = 0.5
"""Time for the leave announcement to reach peers before connections close."""
GC_GEN0_THRESHOLD = 10_000
"""`tune_gc`'s generation-0 threshold (CPython's default is 700): ~14x fewer young collections, each
still bounded to what survived 10,000 net allocations (well under a millisecond for the node's objects)."""


def tune_gc(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Opt-in, process-wide garbage-collector setting for a process that runs a node (decision 0125).

    Collects once, freezes everything alive (`gc.freeze()`: the modules and the started node are never
    scanned again, so a full collection only walks what was allocated since) and raises the generation-0
    threshold. Call it once, after the node and your agents have started. It is the application's
    choice, not the node's: it changes collection for the whole process, and objects frozen here are
    never collected even if they later become cyclic garbage. `agentnode join` calls it (`--no-tune-gc`
    to opt out); an embedding application may (docs/messaging.md, "Latency").
    """
    if not isinstance(gen0_threshold, int) or isinstance(gen0_threshold, bool) or gen0_threshold < 1:
        raise ValueError(f"gen0_threshold must be a positive int (CPython's default is 700), got {gen0_threshold!r}")
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


class NodeStopped(RuntimeError):
    """The node is not running (not started yet, or already stopped)."""


class Node(AgentAPI):
    """One node, usable as `async with Node(config) as node:` or run by `agentnode join`.

    The constructor allocates only; `start()` takes the data-directory lock, binds the transport,
    starts discovery and the control endpoint.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        transport: Transport | None = None,
        discovery: Discovery | None = None,
        control: bool = True,
        rng: random.Random | None = None,
        messaging: MessagingConfig | None = None,
    ) -> None:
        self.config = config
        self._messaging = messaging
        self._agent_service: AgentService | None = None
        self._data = DataDir(config.data_dir)
        self._transport = transport
        self._discovery = discovery
        self._control = ControlServer(self._data.control_socket) if control else None
        self._rng = rng or random.Random(config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._core: NodeCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._subscribers: list[asyncio.Queue[ev.NodeEvent]] = []
        self._peer_cache: PeerCache | None = None
        self._peer_cache_due_ms = 0
        self._stopped = asyncio.Event()
        self._started_at = 0.0
        self._channels: dict[int, FrameHandler] = {}
        self._metrics: Any = None
        self._gateway: Any = None
        self._member_listeners: list[Callable[[ev.NodeEvent], None]] = []
        self.raft: Any = None
        """The Raft service (`agentnode.raft.RaftService`) once started: critical state, kv, locks, roster."""
        self.counters: dict[str, int] = {"send_backpressure": 0, "events_dropped": 0}
        self.state = NodeState(self)
        """Replicated CRDT state: get/update/delete with a consistency level, watch (docs/state.md)."""

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._data.lock()
        try:
            await self._start_locked()
        except BaseException:
            await self._close_io()
            self._data.unlock()
            raise

    async def _start_locked(self) -> None:
        if self._transport is None:
            from agentnode.transport.factory import create_transport
            from agentnode.transport.identity import NodeIdentity

            identity = NodeIdentity.load(self._data.path)
            self._transport = create_transport(self.config.transport, identity, self.config.listen, rng=self._fork_rng("transport"))
        self._transport.set_handler(self._on_frame)
        await self._transport.start()
        advertised = self.config.advertise or self._transport.listen_address
        state = self._data.read_state()
        # A restart always beats what peers remember of this node's previous life.
        incarnation = int(state.get("incarnation", -1)) + 1
        self._core = NodeCore(
            self._transport.node_id,
            str(advertised),
            cluster=self.config.cluster,
            profile=profile_named(self.config.profile),
            rng=self._fork_rng("core"),
            incarnation=incarnation,
            metadata=self.config.metadata,
        )
        self._persist(incarnation=incarnation)
        self._clock = ClockService(self)
        self._clock.attach()
        self._agent_service = AgentService(self, self._data.path, self._fork_rng("agents"), self._messaging)
        self._agent_service.attach()
        now = self._now_ms()
        self._core.start(now)
        await self.state.start()
        self._peer_cache = PeerCache(self._data.peer_cache)
        cached = [str(a) for a in self._peer_cache.load()]
        seeds = [str(a) for a in self.config.bootstrap] + cached
        if seeds:
            self._core.add_seeds(seeds, now)
        if self._discovery is None:
            self._discovery = discovery_for(self.config, self._transport.node_id, advertised)
        if self._discovery is not None:
            self._discovery.set_handler(self._on_discovered)
            await self._discovery.start()
        from agentnode.raft import RaftService

        self.raft = RaftService(self, self._data.path, cluster=self.config.cluster, rng=self._fork_rng("raft"))
        await self.raft.start()
        if self._control is not None:
            self.raft.register_control(self._control)
        if self._control is not None:
            self._register_control()
            await self._control.start()
        if self.config.metrics is not None:
            from agentnode.metrics import MetricsServer

            self._metrics = MetricsServer(self, self.config.metrics)
            await self._metrics.start()
        await self._agent_service.start()
        if self.config.a2a is not None:
            from agentnode.gateway import A2AGateway

            self._gateway = A2AGateway(self, self.config.a2a)
            await self._gateway.start()
        self._started_at = self._loop.time()
        self._pump()
        log.info("node %s listening on %s (cluster %s, %s)", self.node_id, advertised, self.config.cluster, self.config.transport)

    async def leave(self) -> None:
        """Announce a graceful leave, so peers mark this node `left` rather than `dead`, then stop."""
        if self._core is not None and not self._stopped.is_set():
            self._core.leave(self._now_ms())
            self._pump()
            await asyncio.sleep(LEAVE_GRACE_S)
            self._persist(clean_leave=True)
        await self.stop()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        self._write_peer_cache()
        if self._agent_service is not None:
            await self._agent_service.close()
        await self._close_io()
        self._data.unlock()
        for queue in self._subscribers:
            queue.put_nowait(None)  # type: ignore[arg-type]  # end-of-stream marker

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- public view ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        if self._transport is None:
            raise NodeStopped("the node has not started")
        return self._transport.node_id

    @property
    def address(self) -> Address:
        return self.config.advertise or self._require_transport().listen_address

    @property
    def a2a_url(self) -> str | None:
        """The A2A gateway's base URL (the node's card is at `/.well-known/agent-card.json`), or None."""
        return self._gateway.base_url if self._gateway is not None else None

    @property
    def metrics_address(self) -> Address | None:
        """Where Prometheus metrics are served (the bound port when configured with 0), or None."""
        return self._metrics.address if self._metrics is not None else None

    def members(self) -> list[Any]:
        return self._require_core().members()

    def status(self) -> dict[str, Any]:
        core = self._require_core()
        members = core.members()
        by_state: dict[str, int] = {}
        for member in members:
            by_state[member.state] = by_state.get(member.state, 0) + 1
        me = next((m for m in members if m.node_id == self.node_id), None)
        return {
            "node_id": self.node_id,
            "cluster": self.config.cluster,
            "address": str(self.address),
            "transport": self.config.transport,
            "a2a": self.a2a_url,
            "profile": self.config.profile,
            "listen": str(self.config.listen),
            "bootstrap": [str(a) for a in self.config.bootstrap],
            "mdns": self.config.mdns,
            "incarnation": me.incarnation if me else None,
            "members": by_state,
            "uptime_s": round(self._require_loop().time() - self._started_at, 1),
            "pid": os.getpid(),
            "data_dir": str(self._data.path),
            "transport_stats": _asdict(self._require_transport().stats()),
            "core_counters": dict(core.counters),
            "runtime_counters": dict(self.counters),
        }

    async def events(self) -> AsyncIterator[ev.NodeEvent]:
        """Member events as they happen, from now on, until the node stops."""
        queue: asyncio.Queue[ev.NodeEvent] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._subscribers.append(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._subscribers.remove(queue)

    # -- how services beside the membership core plug in -------------------------------------

    def add_channel(self, frame_type: int, handler: FrameHandler) -> None:
        """Route frames `[VERSION, cluster, frame_type, ...]` to `handler` instead of the membership core.

        Services (replication, Raft, messaging) each own frame types; membership keeps the rest.
        """
        if frame_type in self._channels:
            raise ValueError(f"frame type {frame_type} is already routed to another service")
        self._channels[frame_type] = handler

    def add_member_listener(self, listener: Callable[[ev.NodeEvent], None]) -> None:
        """Call `listener` with every membership event, on the loop, before event subscribers see it."""
        self._member_listeners.append(listener)

    def send_frame(self, address: str | Address, frame: Any, peer_id: str | None) -> bool:
        """Queue a service's frame on the transport; False (and counted) when the peer's queue is full."""
        transport = self._require_transport()
        try:
            transport.send(address if isinstance(address, Address) else Address.parse(address), frame, peer_id)
        except BackpressureError:
            self.counters["send_backpressure"] += 1
            return False
        return True

    def now_ms(self) -> int:
        """The node's monotonic clock in integer milliseconds: what services pass to their cores."""
        return self._now_ms()

    # -- the adapter loop: feed, drain, re-arm ------------------------------------------------

    def _on_frame(self, sender_id: str, frame: Any) -> None:
        if self._core is None or self._stopped.is_set():
            return
        if self.raft is not None and self.raft.refuses(sender_id):
            self._require_transport().deny(sender_id)  # from now on refused at the handshake
            return  # a revoked node (Raft roster): no service or core ever sees its frames
        if self._channels and type(frame) is list and len(frame) > 2:
            handler = self._channels.get(frame[2])
            if handler is not None:
                handler(sender_id, frame)
                return
        self._core.receive(sender_id, frame, self._now_ms())
        self._schedule_pump()

    def _on_discovered(self, addresses: list[Address], source: str) -> None:
        if self._core is None or self._stopped.is_set():
            return
        mine = str(self.address)
        seeds = [str(a) for a in addresses if str(a) != mine]
        if seeds:
            self._core.add_seeds(seeds, self._now_ms())
            self._schedule_pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self._core is None or self._stopped.is_set():
            return
        self._core.handle_timer(self._now_ms())
        self._pump()

    def _schedule_pump(self) -> None:
        """Coalesce: many frames received in one loop iteration cause one pump."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        core, transport = self._core, self._transport
        if core is None or transport is None or self._stopped.is_set():
            return
        raft = self.raft
        for out in core.messages_to_send():
            if raft is not None and out.peer_id is not None and raft.refuses(out.peer_id):
                transport.deny(out.peer_id)
                continue
            try:
                transport.send(Address.parse(out.address), out.frame, out.peer_id)
            except BackpressureError:
                self.counters["send_backpressure"] += 1
            except ValueError:
                log.warning("core produced an unusable address %r", out.address)
        while (event := core.next_event()) is not None:
            self._handle_event(event)
        now = self._now_ms()
        if now >= self._peer_cache_due_ms:
            self._peer_cache_due_ms = now + PEER_CACHE_INTERVAL_MS
            self._write_peer_cache()
        when = core.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            assert self._loop is not None
            self._timer = self._loop.call_at(max(when, now) / 1000.0, self._on_timer)

    def _handle_event(self, event: ev.NodeEvent) -> None:
        if isinstance(event, ev.IncarnationChanged):
            self._persist(incarnation=event.incarnation)
        elif isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberSuspected, ev.MemberFailed, ev.MemberLeft)):
            log.info("%s %s", type(event).__name__, getattr(event, "node_id", ""))
        for listener in self._member_listeners:
            try:
                listener(event)
            except Exception:  # one faulty service must not stop membership
                log.exception("member listener %r failed on %s", listener, type(event).__name__)
        self._publish_event(event)

    def _publish_event(self, event: Any) -> None:
        """Hand `event` (membership, agent up/down, unobserved message failure) to every `events()` reader."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.counters["events_dropped"] += 1
            queue.put_nowait(event)

    # -- helpers ------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        assert self._loop is not None
        return int(self._loop.time() * 1000)

    def _fork_rng(self, label: str) -> random.Random:
        return random.Random(f"{self._rng.getrandbits(64)}:{label}")

    def _persist(self, **fields: Any) -> None:
        state = self._data.read_state()
        state.update(fields)
        if "incarnation" in fields:
            state["clean_leave"] = False
        try:
            self._data.write_state(state)
        except OSError as exc:
            log.error("cannot persist node state in %s: %s", self._data.path, exc)

    def _write_peer_cache(self) -> None:
        if self._peer_cache is None or self._core is None:
            return
        alive = [m for m in self._core.members() if m.state == "alive" and m.node_id != self.node_id]
        try:
            self._peer_cache.update(alive)
        except OSError as exc:
            log.warning("cannot write the peer cache: %s", exc)

    async def _close_io(self) -> None:
        self.state.close()
        for closer in (self._gateway, self.raft, self._metrics, self._control, self._discovery, self._transport):
            if closer is None:
                continue
            try:
                await closer.close()
            except Exception:  # closing must finish even if one part fails
                log.exception("error while closing %s", type(closer).__name__)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise NodeStopped("the node has not started")
        return self._loop

    def _require_core(self) -> NodeCore:
        if self._core is None:
            raise NodeStopped("the node has not started; use `async with Node(config) as node:`")
        return self._core

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise NodeStopped("the node has not started")
        return self._transport

    def _register_control(self) -> None:
        assert self._control is not None

        async def status(_: dict[str, Any]) -> Any:
            return self.status()

        async def peers(_: dict[str, Any]) -> Any:
            return [_member_json(m) for m in self.members()]

        async def leave(_: dict[str, Any]) -> Any:
            asyncio.get_running_loop().create_task(self.leave())
            return {"leaving": self.node_id}

        async def clock(args: dict[str, Any]) -> Any:
            me = self.node_id
            peers = [(m.node_id, m.address) for m in self.members() if m.state == "alive" and m.node_id != me]
            readings = await self._clock.measure(peers, timeout_s=float(args.get("timeout_s", 1.0)))
            return [{"node_id": r.node_id, "local_ms": r.local_ms, "peer_ms": r.peer_ms, "rtt_ms": r.rtt_ms} for r in readings]

        self._control.add("clock", clock)
        self._control.add("status", status)
        self._control.add("peers", peers)
        self._control.add("leave", leave)
        if self._agent_service is not None:
            self._agent_service.register_control(self._control)
        self.state.add_control_ops(self._control)


def _member_json(member: Any) -> dict[str, Any]:
    return {
        "node_id": member.node_id,
        "address": member.address,
        "state": member.state,
        "incarnation": member.incarnation,
        "metadata": dict(member.metadata or {}),
    }


def _asdict(value: Any) -> dict[str, Any]:
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is None:
        return dict(value) if isinstance(value, dict) else {}
    return {name: getattr(value, name) for name in fields}

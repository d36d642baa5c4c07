"""Service cores in the simulated world: the replication core (CRDT state) beside each NodeCore.

The runtime plugs services into a node in three ways (node/runtime.py, node/state.py): frames
whose type (`frame[2]`) a service registered go to that service instead of the membership core;
membership events reach every service's member listener before anyone else sees them; each
service keeps its own timer. `ServiceNode` does exactly that for the simulator, around the same
real cores, and presents the result to the world as one `SimCore` (one timer: the earliest of its
cores'), so world.py needs no knowledge of services. Nothing here decides a protocol step.

Persistence: `node.state` commits every change before anything that reflects it is sent, so a
crash keeps exactly what the store held. A restart therefore rebuilds the store from the old one's
full states and seen vector (what `StateDb.load` reads back) and starts a higher epoch.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import msgpack

from agentnode import events as ev
from agentnode.crdt import StateStore, StoreLimits
from agentnode.crdt.store import Repair
from agentnode.replication import FRAME_TYPES as STATE_FRAME_TYPES
from agentnode.names import NameConfig, NameLeases, NameOp
from agentnode.registry import Registry, RegistryConfig
from agentnode.replication import KeyChanged, ReplicationConfig, Replicator
from agentnode.simulations.seed import fork
from agentnode.simulations.world import CoreFactory, SimCore

__sans_io__ = True

NameRunner = Callable[["ServiceNode", NameOp, int], None]
"""(node, lease operation, node-local now): run it through consensus and call `names.on_result`."""

REGISTRY_FRAME_TYPES = (32, 33)
"""Registry digest and set frames (node/agent_messages.py), routed as AgentService._on_frame does."""

__all__ = ["ServiceDisks", "ServiceNode", "ServicesConfig", "reload_store", "service_core_factory"]

SERVICE_EVENTS_MAX = 1_000_000
"""Events buffered between one input and the world's drain (the world drains after every input)."""


@dataclass(frozen=True, slots=True)
class ServicesConfig:
    """Which service cores run beside each NodeCore, and their knobs."""

    state: bool = True
    """Run a `Replicator` (node.state's core) on every node."""
    replication: ReplicationConfig | None = None
    limits: StoreLimits | None = None
    registry: bool = False
    """Run a `Registry` (node.agents' registry core) on every node."""
    registry_config: RegistryConfig | None = None
    registry: bool = False
    """Run a `Registry` (node.agents' registry core) on every node."""
    registry_config: RegistryConfig | None = None
    names: bool = False
    """Run `NameLeases` (unique agent names) on every node; its operations go to `name_runner`."""
    name_config: NameConfig | None = None
    trace_key_changes: bool = True
    """Pass `KeyChanged` events to the world (they enter the trace digest); off for very large runs."""


class ServiceNode:
    """One simulated node's cores: the membership `NodeCore` plus service cores, as one `SimCore`.

    Frames are routed by type like `Node._on_frame`; membership events are fed to the replicator
    like `NodeState._on_member_event`; `handle_timer` wakes only the cores that are due.
    """

    __slots__ = ("core", "replicator", "registry", "names", "name_runner", "_channels", "_events", "_trace_key_changes", "_services", "_pack",
                 "service_frames", "service_bytes")

    def __init__(self, core: SimCore, *, replicator: Replicator | None = None, registry: Registry | None = None,
                 names: NameLeases | None = None, name_runner: NameRunner | None = None,
                 trace_key_changes: bool = True) -> None:
        self.core = core
        self.replicator = replicator
        self.registry = registry
        self.names = names
        self.name_runner = name_runner
        """Runs a lease operation through the consensus stand-in and reports its outcome (name_keeper's job)."""
        self._trace_key_changes = trace_key_changes
        self._events: deque[Any] = deque()
        self._channels: dict[int, Any] = {}
        self._services: list[Any] = []
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.service_frames = 0
        self.service_bytes = 0
        """Frames and msgpack bytes the service cores sent (the world counts all frames together)."""
        if replicator is not None:
            self._services.append(replicator)
            for frame_type in STATE_FRAME_TYPES:
                self._channels[frame_type] = replicator
            while replicator.next_event() is not None:  # load-time events, dropped as node.state does
                pass
        if registry is not None:
            self._services.append(registry)
            for frame_type in REGISTRY_FRAME_TYPES:
                self._channels[frame_type] = registry

    # ---- SimCore ---------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        self.core.start(now_ms)
        self._pump(now_ms)

    def add_seeds(self, addresses: Sequence[str], now_ms: int) -> None:
        self.core.add_seeds(addresses, now_ms)
        self._pump(now_ms)

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        if type(frame) is list and len(frame) > 2:
            service = self._channels.get(frame[2])
            if service is not None:
                service.receive(sender_id, frame, now_ms)
                self._pump(now_ms)
                return
        self.core.receive(sender_id, frame, now_ms)
        self._pump(now_ms)

    def peer_unreachable(self, address: str, peer_id: str | None, now_ms: int) -> None:
        self.core.peer_unreachable(address, peer_id, now_ms)
        self._pump(now_ms)

    def handle_timer(self, now_ms: int) -> None:
        due = self.core.get_timer()
        if due is not None and due <= now_ms:
            self.core.handle_timer(now_ms)
        for service in self._services:
            due = service.get_timer()
            if due is not None and due <= now_ms:
                service.handle_timer(now_ms)
        names = self.names
        if names is not None:
            due = names.get_timer()
            if due is not None and due <= now_ms:
                for op in names.handle_timer(now_ms):
                    self.run_name_op(op, now_ms)
        self._pump(now_ms)

    def get_timer(self) -> int | None:
        best = self.core.get_timer()
        if self.names is not None:
            due = self.names.get_timer()
            if due is not None and (best is None or due < best):
                best = due
        for service in self._services:
            due = service.get_timer()
            if due is not None and (best is None or due < best):
                best = due
        return best

    def messages_to_send(self) -> list[Any]:
        out = self.core.messages_to_send()
        for service in self._services:
            more = service.messages_to_send()
            if more:
                pack = self._pack
                self.service_frames += len(more)
                self.service_bytes += sum(len(pack(m.frame)) for m in more)
                out = [*out, *more]
        return out

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def leave(self, now_ms: int) -> None:
        self.core.leave(now_ms)
        self._pump(now_ms)

    def members(self) -> list[Any]:
        return self.core.members()

    def route(self, frame_type: int, service: Any) -> None:
        """Send frames of `frame_type` to `service` (anything with `receive`); tests inject faulty replicas."""
        self._channels[frame_type] = service

    # ---- service API (what a user of node.state calls) ------------------------------------

    def state_update(self, key: str, type_name: str, op: str, args: Sequence[Any], now_ms: int) -> None:
        """A local-consistency write, as `node.state.update(..., consistency="local")` makes it."""
        if self.replicator is None:
            raise RuntimeError("this simulated node runs no state service; build the world with services state")
        self.replicator.update(key, type_name, op, tuple(args), now_ms)
        self._pump(now_ms)

    def register_agent(self, agent_id: str, capabilities: Sequence[str], now_ms: int) -> None:
        """Host an agent here, as `node.agents.register_agent` does through the registry core."""
        if self.registry is None:
            raise RuntimeError("this simulated node runs no registry; build the world with services registry")
        self.registry.register(agent_id, now_ms, name=agent_id, capabilities=tuple(capabilities))
        self._pump(now_ms)

    def deregister_agent(self, agent_id: str, now_ms: int) -> None:
        if self.registry is None:
            raise RuntimeError("this simulated node runs no registry; build the world with services registry")
        self.registry.deregister(agent_id, now_ms)
        if self.names is not None:
            op = self.names.release(agent_id)
            if op is not None:
                self.run_name_op(op, now_ms)
        self._pump(now_ms)

    def claim_name(self, agent_id: str, name: str, now_ms: int) -> None:
        """Keep a unique `name` for a hosted agent (register_agent(unique=True) through NameLeases)."""
        if self.names is None:
            raise RuntimeError("this simulated node runs no name leases; build the world with services names")
        self.run_name_op(self.names.claim(agent_id, name, now_ms), now_ms)
        self._pump(now_ms)

    def run_name_op(self, op: NameOp, now_ms: int) -> None:
        if self.name_runner is not None:
            self.name_runner(self, op, now_ms)

    # ---- plumbing --------------------------------------------------------------------------

    def _pump(self, now_ms: int) -> None:
        """Move membership events to the services (before the world sees them), then service events."""
        events = self._events
        core = self.core
        replicator = self.replicator
        registry = self.registry
        while (event := core.next_event()) is not None:
            if replicator is not None:  # as NodeState._on_member_event
                if isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberUpdated)):
                    replicator.member_up(event.node_id, event.address, now_ms)
                elif isinstance(event, ev.MemberFailed):
                    replicator.member_down(event.node_id, now_ms)
                elif isinstance(event, ev.MemberLeft):
                    replicator.member_down(event.node_id, now_ms, left=True)
            if registry is not None:  # as AgentService._on_member_event
                if isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberUpdated)):
                    if event.node_id != registry.node_id:
                        registry.member_up(event.node_id, event.address, now_ms)
                elif isinstance(event, ev.MemberSuspected):
                    registry.member_suspect(event.node_id, now_ms)
                elif isinstance(event, (ev.MemberFailed, ev.MemberLeft)):
                    registry.member_down(event.node_id, now_ms, left=isinstance(event, ev.MemberLeft))
            events.append(event)
        if replicator is not None:
            while (event := replicator.next_event()) is not None:
                if self._trace_key_changes or not isinstance(event, KeyChanged):
                    events.append(event)
        if registry is not None:
            while (event := registry.next_event()) is not None:
                events.append(event)
        if self.names is not None:
            while (event := self.names.next_event()) is not None:
                events.append(event)
        if len(events) > SERVICE_EVENTS_MAX:
            raise RuntimeError(f"{len(events)} service events undrained; the world must drain after every input")


def reload_store(old: StateStore, limits: StoreLimits | None = None) -> StateStore:
    """The store a restart reads back: every full state (tombstones included) and the seen vector."""
    store = StateStore(old.replica_id, limits)
    keys = [*old.keys(), *old.tombstones()]
    store.apply_repair(Repair(tuple(old.state_for(keys).items()), old.seen(), True))
    return store


class ServiceDisks:
    """What each node's services keep across restarts (its data directory), by node id.

    A restart without data still keeps the state store: the simulator reuses node ids, and a fresh
    replica under an old id would reissue event ids its peers have seen (production cannot do this,
    the node id is the key in the data directory). See docs/decisions/0055.
    """

    def service_bytes(self) -> int:
        """Bytes every service core of every node, in every life, has sent so far."""
        return self.bytes_of_previous_lives + sum(node.service_bytes for node in self.nodes.values())

    def __init__(self) -> None:
        self.stores: dict[str, StateStore] = {}
        self.epochs: dict[str, int] = {}
        self.registry_epochs: dict[str, int] = {}
        self.bytes_of_previous_lives = 0
        """Service bytes sent by nodes' earlier lives (before their last restart)."""
        self.nodes: dict[str, ServiceNode] = {}
        """The service node currently running under each id (the last one booted)."""
        self.preload: Callable[[StateStore], None] | None = None
        """Fills a node's store before its first boot (a cluster that already holds data)."""


def service_core_factory(membership: CoreFactory, config: ServicesConfig, *, seed: int, cluster: str,
                         disks: ServiceDisks, name_runner: NameRunner | None = None) -> CoreFactory:
    """Wraps a membership core factory so every node also runs the configured service cores.

    Service cores draw from their own forks of the run seed, so switching services on never
    shifts the membership core's random stream.
    """

    def make(node_id: str, address: str, *, rng: random.Random, incarnation: int) -> SimCore:
        core = membership(node_id, address, rng=rng, incarnation=incarnation)
        replicator = None
        if config.state:
            old = disks.stores.get(node_id)
            if old is None:
                store = StateStore(node_id, config.limits)
                if disks.preload is not None:
                    disks.preload(store)
            else:
                store = reload_store(old, config.limits)
            disks.stores[node_id] = store
            epoch = disks.epochs.get(node_id, -1) + 1
            disks.epochs[node_id] = epoch
            state_rng = fork(seed, "node", node_id, "state", epoch)
            replicator = Replicator(store, cluster=cluster, epoch=epoch, rng=state_rng, config=config.replication)
        registry = None
        if config.registry:
            # Agents live in the node's process: a restart starts with none, at a higher epoch.
            epoch = disks.registry_epochs.get(node_id, -1) + 1
            disks.registry_epochs[node_id] = epoch
            registry = Registry(node_id, cluster=cluster, epoch=epoch, rng=fork(seed, "node", node_id, "registry", epoch),
                                config=config.registry_config)
        names = None
        if config.names:
            names = NameLeases(node_id, fork(seed, "node", node_id, "names", disks.registry_epochs.get(node_id, 0)),
                               config.name_config)
        node = ServiceNode(core, replicator=replicator, registry=registry, names=names, name_runner=name_runner,
                           trace_key_changes=config.trace_key_changes)
        previous = disks.nodes.get(node_id)
        if previous is not None:
            disks.bytes_of_previous_lives += previous.service_bytes
        disks.nodes[node_id] = node
        return node

    return make

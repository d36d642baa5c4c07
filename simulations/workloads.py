"""Workloads: what simulated users ask of the service cores, on a seeded schedule.

A workload is a list of API calls placed on the world's clock with `World.call_at`. Which node
writes comes from the workload's own fork of the run seed; what it writes (key, operation,
arguments) comes from that node's own fork, so changing the writer count of one node never
shifts another's choices. Calls land only on healthy nodes (running, not paused): a frozen
process makes no calls. Every call is recorded in the trace digest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from agentnode.crdt import StateStore
from agentnode.simulations.seed import fork

if TYPE_CHECKING:
    from agentnode.simulations.services import ServiceNode
    from agentnode.simulations.world import World

__sans_io__ = True

__all__ = [
    "STATE_TYPES", "RegistryLog", "RegistryWorkload", "StateLog", "StateWorkload", "key_name", "preload_states",
    "schedule_registry_workload", "schedule_state_workload",
]

STATE_TYPES = ("pncounter", "orset", "lwwmap")
"""Counters, OR-sets and LWW maps: the three merge rules node.state users reach for first."""
ELEMENTS = 8
"""Distinct OR-set elements and LWW-map fields per key: small, so adds and removes collide."""
WRITES_MAX = 10_000_000
"""Bound on scheduled calls of one workload."""


@dataclass(frozen=True, slots=True)
class StateWorkload:
    """`writes` local-consistency updates spread evenly over [start_ms, end_ms) on random nodes."""

    keys: int
    writes: int
    start_ms: int
    end_ms: int
    types: tuple[str, ...] = STATE_TYPES
    """Key i holds the type types[i % len(types)] (a key never changes type)."""

    def __post_init__(self) -> None:
        if self.keys < 1:
            raise ValueError("a state workload needs at least one key")
        if not 0 <= self.writes <= WRITES_MAX:
            raise ValueError(f"writes must be within 0..{WRITES_MAX}")
        if self.end_ms < self.start_ms or self.start_ms < 0:
            raise ValueError("the write window must be 0 <= start_ms <= end_ms")
        for name in self.types:
            if name not in ("pncounter", "gcounter", "orset", "lwwmap"):
                raise ValueError(f"workload type {name!r} is not one of pncounter, gcounter, orset, lwwmap")


@dataclass(slots=True)
class StateLog:
    """What the workload did; the convergence invariant and the figures read it."""

    last_write_ms: int = -1
    writes_done: int = 0
    writes_skipped: int = 0
    """Calls that found no healthy node to land on."""
    writers: dict[int, int] = field(default_factory=dict)
    """node index -> writes it made."""


def key_name(index: int) -> str:
    return f"k{index:05d}"


def preload_states(store: StateStore, workload: StateWorkload, origins: Sequence[str]) -> None:
    """Fill `store` as a converged cluster would hold it: key i written once by origins[i % len]."""
    deltas = _preload_deltas(workload, tuple(origins))
    for delta in deltas:
        store.apply_delta(delta)


_PRELOAD_CACHE: dict[tuple[Any, ...], list[Any]] = {}


def _preload_deltas(workload: StateWorkload, origins: tuple[str, ...]) -> list[Any]:
    cache_key = (workload.keys, workload.types, origins)
    cached = _PRELOAD_CACHE.get(cache_key)
    if cached is not None:
        return cached
    _PRELOAD_CACHE.clear()
    stores = {origin: StateStore(origin) for origin in origins}
    deltas = []
    for i in range(workload.keys):
        origin = stores[origins[i % len(origins)]]
        type_name = workload.types[i % len(workload.types)]
        deltas.append(origin.update(key_name(i), type_name, *_first_op(type_name, i)))
    _PRELOAD_CACHE[cache_key] = deltas
    return deltas


def _first_op(type_name: str, i: int) -> tuple[Any, ...]:
    if type_name in ("pncounter", "gcounter"):
        return ("increment", 1)
    if type_name == "orset":
        return ("add", f"e{i % ELEMENTS}")
    return ("put", f"f{i % ELEMENTS}", i, 1)


def schedule_state_workload(world: World, workload: StateWorkload, log: StateLog) -> None:
    """Place the workload's calls on `world`'s clock."""
    seed = world.config.seed
    picker = fork(seed, "workload", "state")
    node_rngs: dict[int, random.Random] = {}
    span = workload.end_ms - workload.start_ms
    writes = workload.writes

    def call(now_ms: int) -> None:
        healthy = [n for n in world.nodes if n.healthy and n.core is not None]
        if not healthy:
            log.writes_skipped += 1
            world.trace.record(b"W%d -" % now_ms)
            return
        node = healthy[picker.randrange(len(healthy))]
        rng = node_rngs.get(node.index)
        if rng is None:
            rng = node_rngs[node.index] = fork(seed, "node", node.index, "workload")
        index = rng.randrange(workload.keys)
        type_name = workload.types[index % len(workload.types)]
        op, args = _pick_op(type_name, rng, node.local_ms(now_ms))
        key = key_name(index)
        service: ServiceNode = node.core  # type: ignore[assignment]
        if type_name == "lwwmap":
            # As node.state.set does: never older than what this replica holds (clocks disagree).
            args = (args[0], args[1], max(args[2], _lww_floor(service, key, args[0]) + 1))
        world.trace.record(b"W%d %d " % (now_ms, node.index) + repr((key, type_name, op, args)).encode())
        service.state_update(key, type_name, op, args, node.local_ms(now_ms))
        world.poke(node, now_ms)
        log.writes_done += 1
        log.last_write_ms = now_ms
        log.writers[node.index] = log.writers.get(node.index, 0) + 1

    for k in range(writes):
        world.call_at(workload.start_ms + (span * k // writes if writes else 0), call)


def _pick_op(type_name: str, rng: random.Random, local_ms: int) -> tuple[str, tuple[Any, ...]]:
    if type_name == "gcounter":
        return "increment", (rng.randint(1, 5),)
    if type_name == "pncounter":
        return ("increment" if rng.random() < 0.7 else "decrement"), (rng.randint(1, 5),)
    if type_name == "orset":
        element = f"e{rng.randrange(ELEMENTS)}"
        return ("add" if rng.random() < 0.7 else "remove"), (element,)
    # LWW map: the node's own clock is the timestamp, as node.state.set uses wall time; clocks of
    # different nodes disagree (origins are random), which is what LWW must live with.
    return "put", (f"f{rng.randrange(ELEMENTS)}", rng.randrange(1_000_000), local_ms)


def _lww_floor(service: ServiceNode, key: str, field_name: str) -> int:
    replicator = service.replicator
    current = replicator.store.get(key) if replicator is not None else None
    if current is None:
        return -1
    for name, entry in current.entries():  # type: ignore[attr-defined]
        if name == field_name:
            return int(entry[0])
    return -1


@dataclass(frozen=True, slots=True)
class RegistryWorkload:
    """`ops` agent registrations and deregistrations spread over [start_ms, end_ms) on random nodes."""

    ops: int
    start_ms: int
    end_ms: int
    agents_per_node_max: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.ops <= WRITES_MAX or self.end_ms < self.start_ms or self.agents_per_node_max < 1:
            raise ValueError("registry workload: 0 <= ops, start_ms <= end_ms, agents_per_node_max >= 1")


@dataclass(slots=True)
class RegistryLog:
    last_op_ms: int = -1
    registered: int = 0
    deregistered: int = 0


CAPABILITIES = ("summarise", "translate", "search")
UNIQUE_NAMES = 4
"""Unique agent names contended for when the names service runs (few, so claims collide)."""


def schedule_registry_workload(world: World, workload: RegistryWorkload, log: RegistryLog) -> None:
    """Place agent registrations/deregistrations on `world`'s clock (agent ids are unique per node)."""
    seed = world.config.seed
    picker = fork(seed, "workload", "registry")
    node_rngs: dict[int, random.Random] = {}
    serial: dict[int, int] = {}
    span = workload.end_ms - workload.start_ms

    def call(now_ms: int) -> None:
        healthy = [n for n in world.nodes if n.healthy and getattr(n.core, "registry", None) is not None]
        if not healthy:
            return
        node = healthy[picker.randrange(len(healthy))]
        rng = node_rngs.get(node.index)
        if rng is None:
            rng = node_rngs[node.index] = fork(seed, "node", node.index, "agents")
        service: ServiceNode = node.core  # type: ignore[assignment]
        local = [r.agent_id for r in service.registry.local_agents()]  # type: ignore[union-attr]
        local_now = node.local_ms(now_ms)
        if local and (len(local) >= workload.agents_per_node_max or rng.random() < 0.3):
            agent_id = local[rng.randrange(len(local))]
            world.trace.record(b"A%d %d -" % (now_ms, node.index) + agent_id.encode())
            service.deregister_agent(agent_id, local_now)
            log.deregistered += 1
        else:
            serial[node.index] = serial.get(node.index, 0) + 1
            agent_id = f"{node.node_id}-a{serial[node.index]}"
            capability = CAPABILITIES[rng.randrange(len(CAPABILITIES))]
            world.trace.record(b"A%d %d +" % (now_ms, node.index) + agent_id.encode())
            service.register_agent(agent_id, (capability,), local_now)
            log.registered += 1
            if service.names is not None:
                # register_agent(unique=True): the agent keeps a name from a small, contended pool.
                service.claim_name(agent_id, f"unique-{rng.randrange(UNIQUE_NAMES)}", local_now)
        world.poke(node, now_ms)
        log.last_op_ms = now_ms

    for k in range(workload.ops):
        world.call_at(workload.start_ms + (span * k // workload.ops if workload.ops else 0), call)

"""Replicated-state benchmark and the small deterministic harness it (and the tests) drive.

`ReplicaNet` runs N `Replicator` cores in one process with virtual integer time, a seeded random
source, per-pair FIFO links with random latency, optional loss, partitions and crashes. Every frame
goes through msgpack, so byte counts are what a transport would carry and nothing unserialisable
slips through. Membership is modelled, not run: the harness calls `member_up`/`member_down` when a
link heals or fails (after `detect_ms`), standing in for SWIM's verdicts.

`run_state_benchmark()` produces the figures of `agentnode bench state` (docs/benchmarks.md, "State").
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack

from agentnode.crdt import StateStore, StoreLimits, to_wire
from agentnode.crdt.store import markers_to_wire
from agentnode.replication import (
    ReadDone,
    ReplicationConfig,
    Replicator,
    WriteDone,
)

__all__ = ["ReplicaNet", "run_state_benchmark"]

_DELIVER, _TIMER, _CALL = 0, 1, 2
_TYPE_NAMES = {64: "deltas", 65: "delta_ack", 66: "digest", 67: "key_digests", 68: "repair", 69: "write",
               70: "write_ack", 71: "read", 72: "read_reply"}


class ReplicaNet:
    """N replication cores on a simulated network; time is virtual and one seed replays a run."""

    def __init__(
        self,
        size: int,
        seed: int = 1,
        *,
        config: ReplicationConfig | None = None,
        limits: StoreLimits | None = None,
        latency_ms: tuple[int, int] = (1, 5),
        loss: float = 0.0,
        connect: bool = True,
        id_prefix: str = "r",
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or ReplicationConfig()
        self.limits = limits
        self.latency_ms = latency_ms
        self.loss = loss
        self.now = 0
        self.ids = [f"{id_prefix}{i:03d}" for i in range(size)]
        self.nodes: dict[str, Replicator] = {}
        self.epochs: dict[str, int] = {}
        self.up: dict[str, bool] = {}
        self.group: dict[str, int] = dict.fromkeys(self.ids, 0)
        self.done: dict[tuple[str, int], WriteDone | ReadDone] = {}
        self.bytes_by_type: dict[int, int] = {}
        self.frames_by_type: dict[int, int] = {}
        self.frames_dropped = 0
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = 0
        self._timer_at: dict[str, int | None] = {}
        self._fifo: dict[tuple[str, str], int] = {}
        self._packer = msgpack.Packer(use_bin_type=True)
        for node_id in self.ids:
            self._boot(node_id)
        if connect:
            for a in self.ids:
                for b in self.ids:
                    if a != b:
                        self.nodes[a].member_up(b, b, self.now)
                self._drain(a)

    # -- control ------------------------------------------------------------------------------

    def node(self, i: int) -> Replicator:
        return self.nodes[self.ids[i]]

    def call(self, node_id: str, fn: Callable[[Replicator], Any]) -> Any:
        """Run an API call on a core now and route what it produced."""
        try:
            return fn(self.nodes[node_id])
        finally:
            self._drain(node_id)

    def run(self, duration_ms: int) -> None:
        self.run_until(self.now + duration_ms)

    def run_until(self, until_ms: int, stop: Callable[[], bool] | None = None, check_every_ms: int = 10) -> bool:
        """Process events up to `until_ms`; with `stop`, return True as soon as it holds (checked every few ms)."""
        next_check = self.now
        while True:
            if stop is not None and self.now >= next_check:
                next_check = self.now + check_every_ms
                if stop():
                    return True
            if not self._heap or self._heap[0][0] > until_ms:
                self.now = until_ms
                return stop() if stop is not None else False
            at, _, kind, payload = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            if kind == _DELIVER:
                src, dst, data = payload
                if not self.up[dst] or not self._linked(src, dst):
                    self.frames_dropped += 1
                    continue
                self.nodes[dst].receive(src, msgpack.unpackb(data, raw=False), self.now)
                self._drain(dst)
            elif kind == _TIMER:
                node_id = payload
                core = self.nodes.get(node_id)
                if core is None or not self.up[node_id] or self._timer_at.get(node_id) != at:
                    continue
                self._timer_at[node_id] = None
                core.handle_timer(self.now)
                self._drain(node_id)
            else:
                payload()

    def at(self, when_ms: int, action: Callable[[], None]) -> None:
        self._push(when_ms, _CALL, action)

    def partition(self, *groups: Sequence[str], detect_ms: int = 0) -> None:
        """Cut links between groups; each side's cores hear `member_down` for the other after `detect_ms`."""
        for g, members in enumerate(groups):
            for node_id in members:
                self.group[node_id] = g + 1

        def report() -> None:
            for a in self.ids:
                for b in self.ids:
                    if a != b and self.up[a] and self.group[a] != self.group[b]:
                        self.nodes[a].member_down(b, self.now)
                self._drain(a)

        self.at(self.now + detect_ms, report)

    def heal(self, detect_ms: int = 0, jitter_ms: int = 0) -> None:
        """Restore every link; cores hear `member_up` for the other side after `detect_ms` (+ per-pair jitter)."""
        before = dict(self.group)
        self.group = dict.fromkeys(self.ids, 0)
        for a in self.ids:
            for b in self.ids:
                if a != b and before[a] != before[b]:
                    delay = detect_ms + (self.rng.randrange(jitter_ms + 1) if jitter_ms else 0)
                    self.at(self.now + delay, lambda a=a, b=b: self._up(a, b))

    def crash(self, node_id: str) -> None:
        """Stop a core (its frames in flight are lost); peers hear `member_down`."""
        self.up[node_id] = False
        for other in self.ids:
            if other != node_id and self.up[other]:
                self.nodes[other].member_down(node_id, self.now)
                self._drain(other)

    def restart(self, node_id: str, store: StateStore | None = None) -> None:
        """Boot a fresh core (new epoch), optionally on a restored store; everyone hears `member_up`."""
        self._boot(node_id, store)
        for other in self.ids:
            if other != node_id and self.up[other] and self._linked(node_id, other):
                self.nodes[other].member_up(node_id, node_id, self.now)
                self.nodes[node_id].member_up(other, other, self.now)
                self._drain(other)
        self._drain(node_id)

    # -- observation --------------------------------------------------------------------------

    def live(self) -> list[str]:
        return [n for n in self.ids if self.up[n]]

    def converged(self, among: Iterable[str] | None = None) -> bool:
        digests = {self.nodes[n].root_digest() for n in (among if among is not None else self.live())}
        return len(digests) <= 1

    def values(self, key: str) -> dict[str, Any]:
        return {n: self.nodes[n].value(key) for n in self.live()}

    def bytes_total(self, types: Iterable[int] | None = None) -> int:
        return sum(v for t, v in self.bytes_by_type.items() if types is None or t in types)

    # -- internals ----------------------------------------------------------------------------

    def _boot(self, node_id: str, store: StateStore | None = None) -> None:
        epoch = self.epochs.get(node_id, -1) + 1
        self.epochs[node_id] = epoch
        store = store or StateStore(node_id, self.limits)
        self.nodes[node_id] = Replicator(
            store, cluster="sim", epoch=epoch, rng=random.Random(f"{self.rng.getrandbits(64)}"), config=self.config
        )
        self.up[node_id] = True
        self._timer_at[node_id] = None

    def _up(self, a: str, b: str) -> None:
        if self.up[a] and self.up[b] and self._linked(a, b):
            self.nodes[a].member_up(b, b, self.now)
            self._drain(a)

    def _linked(self, a: str, b: str) -> bool:
        return self.group[a] == self.group[b] or self.group[a] == 0 and self.group[b] == 0

    def _drain(self, node_id: str) -> None:
        core = self.nodes[node_id]
        for out in core.messages_to_send():
            data = self._packer.pack(out.frame)
            dst = out.peer_id
            if not self.up[node_id] or dst not in self.up or not self._linked(node_id, dst):
                self.frames_dropped += 1  # no connection: nothing goes on the wire
                continue
            kind = out.frame[2]
            self.bytes_by_type[kind] = self.bytes_by_type.get(kind, 0) + len(data)
            self.frames_by_type[kind] = self.frames_by_type.get(kind, 0) + 1
            if self.loss and self.rng.random() < self.loss:
                self.frames_dropped += 1
                continue
            lo, hi = self.latency_ms
            at = max(self.now + self.rng.randint(lo, hi), self._fifo.get((node_id, dst), 0))
            self._fifo[(node_id, dst)] = at
            self._push(at, _DELIVER, (node_id, dst, data))
        while (event := core.next_event()) is not None:
            if isinstance(event, (WriteDone, ReadDone)):
                self.done[(node_id, event.request_id)] = event
        when = core.get_timer()
        if when is not None and self.up[node_id] and self._timer_at.get(node_id) != when:
            when = max(when, self.now)
            self._timer_at[node_id] = when
            self._push(when, _TIMER, node_id)

    def _push(self, at: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))


NODE_ID_CHARS = 20
"""Length of a real node id (transport/identity.py NODE_ID_LENGTH), used for the prune figure."""


# -- the benchmark -----------------------------------------------------------------------------


def _local_updates(clock: Callable[[], float], count: int) -> dict[str, Any]:
    """Local updates/s through the replication core (store + log + bucket bookkeeping), 3 replicas."""
    net = ReplicaNet(3, seed=7)
    net.run(1_000)
    core = net.node(0)
    keys = [f"counter-{i % 1000}" for i in range(count)]
    start = clock()
    for i, key in enumerate(keys):
        core.update(key, "gcounter", "increment", (1,), net.now)
    elapsed = clock() - start
    net._drain(net.ids[0])
    net.run_until(net.now + 60_000, stop=net.converged)
    # Delta bytes: a steady trickle (10 updates per 5 ms batch window), as the delta stream sees it.
    before = net.bytes_by_type.get(64, 0)
    trickle = 2_000
    for i in range(trickle):
        core.update(f"counter-{i % 1000}", "gcounter", "increment", (1,), net.now)
        if i % 10 == 9:
            net._drain(net.ids[0])
            net.run(5)
    net._drain(net.ids[0])
    net.run_until(net.now + 60_000, stop=net.converged)
    delta_bytes = net.bytes_by_type.get(64, 0) - before
    return {
        "updates": count,
        "updates_per_s": round(count / elapsed) if elapsed > 0 else None,
        "delta_bytes_per_update_per_peer": round(delta_bytes / trickle / 2, 1),
        "converged": net.converged(),
    }


def _repair_bytes(keys: int, changed: int) -> dict[str, Any]:
    """Bytes to repair two replicas after a partition, against shipping one replica's full state."""
    config = ReplicationConfig(backlog_deltas_max=1)  # force digest repair rather than log replay
    net = ReplicaNet(2, seed=11, config=config)
    a, b = net.ids
    for i in range(keys):
        net.call(a, lambda c, i=i: c.update(f"key-{i:05d}", "orset", "add", (f"v{i}",), net.now))
    net.run_until(net.now + 60_000, stop=net.converged)
    net.partition([a], [b])
    net.run(100)
    for i in range(changed):
        side = a if i % 2 else b
        net.call(side, lambda c, i=i: c.update(f"key-{(i * 7919) % keys:05d}", "orset", "add", (f"w{i}",), net.now))
    base = dict(net.bytes_by_type)
    net.heal()
    net.run_until(net.now + 60_000, stop=net.converged)
    by_type = {t: v - base.get(t, 0) for t, v in net.bytes_by_type.items() if v - base.get(t, 0)}
    repair = sum(by_type.values())
    store = net.nodes[a].store
    full = sum(len(msgpack.packb([k, to_wire(st)], use_bin_type=True)) for k, st in store.state_for(store.keys()).items())
    return {
        "keys": keys,
        "keys_changed_during_partition": changed,
        "repair_bytes": repair,
        "full_state_bytes": full,
        "ratio": round(repair / full, 3) if full else None,
        "bytes_by_frame_type": {_TYPE_NAMES.get(t, str(t)): v for t, v in sorted(by_type.items())},
        "converged": net.converged(),
    }


def _partition_heal(nodes: int, keys: int, writes: int, partition_ms: int, seed: int, clock: Callable[[], float],
                    rejoin_jitter_ms: int = 1_000) -> dict[str, Any]:
    """Simulated time for `nodes` replicas holding `keys` keys to re-converge after a partition heals.

    Membership is modelled: each node hears `member_up` for each peer across the cut at a uniform random
    time within `rejoin_jitter_ms` after the heal (SWIM probes one member per 1 s period, so re-merged
    peers are not all noticed at once).
    """
    wall = clock()
    net = ReplicaNet(nodes, seed=seed)
    # Pre-load: each key written once by some replica, then delivered to all (as a converged cluster would be).
    writers = net.ids
    for i in range(keys):
        origin = net.nodes[writers[i % nodes]]
        delta = origin.store.update(f"k{i:05d}", "gcounter", "increment", 1)
        for node_id in net.ids:
            if node_id != origin.node_id:
                net.nodes[node_id].store.apply_delta(delta)
    for node_id in net.ids:
        core = net.nodes[node_id]
        core._dirty.update(dict.fromkeys(core.store.keys()))
        # The loading bypassed the protocol: mark every stream as caught up so only new work travels.
        for stream in core._streams.values():
            stream.syncing = False
            stream.acked = stream.sent = core.store.last_seq
        core._rounds.clear()
        core.messages_to_send()
    setup_s = clock() - wall
    net.run(2_000)
    left, right = net.ids[: nodes // 2], net.ids[nodes // 2:]
    net.partition(left, right, detect_ms=5_000)
    start = net.now
    step = partition_ms // max(1, writes)
    for w in range(writes):
        side = left if w % 2 else right
        writer = side[net.rng.randrange(len(side))]
        key = f"k{net.rng.randrange(keys):05d}"
        net.at(start + 1_000 + w * step * 9 // 10, lambda writer=writer, key=key: net.call(
            writer, lambda c: c.update(key, "gcounter", "increment", (1,), net.now)))
    net.run(partition_ms)
    sides_converged = net.converged(left) and net.converged(right)
    before = net.bytes_total()
    heal_at = net.now
    net.heal(jitter_ms=rejoin_jitter_ms)
    wall_heal = clock()
    ok = net.run_until(heal_at + 60_000, stop=net.converged, check_every_ms=10)
    return {
        "nodes": nodes,
        "keys": keys,
        "writes_during_partition": writes,
        "partition_s": partition_ms / 1000,
        "sides_converged_before_heal": sides_converged,
        "converged": ok,
        "reconverge_s": round((net.now - heal_at) / 1000, 3) if ok else None,
        "goal_s": 2.0,
        "membership_rejoin_jitter_s": rejoin_jitter_ms / 1000,
        "bytes_after_heal": net.bytes_total() - before,
        "wall_s_setup": round(setup_s, 1),
        "wall_s_heal": round(clock() - wall_heal, 1),
    }


def _prune_savings(keys: int, seed: int = 5) -> dict[str, Any]:
    """Bytes per key a fold saves: 4 replicas write every key (counters, sets, maps), one is retired,
    the owner folds it; encoded state per key before, right after the fold (markers included) and
    once the markers are collected, plus the bytes the fold itself put on the wire."""
    config = ReplicationConfig(gc_interval_ms=500, digest_interval_ms=500)
    net = ReplicaNet(4, seed=seed, config=config, id_prefix="n" * (NODE_ID_CHARS - 3))
    net.run(300)
    kinds = (("gcounter", "increment", lambda r, i: (1,)), ("pncounter", "decrement", lambda r, i: (2,)),
             ("orset", "add", lambda r, i: (f"{r}-{i}",)),
             ("ormap", "update", lambda r, i: (r, "mvregister", "write", i)))
    for node_id in net.ids:
        for i in range(keys):
            type_name, op, args = kinds[i % len(kinds)]
            net.call(node_id, lambda c, i=i, t=type_name, o=op, a=args, n=node_id: c.update(f"key-{i:05d}", t, o, a(n, i), net.now))
        net.run(50)
    net.run_until(net.now + 60_000, stop=net.converged)
    owner, gone = net.ids[0], net.ids[3]

    def per_key() -> float:
        store = net.nodes[owner].store
        total = 0
        for k, st in store.state_for(store.keys()).items():
            marks = store.markers(k)
            total += len(msgpack.packb([k, to_wire(st), markers_to_wire(marks)] if marks else [k, to_wire(st)], use_bin_type=True))
        return total / max(1, len(store.keys()))

    before = per_key()
    # CPU cost of the fold itself, on a replica of the owner's store (process time, not wall time).
    clone = StateStore(owner)
    src = net.nodes[owner].store
    for k, st in src.state_for(src.keys()).items():
        clone.apply_state(k, st)
    cpu = time.process_time()
    for k in clone.keys_mentioning(gone):
        clone.prune(k, gone)
    fold_cpu_s = time.process_time() - cpu
    net.crash(gone)
    base = net.bytes_total()
    for node_id in net.live():
        net.call(node_id, lambda c: c.retire(gone, net.now))
    folded = net.run_until(net.now + 120_000, stop=lambda: net.converged() and not any(
        net.nodes[n].store.keys_mentioning(gone, 1) for n in net.live()))
    fold_bytes = net.bytes_total() - base
    with_markers = per_key()
    collected = net.run_until(net.now + 120_000, stop=lambda: all(net.nodes[n].store.marker_count() == 0 for n in net.live()))
    after = per_key()
    return {
        "keys": keys,
        "replicas_before": 4,
        "replica_id_chars": len(gone),
        "bytes_per_key_before": round(before, 1),
        "bytes_per_key_with_markers": round(with_markers, 1),
        "bytes_per_key_after": round(after, 1),
        "bytes_saved_per_key": round(before - after, 1),
        "fold_wire_bytes_per_key": round(fold_bytes / max(1, keys), 1),
        "fold_cpu_us_per_key": round(fold_cpu_s / max(1, keys) * 1e6, 1),
        "folded": folded,
        "markers_collected": collected,
    }


def _node_state_updates(count: int, clock: Callable[[], float]) -> dict[str, Any]:
    """Updates/s through `node.state` on a one-node runtime (memory transport): each call commits to SQLite."""
    import asyncio
    import tempfile

    from agentnode.config import NodeConfig
    from agentnode.runtime import Node
    from agentnode.transport.memory import MemoryHub, MemoryTransport

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="agentnode-bench-state-") as tmp:
            config = NodeConfig.build(data_dir=tmp, listen="10.9.9.9:7946", cluster="bench", mdns=False, seed=1)
            node = Node(config, transport=MemoryTransport(MemoryHub(), "bench01", config.listen), control=False)
            async with node:
                start = clock()
                for i in range(count):
                    await node.state.increment(f"counter-{i % 1000}")
                elapsed = clock() - start
                db_bytes = node.state.stats()["db_bytes"]
        return {"updates": count, "updates_per_s": round(count / elapsed) if elapsed > 0 else None, "db_bytes": db_bytes}

    return asyncio.run(run())


def run_state_benchmark(*, updates: int = 20_000, nodes: int = 50, keys: int = 10_000, writes: int = 1_000,
                        partition_ms: int = 60_000, seed: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """All figures of `agentnode bench state` as a JSON-ready dict."""
    return {
        "local": _local_updates(clock, updates),
        "node_state": _node_state_updates(min(updates, 5_000), clock),
        "repair": _repair_bytes(min(keys, 10_000), 200),
        "partition_heal": _partition_heal(nodes, keys, writes, partition_ms, seed, clock),
        "prune": _prune_savings(min(keys, 1_000)),
    }

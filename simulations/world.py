"""The simulated world: N real NodeCores, a network model, faults, invariants, one virtual clock.

The world is the fourth driver of a NodeCore, next to the asyncio runtime and the in-memory
tests: it feeds frames and timers in, drains `messages_to_send`/`next_event`/`get_timer`, and
routes frames through `SimNetwork`. Nothing here re-implements a protocol. A node is "a core
plus its timer", so later cores (registry, CRDT state, consensus stand-in) plug in through the
same `CoreFactory`.
"""

from __future__ import annotations

import gc
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import msgpack

from agentnode.simulations.faults import (
    DISRUPTIVE, Clog, Crash, Drift, Duplicate, Fault, Heal, Leave, Loss, NodeLoss, Partition, Pause,
    Reorder, Restart, Start, Unclog,
)
from agentnode.simulations.network import LAN, LatencyProfile, SimNetwork
from agentnode.simulations.scheduler import Scheduler
from agentnode.simulations.seed import fork
from agentnode.simulations.trace import TraceDigest
from agentnode.simulations.views import ALIVE, DEAD, LEFT, STATE_CODES, SUSPECT, MembershipViews

__sans_io__ = True

__all__ = [
    "CoreFactory", "CoreTimerLoop", "SimCore", "SimNode", "Violation", "Watch", "World", "WorldConfig",
    "node_address", "node_name",
]

DELIVER, TIMER, UNREACHABLE, FAULT, CHECK, SAMPLE, RESUME, STOP, CALL = range(9)

TIMER_FIRES_PER_INSTANT_MAX = 1_000
"""A core whose timer is still due after this many `handle_timer` calls at one instant is looping."""
OUTPUTS_PER_DRAIN_MAX = 1_000_000
"""Bound on frames plus events drained from one core after one input."""
PROGRESS_EVERY_EVENTS = 8_192
"""Events between progress callbacks, and between freezes of the garbage collector's heap (`run`)."""


class SimCore(Protocol):
    """The NodeCore surface the world drives (node/core.py)."""

    def start(self, now_ms: int) -> None: ...
    def add_seeds(self, addresses: Sequence[str], now_ms: int) -> None: ...
    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None: ...
    def peer_unreachable(self, address: str, peer_id: str | None, now_ms: int) -> None: ...
    def handle_timer(self, now_ms: int) -> None: ...
    def get_timer(self) -> int | None: ...
    def messages_to_send(self) -> list[Any]: ...
    def next_event(self) -> Any | None: ...
    def leave(self, now_ms: int) -> None: ...
    def members(self) -> list[Any]: ...


class CoreFactory(Protocol):
    """Builds the core of node `node_id`; called on first start and on every restart."""

    def __call__(self, node_id: str, address: str, *, rng: random.Random, incarnation: int) -> SimCore: ...


class CoreTimerLoop(RuntimeError):
    """A core keeps asking to be woken at the current instant: a bug in the core."""


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Everything about the world that is not a fault; with the seed it decides the whole run."""

    nodes: int
    seed: int
    network: LatencyProfile = LAN
    fifo: bool = True
    """Frames on one directed link arrive in order, like one TCP connection (transport/base.py)."""
    bootstrap_count: int = 3
    """The first k nodes' addresses form every node's bootstrap list."""
    check_interval_ms: int = 100
    """Invariants run this often (and the convergence time is measured at this resolution)."""
    sample_interval_ms: int = 1_000
    """Time series (members seen alive, bytes per second) are sampled this often."""
    dial_timeout_ms: int = 3_000
    """A frame to an address where no host exists is reported unreachable after this long."""
    leave_grace_ms: int = 1_000
    """After `leave()`, the process keeps running this long to send its goodbyes."""
    pause_inbox_max: int = 10_000
    """Frames queued for a paused node (its socket buffers); beyond this they are dropped."""
    peer_cache_max: int = 16
    """A restart with its data directory re-seeds from this many remembered peers."""
    clock_origin_spread_ms: int = 1_000_000_000
    """Each node's monotonic clock starts at a random origin below this (like loop.time()); 0 aligns them."""
    codec: str = "msgpack"
    """"msgpack": frames cross the network as msgpack bytes, as in production (tuples become lists);
    "none": objects are handed over as-is (faster, less faithful)."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a world needs at least 1 node")
        if self.codec not in ("msgpack", "none"):
            raise ValueError(f"codec {self.codec!r} is not 'msgpack' or 'none'")
        for name in ("check_interval_ms", "sample_interval_ms", "dial_timeout_ms", "leave_grace_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant failed: the run stops here."""

    invariant: str
    time_ms: int
    message: str


@dataclass(slots=True)
class Watch:
    """Records when each observer first reaches one of `states` for `subject` after `since_ms`."""

    label: str
    subject: int
    states: frozenset[int]
    since_ms: int
    first_ms: dict[int, int] = field(default_factory=dict)
    """observer -> simulated time it reached the state."""


def node_name(index: int) -> str:
    """The node id of node `index` (real ids are key digests; the simulator only needs them distinct)."""
    return f"n{index:05d}"


def node_address(index: int) -> str:
    """Where node `index` listens."""
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}:7946"


class SimNode:
    """One simulated machine: the core that runs on it (if any), its clock and its timer."""

    __slots__ = (
        "index", "node_id", "address", "core", "running", "paused", "left", "epoch", "down_kind",
        "timer_at", "timer_gen", "fires_at_instant", "fire_instant", "inbox", "incarnation_saved",
        "peer_cache", "clock_g0", "clock_l0", "clock_ppm", "started_ms", "up_since_ms",
        "msgs_sent", "bytes_sent", "msgs_received", "bytes_received",
    )

    def __init__(self, index: int, clock_origin_ms: int) -> None:
        self.index = index
        self.node_id = node_name(index)
        self.address = node_address(index)
        self.core: SimCore | None = None
        self.running = False
        self.paused = False
        self.left = False
        self.epoch = 0
        self.down_kind = "host"
        self.timer_at: int | None = None
        self.timer_gen = 0
        self.fires_at_instant = 0
        self.fire_instant = -1
        self.inbox: deque[tuple[int, Any, Any]] = deque()
        self.incarnation_saved = 0
        self.peer_cache: list[str] = []
        self.clock_g0 = 0
        self.clock_l0 = clock_origin_ms
        self.clock_ppm = 0
        self.started_ms: int | None = None
        self.up_since_ms = 0
        self.msgs_sent = 0
        self.bytes_sent = 0
        self.msgs_received = 0
        self.bytes_received = 0

    def local_ms(self, global_ms: int) -> int:
        """This node's clock reading at simulated time `global_ms`."""
        d = global_ms - self.clock_g0
        if self.clock_ppm:
            return self.clock_l0 + d + (d * self.clock_ppm) // 1_000_000
        return self.clock_l0 + d

    def global_ms(self, local_ms: int) -> int:
        """The first simulated instant at which this node's clock reads at least `local_ms`."""
        d = local_ms - self.clock_l0
        if not self.clock_ppm:
            return self.clock_g0 + d
        g = self.clock_g0 + -((-d * 1_000_000) // (1_000_000 + self.clock_ppm))
        while self.local_ms(g) < local_ms:
            g += 1
        while self.local_ms(g - 1) >= local_ms:
            g -= 1
        return g

    @property
    def healthy(self) -> bool:
        return self.running and not self.paused

    @property
    def up_whole_time(self) -> bool:
        """Running and never crashed, stopped or paused since its first start. Only such a node can be
        falsely accused: suspecting or killing a node that restarted (e.g. without its data, at the same
        incarnation, while it was suspected) is about its previous life, and correct."""
        return self.running and not self.paused and self.up_since_ms == self.started_ms


class World:
    """N nodes, one scheduler, one network; `run(until_ms)` advances it, invariants police it."""

    def __init__(self, config: WorldConfig, core_factory: CoreFactory, *, plan: Sequence[tuple[int, Fault]] = (),
                 invariants: Sequence[Any] = (), replay_command: str = "") -> None:
        self.config = config
        self.core_factory = core_factory
        self.invariants = list(invariants)
        self.replay_command = replay_command
        self.scheduler = Scheduler()
        self.network = SimNetwork(config.network, config.nodes, fork(config.seed, "network"), fifo=config.fifo)
        self.trace = TraceDigest()
        self.views = MembershipViews(config.nodes)
        clock_rng = fork(config.seed, "clock")
        spread = config.clock_origin_spread_ms
        self.nodes = [SimNode(i, clock_rng.randrange(spread) if spread else 0) for i in range(config.nodes)]
        self._faults_rng = fork(config.seed, "faults")
        self._by_address = {node.address: node.index for node in self.nodes}
        self._by_id = {node.node_id: node.index for node in self.nodes}
        self.bootstrap = [self.nodes[i].address for i in range(min(config.bootstrap_count, config.nodes))]
        self.violation: Violation | None = None
        self.paused_count = 0
        self.running_count = 0
        self.quiet_since_ms = 0
        self.last_fault_ms = 0
        self.converged_at_ms: int | None = None
        """First check at which membership had converged since `quiet_since_ms` (None: not yet)."""
        self.convergence_log: list[tuple[int, int, int]] = []
        """(quiet since, running nodes, converged at) for every quiet period that converged, in order."""
        self.last_heal_ms = 0
        """Last time a partition or clog was lifted."""
        self.cuts: list[tuple[int, int | None, tuple[int, ...], frozenset[tuple[int, int]]]] = []
        """Every partition of the run: (from, until (None while in force), group of each node, blocked
        group pairs). A suspicion that began while its pair was cut is explained, not false."""
        self.node_ms = 0
        """Integral of running nodes over simulated time (node-milliseconds), for per-node rates."""
        self._node_ms_at = 0
        self.watches: list[Watch] = []
        self._watch_by_subject: dict[int, list[Watch]] = {}
        self.counters: dict[str, int] = {
            "frames_sent": 0, "bytes_sent": 0, "frames_delivered": 0, "frames_lost": 0,
            "frames_reset": 0, "frames_to_down_node": 0, "pause_inbox_drops": 0, "unreachable_reports": 0,
            "false_suspicions": 0, "false_deaths": 0, "suspicions": 0, "deaths": 0, "refutations_seen": 0,
            "events": 0, "timer_fires": 0,
        }
        self.samples: list[dict[str, Any]] = []
        self._sample_prev_bytes = [0] * config.nodes
        self._sample_prev_msgs = [0] * config.nodes
        self._codec = config.codec == "msgpack"
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self.event_hooks: list[Callable[[SimNode, Any, int], None]] = []
        """Called with (node, event, now_ms) for every event any core emits; later subsystems hook in here."""
        self.fault_hooks: list[Callable[[Any, int], None]] = []
        """Called with (fault, now_ms) just before a fault applies (services wipe a data-less restart's disk)."""
        for at, fault in sorted(plan, key=lambda entry: entry[0]):
            self.schedule_fault(at, fault)
        self.scheduler.push(0, CHECK)
        self.scheduler.push(0, SAMPLE)

    # ---- public API ------------------------------------------------------------------------

    def schedule_fault(self, at_ms: int, fault: Fault) -> None:
        """Apply `fault` at simulated time `at_ms`."""
        self.scheduler.push(at_ms, FAULT, fault)

    def call_at(self, at_ms: int, action: Callable[[int], None]) -> None:
        """Run `action(now_ms)` at simulated time `at_ms` (workloads: API calls into cores)."""
        self.scheduler.push(at_ms, CALL, action)

    def poke(self, node: SimNode, now_ms: int) -> None:
        """Drain a running core after an input from outside the world (an API call): send, emit, re-arm."""
        if node.running and node.core is not None:
            self._drain(node, now_ms)

    def watch(self, label: str, subject: int, states: Sequence[str], since_ms: int) -> Watch:
        """Start recording when each observer first sees `subject` in one of `states`."""
        w = Watch(label, subject, frozenset(STATE_CODES[s] for s in states), since_ms)
        self.watches.append(w)
        self._watch_by_subject.setdefault(subject, []).append(w)
        return w

    @property
    def now_ms(self) -> int:
        return self.scheduler.now_ms

    @property
    def quiet(self) -> bool:
        """No partition, clog or pause in force: membership should converge."""
        return not self.network.partitioned and not self.paused_count and not self.network.egress_bytes_per_ms \
            and not self.network.ingress_bytes_per_ms

    def converged(self) -> bool:
        """Every running node holds every other running node as a member (alive, or suspect: SWIM
        keeps suspects in the group), and nobody holds a stopped node as alive or suspect.

        Suspicion is a transient health flag under loss; `NoLingeringFalseDeath` bounds how long it
        may last. Requiring "all alive at one instant" would never hold at 1000 nodes and 10% loss.
        """
        alive = self.views.alive_seen_by
        suspect = self.views.suspect_seen_by
        want = self.running_count - 1
        for node in self.nodes:
            i = node.index
            if node.running:
                if alive[i] + suspect[i] != want:
                    return False
            elif alive[i] or suspect[i]:
                return False
        return True

    def run(self, until_ms: int, progress: Callable[[int], None] | None = None) -> Violation | None:
        """Advance the world to `until_ms` (inclusive) or until an invariant fails."""
        # Cyclic GC: every full collection walks every reference the cores hold, 10^8 member-table
        # entries at 10,000 nodes, and allocation-heavy joins trigger one every few seconds. Every
        # PROGRESS_EVERY_EVENTS events all tracked objects are frozen (moved out of the collector's
        # generations; refcounting still frees them) and given back when `run` returns: cyclic
        # garbage made during a run (a crashed core) waits for the end of `run`, never past it.
        # No effect on the run itself: the digest is the same (decision 0059).
        frozen_before = gc.get_freeze_count()
        try:
            return self._run(until_ms, progress)
        finally:
            if not frozen_before:
                gc.unfreeze()

    def _run(self, until_ms: int, progress: Callable[[int], None] | None) -> Violation | None:
        sched = self.scheduler
        heap = sched.heap
        nodes = self.nodes
        countdown = PROGRESS_EVERY_EVENTS
        while heap and heap[0][0] <= until_ms and self.violation is None:
            now, _, kind, a, b = sched.pop()
            if kind == DELIVER:
                self._deliver(nodes[a], b, now)
            elif kind == TIMER:
                node = nodes[a]
                if node.timer_gen == b and node.running:
                    node.timer_at = None
                    if not node.paused:
                        self._fire(node, now)
            elif kind == UNREACHABLE:
                self._unreachable(nodes[a], b, now)
            elif kind == FAULT:
                self._apply(a, now)
            elif kind == CHECK:
                self._check(now)
                sched.push(now + self.config.check_interval_ms, CHECK)
            elif kind == SAMPLE:
                self._sample(now)
                sched.push(now + self.config.sample_interval_ms, SAMPLE)
            elif kind == RESUME:
                self._resume(nodes[a], b, now)
            elif kind == STOP:
                self._stop(nodes[a], b, now)
            elif kind == CALL:
                a(now)
            countdown -= 1
            if countdown == 0:
                countdown = PROGRESS_EVERY_EVENTS
                gc.freeze()
                if progress is not None:
                    progress(now)
        if self.violation is None:
            sched.now_ms = max(sched.now_ms, until_ms)
        self._account(sched.now_ms)
        if progress is not None:
            progress(sched.now_ms)
        return self.violation

    def finish(self) -> Violation | None:
        """Final checks at the end of a run: invariants once more, then events against `members()`."""
        if self.violation is None:
            self._check(self.now_ms, final=True)
        return self.violation

    def view_mismatches(self, limit: int = 20) -> list[str]:
        """Where a core's `members()` disagrees with the picture built from its events."""
        found: list[str] = []
        for node in self.nodes:
            if not node.running or node.core is None:
                continue
            from_members: dict[int, int] = {}
            for member in node.core.members():
                idx = self._by_id.get(member.node_id)
                if idx is not None and idx != node.index:
                    from_members[idx] = STATE_CODES.get(member.state, 0)
            from_events = {i: code for i, code in enumerate(self.views.views[node.index]) if code}
            for subject in sorted(set(from_members) | set(from_events)):
                a, b = from_members.get(subject, 0), from_events.get(subject, 0)
                if a != b:
                    found.append(f"{node.node_id} sees {node_name(subject)}: members() says {a}, events say {b}")
                    if len(found) >= limit:
                        return found
        return found

    # ---- inputs into cores ---------------------------------------------------------------

    def _deliver(self, node: SimNode, payload: tuple[int, Any, int], now: int) -> None:
        src, data, epoch = payload
        if not node.running:
            self.counters["frames_to_down_node"] += 1
            if node.down_kind == "process":
                self._report_unreachable(self.nodes[src], node, now + self.network.latency_ms(node.index, src))
            return
        if node.epoch != epoch:
            self.counters["frames_reset"] += 1
            return
        if node.paused:
            if len(node.inbox) >= self.config.pause_inbox_max:
                self.counters["pause_inbox_drops"] += 1
            else:
                node.inbox.append((DELIVER, payload, None))
            return
        self.counters["frames_delivered"] += 1
        node.msgs_received += 1
        sender = self.nodes[src].node_id
        if self._codec:
            node.bytes_received += len(data)
            frame = msgpack.unpackb(data, raw=False, strict_map_key=False)  # as transport/framing.py
            self.trace.record(b"D%d %d %d " % (now, src, node.index) + data)
        else:
            frame = data
            self.trace.record(b"D%d %d %d" % (now, src, node.index))
        node.core.receive(sender, frame, node.local_ms(now))  # type: ignore[union-attr]
        self._drain(node, now)

    def _fire(self, node: SimNode, now: int) -> None:
        if node.fire_instant == now:
            node.fires_at_instant += 1
            if node.fires_at_instant > TIMER_FIRES_PER_INSTANT_MAX:
                raise CoreTimerLoop(
                    f"{node.node_id}: handle_timer called {TIMER_FIRES_PER_INSTANT_MAX} times at {now} ms "
                    "and get_timer() still says it is due; the core must move its deadline forward"
                )
        else:
            node.fire_instant = now
            node.fires_at_instant = 1
        self.counters["timer_fires"] += 1
        self.trace.record(b"T%d %d" % (now, node.index))
        node.core.handle_timer(node.local_ms(now))  # type: ignore[union-attr]
        self._drain(node, now)

    def _unreachable(self, node: SimNode, payload: tuple[str, str | None, int], now: int) -> None:
        address, peer_id, epoch = payload
        if not node.running or node.epoch != epoch:
            return
        if node.paused:
            node.inbox.append((UNREACHABLE, payload, None))
            return
        self.counters["unreachable_reports"] += 1
        self.trace.record(b"U%d %d " % (now, node.index) + address.encode())
        node.core.peer_unreachable(address, peer_id, node.local_ms(now))  # type: ignore[union-attr]
        self._drain(node, now)

    # ---- outputs from cores --------------------------------------------------------------

    def _drain(self, node: SimNode, now: int) -> None:
        core = node.core
        assert core is not None
        outgoing = core.messages_to_send()
        budget = OUTPUTS_PER_DRAIN_MAX - len(outgoing)
        for out in outgoing:
            self._send(node, out, now)
        event = core.next_event()
        if event is not None:
            lines: list[bytes] = []
            while event is not None:
                lines.append(self._on_event(node, event, now))
                budget -= 1
                if budget <= 0:
                    raise RuntimeError(f"{node.node_id} emitted more than {OUTPUTS_PER_DRAIN_MAX} events after one input")
                event = core.next_event()
            # One trace record per drain (a join emits N events at once).
            self.trace.record(b"E%d %d\n" % (now, node.index) + b"\n".join(lines))
        if node.running:
            self._arm(node, core.get_timer(), now)

    def _send(self, node: SimNode, out: Any, now: int) -> None:
        address = out.address
        dst = self._by_address.get(address)
        if self._codec:
            try:
                data = self._packb(out.frame)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"{node.node_id} sent a frame msgpack cannot encode ({exc}): {out.frame!r:.300}") from exc
            size = len(data)
        else:
            data = out.frame
            size = 0
        node.msgs_sent += 1
        node.bytes_sent += size
        counters = self.counters
        counters["frames_sent"] += 1
        counters["bytes_sent"] += size
        if dst is None:
            self._report_unreachable(node, None, now + self.config.dial_timeout_ms, address=address, peer_id=out.peer_id)
            return
        target = self.nodes[dst]
        if out.peer_id is not None and out.peer_id != target.node_id:
            self._report_unreachable(node, target, now + self.network.rtt_ms(node.index, dst), peer_id=out.peer_id)
            return
        arrival = self.network.route(node.index, dst, size, now)
        if arrival < 0:
            counters["frames_lost"] += 1
            return
        payload = (node.index, data, target.epoch)
        self.scheduler.push(arrival, DELIVER, dst, payload)
        if self.network.duplicate_probability:
            again = self.network.duplicate_arrival(arrival)
            if again >= 0:
                self.scheduler.push(again, DELIVER, dst, payload)

    def _report_unreachable(self, node: SimNode, target: SimNode | None, at_ms: int, *, address: str | None = None,
                            peer_id: str | None = None) -> None:
        if target is not None:
            address = target.address
            if peer_id is None:
                peer_id = target.node_id
        self.scheduler.push(at_ms, UNREACHABLE, node.index, (address, peer_id, node.epoch))

    def _arm(self, node: SimNode, local_due: int | None, now: int) -> None:
        if local_due is None:
            if node.timer_at is not None:
                node.timer_at = None
                node.timer_gen += 1
            return
        due = node.global_ms(local_due)
        if due < now:
            due = now
        if due == node.timer_at:
            return
        node.timer_gen += 1
        node.timer_at = due
        self.scheduler.push(due, TIMER, node.index, node.timer_gen)

    def _on_event(self, node: SimNode, event: Any, now: int) -> bytes:
        """Account for one event; returns its trace line (`_drain` records one batch per drain)."""
        self.counters["events"] += 1
        name = type(event).__name__
        state = _EVENT_STATES.get(name)
        if state is not None:
            # Membership events (most of them, N^2 joins): name, subject and incarnation; repr() of the
            # dataclass cost more than the core's work to emit it. Their other fields follow from the frames.
            line = f"{name} {_subject_id(event)} {getattr(event, 'incarnation', None)}".encode()
        else:
            line = repr(event).encode()
        if name == "IncarnationChanged":
            node.incarnation_saved = int(event.incarnation)
        else:
            if state is not None:
                subject = self._by_id.get(_subject_id(event))
                if subject is not None and subject != node.index:
                    self._observe(node.index, subject, state, now)
        for hook in self.event_hooks:
            hook(node, event, now)
        return line

    def _observe(self, observer: int, subject: int, state: int, now: int) -> None:
        old = self.views.set_state(observer, subject, state, now)
        if old == state:
            return
        target = self.nodes[subject]
        if state in (SUSPECT, DEAD) and old in (0, ALIVE, SUSPECT):
            key = "suspicions" if state == SUSPECT else "deaths"
            self.counters[key] += 1
            if target.up_whole_time and not self._cut_between(observer, subject, now):
                self.counters["false_" + key] += 1
        elif state == ALIVE and old in (SUSPECT, DEAD):
            self.counters["refutations_seen"] += 1
        watches = self._watch_by_subject.get(subject)
        if watches:
            for w in watches:
                if state in w.states and now >= w.since_ms and observer not in w.first_ms:
                    w.first_ms[observer] = now

    def _end_cut(self, now: int) -> None:
        if self.cuts and self.cuts[-1][1] is None:
            start, _, group_of, blocked = self.cuts[-1]
            self.cuts[-1] = (start, now, group_of, blocked)

    def _cut_between(self, a: int, b: int, now: int) -> bool:
        """Was either direction between `a` and `b` cut at any time since `a` stopped seeing `b` alive?

        Such a verdict rests on probes a partition really dropped: a suspicion that times out just
        after the heal (before the suspect can hear of it and refute) is SWIM working as specified,
        not a false death. A verdict on a pair never cut in that time stays false (decision 0045)."""
        since = self.views.not_alive_since.get(a * self.views.capacity + b, now)
        for start, end, group_of, blocked in reversed(self.cuts):
            if end is not None and end < since:
                break
            ga, gb = group_of[a], group_of[b]
            if (ga, gb) in blocked or (gb, ga) in blocked:
                return True
        return False

    # ---- faults --------------------------------------------------------------------------

    def _apply(self, fault: Fault, now: int) -> None:
        self.trace.record(b"F%d " % now + repr(fault).encode())
        for hook in self.fault_hooks:
            hook(fault, now)
        net = self.network
        if isinstance(fault, DISRUPTIVE):
            self.last_fault_ms = now
            self._disrupted(now)
        if isinstance(fault, Start):
            node = self.nodes[fault.node]
            if not node.running:
                self._boot(node, now, incarnation=0, seeds=self._seeds_for(node))
        elif isinstance(fault, Crash):
            self._halt(self.nodes[fault.node], now, fault.kind)
        elif isinstance(fault, Restart):
            node = self.nodes[fault.node]
            if not node.running:
                seeds = self._seeds_for(node)
                incarnation = 0
                if fault.keep_data:
                    incarnation = node.incarnation_saved
                    seeds += [a for a in node.peer_cache if a not in seeds]
                else:
                    node.incarnation_saved = 0
                    node.peer_cache = []
                self._boot(node, now, incarnation=incarnation, seeds=seeds)
        elif isinstance(fault, Leave):
            node = self.nodes[fault.node]
            if node.running and not node.left:
                node.left = True
                node.core.leave(node.local_ms(now))  # type: ignore[union-attr]
                self._drain(node, now)
                self.scheduler.push(now + self.config.leave_grace_ms, STOP, node.index, node.epoch)
        elif isinstance(fault, Pause):
            node = self.nodes[fault.node]
            if node.running and not node.paused:
                node.paused = True
                self.paused_count += 1
                self.scheduler.push(now + fault.duration_ms, RESUME, node.index, node.epoch)
        elif isinstance(fault, Partition):
            self._end_cut(now)
            net.partition([list(g) for g in fault.groups], one_way=fault.one_way)
            self.cuts.append((now, None, *net.cut()))
        elif isinstance(fault, Heal):
            self._end_cut(now)
            net.heal()
            self.last_heal_ms = now
        elif isinstance(fault, Loss):
            net.set_loss(fault.probability)
        elif isinstance(fault, NodeLoss):
            net.set_node_loss(fault.node, inbound=fault.inbound, outbound=fault.outbound)
        elif isinstance(fault, Duplicate):
            net.set_duplicate(fault.probability)
        elif isinstance(fault, Reorder):
            net.set_reorder(fault.probability)
        elif isinstance(fault, Clog):
            net.clog(fault.node, egress_bytes_per_s=fault.egress_bytes_per_s, ingress_bytes_per_s=fault.ingress_bytes_per_s)
        elif isinstance(fault, Unclog):
            net.unclog(fault.node)
            self.last_heal_ms = now
        elif isinstance(fault, Drift):
            node = self.nodes[fault.node]
            local = node.local_ms(now) + fault.step_ms
            node.clock_g0, node.clock_l0, node.clock_ppm = now, local, fault.ppm
            if node.running and node.core is not None and not node.paused:
                self._arm(node, node.core.get_timer(), now)
        else:
            raise TypeError(f"unknown fault {fault!r}")

    def _seeds_for(self, node: SimNode) -> list[str]:
        return [a for a in self.bootstrap if a != node.address]

    def _boot(self, node: SimNode, now: int, *, incarnation: int, seeds: list[str]) -> None:
        node.epoch += 1
        node.running, node.paused, node.left = True, False, False
        node.timer_at = None
        node.timer_gen += 1
        node.inbox.clear()
        node.incarnation_saved = incarnation
        node.up_since_ms = now
        if node.started_ms is None:
            node.started_ms = now
        self._account(now)
        self.running_count += 1
        rng = fork(self.config.seed, "node", node.index, "core", node.epoch)
        node.core = self.core_factory(node.node_id, node.address, rng=rng, incarnation=incarnation)
        local = node.local_ms(now)
        node.core.start(local)
        if seeds:
            node.core.add_seeds(seeds, local)
        self._drain(node, now)

    def _halt(self, node: SimNode, now: int, kind: str) -> None:
        if not node.running:
            return
        if node.core is not None:
            cache = [m.address for m in node.core.members() if getattr(m, "state", "") == "alive" and m.address != node.address]
            if cache:
                cache.sort()
                picks = self._faults_rng.sample(cache, min(self.config.peer_cache_max, len(cache)))
                node.peer_cache = sorted(picks)
        if node.paused:
            self.paused_count -= 1
        node.running, node.paused = False, False
        node.down_kind = kind
        node.epoch += 1
        node.core = None
        node.timer_at = None
        node.timer_gen += 1
        node.inbox.clear()
        self._account(now)
        self.running_count -= 1
        self.views.forget_observer(node.index)
        self.network.forget_node(node.index)

    def _stop(self, node: SimNode, epoch: int, now: int) -> None:
        if node.running and node.epoch == epoch and node.left:
            self.trace.record(b"S%d %d" % (now, node.index))
            self._halt(node, now, "process")
            node.left = True
            self._disrupted(now)

    def _resume(self, node: SimNode, epoch: int, now: int) -> None:
        if not node.running or node.epoch != epoch or not node.paused:
            return
        self.trace.record(b"R%d %d" % (now, node.index))
        node.paused = False
        node.up_since_ms = now
        self.paused_count -= 1
        self._disrupted(now)
        while node.inbox and node.running and not node.paused:
            kind, payload, _ = node.inbox.popleft()
            if kind == DELIVER:
                self._deliver(node, payload, now)
            else:
                self._unreachable(node, payload, now)
        if node.running and node.core is not None and not node.paused:
            self._arm(node, node.core.get_timer(), now)

    def _account(self, now: int) -> None:
        self.node_ms += self.running_count * (now - self._node_ms_at)
        self._node_ms_at = now

    def _disrupted(self, now: int) -> None:
        self.quiet_since_ms = now
        self.converged_at_ms = None

    # ---- checks and samples --------------------------------------------------------------

    def _check(self, now: int, *, final: bool = False) -> None:
        if self.converged_at_ms is None and self.quiet and self.converged():
            self.converged_at_ms = now
            self.convergence_log.append((self.quiet_since_ms, self.running_count, now))
        for invariant in self.invariants:
            message = invariant.check(self, now, final)
            if message:
                self.violation = Violation(getattr(invariant, "name", type(invariant).__name__), now, message)
                self.trace.record(b"V%d " % now + message.encode())
                return

    def _sample(self, now: int) -> None:
        alive_in_view = self.views.alive_in_view
        seen = sorted(alive_in_view[n.index] for n in self.nodes if n.running)
        per_node_bytes = []
        per_node_msgs = []
        interval_s = self.config.sample_interval_ms / 1000.0
        for n in self.nodes:
            i = n.index
            if n.running:
                per_node_bytes.append((n.bytes_sent - self._sample_prev_bytes[i]) / interval_s)
                per_node_msgs.append((n.msgs_sent - self._sample_prev_msgs[i]) / interval_s)
            self._sample_prev_bytes[i] = n.bytes_sent
            self._sample_prev_msgs[i] = n.msgs_sent
        per_node_bytes.sort()
        per_node_msgs.sort()
        self.samples.append({
            "t_ms": now,
            "running": self.running_count,
            "seen_alive_min": seen[0] if seen else 0,
            "seen_alive_p50": seen[len(seen) // 2] if seen else 0,
            "seen_alive_max": seen[-1] if seen else 0,
            "bytes_per_s_min": per_node_bytes[0] if per_node_bytes else 0.0,
            "bytes_per_s_p50": per_node_bytes[len(per_node_bytes) // 2] if per_node_bytes else 0.0,
            "bytes_per_s_max": per_node_bytes[-1] if per_node_bytes else 0.0,
            "msgs_per_s_p50": per_node_msgs[len(per_node_msgs) // 2] if per_node_msgs else 0.0,
        })


_EVENT_STATES: Mapping[str, int] = {
    "MemberJoined": ALIVE,
    "MemberAlive": ALIVE,
    "MemberSuspected": SUSPECT,
    "MemberFailed": DEAD,
    "MemberLeft": LEFT,
}
"""node/events.py event class -> the state it puts its subject in (MemberUpdated changes no state)."""


def _subject_id(event: Any) -> str | None:
    subject = getattr(event, "node_id", None)
    if subject is None:
        member = getattr(event, "member", None)
        subject = getattr(member, "node_id", None)
    return subject

"""The replicated agent registry: which agents live where, their capabilities, card fields, health and load.

No central server. Each node owns the records of the agents it hosts and publishes them as one
*record set* stamped (epoch, version): epoch is the node's boot epoch (greater after each restart),
version counts publishes within an epoch. Every node keeps the newest set per owner; a newer stamp
replaces the whole set, so there are no per-record tombstones and deregistration is just a smaller set.

Spreading (in the spirit of Akka's Receptionist over Distributed Data, with Serf-style push + push-pull):
- a changed set is pushed to `push_fanout` random members after a short coalescing delay; a node that
  learns a newer set relays it once to `push_fanout` others (infect-and-die, each version once);
- a new member gets our own set directly when membership reports it (joins converge without waiting);
- every `anti_entropy_interval_ms` a digest of all stamps goes to one random member, which pushes
  what the sender lacks and asks back for what it lacks (push-pull repair).

Membership decides visibility: records of a node that is not alive/suspect are kept aside ("limbo",
bounded) and hidden from lookups, so agents on a dead node disappear as soon as the node is declared
dead and reappear at once if it refutes. Agent health (`report_health`, heartbeats with a timeout) is
a record field, separate from the node's suspect flag, and lookups report both.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

from agentnode.agent_messages import (
    MAX_AGENTS_PER_NODE,
    MAX_LOAD,
    STATUS_HEALTHY,
    STATUS_UNHEALTHY,
    AgentRecord,
    AgentSkill,
    FrameError,
    Outgoing,
    RegistryDigest,
    RegistrySet,
    _record_wire,
    decode,
    decode_record,
    encode,
)
from agentnode.names import CONFIRMED, LOST, NAME_MARKER_KEY, parse_marker
from agentnode.routing import LivePeers

__sans_io__ = True

__all__ = [
    "AgentEntry",
    "AgentHealthChanged",
    "AgentIdTaken",
    "AgentRegistered",
    "AgentRemoved",
    "AgentUpdated",
    "Registry",
    "RegistryConfig",
    "RegistryEvent",
    "RegistryFull",
]

MAX_LIMBO_OWNERS = 4096
"""Record sets of non-live owners kept aside for a quick return; the oldest are forgotten beyond this."""
MAX_EVENTS = 100_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted."""
MAX_OUTBOX = 100_000
"""Frames waiting for `messages_to_send`; beyond this new frames are dropped and counted."""


class AgentIdTaken(ValueError):
    """`register` with an agent id another live node already hosts."""


class RegistryFull(ValueError):
    """`register` beyond MAX_AGENTS_PER_NODE agents on this node."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Registry knobs; integer milliseconds."""

    push_fanout: int = 4
    """Members a new set version is pushed/relayed to (infect-and-die misses ~e^-fanout; anti-entropy repairs)."""
    anti_entropy_interval_ms: int = 1_000
    """Digest exchange with one random member (memberlist PushPullInterval is 30 s; our digests are small)."""
    publish_delay_ms: int = 50
    """Local changes within this window go out as one version (coalesces load updates)."""
    health_timeout_ms: int = 0
    """Default heartbeat timeout per agent; 0 disables heartbeat checks (per-agent override at register)."""

    def __post_init__(self) -> None:
        if self.push_fanout < 1:
            raise ValueError("push_fanout must be at least 1")
        if self.anti_entropy_interval_ms < 1 or self.publish_delay_ms < 0 or self.health_timeout_ms < 0:
            raise ValueError("intervals must be positive (publish_delay_ms and health_timeout_ms may be 0)")


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """A lookup result: the record, where its node listens, and whether that node is suspected."""

    record: AgentRecord
    address: str
    """The hosting node's address ("" for this node)."""
    node_suspect: bool
    """Membership suspects the hosting node (the agent itself may still report healthy)."""


@dataclass(frozen=True, slots=True)
class AgentRegistered:
    """An agent became visible (registered here, learned from a peer, or its node came back)."""

    record: AgentRecord


@dataclass(frozen=True, slots=True)
class AgentUpdated:
    """A visible agent's record changed (capabilities, metadata, topics, load, status)."""

    record: AgentRecord
    previous: AgentRecord


@dataclass(frozen=True, slots=True)
class AgentRemoved:
    """An agent is no longer visible."""

    agent_id: str
    node_id: str
    reason: str
    """"deregistered", "node_failed" or "node_left"."""


@dataclass(frozen=True, slots=True)
class AgentHealthChanged:
    """An agent hosted here changed health (heartbeat timeout or a health report)."""

    agent_id: str
    healthy: bool
    reason: str


RegistryEvent = Union[AgentRegistered, AgentUpdated, AgentRemoved, AgentHealthChanged]


class _Set:
    __slots__ = ("epoch", "version", "records")

    def __init__(self, epoch: int, version: int, records: dict[str, AgentRecord]) -> None:
        self.epoch = epoch
        self.version = version
        self.records = records

    @property
    def stamp(self) -> tuple[int, int]:
        return (self.epoch, self.version)


_COUNTERS = (
    "frames_sent", "frames_received", "dropped_malformed", "dropped_wrong_cluster", "dropped_version",
    "dropped_outbox_full", "events_dropped", "sets_applied", "sets_stale", "sets_limbo", "sets_about_self",
    "sets_pushed", "sets_relayed", "digests_sent", "digests_served", "publishes", "limbo_evicted",
    "agent_id_conflicts", "health_timeouts",
)


class Registry:
    """The sans-I/O registry core. API calls, `receive`, `handle_timer`; drain `messages_to_send`/`next_event`."""

    def __init__(
        self,
        node_id: str,
        *,
        cluster: str,
        epoch: int,
        rng: random.Random,
        config: RegistryConfig | None = None,
    ) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError("epoch must be a non-negative int, strictly greater after every restart (persist it)")
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        self.node_id = node_id
        self.cluster = cluster
        self.epoch = epoch
        self.config = config or RegistryConfig()
        self._rng = rng
        self._peers = LivePeers()
        self._mine = _Set(epoch, 0, {})
        self._sets: dict[str, _Set] = {node_id: self._mine}
        self._limbo: dict[str, _Set] = {}
        self._by_agent: dict[str, dict[str, None]] = {}
        self._by_capability: dict[str, dict[str, None]] = {}
        self._by_topic: dict[str, dict[str, None]] = {}
        self._by_name: dict[str, dict[str, None]] = {}
        """Agent name -> agent ids with that name (names are not unique unless leased)."""
        self._health_timeout: dict[str, int] = {}
        self._health_deadline: dict[str, int] = {}
        self._publish_at: int | None = None
        self._next_anti_entropy: int | None = None
        self._outbox: list[Outgoing] = []
        self._events: deque[RegistryEvent] = deque()
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # -- membership input ----------------------------------------------------------------------

    def member_up(self, node_id: str, address: str, now_ms: int) -> None:
        """Membership says `node_id` is alive (joined, refuted, or updated its address)."""
        if node_id == self.node_id:
            return
        self._arm_anti_entropy(now_ms)
        if not self._peers.add(node_id, address):
            return
        parked = self._limbo.pop(node_id, None)
        if parked is not None:
            self._install(node_id, parked, "")
        if self._mine.records:
            self._send_set(node_id, self.node_id, self._mine)
            self.counters["sets_pushed"] += 1

    def member_suspect(self, node_id: str, now_ms: int) -> None:
        """Membership suspects `node_id`: its agents stay visible, flagged `node_suspect`."""
        self._peers.set_suspect(node_id, True)

    def member_down(self, node_id: str, now_ms: int, *, left: bool = False) -> None:
        """Membership declared `node_id` dead (or it left): hide its agents at once."""
        if not self._peers.remove(node_id):
            return
        current = self._sets.get(node_id)
        if current is None:
            return
        self._install(node_id, None, "node_left" if left else "node_failed")
        self._park(node_id, current)

    # -- local agents --------------------------------------------------------------------------

    def register(
        self,
        agent_id: str,
        now_ms: int,
        *,
        name: str = "",
        capabilities: Iterable[str] = (),
        metadata: Mapping[str, str] | None = None,
        description: str = "",
        version: str = "",
        skills: Sequence[AgentSkill] = (),
        topics: Iterable[str] = (),
        load: int = 0,
        health_timeout_ms: int | None = None,
    ) -> AgentRecord:
        """Host `agent_id` on this node and publish it. Raises AgentIdTaken, RegistryFull or ValueError."""
        if agent_id in self._mine.records:
            raise AgentIdTaken(f"agent {agent_id!r} is already registered on this node; deregister it first")
        for owner in self._by_agent.get(agent_id, ()):
            if owner != self.node_id:
                raise AgentIdTaken(f"agent id {agent_id!r} is already hosted by node {owner}; pick another id")
        if len(self._mine.records) >= MAX_AGENTS_PER_NODE:
            raise RegistryFull(f"this node hosts {MAX_AGENTS_PER_NODE} agents already; run more nodes")
        timeout = self.config.health_timeout_ms if health_timeout_ms is None else health_timeout_ms
        if timeout < 0:
            raise ValueError("health_timeout_ms must be >= 0 (0 disables heartbeat checks)")
        record = _validated(AgentRecord(
            agent_id=agent_id, name=name, node_id=self.node_id, capabilities=tuple(capabilities),
            metadata=tuple((metadata or {}).items()), description=description, version=version,
            skills=tuple(skills), topics=tuple(topics), status=STATUS_HEALTHY, load=load,
        ))
        if timeout:
            self._health_timeout[agent_id] = timeout
            self._health_deadline[agent_id] = now_ms + timeout
        self._local_change(agent_id, record, now_ms)
        return record

    def update(self, agent_id: str, now_ms: int, **changes: Any) -> AgentRecord:
        """Change fields of a hosted agent (capabilities, metadata, description, version, skills, topics, load)."""
        old = self._require_local(agent_id)
        allowed = {"name", "capabilities", "metadata", "description", "version", "skills", "topics", "load"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}; updatable fields: {sorted(allowed)}")
        fields = dict(changes)
        if "metadata" in fields:
            fields["metadata"] = tuple((fields["metadata"] or {}).items())
        for key in ("capabilities", "skills", "topics"):
            if key in fields:
                fields[key] = tuple(fields[key])
        record = _validated(replace(old, **fields))
        if record != old:
            self._local_change(agent_id, record, now_ms)
        return record

    def set_load(self, agent_id: str, load: int, now_ms: int) -> None:
        """Publish a new load figure (coalesced with other changes for `publish_delay_ms`)."""
        if not isinstance(load, int) or not 0 <= load <= MAX_LOAD:
            raise ValueError(f"load must be an int in 0..{MAX_LOAD}")
        old = self._require_local(agent_id)
        if old.load != load:
            self._local_change(agent_id, replace(old, load=load), now_ms)

    def subscribe(self, agent_id: str, topic: str, now_ms: int) -> None:
        """Subscribe a hosted agent to `topic` (replicated with its record)."""
        old = self._require_local(agent_id)
        if topic not in old.topics:
            self.update(agent_id, now_ms, topics=old.topics + (topic,))

    def unsubscribe(self, agent_id: str, topic: str, now_ms: int) -> None:
        old = self._require_local(agent_id)
        if topic in old.topics:
            self.update(agent_id, now_ms, topics=tuple(t for t in old.topics if t != topic))

    def deregister(self, agent_id: str, now_ms: int) -> None:
        """Stop hosting `agent_id`; peers drop it with the next set version."""
        self._require_local(agent_id)
        self._health_timeout.pop(agent_id, None)
        self._health_deadline.pop(agent_id, None)
        self._local_change(agent_id, None, now_ms)

    def heartbeat(self, agent_id: str, now_ms: int) -> None:
        """The agent's handler is alive (call from the runtime's liveness check); restores health."""
        self._require_local(agent_id)
        timeout = self._health_timeout.get(agent_id)
        if timeout:
            self._health_deadline[agent_id] = now_ms + timeout
        self._set_health(agent_id, True, "heartbeat", now_ms)

    def report_health(self, agent_id: str, healthy: bool, now_ms: int, reason: str = "") -> None:
        """Result of the agent's health callback (or its handler crashing): publish healthy/unhealthy."""
        self._require_local(agent_id)
        if healthy:
            timeout = self._health_timeout.get(agent_id)
            if timeout:
                self._health_deadline[agent_id] = now_ms + timeout
        self._set_health(agent_id, healthy, reason or ("reported healthy" if healthy else "reported unhealthy"), now_ms)

    # -- lookups (deterministic: sorted by agent id, then node id) -----------------------------

    def lookup(self, agent_id: str) -> AgentEntry | None:
        """Where `agent_id` lives now, or None. Two claimants: the one on an unsuspected node, then lowest node id."""
        owners = self._by_agent.get(agent_id)
        if not owners:
            return None
        if len(owners) == 1:  # the common case, on every send: no list, no sort
            for o in owners:
                return self._entry(self._sets[o].records[agent_id])
        entries = [self._entry(self._sets[o].records[agent_id]) for o in owners]
        return min(entries, key=lambda e: (e.node_suspect, e.record.node_id))

    def node_of(self, agent_id: str) -> str | None:
        """`lookup(agent_id).record.node_id` without building an entry (the per-send path)."""
        owners = self._by_agent.get(agent_id)
        if not owners:
            return None
        if len(owners) == 1:
            for o in owners:
                return self._sets[o].records[agent_id].node_id
        entry = self.lookup(agent_id)
        return None if entry is None else entry.record.node_id

    def find(self, capability: str | None = None, *, topic: str | None = None, name: str | None = None,
             healthy_only: bool = True, include_suspect: bool = True) -> list[AgentEntry]:
        """Agents with `capability` (and/or subscribed to `topic`); all visible agents if all are None.

        With `name`: only agents of that name, and if one advertises a confirmed name lease, only the
        lease holder (the highest lease epoch wins while an old holder has not yet heard it lost)."""
        if name is not None:
            return self._find_name(name, capability, topic, healthy_only, include_suspect)
        if capability is not None:
            ids: Iterable[str] = self._by_capability.get(capability, {})
        elif topic is not None:
            ids = self._by_topic.get(topic, {})
        else:
            ids = self._by_agent
        out = []
        for agent_id in ids:
            for owner in self._by_agent.get(agent_id, ()):
                rec = self._sets[owner].records[agent_id]
                if capability is not None and capability not in rec.capabilities:
                    continue
                if topic is not None and topic not in rec.topics:
                    continue
                if healthy_only and rec.status != STATUS_HEALTHY:
                    continue
                entry = self._entry(rec)
                if entry.node_suspect and not include_suspect:
                    continue
                out.append(entry)
        out.sort(key=lambda e: (e.record.agent_id, e.record.node_id))
        return out

    def _find_name(self, name: str, capability: str | None, topic: str | None, healthy_only: bool,
                   include_suspect: bool) -> list[AgentEntry]:
        entries = []
        for agent_id in self._by_name.get(name, {}):
            for owner in self._by_agent.get(agent_id, ()):
                rec = self._sets[owner].records[agent_id]
                if rec.name == name:
                    entries.append(self._entry(rec))
        marked = [(parse_marker(e.record.meta.get(NAME_MARKER_KEY)), e) for e in entries]
        confirmed = [(m[1], e) for m, e in marked if m is not None and m[0] == CONFIRMED]
        if confirmed:
            # One holder: the newest grant (an old holder may still advertise until it learns it lost).
            entries = [min(confirmed, key=lambda p: (-p[0], p[1].record.node_id))[1]]
        else:
            entries = [e for m, e in marked if m is None or m[0] != LOST]
        out = [e for e in entries
               if (capability is None or capability in e.record.capabilities)
               and (topic is None or topic in e.record.topics)
               and (not healthy_only or e.record.status == STATUS_HEALTHY)
               and (include_suspect or not e.node_suspect)]
        out.sort(key=lambda e: (e.record.agent_id, e.record.node_id))
        return out

    def subscriber_nodes(self, topic: str) -> list[str]:
        """Nodes hosting at least one agent subscribed to `topic`, sorted."""
        return sorted({e.record.node_id for e in self.find(topic=topic, healthy_only=False)})

    def local_record(self, agent_id: str) -> AgentRecord | None:
        """The record of `agent_id` if this node hosts it."""
        return self._mine.records.get(agent_id)

    def local_agents(self) -> list[AgentRecord]:
        return [self._mine.records[a] for a in sorted(self._mine.records)]

    def stamp(self, owner: str) -> tuple[int, int] | None:
        """(epoch, version) of the visible set of `owner`, if any."""
        s = self._sets.get(owner)
        return None if s is None else s.stamp

    # -- core shape ----------------------------------------------------------------------------

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        """One registry frame from the authenticated `sender_id`; garbage is counted and dropped."""
        self.counters["frames_received"] += 1
        try:
            msg = decode(frame, self.cluster)
        except FrameError as exc:
            self.counters[exc.counter] += 1
            return
        if type(msg) is RegistrySet:
            self._on_set(sender_id, msg)
        elif type(msg) is RegistryDigest:
            self._on_digest(sender_id, msg)
        else:
            self.counters["dropped_malformed"] += 1

    def handle_timer(self, now_ms: int) -> None:
        """Publish coalesced changes, expire heartbeats, run anti-entropy."""
        for agent_id in sorted(self._health_deadline):
            if self._health_deadline[agent_id] <= now_ms:
                del self._health_deadline[agent_id]
                rec = self._mine.records.get(agent_id)
                if rec is not None and rec.status == STATUS_HEALTHY:
                    self.counters["health_timeouts"] += 1
                    self._set_health(agent_id, False, "no heartbeat", now_ms)
        if self._publish_at is not None and now_ms >= self._publish_at:
            self._publish_at = None
            self._publish()
        if self._next_anti_entropy is not None and now_ms >= self._next_anti_entropy:
            self._next_anti_entropy = None
            self._arm_anti_entropy(now_ms)
            peer = self._peers.sample(1, self._rng)
            if peer:
                self._send(peer[0], RegistryDigest(True, self._digest()))
                self.counters["digests_sent"] += 1

    def get_timer(self) -> int | None:
        due = [t for t in (self._publish_at, self._next_anti_entropy) if t is not None]
        if self._health_deadline:
            due.append(min(self._health_deadline.values()))
        return min(due) if due else None

    def messages_to_send(self) -> list[Outgoing]:
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> RegistryEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals -----------------------------------------------------------------------------

    def _on_set(self, sender: str, msg: RegistrySet) -> None:
        owner = msg.owner
        if owner == self.node_id:
            self.counters["sets_about_self"] += 1
            return
        stamp = (msg.epoch, msg.version)
        current = self._sets.get(owner) or self._limbo.get(owner)
        if current is not None and current.stamp >= stamp:
            self.counters["sets_stale"] += 1
            return
        new = _Set(msg.epoch, msg.version, {r.agent_id: r for r in msg.records})
        if owner not in self._peers:
            self.counters["sets_limbo"] += 1
            self._park(owner, new)
            return
        self.counters["sets_applied"] += 1
        self._install(owner, new, "deregistered")
        relay = self._peers.sample(self.config.push_fanout, self._rng, exclude=(sender, owner))
        for peer in relay:
            self._send_set(peer, owner, new)
        self.counters["sets_relayed"] += len(relay)

    def _on_digest(self, sender: str, msg: RegistryDigest) -> None:
        self.counters["digests_served"] += 1
        theirs = {owner: (e, v) for owner, e, v in msg.entries}
        want = False
        for owner in sorted(self._sets):
            s = self._sets[owner]
            if owner != sender and theirs.get(owner, (-1, -1)) < s.stamp and (s.records or owner in theirs):
                self._send_set(sender, owner, s)
        for owner, stamp in theirs.items():
            mine = self._sets.get(owner) or self._limbo.get(owner)
            if owner != self.node_id and owner in self._peers and (mine is None or mine.stamp < stamp):
                want = True
                break
        if msg.reply and want:
            self._send(sender, RegistryDigest(False, self._digest()))

    def _install(self, owner: str, new: _Set | None, reason: str) -> None:
        """Make `new` the visible set of `owner` (None hides it), updating indexes and emitting diffs."""
        old = self._sets.pop(owner, None)
        old_records = old.records if old is not None else {}
        new_records = new.records if new is not None else {}
        if new is not None:
            self._sets[owner] = new
        for agent_id in sorted(old_records.keys() | new_records.keys()):
            before, after = old_records.get(agent_id), new_records.get(agent_id)
            if before is not None and (after is None or after != before):
                self._unindex(before)
            if after is not None and (before is None or after != before):
                self._index(after)
            if before is None and after is not None:
                self._emit(AgentRegistered(after))
            elif after is None and before is not None:
                self._emit(AgentRemoved(agent_id, owner, reason))
            elif before is not None and after is not None and before != after:
                self._emit(AgentUpdated(after, before))

    def _index(self, rec: AgentRecord) -> None:
        owners = self._by_agent.setdefault(rec.agent_id, {})
        owners[rec.node_id] = None
        if len(owners) > 1:
            self.counters["agent_id_conflicts"] += 1
        if rec.name:
            self._by_name.setdefault(rec.name, {})[rec.agent_id] = None
        for cap in rec.capabilities:
            self._by_capability.setdefault(cap, {})[rec.agent_id] = None
        for topic in rec.topics:
            self._by_topic.setdefault(topic, {})[rec.agent_id] = None

    def _unindex(self, rec: AgentRecord) -> None:
        owners = self._by_agent.get(rec.agent_id, {})
        owners.pop(rec.node_id, None)
        if not owners:
            self._by_agent.pop(rec.agent_id, None)
        still = [self._sets[o].records[rec.agent_id] for o in owners if o in self._sets]
        if rec.name and not any(r.name == rec.name for r in still):
            ids = self._by_name.get(rec.name)
            if ids is not None:
                ids.pop(rec.agent_id, None)
                if not ids:
                    del self._by_name[rec.name]
        for table, names in ((self._by_capability, rec.capabilities), (self._by_topic, rec.topics)):
            for name in names:
                if any(name in (r.capabilities if table is self._by_capability else r.topics) for r in still):
                    continue
                ids = table.get(name)
                if ids is not None:
                    ids.pop(rec.agent_id, None)
                    if not ids:
                        del table[name]

    def _park(self, owner: str, s: _Set) -> None:
        self._limbo.pop(owner, None)
        if len(self._limbo) >= MAX_LIMBO_OWNERS:
            del self._limbo[next(iter(self._limbo))]
            self.counters["limbo_evicted"] += 1
        self._limbo[owner] = s

    def _local_change(self, agent_id: str, record: AgentRecord | None, now_ms: int) -> None:
        records = dict(self._mine.records)
        if record is None:
            records.pop(agent_id, None)
        else:
            records[agent_id] = record
        new = _Set(self.epoch, self._mine.version, records)
        self._install(self.node_id, new, "deregistered")
        self._mine = new
        if self._publish_at is None:
            self._publish_at = now_ms + self.config.publish_delay_ms
        self._arm_anti_entropy(now_ms)

    def _publish(self) -> None:
        self._mine.version += 1
        self.counters["publishes"] += 1
        for peer in self._peers.sample(self.config.push_fanout, self._rng):
            self._send_set(peer, self.node_id, self._mine)
            self.counters["sets_pushed"] += 1

    def _set_health(self, agent_id: str, healthy: bool, reason: str, now_ms: int) -> None:
        rec = self._mine.records[agent_id]
        status = STATUS_HEALTHY if healthy else STATUS_UNHEALTHY
        if rec.status != status:
            self._local_change(agent_id, replace(rec, status=status), now_ms)
            self._emit(AgentHealthChanged(agent_id, healthy, reason))

    def _require_local(self, agent_id: str) -> AgentRecord:
        rec = self._mine.records.get(agent_id)
        if rec is None:
            raise KeyError(f"agent {agent_id!r} is not registered on this node; register it first")
        return rec

    def _entry(self, rec: AgentRecord) -> AgentEntry:
        if rec.node_id == self.node_id:
            return AgentEntry(rec, "", False)
        return AgentEntry(rec, self._peers.address(rec.node_id) or "", self._peers.suspect(rec.node_id))

    def _digest(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((o, s.epoch, s.version) for o, s in sorted(self._sets.items()))

    def _arm_anti_entropy(self, now_ms: int) -> None:
        if self._next_anti_entropy is None:
            # Jittered start so peers do not exchange digests in lockstep.
            interval = self.config.anti_entropy_interval_ms
            self._next_anti_entropy = now_ms + interval // 2 + self._rng.randrange(interval // 2 + 1)

    def _send_set(self, peer: str, owner: str, s: _Set) -> None:
        self._send(peer, RegistrySet(owner, s.epoch, s.version, tuple(s.records[a] for a in sorted(s.records))))

    def _send(self, peer: str, msg: RegistrySet | RegistryDigest) -> None:
        address = self._peers.address(peer)
        if address is None:
            return
        if len(self._outbox) >= MAX_OUTBOX:
            self.counters["dropped_outbox_full"] += 1
            return
        self._outbox.append(Outgoing(address, peer, encode(msg, self.cluster)))
        self.counters["frames_sent"] += 1

    def _emit(self, event: RegistryEvent) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)


def _validated(record: AgentRecord) -> AgentRecord:
    """Normalise (sort) and validate a local record with the same rules applied to peers' records."""
    try:
        return decode_record(_record_wire(record))
    except FrameError as exc:
        raise ValueError(f"invalid agent record for {record.agent_id!r}: {exc} (see limits in agent_messages)") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"invalid agent record for {record.agent_id!r}: {exc}") from None

"""NodeCore: the sans-I/O node. SWIM membership with Lifeguard, piggybacked gossip, push-pull anti-entropy,
seeds and partition healing, driven by three inputs and drained through three outputs.

Inputs: `receive(sender_id, frame, now_ms)`, `handle_timer(now_ms)`, and API calls (`start`, `add_seeds`,
`peer_unreachable`, `leave`). After any input, drain `messages_to_send()` and `next_event()`, then
re-arm one timer at `get_timer()`. The same object runs under the asyncio runtime, the in-memory
transport and the deterministic simulator; it reads no clock and draws randomness only from `rng`.

Protocol summary (details and sources in docs/protocols/membership.md):
- every probe period one member (randomised round robin) gets a ping; without an ack after the probe
  timeout, `indirect_checks` helpers are sent ping-reqs and the target gets a second direct ping; without
  any ack by the end of the period the target is suspected (SWIM §3-4);
- suspicion times out from max toward min as independent accusers confirm it (Lifeguard); the suspect
  learns it directly and by gossip, and refutes with incarnation + 1;
- missed nacks and refutations raise a local health score that stretches our own timeouts (Lifeguard LHA);
- updates ride on pings/acks and on gossip rounds sent only while something is queued;
- a full state exchange with one random member every push-pull interval; joins are push-pulls to seeds;
- dead members are pinged at a low rate and seeds not seen alive are re-contacted, so a healed partition
  or a fully restarted cluster re-forms without an operator (memberlist does not do this).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agentnode import events as ev
from agentnode.dissemination import Dissemination, retransmit_limit
from agentnode.membership import (
    ALIVE,
    DEAD,
    KIND_OF_STATE,
    LEFT,
    SUSPECT,
    TIMEOUT,
    Awareness,
    Member,
    MemberInterner,
    MemberRecord,
    ProbeOrder,
    Suspicion,
    push_pull_interval_ms,
    suspicion_timeouts_ms,
    transition,
)
from agentnode.messages import (
    KIND_ALIVE,
    KIND_DEAD,
    KIND_LEFT,
    KIND_SUSPECT,
    MAX_ADDRESS_CHARS,
    MAX_ID_CHARS,
    MAX_METADATA_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_STATES_PER_PUSH_PULL,
    Ack,
    FrameError,
    Gossip,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullReply,
    Update,
    decode,
    encode,
)
from agentnode.profiles import MembershipProfile

__sans_io__ = True

__all__ = ["Member", "NodeCore", "Outgoing"]

MAX_SEEDS = 256
"""Seed addresses remembered (bootstrap + mDNS + peer cache)."""
MAX_SEED_CONTACTS_PER_TICK = 8
"""Seeds contacted in one seed tick."""
MAX_PENDING_PINGS = 64
"""Reconnect / seed pings awaiting an ack; the oldest is forgotten beyond this."""
MAX_SUSPECTS_TO_CHECK = 16
"""Suspects (accused by others) this node probes ahead of its round-robin order."""
MAX_SUSPECTS_TO_RECHECK = 64
"""Expired suspicions queued for a re-check probe while our health is poor (decision 0044)."""
MAX_SUSPICION_RECHECKS = 8
"""Times one suspicion may be extended for a re-check while our health stays poor; then our own
verdict stands. At most 8 x 2 scaled probe periods (64 s on the LAN profile at the worst health)."""
RECENT_ACKERS = 16
"""Members that answered our last probes; ping-req helpers are drawn from them first."""
RECENT_SENDERS = 64
"""Members whose last frame's arrival time is kept (most recent first out): a dead verdict about one
heard from within the minimum suspicion timeout is stale (decision 0045)."""
MAX_OUTBOX = 100_000
"""Frames waiting for `messages_to_send`; beyond this new frames are dropped and counted."""
MAX_EVENTS = 100_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted."""
LEAVE_FANOUT_MULT = 2
"""A leave is sent at once to gossip_nodes * this many members, then gossiped as usual."""

JOIN_FOLLOW_UPS = 3
"""Anti-entropy push-pulls a joiner runs at doubling spacing (2-6, then 4-12, then 8-24 probe periods)
before the size-scaled period (180 s at 1000 nodes): a node that joined while others did is unknown to
most of them as their joins are gossiped, so gossip alone leaves stragglers; each later pull reaches a
peer that knew more, and a lost one costs one round, not a push-pull period (decision 0059)."""

LIVE_STALE_MIN = 32
"""Departed members left in the live list before it is compacted (and at least as many as live ones)."""

_TIMER_SUSPICION = 0
_TIMER_RELAY = 1
_LIVE = (ALIVE, SUSPECT)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame to send."""

    address: str
    """"host:port" where the peer listens (opaque to the core)."""
    peer_id: str | None
    """The node id the peer must prove; None when dialling a seed."""
    frame: Any
    """One msgpack-serialisable value."""


class _Probe:
    """This node's probe in flight (one at a time)."""

    __slots__ = ("target", "address", "seq", "direct_deadline_ms", "end_ms", "indirect", "nacks_expected", "nacks")

    def __init__(self, target: str, address: str, seq: int, direct_deadline_ms: int, end_ms: int) -> None:
        self.target = target
        self.address = address
        self.seq = seq
        self.direct_deadline_ms = direct_deadline_ms
        self.end_ms = end_ms
        self.indirect = False
        self.nacks_expected = 0
        self.nacks = 0


class _Relay:
    """A ping-req this node serves for another node."""

    __slots__ = ("origin", "origin_address", "origin_seq", "deadline_ms")

    def __init__(self, origin: str, origin_address: str, origin_seq: int, deadline_ms: int) -> None:
        self.origin = origin
        self.origin_address = origin_address
        self.origin_seq = origin_seq
        self.deadline_ms = deadline_ms


_COUNTERS = (
    "frames_sent", "frames_received", "dropped_malformed", "dropped_wrong_cluster", "dropped_version",
    "dropped_from_self", "dropped_not_started", "dropped_outbox_full", "events_dropped",
    "pings_sent", "acks_received", "acks_late", "ping_reqs_sent", "ping_reqs_served", "ping_reqs_dropped",
    "nacks_sent", "nacks_received", "probes_failed", "suspicions", "confirmations", "degraded_timeouts",
    "members_failed", "refutations", "suspicions_cleared", "suspicion_rechecks", "stale_verdicts",
    "updates_applied", "updates_unknown_member", "updates_dropped",
    "gossip_sent", "push_pulls_sent", "push_pulls_served", "joins_sent", "joins_served", "seed_pings",
    "reconnect_pings", "reconnects", "peer_unreachable", "members_reaped",
)


class NodeCore:
    """The sans-I/O membership node. Construct, `start`, then feed inputs and drain outputs."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        cluster: str,
        profile: MembershipProfile,
        rng: random.Random,
        incarnation: int = 0,
        metadata: Mapping[str, str] | None = None,
        interner: MemberInterner | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_ID_CHARS:
            raise ValueError(f"node_id must be a non-empty string of at most {MAX_ID_CHARS} characters")
        if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_CHARS:
            raise ValueError('address must be a non-empty "host:port" string')
        if not isinstance(cluster, str) or not cluster:
            raise ValueError("cluster must be a non-empty string (the cluster name)")
        if not isinstance(incarnation, int) or incarnation < 0:
            raise ValueError("incarnation must be a non-negative int (pass the value the runtime persisted)")
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        if interner is not None and not isinstance(interner, MemberInterner):
            raise ValueError("interner must be an agentnode.membership.MemberInterner (or None for a private one)")
        meta = dict(metadata or {})
        if len(meta) > MAX_METADATA_ENTRIES or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > MAX_METADATA_CHARS or len(v) > MAX_METADATA_CHARS
            for k, v in meta.items()
        ):
            raise ValueError(
                f"metadata must map str to str, at most {MAX_METADATA_ENTRIES} entries of {MAX_METADATA_CHARS} characters"
            )
        self.node_id = node_id
        self.address = address
        self.cluster = cluster
        self.profile = profile
        self._rng = rng
        self._metadata = meta
        self._interner = interner if interner is not None else MemberInterner()
        self._me = MemberRecord(node_id, address, ALIVE, incarnation, meta)
        """Our own record: private (never interned), so the only record the core changes in place."""
        self._members: dict[str, MemberRecord] = {node_id: self._me}
        """Member id -> its record. Records are shared and immutable (decision 0059): a change stores a new one."""
        self._since: dict[str, int] = {}
        """Dead or departed member -> when it entered that state here (reaping); nothing for live ones."""
        self._suspicions: dict[str, Suspicion] = {}
        """Suspect member -> its suspicion timer here; exactly the members in state suspect."""
        self._live: list[str] = []
        """Live members (alive or suspect) plus departed ones not yet compacted out; see `_live_add`."""
        self._live_count = 0
        self._stale: dict[str, None] = {}
        """Departed members whose ids are still in the live list, awaiting compaction."""
        self._gone_order: list[str] = []
        self._gone_next = 0
        self._by_address: dict[str, str] = {}
        """Seed address -> the member listening there (seeds only: one entry per member costs memory at N^2)."""
        self._queue = Dissemination(profile.broadcast_queue_max)
        self._awareness = Awareness(profile.awareness_max_multiplier)
        self._order = ProbeOrder(rng)
        self._outbox: list[Outgoing] = []
        self._events: deque[ev.NodeEvent] = deque()
        self._timers: list[tuple[int, int, int, Any]] = []
        self._timer_seq = 0
        self._relays: dict[int, _Relay] = {}
        self._pings: dict[int, tuple[str, str]] = {}
        self._notified_ms: dict[str, int] = {}
        self._probe: _Probe | None = None
        self._to_check: dict[str, None] = {}
        self._checked_last = False
        self._recheck: dict[str, None] = {}
        self._heard_ms = -1
        """When any member's frame last arrived: a cut-off node hears nothing (decision 0044)."""
        self._recent_ok: deque[str] = deque(maxlen=RECENT_ACKERS)
        self._heard_from: dict[str, int] = {}
        """Sender -> when its last frame arrived, for the RECENT_SENDERS latest senders (oldest first)."""
        self._seq = 0
        self._seeds: dict[str, None] = {}
        self._seed_cursor = 0
        self._join_backoff_ms = profile.probe_interval_ms
        self._started = False
        self._leaving = False
        self._joined = False
        self._follow_ups = 0
        """Join follow-up push-pulls still to run (JOIN_FOLLOW_UPS)."""
        self._next_probe_ms = 0
        self._next_gossip_ms = 0
        self._next_push_pull_ms = 0
        self._next_reconnect_ms = 0
        self._next_seed_ms: int | None = None
        self._next_recontact_ms = 0
        self._counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._handlers = {
            Ping: self._on_ping,
            Ack: self._on_ack,
            PingReq: self._on_ping_req,
            Nack: self._on_nack,
            Gossip: self._on_gossip,
            PushPull: self._on_push_pull,
            PushPullReply: self._on_push_pull_reply,
        }
        self._k = 0
        self._susp_min_ms = 0
        self._susp_max_ms = 0
        self._resize_due = True

    # ------------------------------------------------------------------ public API

    @property
    def incarnation(self) -> int:
        """This node's current incarnation."""
        return self._me.incarnation

    @property
    def counters(self) -> Mapping[str, int]:
        """Live read-only view of the counters (frames, drops by reason, suspicions, refutations, ...)."""
        return MappingProxyType(self._counters)

    @property
    def health_score(self) -> int:
        """Lifeguard local health score: 0 is healthy; timeouts scale by score + 1."""
        return self._awareness.score

    def start(self, now_ms: int) -> None:
        """Begin probing, announce ourselves, join through any seeds. Then drain outputs and re-arm the timer."""
        if self._started:
            raise RuntimeError("NodeCore.start() was already called")
        self._started = True
        p = self.profile
        self._next_probe_ms = now_ms + self._rng.randrange(p.probe_interval_ms)
        self._next_gossip_ms = now_ms
        self._next_push_pull_ms = now_ms + self._push_pull_period()
        self._next_reconnect_ms = now_ms + p.reconnect_interval_ms
        self._next_recontact_ms = now_ms + p.seed_recontact_interval_ms
        self._enqueue(self._self_alive())
        if self._seeds:
            self._seed_cursor = self._rng.randrange(len(self._seeds))  # joiners spread over the seeds
            self._next_seed_ms = now_ms
            self._seed_tick(now_ms)

    def add_seeds(self, addresses: Sequence[str], now_ms: int) -> None:
        """Remember bootstrap/mDNS/peer-cache addresses and contact the new ones (now if started)."""
        if isinstance(addresses, str):
            raise ValueError('add_seeds takes a list of "host:port" strings, not one string')
        fresh = []
        for address in addresses:
            if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_CHARS:
                raise ValueError(f'seed address must be a non-empty "host:port" string, got {address!r}')
            if address == self.address or address in self._seeds or len(self._seeds) >= MAX_SEEDS:
                continue
            self._seeds[address] = None
            fresh.append(address)
        if fresh and len(self._members) > 1:
            self._index_seed_addresses(fresh)
        if not self._started or self._leaving:
            return
        if not self._live_count:
            if fresh:
                # Alone: join through one seed, picked at random so joiners spread over the seeds; the
                # seed tick tries the next one if no reply came (decision 0059).
                self._seed_cursor = self._rng.randrange(len(self._seeds))
                self._join()
        else:
            for address in fresh[:MAX_SEED_CONTACTS_PER_TICK]:
                if not self._address_live(address):
                    self._contact_seed(address, now_ms)
        if self._next_seed_ms is None:
            self._next_seed_ms = now_ms + self._join_backoff_ms

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        """Handle one frame from the authenticated `sender_id`. Peer garbage is counted and dropped, never raised."""
        c = self._counters
        c["frames_received"] += 1
        if type(sender_id) is not str or not sender_id:
            c["dropped_malformed"] += 1
            return
        try:
            message = decode(frame, self.cluster)
        except FrameError as exc:
            c[exc.counter] += 1
            return
        if sender_id == self.node_id:
            c["dropped_from_self"] += 1
            return
        if not self._started:
            c["dropped_not_started"] += 1
            return
        self._heard_ms = now_ms
        heard = self._heard_from
        if heard.pop(sender_id, None) is None and len(heard) >= RECENT_SENDERS:
            del heard[next(iter(heard))]
        heard[sender_id] = now_ms
        self._handlers[type(message)](sender_id, message, now_ms)  # type: ignore[operator]
        rec = self._members.get(sender_id)
        if rec is not None and (rec.state == DEAD or rec.state == SUSPECT) and not self._leaving:
            self._tell_accused(rec, now_ms)

    def peer_unreachable(self, address: str, peer_id: str | None, now_ms: int) -> None:
        """The transport could not reach `address`: a probe target skips straight to indirect probes."""
        self._counters["peer_unreachable"] += 1
        probe = self._probe
        if probe is not None and not probe.indirect and probe.address == address and now_ms < probe.end_ms:
            self._start_indirect(probe, now_ms)

    def handle_timer(self, now_ms: int) -> None:
        """Run everything due at `now_ms`. Then drain outputs and re-arm the timer."""
        if not self._started:
            return
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            deadline, _, kind, key = heapq.heappop(timers)
            if kind == _TIMER_SUSPICION:
                self._suspicion_timeout(key, deadline, now_ms)
            else:
                self._relay_timeout(key, deadline)
        probe = self._probe
        if probe is not None:
            if not probe.indirect and now_ms >= probe.direct_deadline_ms:
                self._start_indirect(probe, now_ms)
            if now_ms >= probe.end_ms:
                self._probe_failed(probe, now_ms)
        if not self._leaving:
            if now_ms >= self._next_probe_ms:
                self._probe_tick(now_ms)
            if now_ms >= self._next_push_pull_ms:
                self._push_pull_tick(now_ms)
            if now_ms >= self._next_reconnect_ms:
                self._reconnect_tick(now_ms)
            if self._next_seed_ms is not None and now_ms >= self._next_seed_ms:
                self._seed_tick(now_ms)
        if len(self._queue) and now_ms >= self._next_gossip_ms:
            self._gossip_tick(now_ms)

    def get_timer(self) -> int | None:
        """Absolute `now_ms` at which `handle_timer` is next due, or None when nothing is scheduled."""
        if not self._started:
            return None
        timers = self._timers
        while timers and self._timer_stale(timers[0]):
            heapq.heappop(timers)
        best = timers[0][0] if timers else None
        if len(self._queue):
            best = self._next_gossip_ms if best is None or self._next_gossip_ms < best else best
        if self._leaving:
            return best
        probe = self._probe
        due = self._next_probe_ms
        if probe is not None:
            due = min(due, probe.end_ms if probe.indirect else probe.direct_deadline_ms)
        due = min(due, self._next_push_pull_ms, self._next_reconnect_ms)
        if self._next_seed_ms is not None:
            due = min(due, self._next_seed_ms)
        return due if best is None or due < best else best

    def messages_to_send(self) -> list[Outgoing]:
        """Drain the frames to send, in order."""
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> ev.NodeEvent | None:
        """Pop the next event, or None when there is none."""
        return self._events.popleft() if self._events else None

    def leave(self, now_ms: int) -> None:
        """Announce a graceful leave to a few members at once (and by gossip), then stop probing."""
        if self._leaving:
            return
        if not self._started:
            raise RuntimeError("NodeCore.leave() before start(): nothing to leave")
        self._leaving = True
        me = self._me
        me.state = LEFT
        self._probe = None
        update = Update(KIND_LEFT, self.node_id, me.incarnation, self.address, self.node_id, None)
        self._enqueue(update)
        for node_id in self._sample_live(self.profile.gossip_nodes * LEAVE_FANOUT_MULT, None):
            self._send(self._members[node_id].address, node_id, Gossip((update,)))

    def members(self) -> list[Member]:
        """Every member this node knows (itself included), sorted by node id."""
        return [self._members[k].snapshot() for k in sorted(self._members)]

    def member(self, node_id: str) -> Member | None:
        """One member, or None if unknown."""
        rec = self._members.get(node_id)
        return None if rec is None else rec.snapshot()

    def live_count(self) -> int:
        """Members other than this node that are alive or suspect."""
        return self._live_count

    # ------------------------------------------------------------------ message handlers

    def _on_ping(self, sender: str, msg: Ping, now_ms: int) -> None:
        self._apply_all(msg.updates, sender, now_ms)
        if self._leaving:
            return
        updates = self._piggyback(sender)
        me = self.node_id
        if any(u.node_id == me and u.kind != KIND_ALIVE for u in msg.updates):
            # The prober holds an accusation against us: the ack itself carries our refutation, so
            # an answered check probe always clears a false suspicion.
            mine = self._self_alive()
            if mine not in updates:
                updates = updates + (mine,)
        self._send(msg.from_address, sender, Ack(msg.seq, updates))
        if sender not in self._members and self._rate_ok(sender, now_ms):
            # A member we never heard of probes us: its join gossip missed us. Exchange state with it.
            self._send_push_pull(msg.from_address, sender, join=False)

    def _on_ack(self, sender: str, msg: Ack, now_ms: int) -> None:
        self._apply_all(msg.updates, sender, now_ms)
        c = self._counters
        c["acks_received"] += 1
        seq = msg.seq
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._probe = None
            self._awareness.apply(-1)
            if not probe.indirect:
                self._recent_ok.append(probe.target)
            rec = self._members.get(probe.target)
            if rec is not None and rec.state == SUSPECT:
                self._answered_suspect(rec, now_ms)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            # Pass the target's own updates on: they may hold its refutation for the origin.
            own = tuple(u for u in msg.updates if u.node_id == sender)
            self._send(relay.origin_address, relay.origin, Ack(relay.origin_seq, own))
            return
        purpose = self._pings.pop(seq, None)
        if purpose is None:
            c["acks_late"] += 1
            return
        rec = self._members.get(sender)
        if purpose[0] == "seed":
            self._by_address.setdefault(purpose[1], sender)  # remember the seed's alias for `_address_live`
        if rec is None or rec.state not in _LIVE:
            # A seed we do not see alive, or a dead member that answers: exchange full state with it.
            # Our state tells it that it is dead here, so it refutes (incarnation + 1) and is re-admitted.
            if purpose[0] == "reconnect":
                c["reconnects"] += 1
            address = rec.address if rec is not None and purpose[0] == "reconnect" else purpose[1]
            self._send_push_pull(address, sender, join=False)

    def _on_ping_req(self, sender: str, msg: PingReq, now_ms: int) -> None:
        c = self._counters
        if self._leaving:
            return
        if msg.target_id == self.node_id:
            self._send(msg.from_address, sender, Ack(msg.seq, ()))
            return
        if len(self._relays) >= self.profile.max_relayed_probes:
            c["ping_reqs_dropped"] += 1
            return
        c["ping_reqs_served"] += 1
        seq = self._next_seq()
        deadline = now_ms + self.profile.probe_timeout_ms
        self._relays[seq] = _Relay(sender, msg.from_address, msg.seq, deadline)
        self._push_timer(deadline, _TIMER_RELAY, seq)
        self._send(msg.target_address, msg.target_id, Ping(seq, self.address, self._piggyback(msg.target_id)))
        c["pings_sent"] += 1

    def _on_nack(self, sender: str, msg: Nack, now_ms: int) -> None:
        self._counters["nacks_received"] += 1
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            probe.nacks += 1

    def _on_gossip(self, sender: str, msg: Gossip, now_ms: int) -> None:
        self._apply_all(msg.updates, sender, now_ms)

    def _on_push_pull(self, sender: str, msg: PushPull, now_ms: int) -> None:
        c = self._counters
        c["push_pulls_served"] += 1
        if msg.join:
            c["joins_served"] += 1
        self._merge(msg.states, sender, now_ms, msg.join)
        self._send(msg.from_address, sender, PushPullReply(self._full_state()))

    def _on_push_pull_reply(self, sender: str, msg: PushPullReply, now_ms: int) -> None:
        self._merge(msg.states, sender, now_ms)
        if not self._joined:
            # Follow-up anti-entropy soon after joining: nodes that joined right after us are not in the
            # seed's reply, and merged facts are not re-gossiped. 2-6 probe periods, randomised; then
            # JOIN_FOLLOW_UPS - 1 more at doubling spacing (`_push_pull_tick`).
            self._joined = True
            self._follow_ups = JOIN_FOLLOW_UPS
            interval = self.profile.probe_interval_ms
            self._next_push_pull_ms = min(self._next_push_pull_ms, now_ms + self._rng.randrange(2 * interval, 6 * interval))

    # ------------------------------------------------------------------ state machine

    def _apply_all(self, updates: tuple[Update, ...], sender: str, now_ms: int) -> None:
        members = self._members
        me = self._me
        for update in updates:
            rec = members.get(update.node_id)
            # Old news (nearly every gossip copy while a big cluster joins): the test `_apply` starts
            # with, done here without the call. Not for our own id: `_about_me` answers stale rumours.
            if (rec is not None and rec is not me and (update.incarnation < rec.incarnation or (
                    update.incarnation == rec.incarnation and update.kind == KIND_ALIVE))):
                continue
            self._apply(update, sender, now_ms)

    def _merge(self, states: tuple[Update, ...], sender: str, now_ms: int, join: bool = False) -> None:
        """Merge a remote full state (memberlist mergeState): a remote "dead" becomes a suspicion here.

        Merged facts are not re-gossiped (the remote side already spreads them; re-gossiping a whole
        member list makes every join an O(N) broadcast storm), except a joiner's own entry.
        """
        members = self._members
        me = self._me
        for u in states:
            node_id = u.node_id
            rec = members.get(node_id)
            if rec is not None and rec is not me:
                # Most of a full state is old news; skip what `_apply` would ignore anyway (an older
                # incarnation never applies, an alive one must be newer) before building anything.
                if u.incarnation < rec.incarnation or (u.incarnation == rec.incarnation and u.kind == KIND_ALIVE):
                    continue
            if node_id == self.node_id:
                self._about_me(u, sender, now_ms)
                continue
            if u.kind == KIND_DEAD:
                if node_id not in self._members:
                    # Remember it (no event) so it is reconnect-probed: how healed partitions find each other.
                    self._add_gone(u, DEAD, now_ms)
                    continue
                u = Update(KIND_SUSPECT, node_id, u.incarnation, u.address, sender, None)
            elif u.kind == KIND_LEFT and node_id not in self._members:
                self._add_gone(u, LEFT, now_ms)
                continue
            elif u.kind == KIND_SUSPECT:
                rec = self._members.get(node_id)
                if rec is not None and rec.state == SUSPECT and rec.incarnation == u.incarnation:
                    # Not a confirmation: a state carries no accuser, and it may be our own accusation
                    # echoed back (memberlist mergeState confirms as the local node, not the sender;
                    # decision 0044).
                    continue
            self._apply(u, sender, now_ms, gossip=join and node_id == sender)

    def _apply(self, u: Update, sender: str, now_ms: int, gossip: bool = True) -> None:
        """Apply one update through the transition table; re-gossip what was news (if `gossip`)."""
        node_id = u.node_id
        if node_id == self.node_id:
            self._about_me(u, sender, now_ms)
            return
        rec = self._members.get(node_id)
        kind = u.kind
        if rec is None:
            if kind == KIND_ALIVE:
                self._add_alive(u, now_ms, gossip)
            else:
                self._counters["updates_unknown_member"] += 1
            return
        if u.incarnation < rec.incarnation or (u.incarnation == rec.incarnation and kind == KIND_ALIVE):
            return  # old news, ignored by every rule below (also tested in `_merge` and `_apply_all`, keep in step)
        suspicion = self._suspicions.get(node_id) if rec.state == SUSPECT else None
        if (kind == KIND_DEAD and u.incarnation == rec.incarnation and rec.state in _LIVE
                and self._verdict_held(u, rec, suspicion, sender, now_ms)):
            self._counters["stale_verdicts"] += 1
            return
        if kind == KIND_DEAD and rec.state == ALIVE and u.incarnation >= rec.incarnation:
            # Someone else's verdict on a member we never suspected (it may be stale: queued behind a
            # partition, or from the other side of one). Suspect it instead, so it can still refute.
            u = Update(KIND_SUSPECT, node_id, u.incarnation, u.address, u.origin or sender, None)
            kind = KIND_SUSPECT
        if kind == KIND_SUSPECT and rec.state == SUSPECT and u.incarnation == rec.incarnation:
            if suspicion is not None and suspicion.confirm(u.origin or sender):
                self._counters["confirmations"] += 1
                self._push_timer(suspicion.deadline_ms, _TIMER_SUSPICION, node_id)
                if gossip:
                    self._enqueue(u)
            return
        result = transition(rec.state, kind, rec.incarnation, u.incarnation)
        if result is None:
            return
        new_state, event_type = result
        self._counters["updates_applied"] += 1
        old_state = rec.state
        address, metadata = rec.address, rec.metadata
        if kind == KIND_ALIVE:
            changed = u.address != address or (u.metadata is not None and u.metadata != metadata)
            if u.address and u.address != address:
                address = u.address
            if u.metadata is not None:
                metadata = u.metadata
            if old_state == ALIVE:
                rec = self._replace(rec, ALIVE, u.incarnation, address, metadata)
                if changed:
                    self._emit(ev.MemberUpdated(node_id, rec.address, rec.incarnation, dict(rec.metadata)))
                if gossip:
                    self._enqueue(u)
                return
        rec = self._replace(rec, old_state, u.incarnation, address, metadata)
        rec = self._set_state(rec, new_state, u.origin or sender, now_ms)
        if event_type is ev.MemberAlive:
            self._emit(ev.MemberAlive(node_id, rec.address, rec.incarnation, old_state))
        elif event_type is ev.MemberSuspected:
            self._emit(ev.MemberSuspected(node_id, rec.incarnation, u.origin or sender))
        elif event_type is ev.MemberFailed:
            self._counters["members_failed"] += 1
            self._emit(ev.MemberFailed(node_id, rec.incarnation))
        elif event_type is ev.MemberLeft:
            self._emit(ev.MemberLeft(node_id, rec.incarnation))
        if gossip:
            self._enqueue(u)

    def _verdict_held(self, u: Update, rec: MemberRecord, suspicion: Suspicion | None, sender: str, now_ms: int) -> bool:
        """A third party's dead verdict about a member we hold alive or suspect, at its incarnation:
        True if it must not kill here (decisions 0044, 0045). A true verdict follows a crash by a whole
        suspicion timeout (at least the minimum) of silence, whose suspicion gossip reached us first."""
        node_id = rec.node_id
        accuser = u.origin or sender
        heard = self._heard_from.get(node_id)
        if heard is not None and now_ms - heard < self._susp_min_ms:
            # The member spoke to us within that time: the verdict comes from the far side of a partition
            # that has healed (or from loss only its accuser saw). Tell the member, whose refutation then
            # overrides the verdict everywhere.
            if self._rate_ok(node_id, now_ms):
                self._send(rec.address, node_id, Gossip((u,)))
            return True
        if suspicion is None:
            return False  # alive here: `_apply` turns the verdict into a suspicion
        if len(suspicion.accusers) == 1 and accuser in suspicion.accusers:
            # Our suspicion is nothing but this node's accusation (often its earlier copy of this very
            # verdict, turned into a suspicion by `_apply`): a second copy of one rumour is no evidence.
            # With any other accuser (our own failed probe included) the verdict stands (0044).
            return True
        if now_ms - suspicion.start_ms < self._susp_min_ms // 2 and self.node_id not in suspicion.accusers:
            # We learnt of the suspicion only just now, from others: suspicion and verdict arriving
            # together are the queues of a healed partition's far side. The verdict confirms (shortens
            # the timer); our own probe of the member (`_to_check`), the timer or a later copy decides.
            if suspicion.confirm(accuser):
                self._counters["confirmations"] += 1
                self._push_timer(suspicion.deadline_ms, _TIMER_SUSPICION, node_id)
            return True
        return False

    def _about_me(self, u: Update, sender: str, now_ms: int) -> None:
        """Someone talks about us: refute any suspicion, death or stale alive (SWIM §4.2)."""
        if self._leaving:
            return
        me = self._me
        if u.kind == KIND_ALIVE:
            if u.incarnation < me.incarnation or (u.incarnation == me.incarnation and u.address == self.address):
                return
        elif u.incarnation < me.incarnation:
            # A stale accusation: its carrier missed our refutation. Tell it directly (rate-limited).
            carrier = self._members.get(sender)
            if carrier is not None and carrier.state in _LIVE and self._rate_ok("\0" + sender, now_ms):
                self._send(carrier.address, sender, Gossip((self._self_alive(),)))
            return
        me.incarnation = u.incarnation + 1
        self._counters["refutations"] += 1
        self._awareness.apply(1)  # Lifeguard: being accused hints that we are the slow one
        self._emit(ev.IncarnationChanged(me.incarnation, "refute"))
        alive = self._self_alive()
        self._enqueue(alive)
        accuser = self._members.get(u.origin) if u.origin else None
        if accuser is None or accuser.node_id == self.node_id:
            accuser = self._members.get(sender)
        if accuser is not None and accuser.state in _LIVE:
            self._send(accuser.address, accuser.node_id, Gossip((alive,)))

    def _replace(self, rec: MemberRecord, state: str, incarnation: int, address: str,
                 metadata: Mapping[str, str] | None) -> MemberRecord:
        """Store the (shared) record with these fields in place of `rec`; keeps the seed address index."""
        new = self._interner.record(rec.node_id, address, state, incarnation, metadata)
        self._members[rec.node_id] = new
        if new.address != rec.address:
            by_address = self._by_address
            if by_address.get(rec.address) == rec.node_id:
                del by_address[rec.address]
            if new.address in self._seeds:
                by_address[new.address] = rec.node_id
        return new

    def _set_state(self, rec: MemberRecord, new_state: str, accuser: str, now_ms: int) -> MemberRecord:
        """Move `rec` to `new_state`; returns the record now held (records are replaced, never changed)."""
        old_state = rec.state
        node_id = rec.node_id
        if old_state != new_state:
            rec = self._replace(rec, new_state, rec.incarnation, rec.address, rec.metadata)
        if new_state == DEAD or new_state == LEFT:
            self._since[node_id] = now_ms
        else:
            self._since.pop(node_id, None)
        was_live = old_state == ALIVE or old_state == SUSPECT
        is_live = new_state == ALIVE or new_state == SUSPECT
        if was_live and not is_live:
            self._live_remove(rec)
            self._gone_order.append(rec.node_id)
        elif is_live and not was_live:
            self._live_add(rec)
        if new_state == SUSPECT:
            self._counters["suspicions"] += 1
            if self._resize_due:
                self._resize()
            s = Suspicion(rec.incarnation, accuser, self._k, self._susp_min_ms, self._susp_max_ms, now_ms)
            self._suspicions[node_id] = s
            self._push_timer(s.deadline_ms, _TIMER_SUSPICION, rec.node_id)
            if accuser != self.node_id and len(self._to_check) < MAX_SUSPECTS_TO_CHECK:
                # Probe it next period: a live suspect hears the suspicion on our ping and refutes to us
                # directly; a dead one gives an independent Lifeguard confirmation. No extra messages.
                self._to_check[rec.node_id] = None
        else:
            self._suspicions.pop(node_id, None)
        return rec

    def _add_alive(self, u: Update, now_ms: int, gossip: bool) -> None:
        # Records come from the interner: every core in a process (the simulator runs thousands) then
        # shares one record (and one copy of its strings) instead of holding its own per member.
        rec = self._interner.record(u.node_id, u.address, ALIVE, u.incarnation, u.metadata)
        self._members[rec.node_id] = rec
        if rec.address in self._seeds:
            self._by_address[rec.address] = rec.node_id
        self._live_add(rec)
        self._counters["updates_applied"] += 1
        self._emit(ev.MemberJoined(u.node_id, u.address, u.incarnation, dict(rec.metadata)))
        if gossip:
            self._enqueue(u)

    def _add_gone(self, u: Update, state: str, now_ms: int) -> None:
        rec = self._interner.record(u.node_id, u.address, state, u.incarnation, None)
        self._members[rec.node_id] = rec
        self._since[rec.node_id] = now_ms
        if rec.address in self._seeds and rec.address not in self._by_address:
            self._by_address[rec.address] = rec.node_id
        self._gone_order.append(rec.node_id)

    def _suspicion_timeout(self, node_id: str, deadline: int, now_ms: int) -> None:
        rec = self._members.get(node_id)
        s = self._suspicions.get(node_id)
        if rec is None or s is None or s.deadline_ms != deadline:
            return
        if transition(rec.state, TIMEOUT, rec.incarnation, rec.incarnation) is None:
            return
        score = self._awareness.score
        in_contact = s.rechecks == 0 or self._heard_ms > s.rechecked_ms
        if score and in_contact and s.confirmations < s.k and s.rechecks < MAX_SUSPICION_RECHECKS and not self._leaving:
            # Lifeguard LHA spirit: poor local health means we have been failing probes (cut off,
            # overloaded), so we may also have missed the refutation, and too few others confirmed
            # the suspicion to outweigh that. Probe the suspect once more (carrying the suspicion)
            # before declaring it; an answer clears it (SWIM §4.2), a failed probe once our health is
            # back declares it at once; while our health stays poor the timer is extended again, up
            # to MAX_SUSPICION_RECHECKS times, but only while we hear from someone: a node that heard
            # nothing since the last extension is cut off, and its own verdict stands (decision 0044).
            s.rechecks += 1
            s.rechecked_ms = now_ms
            s.deadline_ms = now_ms + 2 * self.profile.probe_interval_ms * (score + 1)
            self._push_timer(s.deadline_ms, _TIMER_SUSPICION, node_id)
            self._counters["suspicion_rechecks"] += 1
            if len(self._recheck) < MAX_SUSPECTS_TO_RECHECK:
                self._recheck[node_id] = None
                if self._probe is None:
                    self._next_probe_ms = min(self._next_probe_ms, now_ms)
            return
        self._declare_dead(rec, now_ms)

    def _declare_dead(self, rec: MemberRecord, now_ms: int) -> None:
        """Our own verdict on a suspect whose timer ran out (or whose re-check probe failed)."""
        node_id = rec.node_id
        s = self._suspicions.get(node_id)
        if s is not None and s.confirmations < s.k:
            self._counters["degraded_timeouts"] += 1  # memberlist.degraded.timeout
        rec = self._set_state(rec, DEAD, self.node_id, now_ms)
        self._counters["members_failed"] += 1
        self._emit(ev.MemberFailed(node_id, rec.incarnation))
        self._enqueue(Update(KIND_DEAD, node_id, rec.incarnation, rec.address, self.node_id, None))

    # ------------------------------------------------------------------ probing

    def _probe_tick(self, now_ms: int) -> None:
        p = self.profile
        scale = self._awareness.score + 1
        self._next_probe_ms = now_ms + p.probe_interval_ms * scale
        target = None
        while self._recheck:
            node_id = next(iter(self._recheck))
            del self._recheck[node_id]
            rec = self._members.get(node_id)
            s = self._suspicions.get(node_id)
            if rec is not None and rec.state == SUSPECT and s is not None and s.rechecks:
                target = node_id
                break
        # Alternate suspect checks with round robin, so the SWIM time bound on probing everyone holds.
        checked_last = self._checked_last or target is not None
        if target is None:
            self._checked_last = False
        while self._to_check and not checked_last:
            node_id = next(iter(self._to_check))
            del self._to_check[node_id]
            rec = self._members.get(node_id)
            s = self._suspicions.get(node_id) if rec is not None and rec.state == SUSPECT else None
            if s is not None and s.confirmations < s.k and self.node_id not in s.accusers:
                target = node_id
                self._checked_last = True
                break
        if target is None:
            target = self._order.next(self._live_members(), self._members)
            if target is None:
                return
        rec = self._members[target]
        seq = self._next_seq()
        self._probe = _Probe(target, rec.address, seq, now_ms + p.probe_timeout_ms * scale, now_ms + p.probe_interval_ms * scale)
        self._send(rec.address, target, Ping(seq, self.address, self._piggyback(target)))
        self._counters["pings_sent"] += 1

    def _start_indirect(self, probe: _Probe, now_ms: int) -> None:
        probe.indirect = True
        helpers = self._helpers(probe.target)
        probe.nacks_expected = len(helpers)
        request = PingReq(probe.seq, probe.target, probe.address, self.address)
        for node_id in helpers:
            self._send(self._members[node_id].address, node_id, request)
        self._counters["ping_reqs_sent"] += len(helpers)
        # A second direct ping with the indirect ones (memberlist sends a TCP fallback ping here).
        self._send(probe.address, probe.target, Ping(probe.seq, self.address, self._piggyback(probe.target)))
        self._counters["pings_sent"] += 1

    def _probe_failed(self, probe: _Probe, now_ms: int) -> None:
        self._probe = None
        self._counters["probes_failed"] += 1
        # Lifeguard: a helper that did not even nack is evidence that *we* are the unhealthy one.
        if probe.nacks_expected:
            missed = probe.nacks_expected - probe.nacks
            if missed > 0:
                self._awareness.apply(missed)
        else:
            self._awareness.apply(1)
        rec = self._members.get(probe.target)
        if rec is None or rec.state not in _LIVE:
            return
        update = Update(KIND_SUSPECT, rec.node_id, rec.incarnation, rec.address, self.node_id, None)
        self._apply(update, self.node_id, now_ms)
        rec = self._members[probe.target]  # `_apply` stored a new record if the state changed
        s = self._suspicions.get(rec.node_id)
        if rec.state == SUSPECT and s is not None and s.rechecks:
            # Its timer already ran out and this was (or counts as) the re-check: declare it if our
            # health is back; otherwise the probe may have straddled a heal, so the timer decides (0044).
            if not self._awareness.score:
                self._declare_dead(rec, now_ms)
                return
        # Tell the suspect at once so it can refute before the news even spreads (Lifeguard buddy system).
        self._send(rec.address, rec.node_id, Gossip((update,)))

    def _relay_timeout(self, seq: int, deadline: int) -> None:
        relay = self._relays.get(seq)
        if relay is None or relay.deadline_ms != deadline:
            return
        del self._relays[seq]
        self._send(relay.origin_address, relay.origin, Nack(relay.origin_seq))
        self._counters["nacks_sent"] += 1

    def _tell_accused(self, rec: MemberRecord, now_ms: int) -> None:
        """A member we hold suspect or dead talks to us: tell it, so it refutes (rate-limited per member)."""
        if not self._rate_ok(rec.node_id, now_ms):
            return
        if rec.state == DEAD:
            update = Update(KIND_DEAD, rec.node_id, rec.incarnation, rec.address, self.node_id, None)
        else:
            s = self._suspicions.get(rec.node_id)
            accuser = next(iter(s.accusers)) if s is not None else self.node_id
            update = Update(KIND_SUSPECT, rec.node_id, rec.incarnation, rec.address, accuser, None)
        self._send(rec.address, rec.node_id, Gossip((update,)))

    def _answered_suspect(self, rec: MemberRecord, now_ms: int) -> None:
        """A suspect answered our probe (directly or through a helper): un-mark it here (SWIM §4.2).

        Not gossiped: alive at the same incarnation does not override anyone's suspect (§4.2
        precedence), so others still need the suspect's own refutation. A relayed ack proves life
        but the helper's ping did not carry the suspicion, so tell the suspect first. This is what
        saves a node that missed every copy of a refutation while its probes got through (0043).
        """
        self._tell_accused(rec, now_ms)
        self._counters["suspicions_cleared"] += 1
        self._set_state(rec, ALIVE, self.node_id, now_ms)
        self._emit(ev.MemberAlive(rec.node_id, rec.address, rec.incarnation, SUSPECT))

    # ------------------------------------------------------------------ gossip, anti-entropy, seeds

    def _gossip_tick(self, now_ms: int) -> None:
        self._next_gossip_ms = now_ms + self.profile.gossip_interval_ms
        limit = self.profile.max_gossip_updates
        for node_id in self._sample_live(self.profile.gossip_nodes, None):
            if self._resize_due:
                self._resize()
            updates = self._queue.take(limit)
            if not updates:
                break
            self._send(self._members[node_id].address, node_id, Gossip(updates))
            self._counters["gossip_sent"] += 1

    def _push_pull_tick(self, now_ms: int) -> None:
        period = self._push_pull_period()
        if self._follow_ups:
            self._follow_ups -= 1
            if self._follow_ups:
                scale = 1 << (JOIN_FOLLOW_UPS - self._follow_ups)
                interval = self.profile.probe_interval_ms
                period = min(period, self._rng.randrange(2 * scale * interval, 6 * scale * interval))
        self._next_push_pull_ms = now_ms + period
        peers = self._sample_live(1, None)
        if peers:
            self._send_push_pull(self._members[peers[0]].address, peers[0], join=False)

    def _reconnect_tick(self, now_ms: int) -> None:
        """Ping one dead member (and reap long-gone ones): the partition-healing half memberlist lacks."""
        p = self.profile
        self._next_reconnect_ms = now_ms + p.reconnect_interval_ms
        order = self._gone_order
        for _ in range(len(order)):
            if self._gone_next >= len(order):
                # Start a new pass over members still gone, deduplicated, in a fresh random order.
                order = [k for k in dict.fromkeys(order) if k in self._members and self._members[k].state not in _LIVE]
                self._rng.shuffle(order)
                self._gone_order = order
                self._gone_next = 0
                if not order:
                    return
            node_id = order[self._gone_next]
            self._gone_next += 1
            rec = self._members.get(node_id)
            if rec is None or rec.state in _LIVE:
                continue
            age = now_ms - self._since[node_id]
            if age >= (p.dead_reap_ms if rec.state == DEAD else p.left_reap_ms):
                self._reap(rec)
                continue
            if rec.state == DEAD:
                seq = self._next_seq()
                self._remember_ping(seq, ("reconnect", node_id))
                self._send(rec.address, node_id, Ping(seq, self.address, ()))
                self._counters["reconnect_pings"] += 1
                return

    def _seed_tick(self, now_ms: int) -> None:
        if not self._seeds:
            self._next_seed_ms = None
            return
        p = self.profile
        alone = not self._live_count
        if alone:
            targets: list[str] = []
            self._join()  # one seed per attempt, the next one in turn (decision 0059)
            self._next_seed_ms = now_ms + self._join_backoff_ms
            self._join_backoff_ms = min(self._join_backoff_ms * 2, p.seed_interval_ms)
        else:
            self._join_backoff_ms = p.probe_interval_ms
            self._next_seed_ms = now_ms + p.seed_interval_ms
            targets = [a for a in self._seeds if not self._address_live(a)]
        if len(targets) > MAX_SEED_CONTACTS_PER_TICK:
            start = self._seed_cursor % len(targets)
            targets = (targets[start:] + targets[:start])[:MAX_SEED_CONTACTS_PER_TICK]
            self._seed_cursor += MAX_SEED_CONTACTS_PER_TICK
        for address in targets:
            self._contact_seed(address, now_ms)
        if not alone and now_ms >= self._next_recontact_ms:
            # Slow anti-entropy with a seed even when everything looks fine (re-merges split clusters).
            self._next_recontact_ms = now_ms + p.seed_recontact_interval_ms
            seeds = list(self._seeds)
            self._send_push_pull(seeds[self._rng.randrange(len(seeds))], None, join=False)

    def _join(self) -> None:
        """Alone: a join push-pull to the next seed in turn, and our alive to a few other seeds.

        Any one seed's reply is a join; each further reply cost the joiner a merge of the whole cluster
        (at N = 1000, a third of all full-state entries a join phase handles). The other seeds still
        hear of us at once and gossip it, so the cluster learns the joiner as fast (decision 0059).
        """
        seeds = list(self._seeds)
        first = self._seed_cursor % len(seeds)
        self._seed_cursor += 1
        self._send_push_pull(seeds[first], None, join=True)
        others = seeds[first + 1:] + seeds[:first]
        if others:
            announce = Gossip((self._self_alive(),))
            for address in others[:MAX_SEED_CONTACTS_PER_TICK - 1]:
                self._send(address, None, announce)

    def _contact_seed(self, address: str, now_ms: int) -> None:
        if not self._live_count:
            self._send_push_pull(address, None, join=True)
            return
        seq = self._next_seq()
        self._remember_ping(seq, ("seed", address))
        self._send(address, None, Ping(seq, self.address, ()))
        self._counters["seed_pings"] += 1

    def _send_push_pull(self, address: str, peer_id: str | None, *, join: bool) -> None:
        self._send(address, peer_id, PushPull(join, self.address, self._full_state()))
        self._counters["joins_sent" if join else "push_pulls_sent"] += 1

    def _full_state(self) -> tuple[Update, ...]:
        new, kinds = _new_update, KIND_OF_STATE
        states = [new(Update, (kinds[rec.state], rec.node_id, rec.incarnation, rec.address, "",
                               rec.metadata if rec.state == ALIVE else None))
                  for rec in self._members.values()]
        # (memberlist caps push-pull state at 20 MiB; ours counts members)
        return tuple(states[:MAX_STATES_PER_PUSH_PULL])

    # ------------------------------------------------------------------ helpers

    def _self_alive(self) -> Update:
        return Update(KIND_ALIVE, self.node_id, self._me.incarnation, self.address, "", self._metadata)

    def _piggyback(self, target: str) -> tuple[Update, ...]:
        if self._resize_due:
            self._resize()
        updates = self._queue.take(self.profile.max_piggyback_updates)
        rec = self._members.get(target)
        s = self._suspicions.get(target) if rec is not None and rec.state == SUSPECT else None
        if s is not None:
            # Lifeguard buddy system: a probe of a suspect always carries its suspicion.
            accuser = next(iter(s.accusers))
            updates = updates + (Update(KIND_SUSPECT, target, rec.incarnation, rec.address, accuser, None),)
        return updates

    def _enqueue(self, update: Update) -> None:
        queue = self._queue
        before = queue.dropped
        # A queued update outlives the frame it came in (up to `broadcast_queue_max` per node while a
        # big cluster joins): hold the interner's shared copy, not the frame's decoded one.
        queue.enqueue(self._interner.update(update))
        if queue.dropped != before:
            self._counters["updates_dropped"] += 1

    def _send(self, address: str, peer_id: str | None, message: Message) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._counters["dropped_outbox_full"] += 1
            return
        self._outbox.append(Outgoing(address, peer_id, encode(message, self.cluster)))
        self._counters["frames_sent"] += 1

    def _emit(self, event: ev.NodeEvent) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self._counters["events_dropped"] += 1
        self._events.append(event)

    def _rate_ok(self, node_id: str, now_ms: int) -> bool:
        """At most one unsolicited notice per member per probe interval."""
        last = self._notified_ms.get(node_id)
        if last is not None and now_ms - last < self.profile.probe_interval_ms:
            return False
        if len(self._notified_ms) >= 4 * MAX_SEEDS + len(self._members):
            self._notified_ms.clear()
        self._notified_ms[node_id] = now_ms
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _remember_ping(self, seq: int, purpose: tuple[str, str]) -> None:
        pings = self._pings
        if len(pings) >= MAX_PENDING_PINGS:
            del pings[next(iter(pings))]
        pings[seq] = purpose

    def _push_timer(self, deadline: int, kind: int, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, kind, key))

    def _timer_stale(self, entry: tuple[int, int, int, Any]) -> bool:
        deadline, _, kind, key = entry
        if kind == _TIMER_SUSPICION:
            s = self._suspicions.get(key)
            return s is None or s.deadline_ms != deadline
        relay = self._relays.get(key)
        return relay is None or relay.deadline_ms != deadline

    def _helpers(self, target: str) -> list[str]:
        """Ping-req helpers: members that recently answered us first, then random live ones.

        Lifeguard counts a helper's missing nack against our own health. When part of the cluster is
        cut off, random helpers from there would push our health score to its max and slow every
        probe 8x; helpers known to reach us keep that signal about us, not about the partition.
        """
        want = self.profile.indirect_checks
        members = self._members
        known = [k for k in dict.fromkeys(reversed(self._recent_ok))
                 if k != target and k in members and members[k].state == ALIVE]
        if len(known) > want:
            known = self._rng.sample(known, want)
        if len(known) < want:
            for k in self._sample_live(want + len(known) + 1, target):
                if k not in known:
                    known.append(k)
                    if len(known) >= want:
                        break
        return known

    def _sample_live(self, count: int, exclude: str | None) -> list[str]:
        """Up to `count` distinct random live members other than `exclude`; O(count) expected."""
        live = self._live
        members = self._members
        n = self._live_count
        if exclude is not None:
            rec = members.get(exclude)
            if rec is not None and (rec.state == ALIVE or rec.state == SUSPECT):
                n -= 1
        if n <= 0 or count <= 0:
            return []
        if n <= count:
            return [k for k in self._live_members() if k != exclude]
        picked: dict[str, None] = {}
        rng = self._rng
        while len(picked) < count:
            # Rejection sampling: departed entries are at most half the list (`_live_remove` compacts).
            node_id = live[rng.randrange(len(live))]
            if node_id != exclude:
                rec = members[node_id]
                if rec.state == ALIVE or rec.state == SUSPECT:
                    picked[node_id] = None
        return list(picked)

    def _live_add(self, rec: MemberRecord) -> None:
        """`rec` became alive or suspect. The live list keeps departed members until compaction (no
        per-member position index: that dict cost ~75 bytes per member per node)."""
        self._live_count += 1
        if rec.node_id in self._stale:
            del self._stale[rec.node_id]
        else:
            self._live.append(rec.node_id)
        self._order.add(rec.node_id)
        self._resize_due = True

    def _live_remove(self, rec: MemberRecord) -> None:
        """`rec` is no longer alive or suspect; its list entry goes stale until the next compaction."""
        self._live_count -= 1
        self._stale[rec.node_id] = None
        if len(self._stale) > LIVE_STALE_MIN and len(self._stale) > self._live_count:
            self._compact_live()
        self._resize_due = True

    def _live_members(self) -> list[str]:
        """The live list without departed entries."""
        if self._stale:
            self._compact_live()
        return self._live

    def _compact_live(self) -> None:
        members = self._members
        kept = []
        for node_id in self._live:
            rec = members.get(node_id)
            if rec is None:
                continue
            if rec.state == ALIVE or rec.state == SUSPECT:
                kept.append(node_id)
        self._live = kept
        self._stale = {}

    def _address_live(self, address: str) -> bool:
        # A seed's alias may name a sender that was never admitted, or one reaped since: not live.
        rec = self._members.get(self._by_address.get(address, ""))
        return rec is not None and rec.state in _LIVE

    def _index_seed_addresses(self, addresses: list[str]) -> None:
        """New seeds: note which known member listens at each (a live one if several do)."""
        wanted = set(addresses)
        by_address = self._by_address
        for rec in self._members.values():
            address = rec.address
            if address in wanted and rec is not self._me:
                held = by_address.get(address)
                if held is None or (rec.state in _LIVE and self._members[held].state not in _LIVE):
                    by_address[address] = rec.node_id

    def _reap(self, rec: MemberRecord) -> None:
        del self._members[rec.node_id]
        self._since.pop(rec.node_id, None)
        if rec.node_id in self._stale:
            # Its stale live-list entry must go before a new record under the same id could be listed.
            self._compact_live()
        self._notified_ms.pop(rec.node_id, None)
        if self._by_address.get(rec.address) == rec.node_id:
            del self._by_address[rec.address]
        self._counters["members_reaped"] += 1

    def _push_pull_period(self) -> int:
        return push_pull_interval_ms(self.profile.push_pull_interval_ms, self._live_count + 1)

    def _resize(self) -> None:
        """Recompute the size-dependent limits (suspicion timeouts, retransmit limit) for N members.

        Called lazily (`_resize_due`) just before a limit is used: a join of N members would otherwise
        recompute them N times per node."""
        self._resize_due = False
        p = self.profile
        n = self._live_count + 1
        self._susp_min_ms, self._susp_max_ms = suspicion_timeouts_ms(
            p.suspicion_min_ms_per_log10_nodes, p.suspicion_max_timeout_mult, n
        )
        # memberlist state.go suspectNode: no confirmations are expected when too few nodes could send them.
        self._k = p.suspicion_confirmations if n - 2 >= p.suspicion_confirmations else 0
        # memberlist sizes retransmits by every known node (dead ones included).
        self._queue.set_limit(retransmit_limit(p.retransmit_mult, max(n, len(self._members))))


_new_update = tuple.__new__
"""Builds an `Update` from a 6-tuple without the named tuple's Python-level constructor."""

"""Cluster-wide broadcast and topic publish: Plumtree (Leitão, Pereira, Rodrigues, "Epidemic Broadcast
Trees", SRDS 2007) over a bounded, symmetric active view (HyParView, DSN 2007, simplified).

Why: per-node cost must not grow with the cluster. Each node talks to at most `active_max` peers;
a message crosses each eager (tree) link once and is announced by id (IHAVE) on the other active
links, so per node and message the cost is O(active_max) whatever N is.

- Active view: each node keeps `active_min`..`active_max` neighbours picked at random from the live
  members that membership reports (the full membership is HyParView's passive view). Links are
  symmetric: NEIGHBOR asks, the peer accepts while it has room (always when the asker is isolated,
  HyParView's high-priority join) and DISCONNECT tells a peer it was dropped.
- Plumtree: a new message is delivered, then pushed on eager links and announced on lazy links. A
  duplicate turns its link lazy (PRUNE both ways), so the eager links converge to a spanning tree.
  An IHAVE for an unknown id starts a timer; if the message does not arrive in `graft_timeout_ms`
  the node GRAFTs the announcer (its link turns eager and it resends), then the next announcer every
  `graft_retry_ms` (the paper's timers 1 and 2). Lost eager links are repaired this way.
- Dedup by message id in a bounded seen-set; messages stay in a bounded cache to answer GRAFTs.
- Topics: a message carries a topic ("" = everyone). Every node receives every message and the node
  layer hands it to local agents subscribed to the topic; subscriptions are replicated with agent
  records by the registry. (Sparse topics still cost every node one message; see messaging.md.)
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from agentnode.agent_messages import (
    MAX_CAPABILITY_CHARS,
    MAX_HOPS,
    MAX_IHAVE_ENTRIES,
    MAX_PAYLOAD_BYTES,
    BroadcastDisconnect,
    BroadcastGossip,
    BroadcastGraft,
    BroadcastIHave,
    BroadcastNeighbor,
    BroadcastNeighborReply,
    BroadcastPrune,
    FrameError,
    MessageId,
    Outgoing,
    decode,
    encode,
)
from agentnode.routing import LivePeers

__sans_io__ = True

__all__ = ["Broadcast", "BroadcastConfig", "BroadcastReceived"]

MAX_MISSING = 10_000
"""Announced-but-unseen message ids tracked for grafting; more are ignored and counted."""
MAX_ANNOUNCERS = 8
"""Announcers remembered per missing message."""
MAX_GRAFTS = 16
"""GRAFTs sent for one missing message, cycling through its announcers (a lost resend is asked again;
with links starting lazy, more nodes depend on a GRAFT for a new tree's first messages)."""
MAX_EVENTS = 100_000
"""Events waiting for `next_event`; beyond this the oldest are dropped and counted."""
MAX_OUTBOX = 100_000
"""Frames waiting for `messages_to_send`; beyond this new frames are dropped and counted."""


@dataclass(frozen=True, slots=True)
class BroadcastConfig:
    """Broadcast knobs; integer milliseconds."""

    active_min: int = 4
    """Neighbours a node seeks (HyParView active view: Partisan min 3, max 6; hashicorp/hyparview 5 at 10k nodes)."""
    active_max: int = 8
    """Most neighbours a node keeps; requests beyond are refused (but never from an isolated node)."""
    eager_at_start: int = 3
    """A new neighbour link starts eager only while this node has fewer eager links; later ones start lazy
    (IHAVE). Plumtree starts every link eager and prunes on duplicates, so the first broadcast over a fresh
    overlay floods all 4-8 links; starting near a tree bounds that message's duplicates (decision 0116)."""
    lazy_interval_ms: int = 20
    """IHAVE announcements are batched this long (Partisan lazy_tick_period is 1 s; a LAN repair needs less)."""
    graft_timeout_ms: int = 60
    """Wait after the first IHAVE before GRAFTing (Plumtree timer 1; > eager path latency + lazy batching)."""
    graft_retry_ms: int = 40
    """Wait before GRAFTing the next announcer (Plumtree timer 2)."""
    maintain_interval_ms: int = 1_000
    """Check the active view and ask for neighbours if below `active_min`."""
    neighbor_timeout_ms: int = 2_000
    """An unanswered NEIGHBOR request is forgotten after this long."""
    seen_max: int = 200_000
    """Message ids remembered for dedup."""
    cache_max: int = 20_000
    """Messages kept to answer GRAFTs."""

    def __post_init__(self) -> None:
        if not 1 <= self.active_min <= self.active_max:
            raise ValueError("need 1 <= active_min <= active_max")
        if not 1 <= self.eager_at_start <= self.active_max:
            raise ValueError("need 1 <= eager_at_start <= active_max (at least one eager link keeps the push path)")
        if min(self.graft_timeout_ms, self.graft_retry_ms, self.maintain_interval_ms, self.neighbor_timeout_ms) < 1:
            raise ValueError("timeouts must be positive")
        if self.lazy_interval_ms < 0 or self.seen_max < 1 or self.cache_max < 1:
            raise ValueError("lazy_interval_ms must be >= 0; seen_max and cache_max positive")


@dataclass(frozen=True, slots=True)
class BroadcastReceived:
    """A broadcast or topic message reached this node (emitted once per message, also for our own)."""

    msg_id: MessageId
    topic: str
    payload: bytes
    hops: int
    """Links it crossed (0 for our own)."""
    from_node: str
    """The neighbour it came from (this node for our own)."""


class _Missing:
    __slots__ = ("announcers", "due", "grafts")

    def __init__(self, due: int) -> None:
        self.announcers: deque[str] = deque()
        self.due = due
        self.grafts = 0


_COUNTERS = (
    "frames_sent", "frames_received", "dropped_malformed", "dropped_wrong_cluster", "dropped_version",
    "dropped_outbox_full", "events_dropped", "broadcasts", "delivered", "duplicates", "gossip_sent",
    "ihave_sent", "ihave_ids_sent", "grafts_sent", "grafts_served", "graft_cache_misses", "prunes_sent",
    "repaired", "missing_overflow", "neighbor_requests", "neighbor_accepted", "neighbor_refused", "neighbor_unknown",
    "disconnects_sent", "evictions",
)
_T_MISSING, _T_LAZY, _T_MAINTAIN = 0, 1, 2


class Broadcast:
    """The sans-I/O broadcast core. API calls, `receive`, `handle_timer`; drain `messages_to_send`/`next_event`."""

    def __init__(self, node_id: str, *, cluster: str, epoch: int, rng: random.Random,
                 config: BroadcastConfig | None = None) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError("epoch must be a non-negative int, strictly greater after every restart (persist it)")
        if not isinstance(rng, random.Random):
            raise ValueError("rng must be a random.Random (seeded by the caller)")
        self.node_id = node_id
        self.cluster = cluster
        self.epoch = epoch
        self.config = config or BroadcastConfig()
        self._rng = rng
        self._counter = 0
        self._peers = LivePeers()
        self._eager: dict[str, None] = {}
        self._lazy: dict[str, None] = {}
        self._asked: dict[str, int] = {}
        self._seen: dict[MessageId, None] = {}
        self._cache: dict[MessageId, BroadcastGossip] = {}
        self._missing: dict[MessageId, _Missing] = {}
        self._announce: dict[str, list[tuple[MessageId, int]]] = {}
        self._lazy_at: int | None = None
        self._maintain_at: int | None = None
        self._timers: list[tuple[int, int, int, Any]] = []
        self._timer_seq = 0
        self._outbox: list[Outgoing] = []
        self._events: deque[BroadcastReceived] = deque()
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # -- views --------------------------------------------------------------------------------------

    @property
    def active(self) -> list[str]:
        """Current neighbours, sorted."""
        return sorted([*self._eager, *self._lazy])

    @property
    def eager(self) -> list[str]:
        return sorted(self._eager)

    @property
    def lazy(self) -> list[str]:
        return sorted(self._lazy)

    # -- membership ---------------------------------------------------------------------------------

    def member_up(self, node_id: str, address: str, now_ms: int) -> None:
        """A live member: a candidate neighbour. Asks it at once while the active view is short."""
        if node_id == self.node_id:
            return
        self._peers.add(node_id, address)
        if self._maintain_at is None:
            self._maintain_at = now_ms + self.config.maintain_interval_ms
        if self._active_count() + len(self._asked) < self.config.active_min and node_id not in self._asked \
                and not self._is_active(node_id):
            self._ask(node_id, now_ms)

    def member_suspect(self, node_id: str, now_ms: int) -> None:
        self._peers.set_suspect(node_id, True)

    def member_down(self, node_id: str, now_ms: int) -> None:
        """A dead or departed member leaves the views; the next maintenance tick refills."""
        self._peers.remove(node_id)
        self._asked.pop(node_id, None)
        self._announce.pop(node_id, None)
        if self._is_active(node_id):
            self._eager.pop(node_id, None)
            self._lazy.pop(node_id, None)
            self._refill(now_ms)

    # -- API ----------------------------------------------------------------------------------------

    def broadcast(self, payload: bytes, now_ms: int, *, topic: str = "") -> MessageId:
        """Send `payload` to every node (topic "" ) or to the nodes' `topic` subscribers. Returns its id."""
        if type(payload) is not bytes or len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload must be bytes of at most {MAX_PAYLOAD_BYTES} (serialise it first)")
        if not isinstance(topic, str) or len(topic) > MAX_CAPABILITY_CHARS:
            raise ValueError(f"topic must be a string of at most {MAX_CAPABILITY_CHARS} characters")
        self._counter += 1
        msg_id = MessageId(self.node_id, self.epoch, self._counter)
        self.counters["broadcasts"] += 1
        self._on_gossip(self.node_id, BroadcastGossip(msg_id, topic, payload, 0), now_ms, own=True)
        return msg_id

    # -- core shape ---------------------------------------------------------------------------------

    def receive(self, sender_id: str, frame: Any, now_ms: int) -> None:
        """One broadcast frame from the authenticated `sender_id`; garbage is counted and dropped."""
        self.counters["frames_received"] += 1
        try:
            msg = decode(frame, self.cluster)
        except FrameError as exc:
            self.counters[exc.counter] += 1
            return
        t = type(msg)
        if sender_id == self.node_id:
            self.counters["dropped_malformed"] += 1
        elif t is BroadcastGossip:
            self._on_gossip(sender_id, msg, now_ms)  # type: ignore[arg-type]
        elif t is BroadcastIHave:
            self._on_ihave(sender_id, msg, now_ms)  # type: ignore[arg-type]
        elif t is BroadcastGraft:
            self._on_graft(sender_id, msg)  # type: ignore[arg-type]
        elif t is BroadcastPrune:
            if sender_id in self._eager:
                del self._eager[sender_id]
                self._lazy[sender_id] = None
        elif t is BroadcastNeighbor:
            self._on_neighbor(sender_id, msg.urgent, now_ms)  # type: ignore[union-attr]
        elif t is BroadcastNeighborReply:
            self._on_neighbor_reply(sender_id, msg.accepted, now_ms)  # type: ignore[union-attr]
        elif t is BroadcastDisconnect:
            if self._is_active(sender_id):
                self._eager.pop(sender_id, None)
                self._lazy.pop(sender_id, None)
                self._refill(now_ms)
        else:
            self.counters["dropped_malformed"] += 1

    def handle_timer(self, now_ms: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            due, _, kind, key = heapq.heappop(timers)
            if kind == _T_MISSING:
                self._on_missing_timer(key, due, now_ms)
        if self._lazy_at is not None and now_ms >= self._lazy_at:
            self._lazy_at = None
            self._flush_announcements()
        if self._maintain_at is not None and now_ms >= self._maintain_at:
            self._maintain_at = now_ms + self.config.maintain_interval_ms
            timeout = self.config.neighbor_timeout_ms
            for node, asked in list(self._asked.items()):
                if now_ms - asked >= timeout:
                    del self._asked[node]
            self._refill(now_ms)

    def get_timer(self) -> int | None:
        due = [t for t in (self._lazy_at, self._maintain_at) if t is not None]
        if self._timers:
            due.append(self._timers[0][0])
        return min(due) if due else None

    def messages_to_send(self) -> list[Outgoing]:
        out = self._outbox
        self._outbox = []
        return out

    def next_event(self) -> BroadcastReceived | None:
        return self._events.popleft() if self._events else None

    # -- Plumtree -----------------------------------------------------------------------------------

    def _on_gossip(self, sender: str, msg: BroadcastGossip, now_ms: int, own: bool = False) -> None:
        msg_id = msg.msg_id
        if msg_id in self._seen:
            self.counters["duplicates"] += 1
            if not own:
                # Prune even a sender that is not eager here: it holds us as eager, or it would not push.
                if sender in self._eager:
                    del self._eager[sender]
                    self._lazy[sender] = None
                self._send(sender, BroadcastPrune())
                self.counters["prunes_sent"] += 1
            return
        self._remember(msg_id, msg)
        if self._missing.pop(msg_id, None) is not None:
            self.counters["repaired"] += 1
        self.counters["delivered"] += 1
        self._emit(BroadcastReceived(msg_id, msg.topic, msg.payload, msg.hops, sender))
        if not own:
            if sender in self._lazy:
                del self._lazy[sender]
                self._eager[sender] = None
            elif sender not in self._eager and self._active_count() < self.config.active_max:
                self._eager[sender] = None
        forward = BroadcastGossip(msg_id, msg.topic, msg.payload, msg.hops if own else min(MAX_HOPS, msg.hops + 1))
        hops = forward.hops
        for peer in list(self._eager):
            if peer != sender:
                self._send(peer, forward)
                self.counters["gossip_sent"] += 1
        for peer in self._lazy:
            if peer != sender:
                self._announce.setdefault(peer, []).append((msg_id, hops))
        if self._announce:
            if self.config.lazy_interval_ms == 0:
                self._flush_announcements()
            elif self._lazy_at is None:
                self._lazy_at = now_ms + self.config.lazy_interval_ms

    def _on_ihave(self, sender: str, msg: BroadcastIHave, now_ms: int) -> None:
        for msg_id, _hops in msg.entries:
            if msg_id in self._seen:
                continue
            missing = self._missing.get(msg_id)
            if missing is None:
                if len(self._missing) >= MAX_MISSING:
                    self.counters["missing_overflow"] += 1
                    continue
                missing = self._missing[msg_id] = _Missing(now_ms + self.config.graft_timeout_ms)
                self._push_timer(missing.due, _T_MISSING, msg_id)
            if len(missing.announcers) < MAX_ANNOUNCERS and sender not in missing.announcers:
                missing.announcers.append(sender)

    def _on_missing_timer(self, msg_id: MessageId, due: int, now_ms: int) -> None:
        missing = self._missing.get(msg_id)
        if missing is None or missing.due != due:
            return
        sent = False
        while missing.announcers and not sent:
            node = missing.announcers.popleft()
            if node in self._peers:
                if self._is_active(node) or self._active_count() < self.config.active_max:
                    self._lazy.pop(node, None)
                    self._eager[node] = None
                self._send(node, BroadcastGraft((msg_id,)))
                self.counters["grafts_sent"] += 1
                sent = True
                missing.grafts += 1
                if missing.grafts < MAX_GRAFTS:
                    missing.announcers.append(node)  # asked again if its resend is lost too
        if sent or missing.announcers:
            missing.due = now_ms + self.config.graft_retry_ms
            self._push_timer(missing.due, _T_MISSING, msg_id)
        else:
            del self._missing[msg_id]

    def _on_graft(self, sender: str, msg: BroadcastGraft) -> None:
        if sender in self._lazy or (not self._is_active(sender) and self._active_count() < self.config.active_max):
            self._lazy.pop(sender, None)
            self._eager[sender] = None
        for msg_id in msg.msg_ids:
            cached = self._cache.get(msg_id)
            if cached is None:
                self.counters["graft_cache_misses"] += 1
                continue
            self._send(sender, cached)
            self.counters["grafts_served"] += 1

    def _flush_announcements(self) -> None:
        pending = self._announce
        self._announce = {}
        for peer, entries in pending.items():
            if not self._is_active(peer):
                continue
            for i in range(0, len(entries), MAX_IHAVE_ENTRIES):
                chunk = tuple(entries[i:i + MAX_IHAVE_ENTRIES])
                self._send(peer, BroadcastIHave(chunk))
                self.counters["ihave_sent"] += 1
                self.counters["ihave_ids_sent"] += len(chunk)

    # -- active view (HyParView-lite) -----------------------------------------------------------------

    def _on_neighbor(self, sender: str, urgent: bool, now_ms: int) -> None:
        if sender not in self._peers:
            # Membership has not reported it yet (no address): ignore; its request times out and it asks again.
            self.counters["neighbor_unknown"] += 1
            return
        if self._is_active(sender):
            self._send(sender, BroadcastNeighborReply(True))
            return
        if self._active_count() >= self.config.active_max:
            if not urgent:
                self.counters["neighbor_refused"] += 1
                self._send(sender, BroadcastNeighborReply(False))
                return
            self._evict_one()
        self._asked.pop(sender, None)
        self._link(sender)
        self.counters["neighbor_accepted"] += 1
        self._send(sender, BroadcastNeighborReply(True))

    def _on_neighbor_reply(self, sender: str, accepted: bool, now_ms: int) -> None:
        was_asked = self._asked.pop(sender, None) is not None
        if not accepted or sender not in self._peers:
            if was_asked:
                self._refill(now_ms)
            return
        if self._is_active(sender):
            return
        if self._active_count() >= self.config.active_max:
            self._send(sender, BroadcastDisconnect())
            self.counters["disconnects_sent"] += 1
            return
        self._link(sender)

    def _link(self, node: str) -> None:
        """A new neighbour: eager while this node has few eager links, else lazy (a GRAFT makes it eager)."""
        if len(self._eager) < self.config.eager_at_start:
            self._eager[node] = None
        else:
            self._lazy[node] = None

    def _refill(self, now_ms: int) -> None:
        need = self.config.active_min - self._active_count() - len(self._asked)
        if need <= 0:
            return
        exclude = [*self._eager, *self._lazy, *self._asked]
        for node in self._peers.sample(need, self._rng, exclude=exclude):
            self._ask(node, now_ms)

    def _ask(self, node: str, now_ms: int) -> None:
        self._asked[node] = now_ms
        self.counters["neighbor_requests"] += 1
        # Urgent (must be accepted) only for the first ask of an isolated node, so one join evicts at most one link.
        self._send(node, BroadcastNeighbor(self._active_count() == 0 and len(self._asked) == 1))

    def _evict_one(self) -> None:
        pool = sorted(self._lazy) or sorted(self._eager)
        victim = pool[self._rng.randrange(len(pool))]
        self._eager.pop(victim, None)
        self._lazy.pop(victim, None)
        self._send(victim, BroadcastDisconnect())
        self.counters["evictions"] += 1
        self.counters["disconnects_sent"] += 1

    # -- helpers ------------------------------------------------------------------------------------

    def _active_count(self) -> int:
        return len(self._eager) + len(self._lazy)

    def _is_active(self, node: str) -> bool:
        return node in self._eager or node in self._lazy

    def _remember(self, msg_id: MessageId, msg: BroadcastGossip) -> None:
        seen = self._seen
        if len(seen) >= self.config.seen_max:
            del seen[next(iter(seen))]
        seen[msg_id] = None
        cache = self._cache
        if len(cache) >= self.config.cache_max:
            del cache[next(iter(cache))]
        cache[msg_id] = msg

    def _push_timer(self, due: int, kind: int, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (due, self._timer_seq, kind, key))

    def _send(self, peer: str, msg: Any) -> None:
        address = self._peers.address(peer)
        if address is None:
            return
        self._append(Outgoing(address, peer, encode(msg, self.cluster)))

    def _append(self, out: Outgoing) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self.counters["dropped_outbox_full"] += 1
            return
        self._outbox.append(out)
        self.counters["frames_sent"] += 1

    def _emit(self, event: BroadcastReceived) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)

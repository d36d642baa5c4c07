"""The simulated network: per-link latency, loss, duplication, reordering, partitions, clogging.

The model works at the level of frames, the unit the Transport contract moves (transport/base.py):
TLS/QUIC are replaced, not simulated. By default each directed link is FIFO like a TCP
connection; the reordering fault lets a frame overtake (QUIC streams, reconnects). All draws
come from one seeded `random.Random`, in event order, so a seed replays exactly (TigerBeetle
`packet_simulator.zig` has the same knobs: delay, loss, replay, partition, clog).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__sans_io__ = True

__all__ = ["LAN", "NETWORK_PROFILES", "WAN", "LatencyProfile", "SimNetwork"]


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """One-way latency model: lognormal inside a region, a fixed base per region pair, capped tail."""

    name: str
    regions: int
    """Nodes are spread round-robin over this many regions (1 = one LAN)."""
    local_ms_median: float
    """Median one-way latency between two nodes in the same region."""
    local_sigma: float
    """Lognormal shape of the local latency (0.5 gives p99 about 3.2x the median)."""
    inter_region_ms_min: int
    """Lower bound of the base one-way latency between two regions (drawn once per region pair)."""
    inter_region_ms_max: int
    inter_region_jitter: float
    """Lognormal shape applied to the inter-region base per frame."""
    latency_ms_min: int = 1
    latency_ms_max: int = 2_000
    """Cap on one frame's latency; beyond it a TCP connection would have given up anyway."""

    def __post_init__(self) -> None:
        if self.regions < 1:
            raise ValueError("regions must be at least 1")
        if not 0 < self.latency_ms_min <= self.latency_ms_max:
            raise ValueError("need 0 < latency_ms_min <= latency_ms_max")
        if self.inter_region_ms_min > self.inter_region_ms_max:
            raise ValueError("inter_region_ms_min must not exceed inter_region_ms_max")


LAN = LatencyProfile(
    name="lan", regions=1, local_ms_median=1.0, local_sigma=0.5,
    inter_region_ms_min=0, inter_region_ms_max=0, inter_region_jitter=0.0, latency_ms_max=200,
)
"""One data centre: about 1 ms one way, p99 about 3 ms (round-trip under the 500 ms memberlist LAN probe timeout)."""

WAN = LatencyProfile(
    name="wan", regions=3, local_ms_median=1.0, local_sigma=0.5,
    inter_region_ms_min=20, inter_region_ms_max=120, inter_region_jitter=0.1, latency_ms_max=2_000,
)
"""Three regions, 20-120 ms one way between them (inside the 3 s memberlist WAN probe timeout)."""

NETWORK_PROFILES = {"lan": LAN, "wan": WAN}

DUPLICATE_DELAY_MS_MAX = 50
"""A duplicated frame arrives up to this much after the original."""
REORDER_DELAY_MS_MAX = 30
"""A reordered frame is held back up to this much, past later frames on its link."""
CLOG_QUEUE_MS_MAX = 5_000
"""A clogged link queues at most this much transmission time; later frames are dropped (tail drop)."""


class SimNetwork:
    """Decides, for each frame, when it arrives or that it is lost. Mutable fault state lives here."""

    def __init__(self, profile: LatencyProfile, capacity: int, rng: random.Random, *, fifo: bool = True) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 node")
        self.profile = profile
        self.capacity = capacity
        self.fifo = fifo
        self._rng = rng
        self.region_of = [i % profile.regions for i in range(capacity)]
        self._region_base_ms = [[0] * profile.regions for _ in range(profile.regions)]
        for a in range(profile.regions):
            for b in range(a + 1, profile.regions):
                base = rng.randint(profile.inter_region_ms_min, profile.inter_region_ms_max)
                self._region_base_ms[a][b] = self._region_base_ms[b][a] = base
        self._local_mu = math.log(profile.local_ms_median)
        # faults
        self.loss = 0.0
        self.loss_out = [0.0] * capacity
        self.loss_in = [0.0] * capacity
        self._lossy_nodes = 0
        self.duplicate_probability = 0.0
        self.reorder_probability = 0.0
        self.group_of = [0] * capacity
        self._blocked: set[tuple[int, int]] = set()
        self.egress_bytes_per_ms: dict[int, float] = {}
        self.ingress_bytes_per_ms: dict[int, float] = {}
        self._egress_free_at: dict[int, float] = {}
        self._ingress_free_at: dict[int, float] = {}
        self._last_arrival: dict[int, int] = {}
        # counters
        self.dropped_loss = 0
        self.dropped_partition = 0
        self.dropped_clog = 0
        self.duplicated = 0
        self.reordered = 0

    # ---- fault controls -------------------------------------------------------------------

    def set_loss(self, probability: float) -> None:
        """Drop every frame with this probability (uniform, independent)."""
        self.loss = _probability(probability)

    def set_node_loss(self, node: int, *, inbound: float = 0.0, outbound: float = 0.0) -> None:
        """Extra loss on frames to (`inbound`) and from (`outbound`) one node."""
        was = self.loss_in[node] > 0 or self.loss_out[node] > 0
        self.loss_in[node] = _probability(inbound)
        self.loss_out[node] = _probability(outbound)
        self._lossy_nodes += (self.loss_in[node] > 0 or self.loss_out[node] > 0) - was

    def set_duplicate(self, probability: float) -> None:
        self.duplicate_probability = _probability(probability)

    def set_reorder(self, probability: float) -> None:
        self.reorder_probability = _probability(probability)

    def partition(self, groups: list[list[int]], *, one_way: bool = False) -> None:
        """Split nodes into groups that cannot reach each other.

        With `one_way`, only frames from a lower-numbered group to a higher-numbered one are
        lost (an asymmetric partition: A hears B, B never hears A). Nodes not listed stay in
        group 0, together with the first group.
        """
        self.heal()
        for g, members in enumerate(groups):
            for node in members:
                self.group_of[node] = g
        for a in range(len(groups)):
            for b in range(len(groups)):
                if a < b or (a > b and not one_way):
                    self._blocked.add((a, b))

    def heal(self) -> None:
        """Remove every partition."""
        self._blocked.clear()
        self.group_of = [0] * self.capacity

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked)

    def cut(self) -> tuple[tuple[int, ...], frozenset[tuple[int, int]]]:
        """The partition now in force: (group of each node, blocked (from group, to group) pairs)."""
        return tuple(self.group_of), frozenset(self._blocked)

    def blocked(self, src: int, dst: int) -> bool:
        """True if a partition drops every frame from `src` to `dst`."""
        return bool(self._blocked) and (self.group_of[src], self.group_of[dst]) in self._blocked

    def clog(self, node: int, *, egress_bytes_per_s: int | None = None, ingress_bytes_per_s: int | None = None) -> None:
        """Limit a node's bandwidth; frames queue behind each other and tail-drop past a bound."""
        for limit, table in ((egress_bytes_per_s, self.egress_bytes_per_ms), (ingress_bytes_per_s, self.ingress_bytes_per_ms)):
            if limit is not None:
                if limit <= 0:
                    raise ValueError("bandwidth limits are positive bytes per second")
                table[node] = limit / 1000.0

    def unclog(self, node: int) -> None:
        self.egress_bytes_per_ms.pop(node, None)
        self.ingress_bytes_per_ms.pop(node, None)

    # ---- the hot path -------------------------------------------------------------------

    def route(self, src: int, dst: int, size: int, now_ms: int) -> int:
        """Arrival time of one frame of `size` bytes sent now, or -1 if it is lost."""
        rng = self._rng
        if self._blocked and (self.group_of[src], self.group_of[dst]) in self._blocked:
            self.dropped_partition += 1
            return -1
        if self.loss and rng.random() < self.loss:
            self.dropped_loss += 1
            return -1
        if self._lossy_nodes:
            p = 1.0 - (1.0 - self.loss_out[src]) * (1.0 - self.loss_in[dst])
            if p and rng.random() < p:
                self.dropped_loss += 1
                return -1
        latency = self.latency_ms(src, dst)
        start = float(now_ms)
        if self.egress_bytes_per_ms or self.ingress_bytes_per_ms:
            start = self._clog_start(src, dst, size, start)
            if start < 0:
                self.dropped_clog += 1
                return -1
        arrival = int(math.ceil(start)) + latency
        if self.reorder_probability and rng.random() < self.reorder_probability:
            self.reordered += 1
            return arrival + rng.randint(1, REORDER_DELAY_MS_MAX)
        if self.fifo:
            key = src * self.capacity + dst
            last = self._last_arrival.get(key, 0)
            if arrival < last:
                arrival = last
            self._last_arrival[key] = arrival
        return arrival

    def duplicate_arrival(self, arrival_ms: int) -> int:
        """When a duplicate of a frame arriving at `arrival_ms` arrives, or -1 for no duplicate."""
        if self.duplicate_probability and self._rng.random() < self.duplicate_probability:
            self.duplicated += 1
            return arrival_ms + self._rng.randint(0, DUPLICATE_DELAY_MS_MAX)
        return -1

    def latency_ms(self, src: int, dst: int) -> int:
        """One frame's one-way latency from `src` to `dst`."""
        p = self.profile
        ms = self._rng.lognormvariate(self._local_mu, p.local_sigma)
        if p.regions > 1:
            ra, rb = self.region_of[src], self.region_of[dst]
            if ra != rb:
                ms += self._region_base_ms[ra][rb] * self._rng.lognormvariate(0.0, p.inter_region_jitter)
        latency = int(ms + 0.5)
        if latency < p.latency_ms_min:
            return p.latency_ms_min
        return latency if latency < p.latency_ms_max else p.latency_ms_max

    def rtt_ms(self, src: int, dst: int) -> int:
        """A round-trip sample (used to time a refused connection)."""
        return self.latency_ms(src, dst) + self.latency_ms(dst, src)

    def forget_node(self, node: int) -> None:
        """A node's connections are gone (it crashed): its links restart empty."""
        self._egress_free_at.pop(node, None)
        self._ingress_free_at.pop(node, None)

    def _clog_start(self, src: int, dst: int, size: int, start: float) -> float:
        for node, table, free_at in ((src, self.egress_bytes_per_ms, self._egress_free_at), (dst, self.ingress_bytes_per_ms, self._ingress_free_at)):
            rate = table.get(node)
            if rate is None:
                continue
            begin = max(start, free_at.get(node, 0.0))
            if begin - start > CLOG_QUEUE_MS_MAX:
                return -1.0
            start = begin + size / rate
            free_at[node] = start
        return start


def _probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability {p} is outside 0..1")
    return float(p)

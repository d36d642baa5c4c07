"""Membership timing profiles: `lan` (the default) and `local` (loopback dev clusters).

Values start from HashiCorp memberlist's `DefaultLANConfig` / `DefaultLocalConfig`
(memberlist config.go) and depart from them where our goals need it; every departure is
explained next to the field and in docs/protocols/membership.md and docs/decisions/0040.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentnode.messages import MAX_UPDATES_PER_FRAME

__sans_io__ = True

__all__ = ["LAN", "LOCAL", "MembershipProfile", "profile_named", "PROFILES"]


@dataclass(frozen=True, slots=True)
class MembershipProfile:
    """Timing and size knobs of SWIM + Lifeguard membership. All durations are integer milliseconds."""

    name: str
    """Profile name ("lan", "local")."""
    probe_interval_ms: int
    """Time between failure-detector probes (SWIM protocol period T')."""
    probe_timeout_ms: int
    """Wait for a direct ack before asking `indirect_checks` helpers (SWIM); about the 99th pct RTT."""
    indirect_checks: int
    """k in SWIM: helpers asked to ping the target on our behalf when the direct ping gets no ack."""
    retransmit_mult: int
    """Each update is piggybacked retransmit_mult * ceil(log10(N+1)) times (memberlist RetransmitMult)."""
    suspicion_min_ms_per_log10_nodes: int
    """Suspicion min timeout = this * max(1, log10 N) (memberlist: SuspicionMult * ProbeInterval)."""
    suspicion_max_timeout_mult: int
    """Suspicion max timeout = this * min timeout (memberlist SuspicionMaxTimeoutMult, Lifeguard §IV-B)."""
    suspicion_confirmations: int
    """Independent confirmations that shrink the timeout to its min (Lifeguard K; memberlist SuspicionMult-2)."""
    awareness_max_multiplier: int
    """Local health: probe interval and timeouts scale by up to this factor (memberlist, Lifeguard LHA)."""
    gossip_interval_ms: int
    """Dedicated gossip round, sent only while updates are queued (memberlist GossipInterval)."""
    gossip_nodes: int
    """Random members each gossip round goes to (memberlist GossipNodes)."""
    push_pull_interval_ms: int
    """Full-state anti-entropy with one random member; scaled above 32 nodes (memberlist pushPullScale)."""
    reconnect_interval_ms: int
    """One dead member is pinged per interval so healed partitions re-merge (Serf ReconnectInterval idea)."""
    seed_interval_ms: int
    """Seeds not seen alive are re-contacted this often; all seeds while this node knows no one."""
    seed_recontact_interval_ms: int
    """Slow timer: one seed is contacted even when all look alive (re-merges split clusters)."""
    dead_reap_ms: int
    """A dead member is forgotten after this long (Serf ReconnectTimeout, 24 h)."""
    left_reap_ms: int
    """A departed member is forgotten after this long (Serf TombstoneTimeout, 24 h)."""
    max_piggyback_updates: int
    """Updates piggybacked on one ping/ack (memberlist fills a 1400-byte UDP packet: ~20)."""
    max_gossip_updates: int
    """Updates on one dedicated gossip frame; ours ride TCP/QUIC streams, not 1400-byte datagrams."""
    broadcast_queue_max: int
    """Queued updates above this are dropped oldest-first and counted (Serf MaxQueueDepth 4096)."""
    max_relayed_probes: int
    """Concurrent ping-req relays this node serves; more are dropped and counted."""

    def __post_init__(self) -> None:
        for name in (
            "probe_interval_ms", "probe_timeout_ms", "gossip_interval_ms", "push_pull_interval_ms",
            "reconnect_interval_ms", "seed_interval_ms", "seed_recontact_interval_ms", "dead_reap_ms",
            "left_reap_ms", "retransmit_mult", "suspicion_min_ms_per_log10_nodes", "suspicion_max_timeout_mult",
            "awareness_max_multiplier", "gossip_nodes", "max_piggyback_updates", "max_gossip_updates",
            "broadcast_queue_max",
            "max_relayed_probes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"MembershipProfile.{name} must be positive, got {getattr(self, name)}")
        if self.indirect_checks < 0 or self.suspicion_confirmations < 0:
            raise ValueError("indirect_checks and suspicion_confirmations must be >= 0")
        if self.max_gossip_updates > MAX_UPDATES_PER_FRAME or self.max_piggyback_updates >= MAX_UPDATES_PER_FRAME:
            raise ValueError(f"peers accept at most {MAX_UPDATES_PER_FRAME} updates per frame (one more rides on probes)")
        if 2 * self.probe_timeout_ms >= self.probe_interval_ms:
            raise ValueError(
                "probe_timeout_ms must be less than half of probe_interval_ms so indirect probes "
                f"(and the helpers' nacks) fit in one protocol period; got {self.probe_timeout_ms} / "
                f"{self.probe_interval_ms}"
            )


LAN = MembershipProfile(
    name="lan",
    # Departure from memberlist (1 s / 500 ms): detection at 1000 nodes must finish in 5 s, and the first
    # suspicion costs ~e/(e-1) = 1.58 protocol periods on average (SWIM §3.1). 500 ms halves it. LAN RTTs
    # are well below a millisecond, so 200 ms (memberlist DefaultLocalConfig.ProbeTimeout) is still ~100x.
    probe_interval_ms=500,
    probe_timeout_ms=200,
    indirect_checks=3,  # memberlist DefaultLANConfig.IndirectChecks
    retransmit_mult=4,  # memberlist DefaultLANConfig.RetransmitMult
    # memberlist: SuspicionMult 4 at a 1 s period = 4 s * log10 N min, 6x max (12 s / 72 s at 1000 nodes).
    # Ours: 0.7 s * log10 N min (2.1 s at 1000 nodes, 0.7 s up to 10), 3x max (6.3 s / 2.1 s). The min is
    # reached for a real failure because every node that hears a suspicion probes the suspect in its next
    # period (2 confirmations within ~1 s); the max outlasts a refutation, which reaches each holder of the
    # suspicion directly (its own check probe) within a period. See docs/decisions/0040.
    suspicion_min_ms_per_log10_nodes=700,
    suspicion_max_timeout_mult=3,
    suspicion_confirmations=2,  # memberlist: SuspicionMult - 2 = 2
    awareness_max_multiplier=8,  # memberlist DefaultLANConfig.AwarenessMaxMultiplier
    # memberlist LAN gossips every 200 ms to 3 nodes; we send gossip only while something is queued, so a
    # faster round (memberlist DefaultLocalConfig: 100 ms) costs little in steady state and halves spread time.
    gossip_interval_ms=100,
    gossip_nodes=3,  # memberlist DefaultLANConfig.GossipNodes
    push_pull_interval_ms=30_000,  # memberlist DefaultLANConfig.PushPullInterval
    reconnect_interval_ms=2_000,  # ours: memberlist never re-probes the dead; Serf reconnects every 30 s
    seed_interval_ms=5_000,
    seed_recontact_interval_ms=60_000,  # Serf's mDNS poll interval (serf agent -discover)
    dead_reap_ms=24 * 3600 * 1000,  # Serf ReconnectTimeout
    left_reap_ms=24 * 3600 * 1000,  # Serf TombstoneTimeout
    max_piggyback_updates=16,
    # A 1000-node join ramp (100 joins/s) needs 100 * 16 retransmits = 1600 update sends/s per node; 3
    # frames per 100 ms round * 64 = 1920/s keeps up (16 per frame did not: joins lagged 30 s).
    max_gossip_updates=64,
    broadcast_queue_max=4096,  # Serf MaxQueueDepth
    max_relayed_probes=256,
)

LOCAL = MembershipProfile(
    name="local",
    # Loopback dev clusters of a few nodes. memberlist DefaultLocalConfig keeps a 1 s period with a 200 ms
    # timeout; we also shorten the period since loopback RTT is microseconds. The timeout stays generous
    # because a busy 2-core box running several Python nodes stalls event loops for tens of milliseconds.
    probe_interval_ms=400,
    probe_timeout_ms=150,
    indirect_checks=1,  # memberlist DefaultLocalConfig.IndirectChecks
    retransmit_mult=2,  # memberlist DefaultLocalConfig.RetransmitMult
    suspicion_min_ms_per_log10_nodes=1_200,  # memberlist DefaultLocalConfig.SuspicionMult 3 * our 400 ms period
    suspicion_max_timeout_mult=3,
    suspicion_confirmations=1,
    awareness_max_multiplier=8,
    gossip_interval_ms=100,  # memberlist DefaultLocalConfig.GossipInterval
    gossip_nodes=3,
    push_pull_interval_ms=15_000,  # memberlist DefaultLocalConfig.PushPullInterval
    reconnect_interval_ms=1_000,
    seed_interval_ms=1_000,
    seed_recontact_interval_ms=15_000,
    dead_reap_ms=3600 * 1000,
    left_reap_ms=3600 * 1000,
    max_piggyback_updates=16,
    max_gossip_updates=64,
    broadcast_queue_max=1024,
    max_relayed_probes=64,
)

PROFILES: dict[str, MembershipProfile] = {"lan": LAN, "local": LOCAL}


def profile_named(name: str) -> MembershipProfile:
    """The profile called `name`; raise ValueError listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown membership profile {name!r}; choose one of {sorted(PROFILES)}") from None

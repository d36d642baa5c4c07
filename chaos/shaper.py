"""The delay/jitter/reorder shaper: a netem substitute on NFQUEUE, run inside the hub namespace.

This machine kind has no `tc netem` (no CONFIG_NET_SCH_NETEM, no loadable modules), and nft's own
`queue` statement is missing too, so the hub's iptables FORWARD chain sends each shaped directed
link (physdev in p<i>, out p<j>) to its own NFQUEUE number, and this process holds every packet
until its release time (chaos-feasibility.md, delay row and A.2). The rules use `--queue-bypass`:
while no shaper is bound, traffic passes unshaped (fail open) rather than being cut.

Run as `ip netns exec HUB python -m agentnode.chaos.shaper CONFIG --duration S`. CONFIG is a JSON
file `{"version": n, "seed": s, "links": {"<queue>": {"delay_ms", "jitter_ms", "loss", "fifo"}}}`
that the harness rewrites; the shaper re-reads it when it changes, binds new queues, writes
`CONFIG.ack` with the version once bound, and `CONFIG.stats` with per-queue counters.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LinkShape", "main"]

HELD_MAX = 50_000
"""Packets held at once; beyond it packets pass at once (counted as `overflow`), never unbounded memory."""
QUEUE_MAXLEN = 4096
"""Kernel-side queue length per link (NetfilterQueue `max_len`); the kernel drops beyond it unless bypassed."""
POLL_S = 0.05
"""Longest sleep between checks of the config file and the held packets."""
DURATION_MAX_S = 3600.0
"""The shaper exits after its duration even if the harness forgot it (held packets are released)."""


@dataclass(frozen=True, slots=True)
class LinkShape:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    fifo: bool = False
    """FIFO: jitter without reordering (release = max(previous release, drawn time))."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkShape:
        return cls(float(data.get("delay_ms", 0)), float(data.get("jitter_ms", 0)), float(data.get("loss", 0)), bool(data.get("fifo", False)))


class _Shaper:
    def __init__(self, config: Path, rng: random.Random) -> None:
        from netfilterqueue import NetfilterQueue

        self._nfq_class = NetfilterQueue
        self.config = config
        self.rng = rng
        self.shapes: dict[int, LinkShape] = {}
        self.queues: dict[int, Any] = {}
        self.fds: dict[int, int] = {}
        self.held: list[tuple[float, int, Any]] = []
        self.last_release: dict[int, float] = {}
        self.seq = 0
        self.stats: dict[int, dict[str, int]] = {}
        self.mtime = 0.0

    def reload(self) -> None:
        try:
            mtime = self.config.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            data = json.loads(self.config.read_text())
        except ValueError:
            return  # a half-written file: the harness replaces it atomically, so read it next turn
        self.shapes = {int(q): LinkShape.from_json(v) for q, v in data.get("links", {}).items()}
        for q in self.shapes:
            if q not in self.queues:
                nfq = self._nfq_class()
                nfq.bind(q, self._callback(q), max_len=QUEUE_MAXLEN)
                self.queues[q] = nfq
                self.fds[nfq.get_fd()] = q
                self.stats[q] = {"in": 0, "drop": 0, "out": 0, "overflow": 0}
        ack = self.config.with_name(self.config.name + ".ack")
        ack.write_text(str(data.get("version", 0)))

    def _callback(self, q: int) -> Any:
        def on_packet(pkt: Any) -> None:
            stats = self.stats[q]
            stats["in"] += 1
            shape = self.shapes.get(q, LinkShape())
            if shape.loss and self.rng.random() < shape.loss:
                pkt.drop()
                stats["drop"] += 1
                return
            if len(self.held) >= HELD_MAX:
                pkt.accept()
                stats["overflow"] += 1
                stats["out"] += 1
                return
            now = time.monotonic()
            delay = max(0.0, shape.delay_ms + self.rng.uniform(-shape.jitter_ms, shape.jitter_ms)) / 1000
            release = now + delay
            if shape.fifo:
                release = max(release, self.last_release.get(q, 0.0))
                self.last_release[q] = release
            self.seq += 1
            heapq.heappush(self.held, (release, self.seq, (q, pkt)))

        return on_packet

    def release_due(self, now: float) -> None:
        while self.held and self.held[0][0] <= now:
            q, pkt = heapq.heappop(self.held)[2]
            pkt.accept()
            self.stats[q]["out"] += 1

    def run(self, duration_s: float) -> None:
        end = time.monotonic() + min(duration_s, DURATION_MAX_S)
        stats_file = self.config.with_name(self.config.name + ".stats")
        next_stats = 0.0
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping and time.monotonic() < end:
            self.reload()
            now = time.monotonic()
            self.release_due(now)
            timeout = POLL_S if not self.held else min(POLL_S, max(0.0, self.held[0][0] - now))
            ready, _, _ = select.select(list(self.fds), [], [], timeout)
            for fd in ready:
                self.queues[self.fds[fd]].run(block=False)
            if now >= next_stats:
                next_stats = now + 0.5
                _write_json(stats_file, {str(q): s for q, s in self.stats.items()})
        while self.held:
            q, pkt = heapq.heappop(self.held)[2]
            pkt.accept()
            self.stats[q]["out"] += 1
        for nfq in self.queues.values():
            nfq.unbind()
        _write_json(stats_file, {str(q): s for q, s in self.stats.items()})


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--duration", type=float, default=600.0, help="exit after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _Shaper(args.config, random.Random(args.seed)).run(args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())

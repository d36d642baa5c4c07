"""Network faults between node namespaces: partitions, one-way cuts, loss, duplication, delay, rate.

`NetworkState` is the desired fault set, a plain value; `render_*` turn it into the hub's nft
ruleset, its iptables FORWARD rules and the shaper's config, so each change replaces the whole
ruleset in one transaction (no drift between what the harness believes and what the kernel does).
`NetworkController` applies a state to a live `Topology`. Everything lives in the hub namespace,
so deleting that namespace removes every rule (chaos-feasibility.md section 3).

Mechanisms (all tested in chaos-feasibility.md section 1):
- partition / one-way: nft bridge-family forward chain matched on hub ports; port rules cut ARP and
  multicast as a real split does (IP-set rules let mDNS through);
- loss: `numgen random mod 1000 < P drop` per directed port pair (kernel only, no CPU cost);
- duplication: a netdev ingress chain on `p<i>` with `dup to "p<j>"` (`dup` is refused in inet tables);
- delay, jitter, reordering: iptables NFQUEUE per directed link + `agentnode.chaos.shaper`;
- bandwidth: `tbf` on the hub port (the node's download) and the node's `eth0` (its upload).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from agentnode.chaos.netns import CommandFailed, RunObjects, Topology, run

__all__ = ["LinkFault", "NetworkController", "NetworkState", "queue_number"]

QUEUE_BASE = 100
"""NFQUEUE numbers are per network namespace; ours start here: BASE + src * NODES_MAX + dst."""
SHAPER_ACK_TIMEOUT_S = 10.0
"""How long to wait for the shaper to bind a new queue before installing its iptables rule."""
SHAPER_DURATION_S = 3600.0
TBF_BURST = "32kbit"
TBF_LATENCY = "400ms"
"""tbf parameters measured in chaos-feasibility.md (1mbit -> 0.97 Mbit/s)."""
_COUNTER = re.compile(r"counter packets (\d+) bytes")
BRIDGE_TABLE = "chaos"
DUP_TABLE = "chaosdup"


def queue_number(src: int, dst: int) -> int:
    return QUEUE_BASE + src * 64 + dst


@dataclass(frozen=True, slots=True)
class LinkFault:
    """Faults on one directed link src -> dst. Fractions are 0..1."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: bool = True
    """With jitter larger than the packet spacing packets overtake each other; False keeps FIFO."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction between 0 and 1, got {value}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must not be negative")

    @property
    def shaped(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    def merge(self, other: LinkFault) -> LinkFault:
        """Fields set (non-zero) in `other` override ours."""
        return LinkFault(
            other.loss or self.loss,
            other.duplicate or self.duplicate,
            other.delay_ms or self.delay_ms,
            other.jitter_ms or self.jitter_ms,
            other.reorder if other.shaped else self.reorder,
        )


@dataclass(frozen=True)
class NetworkState:
    """The desired set of network faults; build new states with the methods (the value is immutable)."""

    size: int
    blocked: frozenset[tuple[int, int]] = frozenset()
    """Directed pairs (src, dst) whose frames are dropped."""
    links: tuple[tuple[tuple[int, int], LinkFault], ...] = ()
    rates_kbit: tuple[tuple[int, int], ...] = ()
    """(node, kbit/s) limits on the node's upload and download."""
    addresses: tuple[str, ...] = field(default=(), compare=False)

    # -- building states ---------------------------------------------------------------------

    def partition(self, groups: list[list[int]]) -> NetworkState:
        """Cut every pair in different groups, both ways; nodes in no group form one more group."""
        self._check_nodes([n for g in groups for n in g])
        member = {n: k for k, g in enumerate(groups) for n in g}
        rest = len(groups)
        blocked = set(self.blocked)
        for a in range(self.size):
            for b in range(self.size):
                if a != b and member.get(a, rest) != member.get(b, rest):
                    blocked.add((a, b))
        return replace(self, blocked=frozenset(blocked))

    def one_way(self, sources: list[int], targets: list[int]) -> NetworkState:
        """Drop frames from `sources` to `targets` only; the reverse direction still flows."""
        self._check_nodes(sources + targets)
        blocked = set(self.blocked) | {(a, b) for a in sources for b in targets if a != b}
        return replace(self, blocked=frozenset(blocked))

    def heal_partitions(self) -> NetworkState:
        return replace(self, blocked=frozenset())

    def link(self, sources: list[int], targets: list[int], fault: LinkFault) -> NetworkState:
        self._check_nodes(sources + targets)
        links = dict(self.links)
        for a in sources:
            for b in targets:
                if a != b:
                    links[(a, b)] = links.get((a, b), LinkFault()).merge(fault)
        return replace(self, links=tuple(sorted(links.items())))

    def clear_links(self) -> NetworkState:
        return replace(self, links=())

    def rate(self, node: int, kbit: int) -> NetworkState:
        self._check_nodes([node])
        if kbit <= 0:
            raise ValueError("a bandwidth limit is a positive number of kbit/s")
        rates = dict(self.rates_kbit)
        rates[node] = kbit
        return replace(self, rates_kbit=tuple(sorted(rates.items())))

    def clear_rates(self) -> NetworkState:
        return replace(self, rates_kbit=())

    def healed(self) -> NetworkState:
        return NetworkState(self.size, addresses=self.addresses)

    # -- rendering ----------------------------------------------------------------------------

    def render_nft(self) -> str:
        """The hub's whole nft ruleset for this state, replacing the previous one atomically."""
        lines = [f"table bridge {BRIDGE_TABLE} {{}}", f"delete table bridge {BRIDGE_TABLE}"]
        lines += [f"table netdev {DUP_TABLE} {{}}", f"delete table netdev {DUP_TABLE}"]
        lines += [f"table bridge {BRIDGE_TABLE} {{", " chain forward {", "  type filter hook forward priority 0; policy accept;"]
        for a, b in sorted(self.blocked):
            lines.append(f'  iifname "{Topology.port(a)}" oifname "{Topology.port(b)}" counter drop')
        for (a, b), fault in self.links:
            if fault.loss > 0 and (a, b) not in self.blocked:
                permille = max(1, round(fault.loss * 1000))
                lines.append(f'  iifname "{Topology.port(a)}" oifname "{Topology.port(b)}" numgen random mod 1000 < {permille} counter drop')
        lines += [" }", "}"]
        dups = [((a, b), f) for (a, b), f in self.links if f.duplicate > 0 and (a, b) not in self.blocked]
        if dups:
            if len(self.addresses) < self.size:
                raise ValueError("duplication rules need the node addresses")
            lines.append(f"table netdev {DUP_TABLE} {{")
            for src in sorted({a for (a, _), _ in dups}):
                lines += [f" chain in{src} {{", f'  type filter hook ingress device "{Topology.port(src)}" priority 0; policy accept;']
                for (a, b), fault in dups:
                    if a == src:
                        permille = max(1, round(fault.duplicate * 1000))
                        lines.append(f'  ip daddr {self.addresses[b]} numgen random mod 1000 < {permille} counter dup to "{Topology.port(b)}"')
                lines.append(" }")
            lines.append("}")
        return "\n".join(lines) + "\n"

    def render_iptables(self) -> str:
        """The hub's iptables filter table: one NFQUEUE rule per shaped link (iptables-restore input)."""
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        for (a, b), fault in self.links:
            if fault.shaped and (a, b) not in self.blocked:
                lines.append(
                    f"-A FORWARD -m physdev --physdev-in {Topology.port(a)} --physdev-out {Topology.port(b)} "
                    f"-j NFQUEUE --queue-num {queue_number(a, b)} --queue-bypass"
                )
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def shaper_links(self) -> dict[str, dict[str, object]]:
        return {
            str(queue_number(a, b)): {"delay_ms": f.delay_ms, "jitter_ms": f.jitter_ms, "loss": 0.0, "fifo": not f.reorder}
            for (a, b), f in self.links
            if f.shaped
        }

    def _check_nodes(self, nodes: list[int]) -> None:
        bad = [n for n in nodes if not 0 <= n < self.size]
        if bad:
            raise ValueError(f"node index {bad[0]} is outside 0..{self.size - 1}")


class NetworkController:
    """Applies `NetworkState`s to a live topology; owns the shaper process."""

    def __init__(self, topology: Topology, objects: RunObjects) -> None:
        self.topology = topology
        self.objects = objects
        self.state = NetworkState(topology.size, addresses=tuple(topology.address(i) for i in range(topology.size)))
        self.shaper: subprocess.Popen[bytes] | None = None
        self._shaper_version = 0
        self._rated: set[int] = set()
        self.shaper_config = objects.run_dir / "shaper.json"
        self._replaced = {"dropped_packets": 0, "duplicated_packets": 0}
        """Counts of rule sets already replaced, so `rule_counters` covers the whole run."""

    def apply(self, state: NetworkState) -> None:
        hub = self.topology.hub
        shaper_links = state.shaper_links()
        if shaper_links:
            self._configure_shaper(shaper_links)
        for key, value in self._current_counters().items():
            self._replaced[key] += value
        run(["nft", "-f", "-"], ns=hub, input=state.render_nft())
        if shaper_links or self.state.shaper_links():
            run(["iptables-restore"], ns=hub, input=state.render_iptables())
        self._apply_rates(dict(state.rates_kbit))
        self.state = state

    def rule_counters(self) -> dict[str, int]:
        """Packets our nft rules dropped and duplicated over the whole run."""
        return {k: v + self._replaced[k] for k, v in self._current_counters().items()}

    def _current_counters(self) -> dict[str, int]:
        done = run(["nft", "list", "ruleset"], ns=self.topology.hub, check=False)
        totals = {"dropped_packets": 0, "duplicated_packets": 0}
        for line in done.stdout.splitlines():
            match = _COUNTER.search(line)
            if match is None:
                continue
            if line.rstrip().endswith("drop"):
                totals["dropped_packets"] += int(match.group(1))
            elif "dup to" in line:
                totals["duplicated_packets"] += int(match.group(1))
        return totals

    def tcp_counters(self, i: int) -> dict[str, int]:
        """Node i's kernel TCP counters (its own namespace's /proc/net/snmp): what loss does to TCP."""
        done = run(["cat", "/proc/net/snmp"], ns=self.topology.node_ns(i), check=False)
        rows = [line.split() for line in done.stdout.splitlines() if line.startswith("Tcp:")]
        if len(rows) < 2:
            return {}
        values = dict(zip(rows[0][1:], rows[1][1:]))
        return {"out_segs": int(values.get("OutSegs", 0)), "retrans_segs": int(values.get("RetransSegs", 0))}

    def shaper_stats(self) -> dict[str, dict[str, int]]:
        try:
            return json.loads(self.shaper_config.with_name("shaper.json.stats").read_text())
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        """End the shaper (by pid); the rules go with the hub namespace."""
        if self.shaper is not None and self.shaper.poll() is None:
            self.shaper.terminate()
            try:
                self.shaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.shaper.kill()
                self.shaper.wait(timeout=5)

    def _configure_shaper(self, links: dict[str, dict[str, object]]) -> None:
        self._shaper_version += 1
        config = {"version": self._shaper_version, "links": links}
        tmp = self.shaper_config.with_name("shaper.json.tmp")
        tmp.write_text(json.dumps(config))
        os.replace(tmp, self.shaper_config)
        if self.shaper is None or self.shaper.poll() is not None:
            log = open(self.objects.run_dir / "shaper.log", "ab")
            cmd = ["ip", "netns", "exec", self.topology.hub, sys.executable, "-m", "agentnode.chaos.shaper",
                   str(self.shaper_config), "--duration", str(SHAPER_DURATION_S)]
            self.shaper = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            self.objects.pids.append(self.shaper.pid)
            self.objects.save()
        ack = self.shaper_config.with_name("shaper.json.ack")
        deadline = time.monotonic() + SHAPER_ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if int(ack.read_text() or 0) >= self._shaper_version:
                    return
            except (OSError, ValueError):
                pass
            if self.shaper.poll() is not None:
                break
            time.sleep(0.02)
        log_tail = (self.objects.run_dir / "shaper.log").read_text(errors="replace")[-1000:]
        raise CommandFailed(f"the NFQUEUE shaper did not bind its queues within {SHAPER_ACK_TIMEOUT_S} s: {log_tail}")

    def _apply_rates(self, rates: dict[int, int]) -> None:
        hub = self.topology.hub
        for node in sorted(self._rated - set(rates)):
            run(["tc", "qdisc", "del", "dev", Topology.port(node), "root"], ns=hub, check=False)
            run(["tc", "qdisc", "del", "dev", "eth0", "root"], ns=self.topology.node_ns(node), check=False)
        for node, kbit in sorted(rates.items()):
            tbf = ["tbf", "rate", f"{kbit}kbit", "burst", TBF_BURST, "latency", TBF_LATENCY]
            run(["tc", "qdisc", "replace", "dev", Topology.port(node), "root", *tbf], ns=hub)
            run(["tc", "qdisc", "replace", "dev", "eth0", "root", *tbf], ns=self.topology.node_ns(node))
        self._rated = set(rates)

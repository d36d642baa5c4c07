"""`agentnode bench messaging`: agent-to-agent messaging against the raw batched TLS baseline, in one run.

What runs (all on 127.0.0.1, uvloop):
- the raw batched TLS socket baseline and agentnode's transport, from `transport/benchmark.py`
  (two processes, 256-byte messages);
- a receiver `agentnode join --demo-agents` process hosting `sink@<node>`, and this process as an
  embedded `Node` (the sender); 256-byte payloads from the sender's built-in agent to the sink:
  - unicast messages/s per delivery mode, counted when the sink's handler has run for all of them
    (best-effort: those that arrived, with the losses reported); `SEND_WINDOW` sends in flight, as
    `SEND_WINDOW` concurrent `send` calls and again (at-least-once, durable) as `send_many` calls of
    `BATCH` messages (reported apart, under "unicast_batched");
  - request/response round trips one at a time (p50/p99), then again while at-least-once traffic runs
    at half the measured at-least-once maximum, issued in 5 ms bursts (judged) and every 1 ms (beside);
- the same request round trip between two `Node`s in this process over the memory transport: the CPU
  the messaging layer spends per round trip (both nodes, no sockets, no TLS), a figure the machine's
  load stretches far less than the two-process ones (reported, not judged);
- a 10-node local cluster with demo agents: time from `broadcast` until the last of its 30 agents
  handled it (demo agents log a wall-clock timestamp; one machine, one clock);
- the simulator figure: Plumtree (`broadcast.py`) cores for 1000 nodes driven by a discrete-event loop
  with the simulator's LAN latency model (lognormal, median 1 ms, sigma 0.5, 1..200 ms), full membership.
Targets (issue 5) are checked and printed; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "run_messaging_benchmark", "simulate_broadcast"]

PAYLOAD_BYTES = 256
SEND_WINDOW = 2_048
"""Sends in flight at once in the throughput phases (twice the delivery window of 1024 per channel)."""
BATCH = 256
"""Messages per `send_many` call in the batched phases (SEND_WINDOW // BATCH calls in flight)."""
RTT_WARMUP = 200
RTT_SAMPLES = 2_000
MEMORY_RTT_REQUESTS = 20_000
"""Round trips of the in-process (memory transport) phase."""
BROADCASTS = 10
"""Broadcasts measured in the 10-node cluster."""
PHASE_TIMEOUT_S = 120.0
TARGETS = {
    "at_least_once_vs_raw_min": 0.35,
    "rtt_p50_vs_raw_max": 2.0,
    "rtt_p99_half_load_ms_max": 1.0,
    "durable_msgs_per_s_min": 30_000,
    "sim_reach_fraction": 0.9999,
    "sim_reach_ms_max": 100,
    "sim_duplicates_per_node_max": 2.0,
}
# The simulator's LAN profile (simulations/network.py LAN), restated here: node/ must not import simulations/.
LAN_MEDIAN_MS, LAN_SIGMA, LAN_MIN_MS, LAN_MAX_MS = 1.0, 0.5, 1, 200


def run_messaging_benchmark(messages: int = 50_000, *, broadcast_nodes: int = 10, sim_nodes: int = 1000,
                            transport_duration_s: float = 2.5, skip_baseline: bool = False) -> dict[str, Any]:
    """Run every phase and return the figures, ratios and which targets were met."""
    if messages < 1000 or broadcast_nodes < 2 or sim_nodes < 10:
        raise ValueError("need messages >= 1000, broadcast_nodes >= 2 and sim_nodes >= 10")
    result: dict[str, Any] = {"payload_bytes": PAYLOAD_BYTES, "messages": messages}
    if not skip_baseline:
        from agentnode.transport.benchmark import run_transport_benchmark

        transport = run_transport_benchmark("tls", transport_duration_s, 1)
        result["raw_tls"] = transport["raw_tls"]
        result["transport_tls"] = transport["agentnode"]
    result.update(_run_loop(lambda: _unicast_phases(messages)))
    result["request_rtt_memory"] = _run_loop(lambda: _memory_round_trips(MEMORY_RTT_REQUESTS))
    result["broadcast_cluster"] = _broadcast_cluster(broadcast_nodes)
    result["simulation"] = simulate_broadcast(sim_nodes)
    result["ratios"], result["met"] = _judge(result)
    result["targets"] = TARGETS
    return result


# -- unicast and request/response: an embedded sender node and a receiver process ----------------------


async def _unicast_phases(messages: int) -> dict[str, Any]:
    from agentnode.config import NodeConfig
    from agentnode.local_cluster import LocalCluster
    from agentnode.runtime import Node, tune_gc
    from agentnode.transport.identity import issue_node_certificate

    with tempfile.TemporaryDirectory(prefix="agentnode-msgbench-") as tmp:
        root = Path(tmp)
        cluster = LocalCluster(1, root=root / "cluster", extra_args=["--demo-agents", "--log-level", "warning"])
        await asyncio.to_thread(cluster.start)
        try:
            receiver = cluster.nodes[0]
            issue_node_certificate(cluster.ca_dir, root / "sender", hosts=["127.0.0.1"])
            config = NodeConfig.build(data_dir=root / "sender", listen="127.0.0.1:0", bootstrap=[receiver.address],
                                      cluster=cluster.cluster, mdns=False, profile="local")
            async with Node(config) as node:
                # The sender is configured like a latency-minded embedding application (docs/messaging.md,
                # "Latency"); the receiver's `agentnode join` does the same by default (decision 0125).
                tune_gc()
                sink = f"sink@{receiver.node_id}"
                await _wait(lambda: node.agents.registry.lookup(sink) is not None, "the sink agent to be visible")
                payload = b"x" * PAYLOAD_BYTES
                for _ in range(RTT_WARMUP):
                    await node.request(sink, payload, timeout=5)
                out: dict[str, Any] = {"unicast": {}}
                for mode in ("best_effort", "at_least_once", "durable"):
                    out["unicast"][mode] = await _throughput(node, receiver, sink, payload, mode, messages)
                out["unicast_batched"] = {}
                for mode in ("at_least_once", "durable"):
                    out["unicast_batched"][mode] = await _throughput(node, receiver, sink, payload, mode, messages,
                                                                     batched=True)
                out["request_rtt"] = await _rtt(node, sink, payload, RTT_SAMPLES, receiver)
                rate = out["unicast"]["at_least_once"]["msgs_per_s"] / 2
                out["request_rtt_half_load"] = {"load_msgs_per_s": round(rate), **await _rtt_under_load(node, sink, payload, rate)}
                # The same rate issued every millisecond instead of in 5 ms bursts: closer to a steady half
                # load (a 5 ms burst is the full rate for part of the time); reported beside, not judged.
                out["request_rtt_half_load_1ms_ticks"] = {"load_msgs_per_s": round(rate),
                                                          **await _rtt_under_load(node, sink, payload, rate, 0.001)}
                out["sender_counters"] = node.agents.stats()["delivery"]
            return out
        finally:
            await asyncio.to_thread(cluster.stop)


async def _throughput(node: Any, receiver: Any, sink: str, payload: bytes, mode: str, n: int,
                      batched: bool = False) -> dict[str, Any]:
    async def handled() -> int:
        stats = await asyncio.to_thread(receiver.call, "agents.stats")
        return int(stats["handled"].get(sink, 0))

    before = await handled()
    cpu = _CpuClock(receiver)
    per_worker = n // SEND_WINDOW
    extra = n - per_worker * SEND_WINDOW
    confirm = mode == "at_least_once"

    async def worker(k: int) -> None:
        for i in range(k):
            await node.send(sink, payload, delivery=mode, confirm=confirm, timeout=60, on_full="wait")
            if not confirm and i % 64 == 63:
                await asyncio.sleep(0)

    async def batch_worker(k: int) -> None:
        for i in range(0, k, BATCH):
            await node.send_many(sink, [payload] * min(BATCH, k - i), delivery=mode, confirm=confirm, timeout=60,
                                 on_full="wait")

    started = time.perf_counter()
    if batched:
        workers = SEND_WINDOW // BATCH
        await asyncio.gather(*(batch_worker(n // workers + (1 if w < n % workers else 0)) for w in range(workers)))
    else:
        await asyncio.gather(*(worker(per_worker + (1 if w < extra else 0)) for w in range(SEND_WINDOW)))
    sent_s = time.perf_counter() - started
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    last, stable_since = -1, time.monotonic()
    while True:
        got = await handled() - before
        if got >= n:
            break
        if got != last:
            last, stable_since = got, time.monotonic()
        elif time.monotonic() - stable_since > 2.0 or time.monotonic() > deadline:
            break  # best-effort losses: nothing more is coming
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    got = await handled() - before
    return {"msgs_per_s": round(got / elapsed), "delivered": got, "sent": n, "send_return_per_s": round(n / sent_s),
            "seconds": round(elapsed, 3), **cpu.per("msg", max(1, got))}


async def _rtt(node: Any, sink: str, payload: bytes, samples: int, receiver: Any = None) -> dict[str, Any]:
    cpu = _CpuClock(receiver)
    rtts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await node.request(sink, payload, timeout=5)
        rtts.append((time.perf_counter() - t0) * 1e6)
    return {**_percentiles(rtts), **(cpu.per("request", samples) if receiver is not None else {})}


class _CpuClock:
    """CPU seconds used by this (sender) process and by the receiver process since creation: per-message
    cost that the machine's load does not stretch the way it stretches wall-clock rates."""

    def __init__(self, receiver: Any) -> None:
        self._pid = getattr(getattr(receiver, "process", None), "pid", None)
        self._sender = time.process_time()
        self._receiver = self._receiver_s()

    def _receiver_s(self) -> float | None:
        try:  # Linux: utime + stime of the receiver process, in clock ticks (proc(5))
            with open(f"/proc/{self._pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, TypeError):
            return None

    def per(self, unit: str, count: int) -> dict[str, Any]:
        out: dict[str, Any] = {f"sender_cpu_us_per_{unit}": round((time.process_time() - self._sender) / count * 1e6, 1)}
        end = self._receiver_s()
        if end is not None and self._receiver is not None:
            out[f"receiver_cpu_us_per_{unit}"] = round((end - self._receiver) / count * 1e6, 1)
        return out


async def _rtt_under_load(node: Any, sink: str, payload: bytes, rate: float, tick: float = 0.005) -> dict[str, Any]:
    stop = asyncio.Event()

    async def load() -> None:
        owed = 0.0  # sends due but not issued: fractions carry over, so small ticks keep the rate
        next_at = time.perf_counter()
        while not stop.is_set():
            owed += rate * tick
            for _ in range(int(owed)):
                await node.send(sink, payload, confirm=False, on_full="wait", timeout=10)
            owed -= int(owed)
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    task = asyncio.create_task(load())
    await asyncio.sleep(0.5)
    try:
        return await _rtt(node, sink, payload, RTT_SAMPLES // 2)
    finally:
        stop.set()
        await task


async def _memory_round_trips(requests: int) -> dict[str, Any]:
    """Back-to-back requests between two nodes of this process over the memory transport: the
    messaging layer's own CPU per round trip (both nodes), without sockets or TLS."""
    from agentnode.config import NodeConfig
    from agentnode.runtime import Node
    from agentnode.transport.memory import MemoryHub, MemoryTransport

    with tempfile.TemporaryDirectory(prefix="agentnode-msgbench-mem-") as tmp:
        hub = MemoryHub()
        nodes = []
        for i in (1, 2):
            config = NodeConfig.build(data_dir=Path(tmp) / f"n{i}", listen=f"10.0.0.{i}:7946", cluster="bench",
                                      bootstrap=[] if i == 1 else ["10.0.0.1:7946"], mdns=False, profile="local", seed=i)
            nodes.append(Node(config, transport=MemoryTransport(hub, f"node{i}", config.listen), control=False))
        for node in nodes:
            await node.start()
        try:
            sender, receiver = nodes
            sink = await receiver.register_agent("sink", ["sink"], handler=lambda m: m.payload)
            await _wait(lambda: sender.agents.registry.lookup(sink.agent_id) is not None, "the in-process sink")
            payload = b"x" * PAYLOAD_BYTES
            for _ in range(RTT_WARMUP):
                await sender.request(sink.agent_id, payload, timeout=5)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(requests):
                await sender.request(sink.agent_id, payload, timeout=5)
            return {"requests": requests, "cpu_us_per_request": round((time.process_time() - cpu) / requests * 1e6, 1),
                    "wall_us_per_request": round((time.perf_counter() - wall) / requests * 1e6, 1)}
        finally:
            for node in nodes:
                await node.stop()


# -- broadcast in a local cluster -------------------------------------------------------------------------


def _broadcast_cluster(size: int) -> dict[str, Any]:
    from agentnode.local_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="agentnode-bcast-") as tmp:
        with LocalCluster(size, root=Path(tmp), extra_args=["--demo-agents", "--log-level", "warning"]) as cluster:
            cluster.wait_for(f"{size} nodes to converge", cluster.converged, timeout_s=90)
            agents_expected = 3 * size  # echo, counter, listener take broadcasts (sink does not)
            cluster.wait_for("every agent everywhere", lambda: all(
                len(n.call("agents.list")) >= 4 * size for n in cluster.nodes), timeout_s=60)
            time.sleep(1.0)  # let the broadcast overlay settle
            latencies = []
            for k in range(BROADCASTS + 1):
                tag = f"bench-broadcast-{k}"
                source = cluster.nodes[k % size]
                t0 = time.time()
                source.call("agents.publish", topic="", data=tag)
                deadline = time.monotonic() + 20
                times: list[float] = []
                while time.monotonic() < deadline:
                    times = [e["t"] for n in cluster.nodes for a in ("echo", "counter", "listener")
                             for e in _demo_log(n.data_dir, a) if e["data"] == tag]
                    if len(times) >= agents_expected:
                        break
                    time.sleep(0.02)
                if k == 0:
                    continue  # the first broadcast also builds the tree; reported separately below
                latencies.append((max(times) - t0) * 1000 if len(times) >= agents_expected else float("inf"))
                time.sleep(0.2)
    finite = sorted(x for x in latencies if math.isfinite(x))
    return {"nodes": size, "agents": agents_expected, "broadcasts": len(latencies), "incomplete": len(latencies) - len(finite),
            "all_agents_ms_p50": round(statistics.median(finite), 2) if finite else None,
            "all_agents_ms_max": round(finite[-1], 2) if finite else None,
            "note": "time until the last agent's handler ran, via control call and file logs (ms resolution)"}


def _demo_log(data_dir: Path, agent: str) -> list[dict[str, Any]]:
    path = data_dir / "demo-agents" / f"{agent}.log"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


# -- the simulator figure ----------------------------------------------------------------------------------


def simulate_broadcast(nodes: int = 1000, messages: int = 10, seed: int = 1) -> dict[str, Any]:
    """Plumtree cores for `nodes` nodes under the LAN latency model; reach time and duplicates per message."""
    from agentnode.broadcast import Broadcast

    rng = random.Random(seed)
    ids = [f"n{i:05d}" for i in range(nodes)]
    index = {node_id: i for i, node_id in enumerate(ids)}
    cores = [Broadcast(node_id, cluster="sim", epoch=1, rng=random.Random(f"{seed}:{node_id}")) for node_id in ids]
    queue: list[tuple[int, int, int, int, Any]] = []  # (time, seq, kind, node, payload)
    seq = 0
    last_arrival: dict[tuple[int, int], int] = {}

    def push(at: int, kind: int, node: int, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (at, seq, kind, node, payload))

    def drain(i: int, now: int) -> None:
        core = cores[i]
        for out in core.messages_to_send():
            j = index[out.peer_id]
            latency = min(LAN_MAX_MS, max(LAN_MIN_MS, round(LAN_MEDIAN_MS * math.exp(rng.gauss(0.0, LAN_SIGMA)))))
            at = max(now + latency, last_arrival.get((i, j), 0))  # FIFO per link, like a TCP connection
            last_arrival[(i, j)] = at
            push(at, 0, j, (ids[i], out.frame))
        timer = core.get_timer()
        if timer is not None:
            push(max(timer, now), 1, i, timer)

    for i, core in enumerate(cores):  # SWIM has told every node about every other node
        for j in rng.sample(range(nodes), nodes):
            if j != i:
                core.member_up(ids[j], ids[j], 0)
        drain(i, 0)

    deliveries: dict[Any, list[int]] = {}
    sent_at: dict[Any, int] = {}

    def run_until(until: int) -> None:
        while queue and queue[0][0] <= until:
            at, _, kind, i, payload = heapq.heappop(queue)
            core = cores[i]
            if kind == 0:
                core.receive(payload[0], payload[1], at)
            else:
                if core.get_timer() != payload:
                    continue  # a stale wake-up
                core.handle_timer(at)
            while (event := core.next_event()) is not None:
                deliveries.setdefault(event.msg_id, []).append(at)
            drain(i, at)

    now = 3_000
    run_until(now)  # active views form
    duplicates_before = sum(c.counters["duplicates"] for c in cores)
    per_message = []
    for k in range(messages + 1):
        source = rng.randrange(nodes)
        msg_id = cores[source].broadcast(b"m" * 64, now)
        sent_at[msg_id] = now
        while (event := cores[source].next_event()) is not None:  # its own copy, delivered at once
            deliveries.setdefault(event.msg_id, []).append(now)
        drain(source, now)
        before = sum(c.counters["duplicates"] for c in cores)
        run_until(now + 1_000)
        dups = sum(c.counters["duplicates"] for c in cores) - before
        times = sorted(t - now for t in deliveries.get(msg_id, []))
        need = math.ceil(TARGETS["sim_reach_fraction"] * nodes)
        per_message.append({"reached": len(times), "ms_to_target": times[need - 1] if len(times) >= need else None,
                            "ms_to_all": times[-1] if len(times) == nodes else None,
                            "duplicates_per_node": round(dups / nodes, 4)})
        now += 1_000
    del duplicates_before
    steady = per_message[1:]
    reach = [m["ms_to_target"] for m in steady]
    return {
        "nodes": nodes, "messages": messages, "seed": seed,
        "first_message": per_message[0],
        "reach_ms_max": None if any(r is None for r in reach) else max(reach),
        "reach_ms_p50": None if any(r is None for r in reach) else statistics.median(reach),
        "duplicates_per_node_mean": round(statistics.mean(m["duplicates_per_node"] for m in steady), 4),
        "duplicates_per_node_max": max(m["duplicates_per_node"] for m in steady),
        "all_reached": all(m["reached"] == nodes for m in per_message),
        "per_message": per_message,
    }


# -- helpers -----------------------------------------------------------------------------------------------


def _judge(r: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
    raw = r.get("raw_tls") or {}
    alo = r["unicast"]["at_least_once"]["msgs_per_s"]
    batched = r.get("unicast_batched", {})
    alo_batched = batched.get("at_least_once", {}).get("msgs_per_s")
    ratios = {
        "at_least_once_vs_raw": round(alo / raw["msgs_per_s"], 3) if raw.get("msgs_per_s") else None,
        "at_least_once_batched_vs_raw": round(alo_batched / raw["msgs_per_s"], 3)
        if raw.get("msgs_per_s") and alo_batched else None,
        "rtt_p50_vs_raw": round(r["request_rtt"]["p50_us"] / raw["rtt_p50_us"], 3) if raw.get("rtt_p50_us") else None,
    }
    sim = r["simulation"]
    met = {
        "at_least_once_throughput": ratios["at_least_once_vs_raw"] is not None
        and ratios["at_least_once_vs_raw"] >= TARGETS["at_least_once_vs_raw_min"],
        "request_rtt_p50": ratios["rtt_p50_vs_raw"] is not None and ratios["rtt_p50_vs_raw"] <= TARGETS["rtt_p50_vs_raw_max"],
        "request_rtt_p99_half_load": r["request_rtt_half_load"]["p99_us"] / 1000 < TARGETS["rtt_p99_half_load_ms_max"],
        "durable_throughput": r["unicast"]["durable"]["msgs_per_s"] >= TARGETS["durable_msgs_per_s_min"],
        "at_least_once_throughput_batched": ratios["at_least_once_batched_vs_raw"] is not None
        and ratios["at_least_once_batched_vs_raw"] >= TARGETS["at_least_once_vs_raw_min"],
        "durable_throughput_batched": batched.get("durable", {}).get("msgs_per_s", 0) >= TARGETS["durable_msgs_per_s_min"],
        "sim_broadcast_reach": sim["reach_ms_max"] is not None and sim["reach_ms_max"] <= TARGETS["sim_reach_ms_max"],
        "sim_broadcast_duplicates": sim["duplicates_per_node_max"] <= TARGETS["sim_duplicates_per_node_max"],
    }
    return ratios, met


def _percentiles(samples: list[float]) -> dict[str, Any]:
    s = sorted(samples)
    return {"samples": len(s), "p50_us": round(s[len(s) // 2], 1), "p99_us": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1)}


async def _wait(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _run_loop(factory: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(factory())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(factory())


if __name__ == "__main__":  # pragma: no cover - `agentnode bench messaging` is the entry point
    print(json.dumps(run_messaging_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000), indent=2))

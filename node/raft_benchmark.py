"""`agentnode bench raft`: the node's Raft group against a bare pysyncobj ReplDict cluster, in one run.

Both sides are three processes on 127.0.0.1 with the same Raft timing (heartbeat 50 ms, election
timeout 300-600 ms, pysyncobj's timer batching off) and the same workload, measured on the leader's
process. agentnode coalesces what one tick sends to a voter (decision 0035); bare pysyncobj sends one
AppendEntries per command and a commit notice after each commit. Figures:
- sequential commit latency (p50, p99) and sequential writes/s: one write in flight;
- the leader process's CPU time per sequential commit (`time.process_time`; steadier than wall time
  on a shared machine, and what bounds sequential writes/s when the leader is the busiest process);
- pipelined writes/s: `concurrency` writes in flight;
- failover: kill -9 of the leader, then the time until a write through a survivor commits.

agentnode: `agentnode join` processes (LocalCluster), Raft over the mutually authenticated TLS
transport, writes are `KvPut` proposals run inside the leader's node (control op ``raft_bench``).
Bare: pysyncobj 0.3.17 SyncObj + ReplDict over its own plain TCP transport (no authentication), in
child processes running `_BARE_SCRIPT`; pysyncobj is confined to consensus/, so the baseline is a
stand-alone script executed by a child interpreter and never imported by this package.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_raft_benchmark"]

VALUE_BYTES = 256
TARGETS = {
    "commit_p50": "sequential commit p50 <= 1 ms",
    "sequential": ">= 2,000 sequential writes/s",
    "failover": "kill -9 of the leader -> next committed write <= 2 s",
    "vs_bare": "no worse than 0.8x bare pysyncobj (throughputs >= 0.8x, p50 <= 1.25x)",
}
STEP_TIMEOUT_S = 120.0
"""Bound on each phase (start-up, a benchmark run, a failover)."""

_BARE_SCRIPT = r'''
import json, sys, threading, time
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict

self_addr, others, journal = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
conf = SyncObjConf(appendEntriesUseBatch=False, appendEntriesPeriod=0.05, raftMinTimeout=0.3, raftMaxTimeout=0.6,
                   leaderFallbackTimeout=0.6, commandsWaitLeader=False, connectionTimeout=3.5, journalFile=journal)
d = ReplDict()
obj = SyncObj(self_addr, others, conf=conf, consumers=[d])

def reply(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()

reply({"ready": True})
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "status":
        reply({"leader": bool(obj._isLeader()), "has_leader": obj._getLeader() is not None})
    elif op == "put":
        try:
            d.set("failover", "x", sync=True, timeout=1.0)
            reply({"ok": True})
        except Exception as exc:
            reply({"ok": False, "error": type(exc).__name__})
    elif op == "bench":
        value, count, concurrency = "v" * cmd["value_bytes"], cmd["count"], cmd["concurrency"]
        lat = []
        cpu = time.process_time()
        for _ in range(count):
            t = time.perf_counter()
            d.set("__bench__", value, sync=True, timeout=5.0)
            lat.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu
        slots = threading.Semaphore(concurrency)
        done = threading.Event()
        left = [count]
        lock = threading.Lock()
        def callback(result, error):
            slots.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()
        t = time.perf_counter()
        for _ in range(count):
            slots.acquire()
            d.set("__bench__", value, callback=callback)
        done.wait(60)
        reply({"sequential_s": lat, "pipelined_s": time.perf_counter() - t, "sequential_cpu_s": cpu})
'''


def run_raft_benchmark(writes: int = 2_000, concurrency: int = 64, value_bytes: int = VALUE_BYTES) -> dict[str, Any]:
    """Measure both systems (agentnode first) and return figures, ratios and which targets were met."""
    ours = _bench_agentnode(writes, concurrency, value_bytes)
    bare = _bench_bare(writes, concurrency, value_bytes)
    ratios = {
        "commit_p50": _ratio(ours["commit_p50_ms"], bare["commit_p50_ms"]),
        "commit_p99": _ratio(ours["commit_p99_ms"], bare["commit_p99_ms"]),
        "sequential": _ratio(ours["sequential_writes_per_s"], bare["sequential_writes_per_s"]),
        "pipelined": _ratio(ours["pipelined_writes_per_s"], bare["pipelined_writes_per_s"]),
        "failover": _ratio(ours["failover_s"], bare["failover_s"]),
        "leader_cpu_per_commit": (_ratio(ours["leader_cpu_us_per_sequential_commit"], bare["leader_cpu_us_per_sequential_commit"])
                                  if ours["leader_cpu_us_per_sequential_commit"] and bare["leader_cpu_us_per_sequential_commit"]
                                  else None),
    }
    met = {
        "commit_p50": ours["commit_p50_ms"] <= 1.0,
        "sequential": ours["sequential_writes_per_s"] >= 2_000,
        "failover": ours["failover_s"] <= 2.0,
        "vs_bare": ratios["sequential"] >= 0.8 and ratios["pipelined"] >= 0.8 and ratios["commit_p50"] <= 1.25,
    }
    return {"agentnode": ours, "bare_pysyncobj": bare, "ratios": ratios, "met": met, "targets": TARGETS,
            "writes": writes, "concurrency": concurrency, "value_bytes": value_bytes,
            "note": "ratios are agentnode / bare: higher is better for writes/s, lower for latency and failover"}


def _figures(sequential_s: list[float], pipelined_s: float, count: int, cpu_s: float | None = None) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in sequential_s)
    return {
        "leader_cpu_us_per_sequential_commit": None if cpu_s is None else round(cpu_s / len(ms) * 1e6, 1),
        "commit_p50_ms": round(statistics.median(ms), 3),
        "commit_p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
        "sequential_writes_per_s": round(len(ms) / (sum(ms) / 1000)),
        "pipelined_writes_per_s": round(count / pipelined_s),
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


# -- agentnode ------------------------------------------------------------------------------------


def _bench_agentnode(writes: int, concurrency: int, value_bytes: int) -> dict[str, Any]:
    from agentnode.control import ControlError
    from agentnode.local_cluster import LocalCluster

    with LocalCluster(3, profile="local") as cluster:
        leader = _wait_leader(cluster)
        run = leader.client(timeout_s=STEP_TIMEOUT_S).call("raft_bench", count=writes, concurrency=concurrency,
                                                           value_bytes=value_bytes)
        if run["role"] != "leader":
            raise RuntimeError("leadership moved during the benchmark; run it again on a quieter machine")
        figures = _figures(run["sequential_s"], run["pipelined_s"], writes, run.get("sequential_cpu_s"))
        survivor = next(n for n in cluster.nodes if n is not leader)
        cluster.kill(leader)
        start = time.monotonic()
        while True:
            try:
                if survivor.client(timeout_s=15).call("kv_put", key="failover", value="x")["ok"]:
                    break
            except ControlError:
                pass
            if time.monotonic() - start > STEP_TIMEOUT_S:
                raise RuntimeError("no write committed after killing the leader")
            time.sleep(0.01)
        figures["failover_s"] = round(time.monotonic() - start, 3)
        figures["transport"] = "tls (mutual authentication)"
        return figures


def _wait_leader(cluster: Any) -> Any:
    found: list[str] = []

    def agreed() -> bool:
        views = [n.client(timeout_s=5).call("raft_status") for n in cluster.nodes]
        leaders = {v["leader"] for v in views}
        found[:] = list(leaders)
        return len(leaders) == 1 and None not in leaders and views[0]["role"] in ("leader", "follower", "non-voter")

    cluster.wait_for("the Raft group to elect a leader", agreed, timeout_s=STEP_TIMEOUT_S)
    return next(n for n in cluster.nodes if n.node_id == found[0])


# -- bare pysyncobj -------------------------------------------------------------------------------


class _BareNode:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def ask(self, message: dict[str, Any], timeout_s: float = STEP_TIMEOUT_S) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._read(timeout_s)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        import selectors

        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise RuntimeError(f"bare pysyncobj process {self.process.pid} did not answer within {timeout_s} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bare pysyncobj process {self.process.pid} exited")
        return json.loads(line)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _bench_bare(writes: int, concurrency: int, value_bytes: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="agentnode-bare-raft-"))
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    nodes: list[_BareNode] = []
    try:
        for i, addr in enumerate(addrs):
            others = ",".join(a for a in addrs if a != addr)
            process = subprocess.Popen([sys.executable, "-c", _BARE_SCRIPT, addr, others, str(root / f"journal{i}")],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True, start_new_session=True)
            nodes.append(_BareNode(process))
        for node in nodes:
            node._read(STEP_TIMEOUT_S)
        leader = _bare_leader(nodes)
        run = leader.ask({"op": "bench", "count": writes, "concurrency": concurrency, "value_bytes": value_bytes})
        figures = _figures(run["sequential_s"], run["pipelined_s"], writes, run.get("sequential_cpu_s"))
        survivor = next(n for n in nodes if n is not leader)
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait(timeout=10)
        start = time.monotonic()
        while not survivor.ask({"op": "put"})["ok"]:
            if time.monotonic() - start > STEP_TIMEOUT_S:
                raise RuntimeError("bare pysyncobj committed nothing after its leader was killed")
            time.sleep(0.01)
        figures["failover_s"] = round(time.monotonic() - start, 3)
        figures["transport"] = "plain tcp (no authentication)"
        return figures
    finally:
        for node in nodes:
            if node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _bare_leader(nodes: list[_BareNode]) -> _BareNode:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        leaders = [n for n in nodes if n.ask({"op": "status"})["leader"]]
        if len(leaders) == 1:
            return leaders[0]
        time.sleep(0.05)
    raise RuntimeError("the bare pysyncobj cluster elected no leader")

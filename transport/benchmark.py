"""Transport benchmark: agentnode's transport against a raw asyncio TLS socket, in the same run.

Method (docs/benchmarks.md, after the transport baseline): a receiver and a sender process on
127.0.0.1, uvloop when installed, 256-byte msgpack messages built, encoded and decoded per
message, app-level credit flow control (at most `WINDOW` messages in flight, the receiver grants
`CREDIT` at a time). Throughput is one-way messages per second; RTT is one request outstanding,
the receiver answers each with a fresh 256-byte message. The raw baseline uses the same
certificates and batches up to `RAW_BATCH` frames per write. Phases alternate raw/agentnode so
machine noise hits both alike. Figures are printed, never asserted.

Run: ``agentnode bench transport [--transport tls|quic] [--duration S] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from agentnode.transport.base import Address, Transport
from agentnode.transport.connections import TransportConfig
from agentnode.transport.factory import create_transport
from agentnode.transport.framing import FrameDecoder, encode_frame
from agentnode.transport.identity import NodeIdentity, create_ca, issue_node_certificate
from agentnode.transport.tls import client_context, server_context

__all__ = ["BenchResult", "run_transport_benchmark"]

MESSAGE_BYTES = 256
WINDOW = 4096
"""Messages in flight, as in the transport baseline (app-level credit flow control)."""
CREDIT = 512
RAW_BATCH = 64
"""Frames per write in the raw baseline ("batch<=64" in the transport baseline)."""
RTT_WARMUP = 300
RTT_SAMPLES_MAX = 3000
PHASE_TIMEOUT_S = 60.0
TARGETS = {"throughput_ratio_min": 0.6, "rtt_p50_ratio_max": 1.5, "quic_msgs_per_s_min": 30_000}

BenchResult = dict[str, Any]

_PAD = b""


_SEQ_BASE = 1 << 32
"""Added to every sequence number so msgpack always uses the 9-byte uint64 form: fixed-size messages."""


def make_msg(seq: int, kind: str = "bench") -> dict[str, Any]:
    """A message whose msgpack encoding is exactly `MESSAGE_BYTES` bytes (for 0 <= seq < 2**63 - 2**32)."""
    return {"type": kind, "seq": _SEQ_BASE + seq, "sender": "bench-sender-0000000", "ts": 0.0, "payload": _PAD}


def _calibrate() -> None:
    global _PAD
    base = len(msgpack.packb({**make_msg(0), "payload": b""}, use_bin_type=True))
    pad = MESSAGE_BYTES - base  # the bin8 header (2 bytes) is already in `base`
    _PAD = b"x" * pad
    assert len(msgpack.packb(make_msg(0), use_bin_type=True)) == MESSAGE_BYTES


_calibrate()


def run_transport_benchmark(kind: str = "tls", duration_s: float = 2.5, repetitions: int = 1) -> BenchResult:
    """Run receiver and sender as two processes and return the figures (see module docstring).

    Each repetition runs raw throughput, agentnode throughput, raw RTT, agentnode RTT back to back;
    ratios are computed within a repetition and the median over repetitions is reported.
    """
    if duration_s <= 0 or repetitions < 1:
        raise ValueError("duration must be positive and repetitions at least 1")
    with tempfile.TemporaryDirectory(prefix="agentnode-bench-") as tmp:
        root = Path(tmp)
        create_ca(root / "ca")
        issue_node_certificate(root / "ca", root / "receiver", hosts=["127.0.0.1"])
        issue_node_certificate(root / "ca", root / "sender", hosts=["127.0.0.1"])
        cmd = [sys.executable, "-m", "agentnode.transport.benchmark"]
        receiver = subprocess.Popen(
            [*cmd, "receiver", "--dir", str(root / "receiver"), "--transport", kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert receiver.stdout is not None
            line = receiver.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark receiver failed to start (exit code {receiver.wait(10)})")
            ready = json.loads(line)
            sender = subprocess.run(
                [*cmd, "sender", "--dir", str(root / "sender"), "--transport", kind,
                 "--port", str(ready["port"]), "--raw-port", str(ready["raw_port"]),
                 "--peer-id", ready["node_id"], "--duration", str(duration_s), "--reps", str(repetitions)],
                stdout=subprocess.PIPE, text=True, timeout=repetitions * (PHASE_TIMEOUT_S * 4 + 8 * duration_s) + 30,
            )
            if sender.returncode != 0:
                raise RuntimeError(f"benchmark sender failed (exit code {sender.returncode})")
            result: BenchResult = json.loads(sender.stdout.strip().splitlines()[-1])
        finally:
            if receiver.stdin is not None:
                receiver.stdin.close()
            try:
                receiver.wait(10)
            except subprocess.TimeoutExpired:
                receiver.kill()
                receiver.wait()
    return _summarise(result, kind, duration_s)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    median = statistics.median(present)
    return round(median) if all(isinstance(v, int) for v in present) else round(median, 3)


def _summarise(result: BenchResult, kind: str, duration_s: float) -> BenchResult:
    reps = result["reps"]
    ours = {k: _median([r["agentnode"][k] for r in reps]) for k in reps[0]["agentnode"]}
    raw = {k: _median([r["raw_tls"][k] for r in reps]) for k in reps[0]["raw_tls"]}
    ours["frames_dropped"] = result["frames_dropped"]
    ours["backpressure_drops"] = result["backpressure_drops"]
    ratios = {
        name: _median([_ratio(r["agentnode"][key], r["raw_tls"][key]) for r in reps])
        for name, key in (("throughput", "msgs_per_s"), ("rtt_p50", "rtt_p50_us"), ("rtt_p99", "rtt_p99_us"))
    }
    if kind == "quic":
        met = {"quic_msgs_per_s": ours["msgs_per_s"] >= TARGETS["quic_msgs_per_s_min"]}
    else:
        met = {
            "throughput_ratio": ratios["throughput"] is not None and ratios["throughput"] >= TARGETS["throughput_ratio_min"],
            "rtt_p50_ratio": ratios["rtt_p50"] is not None and ratios["rtt_p50"] <= TARGETS["rtt_p50_ratio_max"],
        }
    return {
        "transport": kind,
        "message_bytes": MESSAGE_BYTES,
        "window": WINDOW,
        "duration_s": duration_s,
        "repetitions": len(reps),
        "loop": result["loop"],
        "agentnode": ours,
        "raw_tls": raw,
        "ratios": ratios,
        "targets": TARGETS,
        "met": met,
        "per_rep": reps,
    }


# -- processes ---------------------------------------------------------------------------------


def _run(coro_factory: Callable[[], Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro_factory()), "asyncio"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_factory()), "uvloop"


def _config() -> TransportConfig:
    return TransportConfig(send_queue_frames_max=4 * WINDOW)


async def _receiver(data_dir: Path, kind: str) -> None:
    loop = asyncio.get_running_loop()
    identity = NodeIdentity.load(data_dir)
    transport = create_transport(kind, identity, Address("127.0.0.1", 0), config=_config())
    state = {"count": 0, "reply_to": Address("127.0.0.1", 0)}

    def on_frame(sender: str, frame: Any) -> None:
        kind_ = frame["type"]
        if kind_ == "bench":
            state["count"] += 1
            if state["count"] % CREDIT == 0:
                transport.send(state["reply_to"], {"type": "credit", "n": CREDIT}, sender)
        elif kind_ == "ping":
            transport.send(state["reply_to"], make_msg(frame["seq"] - _SEQ_BASE, "pong"), sender)
        elif kind_ == "hello":
            state["reply_to"] = Address(frame["host"], frame["port"])
            state["count"] = 0

    transport.set_handler(on_frame)
    await transport.start()
    raw_server = await loop.create_server(lambda: _RawServer(), "127.0.0.1", 0, ssl=server_context(identity))
    raw_port = raw_server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": transport.listen_address.port, "raw_port": raw_port, "node_id": identity.node_id}) + "\n")
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin when done
    raw_server.close()
    await transport.close()


class _RawServer(asyncio.Protocol):
    """Raw baseline receiver: parse frames, grant credit, answer pings, all directly on the socket."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.decoder = FrameDecoder()
        self.count = 0

    def data_received(self, data: bytes) -> None:
        out = []
        for frame in self.decoder.feed(data):
            kind = frame["type"]
            if kind == "bench":
                self.count += 1
                if self.count % CREDIT == 0:
                    out.append(encode_frame({"type": "credit", "n": CREDIT}))
            elif kind == "ping":
                out.append(encode_frame(make_msg(frame["seq"] - _SEQ_BASE, "pong")))
        if out:
            self.transport.write(b"".join(out))


class _RawClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.credit = 0
        self.wake: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if frame["type"] == "credit":
                self.credit += frame["n"]
            else:
                self.credit += 1  # a pong
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def wait(self) -> None:
        self.wake = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.wake, PHASE_TIMEOUT_S)


async def _raw_throughput(port: int, identity: NodeIdentity, duration_s: float) -> float:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(_RawClient, "127.0.0.1", port, ssl=client_context(identity), server_hostname="127.0.0.1")
    proto.credit = WINDOW
    sent = 0
    start = time.perf_counter()
    end = start + duration_s
    while time.perf_counter() < end:
        if proto.credit <= 0 or proto.paused:
            await proto.wait()
            continue
        n = min(RAW_BATCH, proto.credit)
        tr.write(b"".join([encode_frame(make_msg(sent + i)) for i in range(n)]))
        sent += n
        proto.credit -= n
    # drain: everything sent must be acknowledged (credit back to the full window) before stopping the clock
    target_outstanding = sent % CREDIT
    while WINDOW - proto.credit > target_outstanding:
        await proto.wait()
    elapsed = time.perf_counter() - start
    tr.close()
    return (sent - target_outstanding) / elapsed


async def _raw_rtt(port: int, identity: NodeIdentity, duration_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(_RawClient, "127.0.0.1", port, ssl=client_context(identity), server_hostname="127.0.0.1")
    samples: list[float] = []
    end = time.perf_counter() + duration_s + 1.0
    for seq in range(RTT_WARMUP + RTT_SAMPLES_MAX):
        proto.credit = 0
        t0 = time.perf_counter()
        tr.write(encode_frame(make_msg(seq, "ping")))
        while proto.credit == 0:
            await proto.wait()
        if seq >= RTT_WARMUP:
            samples.append(time.perf_counter() - t0)
            if time.perf_counter() > end:
                break
    tr.close()
    return samples


class _OurClient:
    """Sender side over an agentnode `Transport`."""

    def __init__(self, transport: Transport, peer: Address, peer_id: str) -> None:
        self.t = transport
        self.peer = peer
        self.peer_id = peer_id
        self.credit = 0
        self.wake: asyncio.Future[None] | None = None
        transport.set_handler(self.on_frame)

    def on_frame(self, sender: str, frame: Any) -> None:
        self.credit += frame["n"] if frame["type"] == "credit" else 1
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def wait(self) -> None:
        self.wake = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.wake, PHASE_TIMEOUT_S)

    async def hello(self) -> None:
        addr = self.t.listen_address
        self.t.send(self.peer, {"type": "hello", "host": addr.host, "port": addr.port}, self.peer_id)
        # a ping makes sure the connection is up before the clock starts
        await self.rtt(1, 0)

    async def throughput(self, duration_s: float) -> float:
        send, peer, peer_id = self.t.send, self.peer, self.peer_id
        self.credit = WINDOW
        sent = 0
        start = time.perf_counter()
        end = start + duration_s
        while time.perf_counter() < end:
            if self.credit <= 0:
                await self.wait()
                continue
            n = self.credit
            for i in range(sent, sent + n):
                send(peer, make_msg(i), peer_id)
            sent += n
            self.credit = 0
        target_outstanding = sent % CREDIT
        while WINDOW - self.credit > target_outstanding:
            await self.wait()
        elapsed = time.perf_counter() - start
        return (sent - target_outstanding) / elapsed

    async def rtt(self, samples_max: int, duration_s: float) -> list[float]:
        samples: list[float] = []
        end = time.perf_counter() + duration_s + 1.0
        for seq in range(RTT_WARMUP + samples_max if samples_max > 1 else 1):
            self.credit = 0
            t0 = time.perf_counter()
            self.t.send(self.peer, make_msg(seq, "ping"), self.peer_id)
            while self.credit == 0:
                await self.wait()
            if seq >= RTT_WARMUP:
                samples.append(time.perf_counter() - t0)
                if time.perf_counter() > end:
                    break
        return samples


async def _sender(data_dir: Path, kind: str, port: int, raw_port: int, peer_id: str, duration_s: float, repetitions: int) -> BenchResult:
    identity = NodeIdentity.load(data_dir)
    transport = create_transport(kind, identity, Address("127.0.0.1", 0), config=_config())
    client = _OurClient(transport, Address("127.0.0.1", port), peer_id)
    await transport.start()
    reps = []
    try:
        await client.hello()
        for _ in range(repetitions):
            raw_tput = await _raw_throughput(raw_port, identity, duration_s)
            our_tput = await client.throughput(duration_s)
            raw_rtt = await _raw_rtt(raw_port, identity, duration_s)
            our_rtt = await client.rtt(RTT_SAMPLES_MAX, duration_s)
            reps.append({
                "agentnode": {"msgs_per_s": round(our_tput), **_percentiles(our_rtt)},
                "raw_tls": {"msgs_per_s": round(raw_tput), **_percentiles(raw_rtt)},
            })
        stats = transport.stats()
    finally:
        await transport.close()
    return {"reps": reps, "frames_dropped": stats.frames_dropped, "backpressure_drops": stats.backpressure_drops}


def _percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"rtt_p50_us": None, "rtt_p99_us": None, "rtt_samples": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"rtt_p50_us": round(statistics.median(ordered) * 1e6, 1), "rtt_p99_us": round(p99 * 1e6, 1), "rtt_samples": len(ordered)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentnode.transport.benchmark")
    parser.add_argument("role", choices=["receiver", "sender"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--transport", default="tls")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--raw-port", type=int, default=0)
    parser.add_argument("--peer-id", default="")
    parser.add_argument("--duration", type=float, default=2.5)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.role == "receiver":
        _run(lambda: _receiver(args.dir, args.transport))
        return
    result, loop_name = _run(lambda: _sender(args.dir, args.transport, args.port, args.raw_port, args.peer_id, args.duration, args.reps))
    result["loop"] = loop_name
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

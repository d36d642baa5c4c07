"""N real `agentnode join` processes, one per network namespace, with process, clock and disk faults.

The ideas of `agentnode.local_cluster.LocalCluster`, moved into namespaces: each node is started
through the CLI an operator uses (`ip netns exec NS python -m agentnode.cli.main join ...`, which
execs in place, so the Popen pid is the node's pid), listens on its namespace address, and is
operated through the control socket in its data directory: a Unix socket on the shared file
system, so the harness talks to every node from the root namespace whatever the network faults.

Process faults: kill -9 (by pid), restart with or without the data directory, SIGSTOP/SIGCONT.
Clock: nodes listed in `skewable` run under the PyPI libfaketime (LD_PRELOAD, monotonic clock left
real) with a per-node timestamp file the harness rewrites to jump the wall clock live. Disk: each
data directory can be its own tmpfs of a fixed size, filled live with a filler file.

Cleanup order (chaos-feasibility.md section 3): nodes and shaper by pid -> unmount -> delete the
namespaces -> remove the run directory; from `close()`, `atexit`, and the CLI's SIGTERM handler.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentnode.chaos.capabilities import faketime_library
from agentnode.chaos.faults import NetworkController, NetworkState
from agentnode.chaos.netns import CommandFailed, RunObjects, Topology, new_prefix, run, sweep_stale_runs
from agentnode.control import ControlClient, ControlError
from agentnode.datadir import DataDir
from agentnode.local_cluster import WaitTimeout

__all__ = ["ChaosCluster", "ChaosNode", "IDENTITY_FILES", "NodeExited", "WaitTimeout"]

NODE_PORT = 7946
"""Every node has its own address, so all use the memberlist/Serf port."""
START_TIMEOUT_S = 60.0
"""Python start-up plus the TLS listener, under the load of N other starting nodes on 2 cores."""
STOP_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 3.0
"""A control call to a live node answers in milliseconds; a paused node never answers."""
IDENTITY_FILES = ("node.key", "node.crt", "ca.crt")
"""Kept by `restart(wipe=True)`: a node that lost its disk is re-provisioned with the same identity."""
FILLER = ".chaos-filler"


class NodeExited(CommandFailed):
    """A node process ended while it was being started; the message carries its last log line."""


@dataclass
class ChaosNode:
    """One node process of a `ChaosCluster`."""

    index: int
    namespace: str
    address: str
    data_dir: Path
    node_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    clock_file: Path | None = None
    disk_mount: bool = False
    starts: int = 0
    log_offset: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def client(self, timeout_s: float = CONTROL_TIMEOUT_S) -> ControlClient:
        directory = DataDir(self.data_dir)
        return ControlClient(directory.control_socket, directory.path, timeout_s=timeout_s)

    def call(self, op: str, timeout_s: float = CONTROL_TIMEOUT_S, **args: Any) -> Any:
        return self.client(timeout_s).call(op, **args)

    def view(self) -> dict[str, str]:
        """node id -> state, as this node sees the cluster."""
        return {m["node_id"]: m["state"] for m in self.call("peers")}


class ChaosCluster:
    """Namespaces, nodes and a fault controller for one chaos run; `close()` removes all of it."""

    def __init__(
        self,
        size: int,
        *,
        profile: str = "local",
        transport: str = "tls",
        skewable: Sequence[int] = (),
        disk_mb: int | None = None,
        extra_args: Sequence[str] = (),
        keep: bool = False,
        root: Path | None = None,
    ) -> None:
        self.prefix = new_prefix()
        base = Path(root) if root is not None else Path(tempfile.gettempdir())
        self.run_dir = base / self.prefix
        self.size = size
        self.profile = profile
        self.transport = transport
        self.skewable = set(skewable)
        self.disk_mb = disk_mb
        self.extra_args = list(extra_args)
        self.keep = keep
        self.cluster = f"chaos-{self.prefix[3:]}"
        self.objects = RunObjects(self.run_dir)
        self.topology = Topology(self.objects, self.prefix, size)
        self.network: NetworkController | None = None
        self.nodes: list[ChaosNode] = []
        self.setup_s: dict[str, float] = {}
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> ChaosCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Sweep dead runs' leftovers, build the topology, provision identities, start every node."""
        from agentnode.transport.identity import create_ca, issue_node_certificate

        sweep_stale_runs(self.run_dir.parent)
        self.run_dir.mkdir(parents=True)
        self.objects.save()
        atexit.register(self.close)
        self.setup_s["topology"] = self.topology.create()
        self.network = NetworkController(self.topology, self.objects)
        started = time.monotonic()
        create_ca(self.run_dir / "ca")
        library = faketime_library() if self.skewable else None
        if self.skewable and library is None:
            raise CommandFailed("clock skew needs the PyPI libfaketime (pip install -e '.[chaos]')")
        for i in range(self.size):
            node = ChaosNode(i, self.topology.node_ns(i), self.topology.address(i), self.run_dir / f"n{i}")
            node.data_dir.mkdir()
            if self.disk_mb is not None:
                self._mount_tmpfs(node)
            node.node_id = issue_node_certificate(self.run_dir / "ca", node.data_dir, hosts=[node.address])
            if i in self.skewable:
                node.clock_file = self.run_dir / f"n{i}.faketime"
                node.clock_file.write_text("+0\n")
            self.nodes.append(node)
        self.setup_s["identities"] = time.monotonic() - started
        started = time.monotonic()
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self._wait_listening(node, timeout_s)
        self.setup_s["nodes"] = time.monotonic() - started

    def close(self) -> list[str]:
        """End every process we started (by pid), unmount, delete our namespaces, remove the run dir."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []
        for node in self.nodes:
            if node.alive and node.paused:
                _signal(node, signal.SIGCONT)
            if node.alive:
                _signal(node, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(node, signal.SIGKILL)
                node.process.wait(timeout=STOP_TIMEOUT_S)
        if self.network is not None:
            self.network.close()
        problems += self.objects.release()
        self.topology.created = False
        try:
            atexit.unregister(self.close)
        except Exception:  # interpreter shutting down
            pass
        if not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems

    # -- process faults -----------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """kill -9 node i (by pid) and reap it."""
        node = self.nodes[i]
        if node.alive:
            if node.paused:
                node.paused = False
            _signal(node, signal.SIGKILL)
            assert node.process is not None
            node.process.wait(timeout=STOP_TIMEOUT_S)
            node.exits.append(node.process.returncode)

    def stop_node(self, i: int) -> None:
        """Graceful stop (SIGTERM: the node leaves the cluster)."""
        node = self.nodes[i]
        if node.alive:
            _signal(node, signal.SIGTERM)
            assert node.process is not None
            try:
                node.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill(i)
                return
            node.exits.append(node.process.returncode)

    def restart(self, i: int, *, wipe: bool = False, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start node i again (killing it first if it runs); `wipe` deletes all but its identity files.

        Returns "" when the node listens again, or the node's own last words when it refused to start
        (a full disk, say): that is an outcome to check, not a harness failure.
        """
        node = self.nodes[i]
        if node.alive:
            self.kill(i)
        if wipe:
            for entry in node.data_dir.iterdir():
                if entry.name in IDENTITY_FILES:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self._spawn(node)
        try:
            self._wait_listening(node, timeout_s)
        except NodeExited as exc:
            assert node.process is not None
            node.exits.append(node.process.returncode)
            return str(exc)
        return ""

    def pause(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive and not node.paused:
            _signal(node, signal.SIGSTOP)
            node.paused = True

    def resume(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive and node.paused:
            _signal(node, signal.SIGCONT)
            node.paused = False

    # -- clock and disk -----------------------------------------------------------------------

    def skew(self, i: int, seconds: float) -> None:
        """Set node i's wall clock to real time + `seconds` (monotonic time is left real)."""
        node = self.nodes[i]
        if node.clock_file is None:
            raise ValueError(f"node {i} was not started skewable; list it in the scenario's `skewable` nodes")
        tmp = node.clock_file.with_name(node.clock_file.name + ".tmp")
        tmp.write_text(f"{seconds:+.0f}\n")
        os.replace(tmp, node.clock_file)

    def fill_disk(self, i: int) -> int:
        """Fill node i's data-directory tmpfs up to the last byte; return the bytes taken."""
        node = self.nodes[i]
        if not node.disk_mount:
            raise ValueError("disk faults need the scenario's `disk_mb` (a tmpfs per data directory)")
        stats = os.statvfs(node.data_dir)
        free = stats.f_bavail * stats.f_frsize
        filler = node.data_dir / FILLER
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(1, free))
        except OSError:
            pass  # filled as far as it goes: that is the point
        finally:
            os.close(fd)
        chunk = b"\0" * 4096
        fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            for _ in range(1 << 16):  # top up the last partial blocks; bounded
                os.write(fd, chunk)
        except OSError:
            pass
        finally:
            os.close(fd)
        return filler.stat().st_size

    def free_disk(self, i: int) -> None:
        try:
            (self.nodes[i].data_dir / FILLER).unlink()
        except FileNotFoundError:
            pass

    # -- network faults -----------------------------------------------------------------------

    @property
    def net(self) -> NetworkState:
        assert self.network is not None, "start the cluster first"
        return self.network.state

    def apply(self, state: NetworkState) -> None:
        assert self.network is not None, "start the cluster first"
        self.network.apply(state)

    # -- observing ----------------------------------------------------------------------------

    def live(self) -> list[ChaosNode]:
        return [n for n in self.nodes if n.alive and not n.paused]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.2) -> float:
        """Poll until `predicate` holds; return the seconds it took, or raise `WaitTimeout` naming `what`."""
        started = time.monotonic()
        deadline = started + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return time.monotonic() - started
            except (ControlError, OSError, KeyError) as exc:
                last_error = exc
            time.sleep(interval_s)
        raise WaitTimeout(f"timed out after {timeout_s} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))

    def converged(self, indices: Sequence[int] | None = None) -> bool:
        """True when every given live node sees exactly the given nodes alive."""
        group = [self.nodes[i] for i in indices] if indices is not None else self.live()
        expected = {n.node_id for n in group}
        for node in group:
            alive = {nid for nid, state in node.view().items() if state == "alive"}
            if alive != expected:
                return False
        return True

    # -- internals ----------------------------------------------------------------------------

    def _mount_tmpfs(self, node: ChaosNode) -> None:
        assert self.disk_mb is not None
        run(["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m,mode=0700", f"{self.prefix}d{node.index}", str(node.data_dir)])
        node.disk_mount = True
        self.objects.mounts.append(str(node.data_dir))
        self.objects.save()

    def _command(self, node: ChaosNode) -> list[str]:
        args = [
            "ip", "netns", "exec", node.namespace,
            sys.executable, "-m", "agentnode.cli.main", "join",
            "--data-dir", str(node.data_dir),
            "--listen", f"{node.address}:{NODE_PORT}",
            "--cluster", self.cluster,
            "--profile", self.profile,
            "--transport", self.transport,
            "--no-mdns",
        ]
        seeds = [f"{n.address}:{NODE_PORT}" for n in self.nodes if n is not node]
        if seeds:
            args += ["--bootstrap", ",".join(seeds)]
        return args + self.extra_args

    def _spawn(self, node: ChaosNode) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if node.clock_file is not None:
            library = faketime_library()
            assert library is not None
            env.update(
                LD_PRELOAD=str(library),
                FAKETIME_TIMESTAMP_FILE=str(node.clock_file),
                FAKETIME_NO_CACHE="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
            )
        with open(node.log_path, "ab") as log:
            node.log_offset = log.tell()
            node.process = subprocess.Popen(
                self._command(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        node.paused = False
        node.starts += 1
        self.objects.pids.append(node.process.pid)
        self.objects.save()

    def _wait_listening(self, node: ChaosNode, timeout_s: float) -> None:
        assert node.process is not None
        offset = node.log_offset
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = node.log_path.read_bytes()[offset:].decode(errors="replace")
            if " listening on " in text:
                return
            if node.process.poll() is not None:
                last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
                raise NodeExited(f"node {node.index} exited with {node.process.returncode}: {last[0]}")
            time.sleep(0.05)
        raise WaitTimeout(f"node {node.index} did not start listening within {timeout_s} s; log: {node.log_path}")


def _signal(node: ChaosNode, sig: int) -> None:
    """Signal the node by its pid (never by name)."""
    if node.process is None:
        return
    try:
        os.kill(node.process.pid, sig)
    except ProcessLookupError:
        pass

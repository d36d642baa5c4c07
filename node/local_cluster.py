"""A cluster of real `agentnode join` processes on loopback: for newcomers (`agentnode dev up`) and tests.

Each node is its own process with its own data directory, certificate and control socket, started
through the same CLI an operator uses. Processes are ended by pid, every wait is bounded, and the
throwaway directory is removed unless asked to keep it.
"""

from __future__ import annotations

import os
import re
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

from agentnode.control import ControlClient, ControlError
from agentnode.datadir import DataDir

__all__ = ["ClusterNode", "LocalCluster", "WaitTimeout"]

_LISTENING = re.compile(r"node (\S+) listening on (\S+)")


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited and what was last seen."""


@dataclass
class ClusterNode:
    """One node process of a `LocalCluster`."""

    index: int
    data_dir: Path
    node_id: str
    listen: str = "127.0.0.1:0"
    address: str | None = None
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    def client(self, timeout_s: float = 5.0) -> ControlClient:
        directory = DataDir(self.data_dir)
        return ControlClient(directory.control_socket, directory.path, timeout_s=timeout_s)

    def call(self, op: str, **args: Any) -> Any:
        return self.client().call(op, **args)

    def peers(self) -> list[dict[str, Any]]:
        return self.call("peers")

    def view(self) -> dict[str, str]:
        """node id -> state, as this node sees the cluster."""
        return {m["node_id"]: m["state"] for m in self.peers()}


class LocalCluster:
    """Start, stop, kill and restart `agentnode join` processes sharing one throwaway CA."""

    def __init__(
        self,
        size: int,
        *,
        root: Path | None = None,
        cluster: str | None = None,
        profile: str = "local",
        transport: str = "tls",
        mdns: bool = False,
        bootstrap: bool = True,
        extra_args: Sequence[str] = (),
        keep: bool = False,
    ) -> None:
        if not 1 <= size <= 64:
            raise ValueError("a local cluster has 1 to 64 nodes")
        self.size = size
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="agentnode-dev-"))
        self.cluster = cluster or f"dev-{os.getpid()}-{int(time.time()) % 100000}"
        self.profile = profile
        self.transport = transport
        self.mdns = mdns
        self.bootstrap = bootstrap
        self.extra_args = list(extra_args)
        self.keep = keep
        self.nodes: list[ClusterNode] = []

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> None:
        """Make the CA and the nodes' identities, then start every node, each bootstrapping from the first."""
        from agentnode.transport.identity import create_ca, issue_node_certificate

        if not self.ca_dir.exists():
            create_ca(self.ca_dir)
        for i in range(self.size):
            data_dir = self.root / f"node{i + 1}"
            node_id = issue_node_certificate(self.ca_dir, data_dir, hosts=["127.0.0.1", "localhost"])
            self.nodes.append(ClusterNode(i, data_dir, node_id, extra_args=list(self.extra_args)))
        for node in self.nodes:
            self.start_node(node, timeout_s=timeout_s)

    def add_node(self, *, ca_dir: Path | None = None, timeout_s: float = 30.0, extra_args: Sequence[str] = ()) -> ClusterNode:
        """Start one more node (optionally with a certificate from another CA, to test refusal)."""
        from agentnode.transport.identity import issue_node_certificate

        data_dir = self.root / f"node{len(self.nodes) + 1}"
        node_id = issue_node_certificate(ca_dir or self.ca_dir, data_dir, hosts=["127.0.0.1", "localhost"])
        node = ClusterNode(len(self.nodes), data_dir, node_id, extra_args=list(extra_args) or list(self.extra_args))
        self.nodes.append(node)
        self.start_node(node, timeout_s=timeout_s)
        return node

    def start_node(self, node: ClusterNode, timeout_s: float = 30.0, *, bootstrap: bool | None = None) -> None:
        """Start (or restart, on the same port) one node process and wait until it listens.

        With `bootstrap` (default: the cluster's setting) the node gets the other started nodes as
        seeds; without, it must find them through mDNS or its peer cache.
        """
        args = [
            sys.executable, "-m", "agentnode.cli.main", "join",
            "--data-dir", str(node.data_dir),
            "--listen", node.address or node.listen,
            "--cluster", self.cluster,
            "--profile", self.profile,
            "--transport", self.transport,
        ]
        seeds = [n.address for n in self.nodes if n is not node and n.address]
        if seeds and (self.bootstrap if bootstrap is None else bootstrap):
            args += ["--bootstrap", ",".join(seeds)]
        if not self.mdns:
            args.append("--no-mdns")
        args += node.extra_args
        node.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(node.log_path, "ab")
        offset = log.tell()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        node.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = node.log_path.read_bytes()[offset:].decode(errors="replace")
            match = _LISTENING.search(text)
            if match:
                node.address = match.group(2)
                return
            if node.process.poll() is not None:
                raise RuntimeError(f"node {node.index + 1} exited with {node.process.returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        raise WaitTimeout(f"node {node.index + 1} did not start listening within {timeout_s} s; log: {node.log_path}")

    def kill(self, node: ClusterNode, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (kill -9 by default) to the node's process, by pid, and reap it."""
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(node.process.pid, signal.SIGKILL)
                    node.process.wait(timeout=10)

    def stop(self) -> None:
        """Graceful SIGTERM to every node, SIGKILL to stragglers, then remove the directory (unless kept)."""
        for node in self.nodes:
            if node.alive:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.2) -> None:
        """Poll `predicate` until it holds; raise `WaitTimeout` naming `what` when time runs out."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (ControlError, OSError, KeyError) as exc:
                last_error = exc
            time.sleep(interval_s)
        raise WaitTimeout(f"timed out after {timeout_s} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))

    def converged(self, nodes: Sequence[ClusterNode] | None = None) -> bool:
        """True when every given live node sees exactly the given nodes alive."""
        group = list(nodes) if nodes is not None else [n for n in self.nodes if n.alive]
        expected = {n.node_id for n in group}
        for node in group:
            view = node.view()
            if {nid for nid, state in view.items() if state == "alive"} != expected:
                return False
        return True


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal the kernel sends this process when its parent dies (Linux)."""


def _die_with_parent() -> None:
    """In the child, before exec: a node of a local cluster gets SIGTERM (a graceful leave) when the process
    that started it dies, so a benchmark or `dev up` killed with SIGKILL or an unhandled SIGTERM leaves
    no orphan nodes behind. No-op where prctl is not available."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass

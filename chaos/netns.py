"""The chaos topology: one hub namespace holding a bridge, one namespace per node, joined by veths.

Nothing is created in the root network namespace: each veth is created straight into its two
namespaces (`eth0` in the node, `p<i>` in the hub), and every fault rule lives in the hub, so a
partition or a loss rule is one atomic nft transaction and healing is deleting a table
(chaos-feasibility.md section 3, tier 1). Every object carries the run-unique prefix and is
recorded in `<run>/objects.json` with the owner's pid, so a later run can sweep the leftovers of a
run that died without cleaning up, and never touches anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CommandFailed",
    "RunObjects",
    "Topology",
    "new_prefix",
    "run",
    "sweep_stale_runs",
]

COMMAND_TIMEOUT_S = 20.0
"""Upper bound for one `ip`/`nft`/`tc`/`mount` call; they take milliseconds (feasibility section 2)."""
NODES_MAX = 64
"""Addresses are 10.77.<k>.(10+i)/24; the hub port names p0..p63 stay far below IFNAMSIZ."""
PREFIX = "chx"
"""Every chaos object name starts with this and six hex digits unique to the run."""
OBJECTS_FILE = "objects.json"


class CommandFailed(RuntimeError):
    """A system command the harness needs failed; the message has the command and its error output."""


def new_prefix() -> str:
    return PREFIX + os.urandom(3).hex()


def run(cmd: Sequence[str], *, ns: str | None = None, input: str | None = None, timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command (inside namespace `ns` if given), bounded by `timeout_s`."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"`{' '.join(argv)}` did not finish within {timeout_s} s") from None
    except FileNotFoundError:
        raise CommandFailed(f"`{argv[0]}` is not installed (see `agentnode chaos doctor`)") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise CommandFailed(f"`{' '.join(argv)}` failed (rc {done.returncode}): {detail}")
    return done


@dataclass
class RunObjects:
    """What one run created, persisted so a later run can clean up after a crashed one."""

    run_dir: Path
    owner_pid: int = field(default_factory=os.getpid)
    namespaces: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def save(self) -> None:
        data = {"owner_pid": self.owner_pid, "namespaces": self.namespaces, "mounts": self.mounts, "pids": self.pids}
        tmp = self.run_dir / (OBJECTS_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.run_dir / OBJECTS_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> RunObjects:
        data = json.loads((run_dir / OBJECTS_FILE).read_text())
        return cls(run_dir, int(data["owner_pid"]), list(data["namespaces"]), list(data["mounts"]), list(data["pids"]))

    def release(self) -> list[str]:
        """Kill recorded processes (only if still ours), unmount, delete namespaces; return problems."""
        problems: list[str] = []
        for pid in self.pids:
            if _pid_runs_in(pid, self.run_dir):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for mount in reversed(self.mounts):
            if _is_mounted(mount):
                done = run(["umount", "-l", mount], check=False)
                if done.returncode:
                    problems.append(f"umount {mount}: {done.stderr.strip()}")
        for ns in reversed(self.namespaces):
            if Path("/run/netns", ns).exists():
                done = run(["ip", "netns", "del", ns], check=False)
                if done.returncode:
                    problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
        return problems


class Topology:
    """Hub bridge namespace plus `size` node namespaces, addresses 10.77.<subnet>.(10+i)/24."""

    def __init__(self, objects: RunObjects, prefix: str, size: int, *, subnet: int | None = None) -> None:
        if not 1 <= size <= NODES_MAX:
            raise ValueError(f"a chaos topology has 1 to {NODES_MAX} nodes, got {size}")
        self.objects = objects
        self.prefix = prefix
        self.size = size
        self.subnet = subnet if subnet is not None else int(prefix[-2:], 16)
        self.created = False

    @property
    def hub(self) -> str:
        return f"{self.prefix}h"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def address(self, i: int) -> str:
        return f"10.77.{self.subnet}.{10 + i}"

    @staticmethod
    def port(i: int) -> str:
        """The hub-side veth of node i: what partition and loss rules match on."""
        return f"p{i}"

    def create(self) -> float:
        """Build the hub, the bridge and the node namespaces; return the seconds it took."""
        started = time.monotonic()
        self._add_ns(self.hub)
        run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        # The NFQUEUE shaper sees bridged frames only through br_netfilter (feasibility, delay row).
        run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"], ns=self.hub, check=False)
        for i in range(self.size):
            ns = self.node_ns(i)
            self._add_ns(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", self.port(i), "netns", self.hub])
            run(["ip", "-n", self.hub, "link", "set", self.port(i), "master", "br0"])
            run(["ip", "-n", self.hub, "link", "set", self.port(i), "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.created = True
        return time.monotonic() - started

    def destroy(self) -> list[str]:
        """Delete our namespaces (their veths, bridge, qdiscs and rules go with them)."""
        problems = []
        for ns in [self.node_ns(i) for i in range(self.size)] + [self.hub]:
            if ns in self.objects.namespaces and Path("/run/netns", ns).exists():
                done = run(["ip", "netns", "del", ns], check=False)
                if done.returncode:
                    problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
        self.created = False
        return problems

    def _add_ns(self, ns: str) -> None:
        run(["ip", "netns", "add", ns])
        self.objects.namespaces.append(ns)
        self.objects.save()


def sweep_stale_runs(root: Path | None = None) -> list[str]:
    """Release the objects of earlier chaos runs whose owner process is gone; return what was swept."""
    swept = []
    base = Path(root or tempfile.gettempdir())
    for objects_file in sorted(base.glob(f"{PREFIX}*/{OBJECTS_FILE}")):
        run_dir = objects_file.parent
        try:
            objects = RunObjects.load(run_dir)
        except (OSError, ValueError, KeyError):
            continue
        if _pid_alive(objects.owner_pid):
            continue
        objects.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        swept.append(run_dir.name)
    return swept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_runs_in(pid: int, run_dir: Path) -> bool:
    """True when `pid` is a process of this run (its command line names the run directory)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(run_dir).encode() in cmdline


def _is_mounted(path: str) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().split("\n")
    except OSError:
        return False
    return any(line.split(" ")[1:2] == [path] for line in mounts if line)


def describe(objects: RunObjects) -> dict[str, Any]:
    return {"run_dir": str(objects.run_dir), "namespaces": list(objects.namespaces), "mounts": list(objects.mounts)}

"""Which fault kinds work on this machine, and why the others do not (`agentnode chaos doctor`).

The probe builds a throwaway namespace pair with a run-unique name, tries each mechanism the way
the harness uses it, keeps the tool's own error text as the reason, and deletes what it made.
Tests ask `missing(...)`; with `CI_STRICT_CAPABILITIES=1` a missing capability is a failure, not a
skip (the CI machine kind is known to have them all once `.ci/run` installed the tools).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentnode.chaos.netns import CommandFailed, new_prefix, run

__all__ = [
    "CAPABILITIES",
    "FAULT_NEEDS",
    "Capability",
    "faketime_library",
    "fault_support",
    "missing",
    "probe",
    "strict",
]

CAPABILITIES = ("root", "netns", "nft_bridge", "nft_dup", "nfqueue", "tbf", "netem", "tmpfs_mount", "faketime")
"""In probe order; `netem` is optional everywhere (the NFQUEUE shaper replaces it)."""

FAULT_NEEDS: dict[str, tuple[str, ...]] = {
    "kill": ("netns",),
    "restart": ("netns",),
    "pause": ("netns",),
    "partition": ("netns", "nft_bridge"),
    "one_way": ("netns", "nft_bridge"),
    "loss": ("netns", "nft_bridge"),
    "duplicate": ("netns", "nft_dup"),
    "delay": ("netns", "nfqueue"),
    "reorder": ("netns", "nfqueue"),
    "bandwidth": ("netns", "tbf"),
    "skew": ("faketime",),
    "disk_full": ("tmpfs_mount",),
}
"""Fault kind -> capabilities it needs (the node processes themselves always run in namespaces)."""


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    ok: bool
    reason: str


def strict() -> bool:
    """CI sets CI_STRICT_CAPABILITIES=1: a missing capability must fail, not skip."""
    return os.environ.get("CI_STRICT_CAPABILITIES", "") not in ("", "0")


def missing(needs: tuple[str, ...] | list[str]) -> list[Capability]:
    caps = probe()
    return [caps[name] for name in needs if not caps[name].ok]


def fault_support() -> dict[str, Capability]:
    """Fault kind -> a Capability saying whether it works here and, if not, why."""
    caps = probe()
    result = {}
    for kind, needs in FAULT_NEEDS.items():
        lacking = [caps[n] for n in needs if not caps[n].ok]
        if lacking:
            result[kind] = Capability(kind, False, "; ".join(f"{c.name}: {c.reason}" for c in lacking))
        else:
            result[kind] = Capability(kind, True, "needs " + ", ".join(needs))
    return result


def faketime_library() -> Path | None:
    """The libfaketime shared object vendored by the PyPI `libfaketime` wheel (not Debian's: see docs/chaos.md)."""
    spec = importlib.util.find_spec("libfaketime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
        if candidate.exists():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def probe() -> dict[str, Capability]:
    """Probe once per process; every probe command is bounded and everything made is deleted."""
    caps: dict[str, Capability] = {}

    def put(name: str, ok: bool, reason: str) -> None:
        caps[name] = Capability(name, ok, "ok" if ok and not reason else reason)

    def fail_rest(reason: str) -> dict[str, Capability]:
        for name in CAPABILITIES:
            if name not in caps:
                put(name, False, reason)
        return caps

    put("faketime", *_probe_faketime())
    if not sys.platform.startswith("linux"):
        return fail_rest(f"platform {sys.platform} is not Linux")
    is_root = os.geteuid() == 0
    put("root", is_root, "" if is_root else "not running as root: namespaces, nft and mounts need CAP_NET_ADMIN/CAP_SYS_ADMIN")
    if not shutil.which("ip"):
        return fail_rest("iproute2 `ip` is not installed (apt-get install iproute2)")
    prefix = new_prefix()
    node, hub = prefix + "pa", prefix + "ph"
    made: list[str] = []
    try:
        for ns in (node, hub):
            done = run(["ip", "netns", "add", ns], check=False)
            if done.returncode:
                return fail_rest(f"`ip netns add` failed: {_last_line(done)}")
            made.append(ns)
        done = run(["ip", "link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", "p0", "netns", hub], check=False)
        if done.returncode:
            return fail_rest(f"veth unavailable: {_last_line(done)}")
        done = run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"], check=False)
        put("netns", done.returncode == 0, "" if done.returncode == 0 else f"bridge unavailable: {_last_line(done)}")
        run(["ip", "-n", hub, "link", "set", "p0", "master", "br0"], check=False)
        if not caps["netns"].ok:
            return fail_rest("needs netns")
        done = run(["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "10ms"], ns=node, check=False)
        put("netem", done.returncode == 0, "" if done.returncode == 0 else f"tc netem: {_last_line(done)} (kernel lacks CONFIG_NET_SCH_NETEM; the NFQUEUE shaper is used instead)")
        run(["tc", "qdisc", "del", "dev", "eth0", "root"], ns=node, check=False)
        done = run(["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "100ms"], ns=node, check=False)
        put("tbf", done.returncode == 0, "" if done.returncode == 0 else f"tc tbf: {_last_line(done)}")
        if shutil.which("nft"):
            done = run(["nft", "-f", "-"], ns=hub, input=(
                "table bridge t {\n chain c {\n  type filter hook forward priority 0; policy accept;\n"
                '  iifname "p0" oifname "p0" numgen random mod 100 < 1 drop\n }\n}\n'
            ), check=False)
            put("nft_bridge", done.returncode == 0, "" if done.returncode == 0 else f"nft bridge table: {_last_line(done)}")
            done = run(["nft", "-f", "-"], ns=hub, input=(
                'table netdev d {\n chain c {\n  type filter hook ingress device "p0" priority 0; policy accept;\n'
                '  numgen random mod 100 < 1 dup to "p0"\n }\n}\n'
            ), check=False)
            put("nft_dup", done.returncode == 0, "" if done.returncode == 0 else f"nft netdev dup: {_last_line(done)}")
        else:
            put("nft_bridge", False, "nft is not installed (apt-get install nftables)")
            put("nft_dup", False, "nft is not installed (apt-get install nftables)")
        put("nfqueue", *_probe_nfqueue(hub))
        put("tmpfs_mount", *_probe_tmpfs())
    except CommandFailed as exc:
        return fail_rest(str(exc))
    finally:
        for ns in made:
            run(["ip", "netns", "del", ns], check=False)
    return fail_rest("not probed")


def _probe_nfqueue(hub: str) -> tuple[bool, str]:
    if not shutil.which("iptables"):
        return False, "iptables is not installed (apt-get install iptables)"
    if importlib.util.find_spec("netfilterqueue") is None:
        return False, "the Python package NetfilterQueue is missing (pip install -e '.[chaos]'; needs libnetfilter-queue-dev)"
    done = run(["iptables", "-A", "FORWARD", "-m", "physdev", "--physdev-in", "p0", "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"], ns=hub, check=False)
    if done.returncode:
        return False, f"iptables NFQUEUE/physdev rule: {_last_line(done)}"
    code = "from netfilterqueue import NetfilterQueue as Q; q = Q(); q.bind(7, lambda p: p.accept()); q.unbind()"
    done = run([sys.executable, "-c", code], ns=hub, check=False)
    if done.returncode:
        return False, f"binding an NFQUEUE failed: {_last_line(done)}"
    return True, ""


def _probe_tmpfs() -> tuple[bool, str]:
    directory = tempfile.mkdtemp(prefix="chxprobe")
    try:
        done = run(["mount", "-t", "tmpfs", "-o", "size=64k", "chxprobe", directory], check=False)
        if done.returncode:
            return False, f"mount -t tmpfs: {_last_line(done)}"
        run(["umount", directory], check=False)
        return True, ""
    finally:
        os.rmdir(directory)


def _probe_faketime() -> tuple[bool, str]:
    library = faketime_library()
    if library is None:
        return False, "the PyPI package libfaketime is missing (pip install -e '.[chaos]')"
    env = dict(os.environ, LD_PRELOAD=str(library), FAKETIME="+1h", FAKETIME_DONT_FAKE_MONOTONIC="1")
    code = "import time; a = time.time(); time.sleep(0.01); print(a, time.monotonic())"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "a python process under libfaketime hung (is this Debian's libfaketime?)"
    if done.returncode:
        return False, f"python under libfaketime failed: {_last_line(done)}"
    import time as _time

    faked, monotonic = (float(x) for x in done.stdout.split())
    offset = faked - _time.time()
    if not 3500 < offset < 3700:
        return False, f"LD_PRELOAD of {library} did not move time.time (offset {offset:.0f} s, expected +3600)"
    if monotonic > 1e9:
        return False, "libfaketime also faked CLOCK_MONOTONIC (waits would hang)"
    return True, ""


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or done.stdout or "").strip().splitlines()
    errors = [line.strip() for line in text if "rror" in line]
    if errors:
        return errors[0]
    return text[-1] if text else f"exit status {done.returncode}"

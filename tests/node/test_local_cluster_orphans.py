"""A local cluster's nodes do not outlive the process that started them (kill -9 of a benchmark, `dev up`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.loopback]

PARENT = """
import json, sys, time
from pathlib import Path
from agentnode.local_cluster import LocalCluster
cluster = LocalCluster(2, root=Path(sys.argv[1]))
cluster.start()
print(json.dumps([n.process.pid for n in cluster.nodes]), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_nodes_leave_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        pids = json.loads(line)
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    leftovers = [pid for pid in pids if _alive(pid)]
    for pid in leftovers:  # do not leak them if the assertion below fails
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, "nodes outlived the process that started them"

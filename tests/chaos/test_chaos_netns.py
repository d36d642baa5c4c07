"""The namespace topology and the network faults on real kernel paths (root, netns, nft)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentnode.chaos.faults import LinkFault, NetworkController
from agentnode.chaos.netns import RunObjects, Topology, new_prefix, run, sweep_stale_runs

pytestmark = pytest.mark.netns

RECEIVER = (
    "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],0)); "
    "print(s.getsockname()[1],flush=True); s.settimeout(1.5); n=0\n"
    "try:\n while True: s.recv(100); n+=1\nexcept socket.timeout: pass\nprint(n,flush=True)"
)
SENDER = "import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(int(sys.argv[3])): s.sendto(b'x',(sys.argv[1],int(sys.argv[2]))); time.sleep(0.002)"


def udp_delivered(topology: Topology, src: int, dst: int, count: int = 100) -> int:
    """Send `count` datagrams from node src to node dst inside the namespaces; return how many arrived."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", topology.node_ns(dst), sys.executable, "-c", RECEIVER, topology.address(dst)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        run([sys.executable, "-c", SENDER, topology.address(dst), port, str(count)], ns=topology.node_ns(src))
        out, _ = receiver.communicate(timeout=15)
        return int(out.strip().splitlines()[-1])
    finally:
        if receiver.poll() is None:
            os.kill(receiver.pid, 9)
            receiver.wait(timeout=5)


@pytest.fixture
def topology(tmp_path: Path, need):
    need("root", "netns", "nft_bridge")
    objects = RunObjects(tmp_path)
    topo = Topology(objects, new_prefix(), 3)
    controller = NetworkController(topo, objects)
    try:
        topo.create()
        yield topo, controller
    finally:
        controller.close()
        assert objects.release() == []
        for ns in objects.namespaces:
            assert not Path("/run/netns", ns).exists()


def test_partition_one_way_loss_and_heal(topology) -> None:
    topo, net = topology
    assert udp_delivered(topo, 0, 1) == 100
    net.apply(net.state.partition([[0], [1, 2]]))
    assert udp_delivered(topo, 0, 1) == 0
    assert udp_delivered(topo, 1, 2) == 100  # inside one side nothing changes
    net.apply(net.state.healed().one_way([0], [1]))
    assert udp_delivered(topo, 0, 1) == 0
    assert udp_delivered(topo, 1, 0) == 100
    net.apply(net.state.healed().link([0], [1], LinkFault(loss=0.5)))
    got = udp_delivered(topo, 0, 1, count=200)
    assert 40 < got < 160, got  # 50% loss, binomial; far outside these bounds is a broken rule
    assert net.rule_counters()["dropped_packets"] > 0
    net.apply(net.state.healed())
    assert udp_delivered(topo, 0, 1) == 100


def test_duplication(topology, need) -> None:
    need("nft_dup")
    topo, net = topology
    net.apply(net.state.link([0], [1], LinkFault(duplicate=0.5)))
    got = udp_delivered(topo, 0, 1, count=100)
    assert 120 < got < 190, got


def test_delay_through_the_shaper(topology, need) -> None:
    need("nfqueue")
    topo, net = topology
    net.apply(net.state.link([0], [1], LinkFault(delay_ms=200)))
    code = (
        "import socket,sys,time; s=socket.socket(); t=time.monotonic()\n"
        "try: s.connect((sys.argv[1], 9))\nexcept OSError: pass\nprint(time.monotonic()-t)"
    )
    # A refused TCP connect is one round trip: SYN there (delayed 200 ms), RST back.
    took = float(run([sys.executable, "-c", code, topo.address(1)], ns=topo.node_ns(0)).stdout)
    assert took >= 0.19, took
    assert net.shaper is not None and net.shaper.poll() is None
    net.apply(net.state.healed())
    took = float(run([sys.executable, "-c", code, topo.address(1)], ns=topo.node_ns(0)).stdout)
    assert took < 0.19, took


def test_sweep_releases_a_dead_runs_namespaces(tmp_path: Path, need) -> None:
    need("root", "netns")
    run_dir = tmp_path / new_prefix()
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    objects = RunObjects(run_dir, owner_pid=dead.pid)
    ns = run_dir.name + "x"
    run(["ip", "netns", "add", ns])
    objects.namespaces.append(ns)
    objects.save()
    alive = RunObjects(tmp_path / (new_prefix()), owner_pid=os.getpid())
    alive.run_dir.mkdir()
    alive.save()
    swept = sweep_stale_runs(tmp_path)
    assert swept == [run_dir.name]
    assert not Path("/run/netns", ns).exists() and not run_dir.exists()
    assert alive.run_dir.exists()  # a live owner's run is never touched

"""Real `agentnode join` processes on loopback: formation, kill -9, restart, refusal, isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentnode.local_cluster import LocalCluster

pytestmark = [pytest.mark.processes, pytest.mark.loopback]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentnode.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_five_nodes_converge_and_see_a_kill_and_a_restart(tmp_path: Path) -> None:
    with LocalCluster(5, root=tmp_path) as cluster:
        cluster.wait_for("5 nodes to converge", cluster.converged, timeout_s=30)

        # the CLI shows the same through the control endpoint, as JSON with the documented fields
        result = _cli("peers", "--data-dir", str(cluster.nodes[0].data_dir), "--json")
        assert result.returncode == 0, result.stderr
        peers = json.loads(result.stdout)
        assert {p["node_id"] for p in peers} == {n.node_id for n in cluster.nodes}
        assert all({"node_id", "address", "state", "incarnation"} <= p.keys() for p in peers)

        victim = cluster.nodes[2]
        before = {p["node_id"]: p["incarnation"] for p in peers}[victim.node_id]
        cluster.kill(victim)  # kill -9
        others = [n for n in cluster.nodes if n is not victim]
        cluster.wait_for(
            "every other node to mark the killed node dead",
            lambda: all(n.view().get(victim.node_id) == "dead" for n in others),
            timeout_s=30,
        )

        cluster.start_node(victim)
        cluster.wait_for("the restarted node to rejoin", cluster.converged, timeout_s=30)
        after = {p["node_id"]: p["incarnation"] for p in cluster.nodes[0].peers()}[victim.node_id]
        assert after > before


def test_node_from_another_ca_never_appears(tmp_path: Path) -> None:
    from agentnode.transport.identity import create_ca

    with LocalCluster(2, root=tmp_path) as cluster:
        cluster.wait_for("2 nodes to converge", cluster.converged, timeout_s=30)
        rogue_ca = tmp_path / "rogue-ca"
        create_ca(rogue_ca)
        rogue = cluster.add_node(ca_dir=rogue_ca)
        # give the rogue several probe rounds to try
        cluster.wait_for(
            "the rogue node to report a refused handshake",
            lambda: rogue.call("status")["transport_stats"]["dial_failures"]
            + rogue.call("status")["transport_stats"]["connections_refused"] > 0,
            timeout_s=20,
        )
        for node in cluster.nodes[:2]:
            assert rogue.node_id not in node.view()
            assert node.call("status")["transport_stats"]["connections_refused"] >= 1
        assert set(rogue.view()) == {rogue.node_id}


def test_two_clusters_on_one_loopback_stay_apart(tmp_path: Path) -> None:
    with LocalCluster(2, root=tmp_path / "a", cluster="alpha-" + tmp_path.name[-8:].lower().replace("_", "-"), mdns=True) as a:
        a.wait_for("cluster a to converge", a.converged, timeout_s=30)
        # cluster b shares the CA and even bootstraps into cluster a: names must still keep them apart
        b = LocalCluster(2, root=tmp_path / "b", cluster="beta-" + tmp_path.name[-8:].lower().replace("_", "-"), mdns=True,
                         extra_args=["--bootstrap", a.nodes[0].address or ""])
        b.root.mkdir(parents=True)
        import shutil

        shutil.copytree(a.ca_dir, b.ca_dir)
        with b:
            b.wait_for("cluster b to converge", b.converged, timeout_s=30)
            a_ids = {n.node_id for n in a.nodes}
            b_ids = {n.node_id for n in b.nodes}
            for node in a.nodes:
                assert not set(node.view()) & b_ids
            for node in b.nodes:
                assert not set(node.view()) & a_ids


def test_quic_cluster_converges_and_sees_a_kill(tmp_path: Path) -> None:
    with LocalCluster(3, root=tmp_path, transport="quic") as cluster:
        cluster.wait_for("3 QUIC nodes to converge", cluster.converged, timeout_s=30)
        victim = cluster.nodes[1]
        cluster.kill(victim)
        others = [n for n in cluster.nodes if n is not victim]
        cluster.wait_for(
            "the others to mark the killed node dead",
            lambda: all(n.view().get(victim.node_id) == "dead" for n in others),
            timeout_s=30,
        )


def test_mdns_alone_forms_the_cluster(tmp_path: Path) -> None:
    cluster_name = "mdns-" + tmp_path.name[-10:].lower().replace("_", "-")
    with LocalCluster(3, root=tmp_path, cluster=cluster_name, mdns=True, bootstrap=False) as cluster:
        cluster.wait_for("3 nodes to find each other over mDNS only", cluster.converged, timeout_s=40)


def test_full_restart_reforms_from_the_peer_cache(tmp_path: Path) -> None:
    with LocalCluster(3, root=tmp_path) as cluster:
        cluster.wait_for("convergence", cluster.converged, timeout_s=30)
        cluster.wait_for(
            "every node to write its peer cache",
            lambda: all(len(json.loads((n.data_dir / "peers.json").read_text()).get("peers", [])) >= 2 for n in cluster.nodes),
            timeout_s=30,
        )
        for node in cluster.nodes:
            cluster.kill(node)
        for node in cluster.nodes:  # no bootstrap list, no mDNS: only what each node remembers
            cluster.start_node(node, bootstrap=False)
        cluster.wait_for("one cluster again, re-seeded from the peer caches", cluster.converged, timeout_s=40)


def test_leave_and_doctor_through_the_cli(tmp_path: Path) -> None:
    from agentnode.transport.identity import create_ca, issue_node_certificate

    with LocalCluster(3, root=tmp_path) as cluster:
        cluster.wait_for("convergence", cluster.converged, timeout_s=30)
        first = cluster.nodes[0]

        second = cluster.nodes[1]
        healthy = _cli("doctor", "--data-dir", str(first.data_dir), "--bootstrap", second.address or "", "--json")
        findings = json.loads(healthy.stdout)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert any(f["check"] == "bootstrap" and f["ok"] and f["peer_id"] == second.node_id for f in findings)
        clocks = [f for f in findings if f["check"] == "clock"]
        assert len(clocks) == 2 and all(f["ok"] for f in clocks)  # one reading per peer, same machine clock
        assert cluster.converged()  # probing with the node's identity disturbed nothing

        create_ca(tmp_path / "other-ca")
        issue_node_certificate(tmp_path / "other-ca", tmp_path / "stranger")
        refused = _cli("doctor", "--data-dir", str(tmp_path / "stranger"), "--bootstrap", first.address or "", "--json")
        assert refused.returncode == 5
        bootstrap = [f for f in json.loads(refused.stdout) if f["check"] == "bootstrap"]
        assert bootstrap and not bootstrap[0]["ok"] and "CA" in bootstrap[0]["problem"] + bootstrap[0]["fix"]

        leaver = cluster.nodes[2]
        result = _cli("leave", "--data-dir", str(leaver.data_dir))
        assert result.returncode == 0, result.stderr
        assert leaver.process is not None and leaver.process.wait(timeout=15) == 0
        cluster.wait_for(
            "the others to mark the leaver left (not dead)",
            lambda: all(n.view().get(leaver.node_id) == "left" for n in cluster.nodes[:2]),
            timeout_s=20,
        )
        gone = _cli("status", "--data-dir", str(leaver.data_dir))
        assert gone.returncode == 3 and "no node is running" in gone.stderr


def test_dev_up_runs_and_stops_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentnode.cli.main", "dev", "up", "--nodes", "2", "--duration-s", "3"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "converged" in result.stdout and "yes" in result.stdout
    root = [line.split(" under ")[1] for line in result.stdout.splitlines() if " under " in line][0]
    assert not Path(root.strip()).exists()  # the throwaway directory is removed

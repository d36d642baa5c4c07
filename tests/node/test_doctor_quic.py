"""`agentnode doctor` against a QUIC seed: probed over QUIC with a membership ping, not over TLS/TCP."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import agentnode
from agentnode.doctor import diagnose
from agentnode.transport.identity import create_ca, issue_node_certificate

pytestmark = pytest.mark.loopback


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    create_ca(tmp_path / "ca")
    create_ca(tmp_path / "other-ca", name="another cluster")
    for name in ("seed", "prober"):
        issue_node_certificate(tmp_path / "ca", tmp_path / name)
    issue_node_certificate(tmp_path / "other-ca", tmp_path / "stranger")
    return tmp_path


def _seed_config(root: Path) -> agentnode.NodeConfig:
    return agentnode.NodeConfig(data_dir=root / "seed", listen="127.0.0.1:0", cluster="docq", mdns=False,
                                profile="local", transport="quic")


def _bootstrap_findings(findings: list) -> list:
    return [f for f in findings if f.check == "bootstrap"]


async def test_quic_seed_answers_with_its_node_id(pki: Path) -> None:
    async with agentnode.Node(_seed_config(pki)) as seed:
        findings = await diagnose(pki / "prober", bootstrap=[str(seed.address)], cluster="docq", transport="quic", mdns_seconds=0.2)
        (probe,) = _bootstrap_findings(findings)
        assert probe.ok, probe
        assert probe.kind == "ok"
        assert probe.peer_id == seed.node_id
        # The probe is not a join: the seed still sees only itself.
        assert [m.node_id for m in seed.members() if m.state == "alive"] == [seed.node_id]


async def test_quic_seed_of_another_ca_is_refused(pki: Path) -> None:
    async with agentnode.Node(_seed_config(pki)) as seed:
        findings = await diagnose(pki / "stranger", bootstrap=[str(seed.address)], cluster="docq", transport="quic", mdns_seconds=0.2)
        (probe,) = _bootstrap_findings(findings)
        assert not probe.ok
        assert probe.kind == "peer_other_ca", probe  # our side refused the seed's certificate, and says why
        assert "issuer" in probe.detail
        assert "agentnode ca issue" in probe.fix


async def test_nothing_listening_on_udp_times_out(pki: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:  # a bound UDP port nobody answers on
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        findings = await diagnose(pki / "prober", bootstrap=[f"127.0.0.1:{port}"], cluster="docq", transport="quic", mdns_seconds=0.2)
    (probe,) = _bootstrap_findings(findings)
    assert not probe.ok
    assert probe.kind in {"timeout", "unreachable"}, probe


async def test_wrong_cluster_name_is_explained(pki: Path) -> None:
    async with agentnode.Node(_seed_config(pki)) as seed:
        findings = await diagnose(pki / "prober", bootstrap=[str(seed.address)], transport="quic", mdns_seconds=0.2)
        (probe,) = _bootstrap_findings(findings)
        assert not probe.ok
        assert probe.kind == "no_answer"
        assert "--cluster" in probe.fix


async def test_wrong_transport_name_is_a_caller_error(pki: Path) -> None:
    with pytest.raises(ValueError, match="unknown transport"):
        await diagnose(pki / "prober", transport="udp")

"""The doctor's transport probes against real sockets on 127.0.0.1: each failure is told apart and explained."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentnode.transport.base import Address
from agentnode.transport.diagnosis import (
    MAX_CLOCK_SKEW_MS,
    Diagnosis,
    check_certificate,
    judge_clock_skew,
    probe_bootstrap,
    probe_listen,
)
from agentnode.transport.identity import NodeIdentity, create_ca, issue_node_certificate
from agentnode.transport.tls import TlsTransport

TIMEOUT_S = 10.0


@dataclass
class Pki:
    cluster: NodeIdentity
    """The prober: a node of the cluster."""
    server: NodeIdentity
    """The seed node of the cluster."""
    stranger: NodeIdentity
    """A node of another cluster (another CA)."""
    expired: NodeIdentity
    """A node of the cluster whose certificate has expired."""
    forged: NodeIdentity
    """Trusts the cluster CA but holds a certificate from the other CA."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ca")
    create_ca(root / "other-ca", name="another cluster")
    issue_node_certificate(root / "ca", root / "a")
    issue_node_certificate(root / "ca", root / "seed")
    issue_node_certificate(root / "other-ca", root / "x")
    issue_node_certificate(root / "ca", root / "old", validity_days=1, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30))
    stranger = NodeIdentity.load(root / "x")
    cluster = NodeIdentity.load(root / "a")
    forged = NodeIdentity(stranger.node_id, root / "x", stranger.key_path, stranger.cert_path, cluster.ca_path)
    expired = NodeIdentity(
        # load() does not check expiry on purpose (the doctor must still start); build it the same way
        NodeIdentity.load(root / "old").node_id, root / "old", root / "old" / "node.key", root / "old" / "node.crt", root / "old" / "ca.crt"
    )
    return Pki(cluster, NodeIdentity.load(root / "seed"), stranger, expired, forged)


def server_context(identity: NodeIdentity) -> ssl.SSLContext:
    """What a node's TLS listener does: TLS 1.3, our certificate, client certificates from our CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    context.load_verify_locations(cafile=str(identity.ca_path))
    return context


async def _drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.read(1024), TIMEOUT_S)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[Address]:
    """A real node transport (transport/tls.py) of the cluster, listening on an OS-assigned port."""
    transport = TlsTransport(pki.server, Address("127.0.0.1", 0))
    transport.set_handler(lambda sender, frame: None)
    await transport.start()
    yield transport.listen_address
    await transport.close()


@pytest.fixture
async def plain_ssl_server(pki: Pki) -> AsyncIterator[Address]:
    """A bare OpenSSL server (asyncio `ssl=`), to check the probe does not depend on our transport's behaviour."""
    server = await asyncio.start_server(_drain, "127.0.0.1", 0, ssl=server_context(pki.server), ssl_handshake_timeout=TIMEOUT_S)
    yield Address("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_explained(d: Diagnosis) -> None:
    assert not d.ok and d.problem and d.fix, d


pytestmark = pytest.mark.loopback


async def test_healthy_peer_reports_its_node_id(pki: Pki, tls_server: Address) -> None:
    d = await probe_bootstrap(tls_server, pki.cluster)
    assert d.ok and d.kind == "ok", d
    assert d.peer_id == pki.server.node_id
    assert pki.server.node_id in d.detail and "TLSv1.3" in d.detail
    assert d.problem == "" and d.fix == ""


@pytest.mark.parametrize("identity", ["cluster", "forged", "expired"])
async def test_plain_openssl_server_gives_the_same_answers(pki: Pki, plain_ssl_server: Address, identity: str) -> None:
    d = await probe_bootstrap(plain_ssl_server, getattr(pki, identity))
    assert d.kind == {"cluster": "ok", "forged": "rejected_by_peer", "expired": "own_cert_expired"}[identity], d


async def test_expected_node_id_mismatch_is_reported(pki: Pki, tls_server: Address) -> None:
    d = await probe_bootstrap(tls_server, pki.cluster, expected_node_id=pki.cluster.node_id)
    assert d.kind == "wrong_peer" and d.peer_id == pki.server.node_id
    assert_explained(d)


async def test_refused_port(pki: Pki) -> None:
    d = await probe_bootstrap(Address("127.0.0.1", free_port()), pki.cluster)
    assert d.kind == "refused"
    assert_explained(d)
    assert "node running" in d.fix


async def probe_transport_of(identity: NodeIdentity, prober: NodeIdentity) -> Diagnosis:
    transport = TlsTransport(identity, Address("127.0.0.1", 0))
    transport.set_handler(lambda sender, frame: None)
    await transport.start()
    try:
        return await probe_bootstrap(transport.listen_address, prober)
    finally:
        await transport.close()


async def test_peer_certificate_from_another_ca(pki: Pki) -> None:
    d = await probe_transport_of(pki.stranger, pki.cluster)
    assert d.kind == "peer_other_ca", d
    assert_explained(d)
    assert "another CA" in d.problem and "cluster's CA" in d.fix


async def test_peer_refuses_our_certificate_from_another_ca(pki: Pki, tls_server: Address) -> None:
    d = await probe_bootstrap(tls_server, pki.forged)
    assert d.kind == "rejected_by_peer", d
    assert_explained(d)
    assert "ca issue" in d.fix


async def test_our_expired_certificate(pki: Pki, tls_server: Address) -> None:
    own = check_certificate(pki.expired)
    assert not own.ok and own.kind == "expired"
    d = await probe_bootstrap(tls_server, pki.expired)
    assert d.kind == "own_cert_expired", d
    assert_explained(d)
    assert "expired" in d.problem


async def test_peer_with_expired_certificate(pki: Pki) -> None:
    d = await probe_transport_of(pki.expired, pki.cluster)
    assert d.kind == "peer_cert_expired", d
    assert_explained(d)


async def test_plain_tcp_program_is_not_tls(pki: Pki) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    try:
        d = await probe_bootstrap(Address("127.0.0.1", server.sockets[0].getsockname()[1]), pki.cluster)
    finally:
        server.close()
        await server.wait_closed()
    assert d.kind in ("not_tls", "closed_during_handshake"), d
    assert_explained(d)


async def test_silent_tcp_listener_times_out_in_tls(pki: Pki) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        d = await probe_bootstrap(Address("127.0.0.1", server.sockets[0].getsockname()[1]), pki.cluster, timeout_s=0.3)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert d.kind == "tls_timeout", d
    assert_explained(d)


async def test_listen_port_free(pki: Pki) -> None:
    d = await probe_listen(Address("127.0.0.1", free_port()))
    assert d.ok and d.kind == "ok"
    assert (await probe_listen(Address("127.0.0.1", 0))).ok


async def test_listen_port_held_by_a_node_names_it(pki: Pki, tls_server: Address) -> None:
    d = await probe_listen(tls_server)
    assert d.kind == "in_use", d
    assert_explained(d)
    assert pki.server.node_id in d.problem


async def test_listen_port_held_by_another_program(pki: Pki) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        async def probe() -> Diagnosis:
            return await probe_listen(Address("127.0.0.1", port), timeout_s=0.5)

        d = await probe()
    assert d.kind == "in_use"
    assert "agentnode" not in d.problem.split(":", 1)[1]


async def test_listen_address_not_on_this_machine() -> None:
    d = await probe_listen(Address("192.0.2.123", free_port()))  # TEST-NET-1 (RFC 5737), never local
    assert d.kind in ("not_local", "ok"), d  # "ok" only if some interface really holds that address
    if not d.ok:
        assert_explained(d)


async def test_listen_udp_for_quic() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        d = await probe_listen(Address("127.0.0.1", holder.getsockname()[1]), transport="quic")
    assert d.kind == "in_use" and "UDP" in d.target
    with pytest.raises(ValueError, match="transport"):
        await probe_listen(Address("127.0.0.1", 1), transport="carrier-pigeon")


def test_certificate_checks(pki: Pki) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    assert check_certificate(pki.cluster, now).kind == "ok"
    soon = check_certificate(pki.cluster, now + dt.timedelta(days=360))
    assert soon.ok and soon.kind == "expires_soon" and soon.fix
    assert check_certificate(pki.cluster, now + dt.timedelta(days=400)).kind == "expired"
    early = check_certificate(pki.cluster, now - dt.timedelta(days=2))  # beyond the one-day back-dating
    assert early.kind == "not_yet_valid" and "clock" in early.problem


# -- clock skew: a pure function --------------------------------------------------------------------


def test_clock_within_threshold_is_ok() -> None:
    d = judge_clock_skew(1_000_000, 1_000_000 + MAX_CLOCK_SKEW_MS)
    assert d.ok and d.kind == "ok" and "ahead" in d.detail


def test_clock_skew_beyond_threshold() -> None:
    d = judge_clock_skew(1_000_000, 1_000_000 - MAX_CLOCK_SKEW_MS - 1, peer="node b")
    assert d.kind == "skew" and not d.ok
    assert "behind" in d.problem and "node b" in d.problem and "NTP" in d.fix


def test_clock_skew_rtt_widens_the_margin() -> None:
    # 700 ms apart with a 600 ms round trip: the peer's stamp may be 300 ms old, so 400 ms +/- 300: not provable.
    assert judge_clock_skew(1_000_000, 1_000_700, rtt_ms=0).kind == "skew"
    assert judge_clock_skew(1_000_000, 1_000_100, rtt_ms=1_200).ok
    assert judge_clock_skew(10_000_000, 10_002_000, rtt_ms=200).kind == "skew"


def test_clock_skew_beyond_certificate_allowance_is_severe() -> None:
    d = judge_clock_skew(0, 25 * 3600 * 1000)  # beyond the one-day certificate back-dating
    assert d.kind == "skew_severe" and "certificates" in d.problem


def test_clock_misuse_raises() -> None:
    with pytest.raises(ValueError):
        judge_clock_skew(0, 0, rtt_ms=-1)
    with pytest.raises(ValueError):
        judge_clock_skew(0, 0, threshold_ms=0)


def test_diagnosis_is_frozen_and_serialisable() -> None:
    d = judge_clock_skew(0, 0)
    with pytest.raises(AttributeError):
        d.ok = False  # type: ignore[misc]
    assert d.to_dict()["kind"] == "ok"
    assert isinstance(Path(__file__), Path)

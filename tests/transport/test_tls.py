"""TLS transport on 127.0.0.1: exchange, connection management, and every kind of bad peer.

Each refusal must be counted and logged, and the node must keep serving a good peer afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agentnode.transport.base import Address, BackpressureError, Transport
from agentnode.transport.connections import TransportConfig
from agentnode.transport.factory import create_transport
from agentnode.transport.framing import encode_frame
from agentnode.transport.identity import NodeIdentity, create_ca, issue_node_certificate
from agentnode.transport.tls import TlsTransport

pytestmark = [pytest.mark.loopback, pytest.mark.timeout(60)]

LOCAL = Address("127.0.0.1", 0)
FAST = TransportConfig(frame_timeout_ms=300, close_grace_ms=500, dial_timeout_ms=2000, idle_timeout_ms=30_000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ca")
    create_ca(root / "other-ca")
    dirs = {}
    for name in ("a", "b", "c", "d"):
        issue_node_certificate(root / "ca", root / name)
        dirs[name] = root / name
    issue_node_certificate(root / "other-ca", root / "x")
    dirs["x"] = root / "x"
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    issue_node_certificate(root / "ca", root / "expired", validity_days=1, now=old)
    dirs["expired"] = root / "expired"
    # a certificate from the right CA whose CN claims node a's id
    ca_key = serialization.load_pem_private_key((root / "ca" / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((root / "ca" / "ca.crt").read_bytes())
    key = Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.timezone.utc)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NodeIdentity.load(root / "a").node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, None)  # type: ignore[arg-type]
    )
    (root / "forged").mkdir()
    (root / "forged" / "node.crt").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    (root / "forged" / "node.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    dirs["forged"] = root / "forged"
    return dirs


class Node:
    """A started transport plus what it received."""

    def __init__(self, transport: TlsTransport) -> None:
        self.t = transport
        self.got: list[tuple[str, Any]] = []
        transport.set_handler(lambda sender, frame: self.got.append((sender, frame)))

    @property
    def addr(self) -> Address:
        return self.t.listen_address

    @property
    def id(self) -> str:
        return self.t.node_id


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def make(pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    started: list[TlsTransport] = []

    async def factory(name: str, config: TransportConfig = FAST, seed: int = 1) -> Node:
        t = TlsTransport(NodeIdentity.load(pki[name]), LOCAL, config=config, rng=random.Random(seed))
        node = Node(t)
        await t.start()
        started.append(t)
        return node

    yield factory
    for t in started:
        await t.close()


async def exchange(x: Node, y: Node, n: int = 50) -> None:
    """x and y each send n frames to the other; all must arrive in order."""
    bx, by = len(x.got), len(y.got)
    for i in range(n):
        x.t.send(y.addr, {"i": i, "from": "x"}, y.id)
        y.t.send(x.addr, {"i": i, "from": "y"}, x.id)
    await until(lambda: len(y.got) - by >= n and len(x.got) - bx >= n)
    assert [f["i"] for s, f in y.got[by:] if s == x.id] == list(range(n))
    assert [f["i"] for s, f in x.got[bx:] if s == y.id] == list(range(n))


async def test_exchange_reuses_one_connection(make) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    assert isinstance(a.t, Transport)
    for i in range(300):
        a.t.send(b.addr, [i, b"payload", "text", 1.5, None, True], b.id)
    await until(lambda: len(b.got) == 300)
    assert b.got[0] == (a.id, [0, b"payload", "text", 1.5, None, True])
    # b answers through the inbound connection, even to an address it never dialled
    b.t.send(Address("127.0.0.1", 9), "reply", a.id)
    await until(lambda: len(a.got) == 1)
    assert a.got == [(b.id, "reply")]
    assert a.t.stats().connections_open == 1 and b.t.stats().connections_open == 1
    sa, sb = a.t.stats(), b.t.stats()
    assert sa.frames_sent == 300 and sb.frames_received == 300 and sa.bytes_sent == sb.bytes_received


async def test_bootstrap_send_without_peer_id_learns_the_id(make) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    a.t.send(b.addr, "hello")
    a.t.send(b.addr, "again")
    await until(lambda: len(b.got) == 2)
    a.t.send(b.addr, "third")  # address now maps to b's id: same connection
    await until(lambda: len(b.got) == 3)
    assert [f for _, f in b.got] == ["hello", "again", "third"]
    assert a.t.stats().connections_open == 1


async def test_simultaneous_dial_keeps_one_connection_and_loses_nothing(make) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    for i in range(500):
        a.t.send(b.addr, i, b.id)
        b.t.send(a.addr, i, a.id)
    await until(lambda: len(a.got) == 500 and len(b.got) == 500)
    assert [f for _, f in a.got] == list(range(500)) or sorted(f for _, f in a.got) == list(range(500))
    assert sorted(f for _, f in b.got) == list(range(500))
    await until(lambda: a.t.stats().connections_open == 1 and b.t.stats().connections_open == 1)
    await exchange(a, b)
    assert a.t.stats().frames_dropped == 0 and b.t.stats().frames_dropped == 0


async def test_peer_with_another_id_than_expected_is_refused(make, caplog) -> None:  # type: ignore[no-untyped-def]
    a, b, c = await make("a"), await make("b"), await make("c")
    with caplog.at_level(logging.WARNING, logger="agentnode.transport"):
        a.t.send(b.addr, "for c?", c.id)  # b's address, but we expect c
        await until(lambda: a.t.stats().connections_refused == 1)
    assert "expected" in caplog.text
    assert b.got == []
    assert a.t.stats().frames_dropped == 1
    await exchange(a, c)


def _raw_client_context(cert_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert_dir is not None:
        ctx.load_cert_chain(cert_dir / "node.crt", cert_dir / "node.key")
    return ctx


async def _raw_session(addr: Address, ctx: ssl.SSLContext, payload: bytes = b"", then_wait: bool = True) -> None:
    """Connect, send `payload`, and read until the server closes (bounded)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port, ssl=ctx), 5)
    except (OSError, ssl.SSLError):
        return
    try:
        if payload:
            writer.write(payload)
        if then_wait:
            await asyncio.wait_for(reader.read(), 5)
    except (OSError, ssl.SSLError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("client", "expect"),
    [(None, "certificate"), ("x", "TLS handshake failed"), ("expired", "expired"), ("forged", "hashes to")],
    ids=["no-certificate", "other-ca", "expired", "id-not-its-key"],
)
async def test_bad_client_is_refused_and_others_still_served(make, pki, caplog, client, expect) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    with caplog.at_level(logging.WARNING, logger="agentnode.transport"):
        await _raw_session(a.addr, _raw_client_context(pki[client] if client else None), encode_frame("sneak"))
        await until(lambda: a.t.stats().connections_refused >= 1)
    assert expect in caplog.text
    assert a.got == []
    assert a.t.stats().connections_open == 0
    await exchange(a, b)


async def test_node_with_expired_or_foreign_certificate_cannot_join(make) -> None:  # type: ignore[no-untyped-def]
    a = await make("a")
    for name in ("expired", "x"):
        bad = await make(name)
        bad.t.send(a.addr, "let me in", a.id)
        await until(lambda: a.t.stats().connections_refused >= 1 or bad.t.stats().connections_refused >= 1)
        await until(lambda: bad.t.stats().dial_failures >= 1)
    assert a.got == []


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        ((FAST.max_frame_bytes + 1).to_bytes(4, "big") + b"\x00" * 10, "limit"),
        ((4).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1", "not one valid msgpack value"),
        ((100).to_bytes(4, "big") + b"\x92\x01", "stalled"),
    ],
    ids=["oversized", "not-msgpack", "half-frame-stall"],
)
async def test_bad_frames_close_the_connection(make, pki, caplog, payload, what) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    with caplog.at_level(logging.WARNING, logger="agentnode.transport"):
        await _raw_session(a.addr, _raw_client_context(pki["c"]), encode_frame("valid first") + payload)
        await until(lambda: a.t.stats().protocol_errors == 1)
    assert what in caplog.text
    assert [f for _, f in a.got] == ["valid first"]
    await until(lambda: a.t.stats().connections_open == 0)
    await exchange(a, b)


async def test_backpressure_and_dial_failure(make) -> None:  # type: ignore[no-untyped-def]
    a = await make("a", TransportConfig(send_queue_frames_max=10, dial_timeout_ms=2000))
    dead = _dead_address()
    for i in range(10):
        a.t.send(dead, i)
    with pytest.raises(BackpressureError, match="full"):
        a.t.send(dead, 10)
    assert a.t.stats().backpressure_drops == 1
    await until(lambda: a.t.stats().dial_failures == 1)
    assert a.t.stats().frames_dropped == 10
    # within the backoff window a send is dropped at once, without another dial
    a.t.send(dead, "again")
    assert a.t.stats().frames_dropped == 11
    await asyncio.sleep(0.05)
    assert a.t.stats().dial_failures == 1


async def test_reconnects_after_backoff(make) -> None:  # type: ignore[no-untyped-def]
    cfg = TransportConfig(reconnect_backoff_ms_min=50, reconnect_backoff_ms_max=100, dial_timeout_ms=2000)
    a, b = await make("a", cfg), await make("b", cfg)
    dead = _dead_address()
    a.t.send(dead, "lost", b.id)
    await until(lambda: a.t.stats().dial_failures == 1)
    await asyncio.sleep(0.15)
    a.t.send(b.addr, "found", b.id)
    await until(lambda: [f for _, f in b.got] == ["found"])


async def test_idle_connections_close_and_come_back(make) -> None:  # type: ignore[no-untyped-def]
    cfg = TransportConfig(idle_timeout_ms=150, close_grace_ms=500)
    a, b = await make("a", cfg), await make("b", cfg)
    await exchange(a, b, 5)
    await until(lambda: a.t.stats().connections_open == 0 and b.t.stats().connections_open == 0)
    await exchange(a, b, 5)
    assert a.t.stats().frames_dropped == 0


async def test_connections_max_evicts_least_recently_used(make) -> None:  # type: ignore[no-untyped-def]
    a = await make("a", TransportConfig(connections_max=2, close_grace_ms=500))
    peers = [await make(n) for n in ("b", "c", "d")]
    for p in peers:
        a.t.send(p.addr, "hi", p.id)
        await until(lambda: len(p.got) == 1)
        assert a.t.stats().connections_open <= 2
    await until(lambda: peers[0].t.stats().connections_open == 0)
    assert a.t.stats().frames_dropped == 0
    await exchange(a, peers[0], 5)


async def test_close_flushes_queued_frames(make, pki) -> None:  # type: ignore[no-untyped-def]
    b = await make("b")
    a = TlsTransport(NodeIdentity.load(pki["a"]), LOCAL, config=FAST)
    await a.start()
    for i in range(2000):
        a.send(b.addr, i, b.id)
    await a.close()
    await until(lambda: len(b.got) == 2000)
    assert [f for _, f in b.got] == list(range(2000))


async def test_handler_errors_do_not_break_the_connection(make) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    seen: list[Any] = []

    def handler(sender: str, frame: Any) -> None:
        seen.append(frame)
        if frame == 1:
            raise RuntimeError("handler bug")

    b.t.set_handler(handler)
    for i in range(3):
        a.t.send(b.addr, i, b.id)
    await until(lambda: len(seen) == 3)
    assert b.t.stats().protocol_errors == 0


async def test_caller_errors(make) -> None:  # type: ignore[no-untyped-def]
    a, b = await make("a"), await make("b")
    with pytest.raises(TypeError, match="msgpack"):
        a.t.send(b.addr, {1, 2}, b.id)
    with pytest.raises(ValueError, match="own id"):
        a.t.send(b.addr, "me", a.id)
    with pytest.raises(ValueError, match="unknown transport"):
        create_transport("carrier-pigeon", NodeIdentity.load(a.t._identity.data_dir), LOCAL)
    with pytest.raises(ValueError, match="positive"):
        TransportConfig(idle_timeout_ms=0)
    with pytest.raises(OSError, match="cannot listen"):
        clash = TlsTransport(NodeIdentity.load(b.t._identity.data_dir), a.addr)
        await clash.start()


def test_factory_builds_tls_without_io(pki) -> None:  # type: ignore[no-untyped-def]
    t = create_transport("tls", NodeIdentity.load(pki["a"]), LOCAL)
    assert isinstance(t, TlsTransport) and isinstance(t, Transport)
    assert t.listen_address == LOCAL  # configured address until start() binds
    asyncio.run(t.close())  # closing a transport that never started is fine


def test_works_on_uvloop(pki) -> None:  # type: ignore[no-untyped-def]
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        a = Node(TlsTransport(NodeIdentity.load(pki["a"]), LOCAL, config=FAST))
        b = Node(TlsTransport(NodeIdentity.load(pki["b"]), LOCAL, config=FAST))
        await a.t.start()
        await b.t.start()
        try:
            await exchange(a, b, 200)
            await _raw_session(a.addr, _raw_client_context(pki["x"]), b"")
            await until(lambda: a.t.stats().connections_refused >= 1)
            await exchange(a, b, 10)
        finally:
            await a.t.close()
            await b.t.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _dead_address() -> Address:
    """A loopback port nobody listens on (bound then closed, so the OS reports refusal at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Address("127.0.0.1", port)




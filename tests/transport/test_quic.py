"""QUIC transport on 127.0.0.1: exchange, in-channel client authentication, and bad peers.

Refusals must be counted and logged, and the node must keep serving a good peer afterwards.
The hand-written `RawClient` speaks the wire protocol of transport/quic.py directly (through
aioquic's public API), so tests can play a client that lies, stalls or sends garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography.hazmat.primitives import serialization

from agentnode.transport.base import Address, BackpressureError, Transport
from agentnode.transport.connections import TransportConfig
from agentnode.transport.factory import create_transport
from agentnode.transport.framing import ControlFrame, FrameDecoder, encode_control, encode_frame
from agentnode.transport.identity import NodeIdentity, create_ca, issue_node_certificate
from agentnode.transport.quic import ALPN, ERROR_ABORTED, ERROR_REFUSED, QuicTransport, auth_transcript

pytestmark = [pytest.mark.loopback, pytest.mark.timeout(60)]

LOCAL = Address("127.0.0.1", 0)
FAST = TransportConfig(frame_timeout_ms=500, close_grace_ms=1000, dial_timeout_ms=1500, idle_timeout_ms=30_000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quic-pki")
    create_ca(root / "ca")
    create_ca(root / "other-ca")
    dirs = {"ca": root / "ca", "other-ca": root / "other-ca"}
    for name in ("a", "b", "c"):
        issue_node_certificate(root / "ca", root / name)
        dirs[name] = root / name
    issue_node_certificate(root / "other-ca", root / "x")
    dirs["x"] = root / "x"
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    issue_node_certificate(root / "ca", root / "expired", validity_days=1, now=old)
    dirs["expired"] = root / "expired"
    return dirs


class Node:
    """A started transport plus what it received."""

    def __init__(self, transport: QuicTransport) -> None:
        self.t = transport
        self.got: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        transport.set_handler(self._on_frame)

    def _on_frame(self, sender: str, frame: Any) -> None:
        self.got.append((sender, frame))
        self._changed.set()

    @property
    def id(self) -> str:
        return self.t.node_id

    @property
    def addr(self) -> Address:
        return self.t.listen_address

    async def wait_frames(self, n: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
        async def wait() -> None:
            while len(self.got) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.got


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@contextlib.asynccontextmanager
async def nodes(pki: dict[str, Path], *names: str, config: TransportConfig = FAST) -> AsyncIterator[list[Node]]:
    started = []
    try:
        for name in names:
            transport = QuicTransport(NodeIdentity.load(pki[name]), LOCAL, config=config)
            node = Node(transport)
            await transport.start()
            started.append(node)
        yield started
    finally:
        for node in started:
            await node.t.close()


class RawClient(QuicConnectionProtocol):
    """A QUIC client that speaks agentnode's handshake by hand, so it can misbehave."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.conn = quic
        self.decoder = FrameDecoder(allow_control=True)
        self.records: asyncio.Queue[Any] = asyncio.Queue()
        self.ended: asyncio.Future[ConnectionTerminated] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == 1:
            for record in self.decoder.feed(event.data):
                self.records.put_nowait(record)
        elif isinstance(event, ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)

    def write(self, data: bytes) -> None:
        self.conn.send_stream_data(1, data)
        self.transmit()

    async def record(self) -> Any:
        return await asyncio.wait_for(self.records.get(), 5)

    async def authenticate(self, identity: NodeIdentity, *, claim: str | None = None, server_id: str | None = None) -> Any:
        """Answer the challenge (optionally lying about ids); return the server's reply record, or None if it closed."""
        challenge = await self.record()
        assert isinstance(challenge, ControlFrame) and challenge.value["t"] == "challenge"
        claimed = claim or identity.node_id
        signed_for = server_id or challenge.value["id"]
        cert = identity.certificate().public_bytes(serialization.Encoding.DER)
        self.write(encode_control({
            "t": "auth", "v": 1, "id": claimed, "cert": cert, "window": 1 << 20,
            "sig": identity.sign(auth_transcript(challenge.value["nonce"], signed_for, claimed)),
        }))
        reply = asyncio.ensure_future(self.records.get())
        await asyncio.wait([reply, self.ended], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        return None

    async def ended_with(self) -> ConnectionTerminated:
        return await asyncio.wait_for(asyncio.shield(self.ended), 10)


@contextlib.asynccontextmanager
async def raw_client(server: Node, trust_ca: Path, server_name: str | None = None) -> AsyncIterator[RawClient]:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=server_name or server.id)
    config.load_verify_locations(cafile=str(trust_ca / "ca.crt"))
    async with connect(server.addr.host, server.addr.port, configuration=config, create_protocol=RawClient) as client:
        yield client  # type: ignore[misc]


# -- exchange ------------------------------------------------------------------------------------


async def test_two_nodes_exchange_frames_both_ways(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        assert isinstance(a.t, Transport)
        for i in range(100):
            a.t.send(b.addr, {"n": i, "blob": b"x" * 200}, peer_id=b.id)
        got = await b.wait_frames(100)
        assert [frame["n"] for _, frame in got] == list(range(100))
        assert {sender for sender, _ in got} == {a.id}
        b.t.send(a.addr, ["reply", 1], peer_id=a.id)
        assert await a.wait_frames(1) == [(b.id, ["reply", 1])]
        sa, sb = a.t.stats(), b.t.stats()
        assert sa.frames_sent == 100 and sa.frames_received == 1
        assert sb.frames_received == 100 and sb.frames_sent == 1
        assert sa.connections_open == 1 and sb.connections_open == 1, "the reply reused the inbound connection"
        assert sa.connections_refused == sb.connections_refused == 0


async def test_bootstrap_dial_learns_the_peer_id(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        a.t.send(b.addr, "hello")  # no peer id: the probe learns it, a second dial verifies it by TLS
        assert await b.wait_frames(1) == [(a.id, "hello")]
        a.t.send(b.addr, "again", peer_id=b.id)
        await b.wait_frames(2)
        assert b.got[1] == (a.id, "again")
        assert a.t.stats().connections_open == 1


async def test_factory_builds_quic(pki: dict[str, Path]) -> None:
    transport = create_transport("quic", NodeIdentity.load(pki["a"]), LOCAL, config=FAST)
    assert isinstance(transport, QuicTransport)


async def test_large_frames_flow_under_credit_and_stay_in_order(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b", config=TransportConfig(close_grace_ms=1000)) as (a, b):
        blob = bytes(range(256)) * 256  # 64 KiB; 64 of them overrun the 2 MiB credit window twice
        for i in range(64):
            a.t.send(b.addr, [i, blob], peer_id=b.id)
        got = await b.wait_frames(64, timeout=30)
        assert [frame[0] for _, frame in got] == list(range(64))
        assert all(frame[1] == blob for _, frame in got)


async def test_simultaneous_dials_converge_on_one_connection(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        for i in range(20):
            a.t.send(b.addr, ("a", i), peer_id=b.id)
            b.t.send(a.addr, ("b", i), peer_id=a.id)
        await a.wait_frames(20)
        await b.wait_frames(20)
        assert [f[1] for _, f in b.got] == list(range(20))
        assert [f[1] for _, f in a.got] == list(range(20))
        await wait_until(lambda: a.t.stats().connections_open == 1 and b.t.stats().connections_open == 1)
        a.t.send(b.addr, "after", peer_id=b.id)
        await b.wait_frames(21)


async def test_close_delivers_queued_frames(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        a.t.send(b.addr, "warm-up", peer_id=b.id)
        await b.wait_frames(1)
        for i in range(2000):
            a.t.send(b.addr, i, peer_id=b.id)
        await a.t.close()  # BYE handshake and FINs: nothing queued is lost
        await b.wait_frames(2001)
        assert [f for _, f in b.got[1:]] == list(range(2000))
        assert a.t.stats().frames_dropped == 0


async def test_unreachable_peer_backpressure_and_drops(pki: dict[str, Path]) -> None:
    config = TransportConfig(send_queue_frames_max=10, dial_timeout_ms=300, close_grace_ms=300)
    async with nodes(pki, "a", config=config) as (a,):
        nobody = Address("127.0.0.1", 9)  # discard port: nothing answers QUIC there
        for i in range(10):
            a.t.send(nobody, i)
        with pytest.raises(BackpressureError, match="send_queue_frames_max"):
            a.t.send(nobody, 10)
        await wait_until(lambda: a.t.stats().dial_failures == 1)
        stats = a.t.stats()
        assert stats.frames_dropped == 10 and stats.backpressure_drops == 1


# -- authentication -------------------------------------------------------------------------------


async def test_other_ca_refused_as_server_and_as_client(pki: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentnode.transport")
    async with nodes(pki, "a", "x", "b") as (a, x, b):
        # a dials x: x's certificate is from another CA, so a's TLS refuses it
        a.t.send(x.addr, "to x", peer_id=x.id)
        await wait_until(lambda: a.t.stats().connections_refused >= 1)
        # x dials a: x does not trust a's CA either
        x.t.send(a.addr, "to a", peer_id=a.id)
        await wait_until(lambda: x.t.stats().connections_refused >= 1)
        # a client holding another CA's certificate, but trusting a's CA, fails in-channel authentication
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(NodeIdentity.load(pki["x"])) is None
            assert (await client.ended_with()).error_code == ERROR_REFUSED
        assert a.got == [] and x.got == []
        assert "not signed by the cluster CA" in caplog.text  # the in-channel refusal, logged with its reason
        assert "certificate signature failure" in caplog.text  # the TLS refusals
        # a keeps serving its cluster
        b.t.send(a.addr, "still here", peer_id=a.id)
        assert await a.wait_frames(1) == [(b.id, "still here")]


async def test_foreign_client_is_refused_in_channel(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a") as (a,):
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            challenge = await client.record()
            x = NodeIdentity.load(pki["x"])
            cert = x.certificate().public_bytes(serialization.Encoding.DER)
            client.write(encode_control({"t": "auth", "v": 1, "id": x.node_id, "cert": cert, "window": 1 << 20,
                                         "sig": x.sign(auth_transcript(challenge.value["nonce"], a.id, x.node_id))}))
            ended = await client.ended_with()
            assert ended.error_code == ERROR_REFUSED
            assert "cluster CA" in ended.reason_phrase
        assert a.t.stats().connections_refused == 1
        assert a.t.stats().connections_open == 0


async def test_client_claiming_another_id_is_refused(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        c = NodeIdentity.load(pki["c"])
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(c, claim=b.id) is None  # c's valid certificate, but claims to be b
            ended = await client.ended_with()
            assert ended.error_code == ERROR_REFUSED and b.id in ended.reason_phrase
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(c, server_id=b.id) is None  # a signature made for another server (relay)
            ended = await client.ended_with()
            assert ended.error_code == ERROR_REFUSED and "signature" in ended.reason_phrase
        assert a.t.stats().connections_refused == 2
        assert a.got == []
        # an honest client gets in
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            reply = await client.authenticate(c)
            assert reply == ControlFrame({"t": "accept"})
            client.write(encode_frame("hi"))
            assert await a.wait_frames(1) == [(c.node_id, "hi")]


async def test_expired_client_certificate_is_refused(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a") as (a,):
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(NodeIdentity.load(pki["expired"])) is None
            ended = await client.ended_with()
            assert ended.error_code == ERROR_REFUSED and "expired" in ended.reason_phrase
        assert a.t.stats().connections_refused == 1


async def test_dial_expecting_another_id_is_refused(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a", "b", "c") as (a, b, c):
        a.t.send(b.addr, "for c", peer_id=c.id)  # b listens there; its certificate does not name c
        await wait_until(lambda: a.t.stats().dial_failures == 1)
        assert a.t.stats().connections_refused == 1 and a.t.stats().frames_dropped == 1
        assert b.got == []


async def test_silent_client_is_closed_after_timeout(pki: dict[str, Path]) -> None:
    config = TransportConfig(dial_timeout_ms=400, close_grace_ms=500)
    async with nodes(pki, "a", "b", config=config) as (a, b):
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            challenge = await client.record()
            assert challenge.value["t"] == "challenge" and challenge.value["id"] == a.id
            ended = await client.ended_with()  # never answered
            assert ended.error_code == ERROR_REFUSED and "challenge" in ended.reason_phrase
        assert a.t.stats().connections_refused == 1
        b.t.send(a.addr, "ok", peer_id=a.id)
        assert await a.wait_frames(1) == [(b.id, "ok")]


@pytest.mark.parametrize(
    ("garbage", "what"),
    [(((1 << 20) + 1).to_bytes(4, "big"), "oversize frame"), (b"\x00\x00\x00\x01\xc1", "not msgpack")],
)
async def test_garbage_after_authentication_closes_only_that_connection(pki: dict[str, Path], garbage: bytes, what: str) -> None:
    async with nodes(pki, "a", "b") as (a, b):
        b.t.send(a.addr, "before", peer_id=a.id)
        await a.wait_frames(1)
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(NodeIdentity.load(pki["c"])) == ControlFrame({"t": "accept"})
            client.write(encode_frame("valid first"))
            await a.wait_frames(2)
            client.write(garbage)
            ended = await client.ended_with()
            assert ended.error_code == ERROR_ABORTED, what
        assert a.t.stats().protocol_errors == 1
        b.t.send(a.addr, "after", peer_id=a.id)
        await a.wait_frames(3)
        assert [f for _, f in a.got] == ["before", "valid first", "after"]


async def test_stalled_half_frame_closes_the_connection(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a") as (a,):
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(NodeIdentity.load(pki["c"])) == ControlFrame({"t": "accept"})
            client.write(encode_frame("complete") + encode_frame("half")[:5])
            ended = await client.ended_with()
            assert ended.error_code == ERROR_ABORTED
        assert a.got[0][1] == "complete"
        assert a.t.stats().protocol_errors == 1



async def test_data_on_an_unexpected_stream_is_a_protocol_error(pki: dict[str, Path]) -> None:
    async with nodes(pki, "a") as (a,):
        async with raw_client(a, trust_ca=pki["ca"]) as client:
            assert await client.authenticate(NodeIdentity.load(pki["c"])) == ControlFrame({"t": "accept"})
            client.conn.send_stream_data(0, encode_frame("side door"))
            client.transmit()
            assert (await client.ended_with()).error_code == ERROR_ABORTED
        assert a.t.stats().protocol_errors == 1 and a.got == []


async def test_idle_connection_closes_cleanly_and_redials(pki: dict[str, Path]) -> None:
    config = TransportConfig(idle_timeout_ms=300, close_grace_ms=1000, dial_timeout_ms=2000)
    async with nodes(pki, "a", "b", config=config) as (a, b):
        a.t.send(b.addr, 1, peer_id=b.id)
        await b.wait_frames(1)
        await wait_until(lambda: a.t.stats().connections_open == 0 and b.t.stats().connections_open == 0)
        a.t.send(b.addr, 2, peer_id=b.id)
        await b.wait_frames(2)
        assert [f for _, f in b.got] == [1, 2]
        assert a.t.stats().frames_dropped == 0 and a.t.stats().protocol_errors == 0

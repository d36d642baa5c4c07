"""QUIC transport over aioquic: one UDP socket per node, one authenticated stream per peer pair.

Why it is shaped like this (docs/decisions/0010-quic-client-authentication.md and
0011-quic-streams-credits-and-close.md):

- aioquic verifies the *server* certificate through its public API (`cafile` = cluster CA,
  `server_name` = the expected node id, which certificates carry as SAN DNSName), but offers no
  public way to request or check a *client* certificate. So the server authenticates the client
  inside the encrypted channel before the connection is handed to the node: it sends a fresh random
  challenge; the client answers with its certificate and an Ed25519 signature over a transcript
  binding a protocol label, the challenge, the server's node id and the client's node id. No
  private aioquic attribute is read or written; no session tickets, no 0-RTT.
- aioquic's stream writer has no backpressure, so each direction of the data stream is
  flow-controlled by application credits (absolute byte offsets, the MAX_STREAM_DATA idea of
  RFC 9000 section 4.1) on a small unidirectional stream; a credit-starved stream pauses the
  connection manager's writer, whose per-peer queue is bounded.
- The sans-I/O `QuicConnection` is driven directly, as aioquic's own asyncio adapter does, so one
  UDP socket with 4 MiB buffers serves dialled and accepted connections alike and transmits are
  coalesced per loop turn.
- Queues, coalescing, duplicate connections, backoff, idle close and the BYE close handshake are
  the shared `ConnectionManager` (connections.py), exactly as for TLS.

Wire protocol (stream ids per RFC 9000 section 2.1):

    stream 1 (first server-initiated bidirectional): the handshake, then the manager's frames
        S->C  control {"t": "challenge", "v": 1, "id": server_id, "nonce": 32 bytes, "window": int}
        C->S  control {"t": "auth", "v": 1, "id": client_id, "cert": DER, "sig": bytes, "window": int}
        S->C  control {"t": "accept"}     (or CONNECTION_CLOSE, application code ERROR_REFUSED, with the reason)
        then  frames and BYE exactly as over TLS; FIN once the BYE handshake is done
    stream 2 (client uni) and stream 3 (server uni): credits, 8-byte big-endian absolute offsets of
        stream-1 bytes after the handshake that the peer may send

    transcript = AUTH_LABEL || nonce || len8(server_id) || server_id || len8(client_id) || client_id
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import enum
import ipaddress
import logging
import os
import random
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, QuicProtocolVersion, pull_quic_header
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentnode.transport.base import Address, FrameHandler, PeerRefused, TransportStats
from agentnode.transport.connections import Connection, ConnectionManager, TransportConfig
from agentnode.transport.framing import ControlFrame, FrameDecoder, FrameError, encode_control, encode_frame
from agentnode.transport.identity import NodeIdentity, is_node_id, verify_peer_certificate

__all__ = [
    "ALPN",
    "AUTH_LABEL",
    "ERROR_ABORTED",
    "ERROR_REFUSED",
    "QuicTransport",
    "auth_transcript",
]

logger = logging.getLogger("agentnode.transport")

ALPN = "agentnode/1"
"""The one application protocol (RFC 7301); a peer offering anything else fails the TLS handshake."""
AUTH_LABEL = b"agentnode/1 quic client auth\x00"
"""Domain separation: a signature made for this handshake proves nothing anywhere else."""
PROTOCOL_VERSION = 1
CHALLENGE_BYTES = 32
"""A 256-bit nonce, like the TLS 1.3 hello randoms (RFC 8446 section 4.1.2)."""
DATA_STREAM_ID = 1
"""First server-initiated bidirectional stream (RFC 9000 section 2.1: low bits 0b01)."""
CLIENT_CREDIT_STREAM_ID = 2
"""First client-initiated unidirectional stream (low bits 0b10)."""
SERVER_CREDIT_STREAM_ID = 3
"""First server-initiated unidirectional stream (low bits 0b11)."""
CREDIT_RECORD_BYTES = 8
CONNECTION_ID_BYTES = 8
"""aioquic's default local connection id length; the demultiplexer parses short headers with it."""
MIN_INITIAL_DATAGRAM_BYTES = 1200
"""Servers drop client Initial datagrams smaller than this (RFC 9000 section 14.1)."""
UDP_BUFFER_BYTES = 4 << 20
"""4 MiB SO_RCVBUF/SO_SNDBUF: with the 208 KiB default the receiver dropped 98-167 datagrams per
2.5 s burst on loopback, feeding loss recovery (transport-baseline.md section 2, QUIC supplement)."""
FLOW_WINDOW_BYTES = 1 << 20
"""Bytes a sender may write ahead of the receiving node: ~4096 frames of 256 B, the in-flight bound
of the transport baseline; raised to two maximum frames when those are larger."""
RECV_BATCH_MAX = 64
"""Datagrams read per readiness callback, so one busy socket cannot starve the loop's timers."""
RECV_DATAGRAM_BYTES_MAX = 65535
"""Largest UDP payload; aioquic never sends more than its max_datagram_size, but a peer might."""
HANDSHAKE_RECORD_BYTES_MAX = 16 << 10
"""An auth record holds a ~600-byte Ed25519 certificate and a 64-byte signature; more is garbage."""
QUIC_IDLE_MARGIN_S = 5.0
"""QUIC's own idle timeout sits this far past the manager's idle close, so it only fires for a dead peer."""

ERROR_REFUSED = 0x1
"""Application CONNECTION_CLOSE code: the client failed in-channel authentication (the reason says why)."""
ERROR_ABORTED = 0x2
"""Application CONNECTION_CLOSE code: connection aborted (protocol error, handshake timeout, shutdown)."""
_CRYPTO_ERRORS = range(0x100, 0x200)
"""QUIC CRYPTO_ERROR codes carry a TLS alert (RFC 9001 section 4.8), e.g. an untrusted certificate."""


def auth_transcript(nonce: bytes, server_id: str, client_id: str) -> bytes:
    """The bytes a client signs to prove its key: label, challenge, then both node ids, length-prefixed."""
    s, c = server_id.encode("ascii"), client_id.encode("ascii")
    return AUTH_LABEL + nonce + bytes([len(s)]) + s + bytes([len(c)]) + c


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    """QUIC/TLS handshake (and, for a client, waiting out nothing else)."""
    AUTHENTICATING = "authenticating"
    """QUIC handshake done; the in-channel challenge/answer is under way."""
    ATTACHED = "attached"
    """Authenticated and handed to the connection manager (client: waiting for `bind`)."""
    CLOSED = "closed"
    """CONNECTION_CLOSE sent or received; only aioquic's closing period remains."""


class _Link:
    """One QUIC connection: the handshake state and, once attached, the manager's `Stream`."""

    __slots__ = (
        "_owner", "addr", "address", "cids", "close_requested", "conn", "consumed", "credit_buffer", "early",
        "expected_id", "fin_received", "fin_sent", "granted", "handshake", "handshake_timer", "is_client",
        "lost_reported", "nonce", "paused", "peer_id", "pending", "quic", "sent", "send_limit", "serial",
        "state", "timer", "timer_at", "transmit_scheduled", "waiter",
    )

    def __init__(self, owner: QuicTransport, serial: int, is_client: bool, address: Address, window: int) -> None:
        self._owner = owner
        self.serial = serial
        self.is_client = is_client
        self.address = address
        self.addr: tuple[Any, ...] = ()
        self.expected_id: str | None = None
        self.peer_id: str | None = None
        self.quic: QuicConnection = None  # type: ignore[assignment]  # set right after construction
        self.state = _State.HANDSHAKE
        self.cids: list[bytes] = []
        self.handshake = bytearray()
        """Stream-1 bytes not yet parsed as handshake records (bounded by HANDSHAKE_RECORD_BYTES_MAX)."""
        self.nonce = b""
        self.waiter: asyncio.Future[str] | None = None
        """Client: resolved with the server's id on accept (or the claimed id, for a probe)."""
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.conn: Connection | None = None
        self.early: list[bytes] = []
        """Client: manager bytes that arrived between accept and `bind` (bounded by the credit window)."""
        self.sent = 0
        self.send_limit = 0
        self.pending: deque[bytes] = deque()
        """Bytes the manager wrote beyond the peer's credit; the manager is paused while non-empty."""
        self.paused = False
        self.consumed = 0
        self.granted = window
        self.credit_buffer = b""
        self.close_requested = False
        self.fin_sent = False
        self.fin_received = False
        self.lost_reported = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.transmit_scheduled = False

    def __repr__(self) -> str:
        role = "to" if self.is_client else "from"
        return f"<quic #{self.serial} {role} {self.peer_id or self.expected_id or '?'}@{self.address} {self.state.value}>"

    # -- connections.Stream ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send within the peer's credit; keep the rest and pause the manager until credit arrives."""
        if self.state is not _State.ATTACHED or self.fin_sent:
            return
        if self.pending:
            self.pending.append(data)
            return
        room = self.send_limit - self.sent
        if len(data) > room:
            if room > 0:
                self.quic.send_stream_data(DATA_STREAM_ID, data[:room])
                self.sent += room
                data = data[room:]
            self.pending.append(data)
            if not self.paused and self.conn is not None:
                self.paused = True
                self.conn.pause_writing()
        else:
            self.quic.send_stream_data(DATA_STREAM_ID, data)
            self.sent += len(data)
        self._owner._transmit(self)

    def close(self) -> None:
        """The BYE handshake is done: FIN after the last pending byte; the QUIC close follows the peer's FIN."""
        self.close_requested = True
        self._owner._maybe_fin(self)

    def abort(self) -> None:
        self._owner._abort(self, ERROR_ABORTED, "aborted")


class QuicTransport:
    """`Transport` over QUIC (aioquic) with in-channel client authentication. The constructor does no I/O."""

    def __init__(
        self,
        identity: NodeIdentity,
        listen: Address,
        *,
        config: TransportConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._identity = identity
        self._listen = listen
        self.config = config or TransportConfig()
        self._window = max(FLOW_WINDOW_BYTES, 2 * (self.config.max_frame_bytes + 4))
        self._manager = ConnectionManager(identity.node_id, self.config, rng or random.Random(), self._dial)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._bound: Address | None = None
        self._family = socket.AF_INET
        self._accepting = False
        self._server_config: QuicConfiguration | None = None
        self._ca_cert: x509.Certificate | None = None
        self._cert_der = b""
        self._serial = 0
        self._links: dict[int, _Link] = {}
        self._cids: dict[bytes, _Link] = {}
        self._handshaking = 0
        """Inbound connections not yet attached (bounded by `handshakes_max`)."""
        self._protocol_errors = 0
        """Adapter-level protocol errors (unexpected stream, stream reset, FIN mid-handshake); the manager counts framing errors."""

    # -- Transport API -----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    @property
    def listen_address(self) -> Address:
        if self._bound is None:
            raise RuntimeError("listen_address is known after `await start()`")
        return self._bound

    def set_handler(self, handler: FrameHandler) -> None:
        self._manager.set_handler(handler)

    async def start(self) -> None:
        """Bind the UDP socket (buffers raised), load the certificates, start the connection manager."""
        if self._loop is not None:
            raise RuntimeError("QuicTransport.start() called twice; create a new transport instead")
        loop = asyncio.get_running_loop()
        identity = self._identity
        server_config = self._quic_configuration(is_client=False)
        server_config.load_cert_chain(identity.cert_path, identity.key_path)
        self._server_config = server_config
        self._ca_cert = identity.ca_certificate()
        self._cert_der = identity.certificate().public_bytes(serialization.Encoding.DER)
        sock = self._bind()
        self._loop = loop
        self._sock = sock
        loop.add_reader(sock.fileno(), self._readable)
        self._bound = Address(self._listen.host, sock.getsockname()[1])
        self._manager.start(loop)
        self._accepting = True
        logger.debug("QUIC transport %s on udp %s (SO_RCVBUF %d)", self.node_id, self._bound,
                     sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def send(self, address: Address, frame: Any, peer_id: str | None = None) -> None:
        self._manager.send_encoded(address, encode_frame(frame, max_frame_bytes=self.config.max_frame_bytes), peer_id)

    def deny(self, peer_id: str) -> None:
        self._manager.deny(peer_id)

    def stats(self) -> TransportStats:
        stats = self._manager.stats()
        return dataclasses.replace(stats, protocol_errors=stats.protocol_errors + self._protocol_errors)

    async def close(self) -> None:
        """Drain through the manager (BYE handshake, bounded by `close_grace_ms`), then close the socket."""
        if self._loop is None or self._sock is None:
            return
        self._accepting = False
        await self._manager.close()
        for link in list(self._links.values()):
            self._abort(link, ERROR_ABORTED, "shutting down")
        for link in list(self._links.values()):
            self._forget(link, None)
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    # -- dialling (the manager's Dialer) -------------------------------------------------------

    async def _dial(self, address: Address, expected_id: str | None) -> tuple[_Link, str, Callable[[Connection], None]]:
        """Connect and authenticate; the manager bounds this with `dial_timeout_ms`.

        With `expected_id=None` (bootstrap) a probe connection learns who listens there, then a
        second connection verifies that id through TLS (docs/decisions/0010).
        """
        addr = await self._resolve(address)
        if expected_id is None:
            _, expected_id = await self._connect(address, addr, None)
            if expected_id == self.node_id:
                raise OSError(f"{address} is this node")
        link, _ = await self._connect(address, addr, expected_id)
        return link, expected_id, self._binder(link)

    async def _connect(self, address: Address, addr: tuple[Any, ...], expected_id: str | None) -> tuple[_Link, str]:
        """One QUIC connection through the in-channel handshake; a probe (no expected id) is closed at the challenge."""
        assert self._loop is not None
        link = self._new_link(True, address)
        link.addr = addr
        link.expected_id = expected_id
        link.waiter = self._loop.create_future()
        config = self._quic_configuration(is_client=True)
        config.cafile = str(self._identity.ca_path)
        config.server_name = expected_id  # None only for a probe: chain checked, name not; never trusted
        link.quic = QuicConnection(configuration=config)
        self._register_cid(link, link.quic.host_cid)
        link.quic.connect(addr, now=self._loop.time())
        self._transmit(link)
        try:
            server_id = await link.waiter
        except BaseException:
            self._abort(link, ERROR_ABORTED, "dial abandoned")
            raise
        if expected_id is None:
            self._abort(link, QuicErrorCode.NO_ERROR, "probe done")
        return link, server_id

    def _binder(self, link: _Link) -> Callable[[Connection], None]:
        def bind(conn: Connection) -> None:
            link.conn = conn
            early, link.early = link.early, []
            for data in early:
                self._forward(link, data)
            if link.state is _State.CLOSED and not link.lost_reported:
                link.lost_reported = True
                conn.connection_lost(ConnectionError("connection closed before it was bound"))
        return bind

    async def _resolve(self, address: Address) -> tuple[Any, ...]:
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            assert self._loop is not None
            infos = await self._loop.getaddrinfo(address.host, address.port, family=self._family, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"{address.host} has no {self._family.name} address") from None
            return tuple(infos[0][4])
        if (ip.version == 6) != (self._family == socket.AF_INET6):
            raise OSError(f"{address.host} is IPv{ip.version} but this node listens on {self._family.name}")
        return (str(ip), address.port) if ip.version == 4 else (str(ip), address.port, 0, 0)

    # -- datagrams and QUIC events -----------------------------------------------------------

    def _readable(self) -> None:
        """Read a batch of datagrams, feed each to its connection, then transmit once per connection.

        Reading the socket directly (not through a DatagramTransport, which reads one datagram per
        loop turn) lets one transmit pass, and so one ACK, answer a whole burst.
        """
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        touched: dict[int, _Link] = {}
        for _ in range(RECV_BATCH_MAX):
            try:
                data, addr = sock.recvfrom(RECV_DATAGRAM_BYTES_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error reported on the socket; the next read goes on
                logger.debug("QUIC UDP receive error: %s", exc)
                break
            link = self._datagram_received(data, addr, loop.time())
            if link is not None:
                touched[link.serial] = link
        for link in touched.values():
            self._transmit(link)

    def _datagram_received(self, data: bytes, addr: tuple[Any, ...], now: float) -> _Link | None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_BYTES)
        except ValueError:
            return None
        link = self._cids.get(header.destination_cid)
        if link is None:
            if (not self._accepting or header.packet_type != QuicPacketType.INITIAL
                    or len(data) < MIN_INITIAL_DATAGRAM_BYTES or header.version != QuicProtocolVersion.VERSION_1):
                return None
            link = self._accept(header.destination_cid, addr)
        link.quic.receive_datagram(data, addr, now=now)
        self._process_events(link)
        return link

    def _accept(self, original_cid: bytes, addr: tuple[Any, ...]) -> _Link:
        """A client's first Initial: create the server side (refused at once beyond `handshakes_max`)."""
        assert self._server_config is not None and self._loop is not None
        link = self._new_link(False, Address(addr[0], addr[1]))
        link.addr = addr
        link.quic = QuicConnection(configuration=self._server_config, original_destination_connection_id=original_cid)
        self._register_cid(link, original_cid)
        self._register_cid(link, link.quic.host_cid)
        if self._handshaking >= self.config.handshakes_max:
            self._manager.count_refused(f"{self._handshaking} handshakes in progress (handshakes_max)", f"from {link.address}")
            link.state = _State.CLOSED
            link.quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED, reason_phrase="busy")
            return link
        self._handshaking += 1
        link.handshake_timer = self._loop.call_later(self.config.dial_timeout_ms / 1000, self._handshake_timeout, link)
        return link

    def _process_events(self, link: _Link) -> None:
        quic = link.quic
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is qe.StreamDataReceived:
                if link.state is not _State.CLOSED:
                    self._stream_data(link, event)
            elif kind is qe.HandshakeCompleted:
                self._handshake_completed(link)
            elif kind is qe.ConnectionIdIssued:
                self._register_cid(link, event.connection_id)
            elif kind is qe.ConnectionIdRetired:
                if self._cids.get(event.connection_id) is link:
                    del self._cids[event.connection_id]
            elif kind is qe.ConnectionTerminated:
                self._terminated(link, event)
                return
            elif kind in (qe.StreamReset, qe.StopSendingReceived) and link.state is not _State.CLOSED:
                self._protocol_error(link, f"peer reset stream {event.stream_id}")

    def _handshake_completed(self, link: _Link) -> None:
        if link.state is not _State.HANDSHAKE:
            return
        link.state = _State.AUTHENTICATING
        if not link.is_client:
            link.nonce = os.urandom(CHALLENGE_BYTES)
            self._write_record(link, {"t": "challenge", "v": PROTOCOL_VERSION, "id": self.node_id,
                                      "nonce": link.nonce, "window": self._window})

    def _terminated(self, link: _Link, event: qe.ConnectionTerminated) -> None:
        reason = event.reason_phrase or f"QUIC error 0x{event.error_code:x}"
        if link.state is not _State.CLOSED:
            refused = event.error_code in _CRYPTO_ERRORS or event.error_code == ERROR_REFUSED
            if link.is_client and link.waiter is not None and not link.waiter.done():
                if refused:
                    link.waiter.set_exception(PeerRefused(f"{link.address}: {reason}"))
                else:
                    link.waiter.set_exception(ConnectionError(f"{link.address}: {reason}"))
            elif not link.is_client and link.state is not _State.ATTACHED and event.error_code in _CRYPTO_ERRORS:
                self._manager.count_refused(f"TLS handshake failed: {reason}", f"from {link.address}")
        link.state = _State.CLOSED
        self._forget(link, ConnectionError(f"QUIC connection closed: {reason}"))

    # -- handshake ----------------------------------------------------------------------------

    def _stream_data(self, link: _Link, event: qe.StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id == DATA_STREAM_ID:
            data = event.data
            if link.state is _State.ATTACHED:
                if data:
                    self._forward(link, data)
            elif data:
                self._handshake_data(link, data)
            if event.end_stream and link.state is not _State.CLOSED:
                link.fin_received = True
                if link.state is not _State.ATTACHED:
                    self._protocol_error(link, "stream finished during the handshake")
                else:
                    self._maybe_finished(link)
        elif stream_id == (SERVER_CREDIT_STREAM_ID if link.is_client else CLIENT_CREDIT_STREAM_ID):
            self._credit_data(link, event.data)
        else:
            self._protocol_error(link, f"data on unexpected stream {stream_id}")

    def _handshake_data(self, link: _Link, data: bytes) -> None:
        """Parse handshake records one at a time, byte-exact: what follows `accept` belongs to the manager."""
        buffer = link.handshake
        buffer += data
        while link.state is _State.AUTHENTICATING and len(buffer) >= 4:
            prefix = int.from_bytes(buffer[:4], "big")
            length = prefix & 0x7FFF_FFFF
            if not prefix & 0x8000_0000 or length > HANDSHAKE_RECORD_BYTES_MAX:
                self._refuse_or_fail(link, "handshake record is not a transport control frame")
                return
            if len(buffer) < 4 + length:
                return
            record = bytes(buffer[: 4 + length])
            del buffer[: 4 + length]
            try:
                (value,) = FrameDecoder(HANDSHAKE_RECORD_BYTES_MAX, allow_control=True).feed(record)
            except (FrameError, ValueError):
                self._refuse_or_fail(link, "handshake record is not valid msgpack")
                return
            assert type(value) is ControlFrame
            if link.is_client:
                self._client_record(link, value.value)
            else:
                self._server_record(link, value.value)
        if link.state is _State.AUTHENTICATING and len(buffer) > HANDSHAKE_RECORD_BYTES_MAX + 4:
            self._refuse_or_fail(link, "handshake record too large")
        elif link.state is _State.ATTACHED and buffer:
            rest = bytes(buffer)
            buffer.clear()
            self._forward(link, rest)

    def _client_record(self, link: _Link, value: Any) -> None:
        kind = value.get("t") if isinstance(value, dict) else None
        assert link.waiter is not None
        if kind == "challenge" and not link.nonce:
            server_id, nonce, window = value.get("id"), value.get("nonce"), value.get("window")
            if (value.get("v") != PROTOCOL_VERSION or not isinstance(server_id, str) or not is_node_id(server_id)
                    or type(nonce) is not bytes or len(nonce) != CHALLENGE_BYTES or type(window) is not int or window <= 0):
                self._fail_dial(link, ConnectionError(f"{link.address}: malformed challenge"))
                return
            if link.expected_id is None:  # a probe: report the claimed id; it is verified by a second dial
                link.waiter.set_result(server_id)
                return
            if server_id != link.expected_id:
                self._fail_dial(link, PeerRefused(f"{link.address}: certificate of {link.expected_id!r} but claims {server_id!r}"))
                return
            link.nonce = nonce
            link.send_limit = window
            signature = self._identity.sign(auth_transcript(nonce, server_id, self.node_id))
            self._write_record(link, {"t": "auth", "v": PROTOCOL_VERSION, "id": self.node_id, "cert": self._cert_der,
                                      "sig": signature, "window": self._window})
        elif kind == "accept" and link.nonce:
            link.peer_id = link.expected_id
            link.state = _State.ATTACHED
            link.waiter.set_result(link.peer_id)  # type: ignore[arg-type]
        else:
            self._fail_dial(link, ConnectionError(f"{link.address}: unexpected handshake record {kind!r}"))

    def _server_record(self, link: _Link, value: Any) -> None:
        kind = value.get("t") if isinstance(value, dict) else None
        if kind != "auth":
            self._refuse(link, f"expected an auth record, got {kind!r}")
            return
        client_id, cert, sig, window = value.get("id"), value.get("cert"), value.get("sig"), value.get("window")
        if (value.get("v") != PROTOCOL_VERSION or not isinstance(client_id, str) or type(cert) is not bytes
                or type(sig) is not bytes or type(window) is not int or window <= 0):
            self._refuse(link, "malformed auth record")
            return
        assert self._ca_cert is not None
        try:
            node_id = verify_peer_certificate(cert, (), self._ca_cert, _dt.datetime.now(_dt.timezone.utc), client_id)
            key = x509.load_der_x509_certificate(cert).public_key()
            if not isinstance(key, Ed25519PublicKey):
                raise PeerRefused("certificate key is not Ed25519")
            key.verify(sig, auth_transcript(link.nonce, self.node_id, node_id))
        except PeerRefused as exc:
            self._refuse(link, str(exc))
            return
        except (InvalidSignature, ValueError):
            self._refuse(link, f"signature does not prove the key of node {client_id!r}")
            return
        link.peer_id = node_id
        link.send_limit = window
        self._write_record(link, {"t": "accept"})
        self._handshake_done(link)
        link.state = _State.ATTACHED
        conn = self._manager.attach(link, node_id, outbound=False)
        if conn is not None:
            link.conn = conn

    def _handshake_done(self, link: _Link) -> None:
        if link.handshake_timer is not None:
            link.handshake_timer.cancel()
            link.handshake_timer = None
            self._handshaking -= 1

    def _handshake_timeout(self, link: _Link) -> None:
        link.handshake_timer = None
        self._handshaking -= 1
        if link.state is _State.AUTHENTICATING:
            self._refuse(link, f"no answer to the challenge within {self.config.dial_timeout_ms} ms")
        elif link.state is _State.HANDSHAKE:
            self._abort(link, ERROR_ABORTED, "handshake timed out")

    def _refuse(self, link: _Link, reason: str) -> None:
        self._manager.count_refused(reason, f"from {link.address}")
        self._abort(link, ERROR_REFUSED, reason[:200])

    def _refuse_or_fail(self, link: _Link, reason: str) -> None:
        if link.is_client:
            self._fail_dial(link, ConnectionError(f"{link.address}: {reason}"))
        else:
            self._refuse(link, reason)

    def _fail_dial(self, link: _Link, exc: Exception) -> None:
        assert link.waiter is not None
        if not link.waiter.done():
            link.waiter.set_exception(exc)
        self._abort(link, ERROR_ABORTED, str(exc)[:200])

    # -- data and credits ---------------------------------------------------------------------

    def _forward(self, link: _Link, data: bytes) -> None:
        """Hand stream bytes to the manager's connection, then grant credit for what it consumed."""
        conn = link.conn
        if conn is None:
            link.early.append(data)
            return
        # No overrun check here: the node consumes synchronously, so the grant always runs ahead of
        # what arrived, and QUIC's own max_stream_data already bounds what a peer can make us hold.
        link.consumed += len(data)
        conn.data_received(data)
        if link.state is _State.ATTACHED and link.granted - link.consumed < self._window // 2:
            link.granted = link.consumed + self._window
            stream = CLIENT_CREDIT_STREAM_ID if link.is_client else SERVER_CREDIT_STREAM_ID
            link.quic.send_stream_data(stream, link.granted.to_bytes(CREDIT_RECORD_BYTES, "big"))
            self._transmit_soon(link)

    def _credit_data(self, link: _Link, data: bytes) -> None:
        buffer = link.credit_buffer + data
        usable = len(buffer) - len(buffer) % CREDIT_RECORD_BYTES
        if usable:
            limit = int.from_bytes(buffer[usable - CREDIT_RECORD_BYTES : usable], "big")
            if limit > link.send_limit:
                link.send_limit = limit
                self._drain_pending(link)
        link.credit_buffer = buffer[usable:]

    def _drain_pending(self, link: _Link) -> None:
        pending = link.pending
        quic = link.quic
        while pending and link.sent < link.send_limit:
            data = pending[0]
            room = link.send_limit - link.sent
            if len(data) > room:
                quic.send_stream_data(DATA_STREAM_ID, data[:room])
                pending[0] = data[room:]
                link.sent += room
                break
            quic.send_stream_data(DATA_STREAM_ID, data)
            link.sent += len(data)
            pending.popleft()
        self._transmit_soon(link)
        if not pending:
            if link.paused and link.conn is not None:
                link.paused = False
                link.conn.resume_writing()
            self._maybe_fin(link)

    # -- closing ------------------------------------------------------------------------------

    def _maybe_fin(self, link: _Link) -> None:
        if link.close_requested and not link.pending and not link.fin_sent and link.state is _State.ATTACHED:
            link.fin_sent = True
            link.quic.send_stream_data(DATA_STREAM_ID, b"", end_stream=True)
            self._transmit_soon(link)
            self._maybe_finished(link)

    def _maybe_finished(self, link: _Link) -> None:
        """Both FINs seen: each side sent its FIN only after the BYE handshake, so nothing is in flight."""
        if link.fin_sent and link.fin_received:
            self._abort(link, QuicErrorCode.NO_ERROR, "closed")

    def _protocol_error(self, link: _Link, reason: str) -> None:
        self._protocol_errors += 1
        logger.warning("QUIC connection %r closed: protocol error: %s", link, reason)
        if link.is_client and link.waiter is not None and not link.waiter.done():
            link.waiter.set_exception(ConnectionError(f"{link.address}: {reason}"))
        self._abort(link, ERROR_ABORTED, reason[:200])

    def _abort(self, link: _Link, code: int, reason: str) -> None:
        """Send CONNECTION_CLOSE now and tell the manager the stream is gone."""
        if link.state is _State.CLOSED:
            return
        link.state = _State.CLOSED
        self._handshake_done(link)
        if link.waiter is not None and not link.waiter.done():
            link.waiter.set_exception(ConnectionAbortedError(f"{link.address}: {reason}"))
        if link.quic is not None:
            link.quic.close(error_code=code, reason_phrase=reason)
            self._transmit(link)
        self._report_lost(link, None if code == QuicErrorCode.NO_ERROR else ConnectionAbortedError(reason))

    def _report_lost(self, link: _Link, exc: BaseException | None) -> None:
        if link.conn is not None and not link.lost_reported:
            link.lost_reported = True
            assert self._loop is not None
            self._loop.call_soon(link.conn.connection_lost, exc)

    def _forget(self, link: _Link, exc: BaseException | None) -> None:
        """aioquic reported termination: release everything."""
        self._handshake_done(link)
        self._report_lost(link, exc)
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        for cid in link.cids:
            if self._cids.get(cid) is link:
                del self._cids[cid]
        self._links.pop(link.serial, None)

    # -- I/O helpers ---------------------------------------------------------------------------

    def _write_record(self, link: _Link, value: dict[str, Any]) -> None:
        link.quic.send_stream_data(DATA_STREAM_ID, encode_control(value))
        self._transmit(link)

    def _transmit_soon(self, link: _Link) -> None:
        if not link.transmit_scheduled:
            link.transmit_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._transmit, link)

    def _transmit(self, link: _Link) -> None:
        """Send what aioquic has ready and re-arm the connection's one timer (as aioquic's asyncio adapter)."""
        link.transmit_scheduled = False
        sock, loop = self._sock, self._loop
        if sock is None or loop is None or link.serial not in self._links:
            return
        quic = link.quic
        for data, addr in quic.datagrams_to_send(now=loop.time()):
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass  # socket buffer full: a lost datagram, which QUIC's loss recovery repairs
            except OSError as exc:
                logger.debug("QUIC UDP send to %s failed: %s", addr, exc)
        timer_at = quic.get_timer()
        if link.timer is not None and link.timer_at != timer_at:
            link.timer.cancel()
            link.timer = None
        if link.timer is None and timer_at is not None:
            link.timer = loop.call_at(timer_at, self._quic_timer, link)
        link.timer_at = timer_at

    def _quic_timer(self, link: _Link) -> None:
        assert self._loop is not None
        now = max(link.timer_at or 0.0, self._loop.time())
        link.timer = None
        link.timer_at = None
        link.quic.handle_timer(now=now)
        self._process_events(link)
        self._transmit(link)

    def _new_link(self, is_client: bool, address: Address) -> _Link:
        self._serial += 1
        link = _Link(self, self._serial, is_client, address, self._window)
        self._links[link.serial] = link
        return link

    def _register_cid(self, link: _Link, cid: bytes) -> None:
        self._cids[cid] = link
        link.cids.append(cid)

    def _quic_configuration(self, *, is_client: bool) -> QuicConfiguration:
        # QUIC's own flow-control limits sit above the credit window: credits bound the sender's
        # buffer, and QUIC never stalls a stream that has credit.
        return QuicConfiguration(
            alpn_protocols=[ALPN],
            is_client=is_client,
            idle_timeout=self.config.idle_timeout_ms / 1000 + QUIC_IDLE_MARGIN_S,
            max_data=4 * self._window,
            max_stream_data=2 * self._window,
        )

    def _bind(self) -> socket.socket:
        host = self._listen.host
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            family = socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
                except OSError as exc:  # capped by net.core.rmem_max / wmem_max; still usable
                    logger.warning("cannot raise the QUIC UDP buffer to %d bytes: %s", UDP_BUFFER_BYTES, exc)
            try:
                sock.bind((host, self._listen.port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen for QUIC on udp {self._listen}: {exc.strerror}; "
                                         "is another node using that port?") from None
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._family = family
        return sock

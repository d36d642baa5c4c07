"""TLS 1.3 over TCP: the default transport (see docs/decisions/0001-tls-over-tcp-default-transport.md).

Mutual authentication with the stdlib `ssl` module: both sides require a certificate chained to
the cluster CA (OpenSSL checks chain and validity), hostname checks are off, and instead the node
id is checked: the certificate's CN must be the digest of its key, and must equal the id the peer
was dialled under. The server side accepts TCP itself and runs the handshake with
`loop.connect_accepted_socket(ssl=...)`, so every refused handshake reaches our code and is logged
and counted (`create_server(ssl=...)` swallows them). Works on the default loop and on uvloop.

Queues, coalescing, duplicate connections, backoff and timeouts live in connections.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Callable
from typing import Any

from cryptography import x509

from agentnode.transport.base import Address, FrameHandler, PeerRefused, TransportStats
from agentnode.transport.connections import Connection, ConnectionManager, TransportConfig
from agentnode.transport.identity import NodeIdentity, node_id_from_certificate

__all__ = ["TlsTransport", "client_context", "server_context"]

logger = logging.getLogger("agentnode.transport")

LISTEN_BACKLOG = 512
"""Pending TCP connections the kernel holds for us (a burst of peers rejoining after a partition)."""

ALPN = "agentnode/1"
"""Application protocol (RFC 7301) so a node never mistakes another TLS service for a peer."""


def server_context(identity: NodeIdentity) -> ssl.SSLContext:
    """TLS 1.3-only server context that requires a client certificate from the cluster CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, identity)
    return ctx


def client_context(identity: NodeIdentity) -> ssl.SSLContext:
    """TLS 1.3-only client context: presents our certificate, verifies the server's chain (not its host name)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the node id is checked instead, against the key digest
    _common(ctx, identity)
    return ctx


def _common(ctx: ssl.SSLContext, identity: NodeIdentity) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    ctx.load_verify_locations(cafile=str(identity.ca_path))
    ctx.set_alpn_protocols([ALPN])
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every connection proves its certificate


def peer_node_id(transport: asyncio.BaseTransport) -> str:
    """The authenticated node id of a TLS transport's peer; `PeerRefused` if it has none or it does not match its key."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise PeerRefused("peer presented no certificate")
    return node_id_from_certificate(x509.load_der_x509_certificate(der))


class _StreamProtocol(asyncio.Protocol):
    """Forwards one TLS stream's callbacks to its `Connection`; buffers what arrives before it is bound."""

    __slots__ = ("_early", "_early_bytes", "_limit", "_lost", "_paused", "conn", "transport")

    def __init__(self, early_limit: int) -> None:
        self.conn: Connection | None = None
        self.transport: Any = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._limit = early_limit
        self._paused = False
        self._lost: tuple[BaseException | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def bind(self, conn: Connection) -> None:
        self.conn = conn
        if self._paused:
            conn.pause_writing()
        early, self._early = self._early, []
        for data in early:
            conn.data_received(data)
        if self._lost is not None:
            conn.connection_lost(self._lost[0])

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.data_received(data)
            return
        self._early_bytes += len(data)
        if self._early_bytes > self._limit:
            self.transport.abort()
            return
        self._early.append(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._paused = True
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.conn is not None:
            self.conn.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.conn is not None:
            self.conn.connection_lost(exc)
        else:
            self._lost = (exc,)


class TlsTransport:
    """`Transport` over mutually authenticated TLS 1.3 on TCP. The constructor does no I/O."""

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
        self._manager = ConnectionManager(identity.node_id, self.config, rng or random.Random(), self._dial)
        self._socket: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._bound: Address | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self._handshakes = 0
        self.send = self._manager.send  # type: ignore[method-assign]  # hot path: skip one call layer

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    @property
    def listen_address(self) -> Address:
        """The bound address after `start()`; before it, the configured one (its port may be 0)."""
        return self._bound if self._bound is not None else self._listen

    def set_handler(self, handler: FrameHandler) -> None:
        self._manager.set_handler(handler)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server_ctx = server_context(self._identity)
        self._client_ctx = client_context(self._identity)
        try:
            family = socket.AF_INET6 if ":" in self._listen.host else socket.AF_INET
            sock = socket.create_server((self._listen.host, self._listen.port), family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {self._listen}: {exc.strerror}; is another node using that port?") from None
        sock.setblocking(False)
        self._socket = sock
        self._bound = Address(self._listen.host, sock.getsockname()[1])
        self._manager.start(loop)
        self._acceptor = loop.create_task(self._accept_loop(sock))

    def send(self, address: Address, frame: Any, peer_id: str | None = None) -> None:
        """Queue `frame` for the peer; see `Transport.send`."""
        self._manager.send(address, frame, peer_id)

    def deny(self, peer_id: str) -> None:
        self._manager.deny(peer_id)

    def stats(self) -> TransportStats:
        return self._manager.stats()

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        await self._manager.close()

    # -- inbound ----------------------------------------------------------------------------

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept TCP connections and hand each to its own handshake task.

        Accepting ourselves and calling `connect_accepted_socket(ssl=...)` makes every handshake
        failure an exception we can log and count, on both the default loop and uvloop
        (`create_server(ssl=...)` swallows them, and uvloop reads before `start_tls` can wrap).
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: report, breathe, go on
                logger.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if self._handshakes >= self.config.handshakes_max:
                self._manager.count_refused("too many handshakes in progress (handshakes_max)", f"from {peer[0]}:{peer[1]}")
                client.close()
                continue
            self._handshakes += 1
            self._manager.spawn(self._handshake(client, f"from {peer[0]}:{peer[1]}"))

    async def _handshake(self, client: socket.socket, who: str) -> None:
        try:
            loop = asyncio.get_running_loop()
            proto = _StreamProtocol(self.config.max_frame_bytes * 2)
            try:
                tls, _ = await loop.connect_accepted_socket(
                    lambda: proto, client, ssl=self._server_ctx,
                    ssl_handshake_timeout=self.config.dial_timeout_ms / 1000,
                )
            except (OSError, ConnectionError, asyncio.TimeoutError, EOFError) as exc:
                self._manager.count_refused(_reason(exc), who)
                client.close()
                return
            try:
                node_id = peer_node_id(tls)
            except (PeerRefused, ValueError) as exc:
                self._manager.count_refused(str(exc), who)
                tls.abort()
                return
            tls.set_write_buffer_limits(high=self.config.write_buffer_bytes_high)  # type: ignore[attr-defined]
            conn = self._manager.attach(tls, node_id, outbound=False)  # type: ignore[arg-type]
            if conn is not None:
                proto.bind(conn)
        finally:
            self._handshakes -= 1

    # -- outbound ---------------------------------------------------------------------------

    async def _dial(self, address: Address, expected_id: str | None) -> tuple[Any, str, Callable[[Connection], None]]:
        loop = asyncio.get_running_loop()
        proto = _StreamProtocol(self.config.max_frame_bytes * 2)
        try:
            tls, _ = await loop.create_connection(
                lambda: proto, address.host, address.port, ssl=self._client_ctx,
                server_hostname=expected_id or address.host,
                ssl_handshake_timeout=self.config.dial_timeout_ms / 1000,
            )
        except ssl.SSLCertVerificationError as exc:
            raise PeerRefused(f"peer at {address}: {_reason(exc)}") from None
        try:
            node_id = peer_node_id(tls)
            if expected_id is not None and node_id != expected_id:
                raise PeerRefused(f"peer at {address} is node {node_id!r}, expected {expected_id!r}")
        except BaseException:
            tls.abort()
            raise
        tls.set_write_buffer_limits(high=self.config.write_buffer_bytes_high)  # type: ignore[attr-defined]
        return tls, node_id, proto.bind


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: peer certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, asyncio.TimeoutError):
        return "TLS handshake timed out"
    return f"{type(exc).__name__}: {exc}"

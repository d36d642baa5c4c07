"""The connection manager shared by stream transports (TLS over TCP; usable by QUIC with one stream per peer).

An adapter (tls.py) does the I/O: listening, dialling, the TLS handshake and the peer's identity.
It hands each authenticated byte stream to `ConnectionManager.attach`, and forwards the stream's
callbacks to the returned `Connection`. Everything else lives here:

* one send queue per peer (bounded: `BackpressureError` when full), shared by every connection to
  that peer, so frames survive a switch from one connection to another;
* write coalescing: a flush is scheduled with `call_soon` when frames are queued, so it runs as
  soon as the loop goes idle, and writes up to `coalesce_frames_max` frames (or
  `coalesce_bytes_max`) with one `write`; the stream's pause/resume_writing stops and restarts it;
  replies queued while a peer's frames are delivered are written when the delivery ends, and
  frames queued inside `write_promptly()` when that block ends (latency-critical senders);
* one connection per peer: inbound connections are reused for sending; if both sides dialled at
  once, the connection initiated by the smaller node id wins (the same answer on both sides);
  between two connections from the same initiator the newer wins (the older is probably dead);
* a lossless close handshake: the side retiring a connection stops writing data on it and sends
  a BYE control frame; the other side answers BYE after its last data frame; each side closes once
  it has both sent and received BYE (bounded by `close_grace_ms`). Used for duplicates, idle
  close, LRU eviction and `close()`;
* dialling with exponential backoff and jitter (injected `random.Random`), idle close, a bound on
  open connections with LRU eviction of idle ones, and the stalled-half-frame timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import msgpack

from agentnode.transport.base import Address, BackpressureError, FrameHandler, PeerRefused, TransportStats
from agentnode.transport.framing import DEFAULT_MAX_FRAME_BYTES, ControlFrame, FrameDecoder, FrameError, FrameTooLarge, encode_control

__all__ = ["Connection", "ConnectionManager", "Dialer", "Stream", "TransportConfig", "write_promptly"]

logger = logging.getLogger("agentnode.transport")


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Limits and timings of a stream transport. Every bound has a field here and a counter in `stats()`."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest frame accepted or sent (see framing.DEFAULT_MAX_FRAME_BYTES). Must match cluster-wide."""
    send_queue_frames_max: int = 16_384
    """Frames queued per peer before `send` raises `BackpressureError`: 4x the 4096-in-flight window
    the transport baseline measured at full speed, so a healthy peer never hits it."""
    coalesce_frames_max: int = 256
    """Frames joined into one write; the baseline showed batching is the biggest lever (~5x)."""
    coalesce_bytes_max: int = 256 * 1024
    """Bytes joined into one write (stops a batch of large frames from building a huge buffer)."""
    frame_timeout_ms: int = 10_000
    """A frame must complete this long after its first byte arrived, else the peer stalled: close."""
    idle_timeout_ms: int = 60_000
    """Close a connection nobody used for this long (60 SWIM probe periods of memberlist's 1 s)."""
    dial_timeout_ms: int = 10_000
    """Connect plus TLS handshake (memberlist DefaultLANConfig TCPTimeout = 10 s)."""
    reconnect_backoff_ms_min: int = 100
    reconnect_backoff_ms_max: int = 30_000
    """Exponential backoff between failed dials to one peer, doubled per failure, with jitter."""
    connections_max: int = 128
    """Open connections (both directions); the least recently used idle one is closed to make room."""
    handshakes_max: int = 64
    """Inbound TLS handshakes in progress; more are dropped at once (handshake flood bound)."""
    close_grace_ms: int = 2_000
    """How long the close handshake (and `close()`'s final flush) may take before connections are aborted."""
    write_buffer_bytes_high: int = 1 << 20
    """Bytes buffered in a stream before it pauses our writer (asyncio's default is 64 KiB)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TransportConfig.{f.name} must be a positive integer, got {value!r}")
        if self.reconnect_backoff_ms_min > self.reconnect_backoff_ms_max:
            raise ValueError("TransportConfig.reconnect_backoff_ms_min must not exceed reconnect_backoff_ms_max")


class Stream(Protocol):
    """What a connection writes to: an authenticated, ordered byte stream (an asyncio transport fits)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Flush what is buffered, then close."""
        ...

    def abort(self) -> None: ...


Dialer = Callable[[Address, "str | None"], Awaitable[tuple[Stream, str, Callable[["Connection"], None]]]]
"""Adapter hook: connect and authenticate; return the stream, the peer's verified node id and a
function that binds the stream's callbacks to the `Connection`. Raise `PeerRefused` for identity
failures and `OSError`/`TimeoutError` for the rest."""

class _Block:
    """One open `write_promptly()` block: the connections with frames queued inside it."""

    __slots__ = ("conns", "open")

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.open = True
        """False once the block ended. Callbacks and tasks created inside the block copy the context and
        still see this object later; a closed block must then count as no block at all, or their
        frames would wait for a write that never comes."""


_PROMPT: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("agentnode_transport_prompt", default=None)
"""The outermost open `write_promptly()` block of this context, if any."""


class write_promptly:  # noqa: N801 (used like a function: `with write_promptly():`)
    """Write the frames sent inside this block when it ends, in the same callback, not a loop turn later.

    For latency-critical senders on a request/response path (a Raft leader's entries, a reply made
    outside a delivery): the frames leave before the loop polls again, so whatever else is ready
    (other peers' frames, other tasks) cannot delay them. Frames sent to one peer inside the block
    still leave as one write; sends outside any block keep coalescing per loop turn (the
    throughput default). Replies made while a peer's frames are being delivered are already
    written when the delivery ends and are left to it. Frames for a peer that is not connected
    (dialling), or whose stream is paused by backpressure, wait as usual. Blocks nest: the outermost
    one writes. Loop thread only, like the rest of the manager; it applies to the transports built
    on `ConnectionManager` (TLS, QUIC) and changes nothing for others.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        block = _PROMPT.get()
        self._token = _PROMPT.set(_Block()) if block is None or not block.open else None

    def __exit__(self, *exc: object) -> None:
        token = self._token
        if token is None:
            return  # an outer block writes
        block = _PROMPT.get()
        _PROMPT.reset(token)
        if block is not None:
            block.open = False
            for conn in block.conns:
                conn._write_prompt()


_BYE = encode_control([0])
_CTRL_BYE = 0

_ACTIVE = 0
_DRAINING = 1
_CLOSED = 2


class _Peer:
    """Per-peer state: the send queue survives connection changes."""

    __slots__ = ("address", "backoff_ms", "conn", "dialing", "failed_address", "node_id", "queue", "queued_bytes", "retry_at")

    def __init__(self, node_id: str | None, address: Address | None) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: list[bytes] = []
        """Encoded frames in order; a list so a batch is one slice and one `del`, not a loop of poplefts."""
        self.queued_bytes = 0
        self.conn: Connection | None = None
        self.dialing = False
        self.backoff_ms = 0
        self.retry_at = 0.0
        self.failed_address: Address | None = None
        """Backoff applies to the address that failed; a new address for the peer is tried at once."""


class Connection:
    """One authenticated stream to a peer. The adapter forwards its stream callbacks here."""

    __slots__ = (
        "_decoder", "_delivering", "_flush_scheduled", "_manager", "_prompt", "bye_received", "bye_sent", "draining_since",
        "last_activity", "outbound", "paused", "peer", "peer_id", "received_any", "seq", "stall_since",
        "state", "stream",
    )

    def __init__(self, manager: ConnectionManager, stream: Stream, peer: _Peer, peer_id: str, outbound: bool, seq: int) -> None:
        self._manager = manager
        self.stream = stream
        self.peer = peer
        self.peer_id = peer_id
        self.outbound = outbound
        self.seq = seq
        self._decoder = FrameDecoder(manager.config.max_frame_bytes, allow_control=True)
        self._flush_scheduled = False
        self._delivering = False
        """True while this connection hands a read's frames to the handler (replies go at its end)."""
        self._prompt = False
        """True while listed in an open `write_promptly()` block."""
        self.paused = False
        self.state = _ACTIVE
        self.bye_sent = False
        self.bye_received = False
        self.received_any = False
        self.last_activity = manager.now()
        self.stall_since: float | None = None
        self.draining_since = 0.0

    @property
    def initiator(self) -> str:
        return self._manager.node_id if self.outbound else self.peer_id

    # -- callbacks from the adapter ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED or self.bye_received:
            return  # nothing may follow the peer's BYE
        manager = self._manager
        now = manager.now()
        self.last_activity = now
        self.received_any = True
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self._deliver(exc.frames)
            manager._protocol_error(self, str(exc))
            return
        if self._decoder.pending_bytes:
            if self.stall_since is None:
                self.stall_since = now
        else:
            self.stall_since = None
        manager._bytes_received += len(data)
        if frames:
            self._deliver(frames)

    def _deliver(self, frames: list[Any]) -> None:
        manager = self._manager
        handler = manager._handler
        peer_id = self.peer_id
        delivered = len(frames)
        # Replies to this peer made while its frames are handled are written when they all are,
        # in this callback, instead of a loop turn later (request/response latency, e.g. a Raft
        # acknowledgement); the flag keeps `send` from also scheduling that flush.
        reply_now = not self._flush_scheduled and self.peer.conn is self
        if reply_now:
            self._flush_scheduled = True
        delivering, self._delivering = self._delivering, True
        try:
            for index, frame in enumerate(frames):
                if type(frame) is ControlFrame:
                    delivered -= 1
                    self._on_control(frame.value)
                    if self.bye_received:  # nothing may follow the peer's BYE
                        delivered -= len(frames) - index - 1
                        break
                    continue
                try:
                    handler(peer_id, frame)
                except Exception:
                    logger.exception("frame handler failed on a frame from %s", peer_id)
        finally:  # whatever happens, the flags go back and the replies leave (a stuck flag would stall the peer)
            self._delivering = delivering
            manager._frames_received += delivered
            if reply_now:
                self._flush()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.schedule_flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._manager._lost(self, exc)

    # -- writing ----------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self.peer.queue and self.state == _ACTIVE:
            self._flush_scheduled = True
            self._manager._loop.call_soon(self._flush)

    def flush_now(self) -> None:
        """Write everything queued (ignores pause); used by `close()`."""
        while self.peer.queue and self.state == _ACTIVE and self.peer.conn is self:
            self._write_batch()

    def _queued_in_block(self, block: _Block) -> None:
        """Frames were queued inside a `write_promptly()` block: write them when it ends."""
        if self.paused:
            return  # resume_writing flushes
        if self._delivering:  # the delivery writes its replies when it ends
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._manager._loop.call_soon(self._flush)
        elif not self._prompt:
            self._prompt = True
            block.conns.append(self)

    def _write_prompt(self) -> None:
        """End of a `write_promptly()` block: write what is queued now (a scheduled flush finds less)."""
        self._prompt = False
        if not self.paused and self.state == _ACTIVE and self.peer.conn is self and self.peer.queue:
            self._write_batch()
        self.schedule_flush()  # whatever is left (over the batch bounds, or the connection changed)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.paused or self.state != _ACTIVE or self.peer.conn is not self or not self.peer.queue:
            return
        self._write_batch()
        if self.peer.queue and not self.paused:
            self.schedule_flush()

    def _write_batch(self) -> None:
        peer = self.peer
        queue = peer.queue
        config = self._manager.config
        n = len(queue)
        if n <= config.coalesce_frames_max and peer.queued_bytes <= config.coalesce_bytes_max:
            data = b"".join(queue)
            queue.clear()
            peer.queued_bytes = 0
        else:
            # the byte budget is applied on the average frame size: no per-frame Python loop
            n = min(n, config.coalesce_frames_max, max(1, n * config.coalesce_bytes_max // peer.queued_bytes))
            data = b"".join(queue[:n])
            del queue[:n]
            peer.queued_bytes -= len(data)
        self.stream.write(data)
        manager = self._manager
        manager._frames_sent += n
        manager._bytes_sent += len(data)
        self.last_activity = manager.now()

    # -- close handshake --------------------------------------------------------------------

    def retire(self) -> None:
        """Stop sending data here and start the close handshake."""
        if self.state != _ACTIVE:
            return
        self.state = _DRAINING
        self.draining_since = self._manager.now()
        if self.peer.conn is self:
            self.peer.conn = None
        self.bye_sent = True
        try:
            self.stream.write(_BYE)
        except Exception:  # the stream is already broken; the loss callback follows
            pass
        self._maybe_finish()

    def abort(self) -> None:
        if self.state == _CLOSED:
            return
        self.stream.abort()

    def _on_control(self, value: Any) -> None:
        if isinstance(value, list) and value and value[0] == _CTRL_BYE:
            self.bye_received = True
            if self.state == _ACTIVE:
                self._manager._peer_retired(self)
            self._maybe_finish()
        # unknown control frames are ignored (forward compatibility)

    def _maybe_finish(self) -> None:
        if self.bye_sent and self.bye_received and self.state == _DRAINING:
            self.stream.close()


class ConnectionManager:
    """Peers, queues and connections of one node; the adapter supplies I/O through `dialer` and `attach`."""

    def __init__(
        self,
        node_id: str,
        config: TransportConfig,
        rng: random.Random,
        dialer: Dialer,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self._dialer = dialer
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
        """One packer per node: `msgpack.packb` builds a Packer per call (0.9 vs 0.4 µs per 256 B)."""
        self._max_frame = config.max_frame_bytes
        self._queue_max = config.send_queue_frames_max
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._handler: FrameHandler = _drop_frame
        self._peers: dict[str, _Peer] = {}
        self._anonymous: dict[Address, _Peer] = {}
        self._ids_by_address: dict[Address, str] = {}
        self._open: dict[int, Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._frames_sent = 0
        self._frames_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._refused = 0
        self._protocol_errors = 0
        self._backpressure = 0
        self._dial_failures = 0
        self._dropped = 0
        self._denied: set[str] = set()

    # -- public -----------------------------------------------------------------------------

    def deny(self, peer_id: str) -> None:
        """Refuse `peer_id` for good: drop what is queued for it, abort its connections, refuse it at `attach`."""
        if peer_id in self._denied:
            return
        self._denied.add(peer_id)
        peer = self._peers.get(peer_id)
        if peer is not None:
            self._drop_queue(peer)
        for conn in [c for c in self._open.values() if c.peer_id == peer_id]:
            conn.abort()
        logger.warning("node %s is denied: its connections are closed and its handshakes refused", peer_id)

    def set_handler(self, handler: FrameHandler) -> None:
        self._handler = handler

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = loop.time  # type: ignore[method-assign]
        self._sweeper = loop.create_task(self._sweep())

    def now(self) -> float:
        return 0.0  # replaced by loop.time once started

    def send(self, address: Address, frame: Any, peer_id: str | None = None) -> None:
        """Encode and queue one frame; see `Transport.send`. The per-frame hot path: keep it flat."""
        try:
            body = self._pack(frame)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"frame is not msgpack-serialisable ({exc}); send dicts, lists, str, bytes, numbers, bool or None") from None
        n = len(body)
        if n > self._max_frame:
            raise FrameTooLarge(f"frame of {n} bytes exceeds the {self._max_frame}-byte limit; split it or raise max_frame_bytes on every node")
        peer = self._peers.get(peer_id) if peer_id is not None else None  # type: ignore[arg-type]
        if peer is None or self._closing or peer_id in self._denied:
            self.send_encoded(address, n.to_bytes(4, "big") + body, peer_id)
            return
        queue = peer.queue
        if len(queue) >= self._queue_max:
            self._backpressure += 1
            raise BackpressureError(
                f"send queue to {peer_id} is full ({self._queue_max} frames); slow down or raise send_queue_frames_max"
            )
        queue.append(n.to_bytes(4, "big") + body)
        peer.queued_bytes += n + 4
        conn = peer.conn
        if conn is not None:
            block = _PROMPT.get()
            if block is not None and block.open:
                conn._queued_in_block(block)
            elif not conn._flush_scheduled and not conn.paused:
                conn._flush_scheduled = True
                self._loop.call_soon(conn._flush)
            return
        if not peer.dialing:
            if peer.address != address:
                peer.address = address
            self._reconnect(peer)

    def send_encoded(self, address: Address, data: bytes, peer_id: str | None) -> None:
        """Queue one already length-prefixed frame (from `framing.encode_frame`)."""
        if self._closing:
            raise RuntimeError("transport is closed; create a new one")
        if peer_id is None:
            peer_id = self._ids_by_address.get(address)
        if peer_id is not None and peer_id in self._denied:
            self._dropped += 1
            return
        if peer_id is not None:
            peer = self._peers.get(peer_id)
            if peer is None:
                if peer_id == self.node_id:
                    raise ValueError("cannot send to this node's own id; deliver locally instead")
                peer = self._peers[peer_id] = _Peer(peer_id, address)
        else:
            peer = self._anonymous.get(address)
            if peer is None:
                peer = self._anonymous[address] = _Peer(None, address)
        queue = peer.queue
        if len(queue) >= self._queue_max:
            self._backpressure += 1
            raise BackpressureError(
                f"send queue to {peer_id or address} is full ({self._queue_max} frames); "
                "slow down or raise send_queue_frames_max"
            )
        queue.append(data)
        peer.queued_bytes += len(data)
        conn = peer.conn
        if conn is not None:
            block = _PROMPT.get()
            if block is not None and block.open:
                conn._queued_in_block(block)
            elif not conn._flush_scheduled and not conn.paused:
                conn._flush_scheduled = True
                self._loop.call_soon(conn._flush)
            return
        if peer.dialing:
            return
        if peer.address != address:
            peer.address = address
        self._reconnect(peer)

    def attach(self, stream: Stream, peer_id: str, outbound: bool, peer: _Peer | None = None) -> Connection | None:
        """Register an authenticated stream; returns its `Connection`, or None if refused (stream aborted)."""
        if (self._closing and not outbound) or peer_id == self.node_id:
            if peer_id == self.node_id:
                logger.warning("refused a connection to ourselves (node %s)", peer_id)
            stream.abort()
            return None
        if peer_id in self._denied:
            self.count_refused("its node id is revoked", f"with {peer_id}")
            stream.abort()
            return None
        if len(self._open) >= self.config.connections_max and not self._evict_one():
            logger.warning("refused a connection with %s: %d connections open (connections_max)", peer_id, len(self._open))
            stream.abort()
            return None
        if peer is None:
            peer = self._peers.get(peer_id)
            if peer is None:
                peer = self._peers[peer_id] = _Peer(peer_id, None)
        self._seq += 1
        conn = Connection(self, stream, peer, peer_id, outbound, self._seq)
        self._open[conn.seq] = conn
        existing = peer.conn
        if existing is None:
            peer.conn = conn
        else:
            if existing.outbound != outbound:
                smaller = min(self.node_id, peer_id)
                winner = existing if existing.initiator == smaller else conn
            else:
                winner = conn
            loser = conn if winner is existing else existing
            peer.conn = winner
            logger.debug("two connections with %s; keeping the one initiated by %s", peer_id, winner.initiator)
            loser.retire()
        if peer.conn is conn:
            conn.schedule_flush()
        return conn

    def stats(self, **extra: int) -> TransportStats:
        return TransportStats(
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            connections_open=len(self._open),
            connections_refused=self._refused,
            protocol_errors=self._protocol_errors,
            backpressure_drops=self._backpressure,
            dial_failures=self._dial_failures,
            frames_dropped=self._dropped,
            **extra,
        )

    def count_refused(self, reason: str, who: str) -> None:
        """Adapters call this for every refused handshake; it is logged with its reason."""
        self._refused += 1
        logger.warning("refused connection %s: %s", who, reason)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Flush queues, run the close handshake on every connection (bounded), then abort stragglers."""
        if self._closing:
            return
        self._closing = True
        if self._loop is None:  # never started: nothing to close
            return
        for conn in list(self._open.values()):
            if conn.state == _ACTIVE:
                conn.flush_now()
                conn.retire()
        deadline = self._loop.time() + self.config.close_grace_ms / 1000
        while (self._open or any(p.dialing for p in [*self._peers.values(), *self._anonymous.values()])) and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        for conn in list(self._open.values()):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*self._tasks, *([self._sweeper] if self._sweeper else []), return_exceptions=True)
        for peer in [*self._peers.values(), *self._anonymous.values()]:
            self._drop_queue(peer)
        # let abort() callbacks run so transports are released before the loop closes
        await asyncio.sleep(0)

    # -- internals --------------------------------------------------------------------------

    def _reconnect(self, peer: _Peer) -> None:
        """Dial `peer` now, or drop its queue if it is in backoff or has no known address."""
        if self._closing or peer.dialing or not peer.queue:
            return
        if peer.address is None:
            logger.debug("no address for %s; dropping %d queued frames", peer.node_id, len(peer.queue))
            self._drop_queue(peer)
            return
        if peer.address == peer.failed_address and self._loop.time() < peer.retry_at:
            self._drop_queue(peer)
            return
        peer.dialing = True
        self.spawn(self._dial(peer))

    async def _dial(self, peer: _Peer) -> None:
        address = peer.address
        assert address is not None
        expected = peer.node_id
        try:
            try:
                stream, remote_id, bind = await asyncio.wait_for(self._dialer(address, expected), self.config.dial_timeout_ms / 1000)
            except PeerRefused as exc:
                self.count_refused(str(exc), f"to {address}")
                self._dial_failed(peer, f"refused: {exc}")
                return
            except (OSError, asyncio.TimeoutError, EOFError) as exc:
                self._dial_failed(peer, f"{type(exc).__name__}: {exc}")
                return
            if peer.node_id is None:
                peer = self._adopt(peer, remote_id)
            conn = self.attach(stream, remote_id, outbound=True, peer=peer)
            if conn is None:
                self._dial_failed(peer, "connection refused locally")
                return
            bind(conn)
            if self._closing:  # close() is waiting for this dial: deliver what was queued
                conn.flush_now()
                conn.retire()
        finally:
            peer.dialing = False

    def _adopt(self, anon: _Peer, node_id: str) -> _Peer:
        """A dial to an address learnt the node id: move the anonymous queue to that node's peer."""
        address = anon.address
        assert address is not None
        self._anonymous.pop(address, None)
        self._ids_by_address[address] = node_id
        peer = self._peers.get(node_id)
        if peer is None:
            anon.node_id = node_id
            self._peers[node_id] = anon
            return anon
        peer.address = address
        room = self.config.send_queue_frames_max - len(peer.queue)
        moved = anon.queue[: max(0, room)]
        peer.queue.extend(moved)
        peer.queued_bytes += sum(len(d) for d in moved)
        self._dropped += len(anon.queue) - len(moved)
        anon.queue.clear()
        anon.queued_bytes = 0
        return peer

    def _dial_failed(self, peer: _Peer, reason: str) -> None:
        self._dial_failures += 1
        config = self.config
        peer.backoff_ms = min(config.reconnect_backoff_ms_max, max(config.reconnect_backoff_ms_min, peer.backoff_ms * 2))
        # "equal jitter": half fixed, half random, so retries from many nodes spread out
        delay_ms = peer.backoff_ms / 2 + self._rng.random() * peer.backoff_ms / 2
        peer.retry_at = self._loop.time() + delay_ms / 1000
        peer.failed_address = peer.address
        logger.info("dial to %s failed (%s); dropping %d frames, next attempt in >= %d ms",
                    peer.node_id or peer.address, reason, len(peer.queue), delay_ms)
        self._drop_queue(peer)

    def _drop_queue(self, peer: _Peer) -> None:
        self._dropped += len(peer.queue)
        peer.queue.clear()
        peer.queued_bytes = 0

    def _peer_retired(self, conn: Connection) -> None:
        """The peer sent BYE on a connection we still used: answer BYE and move on."""
        conn.retire()
        peer = conn.peer
        if peer.conn is None:
            self._use_other_or_redial(peer)

    def _use_other_or_redial(self, peer: _Peer) -> None:
        for other in self._open.values():
            if other.peer is peer and other.state == _ACTIVE:
                peer.conn = other
                other.schedule_flush()
                return
        self._reconnect(peer)

    def _lost(self, conn: Connection, exc: BaseException | None) -> None:
        if conn.state == _CLOSED:
            return
        clean = conn.bye_sent and conn.bye_received
        conn.state = _CLOSED
        self._open.pop(conn.seq, None)
        peer = conn.peer
        if not clean:
            logger.debug("connection with %s lost: %s", conn.peer_id, exc)
        if peer.conn is conn:
            peer.conn = None
            if conn.received_any:
                peer.backoff_ms = 0
            elif not self._closing:
                # lost before the peer said anything: likely refused after the handshake; back off
                self._dial_failed(peer, f"connection lost before any data ({exc})")
                return
            self._use_other_or_redial(peer)

    def _protocol_error(self, conn: Connection, reason: str) -> None:
        self._protocol_errors += 1
        logger.warning("closing connection with %s: protocol error: %s", conn.peer_id, reason)
        conn.stream.abort()

    def _evict_one(self) -> bool:
        """Close the least recently used idle connection to make room; False if none is idle."""
        victim = None
        for conn in self._open.values():
            if conn.state == _ACTIVE and not conn.peer.queue and (victim is None or conn.last_activity < victim.last_activity):
                victim = conn
        if victim is None:
            return False
        logger.debug("closing idle connection with %s to stay within connections_max", victim.peer_id)
        victim.retire()
        return True

    async def _sweep(self) -> None:
        config = self.config
        tick = min(config.frame_timeout_ms, config.idle_timeout_ms, config.close_grace_ms) / 4000
        tick = min(1.0, max(0.005, tick))
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            for conn in list(self._open.values()):
                if conn.stall_since is not None and now - conn.stall_since > config.frame_timeout_ms / 1000:
                    self._protocol_error(conn, f"half a frame ({conn._decoder.pending_bytes} bytes) stalled for more than {config.frame_timeout_ms} ms")
                elif conn.state == _ACTIVE:
                    if now - conn.last_activity > config.idle_timeout_ms / 1000 and not conn.peer.queue:
                        conn.retire()
                elif conn.state == _DRAINING and now - conn.draining_since > config.close_grace_ms / 1000:
                    conn.abort()


def _drop_frame(sender_id: str, frame: Any) -> None:
    logger.debug("no handler installed; dropped a frame from %s", sender_id)

"""Length-prefixed msgpack frames: a 4-byte big-endian length, then one msgpack value.

Pure bytes in, values out (sans-I/O), shared by the TLS and QUIC adapters. Decoding is bounded:
a length prefix above the limit fails before any body is buffered, so a peer cannot make us hold
more than one maximum frame (plus one read) per connection.

Decoding choices: ``raw=False`` (msgpack str decodes to `str`, bin to `bytes`; the encoder uses
``use_bin_type=True`` so they stay distinct); ``strict_map_key=False`` so int keys survive a round
trip (unhashable keys still fail as `MalformedFrame`); every ext type is rejected (including the
timestamp ext), so nothing on the wire can produce a Python object other than plain data.

Transport control frames (used by the connection manager, never shown to the node) set the top
bit of the length prefix; decoders built without ``allow_control=True`` see them as oversized.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from agentnode.transport.base import ProtocolError

__sans_io__ = True

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "ControlFrame",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "encode_control",
    "encode_frame",
    "encode_frames",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
"""1 MiB: node messages (gossip digests, CRDT deltas, agent cards) are kilobytes; bulk data is not
framed traffic. The same order as memberlist's stream limits and Akka Artery's 256 KiB-2 MiB
frames; small enough that one buffered frame per connection stays cheap at 1000 connections."""

PREFIX_BYTES = 4
_CONTROL_FLAG = 0x8000_0000
"""Top bit of the length prefix marks a transport control frame (lengths never reach 2^31)."""
_LENGTH_MASK = 0x7FFF_FFFF


class FrameError(ProtocolError):
    """Bytes from a peer are not a valid frame stream; the connection must be closed.

    `frames` holds the frames decoded from the same `feed` call before the bad one, so a receiver
    can still deliver them.
    """

    frames: list[Any]

    def __init__(self, message: str, frames: list[Any] | None = None) -> None:
        super().__init__(message)
        self.frames = frames if frames is not None else []


class FrameTooLarge(FrameError):
    """A frame (announced or encoded) exceeds the maximum frame size."""


class MalformedFrame(FrameError):
    """A frame body is not exactly one supported msgpack value."""


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A transport-internal frame (e.g. the close handshake); never delivered to the node."""

    value: Any
    """The decoded msgpack value."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def encode_frame(frame: Any, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Encode one value as a length-prefixed frame.

    Raises `TypeError` for values msgpack cannot carry and `FrameTooLarge` above `max_frame_bytes`
    (both are caller errors: the receiver would refuse the frame).
    """
    try:
        body = _packb(frame)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"frame is not msgpack-serialisable ({exc}); send dicts, lists, str, bytes, numbers, bool or None") from None
    n = len(body)
    if n > max_frame_bytes:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the {max_frame_bytes}-byte limit; split it or raise max_frame_bytes on every node")
    return n.to_bytes(4, "big") + body


def encode_frames(frames: Iterable[Any], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Encode several values into one buffer (coalesced: one write instead of many)."""
    return b"".join([encode_frame(f, max_frame_bytes=max_frame_bytes) for f in frames])


def encode_control(value: Any) -> bytes:
    """Encode a transport control frame (top bit of the length set); for connection managers only."""
    body = _packb(value)
    return (len(body) | _CONTROL_FLAG).to_bytes(4, "big") + body


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class FrameDecoder:
    """Incremental decoder: `feed` bytes as they arrive, get back the complete frames.

    Memory is bounded by one maximum frame plus the last chunk fed. After a `FrameError` the
    stream is unusable: close the connection.
    """

    __slots__ = ("_allow_control", "_buffer", "_max", "_need")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, *, allow_control: bool = False) -> None:
        if not 0 < max_frame_bytes <= _LENGTH_MASK:
            raise ValueError(f"max_frame_bytes must be in 1..{_LENGTH_MASK}, got {max_frame_bytes}")
        self._max = max_frame_bytes
        self._allow_control = allow_control
        self._buffer = bytearray()
        self._need = PREFIX_BYTES
        """Bytes the buffer must hold before a parse can make progress (avoids quadratic re-scans)."""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back; non-zero for too long means the peer stalled."""
        return len(self._buffer)

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return the frames they complete, in order (control frames as `ControlFrame`).

        Raises `FrameTooLarge` as soon as a length prefix exceeds the limit, `MalformedFrame` for a
        body that is not exactly one msgpack value.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            data = bytes(buffer)
            buffer.clear()
        frames: list[Any] = []
        end = len(data)
        pos = 0
        view = memoryview(data)
        unpackb = msgpack.unpackb
        limit = self._max
        try:
            while end - pos >= PREFIX_BYTES:
                length = int.from_bytes(view[pos : pos + PREFIX_BYTES], "big")
                control = False
                if length > limit:
                    if length & _CONTROL_FLAG and self._allow_control and (length & _LENGTH_MASK) <= limit:
                        length &= _LENGTH_MASK
                        control = True
                    else:
                        raise FrameTooLarge(f"peer announced a frame of {length} bytes; the limit is {limit}")
                start = pos + PREFIX_BYTES
                stop = start + length
                if stop > end:
                    self._need = PREFIX_BYTES + length
                    break
                try:
                    value = unpackb(view[start:stop], raw=False, strict_map_key=False, ext_hook=_reject_ext, max_ext_len=0)
                except Exception as exc:  # msgpack raises ValueError/TypeError/ExtraData/StackError/...
                    raise MalformedFrame(f"frame body is not one valid msgpack value: {type(exc).__name__}: {exc}") from None
                frames.append(ControlFrame(value) if control else value)
                pos = stop
            else:
                self._need = PREFIX_BYTES
        except FrameError as exc:
            exc.frames = frames
            raise
        finally:
            view.release()
        if pos < end:
            buffer += data[pos:]
        return frames

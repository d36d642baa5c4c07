"""A compact trace: one running BLAKE2b digest over a canonical encoding of every event.

Two runs of the same seed at the same commit must produce the same digest; the digest covers
event times, who did what, and the bytes of every delivered frame, so any divergence shows.
Records are buffered and hashed in chunks, which keeps the cost per event near one bytes join.
"""

from __future__ import annotations

import hashlib

__sans_io__ = True

__all__ = ["TRACE_BUFFER_BYTES", "TraceDigest"]

TRACE_BUFFER_BYTES = 1 << 16
"""Records are hashed once this many bytes are buffered."""


class TraceDigest:
    """Running digest of a run; `record` is called for every scheduler event."""

    __slots__ = ("_hash", "_buffer", "_size", "records")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16, person=b"agentnode-trace")
        self._buffer: list[bytes] = []
        self._size = 0
        self.records = 0

    def record(self, line: bytes) -> None:
        """Add one canonical record (length-prefixed, so records never run into each other)."""
        self._buffer.append(len(line).to_bytes(4, "big") + line)
        self._size += len(line) + 4
        self.records += 1
        if self._size >= TRACE_BUFFER_BYTES:
            self._flush()

    def hexdigest(self) -> str:
        """The digest of everything recorded so far."""
        self._flush()
        return self._hash.hexdigest()

    def _flush(self) -> None:
        if self._buffer:
            self._hash.update(b"".join(self._buffer))
            self._buffer.clear()
            self._size = 0

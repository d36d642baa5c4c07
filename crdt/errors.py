"""Errors of the CRDT package, split by blame (house style rule 12).

- `CrdtUsageError`: the caller misused the API (unknown operation, wrong type for a key, a
  timestamp that does not advance). The message says what to do instead.
- `CodecError`: bytes or values that came from a peer are malformed or too big. The node counts
  them and drops them (or disconnects the peer); it never crashes on them.
- `LimitExceededError`: a configured size limit was hit (too many keys, a value too large). Local
  writes surface it to the caller; for remote deltas the node counts and drops it.
"""

from __future__ import annotations

__all__ = ["CodecError", "CrdtError", "CrdtUsageError", "LimitExceededError"]


class CrdtError(Exception):
    """Base class of every error this package raises on purpose."""


class CrdtUsageError(CrdtError, ValueError):
    """The caller misused the API; the message says how to call it instead."""


class CodecError(CrdtError):
    """A wire value is malformed, of an unknown version or type, or over a size limit."""


class LimitExceededError(CrdtError):
    """A configured size limit was hit; `limit` names the limit (a config field name)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit

"""One run seed, forked into independent streams by label (TigerBeetle VOPR, FoundationDB).

Each node and each subsystem draws from its own `random.Random`, derived by hashing the run seed
with a label path. An extra draw in one stream never shifts another, and the derivation does
not depend on `PYTHONHASHSEED` (labels are hashed with BLAKE2b, never with `hash()`).
"""

from __future__ import annotations

import hashlib
import random

__sans_io__ = True

__all__ = ["SEED_MAX", "derive", "fork"]

SEED_MAX = 2**64 - 1
"""Seeds are unsigned 64-bit integers, so they fit in a replay command and in msgpack."""


def derive(seed: int, *labels: str | int) -> int:
    """A 64-bit seed for the stream named by `labels` under `seed`, e.g. ``derive(7, "node", 3)``."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed {seed} is outside 0..{SEED_MAX}; pass an unsigned 64-bit integer")
    h = hashlib.blake2b(digest_size=8, person=b"agentnode-sim")
    h.update(seed.to_bytes(8, "big"))
    for label in labels:
        # Type-tagged and length-prefixed, so ("a", 1) and ("a1",) never collide.
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise TypeError(f"seed labels are str or int, got {type(label).__name__}")
        if isinstance(label, int):
            data = b"i" + str(label).encode()
        else:
            data = b"s" + label.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return int.from_bytes(h.digest(), "big")


def fork(seed: int, *labels: str | int) -> random.Random:
    """A fresh `random.Random` for the stream named by `labels` under `seed`."""
    return random.Random(derive(seed, *labels))

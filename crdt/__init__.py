"""agentnode.crdt: vector clocks and delta-state CRDTs. Standard library only; no I/O, no clocks.

Types: `GCounter`, `PNCounter`, `LWWRegister`, `MVRegister`, `ORSet`, `ORMap` (nested causal
values), `LWWMap`. Each mutator changes the object it is called on and returns a delta of the
same type; `merge` joins a state or delta in place, `join` returns a new state, `value()` reads.
`StateStore` holds named CRDTs for one replica and serves delta propagation and digest repair.
`to_wire`/`from_wire` turn states into msgpack-ready plain values and back. See docs/crdt.md.
"""

from __future__ import annotations

from .base import Crdt
from .causal import CausalContext, Dot
from .codec import WIRE_VERSION, WireLimits, digest, from_wire, register_type, to_wire, type_names, wire_size
from .counters import GCounter, PNCounter
from .errors import CodecError, CrdtError, CrdtUsageError, LimitExceededError
from .maps import NESTABLE_TYPES, LWWMap, ORMap
from .or_set import ORSet
from .registers import LWWRegister, MVRegister
from .store import Delta, GcReport, PruneMarker, Repair, StateStore, StoreLimits, StoreStats
from .tombstone import Tombstone
from .vector_clock import Ordering, ReplicaId, VectorClock

__all__ = [
    "NESTABLE_TYPES",
    "WIRE_VERSION",
    "CausalContext",
    "CodecError",
    "Crdt",
    "CrdtError",
    "CrdtUsageError",
    "Delta",
    "Dot",
    "GCounter",
    "GcReport",
    "LWWMap",
    "LWWRegister",
    "LimitExceededError",
    "MVRegister",
    "ORMap",
    "ORSet",
    "Ordering",
    "PNCounter",
    "PruneMarker",
    "ReplicaId",
    "Repair",
    "StateStore",
    "StoreLimits",
    "StoreStats",
    "Tombstone",
    "VectorClock",
    "WireLimits",
    "digest",
    "from_wire",
    "register_type",
    "to_wire",
    "type_names",
    "wire_size",
]

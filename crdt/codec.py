"""Wire codec: CRDT states and deltas <-> plain msgpack-compatible values.

The node packs the plain value with msgpack; this module never sees bytes (crdt/ is standard
library only; decision 0022). Layout, version 1:

    [1, type_id, [replica ids...], body]

Replica ids are written once in a table and referenced by index in the body, because dots
repeat them many times. Bodies per type (flat lists, no per-item wrappers):

    context      [[ri, counter, ...] version vector, [ri, counter, ...] dot cloud]
    gcounter     [ri, count, ...]
    pncounter    [gcounter body of increments, gcounter body of decrements]
    lwwregister  [] (never written) or [timestamp, ri, value]
    mvregister   [context, [ri, counter, value, ...]]
    orset        [context, [element, [ri, counter, ...], ...]]
    ormap        [context, [key, type_id, nested store, ...]]   nested store = the body's second part
    lwwmap       [key, timestamp, ri, present, value, ...]
    tombstone    [ri, counter]

`to_wire` output is deterministic (everything sorted), so equal states encode equally and the
store can digest the encoding. `from_wire` checks everything a peer could get wrong and raises
`CodecError` (and nothing else) on any malformed, unknown or oversized input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import Crdt
from .causal import CausalContext, Dot
from .counters import GCounter, PNCounter
from .errors import CodecError, CrdtUsageError, LimitExceededError
from .maps import NESTABLE_TYPES, LWWMap, ORMap
from .or_set import ORSet
from .registers import LWWRegister, MVRegister
from .tombstone import Tombstone
from .values import INT_MAX, canonical_bytes, check_plain, element_order, is_element

__all__ = [
    "WIRE_VERSION",
    "WireLimits",
    "digest",
    "from_wire",
    "register_type",
    "to_wire",
    "type_names",
    "wire_size",
]

WIRE_VERSION = 1
"""Bumped on any incompatible change of the layout above; decoders refuse other versions."""

COUNTER_MAX = 2**63 - 1
"""Largest dot counter or timestamp accepted (signed 64-bit, so msgpack and SQLite agree)."""


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Bounds applied when encoding and decoding one CRDT value."""

    items_max: int = 100_000
    """Items (entries, dots, scalars) in one value. Akka Distributed Data advises at most
    100,000 top-level entries and far fewer elements per entry; a CRDT beyond this should be split."""
    depth_max: int = 16
    """Nesting depth (maps in maps plus plain values inside them)."""
    bytes_max: int = 4 * 1024 * 1024
    """Estimated msgpack size in bytes (Akka Artery's large-message frame is 2 MiB; we allow 4)."""
    replicas_max: int = 10_000
    """Distinct replica ids in one value (the claimed cluster size is 1,000+ nodes)."""
    replica_id_bytes_max: int = 256
    """Length of one replica id in UTF-8 bytes."""

    def __post_init__(self) -> None:
        for name in ("items_max", "depth_max", "bytes_max", "replicas_max", "replica_id_bytes_max"):
            if type(getattr(self, name)) is not int or getattr(self, name) <= 0:
                raise ValueError(f"WireLimits.{name} must be a positive int, got {getattr(self, name)!r}")


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True, slots=True)
class _TypeCodec:
    type_id: int
    cls: type
    encode: Callable[[_Encoder, Any], list[Any]]
    decode: Callable[[_Decoder, Any, int], Any]


_BY_ID: dict[int, _TypeCodec] = {}
_BY_CLASS: dict[type, _TypeCodec] = {}
_BY_NAME: dict[str, _TypeCodec] = {}


def register_type(
    type_id: int,
    cls: type[Crdt],
    encode: Callable[[_Encoder, Any], list[Any]],
    decode: Callable[[_Decoder, Any, int], Any],
) -> None:
    """Add a CRDT type to the registry under a stable wire id (never reuse a retired id)."""
    if type(type_id) is not int or not 1 <= type_id <= 127:
        raise CrdtUsageError(f"type_id must be an int in 1..127, got {type_id!r}")
    if type_id in _BY_ID or cls in _BY_CLASS or cls.TYPE_NAME in _BY_NAME:
        raise CrdtUsageError(f"type id {type_id} or type {cls.TYPE_NAME!r} is already registered")
    entry = _TypeCodec(type_id, cls, encode, decode)
    _BY_ID[type_id] = entry
    _BY_CLASS[cls] = entry
    _BY_NAME[cls.TYPE_NAME] = entry


def type_names() -> list[str]:
    """Registered type names (e.g. for the store's `update(key, type_name, ...)`)."""
    return sorted(_BY_NAME)


def type_for_name(name: str) -> type[Crdt] | None:
    """The registered class for a type name, or None."""
    entry = _BY_NAME.get(name)
    return entry.cls if entry is not None else None


def to_wire(crdt: Crdt, limits: WireLimits = DEFAULT_LIMITS) -> list[Any]:
    """Encode a state or delta as a plain value; raise `LimitExceededError` if it is over `limits`."""
    entry = _BY_CLASS.get(type(crdt))
    if entry is None:
        raise CrdtUsageError(f"{type(crdt).__name__} is not a registered CRDT type")
    enc = _Encoder(limits)
    body = entry.encode(enc, crdt)
    enc.check()
    return [WIRE_VERSION, entry.type_id, enc.replicas, body]


def from_wire(value: object, limits: WireLimits = DEFAULT_LIMITS) -> Crdt:
    """Decode a plain value from a peer; raise `CodecError` on anything malformed or oversized."""
    if type(value) is not list or len(value) != 4:
        raise CodecError("expected [version, type_id, replicas, body]")
    version, type_id, replicas, body = value
    if version != WIRE_VERSION or type(version) is not int:
        raise CodecError(f"unsupported wire version {version!r:.20}; this node speaks {WIRE_VERSION}")
    entry = _BY_ID.get(type_id) if type(type_id) is int else None
    if entry is None:
        raise CodecError(f"unknown CRDT type id {type_id!r:.20}")
    dec = _Decoder(limits, replicas)
    return entry.decode(dec, body, 1)  # type: ignore[no-any-return]


def wire_size(crdt: Crdt, limits: WireLimits = DEFAULT_LIMITS) -> int:
    """Estimated msgpack size of `to_wire(crdt)` in bytes."""
    entry = _BY_CLASS[type(crdt)]
    enc = _Encoder(limits, enforce=False)
    entry.encode(enc, crdt)
    return enc.size + sum(len(r) + 5 for r in enc.replicas) + 8


def digest(wire: list[Any]) -> bytes:
    """A 16-byte BLAKE2b digest of a `to_wire` value (equal states give equal digests)."""
    return hashlib.blake2b(canonical_bytes(wire), digest_size=16).digest()


# --- encoding ---


class _Encoder:
    """Interns replica ids and keeps the running size estimate."""

    __slots__ = ("limits", "enforce", "replicas", "_index", "size", "items")

    def __init__(self, limits: WireLimits, enforce: bool = True) -> None:
        self.limits = limits
        self.enforce = enforce
        self.replicas: list[str] = []
        self._index: dict[str, int] = {}
        self.size = 0
        self.items = 0

    def ri(self, replica: str) -> int:
        index = self._index.get(replica)
        if index is None:
            index = self._index[replica] = len(self.replicas)
            self.replicas.append(replica)
        return index

    def add(self, items: int, size: int) -> None:
        self.items += items
        self.size += size

    def value(self, value: Any) -> Any:
        self.items += 1
        self.size += check_plain(value, self.limits.depth_max, self.limits.items_max)
        return value

    def element(self, element: Any) -> Any:
        self.items += 1
        self.size += len(element) + 5 if type(element) is not int else 9
        return element

    def check(self) -> None:
        if not self.enforce:
            return
        lim = self.limits
        if self.items > lim.items_max:
            raise LimitExceededError("items_max", f"value has {self.items} items, over the wire limit of {lim.items_max}; split it across keys")
        if self.size > lim.bytes_max:
            raise LimitExceededError("bytes_max", f"value encodes to ~{self.size} bytes, over the wire limit of {lim.bytes_max}; split it across keys")
        if len(self.replicas) > lim.replicas_max:
            raise LimitExceededError("replicas_max", f"value names {len(self.replicas)} replicas, over {lim.replicas_max}")

    def dots(self, dots: list[Dot]) -> list[int]:
        out: list[int] = []
        for d in dots:
            out.append(self.ri(d.replica))
            out.append(d.counter)
        self.add(len(dots) * 2, len(dots) * 12)
        return out

    def ctx(self, ctx: CausalContext) -> list[Any]:
        vv: list[int] = []
        for replica, counter in ctx.vv_items():
            vv.append(self.ri(replica))
            vv.append(counter)
        self.add(len(vv), len(vv) * 6)
        return [vv, self.dots(ctx.cloud())]


def _enc_gcounter_slots(enc: _Encoder, slots: list[tuple[str, int]]) -> list[int]:
    out: list[int] = []
    for replica, count in slots:
        out.append(enc.ri(replica))
        out.append(count)
    enc.add(len(out), len(out) * 6)
    return out


def _enc_gcounter(enc: _Encoder, c: GCounter) -> list[Any]:
    return _enc_gcounter_slots(enc, c.slots())


def _enc_pncounter(enc: _Encoder, c: PNCounter) -> list[Any]:
    return [_enc_gcounter_slots(enc, c.increments.slots()), _enc_gcounter_slots(enc, c.decrements.slots())]


def _enc_lwwregister(enc: _Encoder, r: LWWRegister) -> list[Any]:
    if r.is_bottom():
        return []
    enc.add(2, 14)
    return [r.timestamp, enc.ri(r.writer), enc.value(r.value())]


def _enc_mv_store(enc: _Encoder, store: dict[Dot, Any]) -> list[Any]:
    out: list[Any] = []
    for dot in sorted(store):
        out.append(enc.ri(dot.replica))
        out.append(dot.counter)
        out.append(enc.value(store[dot]))
    enc.add(len(store) * 2, len(store) * 12)
    return out


def _enc_orset_store(enc: _Encoder, store: dict[Any, set[Dot]]) -> list[Any]:
    out: list[Any] = []
    for element in sorted(store, key=element_order):
        out.append(enc.element(element))
        out.append(enc.dots(sorted(store[element])))
    return out


def _enc_ormap_store(enc: _Encoder, store: dict[tuple[Any, str], Any]) -> list[Any]:
    out: list[Any] = []
    for key, tag in sorted(store, key=lambda kt: (element_order(kt[0]), kt[1])):
        out.append(enc.element(key))
        out.append(_BY_NAME[tag].type_id)
        out.append(_STORE_ENCODERS[tag](enc, store[(key, tag)]))
        enc.add(1, 2)
    return out


_STORE_ENCODERS: dict[str, Callable[[_Encoder, Any], list[Any]]] = {
    "orset": _enc_orset_store,
    "mvregister": _enc_mv_store,
    "ormap": _enc_ormap_store,
}


def _enc_causal(enc: _Encoder, crdt: Any) -> list[Any]:
    ctx = enc.ctx(crdt._ctx)
    return [ctx, _STORE_ENCODERS[crdt.TYPE_NAME](enc, crdt._store)]


def _enc_lwwmap(enc: _Encoder, m: LWWMap) -> list[Any]:
    out: list[Any] = []
    for key, (ts, replica, present, value) in m.entries():
        out.extend((enc.element(key), ts, enc.ri(replica), present, enc.value(value)))
        enc.add(3, 16)
    return out


def _enc_tombstone(enc: _Encoder, t: Tombstone) -> list[Any]:
    return [enc.ri(t.dot.replica), t.dot.counter]


# --- decoding ---


class _Decoder:
    """Validates untrusted input while building states; every failure is a `CodecError`."""

    __slots__ = ("limits", "replicas", "items", "size")

    def __init__(self, limits: WireLimits, replicas: object) -> None:
        self.limits = limits
        self.items = 0
        self.size = 0
        if type(replicas) is not list:
            raise CodecError("replica table must be a list")
        if len(replicas) > limits.replicas_max:
            raise CodecError(f"replica table has {len(replicas)} ids, over the limit of {limits.replicas_max}")
        seen: set[str] = set()
        for r in replicas:
            if type(r) is not str or not r or not is_element(r):
                raise CodecError("replica ids must be non-empty UTF-8 strings")
            if len(r) > limits.replica_id_bytes_max or len(r.encode()) > limits.replica_id_bytes_max:
                raise CodecError(f"replica id longer than {limits.replica_id_bytes_max} bytes")
            if r in seen:
                raise CodecError(f"replica id {r!r:.40} appears twice in the table")
            seen.add(r)
            self.size += len(r) + 5
        self.replicas: list[str] = replicas

    def count(self, items: int, size: int) -> None:
        self.items += items
        self.size += size
        if self.items > self.limits.items_max:
            raise CodecError(f"value has more than {self.limits.items_max} items")
        if self.size > self.limits.bytes_max:
            raise CodecError(f"value is larger than {self.limits.bytes_max} bytes")

    def list_(self, x: object, what: str, multiple: int = 1) -> list[Any]:
        if type(x) is not list:
            raise CodecError(f"{what} must be a list, got {type(x).__name__}")
        if len(x) % multiple:
            raise CodecError(f"{what} length {len(x)} is not a multiple of {multiple}")
        self.count(len(x), 5)
        return x

    def replica(self, x: object) -> str:
        if type(x) is not int or not 0 <= x < len(self.replicas):
            raise CodecError(f"replica index {x!r:.20} is not in the table of {len(self.replicas)}")
        return self.replicas[x]

    def counter(self, x: object, low: int = 1, what: str = "counter") -> int:
        if type(x) is not int or not low <= x <= COUNTER_MAX:
            raise CodecError(f"{what} {x!r:.20} is not an int in {low}..{COUNTER_MAX}")
        return x

    def element(self, x: object, what: str = "element") -> Any:
        if not is_element(x):
            raise CodecError(f"{what} must be str, bytes or a 64-bit int, got {type(x).__name__}")
        self.count(0, len(x) + 5 if type(x) is not int else 9)  # type: ignore[arg-type]
        return x

    def value(self, x: object, depth: int) -> Any:
        remaining = self.limits.depth_max - depth
        if remaining < 0:
            raise CodecError(f"value nests deeper than {self.limits.depth_max}")
        try:
            size = check_plain(x, remaining, self.limits.items_max - self.items)
        except ValueError as exc:
            raise CodecError(f"bad plain value: {exc}") from None
        self.count(1, size)
        return x

    def dots(self, x: object, what: str) -> list[Dot]:
        flat = self.list_(x, what, 2)
        return [Dot(self.replica(flat[i]), self.counter(flat[i + 1])) for i in range(0, len(flat), 2)]

    def ctx(self, x: object) -> CausalContext:
        parts = self.list_(x, "context")
        if len(parts) != 2:
            raise CodecError("context must be [version vector, dot cloud]")
        vv: dict[str, int] = {}
        for dot in self.dots(parts[0], "version vector"):
            if dot.replica in vv:
                raise CodecError(f"replica {dot.replica!r:.40} appears twice in a version vector")
            vv[dot.replica] = dot.counter
        return CausalContext.from_parts(vv, self.dots(parts[1], "dot cloud"))

    def depth(self, depth: int) -> None:
        if depth > self.limits.depth_max:
            raise CodecError(f"value nests deeper than {self.limits.depth_max}")


def _dec_gcounter_slots(dec: _Decoder, x: object) -> dict[str, int]:
    flat = dec.list_(x, "counter slots", 2)
    counts: dict[str, int] = {}
    for i in range(0, len(flat), 2):
        replica = dec.replica(flat[i])
        if replica in counts:
            raise CodecError(f"replica {replica!r:.40} has two counter slots")
        count = flat[i + 1]
        if type(count) is not int or not 1 <= count <= INT_MAX:
            raise CodecError(f"counter slot {count!r:.20} is not an int in 1..{INT_MAX}")
        counts[replica] = count
    return counts


def _dec_gcounter(dec: _Decoder, body: object, depth: int) -> GCounter:
    return GCounter._of(_dec_gcounter_slots(dec, body))


def _dec_pncounter(dec: _Decoder, body: object, depth: int) -> PNCounter:
    parts = dec.list_(body, "pncounter")
    if len(parts) != 2:
        raise CodecError("pncounter must be [increments, decrements]")
    return PNCounter._of(GCounter._of(_dec_gcounter_slots(dec, parts[0])), GCounter._of(_dec_gcounter_slots(dec, parts[1])))


def _dec_lwwregister(dec: _Decoder, body: object, depth: int) -> LWWRegister:
    parts = dec.list_(body, "lwwregister")
    if not parts:
        return LWWRegister()
    if len(parts) != 3:
        raise CodecError("lwwregister must be [] or [timestamp, replica, value]")
    ts = dec.counter(parts[0], 0, "timestamp")
    return LWWRegister._of(ts, dec.replica(parts[1]), dec.value(parts[2], depth + 1))


def _dec_mv_store(dec: _Decoder, x: object, depth: int, seen: set[Dot]) -> dict[Dot, Any]:
    flat = dec.list_(x, "mvregister entries", 3)
    store: dict[Dot, Any] = {}
    for i in range(0, len(flat), 3):
        dot = Dot(dec.replica(flat[i]), dec.counter(flat[i + 1]))
        _claim(dot, seen)
        store[dot] = dec.value(flat[i + 2], depth + 1)
    return store


def _dec_orset_store(dec: _Decoder, x: object, depth: int, seen: set[Dot]) -> dict[Any, set[Dot]]:
    flat = dec.list_(x, "orset entries", 2)
    store: dict[Any, set[Dot]] = {}
    for i in range(0, len(flat), 2):
        element = dec.element(flat[i])
        if element in store:
            raise CodecError(f"element {element!r:.40} appears twice")
        dots = dec.dots(flat[i + 1], "element dots")
        if not dots:
            raise CodecError(f"element {element!r:.40} has no dots")
        for dot in dots:
            _claim(dot, seen)
        store[element] = set(dots)
    return store


def _dec_ormap_store(dec: _Decoder, x: object, depth: int, seen: set[Dot]) -> dict[tuple[Any, str], Any]:
    dec.depth(depth)
    flat = dec.list_(x, "ormap entries", 3)
    store: dict[tuple[Any, str], Any] = {}
    for i in range(0, len(flat), 3):
        key = dec.element(flat[i], "map key")
        type_id = flat[i + 1]
        entry = _BY_ID.get(type_id) if type(type_id) is int else None
        if entry is None or entry.cls.TYPE_NAME not in NESTABLE_TYPES:
            raise CodecError(f"map value type id {type_id!r:.20} is not a nestable causal type")
        tag = entry.cls.TYPE_NAME
        if (key, tag) in store:
            raise CodecError(f"map key {key!r:.40} appears twice with type {tag}")
        nested = _STORE_DECODERS[tag](dec, flat[i + 2], depth + 1, seen)
        if not nested:
            raise CodecError(f"map key {key!r:.40} holds an empty {tag}")
        store[(key, tag)] = nested
    return store


_STORE_DECODERS: dict[str, Callable[[_Decoder, Any, int, set[Dot]], Any]] = {
    "orset": _dec_orset_store,
    "mvregister": _dec_mv_store,
    "ormap": _dec_ormap_store,
}


def _claim(dot: Dot, seen: set[Dot]) -> None:
    if dot in seen:
        raise CodecError(f"dot {dot!r:.60} is used twice in one store")
    seen.add(dot)


def _dec_causal(cls: Any) -> Callable[[_Decoder, Any, int], Any]:
    def decode(dec: _Decoder, body: object, depth: int) -> Any:
        parts = dec.list_(body, cls.TYPE_NAME)
        if len(parts) != 2:
            raise CodecError(f"{cls.TYPE_NAME} must be [context, entries]")
        ctx = dec.ctx(parts[0])
        seen: set[Dot] = set()
        store = _STORE_DECODERS[cls.TYPE_NAME](dec, parts[1], depth, seen)
        missing = ctx.dots_missing_from(seen)
        if missing:
            raise CodecError(f"{len(missing)} stored dots are not in the causal context, e.g. {min(missing)!r:.60}")
        return cls._view(store, ctx)

    return decode


def _dec_lwwmap(dec: _Decoder, body: object, depth: int) -> LWWMap:
    flat = dec.list_(body, "lwwmap entries", 5)
    entries: dict[Any, tuple[int, str, bool, Any]] = {}
    for i in range(0, len(flat), 5):
        key = dec.element(flat[i], "map key")
        if key in entries:
            raise CodecError(f"map key {key!r:.40} appears twice")
        ts = dec.counter(flat[i + 1], 0, "timestamp")
        replica = dec.replica(flat[i + 2])
        present = flat[i + 3]
        if type(present) is not bool:
            raise CodecError("lwwmap present flag must be a bool")
        value = dec.value(flat[i + 4], depth + 1)
        if not present and value is not None:
            raise CodecError("lwwmap tombstone must carry None")
        entries[key] = (ts, replica, present, value)
    return LWWMap._of(entries)


def _dec_tombstone(dec: _Decoder, body: object, depth: int) -> Tombstone:
    parts = dec.list_(body, "tombstone", 2)
    if len(parts) != 2:
        raise CodecError("tombstone must be [replica, counter]")
    return Tombstone(Dot(dec.replica(parts[0]), dec.counter(parts[1])))


# Stable wire ids: never renumber, never reuse a retired id.
register_type(1, GCounter, _enc_gcounter, _dec_gcounter)
register_type(2, PNCounter, _enc_pncounter, _dec_pncounter)
register_type(3, LWWRegister, _enc_lwwregister, _dec_lwwregister)
register_type(4, MVRegister, _enc_causal, _dec_causal(MVRegister))
register_type(5, ORSet, _enc_causal, _dec_causal(ORSet))
register_type(6, ORMap, _enc_causal, _dec_causal(ORMap))
register_type(7, LWWMap, _enc_lwwmap, _dec_lwwmap)
register_type(8, Tombstone, _enc_tombstone, _dec_tombstone)

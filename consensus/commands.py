"""Commands and queries for the critical-state machine, with stable wire ids and a strict codec.

A log entry is ``msgpack([ENTRY_VERSION, now_ms, wire_id, *fields])``: plain values only, so any
replica (or a future implementation in another language) decodes it without pickle. ``now_ms`` is
stamped by the proposer; replicas never read their own clock when applying, so they stay identical.

Wire ids are part of the on-disk and on-wire format: never renumber or reuse one. Add new commands
with new ids and leave retired ids reserved in `WIRE_IDS`' comments.
"""

from __future__ import annotations

__sans_io__ = True

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

__all__ = [
    "COMMANDS",
    "ENTRY_BYTES_MAX",
    "ENTRY_VERSION",
    "AcquireLock",
    "AdmitNode",
    "Barrier",
    "ClaimName",
    "Command",
    "CommandDecodeError",
    "GetLock",
    "GetRoster",
    "IsRevoked",
    "KvCompareAndSet",
    "KvDelete",
    "KvGet",
    "KvPut",
    "LookupName",
    "ReleaseLock",
    "ReleaseName",
    "RenewName",
    "RevokeNode",
    "WIRE_IDS",
    "decode_entry",
    "encode_entry",
    "from_wire",
    "to_wire",
]

ENTRY_VERSION = 1
"""Version of the log-entry envelope; bump only with a migration path."""
ENTRY_BYTES_MAX = 8192
"""Largest encoded entry. Kept far below pysyncobj's appendEntriesBatchSizeBytes (64 KiB) so an
entry is never split into its pickled 'transmission' chunks (see docs/consensus.md)."""
ID_CHARS_MAX = 128
"""Node ids, agent names, owners and lock names: printable identifiers, not documents."""
KEY_CHARS_MAX = 256
VALUE_BYTES_MAX = 4096
"""Linearizable keys hold small control values (config, leader hints), not payloads."""
TTL_MS_MIN = 1
TTL_MS_MAX = 24 * 3600 * 1000
"""A lease or lock longer than a day is a configuration mistake; renew instead."""
REASON_CHARS_MAX = 256
INT_MAX = 2**63 - 1


class CommandDecodeError(ValueError):
    """Bytes or values that are not a valid entry: from a peer or a corrupt file; drop and count."""


@dataclass(frozen=True, slots=True)
class AdmitNode:
    """Add a node id to the roster. A revoked id is never re-admitted (issue a new key instead)."""

    WIRE_ID: ClassVar[int] = 1
    READONLY: ClassVar[bool] = False
    node_id: str

    def __post_init__(self) -> None:
        _check_id("node_id", self.node_id)


@dataclass(frozen=True, slots=True)
class RevokeNode:
    """Revoke a node id for good; the transport refuses it from then on."""

    WIRE_ID: ClassVar[int] = 2
    READONLY: ClassVar[bool] = False
    node_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        _check_id("node_id", self.node_id)
        _check_str("reason", self.reason, REASON_CHARS_MAX, allow_empty=True)


@dataclass(frozen=True, slots=True)
class ClaimName:
    """Lease a unique agent name to `owner` for `ttl_ms` (renews if `owner` already holds it)."""

    WIRE_ID: ClassVar[int] = 3
    READONLY: ClassVar[bool] = False
    name: str
    owner: str
    ttl_ms: int

    def __post_init__(self) -> None:
        _check_id("name", self.name)
        _check_id("owner", self.owner)
        _check_ttl(self.ttl_ms)


@dataclass(frozen=True, slots=True)
class RenewName:
    """Extend a name lease `owner` still holds; fails once it has expired (claim again)."""

    WIRE_ID: ClassVar[int] = 4
    READONLY: ClassVar[bool] = False
    name: str
    owner: str
    ttl_ms: int

    def __post_init__(self) -> None:
        _check_id("name", self.name)
        _check_id("owner", self.owner)
        _check_ttl(self.ttl_ms)


@dataclass(frozen=True, slots=True)
class ReleaseName:
    """Give a name back before its lease expires."""

    WIRE_ID: ClassVar[int] = 5
    READONLY: ClassVar[bool] = False
    name: str
    owner: str

    def __post_init__(self) -> None:
        _check_id("name", self.name)
        _check_id("owner", self.owner)


@dataclass(frozen=True, slots=True)
class AcquireLock:
    """Take (or extend, if already held by `owner`) a lock; the result carries a fencing token."""

    WIRE_ID: ClassVar[int] = 6
    READONLY: ClassVar[bool] = False
    lock: str
    owner: str
    ttl_ms: int

    def __post_init__(self) -> None:
        _check_id("lock", self.lock)
        _check_id("owner", self.owner)
        _check_ttl(self.ttl_ms)


@dataclass(frozen=True, slots=True)
class ReleaseLock:
    """Release a lock; only the holder with the current fencing token may."""

    WIRE_ID: ClassVar[int] = 7
    READONLY: ClassVar[bool] = False
    lock: str
    owner: str
    fencing_token: int

    def __post_init__(self) -> None:
        _check_id("lock", self.lock)
        _check_id("owner", self.owner)
        _check_int("fencing_token", self.fencing_token, 1)


@dataclass(frozen=True, slots=True)
class KvPut:
    """Set a linearizable key."""

    WIRE_ID: ClassVar[int] = 8
    READONLY: ClassVar[bool] = False
    key: str
    value: bytes

    def __post_init__(self) -> None:
        _check_str("key", self.key, KEY_CHARS_MAX)
        _check_value("value", self.value, allow_none=False)


@dataclass(frozen=True, slots=True)
class KvDelete:
    """Delete a linearizable key (succeeds if it is already absent)."""

    WIRE_ID: ClassVar[int] = 9
    READONLY: ClassVar[bool] = False
    key: str

    def __post_init__(self) -> None:
        _check_str("key", self.key, KEY_CHARS_MAX)


@dataclass(frozen=True, slots=True)
class KvCompareAndSet:
    """Set `key` to `new` only if it currently equals `expected`; None means absent on either side."""

    WIRE_ID: ClassVar[int] = 10
    READONLY: ClassVar[bool] = False
    key: str
    expected: bytes | None
    new: bytes | None

    def __post_init__(self) -> None:
        _check_str("key", self.key, KEY_CHARS_MAX)
        _check_value("expected", self.expected, allow_none=True)
        _check_value("new", self.new, allow_none=True)


@dataclass(frozen=True, slots=True)
class IsRevoked:
    """Query: has this node id been revoked?"""

    WIRE_ID: ClassVar[int] = 20
    READONLY: ClassVar[bool] = True
    node_id: str

    def __post_init__(self) -> None:
        _check_id("node_id", self.node_id)


@dataclass(frozen=True, slots=True)
class GetRoster:
    """Query: admitted and revoked node ids, sorted."""

    WIRE_ID: ClassVar[int] = 21
    READONLY: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class LookupName:
    """Query: the live lease on a name, or None."""

    WIRE_ID: ClassVar[int] = 22
    READONLY: ClassVar[bool] = True
    name: str

    def __post_init__(self) -> None:
        _check_id("name", self.name)


@dataclass(frozen=True, slots=True)
class GetLock:
    """Query: the live hold on a lock, or None."""

    WIRE_ID: ClassVar[int] = 23
    READONLY: ClassVar[bool] = True
    lock: str

    def __post_init__(self) -> None:
        _check_id("lock", self.lock)


@dataclass(frozen=True, slots=True)
class KvGet:
    """Query: the value of a linearizable key, or None."""

    WIRE_ID: ClassVar[int] = 24
    READONLY: ClassVar[bool] = True
    key: str

    def __post_init__(self) -> None:
        _check_str("key", self.key, KEY_CHARS_MAX)


@dataclass(frozen=True, slots=True)
class Barrier:
    """Query: commits nothing, returns the entries applied so far; a read fence through the log."""

    WIRE_ID: ClassVar[int] = 25
    READONLY: ClassVar[bool] = True


Command = (
    AdmitNode | RevokeNode | ClaimName | RenewName | ReleaseName | AcquireLock | ReleaseLock | KvPut
    | KvDelete | KvCompareAndSet | IsRevoked | GetRoster | LookupName | GetLock | KvGet | Barrier
)

COMMANDS: dict[str, type] = {
    "admit_node": AdmitNode,
    "revoke_node": RevokeNode,
    "claim_name": ClaimName,
    "renew_name": RenewName,
    "release_name": ReleaseName,
    "acquire_lock": AcquireLock,
    "release_lock": ReleaseLock,
    "kv_put": KvPut,
    "kv_delete": KvDelete,
    "kv_compare_and_set": KvCompareAndSet,
    "is_revoked": IsRevoked,
    "get_roster": GetRoster,
    "lookup_name": LookupName,
    "get_lock": GetLock,
    "kv_get": KvGet,
    "barrier": Barrier,
}
"""Explicit name -> type registry (CLI and JSON use the names; the log uses `WIRE_IDS`)."""

WIRE_IDS: dict[int, type] = {cls.WIRE_ID: cls for cls in COMMANDS.values()}
"""Stable wire id -> type. Ids 11-19 and 26+ are free; retired ids must stay reserved."""

assert len(WIRE_IDS) == len(COMMANDS), "duplicate wire id"

# Field type names (as written in the annotations above) -> accepted runtime types.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bytes": (bytes,),
    "bytes | None": (bytes, type(None)),
}


def to_wire(command: Command) -> list[Any]:
    """A command as plain values: ``[wire_id, *fields]`` in declaration order."""
    cls = type(command)
    if WIRE_IDS.get(getattr(cls, "WIRE_ID", -1)) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered consensus command; see consensus.commands.COMMANDS")
    return [cls.WIRE_ID, *(getattr(command, f.name) for f in fields(cls))]


def from_wire(value: Any) -> Command:
    """Rebuild a command from `to_wire` output; raise `CommandDecodeError` on anything else."""
    if not isinstance(value, (list, tuple)) or not value:
        raise CommandDecodeError("command must be a non-empty list [wire_id, *fields]")
    wire_id = value[0]
    if type(wire_id) is not int or wire_id not in WIRE_IDS:
        raise CommandDecodeError(f"unknown command wire id {wire_id!r}")
    cls = WIRE_IDS[wire_id]
    declared = fields(cls)
    args = list(value[1:])
    if len(args) != len(declared):
        raise CommandDecodeError(f"{cls.__name__} takes {len(declared)} fields, got {len(args)}")
    for f, arg in zip(declared, args):
        accepted = _FIELD_TYPES[str(f.type)]
        # bool is an int subclass; refuse it where an int is declared.
        if not isinstance(arg, accepted) or isinstance(arg, bool):
            raise CommandDecodeError(f"{cls.__name__}.{f.name}: expected {f.type}, got {type(arg).__name__}")
    try:
        return cls(*args)
    except ValueError as exc:
        raise CommandDecodeError(f"{cls.__name__}: {exc}") from None


def encode_entry(command: Command, now_ms: int) -> bytes:
    """The log entry for `command` proposed at `now_ms`; raise ValueError if it is too large."""
    if type(now_ms) is not int or not 0 <= now_ms <= INT_MAX:
        raise ValueError(f"now_ms must be a non-negative int (epoch milliseconds), got {now_ms!r}")
    data = msgpack.packb([ENTRY_VERSION, now_ms, *to_wire(command)], use_bin_type=True)
    if len(data) > ENTRY_BYTES_MAX:
        raise ValueError(
            f"{type(command).__name__} encodes to {len(data)} bytes, over ENTRY_BYTES_MAX={ENTRY_BYTES_MAX}; "
            "store large data in the CRDT state and keep only a reference here"
        )
    return data


def decode_entry(data: bytes) -> tuple[Command, int]:
    """(command, now_ms) from `encode_entry` bytes; raise `CommandDecodeError` on anything else."""
    if not isinstance(data, (bytes, bytearray)):
        raise CommandDecodeError(f"entry must be bytes, got {type(data).__name__}")
    if len(data) > ENTRY_BYTES_MAX:
        raise CommandDecodeError(f"entry of {len(data)} bytes exceeds ENTRY_BYTES_MAX={ENTRY_BYTES_MAX}")
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=ENTRY_BYTES_MAX, max_str_len=ENTRY_BYTES_MAX,
            max_array_len=64, max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CommandDecodeError(f"entry is not valid msgpack: {exc}") from None
    if not isinstance(value, list) or len(value) < 3:
        raise CommandDecodeError("entry must be [version, now_ms, wire_id, *fields]")
    version, now_ms = value[0], value[1]
    if version != ENTRY_VERSION or type(version) is not int:
        raise CommandDecodeError(f"unsupported entry version {version!r}; this node reads {ENTRY_VERSION}")
    if type(now_ms) is not int or not 0 <= now_ms <= INT_MAX:
        raise CommandDecodeError(f"entry now_ms must be a non-negative int, got {now_ms!r}")
    return from_wire(value[2:]), now_ms


def _check_str(name: str, value: object, chars_max: int, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > chars_max:
        raise ValueError(f"{name} is {len(value)} characters; the limit is {chars_max}")


def _check_id(name: str, value: object) -> None:
    _check_str(name, value, ID_CHARS_MAX)
    assert isinstance(value, str)
    if not value.isprintable() or value != value.strip():
        raise ValueError(f"{name} {value!r} must be printable with no leading or trailing whitespace")


def _check_int(name: str, value: object, minimum: int, maximum: int = INT_MAX) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}={value} is outside {minimum}..{maximum}")


def _check_ttl(ttl_ms: object) -> None:
    _check_int("ttl_ms", ttl_ms, TTL_MS_MIN, TTL_MS_MAX)


def _check_value(name: str, value: object, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes{' or None' if allow_none else ''}, got {type(value).__name__}")
    if len(value) > VALUE_BYTES_MAX:
        raise ValueError(f"{name} is {len(value)} bytes; the limit is VALUE_BYTES_MAX={VALUE_BYTES_MAX}")

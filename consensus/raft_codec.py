"""A strict, pickle-free wire codec for pysyncobj's Raft messages.

pysyncobj's own TCP transport sends ``zlib(pickle(message))`` and unpickles whatever arrives. Here
each message is re-expressed as plain msgpack values against an allow-list of message types and
fields, so bytes from the network never reach ``pickle.loads``:

- Message dicts (``request_vote``, ``append_entries``, ...) are checked field by field: known
  keys only, exact types, bounded ints and sizes. Anything else raises `RaftFrameError`.
- Log-entry commands are pysyncobj byte strings (a type byte plus a pickle the library made
  locally). On send they are parsed with a globals-free unpickler (local bytes only) into
  ``["R", payload]``, ``["N"]``, ``["M", "add"|"rem", voter_id]`` or ``["V", version]``. On
  receive the pickle is *rebuilt* locally with ``pickle.dumps`` from the validated plain values.
- ``append_entries`` with ``transmission`` chunks (pysyncobj splits an entry >= 64 KiB and
  unpickles the reassembled bytes) is refused; `commands.ENTRY_BYTES_MAX` keeps our entries
  far below that size, so a well-behaved leader never sends one.
- Snapshot chunks (``serialized``) are opaque bytes of our own msgpack dump format; the group's
  deserializer validates them strictly before use.

The encoding of pysyncobj internals is tied to pysyncobj==0.3.17 (pinned in pyproject.toml).
"""

from __future__ import annotations

__sans_io__ = True

import io
import pickle
from typing import Any

import msgpack

from .commands import ENTRY_BYTES_MAX, Command, CommandDecodeError, decode_entry

__all__ = [
    "RAFT_FRAME_BYTES_MAX",
    "RAFT_FRAME_VERSION",
    "RaftFrameError",
    "command_from_wire",
    "coalesce_messages",
    "command_to_wire",
    "decode_message",
    "encode_message",
]

RAFT_FRAME_VERSION = 1
RAFT_FRAME_BYTES_MAX = 1 << 20
"""One frame: an append_entries batch is capped by pysyncobj at 64 KiB of commands
(appendEntriesBatchSizeBytes) and a snapshot chunk at 64 KiB (logCompactionBatchSize)."""
ENTRIES_PER_FRAME_MAX = 10_000
SNAPSHOT_CHUNK_BYTES_MAX = 1 << 17
VOTER_ID_CHARS_MAX = 256
INDEX_MAX = 2**63 - 1
FAIL_REASON_MAX = 7
"""pysyncobj.config.FAIL_REASON: SUCCESS=0 .. UNKNOWN_OUTCOME=7."""
COALESCED_COMMAND_BYTES_MAX = 256 << 10
"""Merged append_entries stop growing at this many command bytes, so a frame stays far below
RAFT_FRAME_BYTES_MAX (pysyncobj's own batches stop at 64 KiB, appendEntriesBatchSizeBytes)."""
WIRE_CACHE_MAX = 256
"""Log commands whose wire form is remembered: the leader sends each entry to every follower."""
DECODED_ENTRIES_MAX = 1_024
"""Decoded entry payloads kept (about 1 MiB); a follower applies within ~15 ms of receipt, which
is ~135 entries at 9,000 commits/s."""

# pysyncobj.syncobj._COMMAND_TYPE (0.3.17)
_REGULAR, _NO_OP, _MEMBERSHIP, _VERSION = 0, 1, 2, 3
_PICKLE_PROTOCOL = 2
"""pysyncobj.pickle dumps with protocol 2; rebuilt entries must match journal bytes exactly."""
_APPLY_FUNC_ID = 0
"""The adapter registers exactly one @replicated method, so its pysyncobj function id is 0."""


class RaftFrameError(ValueError):
    """A Raft frame or entry that is not valid: from a peer, drop and count it."""


class CommandWireCache:
    """Work the codec need not repeat, for one group (no process-global state), bounded.

    - `to_wire`: `command_to_wire` of this node's recent log commands; the leader encodes each
      entry once per follower, and parsing the pickle is the dearest step of encoding a frame.
    - `remember_entry` / `take_entry`: entry payloads already decoded (validated on receipt, or
      made by this node), so applying the committed entry does not decode it a second time.

    Both are pure functions of the bytes, so a hit and a miss give the same result; oldest out first.
    """

    def __init__(self, size_max: int = WIRE_CACHE_MAX, entries_max: int = DECODED_ENTRIES_MAX) -> None:
        self._size_max = size_max
        self._entries_max = entries_max
        self._wire: dict[bytes, list[Any]] = {}
        self._entries: dict[bytes, tuple[Command, int]] = {}
        self.pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
        """This group's packer: `msgpack.packb` builds a Packer per call."""

    def remember_entry(self, payload: bytes, decoded: tuple[Command, int]) -> None:
        """`decoded` is `decode_entry(payload)` (or what `encode_entry` was given for it)."""
        if payload not in self._entries:
            if len(self._entries) >= self._entries_max:
                del self._entries[next(iter(self._entries))]
            self._entries[payload] = decoded

    def take_entry(self, payload: bytes) -> tuple[Command, int]:
        """`decode_entry(payload)`, from memory when it was decoded before; raises `CommandDecodeError`."""
        decoded = self._entries.get(payload)  # kept, not popped: equal payloads (same command, same ms) recur
        return decode_entry(payload) if decoded is None else decoded

    def own_command(self, payload: bytes) -> bytes:
        """The log command for this node's own entry `payload`, ready for pysyncobj's command queue.

        Byte for byte what the replica's `@replicated apply_entry(payload)` queues (pickle protocol 2
        of ``(_APPLY_FUNC_ID, (payload,))`` after the REGULAR type byte), built from the template
        instead of `pickle.dumps`, and its wire form remembered, so encoding the append_entries
        that carries it does not parse the pickle back (decision 0037).
        """
        command = _regular_command(payload)
        if command not in self._wire:
            if len(self._wire) >= self._size_max:
                del self._wire[next(iter(self._wire))]
            self._wire[command] = ["R", payload]
        return command

    def own_payload(self, command: bytes) -> bytes | None:
        """The entry payload inside a regular log command whose wire form is remembered (this node
        built or encoded it), else None; what unpickling the command would give, without unpickling."""
        wire = self._wire.get(command)
        return wire[1] if wire is not None and wire[0] == "R" else None

    def to_wire(self, command: bytes) -> list[Any]:
        """Same as `command_to_wire`; do not mutate the returned list."""
        key = bytes(command) if isinstance(command, bytearray) else command
        wire = self._wire.get(key) if isinstance(key, bytes) else None
        if wire is None:
            wire = command_to_wire(key)
            if len(self._wire) >= self._size_max:
                del self._wire[next(iter(self._wire))]
            self._wire[key] = wire
        return wire


# field name -> checker; "?" prefix marks optional fields
_SCHEMAS: dict[str, dict[str, str]] = {
    "request_vote": {"term": "index", "last_log_index": "index", "last_log_term": "index"},
    "response_vote": {"term": "index"},
    "append_entries": {
        "term": "index",
        "commit_index": "index",
        "?prevLogIdx": "index_or_none",
        "?prevLogTerm": "index_or_none",
        "?entries": "entries",
        "?serialized": "snapshot_chunk",
    },
    "next_node_idx": {"next_node_idx": "index", "reset": "bool", "success": "bool"},
    "apply_command": {"command": "command", "?request_id": "index"},
    "apply_command_response": {"request_id": "index", "?error": "fail_reason", "?log_idx": "index", "?log_term": "index"},
    "timeout_now": {"term": "index"},
}


def encode_message(message: dict[str, Any], cache: CommandWireCache | None = None) -> bytes:
    """pysyncobj message dict -> frame bytes; raise `RaftFrameError` for anything off the allow-list.

    `cache` (optional) remembers the wire form of log commands across calls.
    """
    if not isinstance(message, dict):
        raise RaftFrameError(f"raft message must be a dict, got {type(message).__name__}")
    kind = message.get("type")
    compiled = _COMPILED.get(kind) if isinstance(kind, str) else None
    if compiled is None:
        raise RaftFrameError(f"raft message type {kind!r} is not on the allow-list")
    fields, required = compiled
    body: dict[str, Any] = {}
    for key, value in message.items():
        if key == "type":
            continue
        spec = fields.get(key)
        if spec is None:
            raise RaftFrameError(f"{kind}: field {key!r} is not allowed (chunked 'transmission' entries are refused)")
        checker, encode, _, where = spec
        if cache is not None and checker == "entries":
            body[key] = _entries_out(value, where, cache.to_wire)
        elif cache is not None and checker == "command":
            body[key] = cache.to_wire(value)
        else:
            body[key] = encode(value, where)
    for key in required:
        if key not in body:
            raise RaftFrameError(f"{kind}: missing field {key!r}")
    frame = [RAFT_FRAME_VERSION, kind, body]
    data = cache.pack(frame) if cache is not None else msgpack.packb(frame, use_bin_type=True)
    if len(data) > RAFT_FRAME_BYTES_MAX:
        raise RaftFrameError(f"{kind} frame of {len(data)} bytes exceeds RAFT_FRAME_BYTES_MAX={RAFT_FRAME_BYTES_MAX}")
    return data


def decode_message(data: bytes, cache: CommandWireCache | None = None) -> dict[str, Any]:
    """Frame bytes -> a pysyncobj message dict; raise `RaftFrameError` on anything invalid.

    `cache` (optional) keeps the validated entry payloads decoded for `CommandWireCache.take_entry`.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise RaftFrameError(f"raft frame must be bytes, got {type(data).__name__}")
    if len(data) > RAFT_FRAME_BYTES_MAX:
        raise RaftFrameError(f"raft frame of {len(data)} bytes exceeds RAFT_FRAME_BYTES_MAX={RAFT_FRAME_BYTES_MAX}")
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=RAFT_FRAME_BYTES_MAX,
            max_str_len=RAFT_FRAME_BYTES_MAX, max_array_len=ENTRIES_PER_FRAME_MAX, max_map_len=16, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RaftFrameError(f"raft frame is not valid msgpack: {exc}") from None
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[2], dict)):
        raise RaftFrameError("raft frame must be [version, type, {fields}]")
    version, kind, body = value
    if type(version) is not int or version != RAFT_FRAME_VERSION:
        raise RaftFrameError(f"raft frame version {version!r}; this node speaks {RAFT_FRAME_VERSION}")
    compiled = _COMPILED.get(kind) if isinstance(kind, str) else None
    if compiled is None:
        raise RaftFrameError(f"raft message type {kind!r} is not on the allow-list")
    fields, required = compiled
    message: dict[str, Any] = {"type": kind}
    for key, field_value in body.items():
        spec = fields.get(key) if isinstance(key, str) else None
        if spec is None:
            if not isinstance(key, str):
                raise RaftFrameError(f"{kind}: field names must be strings")
            raise RaftFrameError(f"{kind}: field {key!r} is not allowed")
        checker, _, decode, where = spec
        if cache is not None and checker == "entries":
            decoded = _entries_in(field_value, where, cache)
        elif cache is not None and checker == "command":
            decoded = command_from_wire(field_value, cache)
        else:
            decoded = decode(field_value, where)
        if checker == "snapshot_chunk" and decoded is None:
            continue  # pysyncobj would crash unpacking False; "no chunk" is the same as absent
        message[key] = decoded
    for key in required:
        if key not in message:
            raise RaftFrameError(f"{kind}: missing field {key!r}")
    return message


def command_to_wire(command: bytes) -> list[Any]:
    """A pysyncobj log command made on THIS node -> plain values. Never used on network bytes."""
    if not isinstance(command, (bytes, bytearray)) or not command:
        raise RaftFrameError("log command must be non-empty bytes")
    return _command_to_wire(bytes(command))


def coalesce_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the messages queued for ONE peer (in send order) into fewer with the same effect.

    - an append_entries without entries is dropped when the next one (same term) follows it:
      the later one carries the same or a newer commit index, and a stale empty one arriving
      after entries would make pysyncobj's follower truncate them;
    - consecutive append_entries whose entries continue each other become one (what pysyncobj
      does with appendEntriesUseBatch=True), up to `COALESCED_COMMAND_BYTES_MAX`;
    - a successful next_node_idx is dropped when a later successful one (no reset) follows it.

    Snapshot chunks and everything else pass unchanged and keep their order.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if out:
            merged = _merge(out[-1], message)
            if merged is not None:
                out[-1] = merged
                continue
        out.append(message)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    kind = a.get("type")
    if kind != b.get("type"):
        return None
    if kind == "next_node_idx":
        if a["success"] and b["success"] and not a["reset"] and not b["reset"] \
                and b["next_node_idx"] >= a["next_node_idx"]:
            return b
        return None
    if kind != "append_entries" or a.get("term") != b.get("term"):
        return None
    if "prevLogIdx" not in a or "prevLogIdx" not in b or "serialized" in a or "serialized" in b \
            or "transmission" in a or "transmission" in b:
        return None
    a_entries, b_entries = a.get("entries") or [], b.get("entries") or []
    if not a_entries:
        return b
    last = a_entries[-1]
    if b["prevLogIdx"] != last[1] or b["prevLogTerm"] != last[2]:
        return None
    if not b_entries:
        return {**a, "commit_index": max(a["commit_index"], b["commit_index"])}
    if len(a_entries) + len(b_entries) > ENTRIES_PER_FRAME_MAX or \
            sum(len(e[0]) for e in a_entries) + sum(len(e[0]) for e in b_entries) > COALESCED_COMMAND_BYTES_MAX:
        return None
    return {**b, "entries": [*a_entries, *b_entries], "prevLogIdx": a["prevLogIdx"], "prevLogTerm": a["prevLogTerm"]}


def _command_to_wire(command: bytes) -> list[Any]:
    kind, rest = command[0], command[1:]
    if kind == _NO_OP:
        return ["N"]
    value = _local_unpickle(rest)
    if kind == _REGULAR:
        if (isinstance(value, tuple) and len(value) == 2 and value[0] == _APPLY_FUNC_ID
                and isinstance(value[1], tuple) and len(value[1]) == 1 and isinstance(value[1][0], bytes)):
            return ["R", value[1][0]]
        raise RaftFrameError("regular log command is not apply(bytes); only the adapter's method is replicated")
    if kind == _MEMBERSHIP:
        if (isinstance(value, list) and len(value) == 2 and value[0] in ("add", "rem")
                and _is_voter_id(value[1])):
            return ["M", value[0], value[1]]
        raise RaftFrameError("membership log command must be ['add'|'rem', voter_id] (no Node objects)")
    if kind == _VERSION:
        if type(value) is int and 0 <= value <= INDEX_MAX:
            return ["V", value]
        raise RaftFrameError("version log command must be an int")
    raise RaftFrameError(f"unknown log command type {kind}")


def command_from_wire(value: Any, cache: CommandWireCache | None = None) -> bytes:
    """Plain values -> the pysyncobj log command bytes, rebuilt locally; validates the payload."""
    if not isinstance(value, (list, tuple)) or not value or not isinstance(value[0], str):
        raise RaftFrameError("log command must be [tag, ...]")
    tag = value[0]
    if tag == "N" and len(value) == 1:
        return bytes([_NO_OP])
    if tag == "R" and len(value) == 2 and isinstance(value[1], bytes):
        payload = value[1]
        try:
            decoded = decode_entry(payload)  # validate at the edge: garbage never enters the log
        except CommandDecodeError as exc:
            raise RaftFrameError(f"log entry payload: {exc}") from None
        if cache is not None:
            cache.remember_entry(payload, decoded)
        return _regular_command(payload)
    if tag == "M" and len(value) == 3 and value[1] in ("add", "rem") and _is_voter_id(value[2]):
        return bytes([_MEMBERSHIP]) + pickle.dumps([value[1], value[2]], _PICKLE_PROTOCOL)
    if tag == "V" and len(value) == 2 and type(value[1]) is int and 0 <= value[1] <= INDEX_MAX:
        return bytes([_VERSION]) + pickle.dumps(value[1], _PICKLE_PROTOCOL)
    raise RaftFrameError(f"invalid log command {tag!r}")


# -- field codecs ------------------------------------------------------------------------------


def _is_voter_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= VOTER_ID_CHARS_MAX


def _index(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= INDEX_MAX:
        raise RaftFrameError(f"{where}: expected a non-negative int, got {value!r:.40}")
    return value


def _index_or_none(value: Any, where: str) -> int | None:
    return None if value is None else _index(value, where)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise RaftFrameError(f"{where}: expected a bool")
    return value


def _fail_reason(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= FAIL_REASON_MAX:
        raise RaftFrameError(f"{where}: expected a pysyncobj FAIL_REASON code")
    return value


def _entries_out(value: Any, where: str, to_wire: Any = command_to_wire) -> list[Any]:
    if not isinstance(value, (list, tuple)) or len(value) > ENTRIES_PER_FRAME_MAX:
        raise RaftFrameError(f"{where}: expected a list of at most {ENTRIES_PER_FRAME_MAX} entries")
    out = []
    for entry in value:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise RaftFrameError(f"{where}: entry must be (command, index, term)")
        out.append([to_wire(entry[0]), _index(entry[1], where), _index(entry[2], where)])
    return out


def _entries_in(value: Any, where: str, cache: CommandWireCache | None = None) -> list[tuple[bytes, int, int]]:
    if not isinstance(value, list) or len(value) > ENTRIES_PER_FRAME_MAX:
        raise RaftFrameError(f"{where}: expected a list of at most {ENTRIES_PER_FRAME_MAX} entries")
    out = []
    previous = None
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise RaftFrameError(f"{where}: entry must be [command, index, term]")
        index, term = _index(entry[1], where), _index(entry[2], where)
        if previous is not None and index != previous + 1:
            raise RaftFrameError(f"{where}: entry indexes must be consecutive")
        previous = index
        out.append((command_from_wire(entry[0], cache), index, term))
    return out


def _command_out(value: Any, where: str) -> list[Any]:
    return command_to_wire(value)


def _command_in(value: Any, where: str) -> bytes:
    return command_from_wire(value)


def _snapshot_out(value: Any, where: str) -> list[Any] | None:
    if value is None or value is False:
        return None
    if (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], bytes)
            and type(value[1]) is bool and type(value[2]) is bool):
        if len(value[0]) > SNAPSHOT_CHUNK_BYTES_MAX:
            raise RaftFrameError(f"{where}: snapshot chunk over SNAPSHOT_CHUNK_BYTES_MAX")
        return [value[0], value[1], value[2]]
    raise RaftFrameError(f"{where}: expected (bytes, is_first, is_last)")


def _snapshot_in(value: Any, where: str) -> tuple[bytes, bool, bool] | None:
    if value is None:
        return None
    if (isinstance(value, list) and len(value) == 3 and isinstance(value[0], bytes)
            and len(value[0]) <= SNAPSHOT_CHUNK_BYTES_MAX and type(value[1]) is bool and type(value[2]) is bool):
        return (value[0], value[1], value[2])
    raise RaftFrameError(f"{where}: expected [bytes, is_first, is_last]")


_ENCODERS = {
    "index": _index, "index_or_none": _index_or_none, "bool": _bool, "fail_reason": _fail_reason,
    "entries": _entries_out, "command": _command_out, "snapshot_chunk": _snapshot_out,
}
_DECODERS = {
    "index": _index, "index_or_none": _index_or_none, "bool": _bool, "fail_reason": _fail_reason,
    "entries": _entries_in, "command": _command_in, "snapshot_chunk": _snapshot_in,
}


def _compile(schema: dict[str, str], kind: str) -> tuple[dict[str, tuple[str, Any, Any, str]], tuple[str, ...]]:
    fields = {}
    for key, checker in schema.items():
        name = key.lstrip("?")
        fields[name] = (checker, _ENCODERS[checker], _DECODERS[checker], f"{kind}.{name}")
    return fields, tuple(k for k in schema if not k.startswith("?"))


_COMPILED = {kind: _compile(schema, kind) for kind, schema in _SCHEMAS.items()}
"""`_SCHEMAS` looked up once: field name -> (checker, encoder, decoder, where); required names.
Read-only after import (a table, not state)."""


def _regular_command_parts() -> tuple[bytes, bytes]:
    """What `pickle.dumps((0, (payload,)), 2)` writes around the payload, found by pickling a probe.

    Protocol 2 has no bytes opcode: it writes ``_codecs.encode(payload.decode('latin1'), 'latin1')``,
    the text as BINUNICODE ('X', 4-byte little-endian length, UTF-8). Everything else is fixed.
    """
    probe = b"\xfe\x00probe"
    text = probe.decode("latin1").encode("utf-8")
    data = bytes([_REGULAR]) + pickle.dumps((_APPLY_FUNC_ID, (probe,)), _PICKLE_PROTOCOL)
    start = data.index(b"X" + len(text).to_bytes(4, "little") + text)
    return data[: start + 1], data[start + 5 + len(text):]


_REGULAR_HEAD, _REGULAR_TAIL = _regular_command_parts()


def _regular_command(payload: bytes) -> bytes:
    """``bytes([_REGULAR]) + pickle.dumps((_APPLY_FUNC_ID, (payload,)), 2)``, byte for byte, about
    four times faster (every follower rebuilds this for every entry it receives)."""
    if not payload:  # protocol 2 pickles b"" as bytes(), not through _codecs.encode
        return bytes([_REGULAR]) + pickle.dumps((_APPLY_FUNC_ID, (payload,)), _PICKLE_PROTOCOL)
    text = payload.decode("latin1").encode("utf-8")
    return _REGULAR_HEAD + len(text).to_bytes(4, "little") + text + _REGULAR_TAIL


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds only primitive values: any class, function or persistent id is refused.

    The one exception is ``_codecs.encode``: pickle protocol 2 (what pysyncobj uses) has no bytes
    opcode and writes ``bytes`` as ``_codecs.encode(text, 'latin1')``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise RaftFrameError(f"log command refers to {module}.{name}; only plain values are allowed")


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RaftFrameError("log command uses _codecs.encode for something other than latin-1 bytes")
    return text.encode("latin1")


def _local_unpickle(data: bytes) -> Any:
    if len(data) > ENTRY_BYTES_MAX + 64:
        raise RaftFrameError("log command is larger than any entry this adapter writes")
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except RaftFrameError:
        raise
    except Exception as exc:
        raise RaftFrameError(f"log command is not a plain pickle: {exc}") from None

"""The Raft group inside the node: a few voters run pysyncobj, every other node forwards to them.

Consul's server/client split: 3 or 5 voters hold the critical state (roster, name leases, locks,
linearizable keys); all other nodes forward reads and writes to a voter over the node transport.

How the group comes to be (docs/decisions/0080-raft-voter-selection.md):
- By default a cluster forms its group by itself once `bootstrap_expect` (3) nodes are alive, like
  Consul's ``bootstrap_expect``. Only the node with the lowest id among the alive members proposes,
  and only after the alive set has been stable for `BOOTSTRAP_STABLE_MS` and every chosen voter has
  answered "I know no group". The chosen voters are the `bootstrap_expect` lowest alive ids. A node
  joins at most one group in its life (persisted in ``raft/group.json`` before its replica starts),
  so two racing proposals cannot both win a majority of the same nodes.
- Later joiners ask members "who are the voters / who leads" (an INFO query) and never compute it.
- Explicit configuration: ``raft.json`` in the data directory (``{"voters": [...]}`` or
  ``{"bootstrap_expect": 5}``, 0 disables bootstrapping) or ``AGENTNODE_RAFT_BOOTSTRAP_EXPECT``.

Raft traffic rides the node's mutually authenticated transport as frames of type `RAFT_FRAME_TYPE`
(decision 0030 in consensus, 0081 here): the sender id is the peer's certificate identity, and
frames from revoked nodes are dropped by the runtime before anything decodes them.

Errors keep the consensus classes across forwarding: `NoQuorum` / `NotLeader` (not applied, retry),
`ConsensusTimeout` (outcome unknown), `MembershipChangeRefused`, `ValueError` (caller misuse).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from agentnode import events as ev
from agentnode.consensus import commands as c
from agentnode.consensus.base import (
    ConsensusError,
    ConsensusTimeout,
    MembershipChangeRefused,
    NoQuorum,
    NotLeader,
    RaftReceiver,
    ReadResult,
)
from agentnode.consensus.history import HistoryRecorder
from agentnode.consensus.state_machine import (
    KvResult,
    Lease,
    LeaseResult,
    LockHold,
    LockResult,
    RosterResult,
    RosterView,
)
from agentnode.messages import PROTOCOL_VERSION
from agentnode.transport.base import Address
from agentnode.transport.connections import write_promptly

__all__ = [
    "RAFT_FRAME_TYPE",
    "GroupRecord",
    "NotVoter",
    "RaftOverloaded",
    "RaftService",
    "RaftUnavailable",
    "RaftSettings",
    "RaftSettingsError",
    "RecordingKv",
    "choose_voters",
    "decode_result",
    "encode_result",
    "error_from_payload",
    "error_payload",
    "outcome_of_error_kind",
    "load_settings",
]

log = logging.getLogger("agentnode.raft")

RAFT_FRAME_TYPE = 80
"""Frame type of all Raft-service frames (the Raft range is 80-95, docs/protocols/frame-types.md)."""

# Sub-kinds, frame[3]. Wire format: [PROTOCOL_VERSION, cluster, RAFT_FRAME_TYPE, kind, *fields].
K_PEER = 0
"""[.., K_PEER, bytes]: one pysyncobj message between voters (raft_codec bytes)."""
K_INFO_QUERY = 1
"""[.., K_INFO_QUERY]: who are the voters, who leads?"""
K_INFO = 2
"""[.., K_INFO, group_id|None, voters, leader|None, term, is_voter, revoked]: the answer."""
K_FORM = 3
"""[.., K_FORM, group_id, voters]: the bootstrapper's proposal; a chosen node with no group accepts."""
K_REQUEST = 4
"""[.., K_REQUEST, corr, reply_address, op, args]: a forwarded operation."""
K_ACCEPTED = 5
"""[.., K_ACCEPTED, corr]: the request reached a voter (sent before running it)."""
K_RESPONSE = 6
"""[.., K_RESPONSE, corr, ok, payload]: result (encode_result) or [error kind, message]."""
K_REVOKED = 7
"""[.., K_REVOKED, [node ids]]: pushed by the voter that committed a revocation."""

BOOTSTRAP_EXPECT_DEFAULT = 3
"""Consul's recommended server count: tolerates one failure."""
VOTERS_MAX = 7
"""Consul recommends 3 or 5 voters; 7 is the hard cap (each write waits for a majority)."""
ENV_BOOTSTRAP_EXPECT = "AGENTNODE_RAFT_BOOTSTRAP_EXPECT"
SETTINGS_FILE = "raft.json"
RAFT_DIR = "raft"
GROUP_FILE = "group.json"
LOG_DIR = "log"
"""pysyncobj journal and dump live in <data_dir>/raft/log; wiped when this node stops being a voter."""

TICK_MS = 250
"""Housekeeping period: bootstrap checks, INFO refresh, persisting voter changes."""
INFO_QUERY_MS = 500
"""How often a node without a group asks members about one."""
INFO_FANOUT = 8
"""Members asked per INFO round besides the would-be voters (bounded for large clusters)."""
INFO_REFRESH_MS = 2_000
"""How often a non-voter refreshes voters, leader and revocations from a voter."""
BOOTSTRAP_STABLE_MS = 1_000
"""The alive set must be unchanged this long before the bootstrapper forms the group."""
NO_GROUP_FRESH_MS = 2_000
"""A "no group here" answer counts for bootstrapping this long."""
LEADERLESS_CHECK_MS = 3_000
"""A voter without a leader this long asks the others whether it is still a voter."""
FORWARD_RECEIPT_MS = 1_000
"""A forwarded request not accepted by the voter within this is treated as not delivered."""
FORWARD_TIMEOUT_MS = 8_000
"""Bound on a forwarded operation: the voter's commit timeout (5 s) + NoQuorum bound (1.2 s) + margin."""
FORWARD_ATTEMPTS_MAX = 3
"""Voters tried for one operation (only while it was certainly not delivered)."""
PENDING_MAX = 4_096
"""Forwarded operations in flight from this node."""
SERVING_MAX = 1_024
"""Forwarded operations a voter runs at once; more are refused with `RaftOverloaded`."""
REVOKED_IN_INFO_MAX = 2_000
"""Revoked ids carried in one INFO answer (a revocation is also pushed when it commits)."""
ADMIT_PER_TICK = 8
"""Members the leader admits to the roster per housekeeping tick (bounded work when many join at once)."""
ADDRESS_CACHE_MAX = 10_000
"""Parsed "host:port" strings kept (one per member address seen)."""
ID_CHARS_MAX = 128
ERROR_CHARS_MAX = 2_000
RESULT_DEPTH_MAX = 4


class RaftSettingsError(ValueError):
    """raft.json or the environment holds an invalid setting; the message says how to fix it."""


class NotVoter(ConsensusError):
    """The node asked is not a voter (any more); the operation was not applied. Retry elsewhere."""


class RaftUnavailable(ConsensusError):
    """This node runs no Raft service (disabled in raft.json, or not started): nothing was applied."""


class RaftOverloaded(ConsensusError):
    """The voter runs `SERVING_MAX` forwarded operations already; not applied, retry shortly."""


_ERRORS: dict[str, type[Exception]] = {
    "NoQuorum": NoQuorum,
    "NotLeader": NotLeader,
    "ConsensusTimeout": ConsensusTimeout,
    "MembershipChangeRefused": MembershipChangeRefused,
    "NotVoter": NotVoter,
    "RaftOverloaded": RaftOverloaded,
    "RaftUnavailable": RaftUnavailable,
    "ValueError": ValueError,
}
_NOT_APPLIED = (NoQuorum, NotLeader, NotVoter, RaftOverloaded, RaftUnavailable)
"""Errors that prove the command did not take effect: safe to retry (history status "fail")."""


# -- settings and the persisted group record --------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """How this node takes part in the group; from raft.json / the environment (see `load_settings`)."""

    bootstrap_expect: int = BOOTSTRAP_EXPECT_DEFAULT
    """Alive members needed before the group forms by itself; 0 = never bootstrap (wait to be told)."""
    voters: tuple[str, ...] = ()
    """Explicit voter ids; when set, no bootstrapping: these form the group at first start."""
    enabled: bool = True
    """False: no Raft service at all on this node (operations fail with a clear error)."""

    def __post_init__(self) -> None:
        if not 0 <= self.bootstrap_expect <= VOTERS_MAX:
            raise RaftSettingsError(f"bootstrap_expect must be 0..{VOTERS_MAX} (3 or 5 recommended)")
        if len(self.voters) > VOTERS_MAX or len(set(self.voters)) != len(self.voters):
            raise RaftSettingsError(f"voters must be at most {VOTERS_MAX} distinct node ids")
        for voter in self.voters:
            _check_id(voter, RaftSettingsError)


def load_settings(data_dir: Path, environ: Mapping[str, str] | None = None) -> RaftSettings:
    """Read `<data_dir>/raft.json` (optional), then let ``AGENTNODE_RAFT_BOOTSTRAP_EXPECT`` override."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = Path(data_dir) / SETTINGS_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RaftSettingsError(f"{path}: not readable JSON ({exc}); fix or delete it") from None
        if not isinstance(raw, dict) or not set(raw) <= {"bootstrap_expect", "voters", "enabled"}:
            raise RaftSettingsError(f"{path}: expected an object with bootstrap_expect, voters and/or enabled")
    expect = raw.get("bootstrap_expect", BOOTSTRAP_EXPECT_DEFAULT)
    if ENV_BOOTSTRAP_EXPECT in environ:
        expect = environ[ENV_BOOTSTRAP_EXPECT]
    try:
        expect = int(expect)
    except (TypeError, ValueError):
        raise RaftSettingsError(f"bootstrap_expect must be an integer, got {expect!r}") from None
    voters = raw.get("voters", [])
    if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
        raise RaftSettingsError(f"{path}: voters must be a list of node ids")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RaftSettingsError(f"{path}: enabled must be true or false")
    return RaftSettings(bootstrap_expect=expect, voters=tuple(sorted(voters)), enabled=enabled)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """What this node knows of its group, persisted in ``raft/group.json`` before acting on it."""

    group_id: str
    voters: tuple[str, ...]
    """Sorted voter ids, as last known."""
    voter: bool
    """This node runs a replica."""
    revoked: tuple[str, ...] = ()
    """Revoked ids known here (refused even before the group answers after a restart)."""

    def to_json(self) -> str:
        return json.dumps({"group_id": self.group_id, "voters": list(self.voters), "voter": self.voter,
                           "revoked": list(self.revoked)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GroupRecord:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("group_id"), str) or not isinstance(raw.get("voter"), bool):
            raise ValueError("not a group record")
        voters = raw.get("voters")
        revoked = raw.get("revoked", [])
        if not isinstance(voters, list) or not isinstance(revoked, list):
            raise ValueError("not a group record")
        for value in [*voters, *revoked]:
            _check_id(value, ValueError)
        return cls(raw["group_id"], tuple(sorted(voters)), raw["voter"], tuple(sorted(revoked)))


def choose_voters(alive: list[str], expect: int) -> list[str]:
    """The deterministic bootstrap choice: the `expect` lowest alive node ids (sorted)."""
    return sorted(alive)[:expect]


def static_group_id(voters: tuple[str, ...]) -> str:
    """Group id for explicitly configured voters: the same on every node that has the same list."""
    return "static-" + hashlib.sha256(",".join(sorted(voters)).encode()).hexdigest()[:16]


# -- result codec: consensus results as plain msgpack values -----------------------------------

_RESULT_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (KvResult, LeaseResult, LockResult, RosterResult, RosterView, Lease, LockHold)
}


class ResultDecodeError(ValueError):
    """A voter's answer that is not a valid encoded result."""


def encode_result(value: Any) -> Any:
    """A state-machine result as plain values: scalars as themselves, ``["D", name, fields]``, ``["L", items]``."""
    if value is None or isinstance(value, (bool, int, bytes, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ["L", [encode_result(v) for v in value]]
    if is_dataclass(value) and type(value).__name__ in _RESULT_TYPES:
        return ["D", type(value).__name__, [encode_result(getattr(value, f.name)) for f in fields(value)]]
    raise TypeError(f"cannot encode result of type {type(value).__name__}")


def decode_result(value: Any, depth: int = 0) -> Any:
    """Inverse of `encode_result`; raise `ResultDecodeError` on anything else."""
    if value is None or isinstance(value, (bool, int, bytes, str)):
        return value
    if depth >= RESULT_DEPTH_MAX or not isinstance(value, list) or not value:
        raise ResultDecodeError("result nests too deep or is not a tagged list")
    if value[0] == "L" and len(value) == 2 and isinstance(value[1], list):
        return tuple(decode_result(v, depth + 1) for v in value[1])
    if value[0] == "D" and len(value) == 3 and isinstance(value[2], list):
        cls = _RESULT_TYPES.get(value[1]) if isinstance(value[1], str) else None
        if cls is None or len(value[2]) != len(fields(cls)):
            raise ResultDecodeError(f"unknown result type {value[1]!r} or wrong field count")
        try:
            return cls(*(decode_result(v, depth + 1) for v in value[2]))
        except TypeError as exc:
            raise ResultDecodeError(str(exc)) from None
    raise ResultDecodeError("unknown result tag")


def error_payload(exc: BaseException) -> list[Any]:
    """An exception as ``[class name, message]``; unknown classes travel as ConsensusError/ValueError."""
    kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else ("ValueError" if isinstance(exc, ValueError) else "ConsensusError")
    return [kind, str(exc)[:ERROR_CHARS_MAX]]


def error_from_payload(payload: Any) -> Exception:
    """The exception a voter reported, as the same class; unreadable payloads mean "outcome unknown"."""
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], str) and isinstance(payload[1], str)):
        return ConsensusTimeout("a voter sent an unreadable error; the outcome is unknown")
    cls = _ERRORS.get(payload[0], ConsensusError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, payload[1])
    if isinstance(exc, NotLeader):
        exc.leader = None
    if isinstance(exc, (NoQuorum, ConsensusTimeout)):
        exc.waited_ms = 0
    return exc


# -- the host: what the service needs from the node runtime ---------------------------------


class RaftHost(Protocol):
    """The slice of `agentnode.runtime.Node` the service uses (a Protocol, so tests can stand in)."""

    @property
    def node_id(self) -> str: ...

    def members(self) -> list[Any]: ...

    def send_frame(self, address: Any, frame: Any, peer_id: str | None) -> bool: ...

    def add_channel(self, frame_type: int, handler: Callable[[str, Any], None]) -> None: ...

    def add_member_listener(self, listener: Callable[[ev.NodeEvent], None]) -> None: ...

    def now_ms(self) -> int: ...


class _NodeLink:
    """`RaftLink` over the node transport: frames go to voters by their authenticated node id."""

    def __init__(self, service: RaftService) -> None:
        self._service = service
        self.receiver: RaftReceiver | None = None

    def send(self, voter_id: str, data: bytes) -> None:
        # Written before the loop polls again (decision 0037): a leader's entries must not wait
        # behind the other follower's acknowledgement that the poll would hand us first.
        with write_promptly():
            self._service._send_to(voter_id, [K_PEER, data])

    def set_receiver(self, receiver: RaftReceiver | None) -> None:
        self.receiver = receiver


@dataclass(slots=True)
class RaftServiceStats:
    """Counters exported with the node status."""

    frames_bad: int = 0
    """Frames of our type that failed validation (wrong version/cluster/shape): dropped."""
    peer_frames_dropped: int = 0
    """Raft frames that arrived while no replica runs here."""
    sends_unroutable: int = 0
    """Frames not sent: no known address, peer dead, or its queue full."""
    forwarded: int = 0
    served: int = 0
    refused_overloaded: int = 0
    responses_unmatched: int = 0
    bootstrap_conflicts: int = 0
    """INFO answers naming a different group than ours (two groups formed: see docs/raft-operations.md)."""
    frames_from_revoked: int = 0


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[tuple[bool, Any]]
    accepted: asyncio.Event = field(default_factory=asyncio.Event)


class RaftService:
    """The node's Raft service. Construct (no I/O), `await start()`, use, `await close()`.

    On a voter it runs a `PySyncObjGroup` over the node transport; on every node it answers the
    same API by forwarding to a voter when it has no replica.
    """

    def __init__(self, host: RaftHost, data_dir: Path, *, cluster: str, settings: RaftSettings | None = None,
                 rng: random.Random | None = None, raft_config: Any = None) -> None:
        self._host = host
        self._data_dir = Path(data_dir)
        self._dir = self._data_dir / RAFT_DIR
        self._cluster = cluster
        self._settings = settings
        self._rng = rng or random.Random()
        self._raft_config = raft_config
        self.stats = RaftServiceStats()
        self._node_id = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._record: GroupRecord | None = None
        self._group: Any = None
        """The PySyncObjGroup while this node is a voter."""
        self._link = _NodeLink(self)
        self._addresses: dict[str, str] = {}
        self._parsed: dict[str, Address] = {}
        self._states: dict[str, str] = {}
        self._revoked: dict[str, None] = {}
        self._leader_hint: str | None = None
        self._term_hint = 0
        self._pending: dict[int, _Pending] = {}
        self._next_corr = 1
        self._serving: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._change_lock = asyncio.Lock()
        self._replica_lock = asyncio.Lock()
        self._no_group_from: dict[str, int] = {}
        self._alive_key: tuple[str, ...] = ()
        self._alive_since_ms = 0
        self._next_info_ms = 0
        self._info_cursor = 0
        self._leaderless_since_ms: int | None = None
        self._conflict_logged = False
        self._admitting = False
        self._admit_refused: dict[str, None] = {}
        self._this_node_revoked = False
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load settings and the group record, hook into the node, start a replica if this is a voter."""
        self._loop = asyncio.get_running_loop()
        self._node_id = self._host.node_id
        if self._settings is None:
            self._settings = load_settings(self._data_dir)
        if not self._settings.enabled:
            log.info("raft: disabled on this node (raft.json: enabled=false)")
            return
        self._host.add_channel(RAFT_FRAME_TYPE, self._on_frame)
        self._host.add_member_listener(self._on_member_event)
        self._refresh_members()
        self._record = self._load_record()
        if self._record is None and self._settings.voters:
            voters = self._settings.voters
            self._save_record(GroupRecord(static_group_id(voters), voters, self._node_id in voters))
        if self._record is not None:
            self._revoked.update(dict.fromkeys(self._record.revoked))
            if self._record.voter:
                await self._start_replica(self._record.voters)
        self._task = self._loop.create_task(self._housekeeping())

    async def close(self) -> None:
        """Stop housekeeping and the replica; operations still waiting fail with `ConsensusTimeout`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        await self._stop_replica(wipe=False)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConsensusTimeout("the node stopped before the answer arrived; outcome unknown"))
        self._pending.clear()

    # -- public API -------------------------------------------------------------------------

    @property
    def is_voter(self) -> bool:
        return self._group is not None

    @property
    def group(self) -> Any:
        """The local `PySyncObjGroup` (None on a non-voter)."""
        return self._group

    def refuses(self, node_id: str) -> bool:
        """True for a revoked node id: the runtime drops its frames and stops sending to it."""
        if node_id in self._revoked:
            return True
        group = self._group
        return group is not None and group.state.is_revoked(node_id)

    def _require_enabled(self) -> None:
        if self._this_node_revoked:
            raise RaftUnavailable(f"this node ({self._node_id}) was revoked from the cluster and every node refuses it; "
                                  "issue it a new key and certificate to rejoin")
        if self._settings is not None and not self._settings.enabled:
            raise RaftUnavailable("the Raft service is disabled on this node (raft.json: enabled=false); "
                                  "run the command on another node")
        if self._loop is None:
            raise RaftUnavailable("the Raft service is not started; start the node first")

    async def propose(self, command: c.Command) -> Any:
        """Commit `command` through the group (forwarded to a voter from a non-voter)."""
        self._require_enabled()
        if getattr(type(command), "READONLY", False):
            raise ValueError(f"{type(command).__name__} is a query; use read() for it")
        if self._group is not None:
            return await self._group.propose(command)  # TypeError for a non-command, before any I/O
        return await self._forward("propose", [c.to_wire(command)], write=True)

    async def read(self, query: c.Command, linearizable: bool = True) -> ReadResult:
        """Answer a query; `linearizable=False` answers from a replica (labelled stale)."""
        self._require_enabled()
        if not getattr(type(query), "READONLY", False):
            raise ValueError(f"{type(query).__name__} changes state; use propose() for it")
        if self._group is not None:
            return await self._group.read(query, linearizable)
        value, applied, leader = await self._forward("read", [c.to_wire(query), bool(linearizable)], write=False)
        return ReadResult(value, bool(linearizable), applied, leader)

    async def kv_get(self, key: str, *, linearizable: bool = True) -> ReadResult:
        return await self.read(c.KvGet(key), linearizable)

    async def kv_put(self, key: str, value: bytes) -> KvResult:
        return await self.propose(c.KvPut(key, value))

    async def kv_cas(self, key: str, expected: bytes | None, new: bytes | None) -> KvResult:
        return await self.propose(c.KvCompareAndSet(key, expected, new))

    async def kv_delete(self, key: str) -> KvResult:
        return await self.propose(c.KvDelete(key))

    async def acquire_lock(self, lock: str, owner: str, ttl_ms: int) -> LockResult:
        return await self.propose(c.AcquireLock(lock, owner, ttl_ms))

    async def release_lock(self, lock: str, owner: str, fencing_token: int) -> LockResult:
        return await self.propose(c.ReleaseLock(lock, owner, fencing_token))

    async def claim_name(self, name: str, owner: str, ttl_ms: int) -> LeaseResult:
        """Lease a unique agent name (renews when `owner` holds it already); for the registry."""
        return await self.propose(c.ClaimName(name, owner, ttl_ms))

    async def renew_name(self, name: str, owner: str, ttl_ms: int) -> LeaseResult:
        return await self.propose(c.RenewName(name, owner, ttl_ms))

    async def release_name(self, name: str, owner: str) -> LeaseResult:
        return await self.propose(c.ReleaseName(name, owner))

    async def revoke_node(self, node_id: str, reason: str = "") -> RosterResult:
        """Revoke `node_id` for good; every node then drops its frames. A revoked voter is removed."""
        self._require_enabled()
        if node_id == self._node_id:
            raise ValueError("a node cannot revoke itself; run the command on another node")
        command = c.RevokeNode(node_id, reason)
        if self._group is None:
            return await self._forward("revoke", [c.to_wire(command)], write=True, avoid=node_id)
        return await self._revoke_here(command)

    async def _revoke_here(self, command: c.RevokeNode) -> RosterResult:
        """On a voter: commit the revocation, tell the revoked node, then tell everyone else."""
        assert self._group is not None
        result: RosterResult = await self._group.propose(command)
        if result.ok or result.reason == "already_revoked":
            self._send_to(command.node_id, [K_REVOKED, [command.node_id]], to_revoked=True)
            self._learn_revoked([command.node_id])
            self._broadcast([K_REVOKED, [command.node_id]])
        return result

    async def status(self) -> dict[str, Any]:
        """The group as seen from the leader when reachable (with per-voter lag), else this node's view."""
        self._require_enabled()
        local = self._local_status()
        if local["role"] == "leader":
            return local
        leader = local["leader"]
        if leader and leader != self._node_id:
            try:
                view = await self._call(leader, "status", [], timeout_ms=1_500)
                if isinstance(view, dict):
                    view = dict(view)
                    view["this_node"] = local["this_node"]
                    return view
            except Exception:  # the leader is unreachable or slow: show this node's own view
                pass
        return local

    async def add_voter(self, node_id: str) -> dict[str, Any]:
        """Make `node_id` (an alive member) a voter: it starts a replica, then the group commits the change."""
        self._require_enabled()
        _check_id(node_id, ValueError)
        if self._group is not None:
            return await self._add_voter_here(node_id)
        return await self._forward("add_voter", [node_id], write=True)

    async def remove_voter(self, node_id: str) -> dict[str, Any]:
        """Remove one voter (not the current leader); it stops its replica when reachable."""
        self._require_enabled()
        _check_id(node_id, ValueError)
        if self._group is not None and node_id != self._node_id:
            return await self._remove_voter_here(node_id)
        return await self._forward("remove_voter", [node_id], write=True, avoid=node_id)

    # -- control endpoint -------------------------------------------------------------------

    def register_control(self, control: Any) -> None:
        """Add the raft/kv/lock/name/roster operations to the node's `ControlServer`."""
        ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "raft_status": self._ctl_status,
            "raft_add_voter": lambda a: self.add_voter(_arg_str(a, "node_id")),
            "raft_remove_voter": lambda a: self.remove_voter(_arg_str(a, "node_id")),
            "raft_bench": self._ctl_bench,
            "kv_get": self._ctl_kv_get,
            "kv_put": self._ctl_kv_put,
            "kv_cas": self._ctl_kv_cas,
            "kv_delete": self._ctl_kv_delete,
            "lock_acquire": self._ctl_lock_acquire,
            "lock_release": self._ctl_lock_release,
            "lock_get": self._ctl_lock_get,
            "name_claim": self._ctl_name_claim,
            "name_renew": self._ctl_name_renew,
            "name_release": self._ctl_name_release,
            "name_lookup": self._ctl_name_lookup,
            "node_revoke": self._ctl_revoke,
            "roster": self._ctl_roster,
        }
        for name, handler in ops.items():
            control.add(name, handler)

    async def _ctl_status(self, _: dict[str, Any]) -> Any:
        return await self.status()

    async def _ctl_kv_get(self, a: dict[str, Any]) -> Any:
        key = _arg_str(a, "key")
        read = await self.kv_get(key, linearizable=not a.get("stale", False))
        return {"key": key, **_bytes_json("value", read.value), "found": read.value is not None,
                "stale": read.stale, "applied_index": read.applied_index, "leader": read.leader}

    async def _ctl_kv_put(self, a: dict[str, Any]) -> Any:
        key = _arg_str(a, "key")
        return _kv_json(key, await self.kv_put(key, _arg_bytes(a, "value")))

    async def _ctl_kv_cas(self, a: dict[str, Any]) -> Any:
        key = _arg_str(a, "key")
        expected = None if a.get("expected_absent") else _arg_bytes(a, "expected")
        new = None if a.get("delete") else _arg_bytes(a, "value")
        return _kv_json(key, await self.kv_cas(key, expected, new))

    async def _ctl_kv_delete(self, a: dict[str, Any]) -> Any:
        key = _arg_str(a, "key")
        return _kv_json(key, await self.kv_delete(key))

    async def _ctl_lock_acquire(self, a: dict[str, Any]) -> Any:
        return _lock_json(await self.acquire_lock(_arg_str(a, "name"), _arg_str(a, "owner"), _arg_int(a, "ttl_ms")))

    async def _ctl_lock_release(self, a: dict[str, Any]) -> Any:
        name, owner = _arg_str(a, "name"), _arg_str(a, "owner")
        token = a.get("fencing_token")
        if token is None:
            hold = (await self.read(c.GetLock(name))).value
            if hold is None or hold.owner != owner:
                return {"ok": False, "name": name, "reason": "not_held" if hold is None else "held_by_other",
                        "owner": None if hold is None else hold.owner}
            token = hold.fencing_token
        return _lock_json(await self.release_lock(name, owner, _arg_int({"t": token}, "t")))

    async def _ctl_lock_get(self, a: dict[str, Any]) -> Any:
        name = _arg_str(a, "name")
        read = await self.read(c.GetLock(name), not a.get("stale", False))
        hold = read.value
        return {"name": name, "held": hold is not None, "stale": read.stale,
                **({} if hold is None else {"owner": hold.owner, "fencing_token": hold.fencing_token,
                                            "expires_at_ms": hold.expires_at_ms})}

    async def _ctl_name_claim(self, a: dict[str, Any]) -> Any:
        return _lease_json(await self.claim_name(_arg_str(a, "name"), _arg_str(a, "owner"), _arg_int(a, "ttl_ms")))

    async def _ctl_name_renew(self, a: dict[str, Any]) -> Any:
        return _lease_json(await self.renew_name(_arg_str(a, "name"), _arg_str(a, "owner"), _arg_int(a, "ttl_ms")))

    async def _ctl_name_release(self, a: dict[str, Any]) -> Any:
        return _lease_json(await self.release_name(_arg_str(a, "name"), _arg_str(a, "owner")))

    async def _ctl_name_lookup(self, a: dict[str, Any]) -> Any:
        name = _arg_str(a, "name")
        read = await self.read(c.LookupName(name), not a.get("stale", False))
        lease = read.value
        return {"name": name, "held": lease is not None, "stale": read.stale,
                **({} if lease is None else {"owner": lease.owner, "expires_at_ms": lease.expires_at_ms, "epoch": lease.epoch})}

    async def _ctl_revoke(self, a: dict[str, Any]) -> Any:
        node_id = _arg_str(a, "node_id")
        result = await self.revoke_node(node_id, str(a.get("reason") or ""))
        return {"ok": result.ok, "node_id": result.node_id, "reason": result.reason}

    async def _ctl_roster(self, a: dict[str, Any]) -> Any:
        read = await self.read(c.GetRoster(), not a.get("stale", False))
        view: RosterView = read.value
        return {"admitted": list(view.admitted), "revoked": list(view.revoked), "stale": read.stale}

    async def _ctl_bench(self, a: dict[str, Any]) -> Any:
        """Benchmark commits on this node (used by `agentnode bench raft`); writes only key ``__bench__``."""
        count = min(max(_arg_int(a, "count"), 1), 100_000)
        concurrency = min(max(_arg_int(a, "concurrency"), 1), 1_024)
        value = b"v" * min(max(int(a.get("value_bytes", 256)), 1), 4_096)
        clock = time.perf_counter  # loop.time() has 1 ms resolution under uvloop
        latencies = []
        cpu_start = time.process_time()
        for _ in range(count):
            start = clock()
            await self.kv_put("__bench__", value)
            latencies.append(clock() - start)
        sequential_cpu_s = time.process_time() - cpu_start
        start = clock()
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                await self.kv_put("__bench__", value)

        if a.get("pipelined", True):
            await asyncio.gather(*(one() for _ in range(count)))
        pipelined_s = clock() - start
        return {"sequential_s": latencies, "pipelined_s": pipelined_s, "sequential_cpu_s": sequential_cpu_s,
                "count": count, "concurrency": concurrency,
                "voter": self.is_voter, "role": self._local_status()["role"]}

    # -- frames -----------------------------------------------------------------------------

    def _on_frame(self, sender: str, frame: Any) -> None:
        if self._closed:
            return
        if type(frame) is not list or len(frame) < 4 or frame[0] != PROTOCOL_VERSION or frame[1] != self._cluster:
            self.stats.frames_bad += 1
            return
        if self.refuses(sender):
            self.stats.frames_from_revoked += 1
            return
        kind = frame[3]
        try:
            if kind == K_PEER:
                self._on_peer(sender, frame)
            elif kind == K_REQUEST:
                self._on_request(sender, frame)
            elif kind == K_ACCEPTED:
                self._on_accepted(frame)
            elif kind == K_RESPONSE:
                self._on_response(frame)
            elif kind == K_INFO_QUERY:
                self._send_to(sender, self._info_frame())
            elif kind == K_INFO:
                self._on_info(sender, frame)
            elif kind == K_FORM:
                self._on_form(sender, frame)
            elif kind == K_REVOKED:
                self._on_revoked(sender, frame)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError, IndexError) as exc:  # a peer's garbage: count and drop, never crash
            self.stats.frames_bad += 1
            log.debug("raft: dropped a frame from %s: %s", sender, exc)

    def _on_peer(self, sender: str, frame: list[Any]) -> None:
        if len(frame) != 5 or not isinstance(frame[4], bytes):
            raise ValueError("bad peer frame")
        receiver = self._link.receiver
        if receiver is None:
            self.stats.peer_frames_dropped += 1
            return
        receiver(sender, frame[4])

    def _on_request(self, sender: str, frame: list[Any]) -> None:
        if len(frame) != 8 or type(frame[4]) is not int or not isinstance(frame[5], str) or not isinstance(frame[6], str) \
                or not isinstance(frame[7], list):
            raise ValueError("bad request frame")
        corr, reply_address, op, args = frame[4], frame[5], frame[6], frame[7]
        if sender not in self._addresses and reply_address:
            self._addresses[sender] = reply_address
        if len(self._serving) >= SERVING_MAX:
            self.stats.refused_overloaded += 1
            self._send_to(sender, [K_RESPONSE, corr, False, error_payload(RaftOverloaded(
                f"voter {self._node_id} is serving {SERVING_MAX} operations; not applied, retry shortly"))])
            return
        self._send_to(sender, [K_ACCEPTED, corr])
        assert self._loop is not None
        task = self._loop.create_task(self._serve(sender, corr, op, args))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, sender: str, corr: int, op: str, args: list[Any]) -> None:
        self.stats.served += 1
        try:
            result = await self._run_op(sender, op, args)
            reply = [K_RESPONSE, corr, True, result]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure goes back to the caller with its class name
            if not isinstance(exc, (ConsensusError, ValueError)):
                log.exception("raft: forwarded %s from %s failed", op, sender)
            reply = [K_RESPONSE, corr, False, error_payload(exc)]
        self._send_to(sender, reply)

    async def _run_op(self, sender: str, op: str, args: list[Any]) -> Any:
        if op == "status":
            return self._local_status()
        if op == "prepare_voter":
            return await self._prepare_voter(sender, args)
        if op == "retire_voter":
            return await self._retire_voter(sender, args)
        group = self._group
        if group is None:
            raise NotVoter(f"node {self._node_id} is not a Raft voter; the operation was NOT applied")
        if op == "propose":
            command = _command_arg(args, 1)
            if getattr(type(command), "READONLY", False):
                raise ValueError("a query was sent as a proposal")
            return encode_result(await group.propose(command))
        if op == "read":
            command = _command_arg(args, 2)
            if not isinstance(args[1], bool):
                raise ValueError("read takes [query, linearizable]")
            read = await group.read(command, args[1])
            return [encode_result(read.value), read.applied_index, read.leader]
        if op == "revoke":
            command = _command_arg(args, 1)
            if not isinstance(command, c.RevokeNode):
                raise ValueError("revoke takes [RevokeNode]")
            return encode_result(await self._revoke_here(command))
        if op == "add_voter" and len(args) == 1 and isinstance(args[0], str):
            return await self._add_voter_here(args[0])
        if op == "remove_voter" and len(args) == 1 and isinstance(args[0], str):
            return await self._remove_voter_here(args[0])
        raise ValueError(f"unknown operation {op!r} or bad arguments")

    def _on_accepted(self, frame: list[Any]) -> None:
        if len(frame) != 5 or type(frame[4]) is not int:
            raise ValueError("bad accepted frame")
        pending = self._pending.get(frame[4])
        if pending is not None:
            pending.accepted.set()

    def _on_response(self, frame: list[Any]) -> None:
        if len(frame) != 7 or type(frame[4]) is not int or not isinstance(frame[5], bool):
            raise ValueError("bad response frame")
        pending = self._pending.get(frame[4])
        if pending is None or pending.future.done():
            self.stats.responses_unmatched += 1
            return
        pending.accepted.set()
        pending.future.set_result((frame[5], frame[6]))

    def _on_info(self, sender: str, frame: list[Any]) -> None:
        if len(frame) != 10:
            raise ValueError("bad info frame")
        group_id, voters, leader, term, is_voter, revoked = frame[4:10]
        if group_id is None:
            self._no_group_from[sender] = self._host.now_ms()
            return
        if not isinstance(group_id, str) or not isinstance(voters, list) or not isinstance(revoked, list) \
                or not (leader is None or isinstance(leader, str)) or type(term) is not int or not isinstance(is_voter, bool):
            raise ValueError("bad info fields")
        for value in [group_id, *voters, *revoked]:
            _check_id(value, ValueError)
        voters_t = tuple(sorted(voters))
        if not voters_t or len(voters_t) > VOTERS_MAX:
            raise ValueError("bad voter list")
        record = self._record
        if record is None:
            # A group exists: adopt it. If it lists this node, we were chosen (the FORM got lost).
            voter = self._node_id in voters_t
            self._save_record(GroupRecord(group_id, voters_t, voter, tuple(sorted(revoked))))
            log.info("raft: learned group %s from %s (voters %s)%s", group_id, sender, ", ".join(voters_t),
                     "; this node is a voter" if voter else "")
            if voter:
                self._spawn(self._start_replica(voters_t))
        elif record.group_id != group_id:
            self.stats.bootstrap_conflicts += 1
            if not self._conflict_logged:
                self._conflict_logged = True
                log.error("raft: member %s belongs to Raft group %s, this node to %s: two groups formed "
                          "(see docs/raft-operations.md, 'two groups')", sender, group_id, record.group_id)
            return
        elif self._group is None:
            if voters_t != record.voters and is_voter:
                self._save_record(GroupRecord(group_id, voters_t, False, record.revoked))
        elif (leader == sender and self._node_id not in voters_t and self._leaderless_since_ms is not None
              and self._host.now_ms() - self._leaderless_since_ms >= LEADERLESS_CHECK_MS):
            log.warning("raft: leader %s no longer lists this node as a voter; stopping the replica", sender)
            self._spawn(self._demote(voters_t))
        if is_voter and leader:
            self._leader_hint, self._term_hint = leader, term
        self._learn_revoked(revoked)

    def _on_form(self, sender: str, frame: list[Any]) -> None:
        if len(frame) != 6 or not isinstance(frame[4], str) or not isinstance(frame[5], list):
            raise ValueError("bad form frame")
        group_id, voters = frame[4], frame[5]
        for value in [group_id, *voters]:
            _check_id(value, ValueError)
        voters_t = tuple(sorted(voters))
        if sender not in voters_t or self._node_id not in voters_t or len(voters_t) > VOTERS_MAX:
            raise ValueError("a form frame must come from, and name, voters")
        if self._record is None:
            log.info("raft: %s formed group %s with voters %s", sender, group_id, ", ".join(voters_t))
            self._save_record(GroupRecord(group_id, voters_t, True, tuple(self._revoked)))
            self._spawn(self._start_replica(voters_t))
        self._send_to(sender, self._info_frame())

    def _on_revoked(self, sender: str, frame: list[Any]) -> None:
        if len(frame) != 5 or not isinstance(frame[4], list):
            raise ValueError("bad revoked frame")
        record = self._record
        if record is None or sender not in record.voters:
            raise ValueError("revocation notice from a node that is not a known voter")
        for value in frame[4]:
            _check_id(value, ValueError)
        self._learn_revoked(frame[4])

    def _info_frame(self) -> list[Any]:
        record = self._record
        if record is None:
            return [K_INFO, None, [], None, 0, False, []]
        leader, term = self._leader_hint, self._term_hint
        voters = record.voters
        revoked = sorted(self._revoked)
        if self._group is not None:
            status = self._group.status()
            leader, term, voters = status.leader, status.term, status.voters
            revoked = sorted({*revoked, *self._group.state.query(c.GetRoster()).revoked})
        revoked = revoked[:REVOKED_IN_INFO_MAX]
        return [K_INFO, record.group_id, list(voters), leader, term, self._group is not None, revoked]

    # -- sending ----------------------------------------------------------------------------

    def _send_to(self, node_id: str, body: list[Any], *, to_revoked: bool = False) -> bool:
        address = self._addresses.get(node_id)
        if address is None or self._states.get(node_id) in ("dead", "left") or (self.refuses(node_id) and not to_revoked):
            self.stats.sends_unroutable += 1
            return False
        try:
            parsed = self._parsed.get(address)
            if parsed is None:
                parsed = Address.parse(address)
                if len(self._parsed) < ADDRESS_CACHE_MAX:
                    self._parsed[address] = parsed
            sent = self._host.send_frame(parsed, [PROTOCOL_VERSION, self._cluster, RAFT_FRAME_TYPE, *body], node_id)
        except Exception as exc:  # a closed transport or an unusable address: the frame is lost
            log.debug("raft: cannot send to %s: %s", node_id, exc)
            sent = False
        if not sent:
            self.stats.sends_unroutable += 1
        return sent

    def _broadcast(self, body: list[Any]) -> None:
        for node_id in sorted(self._addresses):
            if node_id != self._node_id and self._states.get(node_id) in ("alive", "suspect"):
                self._send_to(node_id, body)

    async def _forward(self, op: str, args: list[Any], *, write: bool, avoid: str | None = None) -> Any:
        """Run `op` on a voter. Tries another voter only while the request was certainly not delivered."""
        targets = [t for t in self._forward_targets() if t != avoid]
        if not targets:
            voters = ", ".join(self._record.voters) if self._record else "none known yet"
            raise NoQuorum(f"no Raft voter is reachable from node {self._node_id} (voters: {voters}); "
                           "the operation was NOT applied. Check `agentnode raft status` and the network.")
        last: Exception | None = None
        for target in targets[:FORWARD_ATTEMPTS_MAX]:
            try:
                return await self._call(target, op, args, write=write)
            except _Undelivered as exc:
                last = exc
                continue
            except (NotVoter, NotLeader, RaftOverloaded) as exc:
                last = exc
                continue
        if isinstance(last, (NotVoter, NotLeader, RaftOverloaded)):
            raise last
        raise NoQuorum(f"no Raft voter answered node {self._node_id} (tried {', '.join(targets[:FORWARD_ATTEMPTS_MAX])}); "
                       "the operation was NOT applied")

    async def _call(self, target: str, op: str, args: list[Any], *, write: bool = True,
                    timeout_ms: int = FORWARD_TIMEOUT_MS) -> Any:
        """One request to `target`; raise `_Undelivered` when it never accepted the request."""
        if len(self._pending) >= PENDING_MAX:
            raise RaftOverloaded(f"{PENDING_MAX} forwarded operations are in flight from this node; retry shortly")
        assert self._loop is not None
        corr = self._next_corr
        self._next_corr += 1
        pending = _Pending(self._loop.create_future())
        self._pending[corr] = pending
        self.stats.forwarded += 1
        try:
            my_address = self._addresses.get(self._node_id, "")
            if not self._send_to(target, [K_REQUEST, corr, my_address, op, args]):
                raise _Undelivered(f"cannot send to voter {target}")
            try:
                await asyncio.wait_for(pending.accepted.wait(), min(FORWARD_RECEIPT_MS, timeout_ms) / 1000)
            except asyncio.TimeoutError:
                if write:
                    raise ConsensusTimeout(
                        f"voter {target} did not acknowledge the request within {FORWARD_RECEIPT_MS} ms; it may or may "
                        "not have been applied: read back before retrying") from None
                raise _Undelivered(f"voter {target} did not answer") from None
            try:
                ok, payload = await asyncio.wait_for(asyncio.shield(pending.future), timeout_ms / 1000)
            except asyncio.TimeoutError:
                raise ConsensusTimeout(waited_ms=timeout_ms) from None
        finally:
            self._pending.pop(corr, None)
        if not ok:
            raise error_from_payload(payload)
        try:
            if op == "read":
                if not (isinstance(payload, list) and len(payload) == 3 and type(payload[1]) is int):
                    raise ResultDecodeError("bad read answer")
                return decode_result(payload[0]), payload[1], payload[2] if isinstance(payload[2], str) else None
            if op in ("propose", "revoke"):
                return decode_result(payload)
            return payload
        except ResultDecodeError as exc:
            raise ConsensusTimeout(f"voter {target} sent an unreadable answer ({exc}); the outcome is unknown") from None

    def _forward_targets(self) -> list[str]:
        """The leader first (if known and alive), then the other alive voters in id order."""
        record = self._record
        if record is None:
            return []
        alive = [v for v in record.voters if v != self._node_id and self._states.get(v) in ("alive", "suspect")
                 and v in self._addresses and not self.refuses(v)]
        leader = self._leader_hint
        if leader in alive:
            alive.remove(leader)
            alive.insert(0, leader)
        return alive

    # -- voters: replica life cycle and membership changes ----------------------------------

    async def _start_replica(self, voters: tuple[str, ...]) -> None:
        from agentnode.consensus.pysyncobj_group import PySyncObjGroup, RaftConfig

        async with self._replica_lock:
            if self._group is not None or self._closed:
                return
            group = PySyncObjGroup(self._node_id, list(voters), self._link, self._dir / LOG_DIR,
                                   self._raft_config or RaftConfig())
            await group.start()
            self._group = group
            self._leaderless_since_ms = self._host.now_ms()
            log.info("raft: replica started (voters %s)", ", ".join(voters))

    async def _stop_replica(self, *, wipe: bool) -> None:
        async with self._replica_lock:
            group, self._group = self._group, None
            if group is not None:
                await group.close()
            if wipe:
                shutil.rmtree(self._dir / LOG_DIR, ignore_errors=True)

    async def _demote(self, voters: tuple[str, ...]) -> None:
        record = self._record
        await self._stop_replica(wipe=True)
        if record is not None:
            self._save_record(GroupRecord(record.group_id, tuple(v for v in voters if v != self._node_id), False,
                                          tuple(sorted(self._revoked))))

    async def _add_voter_here(self, node_id: str) -> dict[str, Any]:
        async with self._change_lock:
            group, record = self._group, self._record
            if group is None or record is None:
                raise NotVoter(f"node {self._node_id} is no longer a voter; retry")
            voters = group.status().voters
            if node_id in voters:
                raise MembershipChangeRefused(f"{node_id} is already a voter")
            if len(voters) >= VOTERS_MAX:
                raise MembershipChangeRefused(f"the group has {len(voters)} voters, the maximum is {VOTERS_MAX}")
            if self._states.get(node_id) != "alive" or node_id not in self._addresses:
                raise ValueError(f"{node_id} is not an alive member; start it and let it join first")
            if self.refuses(node_id):
                raise MembershipChangeRefused(f"{node_id} is revoked")
            new_voters = tuple(sorted([*voters, node_id]))
            await self._call(node_id, "prepare_voter", [record.group_id, list(new_voters)], timeout_ms=10_000)
            try:
                await group.add_voter(node_id)
            except BaseException:
                with _suppress():
                    await self._call(node_id, "retire_voter", [record.group_id], timeout_ms=3_000)
                raise
            self._persist_voters()
            return {"added": node_id, "voters": list(group.status().voters)}

    async def _remove_voter_here(self, node_id: str) -> dict[str, Any]:
        async with self._change_lock:
            group = self._group
            if group is None:
                raise NotVoter(f"node {self._node_id} is no longer a voter; retry")
            status = group.status()
            if node_id not in status.voters:
                raise MembershipChangeRefused(f"{node_id} is not a voter (voters: {', '.join(status.voters)})")
            if len(status.voters) <= 1:
                raise MembershipChangeRefused("cannot remove the last voter")
            if status.leader == node_id:
                raise MembershipChangeRefused(
                    f"{node_id} is the current leader and pysyncobj cannot remove its own leader: stop that node "
                    "(the others elect a new leader within about a second), then run remove-voter again")
            await group.remove_voter(node_id)
            self._persist_voters()
            record = self._record
            with _suppress():
                await self._call(node_id, "retire_voter", [record.group_id if record else ""], timeout_ms=3_000)
            return {"removed": node_id, "voters": list(group.status().voters)}

    async def _prepare_voter(self, sender: str, args: list[Any]) -> Any:
        if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], list):
            raise ValueError("prepare_voter takes [group_id, voters]")
        group_id, voters = args
        for value in [group_id, *voters]:
            _check_id(value, ValueError)
        voters_t = tuple(sorted(voters))
        record = self._record
        if record is not None and record.group_id != group_id:
            raise MembershipChangeRefused(f"node {self._node_id} belongs to group {record.group_id}, not {group_id}")
        if self._node_id not in voters_t or sender not in voters_t:
            raise ValueError("prepare_voter must name this node and the sender")
        if self._group is None:
            await self._stop_replica(wipe=True)
            self._save_record(GroupRecord(group_id, voters_t, True, tuple(sorted(self._revoked))))
            await self._start_replica(voters_t)
        return {"prepared": self._node_id}

    async def _retire_voter(self, sender: str, args: list[Any]) -> Any:
        record = self._record
        if record is None or not args or args[0] != record.group_id:
            raise ValueError("retire_voter must name this node's group")
        if self._group is not None:
            log.info("raft: %s removed this node from the voters; stopping the replica", sender)
            await self._demote(record.voters)
        return {"retired": self._node_id}

    def _persist_voters(self) -> None:
        record, group = self._record, self._group
        if record is None or group is None:
            return
        voters = group.status().voters
        revoked = tuple(sorted(self._revoked))
        if voters != record.voters or revoked != record.revoked:
            self._save_record(GroupRecord(record.group_id, voters, True, revoked))

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while not self._closed:
            try:
                self._tick(self._host.now_ms())
            except Exception:  # housekeeping must keep running; the next tick retries
                log.exception("raft: housekeeping failed")
            await asyncio.sleep(TICK_MS / 1000)

    def _tick(self, now: int) -> None:
        self._refresh_members()
        record = self._record
        if record is None:
            self._bootstrap_step(now)
            return
        group = self._group
        if group is not None:
            status = group.status()
            if status.leader is not None:
                self._leaderless_since_ms = None
                self._leader_hint, self._term_hint = status.leader, status.term
            elif self._leaderless_since_ms is None:
                self._leaderless_since_ms = now
            self._persist_voters()
            if status.role == "leader":
                self._remove_revoked_voters(status.voters)
                self._admit_members()
            leaderless = self._leaderless_since_ms is not None and now - self._leaderless_since_ms >= LEADERLESS_CHECK_MS
            if leaderless and now >= self._next_info_ms:
                self._next_info_ms = now + INFO_REFRESH_MS
                for voter in status.voters:
                    if voter != self._node_id:
                        self._send_to(voter, [K_INFO_QUERY])
        elif now >= self._next_info_ms:
            self._next_info_ms = now + INFO_REFRESH_MS
            targets = self._forward_targets()
            if targets:
                self._info_cursor = (self._info_cursor + 1) % len(targets)
                self._send_to(targets[self._info_cursor], [K_INFO_QUERY])
            if record.revoked != tuple(sorted(self._revoked)):
                self._save_record(GroupRecord(record.group_id, record.voters, False, tuple(sorted(self._revoked))))

    def _bootstrap_step(self, now: int) -> None:
        settings = self._settings
        assert settings is not None
        alive = sorted(n for n, s in self._states.items() if s == "alive")
        if self._node_id not in alive:
            alive = sorted([*alive, self._node_id])
        key = tuple(alive)
        if key != self._alive_key:
            self._alive_key, self._alive_since_ms = key, now
        expect = settings.bootstrap_expect
        chosen = choose_voters(alive, expect) if expect else []
        if now >= self._next_info_ms:
            self._next_info_ms = now + INFO_QUERY_MS
            others = [n for n in alive if n != self._node_id]
            targets = [n for n in chosen if n != self._node_id]
            rest = [n for n in others if n not in targets]
            targets += self._rng.sample(rest, min(INFO_FANOUT, len(rest)))
            for target in targets:
                self._send_to(target, [K_INFO_QUERY])
        if not expect or len(alive) < expect or alive[0] != self._node_id:
            return
        if now - self._alive_since_ms < BOOTSTRAP_STABLE_MS:
            return
        fresh = now - NO_GROUP_FRESH_MS
        if any(self._no_group_from.get(n, -1 - NO_GROUP_FRESH_MS) < fresh for n in chosen if n != self._node_id):
            return
        group_id = f"g-{self._node_id[:8].lower()}-{self._rng.getrandbits(32):08x}"
        voters = tuple(chosen)
        log.info("raft: forming group %s with voters %s (bootstrap_expect=%d)", group_id, ", ".join(voters), expect)
        self._save_record(GroupRecord(group_id, voters, True, tuple(sorted(self._revoked))))
        for voter in voters:
            if voter != self._node_id:
                self._send_to(voter, [K_FORM, group_id, list(voters)])
        self._spawn(self._start_replica(voters))

    def _remove_revoked_voters(self, voters: tuple[str, ...]) -> None:
        revoked = [v for v in voters if v != self._node_id and self.refuses(v)]
        if revoked and not self._change_lock.locked():
            self._spawn(self._remove_voter_here(revoked[0]))

    def _admit_members(self) -> None:
        """On the leader: admit alive members the roster does not list yet, a few per tick."""
        group = self._group
        if self._admitting or group is None:
            return
        roster = group.state.query(c.GetRoster())
        known = {*roster.admitted, *roster.revoked}
        todo = [n for n in sorted(self._states) if self._states[n] == "alive" and n not in known
                and n not in self._admit_refused][:ADMIT_PER_TICK]
        if todo:
            self._admitting = True
            self._spawn(self._admit(todo))

    async def _admit(self, node_ids: list[str]) -> None:
        try:
            for node_id in node_ids:
                if self._group is None:
                    return
                result = await self._group.propose(c.AdmitNode(node_id))
                if not result.ok:
                    self._admit_refused[node_id] = None  # revoked or roster full: never retried
        except ConsensusError:
            pass  # leadership moved or quorum lost: the next leader's tick retries
        finally:
            self._admitting = False

    def _learn_revoked(self, ids: list[str]) -> None:
        for node_id in ids:
            if node_id == self._node_id:
                if not self._this_node_revoked:
                    self._this_node_revoked = True
                    log.error("raft: THIS node (%s) was revoked from the cluster; every node refuses it. "
                              "Issue it a new key and certificate to rejoin.", node_id)
                continue
            if node_id not in self._revoked:
                self._revoked[node_id] = None
                log.warning("raft: node %s is revoked; refusing its frames", node_id)

    def _refresh_members(self) -> None:
        for member in self._host.members():
            self._addresses[member.node_id] = member.address
            self._states[member.node_id] = member.state

    def _on_member_event(self, event: ev.NodeEvent) -> None:
        node_id = getattr(event, "node_id", None)
        if node_id is None:
            return
        address = getattr(event, "address", None)
        if address:
            self._addresses[node_id] = address
        if isinstance(event, (ev.MemberJoined, ev.MemberAlive, ev.MemberUpdated)):
            self._states[node_id] = "alive"
        elif isinstance(event, ev.MemberSuspected):
            self._states[node_id] = "suspect"
        elif isinstance(event, ev.MemberFailed):
            self._states[node_id] = "dead"
        elif isinstance(event, ev.MemberLeft):
            self._states[node_id] = "left"

    # -- status and files -------------------------------------------------------------------

    def _local_status(self) -> dict[str, Any]:
        record, group = self._record, self._group
        this_node = {"node_id": self._node_id, "voter": group is not None, "revoked": self._this_node_revoked}
        base: dict[str, Any] = {
            "node_id": self._node_id,
            "group_id": record.group_id if record else None,
            "bootstrap_expect": self._settings.bootstrap_expect if self._settings else None,
            "revoked_known": len(self._revoked),
            "service_stats": {f.name: getattr(self.stats, f.name) for f in fields(self.stats)},
        }
        if group is None:
            state = "forming" if record is None else "non-voter"
            return {**base, "state": state, "role": "non-voter" if record else "none", "leader": self._leader_hint,
                    "term": self._term_hint, "commit_index": None, "applied_index": None,
                    "voters": list(record.voters) if record else [], "lag": {}, "has_quorum": None,
                    "this_node": this_node}
        status = group.status()
        this_node["applied_index"] = status.applied_index
        return {**base, "state": "voter", "role": status.role, "leader": status.leader, "term": status.term,
                "commit_index": status.commit_index, "applied_index": status.applied_index,
                "voters": list(status.voters), "lag": dict(status.lag), "has_quorum": status.has_quorum,
                "raft_stats": {f.name: getattr(group.stats, f.name) for f in fields(group.stats)},
                "this_node": this_node}

    def _load_record(self) -> GroupRecord | None:
        path = self._dir / GROUP_FILE
        try:
            return GroupRecord.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RaftSettingsError(f"{path} is unreadable ({exc}); restore it from a backup, or delete it "
                                    "(and raft/log) to rejoin the group as a new node") from None

    def _save_record(self, record: GroupRecord) -> None:
        """Write the record durably (fsync + rename) before acting on it."""
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / GROUP_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._record = record

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None

        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("raft: background step failed")

        task = self._loop.create_task(run())
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)


class _Undelivered(Exception):
    """The request never reached (or was never accepted by) the voter: certainly not applied."""


class _suppress:
    """Swallow ordinary errors of a best-effort step (never CancelledError)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, Exception)


# -- the history-recording client --------------------------------------------------------------


class RecordingKv:
    """Runs linearizable key-value operations through `kv` and records each in a `HistoryRecorder`.

    `kv` is anything with the `RaftService` kv methods (``kv_get/kv_put/kv_cas/kv_delete``).
    Outcomes: a result is ``ok``; `NoQuorum`/`NotLeader`/`NotVoter`/`RaftOverloaded` are ``fail``
    (not applied); anything else (`ConsensusTimeout`, a lost connection) is ``unknown``. Errors are
    re-raised after recording. `clock` returns integer milliseconds, the same for every client.
    """

    def __init__(self, kv: Any, recorder: HistoryRecorder, client: str, clock: Callable[[], int]) -> None:
        self._kv = kv
        self._recorder = recorder
        self._client = client
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", key, None, None, lambda: self._kv.kv_get(key), lambda r: r.value)

    async def put(self, key: str, value: bytes) -> KvResult:
        return await self._run("put", key, value, None, lambda: self._kv.kv_put(key, value), lambda r: None)

    async def cas(self, key: str, expected: bytes | None, new: bytes) -> KvResult:
        return await self._run("cas", key, new, expected, lambda: self._kv.kv_cas(key, expected, new), lambda r: r.ok)

    async def delete(self, key: str) -> KvResult:
        return await self._run("delete", key, None, None, lambda: self._kv.kv_delete(key), lambda r: None)

    async def _run(self, op: str, key: str, value: Any, expected: Any, call: Callable[[], Awaitable[Any]],
                   result_of: Callable[[Any], Any]) -> Any:
        op_id = self._recorder.invoke(self._client, op, key, self._clock(), value=value, expected=expected)
        try:
            result = await call()
        except _NOT_APPLIED:
            self._recorder.fail(op_id, self._clock())
            raise
        except BaseException:
            self._recorder.unknown(op_id)
            raise
        self._recorder.ok(op_id, self._clock(), result_of(result))
        return result


def outcome_of_error_kind(kind: str) -> str:
    """History status for an error class name seen across the control socket: "fail" or "unknown"."""
    return "fail" if kind in ("NoQuorum", "NotLeader", "NotVoter", "RaftOverloaded", "ValueError", "NodeNotRunning") else "unknown"


# -- small helpers -----------------------------------------------------------------------------


def _check_id(value: Any, error: type[Exception]) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= ID_CHARS_MAX:
        raise error(f"node and group ids are 1-{ID_CHARS_MAX} characters, got {value!r}")


def _command_arg(args: list[Any], length: int) -> c.Command:
    if len(args) != length:
        raise ValueError(f"expected {length} arguments")
    try:
        return c.from_wire(args[0])
    except c.CommandDecodeError as exc:
        raise ValueError(str(exc)) from None


def _arg_str(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"argument {name!r} must be a non-empty string")
    return value


def _arg_int(args: dict[str, Any], name: str) -> int:
    value = args.get(name)
    if type(value) is not int:
        raise ValueError(f"argument {name!r} must be an integer")
    return value


def _arg_bytes(args: dict[str, Any], name: str) -> bytes:
    """A value given as text (``name``, UTF-8) or hex (``name_hex``)."""
    if isinstance(args.get(f"{name}_hex"), str):
        try:
            return bytes.fromhex(args[f"{name}_hex"])
        except ValueError:
            raise ValueError(f"argument {name}_hex is not hex") from None
    value = args.get(name)
    if not isinstance(value, str):
        raise ValueError(f"argument {name!r} must be a string (or give {name}_hex)")
    return value.encode()


def _bytes_json(name: str, value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {name: None, f"{name}_hex": None}
    try:
        text: str | None = value.decode()
    except UnicodeDecodeError:
        text = None
    return {name: text, f"{name}_hex": value.hex()}


def _kv_json(key: str, result: KvResult) -> dict[str, Any]:
    return {"key": key, "ok": result.ok, "reason": result.reason, **_bytes_json("value", result.value)}


def _lock_json(result: LockResult) -> dict[str, Any]:
    hold = result.hold
    return {"ok": result.ok, "reason": result.reason,
            **({} if hold is None else {"name": hold.lock, "owner": hold.owner, "fencing_token": hold.fencing_token,
                                        "expires_at_ms": hold.expires_at_ms})}


def _lease_json(result: LeaseResult) -> dict[str, Any]:
    lease = result.lease
    return {"ok": result.ok, "reason": result.reason,
            **({} if lease is None else {"name": lease.name, "owner": lease.owner, "expires_at_ms": lease.expires_at_ms,
                                         "epoch": lease.epoch})}

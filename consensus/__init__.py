"""agentnode.consensus: the Raft group for critical state (roster, name leases, locks, linearizable keys).

`ConsensusGroup` is the API the node uses; `PySyncObjGroup` runs real Raft over the node's
authenticated `RaftLink`; `MemoryCluster`/`MemoryGroup` is the deterministic stand-in for the
simulator. `CriticalState` is the pure replicated state machine; `history` checks recorded
client histories for linearizability.

`PySyncObjGroup` is imported lazily so that importing this package (for example from the
simulator) never loads pysyncobj.
"""

from __future__ import annotations

from typing import Any

from .base import (
    ConsensusError,
    ConsensusGroup,
    ConsensusTimeout,
    GroupStatus,
    MembershipChangeRefused,
    NoQuorum,
    NotLeader,
    RaftLink,
    ReadResult,
)
from .commands import (
    COMMANDS,
    AcquireLock,
    AdmitNode,
    Barrier,
    ClaimName,
    Command,
    CommandDecodeError,
    GetLock,
    GetRoster,
    IsRevoked,
    KvCompareAndSet,
    KvDelete,
    KvGet,
    KvPut,
    LookupName,
    ReleaseLock,
    ReleaseName,
    RenewName,
    RevokeNode,
)
from .history import CheckResult, HistoryRecorder, Operation, check_history, load_history
from .memory_group import MemoryCluster, MemoryGroup
from .memory_link import MemoryRaftNetwork
from .state_machine import CriticalState, KvResult, Lease, LeaseResult, LockHold, LockResult, RosterResult, RosterView

__all__ = [
    "AcquireLock",
    "AdmitNode",
    "Barrier",
    "COMMANDS",
    "CheckResult",
    "ClaimName",
    "Command",
    "CommandDecodeError",
    "ConsensusError",
    "ConsensusGroup",
    "ConsensusTimeout",
    "CriticalState",
    "GetLock",
    "GetRoster",
    "GroupStatus",
    "HistoryRecorder",
    "IsRevoked",
    "KvCompareAndSet",
    "KvDelete",
    "KvGet",
    "KvPut",
    "KvResult",
    "Lease",
    "LeaseResult",
    "LockHold",
    "LockResult",
    "LookupName",
    "MembershipChangeRefused",
    "MemoryCluster",
    "MemoryGroup",
    "MemoryRaftNetwork",
    "NoQuorum",
    "NotLeader",
    "Operation",
    "PySyncObjGroup",
    "RaftConfig",
    "RaftLink",
    "ReadResult",
    "ReleaseLock",
    "ReleaseName",
    "RenewName",
    "RevokeNode",
    "RosterResult",
    "RosterView",
    "check_history",
    "load_history",
]


def __getattr__(name: str) -> Any:
    if name in ("PySyncObjGroup", "RaftConfig"):
        from . import pysyncobj_group

        return getattr(pysyncobj_group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

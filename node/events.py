"""Events the NodeCore reports about the membership; drained with `NodeCore.next_event()`.

Frozen, slotted, never subclassed (house style rule 6). Each names one change as seen by this node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

__sans_io__ = True

__all__ = [
    "IncarnationChanged",
    "MemberAlive",
    "MemberFailed",
    "MemberJoined",
    "MemberLeft",
    "MemberSuspected",
    "MemberUpdated",
    "NodeEvent",
]


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member this node did not know before is alive."""

    node_id: str
    """The member's node id."""
    address: str
    """Where it listens ("host:port")."""
    incarnation: int
    """Its incarnation number when first seen."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Its tags."""


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspect, dead or departed member is alive again (it refuted with a higher incarnation)."""

    node_id: str
    """The member's node id."""
    address: str
    """Where it listens now."""
    incarnation: int
    """The incarnation that beat the accusation."""
    previous_state: str
    """"suspect", "dead" or "left"."""


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    """A member failed a probe (here or at another node); it is declared dead unless it refutes in time."""

    node_id: str
    """The suspect's node id."""
    incarnation: int
    """The incarnation being suspected."""
    accuser: str
    """The node id whose probe failed."""


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """A member is dead: its suspicion timed out here, or another node's did."""

    node_id: str
    """The dead member's node id."""
    incarnation: int
    """The incarnation declared dead."""


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """A member announced a graceful leave (not a failure)."""

    node_id: str
    """The departed member's node id."""
    incarnation: int
    """The incarnation it left with."""


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """An alive member changed its address or metadata (with a higher incarnation)."""

    node_id: str
    """The member's node id."""
    address: str
    """Its address now."""
    incarnation: int
    """The new incarnation."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Its tags now."""


@dataclass(frozen=True, slots=True)
class IncarnationChanged:
    """This node raised its own incarnation; the runtime persists it so a restart starts above it."""

    incarnation: int
    """The new incarnation."""
    reason: str
    """"refute" (someone suspected or declared us dead) or "update"."""


NodeEvent = Union[
    MemberJoined, MemberAlive, MemberSuspected, MemberFailed, MemberLeft, MemberUpdated, IncarnationChanged
]

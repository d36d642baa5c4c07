"""Node configuration, validated once at the edge with messages that say what to fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentnode.transport.base import Address

__all__ = ["ConfigError", "DEFAULT_PORT", "NodeConfig", "default_data_dir"]

DEFAULT_PORT = 7946
"""The memberlist/Serf LAN port, so operators find the familiar number in firewalls."""

_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem and how to fix it."""


def default_name_lease_ttl_ms() -> int:
    """`$AGENTNODE_NAME_LEASE_TTL_MS`, else 30 s (names.NAME_TTL_MS_DEFAULT; tests set it short)."""
    env = os.environ.get("AGENTNODE_NAME_LEASE_TTL_MS")
    if env is None:
        return 30_000
    try:
        return int(env)
    except ValueError:
        raise ConfigError(f"AGENTNODE_NAME_LEASE_TTL_MS={env!r} is not an integer number of milliseconds") from None


def default_data_dir() -> Path:
    """`$AGENTNODE_DATA_DIR`, else `~/.agentnode`: one place the CLI and the node agree on."""
    env = os.environ.get("AGENTNODE_DATA_DIR")
    return Path(env) if env else Path.home() / ".agentnode"


class NodeConfig(BaseModel):
    """Everything a node needs to start. Build with `NodeConfig.build(...)` to get a `ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir)
    """Holds the node key and certificate, the peer cache, the incarnation and the control socket."""
    listen: Address = Address("127.0.0.1", DEFAULT_PORT)
    """Where to accept connections. Port 0 picks a free port."""
    advertise: Address | None = None
    """The address peers should dial, when it differs from `listen` (NAT, 0.0.0.0 binds)."""
    bootstrap: tuple[Address, ...] = ()
    """Seed nodes to join through; retried periodically so partitions heal."""
    cluster: str = "default"
    """Cluster name: nodes of different clusters never merge, even on one LAN."""
    mdns: bool = True
    """Advertise and discover peers through multicast DNS on the local network."""
    transport: Literal["tls", "quic"] = "tls"
    profile: Literal["lan", "local"] = "lan"
    """Membership timing profile (see docs/protocols/membership.md)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Small key/value tags gossiped with this node's membership record."""
    seed: int | None = None
    """Seed for the node's protocol randomness; None draws one from the OS."""
    metrics: Address | None = None
    """Serve Prometheus metrics on this HOST:PORT (`GET /metrics`); off by default."""
    a2a: Address | None = None
    """Serve the A2A gateway on this HOST:PORT (agent cards + JSON-RPC/REST; docs/a2a.md); off by default."""

    name_lease_ttl_ms: int = Field(default_factory=default_name_lease_ttl_ms, ge=300, le=86_400_000)
    """Lease on an agent's unique name (register_agent(unique=True)), renewed every third of it; a
    dead node's names are free again after at most this long (docs/decisions/0085)."""

    @field_validator("listen", "advertise", "metrics", "a2a", mode="before")
    @classmethod
    def _parse_address(cls, value: object) -> object:
        if isinstance(value, str):
            return Address.parse(value, default_port=DEFAULT_PORT)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return Address(str(value[0]), int(value[1]))
        return value

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _parse_bootstrap(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(Address.parse(v, default_port=DEFAULT_PORT) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("cluster")
    @classmethod
    def _check_cluster(cls, value: str) -> str:
        if not _CLUSTER_NAME.match(value):
            raise ValueError("use 1-63 lowercase letters, digits or '-', starting with a letter or digit")
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32 or sum(len(k) + len(v) for k, v in value.items()) > 1024:
            raise ValueError("at most 32 entries and 1024 bytes in all: it is gossiped to every node")
        return value

    @model_validator(mode="after")
    def _check_advertise(self) -> NodeConfig:
        if self.advertise is None and self.listen.host in ("0.0.0.0", "::"):
            raise ValueError(f"listen {self.listen} binds every interface; set advertise to the address peers should dial")
        return self

    @property
    def advertised(self) -> Address:
        return self.advertise or self.listen

    @classmethod
    def build(cls, **fields: object) -> NodeConfig:
        """Validate `fields`; raise `ConfigError` naming each bad field and what to do."""
        try:
            return cls(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "config"
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{where}: {message}")
            raise ConfigError("invalid node configuration:\n  " + "\n  ".join(problems)) from None

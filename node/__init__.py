"""agentnode: a peer-to-peer network node for AI agents.

    async with agentnode.Node(agentnode.NodeConfig(data_dir="n1", listen="127.0.0.1:7946")) as node:
        print(node.node_id, [m.node_id for m in node.members()])

The names below import lazily, so `import agentnode.crdt` (a standard-library-only package) does
not pull in the transport, pydantic or asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "BackpressureError",
    "Capability",
    "ConfigError",
    "ConsistencyNotMet",
    "DeadlineExceededError",
    "DeliveryError",
    "ExpiredError",
    "Message",
    "MessagingConfig",
    "NameTaken",
    "Node",
    "NodeConfig",
    "NodeStopped",
    "NodeUnreachableError",
    "RemoteHandlerError",
    "Reply",
    "StateChange",
    "UnknownAgentError",
    "__version__",
]

if TYPE_CHECKING:
    from agentnode.agents import (
        Agent,
        BackpressureError,
        Capability,
        DeadlineExceededError,
        DeliveryError,
        ExpiredError,
        Message,
        MessagingConfig,
        NodeUnreachableError,
        RemoteHandlerError,
        Reply,
        UnknownAgentError,
    )
    from agentnode.config import ConfigError, NodeConfig
    from agentnode.names import NameTaken
    from agentnode.runtime import Node, NodeStopped
    from agentnode.state import ConsistencyNotMet, StateChange

_LAZY = {
    "ConfigError": "agentnode.config",
    "NodeConfig": "agentnode.config",
    "NameTaken": "agentnode.names",
    "Node": "agentnode.runtime",
    "NodeStopped": "agentnode.runtime",
    "ConsistencyNotMet": "agentnode.state",
    "StateChange": "agentnode.state",
    **{
        name: "agentnode.agents"
        for name in (
            "Agent", "BackpressureError", "Capability", "DeadlineExceededError", "DeliveryError", "ExpiredError",
            "Message", "MessagingConfig", "NodeUnreachableError", "RemoteHandlerError", "Reply", "UnknownAgentError",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentnode' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

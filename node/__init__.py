"""agentnode: a peer-to-peer network node for AI agents."""

__version__ = "0.1.0"

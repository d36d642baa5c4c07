"""Two nodes embedded in one asyncio program, over real mutual TLS on loopback.

Run it: python docs/examples/embedded_nodes.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import agentnode
from agentnode.transport.identity import create_ca, issue_node_certificate


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_ca(root / "ca")  # once per cluster: `agentnode ca init --dir ca`
        for name in ("a", "b"):  # once per node: `agentnode ca issue --ca-dir ca --data-dir a`
            issue_node_certificate(root / "ca", root / name)

        config_a = agentnode.NodeConfig(data_dir=root / "a", listen="127.0.0.1:0", cluster="example", mdns=False, profile="local")
        async with agentnode.Node(config_a) as a:
            config_b = agentnode.NodeConfig(
                data_dir=root / "b", listen="127.0.0.1:0", cluster="example", mdns=False, profile="local",
                bootstrap=[str(a.address)],
            )
            async with agentnode.Node(config_b) as b:
                async def converged() -> None:
                    while len([m for m in a.members() if m.state == "alive"]) < 2:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(converged(), timeout=10)
                for member in a.members():
                    print(f"{member.node_id} {member.address} {member.state} incarnation={member.incarnation}")
                await b.leave()  # peers see `left`, not `dead`


if __name__ == "__main__":
    asyncio.run(main())

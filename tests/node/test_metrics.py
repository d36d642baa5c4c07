"""Prometheus metrics from a running node, scraped over HTTP and parsed with the client library's parser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentnode.config import NodeConfig
from agentnode.runtime import Node
from agentnode.transport.memory import MemoryHub, MemoryTransport


async def _get(host: str, port: int, path: str, method: str = "GET") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body


@pytest.mark.loopback
async def test_metrics_are_served_and_parse(tmp_path: Path) -> None:
    config = NodeConfig.build(data_dir=tmp_path, listen="10.0.0.1:7946", mdns=False, profile="local", metrics="127.0.0.1:0")
    async with Node(config, transport=MemoryTransport(MemoryHub(), "node01", config.listen), control=False) as node:
        address = node.metrics_address
        assert address is not None
        status, body = await _get(address.host, address.port, "/metrics")
        assert status.endswith("200 OK")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        alive = [s for s in families["agentnode_members"].samples if s.labels["state"] == "alive"]
        assert alive[0].value == 1 and alive[0].labels["node_id"] == "node01"
        assert "agentnode_transport_frames_sent" in families
        assert "agentnode_membership_frames_received" in families
        assert (await _get(address.host, address.port, "/nope"))[0].endswith("404 Not Found")
        assert (await _get(address.host, address.port, "/metrics", "POST"))[0].endswith("405 Method Not Allowed")

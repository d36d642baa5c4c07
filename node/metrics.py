"""Prometheus metrics: every counter the node keeps, served over HTTP when asked for.

Off by default (no network exposure without an explicit `--metrics HOST:PORT`). The collector
reads the node's counters when scraped, on the event loop, so nothing is copied on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentnode.transport.base import Address

if TYPE_CHECKING:
    from agentnode.runtime import Node

__all__ = ["MetricsServer", "NodeCollector"]

log = logging.getLogger("agentnode.metrics")

REQUEST_BYTES_MAX = 8192
"""A scrape request is one short GET; anything longer is not a Prometheus server."""
_GAUGES = {"connections_open"}


class NodeCollector(Collector):
    """Turns `Node.status()` into metric families, labelled by node id and cluster."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        status = self._node.status()
        labels = ["node_id", "cluster"]
        values = [status["node_id"], status["cluster"]]
        members = GaugeMetricFamily("agentnode_members", "Members this node sees, by state.", labels=[*labels, "state"])
        for state in ("alive", "suspect", "dead", "left"):
            members.add_metric([*values, state], status["members"].get(state, 0))
        yield members
        incarnation = GaugeMetricFamily("agentnode_incarnation", "This node's incarnation number.", labels=labels)
        incarnation.add_metric(values, status["incarnation"] or 0)
        yield incarnation
        for prefix, group in (
            ("agentnode_transport", status["transport_stats"]),
            ("agentnode_membership", status["core_counters"]),
            ("agentnode_runtime", status["runtime_counters"]),
        ):
            for name, value in sorted(group.items()):
                if not isinstance(value, (int, float)):
                    continue
                if name in _GAUGES:
                    family: Metric = GaugeMetricFamily(f"{prefix}_{name}", f"{name.replace('_', ' ')}", labels=labels)
                else:
                    family = CounterMetricFamily(f"{prefix}_{name}", f"{name.replace('_', ' ')}", labels=labels)
                family.add_metric(values, value)
                yield family


class MetricsServer:
    """A minimal HTTP/1.1 endpoint serving `GET /metrics` from the loop (no threads)."""

    def __init__(self, node: Node, listen: Address) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> Address:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return Address(host, port)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.listen.host, self.listen.port, limit=REQUEST_BYTES_MAX)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.listen}: {exc.strerror or exc}; choose another --metrics address") from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method != b"GET":
                status, body, kind = b"405 Method Not Allowed", b"only GET\n", b"text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, kind = b"404 Not Found", b"try /metrics\n", b"text/plain"
            else:
                status, body, kind = b"200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:  # a broken scrape must never hurt the node
            log.exception("metrics request failed")
        finally:
            writer.close()

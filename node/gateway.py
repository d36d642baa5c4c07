"""The A2A gateway: any Agent2Agent (A2A v1.0) client reaches any agent of the mesh through any node.

One HTTP endpoint per node (opt-in: `--a2a HOST:PORT`), served by the a2a-sdk's JSON-RPC and HTTP+JSON
routes on Starlette/uvicorn inside the node's event loop. Every agent in the registry, wherever it lives,
gets an agent card at `/agents/{agent_id}/.well-known/agent-card.json` whose interfaces point at this
node's one JSON-RPC/REST endpoint with `tenant` = the agent id (A2A §1.9: clients copy the tenant into
every request). `SendMessage` becomes an agentnode `request` to that agent over the mesh; the reply
becomes the task's artifact. The node's own card at `/.well-known/agent-card.json` lists the agents as
skills, and `GET /agents` lists their card URLs (decision 0130).

Payload mapping (both ways documented in docs/a2a.md): a message of text parts is sent as their UTF-8
text joined by newlines; a single `raw` part as its bytes; a single `data` part as its JSON; anything
else as the ProtoJSON of the parts. A reply that is UTF-8 comes back as a text part, otherwise raw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Message, Part, TaskState
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentnode.agents import (
    BackpressureError,
    DeadlineExceededError,
    NodeUnreachableError,
    RemoteHandlerError,
    UnknownAgentError,
)
from agentnode.transport.base import Address

if TYPE_CHECKING:
    from agentnode.agent_messages import AgentRecord
    from agentnode.runtime import Node

__all__ = ["A2AGateway", "AGENTS_LISTED_MAX", "REQUEST_TIMEOUT_S"]

log = logging.getLogger("agentnode.gateway")

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
PROTOCOL_VERSION = "1.0"
"""A2A spec 1.0.1: versions are Major.Minor on the wire."""
REQUEST_TIMEOUT_S = 30.0
"""How long one SendMessage waits for the agent's reply (the A2A spec recommends 10-30 s for webhooks)."""
AGENTS_LISTED_MAX = 200
"""Skills on the node's own card and entries in `GET /agents`: bounded for large meshes."""
CARD_CACHE = "public, max-age=10"
"""Cards change as agents come and go; A2A §1.2 asks for Cache-Control and an ETag."""


class _MeshExecutor(AgentExecutor):
    """Runs each A2A task as one agentnode request to the agent named by the tenant."""

    def __init__(self, node: Node, timeout_s: float) -> None:
        self._node = node
        self._timeout_s = timeout_s

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        # a2a-sdk pitfalls (reference §2.2): the first event of a new task must be the Task, and on a
        # follow-up the task's own context id must be used.
        context_id = context.current_task.context_id if context.current_task else context.context_id
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            await event_queue.enqueue_event(new_task(context.task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history))
        updater = TaskUpdater(event_queue, context.task_id, context_id)
        target = context.tenant or str(context.metadata.get("agentId", ""))
        agent_id = self._resolve(target)
        if agent_id is None:
            why = (f"no agent {target!r} in the mesh" if target else
                   "no agent chosen: use the agent's card (/agents/AGENT_ID/.well-known/agent-card.json), "
                   "which sets tenant = agent id, or put metadata.agentId in the request")
            await updater.reject(updater.new_agent_message([Part(text=why)]))
            return
        await updater.start_work()
        try:
            reply = await self._node.request(agent_id, _payload(context.message), timeout=self._timeout_s)
        except UnknownAgentError as exc:
            await updater.reject(updater.new_agent_message([Part(text=f"unknown agent: {exc}")]))
        except RemoteHandlerError as exc:
            await updater.failed(updater.new_agent_message([Part(text=f"the agent's handler raised: {exc}")]))
        except (DeadlineExceededError, NodeUnreachableError, BackpressureError) as exc:
            await updater.failed(updater.new_agent_message([Part(text=f"{type(exc).__name__}: {exc}")]))
        else:
            await updater.add_artifact([_part(reply.payload)], name="reply", last_chunk=True,
                                       metadata={"agentId": reply.agent_id, "nodeId": reply.node_id})
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        context_id = context.current_task.context_id if context.current_task else context.context_id
        await TaskUpdater(event_queue, context.task_id, context_id).cancel()

    def _resolve(self, target: str) -> str | None:
        """An agent id, or else a unique agent name, to the agent id."""
        if not target:
            return None
        if self._node.agents.registry.lookup(target) is not None:
            return target
        named = [e.record.agent_id for e in self._node.find_agents(healthy_only=False) if e.record.name == target]
        return named[0] if len(named) == 1 else None


class A2AGateway:
    """The HTTP side; started and closed by the node like the metrics endpoint."""

    def __init__(self, node: Node, listen: Address, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.listen = listen
        self._node = node
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> Address:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return Address(host, port)

    @property
    def base_url(self) -> str:
        address = self.address
        host = address.host if address.host not in ("0.0.0.0", "::", "") else str(self._node.address.host)
        return f"http://{host}:{address.port}"

    async def start(self) -> None:
        import uvicorn

        try:
            sock = socket.create_server((self.listen.host, self.listen.port), reuse_port=False)
        except OSError as exc:
            raise OSError(f"cannot serve A2A on {self.listen}: {exc.strerror or exc}; choose another --a2a address") from None
        sock.setblocking(False)
        self._sock = sock
        node_card = self._node_card()
        handler = DefaultRequestHandler(agent_executor=_MeshExecutor(self._node, self._timeout_s),
                                        task_store=InMemoryTaskStore(), agent_card=node_card)

        async def refresh(card: AgentCard) -> AgentCard:
            return self._node_card()

        routes = [
            *create_agent_card_routes(agent_card=node_card, card_modifier=refresh, cache_control=CARD_CACHE),
            Route("/agents", self._list_agents, methods=["GET"]),
            Route("/agents/{agent_id}/.well-known/agent-card.json", self._agent_card, methods=["GET"]),
            *create_jsonrpc_routes(request_handler=handler, rpc_url=JSONRPC_PATH),
            *create_rest_routes(request_handler=handler, path_prefix=REST_PATH),
        ]
        app = Starlette(routes=routes)
        config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off", access_log=False)  # keep the node's logging
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # the node owns signals
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        for _ in range(200):  # bounded: uvicorn binds nothing itself, it only starts serving `sock`
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        log.info("A2A gateway on %s", self.base_url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closing: nothing to report to
                self._task.cancel()
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- cards ------------------------------------------------------------------------------------

    def _interfaces(self, tenant: str) -> list[AgentInterface]:
        base = self.base_url
        return [
            AgentInterface(url=base + JSONRPC_PATH, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION, tenant=tenant),
            AgentInterface(url=base + REST_PATH, protocol_binding="HTTP+JSON", protocol_version=PROTOCOL_VERSION, tenant=tenant),
        ]

    def _node_card(self) -> AgentCard:
        records = self._records()
        skills = [AgentSkill(id=r.agent_id, name=r.name or r.agent_id,
                             description=r.description or f"agent {r.agent_id} on node {r.node_id}",
                             tags=list(r.capabilities)) for r in records]
        return AgentCard(
            name=f"agentnode {self._node.node_id}",
            description=("A2A gateway of an agentnode mesh. Each skill is an agent; address one with its own "
                         "card (GET /agents) or with metadata.agentId."),
            version=_version(),
            supported_interfaces=self._interfaces(""),
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["text/plain", "application/json"],
            default_output_modes=["text/plain", "application/octet-stream"],
            skills=skills,
        )

    def _agent_card_of(self, record: AgentRecord) -> AgentCard:
        skills = [AgentSkill(id=s.id, name=s.name, description=s.description or s.name, tags=list(s.tags)) for s in record.skills]
        if not skills:
            skills = [AgentSkill(id=c, name=c, description=f"capability {c}", tags=[c]) for c in record.capabilities]
        return AgentCard(
            name=record.name or record.agent_id,
            description=record.description or f"agentnode agent {record.agent_id} on node {record.node_id}",
            version=record.version or "0",
            supported_interfaces=self._interfaces(record.agent_id),
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["text/plain", "application/json"],
            default_output_modes=["text/plain", "application/octet-stream"],
            skills=skills,
        )

    def _records(self) -> list[AgentRecord]:
        entries = self._node.find_agents(healthy_only=False)
        return sorted((e.record for e in entries), key=lambda r: r.agent_id)[:AGENTS_LISTED_MAX]

    async def _agent_card(self, request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        entry = self._node.agents.registry.lookup(agent_id)
        if entry is None:
            return JSONResponse({"error": f"no agent {agent_id!r} in the mesh; GET /agents lists them"}, status_code=404)
        body = json_format.MessageToJson(self._agent_card_of(entry.record)).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CARD_CACHE})
        return Response(body, media_type="application/json", headers={"ETag": etag, "Cache-Control": CARD_CACHE})

    async def _list_agents(self, request: Request) -> Response:
        base = self.base_url
        return JSONResponse({"agents": [
            {"agentId": r.agent_id, "name": r.name, "nodeId": r.node_id, "capabilities": list(r.capabilities),
             "card": f"{base}/agents/{r.agent_id}/.well-known/agent-card.json"}
            for r in self._records()
        ]})


def _payload(message: Message | None) -> bytes:
    """The A2A message as the bytes an agentnode handler receives (module docstring)."""
    parts = list(message.parts) if message is not None else []
    if parts and all(p.HasField("text") for p in parts):
        return "\n".join(p.text for p in parts).encode()
    if len(parts) == 1 and parts[0].HasField("raw"):
        return parts[0].raw
    if len(parts) == 1 and parts[0].HasField("data"):
        return json.dumps(json_format.MessageToDict(parts[0].data), separators=(",", ":")).encode()
    return json.dumps([json_format.MessageToDict(p) for p in parts], separators=(",", ":")).encode()


def _part(payload: bytes) -> Part:
    try:
        return Part(text=payload.decode("utf-8"))
    except UnicodeDecodeError:
        return Part(raw=payload, media_type="application/octet-stream")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentnode")
    except PackageNotFoundError:
        return "0"

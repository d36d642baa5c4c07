"""The A2A gateway, driven by the a2a-sdk client: an agent on node b answers an A2A client of node a."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers import get_artifact_text
from a2a.types import GetTaskRequest, Message as A2AMessage, Part, Role, SendMessageRequest, TaskState

import agentnode
from agentnode import Message
from agentnode.transport.identity import create_ca, issue_node_certificate

pytestmark = pytest.mark.loopback

TIMEOUT_S = 20.0


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[agentnode.Node, agentnode.Node, str]]:
    """Node a serves A2A; node b hosts the agent `upper` (and its handler raises on 'boom')."""
    create_ca(tmp_path / "ca")
    for name in ("a", "b"):
        issue_node_certificate(tmp_path / "ca", tmp_path / name)
    common = dict(listen="127.0.0.1:0", cluster="a2a", mdns=False, profile="local")
    async with agentnode.Node(agentnode.NodeConfig(data_dir=tmp_path / "a", a2a="127.0.0.1:0", **common)) as a:
        async with agentnode.Node(agentnode.NodeConfig(data_dir=tmp_path / "b", bootstrap=[str(a.address)], **common)) as b:
            async def upper(message: Message) -> str:
                if message.text() == "boom":
                    raise ValueError("cannot shout 'boom'")
                return message.text().upper()

            agent = await b.register_agent("upper", ["shout"], None, upper, description="Upper-cases text", version="2.1")

            async def visible() -> None:
                while a.agents.registry.lookup(agent.agent_id) is None:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(visible(), TIMEOUT_S)
            yield a, b, agent.agent_id


def _message(text: str) -> A2AMessage:
    return A2AMessage(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])


async def _send(card_url: str, text: str, *, streaming: bool) -> list:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        card = await A2ACardResolver(http, card_url).get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=streaming, httpx_client=http))
        return [event async for event in client.send_message(SendMessageRequest(message=_message(text)))]


async def test_agent_card_and_blocking_send_through_another_node(mesh: tuple) -> None:
    a, b, agent_id = mesh
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        listing = (await http.get(f"{a.a2a_url}/agents")).json()["agents"]
        (entry,) = [e for e in listing if e["agentId"] == agent_id]
        assert entry["nodeId"] == b.node_id
        card_response = await http.get(entry["card"])
        assert card_response.status_code == 200
        assert card_response.headers["etag"] and "max-age" in card_response.headers["cache-control"]
        card = card_response.json()
        assert card["name"] == "upper" and card["version"] == "2.1" and card["description"] == "Upper-cases text"
        assert card["supportedInterfaces"][0]["tenant"] == agent_id
        assert card["supportedInterfaces"][0]["protocolVersion"] == "1.0"
        again = await http.get(entry["card"], headers={"If-None-Match": card_response.headers["etag"]})
        assert again.status_code == 304
        missing = await http.get(f"{a.a2a_url}/agents/nobody@x/.well-known/agent-card.json")
        assert missing.status_code == 404

    events = await _send(f"{a.a2a_url}/agents/{agent_id}", "hello mesh", streaming=False)
    (event,) = events
    assert event.WhichOneof("payload") == "task"
    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [get_artifact_text(x) for x in event.task.artifacts] == ["HELLO MESH"]


async def test_streaming_send_reports_working_then_the_reply(mesh: tuple) -> None:
    a, _, agent_id = mesh
    events = await _send(f"{a.a2a_url}/agents/{agent_id}", "stream me", streaming=True)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task"
    artifacts = [get_artifact_text(e.artifact_update.artifact) for e in events if e.WhichOneof("payload") == "artifact_update"]
    assert artifacts == ["STREAM ME"]
    final = [e.status_update.status.state for e in events if e.WhichOneof("payload") == "status_update"][-1]
    assert final == TaskState.TASK_STATE_COMPLETED


async def test_remote_handler_error_fails_the_task_with_its_text(mesh: tuple) -> None:
    a, _, agent_id = mesh
    (event,) = await _send(f"{a.a2a_url}/agents/{agent_id}", "boom", streaming=False)
    task = event.task
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert "cannot shout 'boom'" in task.status.message.parts[0].text
    # The task stays queryable on the gateway.
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        card = await A2ACardResolver(http, f"{a.a2a_url}/agents/{agent_id}").get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=False, httpx_client=http))
        fetched = await client.get_task(GetTaskRequest(id=task.id, tenant=agent_id))
        assert fetched.status.state == TaskState.TASK_STATE_FAILED


async def test_node_card_lists_agents_and_unknown_tenant_is_rejected(mesh: tuple) -> None:
    a, _, agent_id = mesh
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        node_card = (await http.get(f"{a.a2a_url}/.well-known/agent-card.json")).json()
        assert agent_id in {s["id"] for s in node_card["skills"]}
        # A raw JSON-RPC call naming an agent that does not exist: the task is rejected and says why.
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
            "tenant": "ghost@nowhere",
            "message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}
        reply = (await http.post(f"{a.a2a_url}/a2a/jsonrpc", json=body, headers={"A2A-Version": "1.0"})).json()
        task = reply["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_REJECTED"
        assert "ghost@nowhere" in json.dumps(task["status"])


async def test_agent_reached_by_name_through_metadata(mesh: tuple) -> None:
    a, _, _ = mesh
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        body = {"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {
            "metadata": {"agentId": "upper"},
            "message": {"messageId": "m2", "role": "ROLE_USER", "parts": [{"text": "by name"}]}}}
        reply = (await http.post(f"{a.a2a_url}/a2a/jsonrpc", json=body, headers={"A2A-Version": "1.0"})).json()
        task = reply["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert task["artifacts"][0]["parts"][0]["text"] == "BY NAME"


@pytest.mark.processes
async def test_cli_nodes_serve_a2a_for_agents_on_other_nodes(tmp_path: Path) -> None:
    """`agentnode join --a2a`: an A2A client of node 1 reaches the demo echo agent of node 2."""
    from agentnode.local_cluster import LocalCluster

    with LocalCluster(2, root=tmp_path, extra_args=["--demo-agents", "--a2a", "127.0.0.1:0"]) as cluster:
        cluster.wait_for("2 nodes to converge", cluster.converged, timeout_s=30)
        first, second = cluster.nodes
        url = first.call("status")["a2a"]
        assert url and url.startswith("http://127.0.0.1:")
        echo = f"echo@{second.node_id}"
        cluster.wait_for("node 1 to see node 2's echo agent",
                         lambda: any(a["agent_id"] == echo for a in first.call("agents.list")), timeout_s=30)
        (event,) = await _send(f"{url}/agents/{echo}", "over the mesh", streaming=False)
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [get_artifact_text(x) for x in event.task.artifacts] == ["over the mesh"]

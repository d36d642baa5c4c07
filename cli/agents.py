"""Agents and messaging from the command line: agents, send, request, publish, broadcast, subscribe.

The CLI is a client, not an agent: it asks the running node (through its control endpoint) to send
on behalf of the node's built-in sender agent `_node@<node id>`. `join --demo-agents` starts the
demo agents (echo, counter, listener) inside the node process.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import typer

from agentnode.cli.output import DataDirOption, JsonOption, data_dir_or_default, fail, print_json, print_table, user_errors

DELIVERY_HELP = "best_effort, at_least_once (default) or durable (SQLite outbox before the command returns)."
STRATEGY_HELP = "round_robin, least_outstanding, latency or consistent_hash (needs --key)."


def register(app: typer.Typer) -> None:
    """Add the agent commands, and `--demo-agents` to `join`."""
    app.command("agents", help="List the agents the node's replicated registry knows (all nodes).")(agents)
    app.command("send", help="Send DATA to AGENT_ID (or to one agent of --capability); waits for the ack.")(send)
    app.command("request", help="Send DATA as a request to AGENT_ID (or --capability) and print the answer.")(request)
    app.command("publish", help="Publish DATA on TOPIC to every subscribed agent in the cluster.")(publish)
    app.command("broadcast", help="Deliver DATA once to every agent in the cluster.")(broadcast)
    app.command("subscribe", help="Print messages published on TOPIC until Ctrl-C (or --count).")(subscribe)
    _add_demo_flag(app)


def agents(
    capability: str = typer.Option(None, "--capability", "-c", help="Only agents with this capability."),
    topic: str = typer.Option(None, "--topic", help="Only agents subscribed to this topic."),
    stats: bool = typer.Option(False, "--stats", help="Print the messaging counters instead."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    with user_errors():
        client = _client(data_dir)
        result = client.call("agents.stats") if stats else client.call("agents.list", capability=capability, topic=topic)
    if json or stats:
        print_json(result)
        return
    rows = [(a["agent_id"], _name_cell(a), a["node_id"], ",".join(a["capabilities"]), ",".join(a["topics"]),
             a["status"] + (" (node suspect)" if a["node_suspect"] else ""), a["load"]) for a in result]
    print_table(None, ["agent id", "name", "node", "capabilities", "topics", "status", "load"], rows)


def _name_cell(agent: dict[str, Any]) -> str:
    """The name, with its Raft lease state when it is a unique name (confirmed, unconfirmed, lost)."""
    lease = agent.get("name_lease")
    return agent.get("name", "") + (f" ({lease['state']})" if lease else "")


def send(
    target: str = typer.Argument(..., metavar="AGENT_ID", help="The agent id (or DATA when --capability is given)."),
    data: str = typer.Argument(None, metavar="DATA", help="The message (UTF-8 text)."),
    capability: str = typer.Option(None, "--capability", "-c", help="Send to one agent with this capability."),
    strategy: str = typer.Option("round_robin", "--strategy", help=STRATEGY_HELP),
    key: str = typer.Option(None, "--key", help="Key for consistent_hash."),
    delivery: str = typer.Option("at_least_once", "--delivery", help=DELIVERY_HELP),
    ttl: float = typer.Option(None, "--ttl", help="Seconds after which the message is dropped as stale."),
    priority: str = typer.Option("normal", "--priority", help="high, normal or low."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="Send N messages, DATA suffixed with ' #i'."),
    no_confirm: bool = typer.Option(False, "--no-confirm", help="Do not wait for the receiver's acknowledgement."),
    wait: bool = typer.Option(False, "--wait", help="When a queue is full, wait (up to --timeout) instead of failing."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for acknowledgements."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    to, body = _split(target, data, capability)
    args: dict[str, Any] = dict(to=to, capability=capability, strategy=strategy, key=key, data=body, delivery=delivery,
                                ttl=ttl, priority=priority, count=count, timeout=timeout,
                                on_full="wait" if wait else None, confirm=False if no_confirm else None)
    with user_errors():
        result = _client(data_dir, timeout + 5 + count / 1000).call("agents.send", **args)
    if json:
        print_json(result)
    else:
        print(f"sent {result['sent']} message(s) in {result['seconds']} s"
              + (f" ({result['msgs_per_s']} msgs/s)" if result["sent"] > 1 else ""))


def request(
    target: str = typer.Argument(..., metavar="AGENT_ID", help="The agent id (or DATA when --capability is given)."),
    data: str = typer.Argument(None, metavar="DATA", help="The request (UTF-8 text)."),
    capability: str = typer.Option(None, "--capability", "-c", help="Ask one agent with this capability."),
    strategy: str = typer.Option("round_robin", "--strategy", help=STRATEGY_HELP),
    key: str = typer.Option(None, "--key", help="Key for consistent_hash."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the answer."),
    priority: str = typer.Option("normal", "--priority", help="high, normal or low."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    to, body = _split(target, data, capability)
    with user_errors():
        result = _client(data_dir, timeout + 5).call("agents.request", to=to, capability=capability, strategy=strategy,
                                                     key=key, data=body, timeout=timeout, priority=priority)
    if json:
        print_json(result)
    else:
        print(result["response"])


def publish(
    topic: str = typer.Argument(..., help="The topic."),
    data: str = typer.Argument(..., help="The message (UTF-8 text)."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    if not topic:
        fail("TOPIC must not be empty (use `agentnode broadcast` to reach every agent)", "usage")
    with user_errors():
        result = _client(data_dir).call("agents.publish", topic=topic, data=data)
    if json:
        print_json(result)
    else:
        print(f"published {result['msg_id']} on {topic}")


def broadcast(
    data: str = typer.Argument(..., help="The message (UTF-8 text)."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    with user_errors():
        result = _client(data_dir).call("agents.publish", topic="", data=data)
    if json:
        print_json(result)
    else:
        print(f"broadcast {result['msg_id']}")


def subscribe(
    topic: str = typer.Argument(..., help="The topic."),
    count: int = typer.Option(None, "--count", "-n", min=1, help="Exit after N messages."),
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    import json as json_lib

    with user_errors():
        stream = _client(data_dir).stream("agents.subscribe", topic=topic, count=count)
        try:
            for item in stream:
                if "subscribed" in item:
                    if not json:
                        print(f"subscribed to {item['subscribed']} as {item['agent_id']}", flush=True)
                    continue
                print(json_lib.dumps(item, sort_keys=True) if json else f"[{item['topic']}] {item['data']}", flush=True)
        except KeyboardInterrupt:
            pass


# -- helpers ---------------------------------------------------------------------------------------------


def _split(target: str, data: str | None, capability: str | None) -> tuple[str | None, str]:
    if capability:
        if data is not None:
            fail("with --capability give only DATA (no AGENT_ID)", "usage")
        return None, target
    if data is None:
        fail("give AGENT_ID and DATA (or --capability NAME and DATA)", "usage")
    return target, data


def _client(data_dir: Path | None, timeout_s: float = 10.0) -> Any:
    from agentnode.control import ControlClient
    from agentnode.datadir import DataDir

    directory = DataDir(data_dir_or_default(data_dir))
    return ControlClient(directory.control_socket, directory.path, timeout_s=timeout_s)


def _add_demo_flag(app: typer.Typer) -> None:
    """Wrap the registered `join` so it accepts `--demo-agents` (the demo agents live in agentnode.agents)."""
    for info in app.registered_commands:
        callback = info.callback
        if callback is None or (info.name or callback.__name__) != "join":
            continue

        @functools.wraps(callback)
        def join(*args: Any, demo_agents: bool = False, **kwargs: Any) -> Any:
            if demo_agents:
                from agentnode.agents import add_start_hook, start_demo_agents

                async def hook(node: Any) -> None:
                    await start_demo_agents(node)

                add_start_hook(hook)
            return callback(*args, **kwargs)

        signature = inspect.signature(callback)
        flag = inspect.Parameter(
            "demo_agents", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
            default=typer.Option(False, "--demo-agents", help="Also run demo agents: echo, counter and a 'demo' topic listener."),
        )
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p
                  for p in signature.parameters.values()]
        join.__signature__ = signature.replace(parameters=[*params, flag])  # type: ignore[attr-defined]
        info.callback = join
        return

"""Running a node and operating a running one: join, status, peers, leave, doctor."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from agentnode.cli.output import (
    EXIT,
    DataDirOption,
    JsonOption,
    console,
    data_dir_or_default,
    fail,
    print_json,
    print_table,
    user_errors,
)


def register(app: typer.Typer) -> None:
    app.command(help="Run a node in the foreground until Ctrl-C (which leaves the cluster gracefully).")(join)
    app.command(help="Show a running node's identity, address and member counts.")(status)
    app.command(help="List the members a running node sees, with their state and incarnation.")(peers)
    app.command(help="Make a running node leave the cluster gracefully and exit.")(leave)
    app.command(help="Explain why a node does not see its peers, with a fix for each problem.")(doctor)


def join(
    data_dir: Path = DataDirOption,
    listen: str = typer.Option("127.0.0.1:7946", "--listen", "-l", help="HOST:PORT to accept peers on (port 0: any free port)."),
    bootstrap: list[str] = typer.Option([], "--bootstrap", "-b", help="Seed nodes, HOST:PORT[,HOST:PORT...]; repeatable."),
    cluster: str = typer.Option("default", "--cluster", help="Cluster name; nodes of other clusters are never merged."),
    no_mdns: bool = typer.Option(False, "--no-mdns", help="Do not advertise or discover peers with multicast DNS."),
    advertise: str = typer.Option(None, "--advertise", help="HOST:PORT peers should dial, if not the listen address."),
    transport: str = typer.Option("tls", "--transport", help="tls (default) or quic."),
    profile: str = typer.Option("lan", "--profile", help="Membership timing: lan, or local for one machine."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE tag gossiped with this node; repeatable."),
    metrics: str = typer.Option(None, "--metrics", help="Serve Prometheus metrics on HOST:PORT (GET /metrics); off by default."),
    a2a: str = typer.Option(None, "--a2a", help="Serve the A2A gateway on HOST:PORT: any A2A client reaches any agent of the mesh here; off by default."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    tune_gc: bool = typer.Option(True, "--tune-gc/--no-tune-gc", help="Freeze the start-up heap and collect young objects less often (latency; see docs/messaging.md)."),
) -> None:
    from agentnode.config import NodeConfig

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if log_level.lower() != "debug":
        logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every handshake at INFO
    metadata = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--meta {item!r}: expected KEY=VALUE", "usage")
        metadata[key] = value
    seeds = [part for item in bootstrap for part in item.split(",") if part.strip()]
    with user_errors():
        config = NodeConfig.build(
            data_dir=data_dir_or_default(data_dir),
            listen=listen,
            bootstrap=seeds,
            cluster=cluster,
            mdns=not no_mdns,
            advertise=advertise,
            transport=transport,
            profile=profile,
            metadata=metadata,
            metrics=metrics,
            a2a=a2a,
        )
        _run(config, tune_gc)


def _run(config: Any, tune_gc: bool = True) -> None:
    from agentnode.runtime import Node, tune_gc as freeze_and_tune

    async def main() -> None:
        node = Node(config)
        await node.start()
        if tune_gc:
            # This process exists to run the node, so it owns the collector setting (decision 0125).
            freeze_and_tune()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: loop.create_task(node.leave()))
        print(f"node {node.node_id} listening on {node.address} (cluster {config.cluster})", flush=True)
        if node.a2a_url:
            print(f"A2A gateway on {node.a2a_url} (agent cards: {node.a2a_url}/agents)", flush=True)
        await node.wait_stopped()
        logging.getLogger("agentnode.node").info("node %s stopped", node.node_id)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def status(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    with user_errors():
        result = _client(data_dir).call("status")
    if json:
        print_json(result)
        return
    members = result.get("members", {})
    rows = [
        ("node id", result["node_id"]),
        ("cluster", result["cluster"]),
        ("address", result["address"]),
        ("transport", result["transport"]),
        ("incarnation", result["incarnation"]),
        ("members", ", ".join(f"{n} {s}" for s, n in sorted(members.items())) or "none"),
        ("uptime", f"{result['uptime_s']} s"),
        ("pid", result["pid"]),
    ]
    print_table(None, ["", ""], rows)


def peers(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    with user_errors():
        result = _client(data_dir).call("peers")
    if json:
        print_json(result)
        return
    rows = [(m["node_id"], m["address"], m["state"], m["incarnation"]) for m in result]
    print_table(None, ["node id", "address", "state", "incarnation"], rows)


def leave(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    with user_errors():
        result = _client(data_dir).call("leave")
    if json:
        print_json(result)
    else:
        print(f"node {result['leaving']} is leaving the cluster")


def doctor(
    data_dir: Path = DataDirOption,
    bootstrap: list[str] = typer.Option([], "--bootstrap", "-b", help="Seed nodes to check, HOST:PORT[,...]."),
    listen: str = typer.Option(None, "--listen", help="The listen address to check for a port conflict."),
    cluster: str = typer.Option(None, "--cluster", help="Cluster name to look for over mDNS."),
    mdns_seconds: float = typer.Option(3.0, "--mdns-seconds", help="How long to listen for mDNS answers."),
    transport: str = typer.Option(None, "--transport", help="Probe seeds over 'tls' or 'quic' (default: the running node's transport, else tls)."),
    json: bool = JsonOption,
) -> None:
    from agentnode.doctor import diagnose

    seeds = [part for item in bootstrap for part in item.split(",") if part.strip()]
    if transport not in (None, "tls", "quic"):
        fail(f"unknown --transport {transport!r}: use tls or quic", "usage")
    with user_errors():
        findings = asyncio.run(
            diagnose(data_dir_or_default(data_dir), bootstrap=seeds, listen=listen, cluster=cluster,
                     mdns_seconds=mdns_seconds, transport=transport)
        )
    if json:
        print_json([f.to_dict() for f in findings])
    else:
        for finding in findings:
            mark = "[green]ok[/green]  " if finding.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {finding.check} {finding.target}: {finding.problem or finding.detail}")
            if not finding.ok and finding.fix:
                console.print(f"       fix: {finding.fix}")
    if any(not f.ok for f in findings):
        raise typer.Exit(EXIT["unhealthy"])


def _client(data_dir: Path | None) -> Any:
    from agentnode.control import ControlClient
    from agentnode.datadir import DataDir

    directory = DataDir(data_dir_or_default(data_dir))
    return ControlClient(directory.control_socket, directory.path)

"""`agentnode dev up`: a throwaway local cluster for newcomers, shown converging in a live table."""

from __future__ import annotations

import time

import typer
from rich.live import Live
from rich.table import Table

from agentnode.cli.output import console, fail

dev_app = typer.Typer(help="Local development clusters on loopback.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(dev_app, name="dev")


@dev_app.command(help="Start N nodes on loopback with a throwaway CA, show them converge, stop all on Ctrl-C.")
def up(
    nodes: int = typer.Option(3, "--nodes", "-n", min=1, max=64, help="How many nodes."),
    transport: str = typer.Option("tls", "--transport", help="tls or quic."),
    mdns: bool = typer.Option(False, "--mdns/--no-mdns", help="Also discover each other over mDNS."),
    keep: bool = typer.Option(False, "--keep", help="Keep the data directories after stopping (their path is printed)."),
    duration_s: float = typer.Option(0.0, "--duration-s", help="Stop by itself after this many seconds (0: run until Ctrl-C)."),
    demo_agents: bool = typer.Option(True, "--demo-agents/--no-demo-agents", help="Run the demo agents (echo, counter, listener, sink) on every node."),
    a2a: bool = typer.Option(True, "--a2a/--no-a2a", help="Every node serves the A2A gateway on a free loopback port."),
) -> None:
    from agentnode.local_cluster import LocalCluster

    extra = (["--demo-agents"] if demo_agents else []) + (["--a2a", "127.0.0.1:0"] if a2a else [])
    cluster = LocalCluster(nodes, transport=transport, mdns=mdns, keep=keep, extra_args=extra)
    console.print(f"starting {nodes} nodes in cluster [bold]{cluster.cluster}[/bold] under {cluster.root}")
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        fail(f"could not start the cluster: {exc}")
    console.print("each node's CLI works too, for example:")
    console.print(f"  agentnode peers --data-dir {cluster.nodes[0].data_dir}")
    if demo_agents:
        console.print(f"  agentnode agents --data-dir {cluster.nodes[0].data_dir}")
        console.print(f"  agentnode request --capability echo hello --data-dir {cluster.nodes[0].data_dir}")
        console.print(f"  agentnode subscribe demo --data-dir {cluster.nodes[0].data_dir}   # then: agentnode publish demo hi")
        console.print(f"  (each node's demo ticker asks an echo agent every 2 s: see {cluster.nodes[0].log_path})")
    if a2a:
        try:
            url = cluster.nodes[0].call("status").get("a2a")
        except Exception:  # noqa: BLE001 - the table below shows the node's state anyway
            url = None
        if url:
            console.print(f"  A2A: any A2A client reaches every agent through {url} (cards: curl {url}/agents)")
    console.print("press Ctrl-C to stop all nodes")
    deadline = time.monotonic() + duration_s if duration_s > 0 else None
    try:
        with Live(_table(cluster), console=console, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
                live.update(_table(cluster))
    except KeyboardInterrupt:
        pass
    finally:
        console.print("\nstopping (each node leaves gracefully)...")
        cluster.stop()
        if keep:
            console.print(f"kept {cluster.root}")


def _table(cluster: object) -> Table:
    from agentnode.local_cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    table = Table(title=f"cluster {cluster.cluster}", caption="a/s/d/l = members seen alive/suspect/dead/left", header_style="bold")
    for column in ("#", "node id", "address", "a/s/d/l", "converged"):
        table.add_column(column, no_wrap=True)
    expected = {n.node_id for n in cluster.nodes if n.alive}
    for node in cluster.nodes:
        if not node.alive:
            table.add_row(str(node.index + 1), node.node_id, node.address or "", "-", "[red]stopped[/red]")
            continue
        try:
            view = node.view()
        except Exception as exc:  # a node that does not answer is shown, not fatal
            table.add_row(str(node.index + 1), node.node_id, node.address or "", "?", f"[yellow]{exc}[/yellow]")
            continue
        counts = {s: sum(1 for v in view.values() if v == s) for s in ("alive", "suspect", "dead", "left")}
        alive = {nid for nid, s in view.items() if s == "alive"}
        mark = "[green]yes[/green]" if alive == expected else "[yellow]not yet[/yellow]"
        table.add_row(str(node.index + 1), node.node_id, node.address or "", "/".join(str(counts[s]) for s in ("alive", "suspect", "dead", "left")), mark)
    return table

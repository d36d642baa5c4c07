"""`agentnode bench transport`: agentnode's transport against a raw TLS socket, measured in one run."""

from __future__ import annotations

import typer

from agentnode.cli.output import JsonOption, fail, print_json, print_table

bench_app = typer.Typer(name="bench", help="Benchmarks that print figures and ratios against a raw baseline.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `bench transport` to the root app."""
    app.add_typer(bench_app, name="bench")


@bench_app.command("transport", help="One-way msgs/s and RTT p50/p99 for 256-byte messages, agentnode vs raw TLS (two processes).")
def transport(
    kind: str = typer.Option("tls", "--transport", help="tls or quic (the raw baseline is always TLS)."),
    duration: float = typer.Option(2.5, "--duration", help="Seconds per throughput phase (RTT phases are capped similarly)."),
    reps: int = typer.Option(1, "--reps", help="Repetitions; ratios are computed within each and the median reported."),
    json: bool = JsonOption,
) -> None:
    from agentnode.transport.benchmark import run_transport_benchmark

    if kind not in ("tls", "quic"):
        fail(f"unknown transport {kind!r}; choose tls or quic")
    if duration <= 0 or reps < 1:
        fail("--duration must be positive and --reps at least 1")
    try:
        result = run_transport_benchmark(kind, duration, reps)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(f"benchmark failed: {exc}")
    if json:
        print_json(result)
        return
    ours, raw, ratios = result["agentnode"], result["raw_tls"], result["ratios"]
    print_table(
        f"transport benchmark: {kind}, {result['message_bytes']}-byte messages, {result['loop']}, {result['repetitions']} rep(s)",
        ["", f"agentnode ({kind})", "raw TLS (batched)", "ratio"],
        [
            ("msgs/s one-way", ours["msgs_per_s"], raw["msgs_per_s"], ratios["throughput"]),
            ("RTT p50 µs", ours["rtt_p50_us"], raw["rtt_p50_us"], ratios["rtt_p50"]),
            ("RTT p99 µs", ours["rtt_p99_us"], raw["rtt_p99_us"], ratios["rtt_p99"]),
        ],
    )
    targets = result["targets"]
    for name, ok in result["met"].items():
        typer.echo(f"target {name}: {'met' if ok else 'MISSED'} ({targets})" if not ok else f"target {name}: met")


@bench_app.command("state", help="Replicated state: local updates/s, delta bytes, repair bytes vs full state, 50-node re-convergence (simulated).")
def state(
    nodes: int = typer.Option(50, "--nodes", help="Replicas in the simulated partition/heal run."),
    keys: int = typer.Option(10_000, "--keys", help="Keys held by every replica."),
    writes: int = typer.Option(1_000, "--writes", help="Writes made on both sides during the partition."),
    partition_s: float = typer.Option(60.0, "--partition-s", help="Simulated partition length in seconds."),
    updates: int = typer.Option(20_000, "--updates", help="Local updates timed for updates/s."),
    seed: int = typer.Option(1, "--seed", help="Simulation seed (one seed replays the same run)."),
    world: bool = typer.Option(True, "--world/--no-world", help=(
        "Also run the re-convergence figure in the shared simulator (real NodeCores beside the replicas; "
        "`agentnode simulate --scenario state-reconverge`, a 60 s partition; ~2-3 CPU minutes at 50 x 10,000).")),
    json: bool = JsonOption,
) -> None:
    from agentnode.state_benchmark import run_state_benchmark

    if nodes < 2 or keys < 1 or writes < 0 or partition_s <= 0 or updates < 1:
        fail("--nodes must be at least 2; --keys, --updates and --partition-s positive; --writes not negative")
    result = run_state_benchmark(updates=updates, nodes=nodes, keys=keys, writes=writes,
                                 partition_ms=int(partition_s * 1000), seed=seed)
    if world:
        from agentnode.simulations.reconvergence import reconvergence_figure

        result["partition_heal_world"] = reconvergence_figure(nodes=nodes, keys=keys, writes=writes, seed=seed)
    if json:
        print_json(result)
        return
    local, repair, heal = result["local"], result["repair"], result["partition_heal"]
    print_table("replicated state benchmark", ["figure", "value"], [
        ("local updates/s (replication core, gcounter)", local["updates_per_s"]),
        ("local updates/s (node.state, SQLite commit each)", result.get("node_state", {}).get("updates_per_s", "-")),
        ("delta bytes per update per peer", local["delta_bytes_per_update_per_peer"]),
        (f"repair bytes after partition ({repair['keys']} keys, {repair['keys_changed_during_partition']} changed)", repair["repair_bytes"]),
        ("full state bytes (one replica)", repair["full_state_bytes"]),
        ("repair / full state", repair["ratio"]),
        (f"re-convergence after {heal['partition_s']} s partition heals ({heal['nodes']} nodes, {heal['keys']} keys)",
         f"{heal['reconverge_s']} s simulated (goal ≤ {heal['goal_s']} s)"),
        ("bytes on the wire after heal", heal["bytes_after_heal"]),
    ] + ([(
        f"re-convergence in the shared simulator ({result['partition_heal_world']['nodes']} nodes with membership, "
        f"{result['partition_heal_world']['keys']} keys, {result['partition_heal_world']['partition_s']} s partition)",
        f"{result['partition_heal_world']['reconverge_s']} s simulated (replicas equal after "
        f"{result['partition_heal_world']['replicas_equal_s']} s)")] if "partition_heal_world" in result else []))


@bench_app.command("messaging", help="Agent-to-agent msgs/s per delivery mode, request RTT, broadcast latency (10 nodes, 1000 simulated), vs raw TLS.")
def messaging(
    messages: int = typer.Option(50_000, "--messages", help="Messages per unicast throughput phase."),
    nodes: int = typer.Option(10, "--nodes", help="Nodes of the local cluster for the broadcast latency phase."),
    sim_nodes: int = typer.Option(1000, "--sim-nodes", help="Nodes of the simulated broadcast."),
    json: bool = JsonOption,
) -> None:
    from agentnode.messaging_benchmark import run_messaging_benchmark

    if messages < 1000 or nodes < 2 or sim_nodes < 10:
        fail("need --messages >= 1000, --nodes >= 2 and --sim-nodes >= 10")
    try:
        result = run_messaging_benchmark(messages, broadcast_nodes=nodes, sim_nodes=sim_nodes)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(f"benchmark failed: {exc}")
    if json:
        print_json(result)
        return
    raw, uni, sim, bc = result["raw_tls"], result["unicast"], result["simulation"], result["broadcast_cluster"]
    rows = [(f"unicast {mode} msgs/s", uni[mode]["msgs_per_s"], raw["msgs_per_s"] if mode == "at_least_once" else "")
            for mode in ("best_effort", "at_least_once", "durable")]
    rows += [
        ("request RTT p50 µs", result["request_rtt"]["p50_us"], raw["rtt_p50_us"]),
        ("request RTT p99 µs", result["request_rtt"]["p99_us"], raw["rtt_p99_us"]),
        (f"request RTT p99 µs at {result['request_rtt_half_load']['load_msgs_per_s']} msgs/s", result["request_rtt_half_load"]["p99_us"], ""),
        ("request CPU µs per round trip, both nodes in one process (memory transport)",
         result["request_rtt_memory"]["cpu_us_per_request"], ""),
        (f"broadcast to all {bc['agents']} agents of {bc['nodes']} nodes, p50 / max ms", f"{bc['all_agents_ms_p50']} / {bc['all_agents_ms_max']}", ""),
        (f"simulated broadcast, {sim['nodes']} nodes: ms to 99.99% (max)", sim["reach_ms_max"], ""),
        ("simulated duplicates per node per message (steady / first)", f"{sim['duplicates_per_node_max']} / {sim['first_message']['duplicates_per_node']}", ""),
    ]
    print_table(f"messaging benchmark: {result['payload_bytes']}-byte payloads", ["", "agentnode", "raw TLS (batched)"], rows)
    for name, ok in result["met"].items():
        typer.echo(f"target {name}: {'met' if ok else 'MISSED'}")

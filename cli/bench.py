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

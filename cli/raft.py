"""The Raft group from the command line: `raft`, `kv`, `lock`, `name`, `node revoke`, `bench raft`.

Every command talks to the local node's control socket; the node forwards to a voter when it is
not one. Exit codes (docs/raft-operations.md): 0 ok, 1 refused (CAS mismatch, lock or name held,
key absent) or error, 3 no node running, 4 `NoQuorum` (not applied: retry when the majority is back).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from pathlib import Path
from typing import Any

import typer

from agentnode.cli.output import (
    EXIT,
    DataDirOption,
    JsonOption,
    data_dir_or_default,
    fail,
    print_json,
    print_table,
    user_errors,
)

CONTROL_TIMEOUT_S = 20.0
"""Longer than the node's forwarding bound (8 s) plus a linearizable read, so the node answers first."""

raft_app = typer.Typer(name="raft", help="The Raft group: status and voter changes.", no_args_is_help=True)
kv_app = typer.Typer(name="kv", help="Linearizable key-value map (through the Raft group).", no_args_is_help=True)
lock_app = typer.Typer(name="lock", help="Locks with fencing tokens (through the Raft group).", no_args_is_help=True)
name_app = typer.Typer(name="name", help="Unique agent-name leases with TTL (through the Raft group).", no_args_is_help=True)
node_app = typer.Typer(name="node", help="The cluster roster: revoke a node for good.", no_args_is_help=True)

HistoryOption = typer.Option(None, "--history", help="Append this operation to a JSON-lines history file (for check-history).")
ClientOption = typer.Option(None, "--client", help="Client name recorded in the history [default: cli-PID].")
StaleOption = typer.Option(False, "--stale", help="Answer from a replica without a round through the log (may lag; labelled stale).")


def register(app: typer.Typer) -> None:
    """Add `raft`, `kv`, `lock`, `name`, `node` and `bench raft`."""
    app.add_typer(raft_app, name="raft")
    app.add_typer(kv_app, name="kv")
    app.add_typer(lock_app, name="lock")
    app.add_typer(name_app, name="name")
    app.add_typer(node_app, name="node")
    from agentnode.cli.bench import bench_app

    bench_app.command("raft", help="Raft commit p50/p99, pipelined writes/s and kill -9 failover, against bare pysyncobj.")(bench_raft)


# -- raft -----------------------------------------------------------------------------------------


@raft_app.command("status", help="Leader, term, commit index, voters and each voter's lag.")
def status(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "raft_status")
    if json:
        print_json(result)
        return
    this = result.get("this_node", {})
    rows = [
        ("group", result.get("group_id") or "not formed yet"),
        ("leader", result.get("leader") or "none"),
        ("term", result.get("term")),
        ("commit index", result.get("commit_index")),
        ("answered by", f"{result.get('node_id')} ({result.get('role')})"),
        ("this node", f"{this.get('node_id')}: {'voter' if this.get('voter') else 'non-voter (forwards)'}"),
    ]
    print_table(None, ["", ""], rows)
    lag = result.get("lag") or {}
    voters = result.get("voters") or []
    if voters:
        print_table("voters", ["voter", "lag (entries)", ""],
                    [(v, "?" if lag.get(v) is None else lag[v], "leader" if v == result.get("leader") else "") for v in voters])


@raft_app.command("add-voter", help="Make an alive member a voter (one change at a time).")
def add_voter(node_id: str = typer.Argument(..., help="The node id to promote."),
              data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "raft_add_voter", node_id=node_id)
    _print(result, json, f"{node_id} is a voter; voters: {', '.join(result.get('voters', []))}")


@raft_app.command("remove-voter", help="Remove one voter (not the current leader); it keeps running as a non-voter.")
def remove_voter(node_id: str = typer.Argument(..., help="The voter to remove."),
                 data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "raft_remove_voter", node_id=node_id)
    _print(result, json, f"{node_id} removed; voters: {', '.join(result.get('voters', []))}")


@raft_app.command("check-history", help="Check a JSON-lines history (from --history) for linearizability, key by key.")
def check_history(path: Path = typer.Argument(..., help="The history file."), json: bool = JsonOption) -> None:
    from agentnode.consensus.history import check_history as check, load_history

    with user_errors():
        operations = load_history(path.read_text().splitlines())
    verdicts = check(operations)
    rows = [{"key": v.key, "linearizable": v.linearizable, "operations": v.operations, "states": v.states,
             "reason": v.reason} for v in verdicts.values()]
    ok = all(v.linearizable for v in verdicts.values())
    if json:
        print_json({"linearizable": ok, "operations": len(operations), "keys": rows})
    else:
        print_table(None, ["key", "linearizable", "operations", "states", "reason"],
                    [(r["key"], r["linearizable"], r["operations"], r["states"], r["reason"]) for r in rows])
    if not ok:
        raise typer.Exit(EXIT["error"])


# -- kv -------------------------------------------------------------------------------------------


@kv_app.command("get", help="Read a key (linearizable unless --stale). Exit 1 when the key is absent.")
def kv_get(key: str, stale: bool = StaleOption, data_dir: Path = DataDirOption, json: bool = JsonOption,
           history: Path = HistoryOption, client: str = ClientOption) -> None:
    result = _recorded(data_dir, history, client, "get", key, None, None, "kv_get",
                       lambda r: None if r["value_hex"] is None else bytes.fromhex(r["value_hex"]), {"key": key, "stale": stale})
    if json:
        print_json(result)
    elif result["found"]:
        typer.echo(result["value"] if result["value"] is not None else result["value_hex"])
        if result["stale"]:
            typer.echo(f"(stale read: applied index {result['applied_index']})", err=True)
    if not result["found"]:
        if not json:
            typer.echo(f"key {key!r} is absent", err=True)
        raise typer.Exit(EXIT["error"])


@kv_app.command("put", help="Write a key.")
def kv_put(key: str, value: str, data_dir: Path = DataDirOption, json: bool = JsonOption,
           history: Path = HistoryOption, client: str = ClientOption) -> None:
    result = _recorded(data_dir, history, client, "put", key, value.encode(), None, "kv_put", lambda r: None,
                       {"key": key, "value": value})
    _print(result, json, "ok")


@kv_app.command("cas", help="Compare-and-set: write VALUE only if the key holds --expected (or is absent). Exit 1 on mismatch.")
def kv_cas(key: str, value: str = typer.Argument(None, help="The new value (omit with --delete)."),
           expected: str = typer.Option(None, "--expected", help="The value the key must hold now."),
           expect_absent: bool = typer.Option(False, "--expect-absent", help="The key must be absent now."),
           delete: bool = typer.Option(False, "--delete", help="Delete the key instead of writing VALUE."),
           data_dir: Path = DataDirOption, json: bool = JsonOption, history: Path = HistoryOption,
           client: str = ClientOption) -> None:
    if (expected is None) == (not expect_absent):
        fail("give exactly one of --expected VALUE or --expect-absent", "usage")
    if (value is None) == (not delete):
        fail("give a VALUE, or --delete", "usage")
    args: dict[str, Any] = {"key": key, "expected_absent": expect_absent, "delete": delete}
    if expected is not None:
        args["expected"] = expected
    if value is not None:
        args["value"] = value
    new = None if delete else value.encode()
    old = None if expect_absent else expected.encode()
    result = _recorded(data_dir, history, client, "cas", key, new, old, "kv_cas", lambda r: r["ok"], args)
    if json:
        print_json(result)
    elif result["ok"]:
        typer.echo("ok")
    else:
        current = result["value"] if result["value"] is not None else result["value_hex"]
        typer.echo(f"mismatch: {key!r} holds {current!r}" if result["value_hex"] is not None else f"mismatch: {key!r} is absent",
                   err=True)
    if not result["ok"]:
        raise typer.Exit(EXIT["error"])


@kv_app.command("delete", help="Delete a key.")
def kv_delete(key: str, data_dir: Path = DataDirOption, json: bool = JsonOption,
              history: Path = HistoryOption, client: str = ClientOption) -> None:
    result = _recorded(data_dir, history, client, "delete", key, None, None, "kv_delete", lambda r: None, {"key": key})
    _print(result, json, "ok")


# -- locks, names, roster -------------------------------------------------------------------------


def _default_owner() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


OwnerOption = typer.Option(None, "--owner", help="Who holds it [default: USER@HOST].")
TtlOption = typer.Option(30.0, "--ttl", help="Seconds until it lapses unless renewed.")


@lock_app.command("acquire", help="Take a lock; prints the fencing token. Exit 1 if someone else holds it.")
def lock_acquire(name: str, owner: str = OwnerOption, ttl: float = TtlOption,
                 data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "lock_acquire", name=name, owner=owner or _default_owner(), ttl_ms=_ttl_ms(ttl))
    _refusable(result, json, f"acquired {name!r}: fencing token {result.get('fencing_token')}",
               f"{name!r} is held by {result.get('owner')!r} (token {result.get('fencing_token')})")


@lock_app.command("release", help="Release a lock you hold (the current token is looked up unless --token).")
def lock_release(name: str, owner: str = OwnerOption,
                 token: int = typer.Option(None, "--token", help="The fencing token from acquire."),
                 data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    args: dict[str, Any] = {"name": name, "owner": owner or _default_owner()}
    if token is not None:
        args["fencing_token"] = token
    result = _call(data_dir, "lock_release", **args)
    _refusable(result, json, f"released {name!r}", f"not released: {result.get('reason')}")


@lock_app.command("show", help="Who holds a lock, with its fencing token.")
def lock_show(name: str, stale: bool = StaleOption, data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "lock_get", name=name, stale=stale)
    _print(result, json, f"{name!r} held by {result.get('owner')!r}, token {result.get('fencing_token')}"
           if result["held"] else f"{name!r} is free")


@name_app.command("claim", help="Lease a unique agent name (renews if you hold it). Exit 1 if held by another owner.")
def name_claim(name: str, owner: str = typer.Option(..., "--owner", help="The agent that claims it."),
               ttl: float = TtlOption, data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "name_claim", name=name, owner=owner, ttl_ms=_ttl_ms(ttl))
    _refusable(result, json, f"{name!r} leased to {owner!r} (epoch {result.get('epoch')})",
               f"{name!r} is held by {result.get('owner')!r}")


@name_app.command("release", help="Give up a name lease.")
def name_release(name: str, owner: str = typer.Option(..., "--owner"), data_dir: Path = DataDirOption,
                 json: bool = JsonOption) -> None:
    result = _call(data_dir, "name_release", name=name, owner=owner)
    _refusable(result, json, f"released {name!r}", f"not released: {result.get('reason')}")


@name_app.command("lookup", help="Who holds a name.")
def name_lookup(name: str, stale: bool = StaleOption, data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "name_lookup", name=name, stale=stale)
    _print(result, json, f"{name!r} held by {result.get('owner')!r}" if result["held"] else f"{name!r} is free")


@node_app.command("revoke", help="Revoke a node for good: every node refuses its frames from then on.")
def node_revoke(node_id: str, reason: str = typer.Option("", "--reason", help="Recorded with the revocation."),
                data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "node_revoke", node_id=node_id, reason=reason)
    _refusable(result, json, f"{node_id} is revoked", f"not revoked: {result.get('reason')}")


@node_app.command("roster", help="Admitted and revoked node ids.")
def node_roster(stale: bool = StaleOption, data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "roster", stale=stale)
    if json:
        print_json(result)
    else:
        print_table(None, ["node id", "status"], [(n, "revoked") for n in result["revoked"]]
                    + [(n, "admitted") for n in result["admitted"]])


# -- bench ----------------------------------------------------------------------------------------


def bench_raft(
    writes: int = typer.Option(2_000, "--writes", help="Sequential writes (and as many pipelined) per system."),
    concurrency: int = typer.Option(64, "--concurrency", help="Pipelined writes in flight."),
    json: bool = JsonOption,
) -> None:
    from agentnode.raft_benchmark import run_raft_benchmark

    if writes < 10 or concurrency < 1:
        fail("--writes must be at least 10 and --concurrency at least 1", "usage")
    try:
        result = run_raft_benchmark(writes=writes, concurrency=concurrency)
    except (RuntimeError, OSError, ValueError, AssertionError) as exc:
        fail(f"benchmark failed: {exc}")
    if json:
        print_json(result)
        return
    ours, bare, ratios = result["agentnode"], result["bare_pysyncobj"], result["ratios"]
    print_table(
        f"raft benchmark: 3 voters, {writes} writes of {result['value_bytes']} bytes, {concurrency} in flight",
        ["", "agentnode (node transport)", "bare pysyncobj (TCP)", "ratio"],
        [
            ("sequential commit p50 ms", ours["commit_p50_ms"], bare["commit_p50_ms"], ratios["commit_p50"]),
            ("sequential commit p99 ms", ours["commit_p99_ms"], bare["commit_p99_ms"], ratios["commit_p99"]),
            ("sequential writes/s", ours["sequential_writes_per_s"], bare["sequential_writes_per_s"], ratios["sequential"]),
            ("pipelined writes/s", ours["pipelined_writes_per_s"], bare["pipelined_writes_per_s"], ratios["pipelined"]),
            ("kill -9 leader -> next commit s", ours["failover_s"], bare["failover_s"], ratios["failover"]),
        ],
    )
    for name, ok in result["met"].items():
        typer.echo(f"target {name}: {'met' if ok else 'MISSED'} ({result['targets'][name]})")


# -- helpers --------------------------------------------------------------------------------------


def _client(data_dir: Path | None) -> Any:
    from agentnode.control import ControlClient
    from agentnode.datadir import DataDir

    directory = DataDir(data_dir_or_default(data_dir))
    return ControlClient(directory.control_socket, directory.path, timeout_s=CONTROL_TIMEOUT_S)


def _call(data_dir: Path | None, op: str, **args: Any) -> Any:
    with user_errors():
        return _client(data_dir).call(op, **args)


def _recorded(data_dir: Path | None, history: Path | None, client: str | None, op: str, key: str, value: Any,
              expected: Any, control_op: str, result_of: Any, args: dict[str, Any]) -> Any:
    """Run one kv operation; with `history`, append it as a JSON line (invocation, completion, outcome)."""
    if history is None:
        return _call(data_dir, control_op, **args)
    from agentnode.consensus.history import HistoryRecorder
    from agentnode.control import ControlError, NodeNotRunning
    from agentnode.raft import outcome_of_error_kind

    with user_errors(), open(history, "a") as sink:
        recorder = HistoryRecorder(sink=sink.write)
        op_id = recorder.invoke(client or f"cli-{os.getpid()}", op, key, _now_ms(), value=value, expected=expected)
        try:
            result = _client(data_dir).call(control_op, **args)
        except NodeNotRunning:
            recorder.fail(op_id, _now_ms())
            raise
        except ControlError as exc:
            if outcome_of_error_kind(exc.kind) == "fail":
                recorder.fail(op_id, _now_ms())
            else:
                recorder.unknown(op_id)
            raise
        except OSError:  # the connection broke after the request was sent: outcome unknown
            recorder.unknown(op_id)
            raise
        recorder.ok(op_id, _now_ms(), result_of(result))
    return result


def _now_ms() -> int:
    """CLOCK_MONOTONIC is shared by every process on one machine, so CLI invocations order correctly."""
    return time.monotonic_ns() // 1_000_000


def _ttl_ms(seconds: float) -> int:
    if not 0 < seconds <= 24 * 3600:
        fail("--ttl must be between 0 and 86400 seconds", "usage")
    return max(1, int(seconds * 1000))


def _print(result: Any, json: bool, text: str) -> None:
    if json:
        print_json(result)
    else:
        typer.echo(text)


def _refusable(result: dict[str, Any], json: bool, ok_text: str, refused_text: str) -> None:
    """Print; exit 1 when the state machine refused (lock held, name held, not the owner)."""
    if json:
        print_json(result)
    elif result.get("ok"):
        typer.echo(ok_text)
    else:
        typer.echo(refused_text, err=True)
    if not result.get("ok"):
        raise typer.Exit(EXIT["error"])

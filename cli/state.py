"""`agentnode state ...`: read, write and watch a running node's replicated state (docs/state.md)."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Any

import typer

from agentnode.cli.output import DataDirOption, JsonOption, console, data_dir_or_default, fail, print_json, print_table, user_errors

state_app = typer.Typer(
    name="state",
    help="Replicated CRDT state: counters, sets and registers that stay writable on both sides of a partition.",
    no_args_is_help=True,
)

ConsistencyOption = typer.Option(
    "local", "--consistency", "-c",
    help="local, one, majority, all, a replica count like 3, or linearizable (needs the Raft group).",
)
TimeoutOption = typer.Option(5.0, "--timeout", help="Seconds to wait for the replicas the consistency level needs.")


def register(app: typer.Typer) -> None:
    """Add `agentnode state` to the root app."""
    app.add_typer(state_app, name="state")


@state_app.command("get", help="Print the value of KEY (merged from enough replicas for --consistency).")
def get(
    key: str = typer.Argument(..., help="The key."),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    result = _call(data_dir, "state.get", key=key, consistency=consistency, timeout_s=timeout)
    _show(result, json)


@state_app.command("set", help="Set KEY to VALUE (last-writer-wins register). VALUE is parsed as JSON if it parses, else a string.")
def set_(
    key: str = typer.Argument(...),
    value: str = typer.Argument(...),
    string: bool = typer.Option(False, "--string", help="Store VALUE as a string even if it parses as JSON."),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    parsed: Any = value if string else _parse_value(value)
    _show(_update(data_dir, "set", key, consistency, timeout, value=parsed), json)


@state_app.command("incr", help="Add N (default 1, negative subtracts) to the counter KEY.")
def incr(
    key: str = typer.Argument(...),
    n: int = typer.Argument(1),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    if n == 0:
        fail("N must not be 0", "usage")
    _show(_update(data_dir, "incr", key, consistency, timeout, n=n), json)


@state_app.command("add", help="Add ELEMENT to the set KEY (add wins over a concurrent remove).")
def add(
    key: str = typer.Argument(...),
    element: str = typer.Argument(...),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    _show(_update(data_dir, "add", key, consistency, timeout, element=element), json)


@state_app.command("remove", help="Remove ELEMENT from the set KEY.")
def remove(
    key: str = typer.Argument(...),
    element: str = typer.Argument(...),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    _show(_update(data_dir, "remove", key, consistency, timeout, element=element), json)


@state_app.command("del", help="Delete KEY on every replica (the name cannot be reused until the tombstone is collected).")
def delete(
    key: str = typer.Argument(...),
    consistency: str = ConsistencyOption,
    timeout: float = TimeoutOption,
    data_dir: Path = DataDirOption,
    json: bool = JsonOption,
) -> None:
    _show(_update(data_dir, "delete", key, consistency, timeout), json)


@state_app.command("keys", help="List the keys of the local replica.")
def keys(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "state.keys")
    if json:
        print_json(result)
    else:
        for key in result:
            console.print(key, markup=False)


@state_app.command("retire", help=(
    "Fold NODE_ID's entries into one owner's and refuse it from now on (for nodes gone for good; "
    "nodes the Raft group revoked are retired automatically). See docs/state.md."))
def retire(node_id: str = typer.Argument(..., help="The node id of a node that will never come back."),
           data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "state.retire", node_id=node_id)
    if json:
        print_json(result)
    else:
        console.print(f"retired: {', '.join(result['retired'])}", markup=False)


@state_app.command("stats", help="Keys, tombstones, roster, per-peer lag and replication counters of the local replica.")
def stats(data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    result = _call(data_dir, "state.stats")
    if json:
        print_json(result)
        return
    rows = [(name, result[name]) for name in ("keys", "tombstones", "epoch", "db_path", "db_bytes", "storage_error")]
    rows.append(("roster", ", ".join(f"{k}{'' if v else ' (down)'}" for k, v in result["roster"].items())))
    rows.append(("stream lag", ", ".join(f"{k}: {v}" for k, v in result["stream_lag"].items()) or "-"))
    print_table("state", ["", "value"], rows)


@state_app.command("watch", help="Print KEY's value now and on every change until Ctrl-C.")
def watch(key: str = typer.Argument(...), data_dir: Path = DataDirOption, json: bool = JsonOption) -> None:
    from agentnode.control import ControlClient
    from agentnode.datadir import DataDir

    directory = DataDir(data_dir_or_default(data_dir))
    with user_errors():
        try:
            for item in ControlClient(directory.control_socket, directory.path).stream("state.watch", key=key):
                if json:
                    typer.echo(jsonlib.dumps(item, sort_keys=True))
                else:
                    shown = "(deleted)" if item["deleted"] else jsonlib.dumps(item["value"])
                    typer.echo(f"{item['key']} = {shown}  [{item['source']}]")
        except KeyboardInterrupt:
            pass


# -- helpers -------------------------------------------------------------------------------------


def _call(data_dir: Path | None, op: str, **args: Any) -> Any:
    from agentnode.control import ControlClient
    from agentnode.datadir import DataDir

    directory = DataDir(data_dir_or_default(data_dir))
    timeout = float(args.get("timeout_s") or 5.0) + 5.0
    with user_errors():
        return ControlClient(directory.control_socket, directory.path, timeout_s=timeout).call(op, **args)


def _update(data_dir: Path | None, kind: str, key: str, consistency: str, timeout: float, **args: Any) -> Any:
    if timeout <= 0:
        fail("--timeout must be positive", "usage")
    return _call(data_dir, "state.update", kind=kind, key=key, consistency=consistency, timeout_s=timeout, **args)


def _parse_value(text: str) -> Any:
    try:
        return jsonlib.loads(text)
    except ValueError:
        return text


def _show(result: dict[str, Any], json: bool) -> None:
    if json:
        print_json(result)
        return
    if result.get("type") in (None, "tombstone"):
        console.print(f"{result['key']}: (absent)" if result.get("type") is None else f"{result['key']}: (deleted)", markup=False)
        return
    console.print(f"{result['key']} = {jsonlib.dumps(result['value'])}  ({result['type']})", markup=False)

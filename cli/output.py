"""Formatting and exit codes shared by the commands: the only place that knows how things look."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from agentnode.config import default_data_dir

__all__ = ["EXIT", "DataDirOption", "JsonOption", "console", "fail", "print_json", "print_table", "user_errors"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "not_running": 3,
    "no_quorum": 4,
    "unhealthy": 5,
}
"""Exit codes, documented in docs/operations.md."""

DataDirOption = typer.Option(
    None,
    "--data-dir",
    "-d",
    help="The node's data directory [default: $AGENTNODE_DATA_DIR or ~/.agentnode].",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def data_dir_or_default(value: Path | None) -> Path:
    return value if value is not None else default_data_dir()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console.print(table)


def fail(message: str, code: str = "error") -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT[code])


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors-by-blame into one clear line and an exit code, never a traceback."""
    from agentnode.config import ConfigError
    from agentnode.control import ControlError, NodeNotRunning
    from agentnode.datadir import DataDirBusy

    try:
        yield
    except NodeNotRunning as exc:
        fail(str(exc), "not_running")
    except ControlError as exc:
        fail(str(exc), "no_quorum" if exc.kind == "NoQuorum" else "error")
    except (ConfigError, DataDirBusy) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(str(exc))
    except Exception as exc:
        # errors whose classes live in optional layers (identity, transport) still read as one line
        if type(exc).__name__ in {"IdentityError", "PeerRefused", "TransportError"}:
            fail(str(exc))
        raise

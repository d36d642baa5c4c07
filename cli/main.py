"""The `agentnode` command: each domain registers its commands from its own module."""

from __future__ import annotations

import typer

from agentnode import __version__
from agentnode.cli import agents, bench, ca, chaos, cluster, dev, raft, simulate, state

app = typer.Typer(
    name="agentnode",
    help="A peer-to-peer network node for AI agents. Start with: agentnode dev up --nodes 3",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentnode {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """A peer-to-peer network node for AI agents."""


for _module in (ca, cluster, dev, agents, raft, state, bench, simulate, chaos):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

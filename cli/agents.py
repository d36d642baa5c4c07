"""CLI commands for this domain; see main.py for how they are registered."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

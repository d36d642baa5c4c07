"""A progress bar for long runs: simulated time against the planned duration, on stderr.

Off with --json or when stderr is not a terminal; it only reads the world's clock, so it can never
change a run.
"""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["SimulationProgress"]


class SimulationProgress:
    """Context manager yielding a `progress(now_ms)` callback (a no-op when disabled)."""

    def __init__(self, until_ms: int, *, label: str, enabled: bool | None = None) -> None:
        self.until_ms = max(1, until_ms)
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: object | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return _noop
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.0f} sim s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        task = self._progress.add_task(self.label, total=self.until_ms / 1000.0)
        progress = self._progress

        def update(now_ms: int) -> None:
            progress.update(task, completed=min(now_ms, self.until_ms) / 1000.0)

        return update

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _noop(now_ms: int) -> None:
    return None

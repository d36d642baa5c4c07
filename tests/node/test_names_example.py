"""docs/examples/agents_unique_names.py runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agents_unique_names.py"


@pytest.mark.loopback
def test_unique_names_example() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("a holds 'planner': planner@") and "(confirmed" in lines[0], result.stdout
    assert lines[1].startswith("b refused: held by ") and lines[1].endswith("/" + lines[0].split()[3]), result.stdout
    assert lines[2] == "c finds 'planner' at node a", result.stdout
    assert lines[3].startswith("b holds 'planner' now: planner@") and lines[3].endswith("(confirmed)"), result.stdout

"""The documented examples run and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.loopback
def test_embedded_nodes_example() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "embedded_nodes.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " alive " in line]
    assert len(lines) == 2, result.stdout

"""The messaging examples in docs/examples run and print what docs/messaging.md promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

pytestmark = pytest.mark.loopback


def _run(name: str) -> list[str]:
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_agents_quickstart_example() -> None:
    out = _run("agents_quickstart.py")
    assert out[0].startswith("found: ['translator@")
    assert out[1].startswith("reply: HELLO from translator@")
    assert out[2] == "remote error: ValueError: cannot translate 'boom'"
    assert out[3] == "topic: agents can talk"


def test_agents_capabilities_example() -> None:
    out = _run("agents_capabilities.py")
    assert out == ["round robin: [3, 3]", "consistent hash, one key -> 1 agent", "durable: entry 1",
                   "after failover: ['summary by node 2']"]

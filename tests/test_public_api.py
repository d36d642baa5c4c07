"""The top-level names users import: pinned, and each one resolves."""

from __future__ import annotations

import subprocess
import sys

import agentnode


def test_top_level_names_are_pinned_and_resolve() -> None:
    assert agentnode.__all__ == sorted(agentnode.__all__, key=lambda n: (n.startswith("_"), n))
    for name in agentnode.__all__:
        assert getattr(agentnode, name) is not None, name


def test_crdt_import_stays_light() -> None:
    """`import agentnode.crdt` must not drag in asyncio, pydantic or the transport."""
    code = "import sys, agentnode.crdt; print(sorted(m for m in ('asyncio', 'pydantic', 'agentnode.runtime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

"""The package's public names are pinned, and importing it does not load pysyncobj."""

from __future__ import annotations

import subprocess
import sys

import agentnode.consensus as consensus


def test_all_is_sorted_and_resolves() -> None:
    assert consensus.__all__ == sorted(consensus.__all__)
    for name in consensus.__all__:
        assert getattr(consensus, name) is not None


def test_import_does_not_load_pysyncobj() -> None:
    code = "import sys, agentnode.consensus; print('pysyncobj' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"

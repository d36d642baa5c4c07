"""Chaos tests declare the capabilities they need: missing ones skip with the probe's reason,
or fail under CI_STRICT_CAPABILITIES=1 (set by .ci/run, where the tools are installed)."""

from __future__ import annotations

import pytest

from agentnode.chaos.capabilities import missing, strict


def _need(*capabilities: str) -> None:
    """Skip (or, in strict mode, fail) unless every capability works on this machine."""
    lacking = missing(list(capabilities))
    if lacking:
        reason = "chaos: " + "; ".join(f"needs {c.name}: {c.reason}" for c in lacking)
        if strict():
            pytest.fail(reason + " (CI_STRICT_CAPABILITIES=1: a missing capability is a failure)")
        pytest.skip(reason)


@pytest.fixture
def need():
    """`need("netns", "nft_bridge")`: skip (strict mode: fail) unless those capabilities work here."""
    return _need

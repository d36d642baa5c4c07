"""`runtime.tune_gc`: the opt-in collector setting of a process that runs a node (decision 0125)."""

from __future__ import annotations

import gc

import pytest

from agentnode.runtime import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_the_heap_and_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        tune_gc(5_000)
        assert gc.get_threshold()[0] == 5_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "700"])
def test_tune_gc_rejects_a_threshold_that_is_not_a_positive_int(bad: object) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="positive int"):
        tune_gc(bad)  # type: ignore[arg-type]
    assert gc.get_threshold() == before

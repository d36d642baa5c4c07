"""The CI chaos set: each short built-in scenario (`ci = true`) runs once on real node processes in
namespaces, and each of its checkers is its own test item, so a missing surface skips only the
checks that need it (with the workload's reason) and never hides the others' verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentnode.chaos.capabilities import FAULT_NEEDS
from agentnode.chaos.runner import RunResult, run_scenario
from agentnode.chaos.scenario import builtin_scenarios, needed_fault_kinds

pytestmark = [pytest.mark.netns, pytest.mark.processes, pytest.mark.timeout(240)]

SCENARIOS = builtin_scenarios()
CI = sorted(name for name, s in SCENARIOS.items() if s.ci)
CASES = [(name, check) for name in CI for check in [*(c.kind for c in SCENARIOS[name].checks), "no_unexpected_exit", "cleanup"]]
_results: dict[str, RunResult] = {}


def result_of(name: str, need: Any, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    scenario = SCENARIOS[name]
    caps = sorted({"root", *(c for kind in needed_fault_kinds(scenario) for c in FAULT_NEEDS[kind])})
    need(*caps)
    if name not in _results:
        _results[name] = run_scenario(scenario, seed=1, report_dir=tmp_path_factory.mktemp(f"chaos-{name}"))
    return _results[name]


@pytest.mark.parametrize(("scenario", "check"), CASES, ids=[f"{s}:{c}" for s, c in CASES])
def test_ci_scenario(scenario: str, check: str, need: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = result_of(scenario, need, tmp_path_factory)
    if check == "cleanup":
        assert result.cleanup_problems == []
        prefix = Path(result.report_dir or ".").name
        assert not [ns for ns in (Path("/run/netns").iterdir() if Path("/run/netns").exists() else []) if ns.name.startswith(prefix)]
        assert (Path(result.report_dir or "") / "timeline.png").stat().st_size > 10_000
        return
    if not result.verdicts:
        pytest.fail(f"{scenario} produced no verdicts ({result.status}): {result.reason}")
    verdict = next(v for v in result.verdicts if v.check == check)
    if verdict.status == "skip":
        pytest.skip(f"{scenario}: {verdict.summary}")
    detail = json.dumps(verdict.evidence, indent=1, default=str)[:4000]
    assert verdict.status == "pass", f"{scenario}: {check} {verdict.status}: {verdict.summary}\n{detail}"
    assert not [e for e in result.timeline if e.error], [e for e in result.timeline if e.error]

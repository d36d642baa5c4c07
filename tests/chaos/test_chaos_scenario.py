"""Scenario files: parsing, validation with messages that say what to fix, node-count overrides."""

from __future__ import annotations

import pytest

from agentnode.chaos.scenario import (
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    needed_fault_kinds,
    parse_scenario,
    resolve_groups,
)

MINIMAL = """
name = "t"
duration_s = 10
nodes = 5
[[fault]]
at_s = 2
action = "partition"
groups = [[0, 1], [2, 3, 4]]
[[fault]]
at_s = 1
action = "link"
loss = 0.1
[[check]]
kind = "membership_reforms"
within_s = 5
"""


def test_parse_sorts_faults_and_keeps_parameters() -> None:
    scenario = parse_scenario(MINIMAL)
    assert [f.action for f in scenario.faults] == ["link", "partition"]
    assert scenario.faults[1].params == {"groups": [[0, 1], [2, 3, 4]]}
    assert scenario.checks[0].kind == "membership_reforms" and scenario.checks[0].params == {"within_s": 5}
    assert needed_fault_kinds(scenario) == ["kill", "loss", "partition"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name='t'\nduration_s=1\nbogus=1", r"unknown key\(s\) bogus"),
        ("name='t'", "missing `duration_s`"),
        ("name='t'\nduration_s=5\n[[fault]]\nat_s=1\naction='explode'", "unknown action 'explode'"),
        ("name='t'\nduration_s=5\n[[fault]]\nat_s=9\naction='heal'", "outside 0..duration_s"),
        ("name='t'\nduration_s=5\nnodes=3\n[[fault]]\nat_s=1\naction='kill'\nnode=3", "node 3 does not exist"),
        ("name='t'\nduration_s=5\nnodes=3\n[[fault]]\nat_s=1\naction='kill'", "needs `node`"),
        ("name='t'\nduration_s=5\n[[fault]]\nat_s=1\naction='fill_disk'\nnode=0", "need `disk_mb`"),
        ("name='t'\nduration_s=5\nnodes=3\n[[fault]]\nat_s=1\naction='skew'\nnode=1\nseconds=5", "not listed in `skewable`"),
        ("name='t'\nduration_s=5\nprofile='wan'", "profile must be lan or local"),
        ("name = ", "not valid TOML"),
    ],
)
def test_invalid_scenarios_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(text)


def test_with_nodes_refuses_a_fault_on_a_missing_node() -> None:
    scenario = parse_scenario(MINIMAL)
    assert scenario.with_nodes(7).nodes == 7
    with pytest.raises(ScenarioError, match="node 4 does not exist in a 4-node cluster"):
        scenario.with_nodes(4)


def test_splits() -> None:
    assert resolve_groups({"split": "minority"}, 5) == [[0, 1], [2, 3, 4]]
    assert resolve_groups({"split": "minority"}, 3) == [[0], [1, 2]]
    assert resolve_groups({"split": "halves"}, 4) == [[0, 1], [2, 3]]
    assert resolve_groups({"groups": [[0], [-1]]}, 3) == [[0], [2]]
    with pytest.raises(ScenarioError, match="cannot be split"):
        resolve_groups({"split": "minority"}, 2)


def test_builtin_scenarios_parse_and_the_ci_set_is_short() -> None:
    found = builtin_scenarios()
    ci = {name for name, s in found.items() if s.ci}
    assert ci == {"partition-heal", "raft-leader-kill", "durable-kill", "loss-10", "clock-skew"}
    assert sum(found[name].duration_s for name in ci) <= 100  # plus ~5 s setup and checks each
    assert load_scenario("loss-10").name == "loss-10"
    with pytest.raises(ScenarioError, match="built-in: "):
        load_scenario("no-such-scenario")

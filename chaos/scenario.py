"""Chaos scenarios as TOML files: the cluster, the workloads, the fault schedule and the checks.

```toml
name = "partition-heal"
description = "why this scenario exists"
nodes = 5                 # default; `agentnode chaos run --nodes N` overrides
profile = "local"         # membership timing profile of every node
duration_s = 20           # the fault phase; faults are scheduled inside it
ci = true                 # part of the short set run on every CI run
skewable = [4]            # nodes started under libfaketime (only those pay for it)
disk_mb = 16              # give every data directory its own tmpfs of this size

[[workload]]
kind = "membership"

[[fault]]
at_s = 4
action = "partition"
split = "minority"        # or groups = [[0, 1], [2, 3, 4]]

[[fault]]
at_s = 12
action = "heal"

[[check]]
kind = "membership_reforms"
within_s = 30
```

Node references are indices (negative counts from the end, as in Python), "random" (drawn from
the run's seed), "leader" (resolved at run time by a workload that knows one; `else_node` names a
fallback) or "last" (the node of the latest kill, stop, pause or fill_disk).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "ACTIONS",
    "CheckSpec",
    "FaultSpec",
    "Scenario",
    "ScenarioError",
    "WorkloadSpec",
    "builtin_scenarios",
    "load_scenario",
    "needed_fault_kinds",
    "parse_scenario",
]

ACTIONS: dict[str, str] = {
    "partition": "cut the cluster into groups (`groups` or `split = \"minority\"|\"halves\"`), both ways",
    "one_way": "drop frames from `from` to `to` only",
    "heal_partition": "remove partitions and one-way cuts",
    "link": "per-link `loss`, `duplicate`, `delay_ms`, `jitter_ms`, `reorder` from `from` to `to` (default: all)",
    "clear_links": "remove loss, duplication and delay",
    "bandwidth": "limit `node`'s upload and download to `kbit` kbit/s",
    "clear_bandwidth": "remove bandwidth limits",
    "heal": "remove every network fault",
    "kill": "kill -9 `node`",
    "restart": "start `node` again (`wipe = true`: without its data directory, identity kept)",
    "stop": "graceful stop of `node` (it leaves the cluster)",
    "pause": "SIGSTOP `node`",
    "resume": "SIGCONT `node`",
    "skew": "set `node`'s wall clock to real time + `seconds` (node must be `skewable`)",
    "fill_disk": "fill `node`'s data-directory tmpfs (needs `disk_mb`)",
    "free_disk": "remove the filler from `node`'s data directory",
}
"""Fault actions a scenario can schedule, with their parameters (docs/chaos.md lists them too)."""

SCENARIO_DURATION_MAX_S = 3600.0
"""A scenario's fault phase is bounded; soaks longer than an hour are split into several runs."""
NODES_MAX = 32
SYMBOLIC_NODES = ("random", "leader", "last")
"""random: drawn from the run's seed; leader: the Raft leader now; last: the node of the latest kill/stop/pause/fill_disk."""


class ScenarioError(ValueError):
    """The scenario file is invalid; the message names the file, the entry and what to change."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    at_s: float
    action: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.action}({shown})" if shown else self.action


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    nodes: int
    profile: str
    duration_s: float
    faults: tuple[FaultSpec, ...]
    workloads: tuple[WorkloadSpec, ...]
    checks: tuple[CheckSpec, ...]
    ci: bool = False
    skewable: tuple[int, ...] = ()
    disk_mb: int | None = None
    transport: str = "tls"
    source: str = ""
    known_problem: str = ""
    """Set when the scenario documents a known product problem: its failing verdict is the expected one."""

    def with_nodes(self, nodes: int) -> Scenario:
        """The same scenario on `nodes` nodes; refuses when a fault names a node that would not exist."""
        return _validate(_replace(self, nodes=nodes))


_ACTION_KIND = {
    "heal_partition": "partition", "heal": "partition", "clear_links": "loss", "clear_bandwidth": "bandwidth",
    "stop": "kill", "resume": "pause", "free_disk": "disk_full", "fill_disk": "disk_full",
}


def _link_kinds(fault: FaultSpec) -> list[str]:
    kinds = []
    if fault.params.get("loss"):
        kinds.append("loss")
    if fault.params.get("duplicate"):
        kinds.append("duplicate")
    if fault.params.get("delay_ms") or fault.params.get("jitter_ms"):
        kinds.append("delay")
    return kinds


def needed_fault_kinds(scenario: Scenario) -> list[str]:
    """The fault kinds (capabilities.FAULT_NEEDS keys) this scenario uses."""
    kinds = set()
    for fault in scenario.faults:
        if fault.action == "link":
            kinds.update(_link_kinds(fault))
        else:
            kinds.add(_ACTION_KIND.get(fault.action, fault.action))
    if scenario.skewable:
        kinds.add("skew")
    if scenario.disk_mb is not None:
        kinds.add("disk_full")
    kinds.add("kill")  # every node runs in a namespace
    return sorted(kinds)


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Load a scenario file, or a built-in scenario by name (`agentnode chaos list`)."""
    path = Path(path_or_name)
    if not path.exists():
        builtin = builtin_scenarios()
        name = str(path_or_name).removesuffix(".toml")
        if name not in builtin:
            raise ScenarioError(
                f"no scenario file {str(path_or_name)!r} and no built-in scenario of that name; "
                f"built-in: {', '.join(sorted(builtin))}"
            )
        return builtin[name]
    return parse_scenario(path.read_text(), source=str(path))


def builtin_scenarios() -> dict[str, Scenario]:
    """Every scenario shipped in agentnode/chaos/scenarios/, by name."""
    found = {}
    folder = resources.files("agentnode.chaos").joinpath("scenarios")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            scenario = parse_scenario(entry.read_text(), source=f"builtin:{entry.name}")
            found[scenario.name] = scenario
    return found


def parse_scenario(text: str, *, source: str = "<string>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    known = {"name", "description", "nodes", "profile", "duration_s", "ci", "skewable", "disk_mb", "transport",
             "fault", "workload", "check", "known_problem"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for required in ("name", "duration_s"):
        if required not in data:
            raise ScenarioError(f"{source}: missing `{required}`")
    faults = []
    for k, entry in enumerate(data.get("fault", [])):
        entry = dict(entry)
        if "at_s" not in entry or "action" not in entry:
            raise ScenarioError(f"{source}: fault #{k + 1} needs `at_s` and `action`")
        at_s, action = float(entry.pop("at_s")), str(entry.pop("action"))
        if action not in ACTIONS:
            raise ScenarioError(f"{source}: fault #{k + 1}: unknown action {action!r}; known: {', '.join(ACTIONS)}")
        faults.append(FaultSpec(at_s, action, entry))
    workloads = [WorkloadSpec(str(w.pop("kind")), w) for w in (dict(x) for x in data.get("workload", [])) if "kind" in w]
    if len(workloads) != len(data.get("workload", [])):
        raise ScenarioError(f"{source}: every [[workload]] needs `kind`")
    checks = [CheckSpec(str(c.pop("kind")), c) for c in (dict(x) for x in data.get("check", [])) if "kind" in c]
    if len(checks) != len(data.get("check", [])):
        raise ScenarioError(f"{source}: every [[check]] needs `kind`")
    scenario = Scenario(
        name=str(data["name"]),
        description=str(data.get("description", "")).strip(),
        nodes=int(data.get("nodes", 3)),
        profile=str(data.get("profile", "local")),
        duration_s=float(data["duration_s"]),
        faults=tuple(sorted(faults, key=lambda f: f.at_s)),
        workloads=tuple(workloads),
        checks=tuple(checks),
        ci=bool(data.get("ci", False)),
        skewable=tuple(int(n) for n in data.get("skewable", [])),
        disk_mb=int(data["disk_mb"]) if "disk_mb" in data else None,
        transport=str(data.get("transport", "tls")),
        source=source,
        known_problem=str(data.get("known_problem", "")).strip(),
    )
    return _validate(scenario)


def resolve_groups(params: dict[str, Any], nodes: int) -> list[list[int]]:
    """`groups = [[...], ...]` (negative indices allowed) or `split = "minority"|"halves"`."""
    if "split" in params:
        split = params["split"]
        if split == "minority":
            k = (nodes - 1) // 2
        elif split == "halves":
            k = nodes // 2
        else:
            raise ScenarioError(f"split must be \"minority\" or \"halves\", got {split!r}")
        if k < 1:
            raise ScenarioError(f"a {nodes}-node cluster cannot be split ({split})")
        return [list(range(k)), list(range(k, nodes))]
    groups = params.get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ScenarioError("partition needs `groups = [[...], [...]]` or `split`")
    return [[resolve_index(n, nodes) for n in g] for g in groups]


def resolve_index(value: Any, nodes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"expected a node index, got {value!r}")
    index = value + nodes if value < 0 else value
    if not 0 <= index < nodes:
        raise ScenarioError(f"node {value} does not exist in a {nodes}-node cluster")
    return index


def resolve_set(value: Any, nodes: int) -> list[int]:
    """A node set: "all", an index, or a list of indices."""
    if value is None or value == "all":
        return list(range(nodes))
    if isinstance(value, list):
        return [resolve_index(v, nodes) for v in value]
    return [resolve_index(value, nodes)]


def _validate(scenario: Scenario) -> Scenario:
    where = scenario.source or scenario.name
    if not 1 <= scenario.nodes <= NODES_MAX:
        raise ScenarioError(f"{where}: nodes must be 1..{NODES_MAX}, got {scenario.nodes}")
    if not 0 < scenario.duration_s <= SCENARIO_DURATION_MAX_S:
        raise ScenarioError(f"{where}: duration_s must be in (0, {SCENARIO_DURATION_MAX_S}], got {scenario.duration_s}")
    if scenario.profile not in ("lan", "local"):
        raise ScenarioError(f"{where}: profile must be lan or local, got {scenario.profile!r}")
    for fault in scenario.faults:
        if not 0 <= fault.at_s <= scenario.duration_s:
            raise ScenarioError(f"{where}: fault {fault.describe()} at {fault.at_s} s is outside 0..duration_s")
        try:
            _check_fault(fault, scenario)
        except ScenarioError as exc:
            raise ScenarioError(f"{where}: fault {fault.describe()} at {fault.at_s} s: {exc}") from None
    for n in scenario.skewable:
        resolve_index(n, scenario.nodes)
    return scenario


def _check_fault(fault: FaultSpec, scenario: Scenario) -> None:
    p, n = fault.params, scenario.nodes
    if fault.action == "partition":
        resolve_groups(p, n)
    elif fault.action in ("one_way", "link"):
        resolve_set(p.get("from"), n)
        resolve_set(p.get("to"), n)
    if "node" in p and p["node"] not in SYMBOLIC_NODES:
        index = resolve_index(p["node"], n)
        if fault.action == "skew" and index not in [resolve_index(s, n) for s in scenario.skewable]:
            raise ScenarioError(f"node {p['node']} is not listed in `skewable`")
    if fault.action in ("fill_disk", "free_disk") and scenario.disk_mb is None:
        raise ScenarioError("disk faults need `disk_mb` (a tmpfs per data directory)")
    needs_node = {"bandwidth", "kill", "restart", "stop", "pause", "resume", "skew", "fill_disk", "free_disk"}
    if fault.action in needs_node and "node" not in p:
        raise ScenarioError("needs `node`")


def _replace(scenario: Scenario, **changes: Any) -> Scenario:
    from dataclasses import replace

    return replace(scenario, **changes)

"""Enforce the dependency rules of docs/architecture.md: `cli -> node -> {crdt, consensus, transport}`.

Checked on the source text (AST), so a violation fails even if the import sits in a function.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "node": "agentnode",
    "crdt": "agentnode.crdt",
    "consensus": "agentnode.consensus",
    "transport": "agentnode.transport",
    "cli": "agentnode.cli",
    "simulations": "agentnode.simulations",
    "chaos": "agentnode.chaos",
}
SUBPACKAGES = {"crdt", "consensus", "transport", "cli", "simulations", "chaos"}

# layer -> layers it may import (besides itself)
ALLOWED = {
    "crdt": set(),
    "consensus": set(),
    "transport": set(),
    "node": {"crdt", "consensus", "transport"},
    "simulations": {"node", "crdt", "consensus", "transport"},
    "chaos": {"node", "crdt", "consensus", "transport", "simulations"},
    "cli": {"node", "crdt", "consensus", "transport", "simulations", "chaos"},
}
# third-party packages confined to one room
CONFINED = {
    "aioquic": {"transport"},
    "zeroconf": {"transport"},
    "ssl": {"transport"},
    "pysyncobj": {"consensus"},
}
# a sans-I/O core (marked `__sans_io__ = True`, and all of crdt/) imports none of these
SANS_IO_BANNED = {"asyncio", "socket", "ssl", "threading", "select", "selectors", "time", "subprocess", "uvloop", "secrets", "uuid"}


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "agentnode":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "node"


def _sources() -> list[tuple[str, Path]]:
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((folder, path))
    return found


def _imports(tree: ast.AST, path: Path, folder: str) -> list[str]:
    names = []
    package = FOLDERS[folder].split(".")
    rel = path.relative_to(ROOT / folder).with_suffix("").parts
    here = package + list(rel[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


def _is_sans_io(tree: ast.Module, folder: str) -> bool:
    if folder == "crdt":
        return True
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__sans_io__" for t in stmt.targets):
            return True
    return False


SOURCES = _sources()


def test_there_is_code_to_check() -> None:
    assert len(SOURCES) > 10


@pytest.mark.parametrize(("folder", "path"), SOURCES, ids=[str(p.relative_to(ROOT)) for _, p in SOURCES])
def test_dependency_rules(folder: str, path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    sans_io = _is_sans_io(tree, folder)
    for name in _imports(tree, path, folder):
        top = name.split(".")[0]
        layer = _layer_of(name)
        if layer is not None and layer != folder and layer not in ALLOWED[folder]:
            problems.append(f"{folder}/ may not import {name} (layer {layer})")
        if top in CONFINED and folder not in CONFINED[top]:
            problems.append(f"{top} is confined to {sorted(CONFINED[top])}/, imported from {folder}/")
        if sans_io and top in SANS_IO_BANNED:
            problems.append(f"sans-I/O module imports {name}")
        if folder == "crdt" and layer is None and top not in sys.stdlib_module_names and top != "__future__":
            problems.append(f"crdt/ is standard library only, imports {name}")
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself must be able to fail."""
    tree = ast.parse("import asyncio\nfrom agentnode.node_thing import x\n")
    names = [n.names[0].name for n in tree.body if isinstance(n, ast.Import)]
    assert names == ["asyncio"]
    assert _layer_of("agentnode.runtime") == "node"
    assert _layer_of("agentnode.crdt.counters") == "crdt"
    assert "node" not in ALLOWED["transport"]

"""The layout of docs/architecture.md holds: who may import whom, and no import circle anywhere.

Every import counts, also those under ``TYPE_CHECKING`` and inside functions:
a circle that only the type checker sees is still a circle a reader must
untangle. The scan reads the source (``ast``), so it needs nothing installed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "controller_adapter", "doctor_common", "inspector", "notifier")

# what each part may import of the project (besides itself)
ALLOWED: dict[str, set[str]] = {
    "doctor_common": set(),
    "doctor_common.lab": {"agent", "controller_adapter", "inspector", "notifier"},  # the harness runs them all
    "controller_adapter": {"doctor_common"},
    "agent": {"doctor_common"},
    "notifier": {"doctor_common"},
    "inspector": {"doctor_common", "controller_adapter", "notifier"},
}
# the inspector's rooms, lowest first: a room imports only from rooms below it (and itself)
ROOMS = ("inspector.ha", "inspector.response", "inspector.southbound", "inspector.maintenance", "inspector.operator",
         "inspector")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "api" in path.relative_to(ROOT).parts[1:2]:  # generated stubs
                continue
            out[module_name(path)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The project modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` where only a.b is ours: take a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def part_of(module: str) -> str:
    return "doctor_common.lab" if module.startswith("doctor_common.lab") else module.split(".")[0]


def room_of(module: str) -> int:
    """The rank of the most specific room holding ``module`` (the daemon's top modules are the highest)."""
    matching = [r for r in ROOMS if module == r or module.startswith(r + ".")]
    assert matching, f"{module} is in no room"
    return ROOMS.index(max(matching, key=len))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_scan_sees_the_tree() -> None:
    """The scan finds the modules and the imports it judges (it would pass vacuously otherwise)."""
    g = graph()
    assert "inspector.core" in g and "notifier.etcd_log" in g and "doctor_common.lab.cloud" in g
    assert "inspector.response.responder" in g["inspector.core"]
    assert "doctor_common.etcd_guard" in g["notifier.etcd_log"]


def test_each_part_imports_only_what_it_may() -> None:
    """agent and notifier never import the inspector; no daemon imports the lab; the shared package imports no
    daemon."""
    bad = [f"{m} imports {t}" for m, targets in graph().items() for t in sorted(targets)
           if part_of(t) != part_of(m) and part_of(t) not in ALLOWED[part_of(m)]
           and not (part_of(m) == "doctor_common.lab" and part_of(t) == "doctor_common")]
    assert not bad, "forbidden imports (docs/architecture.md):\n" + "\n".join(bad)


def test_inspector_rooms_import_downwards() -> None:
    """operator → southbound → response → ha: a room never imports one above it, nor the daemon's top modules."""
    bad = [f"{m} imports {t}" for m, targets in graph().items() if m.startswith("inspector")
           for t in sorted(targets) if t.startswith("inspector") and room_of(t) > room_of(m)]
    assert not bad, "imports against the rooms' order (docs/architecture.md):\n" + "\n".join(bad)


def test_no_import_circle() -> None:
    """No circle among the project's modules, counting imports under TYPE_CHECKING and inside functions."""
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("edges, circular", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
])
def test_the_circle_finder_finds_circles(edges: dict[str, set[str]], circular: bool) -> None:
    """The checker itself: a circle of three is found, a diamond is not one."""
    assert (find_cycle(edges) is not None) is circular


def test_a_forbidden_import_is_seen(tmp_path: Path) -> None:
    """Imports under TYPE_CHECKING and inside functions are found too."""
    src = tmp_path / "probe.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from inspector.core import Inspector\n"
                   "def f():\n    import notifier.log\n")
    found = set(imports_of("notifier.probe", src, project_modules()))
    assert found == {"inspector.core", "notifier.log"}

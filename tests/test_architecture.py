"""The import rules of docs/architecture.md, read off the source: no import circle between modules, passes import
nothing from the engine, the engine names no pass type, the lowest layers import nothing above them.
(`--help`, `validate` and the config modules importing no torch is tests/test_cli_imports.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slimtune"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of slimtune that `name` imports, at any depth of the file (lazy imports count too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _circles() == []


def _importers(prefix: str, target: str) -> list[str]:
    return sorted(
        f"{m} -> {t}" for m, ts in GRAPH.items() if m.startswith(prefix) for t in ts if t.startswith(target)
    )


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("slimtune.passes", "slimtune.engine"),  # a pass runs anywhere: it gets a plain-data context
        ("slimtune.passes", "slimtune.cli"),
        ("slimtune.models", "slimtune.engine"),
        ("slimtune.models", "slimtune.evaluate"),
        ("slimtune.models", "slimtune.passes"),
        ("slimtune.data", "slimtune.engine"),
        ("slimtune.data", "slimtune.passes"),
        ("slimtune.config", "slimtune.engine"),
        ("slimtune.evaluate", "slimtune.engine"),
        ("slimtune.evaluate", "slimtune.passes"),
        ("slimtune.engine", "slimtune.cli"),
        ("slimtune.engine", "slimtune.systems."),  # the registry only: a system's own modules load when used
        ("slimtune.passes", "slimtune.systems"),
        ("slimtune.files", "slimtune."),
        ("slimtune.units", "slimtune."),
        ("slimtune.library_warnings", "slimtune."),
        ("slimtune.storage", "slimtune.config"),  # storage knows URLs and bytes, not configs, data or models
        ("slimtune.storage", "slimtune.data"),
        ("slimtune.storage", "slimtune.models"),
        ("slimtune.storage", "slimtune.engine"),
    ],
)
def test_layer_imports(layer, forbidden):
    assert _importers(layer, forbidden) == []


def test_the_engine_names_no_pass_type():
    """The engine reads what it needs from each pass's spec: a pass type name written in an engine module
    would be knowledge of one pass outside its folder."""
    from slimtune.passes.registry import all_passes

    names = set(all_passes())
    found = []
    for module, path in MODULES.items():
        if module.startswith("slimtune.engine"):
            found += [
                f"{module}: {s}" for s in re.findall(r"[\"']([A-Za-z]+)[\"']", path.read_text()) if s in names
            ]
    assert found == []


def test_every_pass_is_a_folder_with_its_spec_in_init():
    from slimtune.passes import registry

    for module in registry.PASS_MODULES:
        folder = PACKAGE.parent / Path(*module.split("."))
        assert (folder / "__init__.py").is_file(), module

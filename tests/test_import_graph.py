"""The package's imports point one way: no import cycle between modules, no import from a higher layer.

Every ``import`` statement of every module of ``so3krates_openmm`` is read with :mod:`ast`, including
the imports inside functions (deferred imports still make one module depend on another). The layers,
lowest first, are the table :data:`LAYERS`; a module may import from its own layer and the ones below.
The package's ``__init__`` is the public facade (it re-exports the main names lazily) and is not checked
as an importer; modules inside the package import from the module that defines a name, not from the facade.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "so3krates_openmm"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Layers, lowest first: (name, module prefixes). A prefix names a module or a whole subpackage.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("units, elements, files, options, process settings, tasks",
     ("units", "elements", "files", "memory", "options", "runtime", "tasks")),
    ("model", ("model",)),
    ("data", ("data",)),
    ("training and export", ("training", "export")),
    ("OpenMM glue and ASE", ("openmm_force", "python_force", "openmmml_potential", "ase_calculator")),
    ("md", ("md",)),
    ("workflows over md, labelling and training", ("active_learning",)),
    ("command line", ("cli", "commands")),
]
#: Names the package's own modules may import from the facade ``so3krates_openmm`` itself.
FACADE_NAMES_ALLOWED = {"__version__"}


@dataclass(frozen=True)
class Import:
    """One import of ``target`` (a module of the package) by ``source``, at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module name of an ``ImportFrom`` (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The package modules that ``module`` (file ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    shown = str(path.relative_to(PACKAGE_DIR.parent)) if path.is_relative_to(PACKAGE_DIR.parent) else str(path)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    targets.append(submodule)
                elif base == PACKAGE and alias.name not in FACADE_NAMES_ALLOWED:
                    targets.append(f"{PACKAGE} (the facade: import {alias.name!r} from its defining module)")
                else:
                    targets.append(base)
        for target in targets:
            if target == PACKAGE or target.startswith(f"{PACKAGE}.") or target.startswith(f"{PACKAGE} "):
                found.append(Import(module, target, shown, node.lineno))
    return found


def layer_of(module: str) -> int:
    """Index into :data:`LAYERS` of a module of the package; ``__main__`` modules are command line."""
    if module.endswith(".__main__"):
        return len(LAYERS) - 1
    relative = module.removeprefix(f"{PACKAGE}.")
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(relative == prefix or relative.startswith(f"{prefix}.") for prefix in prefixes):
            return index
    raise LookupError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def import_graph() -> list[Import]:
    """Every import between the package's modules (the facade ``__init__`` not counted as an importer)."""
    modules = package_modules()
    edges = []
    for module, path in modules.items():
        if module != PACKAGE:
            edges += [edge for edge in imports_of(module, path, modules) if edge.target != module]
    return edges


def find_cycles(edges: list[Import]) -> list[list[Import]]:
    """One cycle (as its imports) for each strongly connected group of modules (Tarjan's algorithm)."""
    graph: dict[str, list[Import]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in list(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """A path of imports that starts and ends at the same module of ``group``."""
    start = min(group)
    paths = {start: []}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for edge in graph.get(node, []):
            if edge.target == start:
                return paths[node] + [edge]
            if edge.target in group and edge.target not in paths:
                paths[edge.target] = paths[node] + [edge]
                frontier.append(edge.target)
    raise AssertionError(f"no cycle through {start}")


def test_every_module_is_in_a_layer():
    unplaced = []
    for module in package_modules():
        if module != PACKAGE:
            try:
                layer_of(module)
            except LookupError as error:
                unplaced.append(str(error))
    assert not unplaced, "\n".join(unplaced)


def test_no_import_from_a_higher_layer():
    upward = [
        f"{edge}  ({LAYERS[layer_of(edge.source)][0]} -> {LAYERS[layer_of(edge.target)][0]})"
        for edge in import_graph()
        if " " not in edge.target and edge.target != PACKAGE and layer_of(edge.target) > layer_of(edge.source)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_of_re_exports_from_the_facade():
    facade = [str(edge) for edge in import_graph() if edge.target.startswith(f"{PACKAGE} ")]
    assert not facade, "\n".join(facade)


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n\n".join("\n".join(map(str, cycle)) for cycle in cycles)


def test_the_check_finds_cycles_and_upward_imports(tmp_path):
    """The checker itself: a planted cycle and a planted upward import are reported with their lines."""
    edges = [
        Import(f"{PACKAGE}.model.a", f"{PACKAGE}.model.b", "a.py", 3),
        Import(f"{PACKAGE}.model.b", f"{PACKAGE}.model.a", "b.py", 7),
        Import(f"{PACKAGE}.model.b", f"{PACKAGE}.units", "b.py", 8),
    ]
    (cycle,) = find_cycles(edges)
    assert {str(edge) for edge in cycle} == {
        f"a.py:3: {PACKAGE}.model.a imports {PACKAGE}.model.b",
        f"b.py:7: {PACKAGE}.model.b imports {PACKAGE}.model.a",
    }
    assert layer_of(f"{PACKAGE}.md.runner") > layer_of(f"{PACKAGE}.data.labelling")
    assert layer_of(f"{PACKAGE}.training.__main__") == len(LAYERS) - 1
    with pytest.raises(LookupError, match="no layer"):
        layer_of(f"{PACKAGE}.somewhere_new")
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from so3krates_openmm.md import trajectory\n    from . import units\n")
    modules = {f"{PACKAGE}.md.trajectory": source, f"{PACKAGE}.units": source}
    assert [(edge.target, edge.line) for edge in imports_of(f"{PACKAGE}.data.x", source, modules)] == [
        (f"{PACKAGE}.md.trajectory", 2),
        (f"{PACKAGE}.data", 3),
    ]

"""The package's shape, read from its source: no import cycles, no upward imports, short modules.

Every `incident_fsm/**/*.py` is parsed with `ast`; nothing is imported. An
import inside a function or under `if TYPE_CHECKING:` counts like one at the
top of the module: each is a dependency a reader has to follow, and a cycle
closed by a function-level import is still a cycle in the design.

The layers, lowest first, are `LAYERS`: a module may import its own layer
or lower ones. `incident_fsm/__init__.py` is the public facade, above
everything, and `incident_fsm.testing` (the manual clock) is for tests only:
no library module imports either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "incident_fsm"
FACADE = "incident_fsm"
#: for tests of code that uses the library; never on the library's own import path
TEST_ONLY = "testing"
#: the top-level modules and packages of `incident_fsm`, lowest layer first
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 foundation: names, settings, time and small helpers every layer shares
    ("errors", "text", "vocabulary", "settings", "config", "clock", "timebox", "retry_after",
     "backoff", "extras", "models"),
    # 1 the state graph and the engine that fires it
    ("fsm",),
    # 2 the database
    ("persistence",),
    # 3 what the agent does with incidents: see, fix, tell, report
    ("detection", "remediation", "notify", "reports"),
    # 4 the agent that runs them together
    ("runtime",),
    # 5 the edges: the command line and the demo
    ("cli", "demo"),
)
MAX_LINES = 500
#: Modules over MAX_LINES when the limit was set, each to be split along its own
#: seams; an entry goes once its module is short (the test says so when it is).
KNOWN_LONG = {
    "incident_fsm/demo/simulator.py",
    "incident_fsm/persistence/journal.py",
}


# --- reading the source --------------------------------------------------------------


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """`incident_fsm/notify/channels/pam.py` -> `incident_fsm.notify.channels.pam`."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its `__init__.py`)."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _owner(name: str, known: Iterable[str]) -> str | None:
    """The module `name` lives in: itself, else its longest known prefix."""
    names = set(known)
    while name and name not in names:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(source: str, module: str, *, is_package: bool,
                     known: Iterable[str]) -> set[str]:
    """The package modules `source` (the text of `module`) imports, anywhere in it.

    Relative imports are resolved against `module`; `from pkg import name`
    is the submodule `pkg.name` when there is one, else `pkg` itself.
    Imports of anything outside `known` (the standard library, third
    parties) are left out, and so is `module` itself.
    """
    known = set(known)
    top = module.partition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(_owner(alias.name, known) for alias in node.names
                         if alias.name.partition(".")[0] == top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.partition(".")[0] != top:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else _owner(base, known))
    return {name for name in found if name is not None and name != module}


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name,
                               is_package=path.name == "__init__.py", known=modules)
        for name, path in modules.items()
    }


# --- the rules, as functions of a graph ------------------------------------------------


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts (`[a, b, a]`), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int | None:
    """The layer of `module` by its top-level name (`incident_fsm.notify.x` -> notify's)."""
    top = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(layers) if top in names), None)


def layering_violations(graph: Mapping[str, Iterable[str]],
                        layers: tuple[tuple[str, ...], ...] = LAYERS, *,
                        facade: str = FACADE, test_only: str = TEST_ONLY) -> list[str]:
    """Every import that goes up a layer, reaches the facade or the test helpers, or is unplaced."""
    test_module = f"{facade}.{test_only}"
    def is_test_only(name: str) -> bool:
        return name == test_module or name.startswith(f"{test_module}.")

    problems = []
    for module in sorted(graph):
        if module == facade:
            continue  # the public facade re-exports from every layer
        for imported in sorted(graph[module]):
            mine, theirs = layer_of(module, layers), layer_of(imported, layers)
            if imported == facade:
                problems.append(f"{module} imports the public facade {facade}")
            elif is_test_only(imported):
                problems.append(f"{module} imports {imported}, which is for tests only")
            elif is_test_only(module):
                continue  # the test helpers may lean on the library below them
            elif mine is None or theirs is None:
                problems.append(f"{module} -> {imported}: not both in a layer")
            elif theirs > mine:
                problems.append(f"{module} (layer {mine}) imports {imported} (layer {theirs})")
    return problems


def top_level_names(root: Path = PACKAGE) -> set[str]:
    """The package's top-level modules and subpackages, by name (the facade left out)."""
    modules = {p.stem for p in root.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def long_modules(root: Path = PACKAGE, limit: int = MAX_LINES) -> set[str]:
    """Paths (from the repository root) of the package's modules over `limit` lines."""
    return {
        path.relative_to(root.parent).as_posix()
        for path in root.rglob("*.py")
        if len(path.read_text(encoding="utf-8").splitlines()) > limit
    }


# --- the package as it is --------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = import_graph(package_modules())
    assert len(found) > 20, f"only {len(found)} modules found under {PACKAGE}"
    return found


def test_no_module_imports_another_in_a_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_no_module_imports_a_layer_above_its_own(graph: dict[str, set[str]]) -> None:
    problems = layering_violations(graph)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_every_top_level_module_is_placed_in_exactly_one_layer() -> None:
    placed = [name for names in LAYERS for name in names]
    twice = sorted({name for name in placed if placed.count(name) > 1})
    assert not twice, f"in more than one layer: {twice}"
    existing = top_level_names()
    unplaced = sorted(existing - set(placed) - {TEST_ONLY})
    assert not unplaced, f"place each in one of LAYERS (tests/test_architecture.py): {unplaced}"
    gone = sorted(set(placed) - existing)
    assert not gone, f"LAYERS names modules that do not exist: {gone}"
    assert TEST_ONLY in existing and TEST_ONLY not in placed


def test_no_module_is_over_the_line_limit() -> None:
    long = long_modules()
    new = sorted(long - KNOWN_LONG)
    assert not new, f"over {MAX_LINES} lines: split along its seams: {new}"
    fixed = sorted(KNOWN_LONG - long)
    assert not fixed, f"now at most {MAX_LINES} lines: remove from KNOWN_LONG: {fixed}"


# --- the checks themselves can fail ------------------------------------------------------


def test_imports_are_found_at_every_depth_and_resolved_to_modules() -> None:
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "pkg.e", "pkg.f"}
    source = '''
from typing import TYPE_CHECKING
import os
from pkg.a import thing
from . import d
from .. import b
from ..sub import c as renamed
import pkg.e.missing
if TYPE_CHECKING:
    from pkg import f

def later() -> None:
    from pkg.sub import helper
'''
    found = imported_modules(source, "pkg.sub.c", is_package=False, known=known)
    # pkg.sub.c itself (through `from ..sub import c`) is not an edge.
    assert found == {"pkg.a", "pkg.sub.d", "pkg.b", "pkg.e", "pkg.f", "pkg.sub"}
    inside = imported_modules("from . import c\nfrom .d import x\n", "pkg.sub",
                              is_package=True, known=known)
    assert inside == {"pkg.sub.c", "pkg.sub.d"}


def test_the_cycle_finder_reports_the_cycle_path() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"y"}}) == ["y", "z", "y"]


def test_the_layer_checker_reports_upward_facade_test_and_unplaced_imports() -> None:
    layers = (("low",), ("mid",), ("high",))
    graph = {
        "p": {"p.low", "p.high.x", "p.testing"},  # the facade may import anything
        "p.low": {"p.low.inner"},
        "p.low.inner": set(),
        "p.mid": {"p.low", "p.mid.other"},
        "p.mid.other": {"p.high.x"},
        "p.high.x": {"p.mid", "p"},
        "p.loose": {"p.low"},
        "p.testing": {"p.low"},
        "p.low.uses_tests": {"p.testing"},
    }
    assert layering_violations(graph, layers, facade="p", test_only="testing") == [
        "p.high.x imports the public facade p",
        "p.loose -> p.low: not both in a layer",
        "p.low.uses_tests imports p.testing, which is for tests only",
        "p.mid.other (layer 1) imports p.high.x (layer 2)",
    ]

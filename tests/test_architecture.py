"""The package's shape, read from its source: no import cycles, no upward imports, short modules.

Every `incident_fsm/**/*.py` is parsed with `ast`; nothing is imported. An
import inside a function or under `if TYPE_CHECKING:` counts like one at the
top of the module: each is a dependency a reader has to follow, and a cycle
closed by a function-level import is still a cycle in the design.

The layers, lowest first, are `LAYERS`: a module may import its own layer
or lower ones. `incident_fsm/__init__.py` is the public facade, above
everything, and `incident_fsm.testing` (the manual clock) is for tests only:
no library module imports either.

The README's architecture section is held to the tree it describes: every
package is in its module tree, and every `incident_fsm/...` path and
`incident_fsm.x.y` name the README mentions exists.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "incident_fsm"
README = ROOT / "README.md"
FACADE = "incident_fsm"
#: for tests of code that uses the library; never on the library's own import path
TEST_ONLY = "testing"
#: the top-level modules and packages of `incident_fsm`, lowest layer first
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 foundation: names, settings, time and small helpers every layer shares
    ("errors", "text", "vocabulary", "settings", "config", "clock", "timebox", "retry_after",
     "backoff", "extras", "models", "logfail", "http_body", "about", "lazy"),
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
KNOWN_LONG: set[str] = set()


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


def top_level_definitions(source: str) -> set[str]:
    """The names a module defines or imports at its top (under `if` too), and its `__all__`."""
    names: set[str] = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if "__all__" in names and isinstance(node.value, ast.List | ast.Tuple):
                names.update(e.value for e in node.value.elts
                             if isinstance(e, ast.Constant) and isinstance(e.value, str))
        elif isinstance(node, ast.If):
            body.extend(node.body + node.orelse)
    return names


def package_directories(root: Path = PACKAGE) -> set[str]:
    """Every package under `root` as a path with a trailing slash, e.g. `notify/channels/`."""
    return {f"{p.parent.relative_to(root).as_posix()}/"
            for p in root.rglob("__init__.py") if p.parent != root}


# --- reading the README ------------------------------------------------------------------

_TREE_LINE = re.compile(r"^((?:│   |    )*)(?:├── |└── )(\S+)")


def readme_section(text: str, title: str) -> str:
    """The body of the `## title` section of a Markdown text ('' if there is none)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def tree_entries(block: str) -> list[str]:
    """The paths a `tree`-style drawing lists, relative to its root (directories end in /)."""
    entries: list[str] = []
    folders: list[str] = []
    for line in block.splitlines()[1:]:
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        depth = len(match.group(1)) // 4
        name = match.group(2)
        del folders[depth:]
        entries.append("".join(folders) + name)
        if name.endswith("/"):
            folders.append(name)
    return entries


def module_tree(readme: str) -> list[str]:
    """The entries of the README's drawing of `incident_fsm/`, in its architecture section."""
    section = readme_section(readme, "Architecture")
    match = re.search(r"```text\n(incident_fsm/\n.*?)```", section, re.S)
    assert match, "README: no ```text tree of incident_fsm/ under ## Architecture"
    return tree_entries(match.group(1))


def readme_paths(readme: str) -> set[str]:
    """Every `incident_fsm/...` path the README mentions."""
    return {m.rstrip(".,") for m in re.findall(r"(?<![\w.])incident_fsm/[\w./]*", readme)}


def readme_dotted_names(readme: str) -> set[str]:
    """Every `incident_fsm.x.y` name the README mentions (file names like `./incident_fsm.db`
    are left out by the character before them)."""
    return set(re.findall(r"(?<![\w/.])incident_fsm(?:\.[A-Za-z_]\w*)+", readme))


def unknown_dotted_names(names: Iterable[str], modules: Mapping[str, Path]) -> list[str]:
    """The names that are neither a module nor something a module defines at its top."""
    unknown = []
    for name in sorted(names):
        module = _owner(name, modules)
        rest = name.removeprefix(module or "").lstrip(".").split(".")
        if module is None or (rest != [""] and rest[0] not in top_level_definitions(
                modules[module].read_text(encoding="utf-8"))):
            unknown.append(name)
    return unknown


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


def test_the_readme_tree_names_every_package_and_only_what_exists() -> None:
    entries = module_tree(README.read_text(encoding="utf-8"))
    missing = sorted(package_directories() - set(entries))
    assert not missing, f"packages missing from the README's module tree: {missing}"
    gone = sorted(e for e in entries if not (PACKAGE / e).exists())
    assert not gone, f"the README's module tree lists what does not exist: {gone}"


def test_every_package_path_and_name_in_the_readme_exists() -> None:
    readme = README.read_text(encoding="utf-8")
    paths = readme_paths(readme)
    assert paths, "no incident_fsm/ path found in README.md"
    gone = sorted(p for p in paths if not (ROOT / p).exists())
    assert not gone, f"README.md names paths that do not exist: {gone}"
    names = readme_dotted_names(readme)
    assert names, "no incident_fsm.x name found in README.md"
    unknown = unknown_dotted_names(names, package_modules())
    assert not unknown, f"README.md names modules or attributes that do not exist: {unknown}"


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


def test_the_readme_readers_find_tree_entries_paths_and_stale_names(tmp_path: Path) -> None:
    readme = """# x

## Architecture

```text
incident_fsm/
├── __init__.py      the facade
├── fsm/             the machine
│   ├── graph.py     the graph
│   └── sub/         nested
│       └── deep.py  deepest
└── text.py          text
```

Old: `incident_fsm/machine.py`, `incident_fsm.journal`, `incident_fsm.text.one_line`,
`sqlite:///incident_fsm.db` and `./incident_fsm.journal` are file names.

## Next
"""
    assert module_tree(readme) == ["__init__.py", "fsm/", "fsm/graph.py", "fsm/sub/",
                                   "fsm/sub/deep.py", "text.py"]
    assert readme_paths(readme) == {"incident_fsm/", "incident_fsm/machine.py"}
    assert readme_dotted_names(readme) == {"incident_fsm.journal", "incident_fsm.text.one_line"}
    (tmp_path / "incident_fsm").mkdir()
    (tmp_path / "incident_fsm" / "__init__.py").write_text("from typing import Any\n")
    (tmp_path / "incident_fsm" / "text.py").write_text("def one_line() -> None: ...\n")
    modules = package_modules(tmp_path / "incident_fsm")
    names = {"incident_fsm.journal", "incident_fsm.text.one_line", "incident_fsm.text.gone",
             "incident_fsm.Any", "incident_fsm.text"}
    assert unknown_dotted_names(names, modules) == ["incident_fsm.journal",
                                                    "incident_fsm.text.gone"]

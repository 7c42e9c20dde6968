"""The package's imports go one way: down the floors of docs/development.md's picture
(ops -> stages -> budget -> state -> config -> files, integration), and never round a
circle (function-level imports included: they are circles too, only deferred). Read with
ast; nothing is imported."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scribeflow"
# The floors, lowest first: a module imports from its own floor or the floors below.
FLOORS = {"files": 0, "figures": 0, "integration": 0, "config": 1, "state": 2, "budget": 3, "stages": 4, "ops": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module (dotted, under scribeflow; "" is the package itself) and the modules of
    the package it imports."""
    modules = {module_name(p) for p in package.rglob("*.py")}

    def resolve(name: str) -> str | None:
        name = name.removeprefix("scribeflow").removeprefix(".")
        while name not in modules and "." in name:
            name = name.rpartition(".")[0]
        return name if name in modules else None

    graph = {}
    for path in package.rglob("*.py"):
        me = module_name(path)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: a relative import (write scribeflow.… in full, as everywhere else)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "scribeflow":
                for alias in node.names:  # `from scribeflow.config import settings`: the module settings
                    deps.add(resolve(f"{node.module}.{alias.name}"))
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "scribeflow"}
        graph[me] = deps - {None, me}
    return graph


def floor(module: str) -> int:
    return FLOORS.get(module.split(".")[0], 0)


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if floor(d) > floor(m))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40 and "state.ledger" in graph["budget.monitor"]  # the graph is read, not empty
    assert circles(graph) == []


def test_imports_go_down_the_floors():
    graph = import_graph()
    assert set(FLOORS) >= {m.split(".")[0] for m in graph if m}  # every subpackage has its floor
    assert upward(graph) == []


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    for name, text in {"__init__.py": "", "state/__init__.py": "", "ops/__init__.py": "", "ops/cli.py": "",
                       "state/ledger.py": "from scribeflow.ops.cli import main\n"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert upward(import_graph(tmp_path)) == ["state.ledger -> ops.cli"]
    finally:
        PACKAGE = saved


def test_the_development_guide_names_every_module():
    guide = (PACKAGE.parents[1] / "docs" / "development.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", guide, re.M))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert modules - listed == set(), "modules missing from docs/development.md's table"
    assert listed - modules - {"__init__.py"} == set(), "the table names modules that are gone"

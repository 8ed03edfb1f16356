"""The shape of the package, checked from its source: imports go one way (no cycle), click
stays in the CLI, and SQL text stays in the store."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: never executed, so no edge of the import graph."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports, at its top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package that holds this module
                base = name.split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(submodules)  # `from package import module` runs that module
            if len(submodules) < len(node.names):  # and the package, for any other name
                found.add(module)
    return {m for m in found if m in MODULES and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_form_no_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["monitor.app"] >= {"monitor.scanner", "monitor.store"}  # the walk works
    assert _cycles(graph) == []


def test_collectors_do_not_reach_up():
    """Collectors are the bottom of the pipeline: what they need from the stages above (the
    host filter, the catalogue) they receive as arguments."""
    below = {"monitor.observation", "monitor.ids", "monitor.errors", "monitor.accel"}
    reached = {
        (name, imported)
        for name, path in MODULES.items()
        if name.startswith("monitor.collectors")
        for imported in _imports(name, path)
        if not imported.startswith("monitor.collectors") and imported not in below
    }
    assert reached == set()


def test_click_only_in_the_cli():
    users = {
        name
        for name, path in MODULES.items()
        if re.search(r"^\s*(import click|from click\b)", path.read_text(encoding="utf-8"), re.M)
    }
    assert users and all(name.startswith("monitor.cli") for name in users), sorted(users)


#: SQL statements as they are written: upper-case keywords that start a statement or clause
SQL = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT (OR \w+ )?INTO|UPDATE \w+ SET|DELETE FROM|"
    r"(CREATE|DROP|ALTER) (TABLE|INDEX|VIEW|TRIGGER)|PRAGMA \w+|BEGIN (IMMEDIATE|EXCLUSIVE))\b",
    re.S,
)
STORE = ("monitor.store",)  # the store module, or a package of that name if it becomes one


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal, f-strings with their constant parts joined."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "?" for v in node.values]
            found.append((node.lineno, "".join(map(str, parts))))
    return found


def test_the_sql_finder_finds_sql():
    tree = ast.parse(
        'q = f"SELECT id FROM {t} WHERE x = ?"\nw = "DELETE FROM hits"\nd = "Select a file"'
    )
    assert {line for line, s in _strings(tree) if SQL.search(s)} == {1, 2}


def test_no_sql_outside_the_store():
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text.strip()[:60]}"
        for name, path in MODULES.items()
        if not name.startswith(STORE)
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
        if SQL.search(text)
    ]
    assert outside == []


def test_hypothesis_is_derandomised_under_ci():
    """CI draws the same examples every run (tests/conftest.py), so its results repeat."""
    code = "import tests.conftest, hypothesis; print(hypothesis.settings.default.derandomize)"
    env = {**os.environ, "CI": "true"}
    root = PACKAGE.parent
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"

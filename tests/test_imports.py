"""The service's modules import each other without a circle, and each imports alone.

A circle works or fails by which module happens to be imported first (`import
api.front_door` in a fresh interpreter failed while the app, importing api.problems first,
worked), so it is refused outright. The graph is read from the source with `ast`: every
`import` and `from … import` in the service packages and worker.py that names a module of
the project, relative ones included, and function-level imports too (a late import is still
a dependency, only a hidden one); those under `if TYPE_CHECKING:` are left out, as they
never run. Importing `a.b.c` also runs the `__init__` of `a` and `a.b`, so those count too,
except the importer's own packages (already being imported when it runs)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_compose import NOT_IN_IMAGE, ROOT, _installed_packages

SERVICE = sorted(_installed_packages() - NOT_IN_IMAGE)


def _module_files() -> dict[str, Path]:
    """Dotted name -> file, for every module of the service (a package is its __init__)."""
    files = {"worker": ROOT / "worker.py"}
    for package in SERVICE:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in `node`, at any depth, but those only a type checker runs."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                found += _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            found += _import_nodes(child)
    return found


def _imported_names(name: str, path: Path) -> list[tuple[str, int]]:
    """(absolute dotted name, line) for each name `name` imports: for `from x import y`,
    both `x.y` (a module, if it is one) and `x`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: list[tuple[str, int]] = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
            continue
        if node.level:
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        names.append((module, node.lineno))
        names += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def import_graph() -> dict[str, dict[str, tuple[Path, int]]]:
    """module -> {module of the service it imports: (file, line of the first such import)}."""
    files = _module_files()
    graph: dict[str, dict[str, tuple[Path, int]]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for imported, line in _imported_names(name, path):
            parts = imported.split(".")
            for n in range(len(parts), 0, -1):  # the module itself and the packages above it
                target = ".".join(parts[:n])
                own_package = name.startswith(target + ".")
                if target in files and target != name and not own_package:
                    edges.setdefault(target, (path, line))
    return graph


def cycles(graph: dict[str, dict[str, tuple[Path, int]]]) -> list[list[str]]:
    """The circles a depth-first walk meets (each once, whichever module it starts at)."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                cycle = path[path.index(target):]
                first = cycle.index(min(cycle))
                key = tuple(cycle[first:] + cycle[:first])
                if key not in seen:
                    seen.add(key)
                    found.append([*key, key[0]])
            elif target not in done:
                walk(target, [*path, target])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            walk(start, [start])
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, tuple[Path, int]]]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        path, line = graph[a][b]
        steps.append(f"  {a} -> {b}  ({path.relative_to(ROOT)}:{line})")
    return "\n".join(steps)


def test_the_walk_sees_what_python_imports(tmp_path: Path) -> None:
    """The reader itself: relative, function-level, `from package import module`, and
    TYPE_CHECKING imports, on known lines of the service."""
    graph = import_graph()
    assert "api.problems" in graph["api.front_door"]  # from api import problems
    assert "api.front_door" in graph["api.app"]  # from api.front_door import …
    assert "worker" in graph and graph["worker"]
    assert cycles({"a": {"b": (ROOT, 1)}, "b": {"c": (ROOT, 2)}, "c": {"a": (ROOT, 3)}}) == \
        [["a", "b", "c", "a"]]
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from api import app\nelse:\n    from . import deps\n"
              "def f():\n    from ..domain import errors\n")
    scratch = tmp_path / "scratch.py"
    scratch.write_text(source)
    names = {n for n, _ in _imported_names("api.routers.scratch", scratch)}
    assert {"api.routers.deps", "api.domain.errors"} <= names and "api.app" not in names


def test_the_service_modules_import_each_other_without_a_circle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import circles (each line: importer -> imported, where):\n" + \
        "\n\n".join(describe(c, graph) for c in found)


def test_the_service_imports_nothing_of_the_projects_test_tooling() -> None:
    """tests/, benchmarks/ and faults/ (the test harness among them) are not in the image."""
    tooling = {p.parent.name for p in ROOT.glob("*/__init__.py")} - set(SERVICE)
    assert {"tests", "faults", "benchmarks"} <= tooling
    files = _module_files()
    wrong = [f"{files[m].relative_to(ROOT)}:{line} imports {name}"
             for m in files for name, line in _imported_names(m, files[m])
             if name.split(".")[0] in tooling]
    assert not wrong, wrong


@pytest.mark.parametrize("module", ["api.front_door", "api.problems", "api.app",
                                    "worksession.dev", "worksession.cli"])
def test_a_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

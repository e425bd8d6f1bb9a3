"""Architecture rules: the domain package never imports Airflow; DAG files keep heavy imports inside tasks."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "lancedb", "great_expectations", "mlflow", "sentence_transformers", "trl", "peft",
         "datasets", "dvc", "sklearn", "evaluate"}


def imported_roots(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    roots: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_include_never_imports_airflow() -> None:
    files = list((REPO / "include").rglob("*.py"))
    assert files
    offenders = [str(f.relative_to(REPO)) for f in files if "airflow" in imported_roots(f)]
    assert offenders == []


def test_dags_have_no_top_level_heavy_imports() -> None:
    for dag_file in (REPO / "dags").glob("*.py"):
        assert imported_roots(dag_file, top_level_only=True) & HEAVY == set(), dag_file.name


def test_import_scanner_sees_nested_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from airflow.sdk import task\n")
    assert "airflow" in imported_roots(sample)
    assert "airflow" not in imported_roots(sample, top_level_only=True)


# --------------------------------------------------------------------------- import cycles

PACKAGES = (REPO / "include" / "evertune", REPO / "plugins" / "evertune_airflow")


def package_modules(packages: tuple[Path, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the given package folders."""
    modules = {}
    for package in packages:
        for path in package.rglob("*.py"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (module, function, class, try/if), except under ``if TYPE_CHECKING:``,
    which never runs."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(packages: tuple[Path, ...]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, at module level or inside functions.

    ``from pkg import sub`` points at the submodule ``pkg.sub`` when there is one; relative imports are resolved.
    """
    modules = package_modules(packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {_known(alias.name, modules) for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets |= {_known(f"{base}.{alias.name}", modules) for alias in node.names}
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None`` when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_first_party_imports_have_no_cycle() -> None:
    graph = import_graph(PACKAGES)
    assert "evertune.tuning.train" in graph and "evertune_airflow.stack" in graph
    assert "evertune.tuning.registry" in graph["evertune.tuning.promotion"]  # function-level imports count
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("import os\n\n\ndef f():\n    from .sub.c import g\n    return g\n")
    (package / "sub" / "c.py").write_text("def g():\n    from ..a import b\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg import a\nelse:\n    import pkg.sub.c\n"
    )
    graph = import_graph((package,))
    assert graph["pkg.d"] == {"pkg.sub.c"}  # a TYPE_CHECKING import never runs: no edge
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (package / "sub" / "c.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph((package,))) is None

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

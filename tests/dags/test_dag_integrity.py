"""DAG integrity and policy: every DAG file imports cleanly, fast, without heavy imports, and follows house policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
PARSE_BUDGET_S = 2.0


def probe(path: Path, airflow_home: Path) -> dict:
    """Parse one DAG file in a fresh interpreter (so sys.modules starts clean)."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("dag_probe.py")), str(path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    home = tmp_path_factory.mktemp("airflow-home")
    return {path.stem: probe(path, home) for path in DAG_FILES}


def test_expected_dags_exist() -> None:
    assert {p.stem for p in DAG_FILES} >= {"refresh_knowledge_base"}


@pytest.mark.parametrize("stem", [p.stem for p in DAG_FILES])
def test_dag_file_imports_without_errors(probes: dict[str, dict], stem: str) -> None:
    result = probes[stem]
    assert result["errors"] == {}
    assert result["dags"], f"{stem}.py defines no DAG"


@pytest.mark.parametrize("stem", [p.stem for p in DAG_FILES])
def test_dag_file_parses_fast(probes: dict[str, dict], stem: str) -> None:
    assert probes[stem]["seconds"] < PARSE_BUDGET_S, f"{stem}.py took {probes[stem]['seconds']:.2f}s to parse"


@pytest.mark.parametrize("stem", [p.stem for p in DAG_FILES])
def test_dag_file_has_no_heavy_imports(probes: dict[str, dict], stem: str) -> None:
    assert probes[stem]["heavy"] == [], f"parsing {stem}.py imported {probes[stem]['heavy']}"


@pytest.mark.parametrize("stem", [p.stem for p in DAG_FILES])
def test_dag_policy(probes: dict[str, dict], stem: str) -> None:
    dags = probes[stem]["dags"]
    assert list(dags) == [stem], "one DAG per file, and dag_id must equal the file stem"
    dag = dags[stem]
    assert dag["tags"], "DAG needs tags"
    assert dag["catchup"] is False
    for task_id, task in dag["tasks"].items():
        assert task["retries"] is not None and task["retries"] >= 0, f"{task_id}: retries must be set"
        assert task["owner"] == "evertune", f"{task_id}: owner must come from DEFAULT_ARGS"
        assert "_" in task_id or task_id.isidentifier(), task_id


#: Which DAG runs which pipeline of the step registry.
PIPELINE_DAGS = {"refresh": "refresh_knowledge_base", "tune": "tune_model"}


@pytest.mark.parametrize(("pipeline", "dag_id"), sorted(PIPELINE_DAGS.items()))
def test_dag_runs_every_registry_step_with_its_upstream(probes: dict[str, dict], pipeline: str, dag_id: str) -> None:
    from evertune.pipeline import steps_of, upstream_steps

    tasks = probes[dag_id]["dags"][dag_id]["tasks"]
    registry_ids = {step.task_id for step in steps_of(pipeline)}
    for step in steps_of(pipeline):
        assert step.task_id in tasks, f"{dag_id} lacks the registry step {step.task_id}"
        expected = sorted(source.task_id for source in upstream_steps(step))
        # Among registry steps the DAG wires exactly the registry's upstream; other tasks (the approval gate in
        # front of `promote`) may only hold a step back, never feed it a summary.
        wired = sorted(task for task in tasks[step.task_id]["upstream"] if task in registry_ids)
        assert wired == expected, step.task_id


def test_probe_detects_heavy_imports(tmp_path: Path) -> None:
    """The heavy-import check can fail: a DAG importing mlflow at top level is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text(
        "import pendulum\nimport mlflow\nfrom airflow.sdk import dag, task\n"
        "@dag(schedule=None, start_date=pendulum.datetime(2026,1,1,tz='UTC'), tags=['x'])\n"
        "def bad_dag():\n    @task\n    def noop():\n        return 1\n    noop()\nbad_dag()\n"
    )
    result = probe(bad, tmp_path / "home")
    assert "mlflow" in result["heavy"]

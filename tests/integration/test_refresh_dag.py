"""refresh_knowledge_base under real Airflow: a backfill under the real scheduler must give exactly the knowledge
base and data versions of the nights run one after the other; re-running a day (``airflow dags test``) changes
nothing.

The nights' reference is the registry's same steps without Airflow, all five days in one ``evertune refresh``
process (the libraries and the embedder load once: ~50 s instead of ~160 s for five ``airflow dags test``
runs). That the DAG gives the same state is what the backfill and the re-run check.

Real Airflow, real GX, real DVC with a local remote, real LanceDB and the real MiniLM embedder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evertune.config import load_params

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]
pytestmark = pytest.mark.slow


def _home_env(home: Path) -> dict[str, str]:
    from evertune_airflow.stack_env import airflow_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "EVERTUNE_", "MLFLOW_"))}
    env["EVERTUNE_HOME"] = str(home)
    if "EVERTUNE_MODELS_DIR" in os.environ:
        env["EVERTUNE_MODELS_DIR"] = os.environ["EVERTUNE_MODELS_DIR"]
    old = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        stack_env = airflow_env()
    finally:
        os.environ.clear()
        os.environ.update(old)
    # `airflow dags test` runs in-process: no MLflow server needed, the state folder's SQLite is enough.
    stack_env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **stack_env}


def _generate(home: Path) -> None:
    params = load_params()
    subprocess.run(
        [sys.executable, "-m", "evertune", "demo-data", "--out", str(home / "landing"), "--days", "6"],
        env={**os.environ, "EVERTUNE_HOME": str(home)}, check=True, capture_output=True,
    )
    assert (home / "landing" / f"ds={params.demo.start_date}").is_dir()


def _dags_test(env: dict[str, str], day: str) -> None:
    """An on-time run for interval ``day``: it starts when the interval ends, the next midnight."""
    import datetime as dt

    run_after = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", "refresh_knowledge_base", run_after],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert "nothing to refresh" not in proc.stdout + proc.stderr, f"interval {day} was skipped: {tail}"


def _table_state(home: Path) -> dict:
    import lancedb

    from evertune.kb.index import table_name_for

    params = load_params()
    db = lancedb.connect(str(home / "lancedb"))
    table = db.open_table(table_name_for(params))
    published = table.tags.list()[params.index.publish_tag]["version"]
    table.checkout(published)
    rows = table.to_arrow().select(["chunk_id", "content_hash", "doc_id"]).to_pylist()
    return {"published_rows": sorted((r["chunk_id"], r["content_hash"]) for r in rows)}


def _data_versions(home: Path) -> dict[str, str]:
    versions = {}
    for day in DAYS:
        dvc_file = home / "data-repo" / "validated" / f"ds={day}.dvc"
        versions[day] = dvc_file.read_text()
    return versions


@pytest.fixture(scope="module")
def on_time(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The five nights in order, without Airflow (one process); the Airflow DB is migrated for the re-run."""
    home = tmp_path_factory.mktemp("on-time")
    env = _home_env(home)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    _generate(home)
    proc = subprocess.run([sys.executable, "-m", "evertune", "refresh", "all", "--interval", *DAYS], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"home": home, "env": env, "table": _table_state(home), "data": _data_versions(home)}


def test_bad_records_are_quarantined_with_reasons(on_time: dict) -> None:
    home = on_time["home"]
    for day in DAYS:
        manifest = json.loads((home / "landing" / f"ds={day}" / "_manifest.json").read_text())
        expected = {(bad["record_ref"], bad["reason"]) for bad in manifest["bad_records"]}
        quarantine = pd.read_parquet(home / "data-repo" / "validated" / f"ds={day}" / "quarantine.parquet")
        assert set(zip(quarantine["record_ref"], quarantine["reason"], strict=True)) == expected, day


def test_rerunning_a_day_changes_nothing(on_time: dict) -> None:
    home = on_time["home"]
    git_log_before = subprocess.run(["git", "log", "--oneline"], cwd=home / "data-repo", capture_output=True,
                                    text=True, check=True).stdout
    _dags_test(on_time["env"], DAYS[2])
    assert _table_state(home) == on_time["table"]
    assert _data_versions(home) == on_time["data"]
    git_log_after = subprocess.run(["git", "log", "--oneline"], cwd=home / "data-repo", capture_output=True,
                                   text=True, check=True).stdout
    assert git_log_after == git_log_before, "a re-run must not create a new data version"


def test_backfill_under_the_scheduler_equals_on_time_runs(
    on_time: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_ports: dict[str, int]
) -> None:
    from evertune.settings import get_settings
    from evertune_airflow import stack_client, stack_control, stack_env, stack_processes

    home = tmp_path / "backfill"
    home.mkdir()
    _generate(home)
    monkeypatch.setenv("EVERTUNE_HOME", str(home))
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = get_settings()
    stack_control.up(settings)
    try:
        with stack_client.AirflowClient.connect(settings) as client:
            client.wait_for_dag("refresh_knowledge_base", timeout=300)
            client.unpause("refresh_knowledge_base")
            created = client.backfill("refresh_knowledge_base", DAYS[0], DAYS[-1], max_active_runs=1)
            try:
                runs = client.wait_for_runs("refresh_knowledge_base", created["run_ids"], timeout=1500, poll=5)
            except stack_env.StackError as exc:
                pytest.fail(f"{exc}\n--- scheduler log:\n{stack_processes.log_tail(settings, 'scheduler', 80)}")
            assert [r["state"] for r in runs] == ["success"] * len(DAYS), runs
            # Each run's verdict is its run note (teardown `note_run`, written through the REST API).
            notes = [client.dag_run("refresh_knowledge_base", r["dag_run_id"])["note"] or "" for r in runs]
            assert all(note.startswith(("published ", "production already at ")) for note in notes), notes
    finally:
        stack_processes.stop(settings)
    assert _table_state(home) == on_time["table"]
    assert _data_versions(home) == on_time["data"]

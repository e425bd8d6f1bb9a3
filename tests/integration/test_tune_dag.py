"""tune_model end to end under real Airflow (``airflow dags test``) with the tiny model.

Real GX, DVC, LanceDB and MLflow (SQLite); the tiny random model keeps training and generation fast. The run
must promote a first champion that loads offline from the registry; an identical second run must skip
training and register nothing new.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DAYS = ["2026-11-01", "2026-11-02"]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned_home(tmp_path_factory: pytest.TempPathFactory, tiny_dag_env) -> dict:
    from evertune_airflow.stack_env import airflow_env

    home = tmp_path_factory.mktemp("tune-home")
    base = tiny_dag_env(home)
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(base)
    try:
        env = {**base, **airflow_env()}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env.pop("MLFLOW_TRACKING_URI")  # in-process runs use the state folder's SQLite store
    run = {"env": env, "check": True, "capture_output": True, "text": True, "timeout": 900}
    subprocess.run([AIRFLOW, "db", "migrate"], **run)
    subprocess.run([sys.executable, "-m", "evertune", "demo-data", "--days", str(len(DAYS))], **run)
    subprocess.run([sys.executable, "-m", "evertune", "refresh", "all", "--interval", *DAYS], **run)
    return {"home": home, "env": env}


def dags_test(env: dict[str, str], day: str) -> str:
    proc = subprocess.run([AIRFLOW, "dags", "test", "tune_model", day], env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def registry(home: Path):
    from mlflow.tracking import MlflowClient

    # Explicit URIs: other tests in the session may have pointed MLflow's process-wide registry elsewhere.
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_release(client, champion) -> None:
    """The champion's manifest verifies, names this run, and the prompt ``production`` alias is its prompt."""
    from evertune.tuning.manifest import read_manifest

    manifest = read_manifest(client, "evertune-assistant", champion.version).manifest
    assert manifest["model"] == {"name": "evertune-assistant", "version": int(champion.version)}
    assert manifest["gate"]["action"] == "promote" and manifest["airflow"]["run_id"] == champion.tags["airflow.run_id"]
    assert manifest["base_model"]["weights_sha256"] and manifest["cost"] and manifest["git_sha"]
    prompt = client.load_prompt(f"prompts:/{manifest['prompt']['name']}@production", cache_ttl_seconds=0)
    assert int(prompt.version) == manifest["prompt"]["version"] == int(champion.tags["prompt.version"])
    assert client.get_model_version("evertune-assistant", champion.version).tags["approved_by"] == "gate"


def test_tune_model_promotes_then_skips_identical_rerun(tuned_home: dict) -> None:
    home, env = tuned_home["home"], tuned_home["env"]
    dags_test(env, "2026-11-03")
    client = registry(home)
    versions = client.search_model_versions("name = 'evertune-assistant'")
    assert len(versions) == 1
    champion = client.get_model_version_by_alias("evertune-assistant", "champion")
    tags = champion.tags
    assert tags["airflow.dag_id"] == "tune_model"
    assert tags["airflow.run_id"]
    assert tags["data_version"].startswith(f"sft/{DAYS[-1]}@")
    assert "kb_table_version" in tags and "params_hash" in tags and "candidate_key" in tags
    run = client.get_run(champion.run_id)
    assert run.data.tags["gate_decision"] == "promote"
    assert "train/loss" in run.data.metrics, sorted(run.data.metrics)
    assert len(client.get_metric_history(champion.run_id, "train/loss")) >= 2, "a loss curve, not one point"
    check_release(client, champion)

    # Same data, KB, params and base model: training is skipped and no second version appears.
    output = dags_test(env, "2026-11-04")
    assert "already version" in output
    assert len(client.search_model_versions("name = 'evertune-assistant'")) == 1


def test_champion_loads_offline_from_the_registry_and_answers(tuned_home: dict) -> None:
    code = (
        "import mlflow, sys\n"
        f"mlflow.set_tracking_uri('sqlite:///{tuned_home['home'] / 'mlflow' / 'mlflow.db'}')\n"
        "model = mlflow.pyfunc.load_model('models:/evertune-assistant@champion')\n"
        "answers = model.predict(['How much does the Pro plan cost?'], params={'retrieval': 'none'})\n"
        "assert len(answers) == 1 and isinstance(answers[0], str), answers\n"
        "print('ANSWER', repr(answers[0]))\n"
    )
    env = {**tuned_home["env"], "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ANSWER" in proc.stdout

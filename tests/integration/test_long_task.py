"""A task that outlives the task-token lifetime (``[execution_api] jwt_expiration_time``) must survive.

Airflow 3 kills a task whose execution-API token expired when the supervisor cannot refresh it (apache/airflow
#48536, #67939). The embedded stack sets the lifetime (``EVERTUNE_TASK_TOKEN_TTL``, default 4 h) so training
fits; here it is set to 30 s and a task runs 65 s, under the real scheduler and API server, so its token expires
twice while it runs. A second task checks that task processes start with :data:`stack_env.TASK_PRELOAD` imported. (A 20 s lifetime failed once on this 2-core machine while a demo trained beside the suite.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evertune.settings import get_settings
from evertune_airflow import stack_client, stack_control, stack_env, stack_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOKEN_TTL_S = 30
TASK_S = 65

PRELOADED = ("torch", "sentence_transformers", "great_expectations", "mlflow")
LONG_DAG = f'''
import time
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC"), catchup=False, tags=["test"])
def long_task_probe():
    @task(retries=0)
    def outlive_token() -> float:
        started = time.monotonic()
        while time.monotonic() - started < {TASK_S}:
            time.sleep(1)
        return time.monotonic() - started

    @task(retries=0)
    def preloaded() -> list[str]:
        # The scheduler's forkserver imported these (stack_env.TASK_PRELOAD); this DAG file imports none of them.
        import sys

        missing = [name for name in {PRELOADED!r} if name not in sys.modules]
        if missing:
            raise RuntimeError(f"not inherited from the forkserver: {{missing}}")
        return sorted(sys.modules)[:3]

    outlive_token()
    preloaded()


long_task_probe()
'''


def test_task_longer_than_token_lifetime_survives(
    evertune_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_ports: dict[str, int]
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "long_task_probe.py").write_text(LONG_DAG)
    monkeypatch.setenv("EVERTUNE_DAGS_FOLDER", str(dags))
    monkeypatch.setenv("EVERTUNE_TASK_TOKEN_TTL", str(TOKEN_TTL_S))
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    settings = get_settings()
    assert stack_env.airflow_env(settings)["AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME"] == str(TOKEN_TTL_S)
    stack_control.up(settings)
    try:
        with stack_client.AirflowClient.connect(settings) as client:
            client.wait_for_dag("long_task_probe", timeout=240)
            client.unpause("long_task_probe")
            run_id = client.trigger("long_task_probe")
            [run] = client.wait_for_runs("long_task_probe", [run_id], timeout=600, poll=3)
            tis = {ti["task_id"]: ti for ti in client.task_instances("long_task_probe", run_id)}
            assert run["state"] == "success", tis
            assert tis["preloaded"]["state"] == "success", "the task process did not start with the preloaded modules"
            ti = tis["outlive_token"]
            assert ti["try_number"] == 1
            assert ti["duration"] >= TASK_S > 2 * TOKEN_TTL_S
    finally:
        stack_processes.stop(settings)

"""The embedded stack end to end: up on free ports, a REST-triggered run and a backfill under the real
scheduler, then down with every process gone and every port free (real Airflow, real MLflow server)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from evertune.settings import get_settings
from evertune_airflow import stack_client, stack_control, stack_env, stack_processes
from evertune_airflow.defaults import POOLS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROBE_DAG = '''
import pendulum
from airflow.sdk import Param, dag, task


@dag(schedule="@daily", start_date=pendulum.datetime(2025, 1, 1, tz="UTC"), catchup=False,
     params={"n": Param(1, type="integer")}, tags=["test"])
def stack_probe():
    @task
    def first(**context) -> int:
        return context["params"]["n"]

    @task
    def second(value: int) -> int:
        return value + 1

    second(first())


stack_probe()
'''


@pytest.fixture
def stack_home(evertune_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               stack_ports: dict[str, int]) -> Path:
    """An isolated state folder, a DAGs folder with one trivial DAG, and free ports."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "stack_probe.py").write_text(PROBE_DAG)
    monkeypatch.setenv("EVERTUNE_DAGS_FOLDER", str(dags))
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    return evertune_home


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_airflow_env_points_everything_into_the_state_folder(stack_home: Path) -> None:
    settings = get_settings()
    env = stack_env.airflow_env(settings)
    assert env["AIRFLOW_HOME"] == str(stack_home / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{stack_home / 'airflow' / 'airflow.db'}"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("dags")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["MLFLOW_TRACKING_URI"] == stack_env.mlflow_url()
    assert env["HF_HUB_OFFLINE"] == "1"
    # The shared secrets are generated once and reused.
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == stack_env.airflow_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64


def test_stack_up_trigger_backfill_down(stack_home: Path) -> None:
    settings = get_settings()
    ports = stack_env.StackPorts.from_env()
    pids: set[int] = set()
    try:
        result = stack_control.up(settings, timeout=400)
        assert set(result.started) == {"api-server", "dag-processor", "scheduler", "triggerer", "mlflow", "serve"}
        assert result.password
        print(f"\n[stack] healthy after {result.seconds_to_healthy:.1f} s")
        state = stack_control.health(settings)
        assert state["healthy"], state
        assert state["mlflow"] == "healthy" and state["serve"] == "healthy"
        # No champion yet: the answer service is up and says so (409, not 503).
        import httpx

        answer = httpx.post(f"{stack_env.serve_url(ports)}/ask", json={"question": "How much is Pro?"}, timeout=30)
        assert answer.status_code == 409 and answer.json()["error_code"] == "RESOURCE_CONFLICT", answer.text
        assert stack_control.up(settings).started == [], "a second up must not start anything"
        # Every port the stack opens, the log servers of the scheduler and triggerer included, is loopback-only.
        listening = stack_processes.listening_addresses(settings)
        exposed = {name: sorted(a for a in addresses if a[0] != stack_env.HOST)
                   for name, addresses in listening.items()}
        assert not any(exposed.values()), exposed
        ports_open = {port for addresses in listening.values() for _, port in addresses}
        assert {ports.worker_log, ports.triggerer_log, ports.airflow, ports.serve, ports.mlflow} <= ports_open, listening

        with stack_client.AirflowClient.connect(settings) as client:
            pools = client.pools()
            assert {name: pools.get(name) for name in POOLS} == {name: slots for name, (slots, _) in POOLS.items()}
            # New DAGs start paused (Airflow's default); nothing runs until unpaused.
            assert client.wait_for_dag("stack_probe", timeout=240)["is_paused"] is True
            client.unpause("stack_probe")

            run_id = client.trigger("stack_probe", conf={"n": 41})
            [run] = client.wait_for_runs("stack_probe", [run_id], timeout=300, poll=1)
            assert run["state"] == "success", client.task_instances("stack_probe", run_id)
            tasks = {ti["task_id"]: ti["state"] for ti in client.task_instances("stack_probe", run_id)}
            assert tasks == {"first": "success", "second": "success"}
            xcom = client.request(
                "GET", f"/api/v2/dags/stack_probe/dagRuns/{run_id}/taskInstances/second/xcomEntries/return_value")
            assert int(xcom["value"]) == 42, "the run conf reached the task"

            backfill = client.backfill("stack_probe", "2025-01-01", "2025-01-02", max_active_runs=2)
            assert len(backfill["run_ids"]) == 2
            runs = client.wait_for_runs("stack_probe", backfill["run_ids"], timeout=300, poll=1)
            assert [r["state"] for r in runs] == ["success", "success"]
            assert sorted(r["logical_date"][:10] for r in runs) == ["2025-01-01", "2025-01-02"]
            assert {r["run_type"] for r in runs} == {"backfill"}

        time.sleep(5)  # let the finished runs' workers go idle before measuring
        usage = stack_processes.memory(settings)
        print(f"[stack] idle: {sum(int(v['processes']) for v in usage.values())} processes, "
              f"{sum(v['rss_mib'] for v in usage.values()):.0f} MiB RSS, "
              f"{sum(v['pss_mib'] for v in usage.values()):.0f} MiB PSS")
        print(stack_control.status_text(settings))
    finally:
        pids = {p.pid for procs in stack_processes.stack_processes(settings).values() for p in procs}
        stopped = stack_processes.stop(settings)
    print(f"[stack] stopped in {stopped.seconds:.1f} s, SIGKILL for {len(stopped.killed)}")
    assert len(pids) >= 6
    assert [pid for pid in pids if alive(pid)] == []
    assert all(stack_processes.port_free(port) for port in ports.all().values())
    assert not list((stack_home / "run").glob("*.pid"))
    assert "stopped" in stack_control.status_text(settings)

"""The production topology on one machine: CeleryExecutor on PostgreSQL, a Redis broker, two Celery workers
(one consuming ``default``, one only ``gpu``), FAB auth and an MLflow server backed by PostgreSQL that runs
MLflow's basic auth (the tasks write as the pipeline account; nobody else may move ``champion``).

Everything is real: the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379), with a role, two
databases and a Redis database of this test's own, created here and dropped at the end. The stack is the
same ``evertune_airflow.stack`` a person starts with ``make up``, switched to the production settings
through environment variables only (docs/deployment.md). Point the test elsewhere with
``EVERTUNE_TEST_PG_DSN`` (an admin DSN) and ``EVERTUNE_TEST_REDIS_URL`` (without a database number).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evertune_airflow import stack_client, stack_control, stack_env, stack_processes

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
pytestmark = pytest.mark.slow

PG_ADMIN_DSN = os.environ.get("EVERTUNE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REDIS_URL = os.environ.get("EVERTUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _pg_admin():
    import psycopg2

    try:
        conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable with {PG_ADMIN_DSN!r} (set EVERTUNE_TEST_PG_DSN): {exc}")
    conn.autocommit = True
    return conn


def _claim_redis_db(token: str) -> int:
    """An empty Redis database, claimed with a marker key so a parallel run picks another one."""
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        try:
            if client.dbsize() == 0 and client.set("evertune-test-claim", token, nx=True):
                return number
        except redis.ConnectionError as exc:
            pytest.fail(f"Redis not reachable at {REDIS_URL} (set EVERTUNE_TEST_REDIS_URL): {exc}")
        finally:
            client.close()
    pytest.fail(f"no empty Redis database at {REDIS_URL}")


@pytest.fixture(scope="module")
def services() -> Iterator[dict]:
    """A PostgreSQL role with two databases (Airflow, MLflow) and a Redis database, dropped afterwards."""
    import redis

    suffix = secrets.token_hex(4)
    role, password = f"evertune_it_{suffix}", secrets.token_urlsafe(16)
    databases = {"airflow": f"evertune_it_{suffix}_airflow", "mlflow": f"evertune_it_{suffix}_mlflow"}
    admin = _pg_admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
        for name in databases.values():
            cur.execute(f"CREATE DATABASE {name} OWNER {role}")
    redis_db = _claim_redis_db(suffix)
    urls = {kind: f"postgresql+psycopg2://{role}:{password}@127.0.0.1:5432/{name}" for kind, name in databases.items()}
    try:
        yield {"role": role, "password": password, "databases": databases, "urls": urls,
               "broker": f"{REDIS_URL}/{redis_db}"}
    finally:
        with admin.cursor() as cur:
            for name in databases.values():
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()
        client = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
        client.flushdb()
        client.close()


def _run(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "evertune", *args], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory: pytest.TempPathFactory, tiny_dag_env) -> dict:
    """The same days refreshed one after the other without Airflow (what on-time nights produce)."""
    home = tmp_path_factory.mktemp("serial")
    env = tiny_dag_env(home)
    _run(env, "demo-data", "--days", str(len(DAYS)))
    _run(env, "refresh", "all", "--interval", *DAYS)  # one process, the days in order
    return {"table": _table_state(home), "data": _data_versions(home)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, services: dict, tiny_dag_env,
            port_picker) -> Iterator[dict]:
    """The stack in its production configuration; stopped (and verified stopped) afterwards."""
    from evertune.settings import get_settings

    home = tmp_path_factory.mktemp("cluster")
    base = tiny_dag_env(home)
    _run(base, "demo-data", "--days", str(len(DAYS)))
    ports = dict(zip(stack_env.PORT_VARS, port_picker(len(stack_env.PORT_VARS)), strict=True))
    # The second worker serves logs on worker_log + 1: make sure that port is free too.
    while not stack_processes.port_free(ports["EVERTUNE_WORKER_LOG_PORT"] + 1):
        ports["EVERTUNE_WORKER_LOG_PORT"] = port_picker(1)[0]
    production = {
        **{name: str(port) for name, port in ports.items()},
        "EVERTUNE_EXECUTOR": "CeleryExecutor",
        "EVERTUNE_AUTH_MANAGER": "fab",
        "EVERTUNE_MLFLOW_AUTH": "basic",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": services["urls"]["airflow"],
        "AIRFLOW__CELERY__BROKER_URL": services["broker"],
        # An MLflow database URL: the stack serves it with `mlflow server` and hands tasks the server's URL.
        "MLFLOW_TRACKING_URI": services["urls"]["mlflow"],
    }
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("AIRFLOW__", "EVERTUNE_", "MLFLOW_"))]:
            patch.delenv(key)
        for key, value in {**base, **production}.items():
            patch.setenv(key, value)
        settings = get_settings()
        try:
            started = stack_control.up(settings, timeout=600)
            print(f"\n[distributed] {len(started.started)} components healthy after {started.seconds_to_healthy:.1f} s")
            with stack_client.AirflowClient.connect(settings) as client:
                yield {"home": home, "settings": settings, "client": client, "started": started,
                       "services": services}
        finally:
            stopped = stack_processes.stop(settings)
            leftovers = stack_processes.stack_processes(settings)
            assert not any(leftovers.values()), f"processes left running: {leftovers}"
            print(f"\n[distributed] stopped {stopped.stopped} in {stopped.seconds:.1f} s")


def _table_state(home: Path) -> dict:
    import lancedb

    from evertune.config import load_params
    from evertune.kb.index import table_name_for

    params = load_params()
    table = lancedb.connect(str(home / "lancedb")).open_table(table_name_for(params))
    rows = table.to_arrow().select(["chunk_id", "content_hash", "doc_id"]).to_pylist()
    published = table.tags.list()[params.index.publish_tag]["version"]
    table.checkout(published)
    published_rows = table.to_arrow().select(["chunk_id", "content_hash"]).to_pylist()
    return {"rows": sorted((r["chunk_id"], r["content_hash"]) for r in rows),
            "published_rows": sorted((r["chunk_id"], r["content_hash"]) for r in published_rows)}


def _data_versions(home: Path) -> dict[str, str]:
    return {day: (home / "data-repo" / "validated" / f"ds={day}.dvc").read_text() for day in DAYS}


def _git(home: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=home / "data-repo", capture_output=True, text=True,
                          check=True).stdout


def test_components_run_as_the_production_topology(cluster: dict) -> None:
    settings = cluster["settings"]
    env = stack_env.airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    state = stack_control.health(settings)
    assert state["healthy"], state
    assert state["workers"] == {"worker": "healthy", "worker-gpu": "healthy"}
    # FAB checks credentials: a wrong password gets no token.
    import httpx

    answer = httpx.post(f"{stack_env.airflow_url()}/auth/token", json={"username": "admin", "password": "wrong"})
    assert answer.status_code in (401, 403), answer.text
    # MLflow runs its basic-auth app; every task talks to it as the pipeline account, never as its admin.
    commands = [" ".join(p.cmdline()) for p in stack_processes.stack_processes(settings)["mlflow"]]
    assert any("mlflow server --app-name basic-auth" in command for command in commands), commands
    accounts = stack_env.mlflow_accounts(settings)
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
        accounts.pipeline.username, accounts.pipeline.password)
    assert accounts.admin.password not in env.values()
    # Every port of the production topology (workers' log servers included) listens on loopback only.
    listening = stack_processes.listening_addresses(settings)
    assert {name: sorted(a for a in addresses if a[0] != stack_env.HOST) for name, addresses in listening.items()
            if any(a[0] != stack_env.HOST for a in addresses)} == {}
    assert stack_env.StackPorts.from_env().mlflow in {port for addresses in listening.values() for _, port in addresses}


def test_concurrent_backfill_runs_match_serial_runs(cluster: dict, serial_reference: dict) -> None:
    client, home = cluster["client"], cluster["home"]
    client.wait_for_dag("refresh_knowledge_base", timeout=300)
    client.unpause("refresh_knowledge_base")
    # Three runs at once: the dvc_repo and lancedb_writer pools serialize the writers, nothing else.
    created = client.backfill("refresh_knowledge_base", DAYS[0], DAYS[-1], max_active_runs=len(DAYS))
    runs = client.wait_for_runs("refresh_knowledge_base", created["run_ids"], timeout=1200, poll=5)
    assert [r["state"] for r in runs] == ["success"] * len(DAYS), runs
    starts = sorted((r["start_date"], r["end_date"]) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(starts)), (
        f"the backfill runs did not overlap: {starts}")

    state = _table_state(home)
    assert state["rows"] == sorted(set(state["rows"])), "duplicate chunks in the LanceDB table"
    assert state["published_rows"] == serial_reference["table"]["published_rows"]
    assert _data_versions(home) == serial_reference["data"]
    tags = set(_git(home, "tag", "--list", "validated/*").split())
    assert tags == {f"validated/{day}" for day in DAYS}, tags
    for day in DAYS:  # each tag points at the commit that holds that day's .dvc file as it is now
        assert _git(home, "show", f"validated/{day}:validated/ds={day}.dvc") == _data_versions(home)[day]
    commits = _git(home, "log", "--format=%s").splitlines()
    assert len(commits) == len(set(commits)), f"a data version was committed twice: {commits}"
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=home / "data-repo", capture_output=True,
                            text=True, check=False)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout + status.stderr


def test_training_runs_on_the_gpu_worker_and_mlflow_lands_in_postgres(cluster: dict) -> None:
    client, settings = cluster["client"], cluster["settings"]
    client.wait_for_dag("tune_model", timeout=300)
    client.unpause("tune_model")
    # Unpausing may also start runs of its own (the backfill's validated_data events, the weekly cron):
    # whichever run trains first registers the candidate, the others find it registered and skip training.
    run_id = client.trigger("tune_model", conf={"as_of": DAYS[-1]})
    client.wait_for_runs("tune_model", [run_id], timeout=1500, poll=5)
    runs = client.wait_for_runs("tune_model", [r["dag_run_id"] for r in client.dag_runs("tune_model")],
                                timeout=1500, poll=5)
    tis_by_run = {r["dag_run_id"]: {ti["task_id"]: ti for ti in client.task_instances("tune_model", r["dag_run_id"])}
                  for r in runs}
    assert all(r["state"] == "success" for r in runs), {
        run: {k: v["state"] for k, v in tis.items()} for run, tis in tis_by_run.items()}
    trained = [tis for tis in tis_by_run.values() if tis["train"]["state"] == "success"]
    assert len(trained) == 1, "exactly one run trains these inputs"
    for tis in tis_by_run.values():
        assert tis["train"]["queue"] == "gpu"
        assert {ti["queue"] for name, ti in tis.items() if name != "train"} == {"default"}

    # Which worker executed what: each worker logs the workloads it received.
    logs = {name: (stack_processes.log_dir(settings) / f"{name}.log").read_text(errors="replace")
            for name in ("worker", "worker-gpu")}
    workload = re.compile(r"Executing workload in Celery: .*?task_id='(\w+)', dag_id='tune_model'")
    executed = {name: set(workload.findall(text)) for name, text in logs.items()}
    assert executed["worker-gpu"] == {"train"}, executed
    assert "train" not in executed["worker"] and {"build_dataset", "evaluate"} <= executed["worker"], executed

    import psycopg2

    mlflow_db = cluster["services"]["databases"]["mlflow"]
    with psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={mlflow_db}") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        (mlflow_runs,) = cur.fetchone()
        cur.execute("SELECT name, version FROM model_versions")
        versions = cur.fetchall()
        cur.execute("SELECT alias FROM registered_model_aliases")
        aliases = {row[0] for row in cur.fetchall()}
    assert mlflow_runs >= 1
    # The prompt registry shares the registered models' tables: the answer prompt's version 1 sits beside v1.
    assert sorted(versions) == [("evertune-assistant", 1), ("evertune-assistant-answer", 1)], versions
    assert "champion" in aliases, aliases
    assert not list(Path(settings.home).glob("mlflow/*.db")), "MLflow must not fall back to SQLite"

    # No secret (the database role's, the MLflow pipeline account's) reaches a task log or an XCom value.
    secrets_ = [cluster["services"]["password"], stack_env.mlflow_accounts(settings).pipeline.password]
    task_logs = "".join(p.read_text(errors="replace")
                        for p in (stack_processes.log_dir(settings) / "airflow").rglob("*.log"))
    assert task_logs and not [secret for secret in secrets_ if secret in task_logs]
    for run, run_tis in tis_by_run.items():
        for task_id in run_tis:
            entries = client.request("GET", f"/api/v2/dags/tune_model/dagRuns/{run}/taskInstances/{task_id}"
                                     "/xcomEntries", params={"deserialize": "true"}).get("xcom_entries", [])
            assert all(secret not in str(entry.get("value")) for entry in entries for secret in secrets_)


def test_only_the_pipeline_account_moves_champion(cluster: dict) -> None:
    """Anonymous clients, wrong passwords and people (READ) cannot set or delete an alias; the pipeline can.

    Runs after the tuning run above: its register and promote tasks set ``champion`` through the pipeline
    account, the only credentials the tasks have.
    """
    import httpx
    import psycopg2

    from evertune.config import load_params

    settings = cluster["settings"]
    accounts = stack_env.mlflow_accounts(settings)
    [reader] = accounts.readers
    people, pipeline = (reader.username, reader.password), (accounts.pipeline.username, accounts.pipeline.password)
    name = load_params().registry.model_name
    url = f"{stack_env.mlflow_url()}/api/2.0/mlflow/registered-models/alias"

    def call(method: str, auth: tuple[str, str] | None, **body: str) -> httpx.Response:
        payload = {"name": name, **body}
        if method == "GET":
            return httpx.get(url, params=payload, auth=auth, timeout=60)
        return httpx.request(method, url, json=payload, auth=auth, timeout=60)

    champion = call("GET", people, alias="champion")
    assert champion.status_code == 200, champion.text  # people read
    version = champion.json()["model_version"]["version"]
    refused = {
        "anonymous read": call("GET", None, alias="champion"),
        "anonymous set": call("POST", None, alias="champion", version=version),
        "wrong password set": call("POST", (pipeline[0], "not-the-pipeline-password"), alias="champion",
                                   version=version),
        "reader set": call("POST", people, alias="champion", version=version),
        "reader set challenger": call("POST", people, alias="challenger", version=version),
        "reader delete": call("DELETE", people, alias="champion"),
    }
    assert {case: answer.status_code for case, answer in refused.items()} == {
        "anonymous read": 401, "anonymous set": 401, "wrong password set": 401, "reader set": 403,
        "reader set challenger": 403, "reader delete": 403}
    # The pipeline account can (a probe alias, set and deleted again: champion stays where the gate put it).
    assert call("POST", pipeline, alias="auth-probe", version=version).status_code == 200
    assert call("GET", people, alias="auth-probe").json()["model_version"]["version"] == version
    assert call("DELETE", pipeline, alias="auth-probe").status_code == 200
    assert call("GET", people, alias="champion").json()["model_version"]["version"] == version

    # Users and grants live in the MLflow database (PostgreSQL), beside the registry.
    mlflow_db = cluster["services"]["databases"]["mlflow"]
    with psycopg2.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={mlflow_db}") as conn, conn.cursor() as cur:
        cur.execute("SELECT username, is_admin FROM users")
        users = dict(cur.fetchall())
    assert users == {accounts.admin.username: True, pipeline[0]: False, people[0]: False}, users

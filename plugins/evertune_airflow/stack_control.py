"""Bringing the embedded stack up: database migration, start order, health checks, status.

:func:`up` starts what is missing (through :mod:`evertune_airflow.stack_processes`), waits until Airflow's
monitor endpoint and MLflow's ``/health`` say healthy, then creates the pools through the REST client.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evertune.settings import Settings, get_settings
from evertune_airflow import stack_mlflow_auth
from evertune_airflow.stack_client import AirflowClient
from evertune_airflow.stack_env import (
    ADMIN_USER,
    PORT_VARS,
    StackError,
    StackPorts,
    admin_password,
    airflow_env,
    airflow_url,
    auth_manager,
    celery_workers,
    dags_folder,
    executor,
    mlflow_auth,
    mlflow_backend_uri,
    mlflow_url,
    serve_enabled,
    serve_url,
    stack_process_env,
)
from evertune_airflow.stack_processes import (
    Component,
    console_script,
    known_components,
    log_dir,
    memory,
    pid_path,
    port_free,
    run_dir,
    session_leader,
    spawn,
    stack_components,
    stack_lock,
    stop_unlocked,
    tail_file,
)


def _migrate_db_if_needed(settings: Settings, env: dict[str, str]) -> bool:
    """Run ``airflow db migrate`` unless this Airflow version already migrated this database."""
    from importlib.metadata import version

    conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    stamp = settings.airflow_home / ".evertune-db-migrated"
    expected = f"{version('apache-airflow-core')} {conn}"
    db_file = Path(conn.removeprefix("sqlite:///")) if conn.startswith("sqlite:///") else None
    if stamp.exists() and stamp.read_text().strip() == expected and (db_file is None or db_file.exists()):
        return False
    log_path = log_dir(settings) / "airflow-db-migrate.log"
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [*console_script("airflow"), "db", "migrate"], env=env, cwd=settings.home, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, check=False, timeout=600,
        )
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed (exit {result.returncode}); see {log_path}\n{tail_file(log_path)}")
    if auth_manager() == "fab":
        _ensure_fab_admin(settings, env, log_path)
    stamp.write_text(expected + "\n")
    return True


def _ensure_fab_admin(settings: Settings, env: dict[str, str], log_path: Path) -> None:
    """Create the FAB tables and the ``admin`` user (Admin role) if it does not exist yet.

    The password reaches the child through its environment, never its command line (``ps`` shows those to
    every user of the machine); ``airflow users create`` only takes it as an argument or from a terminal.
    """
    def run(*argv: str, extra: dict[str, str] | None = None) -> int:
        with open(log_path, "ab") as log:
            return subprocess.run(list(argv), env={**env, **(extra or {})}, cwd=settings.home,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False,
                                  timeout=600).returncode

    if run(*console_script("airflow"), "fab-db", "migrate") != 0:
        raise StackError(f"airflow fab-db migrate failed; see {log_path}\n{tail_file(log_path)}")
    if run(sys.executable, "-m", "evertune_airflow.stack", "fab-admin",
           extra={"EVERTUNE_ADMIN_PASSWORD": admin_password(settings) or ""}) != 0:
        raise StackError(f"creating the FAB admin user failed; see {log_path}\n{tail_file(log_path)}")



def _http_get(url: str, timeout: float = 3.0):
    import httpx

    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def health(settings: Settings | None = None) -> dict[str, Any]:
    """Health of every component: Airflow's monitor endpoint, MLflow's ``/health``, the answer service's ``/ping``.

    Returns:
        ``{"airflow": {component: status}, "mlflow": "healthy"|"unreachable"|None, "serve": ..., "healthy": bool}``;
        ``mlflow`` is ``None`` when the stack does not run MLflow, ``serve`` when ``EVERTUNE_SERVE=0``.
    """
    settings = settings or get_settings()
    ports = StackPorts.from_env()
    answer = _http_get(f"{airflow_url(ports)}/api/v2/monitor/health")
    airflow: dict[str, str] = {}
    if answer is not None and answer.status_code == 200:
        airflow = {key: value.get("status", "?") for key, value in answer.json().items() if isinstance(value, dict)}
    mlflow_state = None
    if mlflow_backend_uri(settings, ports) is not None:
        answer = _http_get(f"{mlflow_url(ports)}/health")
        mlflow_state = "healthy" if answer is not None and answer.status_code == 200 else "unreachable"
    serve_state = None
    if serve_enabled():
        answer = _http_get(f"{serve_url(ports)}/ping")
        serve_state = "healthy" if answer is not None and answer.status_code == 200 else "unreachable"
    wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    ok = (all(airflow.get(key) == "healthy" for key in wanted) and mlflow_state in (None, "healthy")
          and serve_state in (None, "healthy"))
    workers: dict[str, str] | None = None
    if executor() == "CeleryExecutor":
        answering = _celery_ping(airflow_env(settings)["AIRFLOW__CELERY__BROKER_URL"])
        workers = {w.name: "healthy" if w.name in answering else "unreachable" for w in celery_workers()}
        ok = ok and all(state == "healthy" for state in workers.values())
    return {"airflow": airflow, "mlflow": mlflow_state, "serve": serve_state, "workers": workers, "healthy": ok}


def _celery_ping(broker_url: str, timeout: float = 2.0) -> set[str]:
    """Names (before the ``@``) of the Celery workers that answer a ping through the broker."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        replies = app.control.ping(timeout=timeout) or []
    except OSError:  # broker unreachable
        return set()
    finally:
        app.close()
    return {hostname.split("@", 1)[0] for reply in replies for hostname in reply}



@dataclass
class UpResult:
    """What :func:`up` did."""

    started: list[str]
    already_running: list[str]
    seconds_to_healthy: float
    airflow_url: str
    mlflow_url: str | None
    password: str | None
    serve_url: str | None = None

    def describe(self) -> str:
        """Human-readable summary: URLs and credentials."""
        if not self.started:
            head = "evertune stack already running"
        else:
            head = (f"evertune stack up: started {', '.join(self.started)} "
                    f"(healthy after {self.seconds_to_healthy:.1f} s)")
        lines = [head, f"  Airflow UI  {self.airflow_url}   user {ADMIN_USER}   password {self.password or '?'}"]
        if self.mlflow_url:
            lines.append(f"  MLflow UI   {self.mlflow_url}")
        if self.serve_url:
            lines.append(f"  Answers     {self.serve_url}/ask   (POST {{\"question\": ...}}; docs/serving.md)")
        return "\n".join(lines)



def up(settings: Settings | None = None, timeout: float = 300.0, pools: dict | None = None) -> UpResult:
    """Start every component that is not running, wait until all are healthy, create the pools.

    Idempotent: components already running are left alone. If a component fails to start, the ones
    started by this call are stopped again before the error is raised.

    Args:
        settings: Deployment settings; read from the environment when omitted.
        timeout: Seconds to wait for health.
        pools: Pools to create, name -> (slots, description); default ``defaults.POOLS``.

    Returns:
        What was started, the time to healthy, URLs and the admin password.

    Raises:
        StackError: A port is taken by something else, a component died, or health timed out.
    """
    from evertune_airflow.defaults import POOLS

    settings = settings or get_settings()
    settings.ensure_local_dirs()
    for folder in (run_dir(settings), log_dir(settings), log_dir(settings) / "airflow"):
        folder.mkdir(parents=True, exist_ok=True)
    with stack_lock(settings):
        return _up(settings, timeout, POOLS if pools is None else pools)


def _up(settings: Settings, timeout: float, pools: dict[str, tuple[int, str]]) -> UpResult:
    ports = StackPorts.from_env()
    components = stack_components(settings, ports)
    running = [c.name for c in components if session_leader(settings, c.name) is not None]
    missing = [c for c in components if c.name not in running]
    if not dags_folder().is_dir():
        raise StackError(f"DAGs folder {dags_folder()} does not exist (EVERTUNE_DAGS_FOLDER?)")

    begin = time.monotonic()
    started: list[str] = []
    if missing:
        taken = [f"{c.name}:{c.port}" for c in missing if c.port is not None and not port_free(c.port)]
        if taken:
            raise StackError(f"ports in use by another program: {', '.join(taken)} "
                             f"(set {', '.join(PORT_VARS)} to move the stack)")
        for component in missing:  # stale PID files of crashed components
            pid_path(settings, component.name).unlink(missing_ok=True)
        env = stack_process_env(settings)
        _migrate_db_if_needed(settings, env)
        mlflow_env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
        # The job runner would add a handful of huey consumers; the pipeline does not use MLflow jobs.
        mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        backend = mlflow_backend_uri(settings, ports)
        if backend is not None and mlflow_auth() == "basic":
            mlflow_env.update(stack_mlflow_auth.server_env(settings, backend))
        deadline = time.monotonic() + timeout
        try:
            for phase in (False, True):
                if phase:
                    _wait_api(settings, components, deadline)
                for component in (c for c in missing if c.needs_api is phase):
                    spawn(component, mlflow_env if component.name == "mlflow" else env, settings)
                    started.append(component.name)
            _wait_healthy(settings, components, deadline)
        except BaseException:
            stop_unlocked(settings, timeout=20.0, names=started)
            raise
    elapsed = time.monotonic() - begin
    if mlflow_backend_uri(settings, ports) is not None and mlflow_auth() == "basic":
        stack_mlflow_auth.ensure_accounts(settings)  # before any task can write: the DAGs start paused
    with AirflowClient.connect(settings) as client:
        client.ensure_pools(pools)
    return UpResult(started, running, elapsed, airflow_url(ports),
                    mlflow_url(ports) if mlflow_backend_uri(settings, ports) else None, client.password,
                    serve_url(ports) if serve_enabled() else None)


def _check_alive(settings: Settings, components: Sequence[Component]) -> None:
    for component in components:
        if session_leader(settings, component.name) is None and pid_path(settings, component.name).exists():
            log_path = log_dir(settings) / f"{component.name}.log"
            raise StackError(f"{component.name} exited during start-up; last lines of {log_path}:\n"
                             f"{tail_file(log_path)}")


def _wait_api(settings: Settings, components: Sequence[Component], deadline: float) -> None:
    url = f"{airflow_url()}/api/v2/version"
    while time.monotonic() < deadline:
        _check_alive(settings, components)
        answer = _http_get(url)
        if answer is not None and answer.status_code in (200, 401, 403):
            return
        time.sleep(0.5)
    raise StackError(f"Airflow API server not answering at {url}; logs in {log_dir(settings)}")


def _wait_healthy(settings: Settings, components: Sequence[Component], deadline: float) -> None:
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _check_alive(settings, components)
        state = health(settings)
        if state["healthy"] and admin_password(settings):
            return
        time.sleep(1.0)
    raise StackError(f"stack not healthy in time: {state}; logs in {log_dir(settings)}")



def status_text(settings: Settings | None = None) -> str:
    """What runs, with PIDs, memory and health, as printable text."""
    settings = settings or get_settings()
    ports = StackPorts.from_env()
    usage = memory(settings)
    lines = [f"evertune stack  (EVERTUNE_HOME={settings.home})"]
    for component in known_components(settings):
        leader = session_leader(settings, component.name)
        mem = usage.get(component.name)
        where = f":{component.port}" if component.port else ""
        if leader is None:
            lines.append(f"  {component.name:<14} stopped  {where}")
        else:
            count, rss = (int(mem["processes"]), mem["rss_mib"]) if mem else (0, 0.0)
            lines.append(f"  {component.name:<14} running  pid {leader.pid:<7} {count:>3} procs "
                         f"{rss:>7.0f} MiB RSS  {where}")
    if "other" in usage:
        lines.append(f"  {'(strays)':<14} {int(usage['other']['processes'])} marked processes outside the sessions")
    if usage:
        total_rss = sum(v["rss_mib"] for v in usage.values())
        total_pss = sum(v["pss_mib"] for v in usage.values())
        state = health(settings)
        lines.append(f"  total          {sum(int(v['processes']) for v in usage.values())} processes, "
                     f"{total_rss:.0f} MiB RSS ({total_pss:.0f} MiB PSS)")
        lines.append(f"  health         airflow {state['airflow'] or 'unreachable'}  mlflow {state['mlflow']}  "
                     f"serve {state['serve']}")
        if state["workers"] is not None:
            lines.append(f"  workers        {state['workers']}  (Celery, broker ping)")
        password = admin_password(settings) or "?"
        lines.append(f"  Airflow UI     {airflow_url(ports)}  user {ADMIN_USER}  password {password}")
        if mlflow_backend_uri(settings, ports):
            lines.append(f"  MLflow UI      {mlflow_url(ports)}")
        if serve_enabled():
            lines.append(f"  Answers        {serve_url(ports)}/ask  (docs/serving.md)")
    return "\n".join(lines)


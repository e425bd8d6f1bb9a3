"""The embedded stack: Airflow and MLflow as local processes, plus a small REST client for the demo.

Run it as ``python -m evertune_airflow.stack up|down|status|env|password``.

Components are separate processes, never ``airflow standalone``: ``airflow scheduler``,
``airflow dag-processor``, ``airflow api-server``, ``airflow triggerer`` and ``mlflow server``
(the last one only when the tracking URI is local). Each runs in its own session (``setsid``) with
default SIGINT/SIGTERM handling, so one signal to its process group reaches uvicorn workers and
LocalExecutor workers alike. PID files live in ``$EVERTUNE_HOME/run/``, logs in ``$EVERTUNE_HOME/logs/``.

All Airflow configuration is the environment built by :func:`airflow_env`; the stack, the demo and
the tests share it. Airflow loads every ``.py`` file of the plugins folder as a module, so this file
has no side effects at import time and keeps its imports cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from evertune.errors import EvertuneError
from evertune.runtime import OFFLINE_ENV
from evertune.settings import REPO_ROOT, Settings, get_settings

HOST = "127.0.0.1"
ADMIN_USER = "admin"
#: Marker put into the environment of every process the stack starts (inherited by their children),
#: so ``down`` also finds processes that left their session.
STACK_MARKER = "EVERTUNE_STACK"
#: Terminal DAG run states.
FINISHED_RUN_STATES = frozenset({"success", "failed"})

#: Environment variable -> default port.
PORT_VARS: dict[str, int] = {
    "EVERTUNE_AIRFLOW_PORT": 8080,
    "EVERTUNE_MLFLOW_PORT": 5000,
    "EVERTUNE_WORKER_LOG_PORT": 8793,
    "EVERTUNE_TRIGGERER_LOG_PORT": 8794,
}


#: SQLite driver arguments for every Airflow process (``[database] sql_alchemy_connect_args`` imports
#: this dict). Five processes share one SQLite file; wait up to 30 s for its write lock instead of
#: the driver's 5 s so a busy scheduler does not turn API calls into "database is locked" errors.
SQLITE_CONNECT_ARGS: dict[str, Any] = {"timeout": 30}


class StackError(EvertuneError):
    """The embedded stack could not be started, reached or stopped."""


#: ``EVERTUNE_EXECUTOR``: LocalExecutor (the embedded default) or CeleryExecutor (the production topology
#: on one machine: a database server, a broker and one Celery worker per queue group).
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
#: ``EVERTUNE_CELERY_WORKERS`` default: ``name=queue[+queue]@concurrency`` items separated by ``;``. The GPU
#: worker consumes only ``gpu`` with one slot per GPU, like the ``gpu`` pool.
DEFAULT_CELERY_WORKERS = "worker=default@2;worker-gpu=gpu@1"
#: ``EVERTUNE_AUTH_MANAGER``: ``simple`` (generated passwords, for one person on one machine) or ``fab``
#: (Flask-AppBuilder users and roles, the production choice).
AUTH_MANAGERS = {
    "simple": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
    "fab": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
}


@dataclass(frozen=True)
class CeleryWorker:
    """One Celery worker of the stack: its name, the queues it consumes and its task slots."""

    name: str
    queues: tuple[str, ...]
    concurrency: int


def executor() -> str:
    """The executor the stack runs (``EVERTUNE_EXECUTOR``, default LocalExecutor)."""
    value = os.environ.get("EVERTUNE_EXECUTOR") or "LocalExecutor"
    if value not in EXECUTORS:
        raise StackError(f"EVERTUNE_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {value!r}")
    return value


def auth_manager() -> str:
    """``simple`` or ``fab`` (``EVERTUNE_AUTH_MANAGER``, default simple)."""
    value = os.environ.get("EVERTUNE_AUTH_MANAGER") or "simple"
    if value not in AUTH_MANAGERS:
        raise StackError(f"EVERTUNE_AUTH_MANAGER must be one of {', '.join(AUTH_MANAGERS)}, got {value!r}")
    return value


def celery_workers() -> list[CeleryWorker]:
    """Parse ``EVERTUNE_CELERY_WORKERS`` (see :data:`DEFAULT_CELERY_WORKERS`)."""
    raw = os.environ.get("EVERTUNE_CELERY_WORKERS") or DEFAULT_CELERY_WORKERS
    workers = []
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        try:
            name, rest = item.split("=", 1)
            queues, concurrency = rest.split("@", 1) if "@" in rest else (rest, "1")
            worker = CeleryWorker(name.strip(), tuple(q.strip() for q in queues.split("+") if q.strip()),
                                  int(concurrency))
        except ValueError as exc:
            raise StackError(f"EVERTUNE_CELERY_WORKERS item {item!r} is not name=queue[+queue]@slots") from exc
        if not worker.queues or worker.concurrency < 1:
            raise StackError(f"EVERTUNE_CELERY_WORKERS item {item!r} needs a queue and at least one slot")
        workers.append(worker)
    if len({w.name for w in workers}) != len(workers):
        raise StackError(f"EVERTUNE_CELERY_WORKERS has duplicate names: {raw!r}")
    return workers


def _result_backend(sql_alchemy_conn: str) -> str:
    # Celery's database result backend: the metadata DB, driver included (SQLAlchemy 2.1 would otherwise
    # pick psycopg 3 for a bare postgresql://).
    return f"db+{sql_alchemy_conn}"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackPorts:
    """TCP ports of the embedded stack (all bound to 127.0.0.1)."""

    airflow: int
    mlflow: int
    worker_log: int
    triggerer_log: int

    @classmethod
    def from_env(cls) -> StackPorts:
        """Read ``EVERTUNE_*_PORT`` variables, falling back to Airflow's and MLflow's usual ports."""
        values = []
        for name, default in PORT_VARS.items():
            raw = os.environ.get(name) or str(default)
            try:
                values.append(int(raw))
            except ValueError as exc:
                raise StackError(f"{name} must be a port number, got {raw!r}") from exc
        return cls(*values)

    def all(self) -> dict[str, int]:
        """Port per purpose, for checks and messages."""
        return {"airflow": self.airflow, "mlflow": self.mlflow, "worker-log": self.worker_log,
                "triggerer-log": self.triggerer_log}


def airflow_url(ports: StackPorts | None = None) -> str:
    """Base URL of the Airflow API server (UI and REST API)."""
    return f"http://{HOST}:{(ports or StackPorts.from_env()).airflow}"


def mlflow_url(ports: StackPorts | None = None) -> str:
    """Base URL of the stack's MLflow server."""
    return f"http://{HOST}:{(ports or StackPorts.from_env()).mlflow}"


def dags_folder() -> Path:
    """The DAGs folder: the repository's ``dags/``, or ``EVERTUNE_DAGS_FOLDER``."""
    return Path(os.environ.get("EVERTUNE_DAGS_FOLDER") or REPO_ROOT / "dags").expanduser().resolve()


def mlflow_backend_uri(settings: Settings, ports: StackPorts | None = None) -> str | None:
    """The store the stack's MLflow server serves, or ``None`` when MLflow runs elsewhere.

    A local tracking URI (SQLite or any database URL) is served by the stack. A remote ``http(s)``
    URI means an external server, except the stack's own URL (exported by :func:`airflow_env` and
    perhaps copied into a shell), which maps back to the default SQLite store under ``EVERTUNE_HOME``.
    """
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return uri
    if uri.rstrip("/") == mlflow_url(ports):
        return f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"
    return None


def passwords_file(settings: Settings) -> Path:
    """SimpleAuthManager's generated passwords file (written by the API server on first start)."""
    return settings.airflow_home / "simple_auth_manager_passwords.json.generated"


def _stack_secrets(settings: Settings) -> dict[str, str]:
    """Keys every component must share, generated once into ``$AIRFLOW_HOME`` (mode 0600)."""
    import base64
    import secrets

    generators = {
        # 64 bytes: PyJWT warns about shorter HS512 keys (Airflow's own default is 16 bytes).
        "jwt_secret": lambda: secrets.token_urlsafe(64),
        "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "api_secret_key": lambda: secrets.token_urlsafe(32),
        # The FAB admin's password when EVERTUNE_ADMIN_PASSWORD is not set (SimpleAuthManager makes its own).
        "admin_password": lambda: secrets.token_urlsafe(18),
    }
    path = settings.airflow_home / "evertune-secrets.json"
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        stored = None
    if stored is not None:
        missing = {key: make() for key, make in generators.items() if key not in stored}
        if missing:  # written by an older version: add the new keys, keep the existing ones
            stored.update(missing)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored))
            tmp.chmod(0o600)
            tmp.replace(path)
        return stored
    values = {key: make() for key, make in generators.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its keys
        return json.loads(path.read_text())
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment for every Airflow process of the embedded stack (the only place it is configured).

    Returns only the variables to add to ``os.environ``; callers merge them
    (``{**os.environ, **airflow_env(settings)}``). Offline variables already set by the operator win,
    and so does an operator-provided ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``; everything else is fixed
    here so that a stray ``AIRFLOW__*`` in a shell cannot point the stack somewhere else.

    Args:
        settings: Deployment settings; read from the environment when omitted.

    Returns:
        Variable name -> value.
    """
    settings = settings or get_settings()
    ports = StackPorts.from_env()
    home = settings.airflow_home
    logs = settings.home / "logs"
    env = {key: os.environ.get(key, value) for key, value in OFFLINE_ENV.items()}
    env.update({
        "EVERTUNE_HOME": str(settings.home),
        **{name: str(port) for name, port in zip(PORT_VARS, (ports.airflow, ports.mlflow, ports.worker_log,
                                                             ports.triggerer_log), strict=True)},
        "AIRFLOW_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
        or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": executor(),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Sized for a 2-core machine: LocalExecutor forks `parallelism` workers up front.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "4",
        # New DAGs start paused (Airflow's default): nothing runs until a person or the demo unpauses it.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # A loaded machine parses slowly; do not time DAG files out too early.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{ports.airflow}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGERS[auth_manager()],
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__API__WORKERS": "1",
        # Task tokens: training runs for hours; the supervisor refreshes its token on heartbeats,
        # the long lifetime only covers stalls (a starved CPU, a paused laptop).
        "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": os.environ.get("EVERTUNE_TASK_TOKEN_TTL", str(4 * 3600)),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "900",
        # New DAG files show up within seconds; known files are re-parsed every 30 s.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "120",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "airflow"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "airflow" / "dag_processor"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_log),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.triggerer_log),
    })
    if auth_manager() == "simple":
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{ADMIN_USER}:admin"
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords_file(settings))
    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):
        if env["AIRFLOW__CORE__EXECUTOR"] != "LocalExecutor":
            raise StackError("CeleryExecutor needs a database server: set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "
                             "to a PostgreSQL URL (SQLite allows one writer process)")
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "evertune_airflow.stack.SQLITE_CONNECT_ARGS"
        # Each retry already waits up to 30 s for the lock; Airflow's 3 retries let a starved scheduler exit.
        env["AIRFLOW__DATABASE__MAX_DB_RETRIES"] = "10"
    if env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor":
        broker = os.environ.get("AIRFLOW__CELERY__BROKER_URL")
        if not broker:
            raise StackError("CeleryExecutor needs a broker: set AIRFLOW__CELERY__BROKER_URL (e.g. redis://host:6379/0)")
        env["AIRFLOW__CELERY__BROKER_URL"] = broker
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = (os.environ.get("AIRFLOW__CELERY__RESULT_BACKEND")
                                                  or _result_backend(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
        # A task the worker has taken is acknowledged only when it ends, so a crashed worker's task is
        # redelivered; the visibility timeout must outlast the longest task (training: hours).
        env["AIRFLOW__CELERY__TASK_ACKS_LATE"] = "True"
        env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] = env[
            "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME"]
    keys = _stack_secrets(settings)
    for variable, key in (("AIRFLOW__API_AUTH__JWT_SECRET", "jwt_secret"), ("AIRFLOW__CORE__FERNET_KEY", "fernet_key"),
                          ("AIRFLOW__API__SECRET_KEY", "api_secret_key")):
        env[variable] = os.environ.get(variable) or keys[key]
    if mlflow_backend_uri(settings, ports) is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow_url(ports)
    else:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    return env


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One long-running process of the stack."""

    name: str
    argv: tuple[str, ...]
    #: Key in Airflow's ``/api/v2/monitor/health`` answer, if any.
    health_key: str | None = None
    port: int | None = None
    #: Started only once the API server answers: its tasks and triggers call the Execution API.
    needs_api: bool = False
    #: Extra environment of this component only (a Celery worker's log port and identity).
    env: tuple[tuple[str, str], ...] = ()


def _tool(name: str) -> list[str]:
    """The console script of this interpreter's environment (falls back to ``python -m``)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def stack_components(settings: Settings, ports: StackPorts | None = None) -> list[Component]:
    """The processes of the embedded stack, in start order."""
    ports = ports or StackPorts.from_env()
    airflow = _tool("airflow")
    celery = executor() == "CeleryExecutor"
    components = [
        Component("api-server", (*airflow, "api-server"), "metadatabase", ports.airflow),
        Component("dag-processor", (*airflow, "dag-processor"), "dag_processor"),
        # With LocalExecutor the scheduler runs the tasks and serves their logs; with Celery the workers do.
        Component("scheduler", (*airflow, "scheduler"), "scheduler", None if celery else ports.worker_log,
                  needs_api=True),
        Component("triggerer", (*airflow, "triggerer"), "triggerer", ports.triggerer_log, needs_api=True),
    ]
    if celery:
        for index, worker in enumerate(celery_workers()):
            log_port = ports.worker_log + index
            argv = (*airflow, "celery", "worker", "--queues", ",".join(worker.queues),
                    "--concurrency", str(worker.concurrency), "--celery-hostname", f"{worker.name}@%h")
            components.append(Component(worker.name, argv, None, log_port, needs_api=True, env=(
                ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(log_port)), ("EVERTUNE_WORKER", worker.name))))
    backend = mlflow_backend_uri(settings, ports)
    if backend is not None:
        argv = (*_tool("mlflow"), "server",
                "--artifacts-destination", settings.mlflow_artifact_root, "--serve-artifacts",
                "--host", HOST, "--port", str(ports.mlflow), "--workers", "1")
        # The store URL may hold a database password: environment, not argv (`ps` shows argv to everyone).
        components.append(Component("mlflow", argv, None, ports.mlflow, env=(("MLFLOW_BACKEND_STORE_URI", backend),)))
    # Each command runs under the restart-on-crash wrapper (what compose's `restart:` does in production).
    return [Component(c.name, _supervised(c.name, c.argv), c.health_key, c.port, c.needs_api, c.env)
            for c in components]


def _supervised(name: str, argv: Sequence[str]) -> tuple[str, ...]:
    return (sys.executable, "-m", "evertune_airflow.supervise", "--name", name, "--", *argv)


def run_dir(settings: Settings) -> Path:
    """Folder of the PID files."""
    return settings.home / "run"


def log_dir(settings: Settings) -> Path:
    """Folder of the component logs."""
    return settings.home / "logs"


def _pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def _restore_default_signals() -> None:
    # A shell starts background jobs with SIGINT ignored and children inherit SIG_IGN across exec;
    # Airflow and MLflow then never see Ctrl-C / `kill -INT`. Give every component the defaults back.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _spawn(component: Component, env: dict[str, str], settings: Settings) -> int:
    """Start one component in its own session; write its PID file; return the PID."""
    log_path = log_dir(settings) / f"{component.name}.log"
    with open(log_path, "ab") as log:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        log.write(f"\n==== {stamp} start {' '.join(component.argv)}\n".encode())
        log.flush()
        # preexec_fn: the only way to undo an inherited SIG_IGN in the child; `up` runs no threads here.
        proc = subprocess.Popen(
            component.argv, env={**env, **dict(component.env)}, cwd=settings.home, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            preexec_fn=_restore_default_signals,  # noqa: PLW1509 - only resets signal handlers, no locks taken
        )
    pid_file = _pid_file(settings, component.name)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(pid_file)
    return proc.pid


def _leader(settings: Settings, name: str):
    """The live session leader recorded in ``name``'s PID file, or ``None``."""
    import psutil

    pid_file = _pid_file(settings, name)
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        # Guard against PID reuse: the process must predate its PID file and still lead its session.
        if proc.create_time() > pid_file.stat().st_mtime + 1.0 or os.getsid(pid) != pid:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        return proc
    except (FileNotFoundError, ValueError, ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _reap(pid: int) -> None:
    # Only possible when the caller started the process itself (tests); otherwise init reaps it.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _own_lineage() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def stack_processes(settings: Settings) -> dict[str, list]:
    """Every live process of the stack, by component (``"other"``: marked processes outside a session).

    A component's processes are the members of its session (the LocalExecutor puts each task in its
    own process group, but not in its own session) plus descendants of its leader.
    """
    import psutil

    leaders = {c.name: _leader(settings, c.name) for c in _all_known_components(settings)}
    by_sid = {p.pid: name for name, p in leaders.items() if p is not None}
    found: dict[str, list] = {name: [] for name in leaders}
    found["other"] = []
    seen: set[int] = set()
    skip = _own_lineage()
    marker = str(settings.home)
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid in skip or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            sid = os.getsid(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if sid in by_sid:
            found[by_sid[sid]].append(proc)
            seen.add(proc.pid)
            continue
        try:
            if proc.environ().get(STACK_MARKER) == marker:
                found["other"].append(proc)
                seen.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    for name, leader in leaders.items():
        if leader is None:
            continue
        try:
            for child in leader.children(recursive=True):
                if child.pid not in seen and child.pid not in skip:
                    found[name].append(child)
                    seen.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def _all_known_components(settings: Settings) -> list[Component]:
    """Configured components plus any other with a PID file (e.g. mlflow from an earlier config)."""
    components = stack_components(settings)
    names = {c.name for c in components}
    if run_dir(settings).is_dir():
        for pid_file in sorted(run_dir(settings).glob("*.pid")):
            if pid_file.stem not in names:
                components.append(Component(pid_file.stem, ()))
    return components


def port_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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
            [*_tool("airflow"), "db", "migrate"], env=env, cwd=settings.home, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, check=False, timeout=600,
        )
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed (exit {result.returncode}); see {log_path}\n{_tail(log_path)}")
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

    if run(*_tool("airflow"), "fab-db", "migrate") != 0:
        raise StackError(f"airflow fab-db migrate failed; see {log_path}\n{_tail(log_path)}")
    if run(sys.executable, "-m", "evertune_airflow.stack", "fab-admin",
           extra={"EVERTUNE_ADMIN_PASSWORD": admin_password(settings) or ""}) != 0:
        raise StackError(f"creating the FAB admin user failed; see {log_path}\n{_tail(log_path)}")


def _cmd_fab_admin(_args: argparse.Namespace) -> int:
    """Create the FAB ``admin`` user with ``EVERTUNE_ADMIN_PASSWORD`` unless it exists (idempotent)."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import (
        get_application_builder,
    )

    password = os.environ.get("EVERTUNE_ADMIN_PASSWORD")
    if not password:
        raise StackError("EVERTUNE_ADMIN_PASSWORD is not set")
    with get_application_builder() as appbuilder:
        if appbuilder.sm.find_user(ADMIN_USER):
            print(f"user {ADMIN_USER} exists")
            return 0
        role = appbuilder.sm.find_role("Admin")
        if not appbuilder.sm.add_user(ADMIN_USER, "evertune", "admin", f"{ADMIN_USER}@localhost", role, password):
            raise StackError(f"FAB refused to create user {ADMIN_USER}")
    print(f"user {ADMIN_USER} created with role Admin")
    return 0


def log_tail(settings: Settings, component: str, lines: int = 60) -> str:
    """The last ``lines`` lines of a component's log (for error messages and test failures)."""
    return _tail(log_dir(settings) / f"{component}.log", lines)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _http_get(url: str, timeout: float = 3.0):
    import httpx

    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def health(settings: Settings | None = None) -> dict[str, Any]:
    """Health of every component: Airflow's monitor endpoint plus MLflow's ``/health``.

    Returns:
        ``{"airflow": {component: status}, "mlflow": "healthy"|"unreachable"|None, "healthy": bool}``;
        ``mlflow`` is ``None`` when the stack does not run MLflow.
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
    wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    ok = all(airflow.get(key) == "healthy" for key in wanted) and mlflow_state in (None, "healthy")
    workers: dict[str, str] | None = None
    if executor() == "CeleryExecutor":
        answering = _celery_ping(airflow_env(settings)["AIRFLOW__CELERY__BROKER_URL"])
        workers = {w.name: "healthy" if w.name in answering else "unreachable" for w in celery_workers()}
        ok = ok and all(state == "healthy" for state in workers.values())
    return {"airflow": airflow, "mlflow": mlflow_state, "workers": workers, "healthy": ok}


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


def admin_password(settings: Settings | None = None) -> str | None:
    """The ``admin`` user's password: ``EVERTUNE_ADMIN_PASSWORD``, the generated FAB one, or the one
    SimpleAuthManager generated on its first start (``None`` until then)."""
    settings = settings or get_settings()
    if auth_manager() == "fab":
        return os.environ.get("EVERTUNE_ADMIN_PASSWORD") or _stack_secrets(settings)["admin_password"]
    path = passwords_file(settings)
    try:
        return json.loads(path.read_text()).get(ADMIN_USER)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass
class UpResult:
    """What :func:`up` did."""

    started: list[str]
    already_running: list[str]
    seconds_to_healthy: float
    airflow_url: str
    mlflow_url: str | None
    password: str | None

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
        return "\n".join(lines)


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """Serialize ``up`` and ``down`` of one state folder (two terminals, or `make demo` beside `make up`)."""
    import fcntl

    if not run_dir(settings).is_dir():  # nothing was ever started here: nothing to race with
        yield
        return
    with open(run_dir(settings) / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


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
    with _stack_lock(settings):
        return _up(settings, timeout, POOLS if pools is None else pools)


def _up(settings: Settings, timeout: float, pools: dict[str, tuple[int, str]]) -> UpResult:
    ports = StackPorts.from_env()
    components = stack_components(settings, ports)
    running = [c.name for c in components if _leader(settings, c.name) is not None]
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
            _pid_file(settings, component.name).unlink(missing_ok=True)
        env = {**os.environ, **airflow_env(settings), STACK_MARKER: str(settings.home)}
        _migrate_db_if_needed(settings, env)
        mlflow_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
        # The job runner would add a handful of huey consumers; the pipeline does not use MLflow jobs.
        mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        deadline = time.monotonic() + timeout
        try:
            for phase in (False, True):
                if phase:
                    _wait_api(settings, components, deadline)
                for component in (c for c in missing if c.needs_api is phase):
                    _spawn(component, mlflow_env if component.name == "mlflow" else env, settings)
                    started.append(component.name)
            _wait_healthy(settings, components, deadline)
        except BaseException:
            _stop(settings, timeout=20.0, names=started)
            raise
    elapsed = time.monotonic() - begin
    client = AirflowClient.connect(settings)
    client.ensure_pools(pools)
    return UpResult(started, running, elapsed, airflow_url(ports),
                    mlflow_url(ports) if mlflow_backend_uri(settings, ports) else None, client.password)


def _check_alive(settings: Settings, components: Sequence[Component]) -> None:
    for component in components:
        if _leader(settings, component.name) is None and _pid_file(settings, component.name).exists():
            log_path = log_dir(settings) / f"{component.name}.log"
            raise StackError(f"{component.name} exited during start-up; last lines of {log_path}:\n"
                             f"{_tail(log_path)}")


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


@dataclass
class StopResult:
    """What :func:`stop` did."""

    stopped: dict[str, int]
    killed: list[int]
    seconds: float


#: Stopped last: running tasks report their end through the API server, and tasks may log to MLflow.
SERVERS_LAST = ("api-server", "mlflow")
#: Components whose processes must be gone before the servers stop (the triggerer cleans up on its own).
API_CLIENTS = ("scheduler", "dag-processor", "other")


def stop(settings: Settings | None = None, timeout: float = 20.0, names: Iterable[str] | None = None) -> StopResult:
    """Stop the stack: signal every process group, wait, SIGKILL what is left, then verify.

    Two rounds: first SIGINT to the scheduler, DAG processor and triggerer sessions (every process
    group in them, tasks included), and a wait until the scheduler's tasks are gone, so interrupted
    tasks can still report to the API server; then SIGTERM to the API and MLflow servers. What is
    still alive ``timeout`` seconds after its signal gets SIGKILL. Finally no process of the stack
    may remain and its ports must be free.

    Args:
        settings: Deployment settings; read from the environment when omitted.
        timeout: Seconds between the polite signal and SIGKILL, per round.
        names: Only these components (default: all, plus any marked stray process).

    Returns:
        Processes stopped per component, PIDs that needed SIGKILL, seconds taken.

    Raises:
        StackError: A process survived SIGKILL or a port is still taken.
    """
    settings = settings or get_settings()
    with _stack_lock(settings):
        return _stop(settings, timeout, names)


def _stop(settings: Settings, timeout: float, names: Iterable[str] | None) -> StopResult:
    import psutil

    ports = StackPorts.from_env()
    begin = time.monotonic()
    wanted = set(names) if names is not None else None
    found = {name: procs for name, procs in stack_processes(settings).items()
             if wanted is None or name in wanted}
    leaders = [leader for name in found if name != "other" and (leader := _leader(settings, name)) is not None]
    first = [p for name, procs in found.items() if name not in SERVERS_LAST for p in procs]
    servers = [p for name, procs in found.items() if name in SERVERS_LAST for p in procs]
    killed: list[int] = []

    def finish(procs: list, deadline: float) -> None:
        _gone, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
        if alive:
            killed.extend(p.pid for p in alive)
            _signal_groups(alive, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)

    # SIGINT first: Airflow 3 tasks only run on_kill() on SIGTERM and keep going, while SIGINT raises
    # KeyboardInterrupt in the task; scheduler, triggerer and DAG processor treat both signals alike.
    _signal_groups(first, signal.SIGINT)
    first_deadline = time.monotonic() + timeout
    finish([p for name, procs in found.items() if name in API_CLIENTS for p in procs], first_deadline)
    _signal_groups(servers, signal.SIGTERM)
    finish(servers, time.monotonic() + timeout)
    finish(first, first_deadline)
    for leader in leaders:
        _reap(leader.pid)

    remaining = {name: [p.pid for p in procs] for name, procs in stack_processes(settings).items()
                 if (wanted is None or name in wanted) and procs}
    if remaining:
        raise StackError(f"processes survived SIGKILL: {remaining}")
    for name in found:
        if name != "other":
            _pid_file(settings, name).unlink(missing_ok=True)
    if wanted is None and any(found.values()):
        _wait_ports_free(ports.all(), timeout=10)
    return StopResult({name: len(procs) for name, procs in found.items() if procs}, killed,
                      time.monotonic() - begin)


def _signal_groups(procs: Iterable, signum: int) -> None:
    """Signal the process group of each process once (and the process itself if it has no group of its own)."""
    groups: set[int] = set()
    for proc in procs:
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            continue
        if pgid in groups:
            continue
        groups.add(pgid)
        try:
            if pgid == os.getpgrp():
                # Never signal our own group (tests start the stack from the pytest process).
                os.kill(proc.pid, signum)
            else:
                os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def _wait_ports_free(ports: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        busy = {name: port for name, port in ports.items() if not port_free(port)}
        if not busy:
            return
        if time.monotonic() > deadline:
            raise StackError(f"ports still in use after stopping the stack: {busy}")
        time.sleep(0.2)


def memory(settings: Settings | None = None) -> dict[str, dict[str, float]]:
    """Processes and memory (RSS and PSS, MiB) per component.

    RSS double-counts pages shared between forked workers; PSS splits them fairly.
    """
    import psutil

    settings = settings or get_settings()
    report: dict[str, dict[str, float]] = {}
    for name, procs in stack_processes(settings).items():
        rss = pss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        if procs:
            report[name] = {"processes": len(procs), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}
    return report


def status_text(settings: Settings | None = None) -> str:
    """What runs, with PIDs, memory and health, as printable text."""
    settings = settings or get_settings()
    ports = StackPorts.from_env()
    usage = memory(settings)
    lines = [f"evertune stack  (EVERTUNE_HOME={settings.home})"]
    for component in _all_known_components(settings):
        leader = _leader(settings, component.name)
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
        lines.append(f"  health         airflow {state['airflow'] or 'unreachable'}  mlflow {state['mlflow']}")
        if state["workers"] is not None:
            lines.append(f"  workers        {state['workers']}  (Celery, broker ping)")
        password = admin_password(settings) or "?"
        lines.append(f"  Airflow UI     {airflow_url(ports)}  user {ADMIN_USER}  password {password}")
        if mlflow_backend_uri(settings, ports):
            lines.append(f"  MLflow UI      {mlflow_url(ports)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# REST client
# --------------------------------------------------------------------------------------------


def _iso(value: dt.date | dt.datetime | str | None) -> str | None:
    """ISO-8601 in UTC; a bare date means its midnight."""
    if value is None:
        return None
    if isinstance(value, str):
        # Airflow answers 500 to naive datetimes in filters; always send an offset.
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


class AirflowClient:
    """Minimal client of Airflow's REST API v2 with a JWT from ``POST /auth/token``."""

    def __init__(self, base_url: str, password: str, username: str = ADMIN_USER, timeout: float = 30.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    @classmethod
    def connect(cls, settings: Settings | None = None) -> AirflowClient:
        """Client for the embedded stack (URL from the ports, password from the generated file)."""
        password = admin_password(settings)
        if not password:
            raise StackError(f"no admin password in {passwords_file(settings or get_settings())}; is the stack up?")
        return cls(airflow_url(), password)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def token(self) -> str:
        """A fresh access token for the configured user."""
        answer = self._http.post("/auth/token", json={"username": self.username, "password": self.password})
        if answer.status_code not in (200, 201):
            raise StackError(f"POST /auth/token -> {answer.status_code}: {answer.text[:300]}")
        self._token = answer.json()["access_token"]
        return self._token

    def _send(self, method: str, path: str, retry: bool | None, **kwargs: Any):
        # Re-authenticate once on 401; retry "database is locked" answers (500/503) of idempotent calls.
        retry = method.upper() != "POST" if retry is None else retry
        delays = [0.5, 1.0, 2.0, 4.0, 8.0] if retry else []
        reauthenticated = False
        while True:
            token = self._token or self.token()
            answer = self._http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if answer.status_code == 401 and not reauthenticated:
                self._token, reauthenticated = None, True
                continue
            if answer.status_code in (500, 503) and delays:
                time.sleep(delays.pop(0))
                continue
            return answer

    def request(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 204), retry: bool | None = None,
                **kwargs: Any) -> Any:
        """Call the API and return the decoded JSON body (``None`` when empty).

        SQLite serializes writers, so "database is locked" answers (500/503) are retried for idempotent
        calls: GET, PUT, PATCH, DELETE, and POST only with ``retry=True``.

        Raises:
            StackError: The final status code is not in ``ok``.
        """
        answer = self._send(method, path, retry, **kwargs)
        if answer.status_code not in ok:
            raise StackError(f"{method} {path} -> {answer.status_code}: {answer.text[:500]}")
        if answer.status_code == 204 or not answer.content:
            return None
        return answer.json()

    def get_or_none(self, path: str, **params: Any) -> Any:
        """GET ``path``; ``None`` on 404."""
        answer = self._send("GET", path, None, params=params)
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise StackError(f"GET {path} -> {answer.status_code}: {answer.text[:500]}")
        return answer.json()

    # -- pools -----------------------------------------------------------------------------

    def ensure_pools(self, pools: dict[str, tuple[int, str]]) -> None:
        """Create or update pools (name -> (slots, description)) in one bulk call."""
        if not pools:
            return
        entities = [{"name": name, "slots": slots, "description": description, "include_deferred": False}
                    for name, (slots, description) in pools.items()]
        result = self.request("PATCH", "/api/v2/pools", json={"actions": [
            {"action": "create", "entities": entities, "action_on_existence": "overwrite"}]})
        errors = (result or {}).get("create", {}).get("errors") or []
        if errors:
            raise StackError(f"creating pools failed: {errors}")

    def pools(self) -> dict[str, int]:
        """Pool name -> slots."""
        body = self.request("GET", "/api/v2/pools", params={"limit": 100})
        return {pool["name"]: pool["slots"] for pool in body["pools"]}

    # -- DAGs ------------------------------------------------------------------------------

    def import_errors(self) -> list[dict]:
        """Current DAG import errors (``filename``, ``stack_trace``...)."""
        return self.request("GET", "/api/v2/importErrors", params={"limit": 100})["import_errors"]

    def dag(self, dag_id: str) -> dict | None:
        """The DAG's details, or ``None`` when it has not been parsed (yet)."""
        return self.get_or_none(f"/api/v2/dags/{dag_id}")

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0, poll: float = 2.0) -> dict:
        """Wait until the DAG processor has parsed ``dag_id``.

        Raises:
            StackError: Timed out, or an import error names the DAG; the message lists the import errors.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.dag(dag_id)
            if found is not None and not found.get("is_stale"):
                return found
            errors = self.import_errors()
            mine = [e for e in errors if dag_id in e.get("filename", "") or dag_id in e.get("stack_trace", "")]
            if mine or time.monotonic() > deadline:
                listing = "\n".join(f"--- {e['filename']}\n{e['stack_trace'][-1500:]}" for e in (mine or errors))
                reason = "has import errors" if mine else f"not parsed after {timeout:.0f} s"
                raise StackError(f"DAG {dag_id} {reason}; import errors:\n{listing or '(none)'}")
            time.sleep(poll)

    def unpause(self, dag_id: str) -> dict:
        """Unpause a DAG."""
        return self.request("PATCH", f"/api/v2/dags/{dag_id}", params={"update_mask": "is_paused"},
                            json={"is_paused": False})

    # -- runs ------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: dict | None = None,
                logical_date: dt.date | dt.datetime | str | None = None, run_id: str | None = None) -> str:
        """Trigger a run and return its run id.

        Args:
            dag_id: The DAG.
            conf: Run configuration (the DAG's Params).
            logical_date: ``None`` makes a run without a logical date (Airflow 3 default for manual runs).
            run_id: Explicit run id; triggering an existing one again returns it without a new run.

        Raises:
            StackError: The API refused the run (e.g. another run already has this logical date).
        """
        # A client-chosen run id makes the POST safe to retry: a repeat answers 409 instead of a second run.
        run_id = run_id or f"manual__{dt.datetime.now(dt.UTC).isoformat()}"
        body = {"dag_run_id": run_id, "logical_date": _iso(logical_date), "conf": conf or {}}
        answer = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body, ok=(200, 201, 409), retry=True)
        if answer.get("dag_run_id") != run_id and self.get_or_none(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}") is None:
            raise StackError(f"triggering {dag_id} failed: {answer}")
        return run_id

    def backfill(self, dag_id: str, from_date: dt.date | dt.datetime | str, to_date: dt.date | dt.datetime | str,
                 max_active_runs: int = 1, conf: dict | None = None, reprocess_behavior: str = "none",
                 run_backwards: bool = False) -> dict:
        """Create a backfill through ``POST /api/v2/backfills``; the running scheduler executes it.

        Both dates are inclusive logical dates. Returns the backfill (``id``...) plus ``run_ids``: the
        backfill runs it created, oldest first.
        """
        body = {
            "dag_id": dag_id, "from_date": _iso(from_date), "to_date": _iso(to_date),
            "max_active_runs": max_active_runs, "dag_run_conf": conf or {},
            "reprocess_behavior": reprocess_behavior, "run_backwards": run_backwards,
        }
        # On SQLite, Airflow refuses backfill creation while the scheduler holds the write lock (503 "Database is
        # locked"); nothing was created then, so waiting and posting again is safe.
        # Likewise a 409 "already a running backfill": the scheduler marks a finished backfill completed on its
        # next loop, a few seconds after its last run ends.
        for delay in (1, 2, 4, 8, 15, 30, 30, 30):
            answer = self._send("POST", "/api/v2/backfills", False, json=body)
            busy = (answer.status_code == 503 and "locked" in answer.text.lower()) or (
                answer.status_code == 409 and "already a running backfill" in answer.text.lower())
            if not busy:
                break
            time.sleep(delay)
        if answer.status_code not in (200, 201):
            raise StackError(f"POST /api/v2/backfills -> {answer.status_code}: {answer.text[:500]}")
        created = answer.json()
        runs = self.dag_runs(dag_id, run_type="backfill", logical_date_gte=_iso(from_date),
                             logical_date_lte=_iso(to_date))
        created["run_ids"] = [r["dag_run_id"] for r in sorted(runs, key=lambda r: r["logical_date"] or "")]
        return created

    def dag_runs(self, dag_id: str, run_type: str | None = None, **filters: Any) -> list[dict]:
        """Runs of a DAG (``~`` for all DAGs), newest first, optionally filtered (API query parameters)."""
        params = {"limit": 100, "order_by": "-run_after", **{k: v for k, v in filters.items() if v is not None}}
        if run_type:
            params["run_type"] = run_type
        runs: list[dict] = []
        while True:
            body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={**params, "offset": len(runs)})
            runs.extend(body["dag_runs"])
            if not body["dag_runs"] or len(runs) >= body["total_entries"]:
                return runs

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        """One run."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_runs(self, dag_id: str, run_ids: Sequence[str] | None = None, run_type: str | None = None,
                      timeout: float = 900.0, poll: float = 3.0, min_runs: int = 1,
                      stall_timeout: float = 600.0) -> list[dict]:
        """Wait until the given runs (or all runs of ``run_type``, at least ``min_runs``) have finished.

        Returns:
            The final run dicts (``state`` is ``success`` or ``failed``; check it).

        Raises:
            StackError: Timed out, or every unfinished run stayed queued for ``stall_timeout`` seconds while no
                run of the DAG was running; the message lists the unfinished runs and what :meth:`diagnose` found.
        """
        if run_ids is None and run_type is None:
            raise ValueError("give run_ids or run_type")
        deadline = time.monotonic() + timeout
        last_change, last_states = time.monotonic(), None
        while True:
            if run_ids is not None:
                runs = [self.dag_run(dag_id, run_id) for run_id in run_ids]
            else:
                runs = self.dag_runs(dag_id, run_type=run_type)
            pending = [r for r in runs if r["state"] not in FINISHED_RUN_STATES]
            if not pending and len(runs) >= (len(run_ids) if run_ids is not None else min_runs):
                return runs
            states = [(r["dag_run_id"], r["state"]) for r in runs]
            if states != last_states:
                last_change, last_states = time.monotonic(), states
            elif pending and all(r["state"] == "queued" for r in pending) and self.dag_runs(dag_id, state="running"):
                # Queued behind another run of the DAG (max_active_runs): waiting, not stalled.
                last_change = time.monotonic()
            listing = ", ".join(f"{r['dag_run_id']}={r['state']}" for r in pending) or f"{len(runs)} runs"
            # Queued runs that nobody starts for minutes while no run of the DAG runs mean the scheduler is not
            # scheduling: fail with what explains it instead of waiting out the whole timeout.
            stalled = pending and all(r["state"] == "queued" for r in pending) and (
                time.monotonic() - last_change > stall_timeout)
            if stalled or time.monotonic() > deadline:
                why = f"queued and not started for {stall_timeout:.0f} s" if stalled else f"not finished after {timeout:.0f} s"
                # The scheduler starts a queued run only once its run_after has passed (by the DB's clock).
                after = ", ".join(f"{r['dag_run_id']} run_after={r.get('run_after')}" for r in pending)
                raise StackError(f"runs of {dag_id} {why}: {listing}\n{after}\n{self.diagnose(dag_id)}")
            time.sleep(poll)

    def diagnose(self, dag_id: str) -> str:
        """What the API says about why a DAG's runs may not progress: DAG flags, health, backfills."""
        lines = []
        try:
            dag = self.dag(dag_id) or {}
            lines.append(f"dag {dag_id}: is_paused={dag.get('is_paused')} is_stale={dag.get('is_stale')} "
                         f"max_active_runs={dag.get('max_active_runs')}")
            answer = self._send("GET", "/api/v2/monitor/health", None)
            lines.append(f"health: {answer.text[:1000]}")
            lines.append(f"server clock (Date header): {answer.headers.get('date')}; "
                         f"this process: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
            backfills = self.request("GET", "/api/v2/backfills", params={"dag_id": dag_id}).get("backfills", [])
            for item in backfills:
                lines.append(f"backfill {item.get('id')}: is_paused={item.get('is_paused')} "
                             f"completed_at={item.get('completed_at')} max_active_runs={item.get('max_active_runs')}")
        except StackError as exc:  # the diagnosis must not hide the original problem
            lines.append(f"(API unavailable while diagnosing: {exc})")
        return "\n".join(lines)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Task instances of one run (``task_id``, ``state``, ``try_number``, ``duration``...)."""
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 1000})["task_instances"]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    result = up(timeout=args.timeout)
    print(result.describe())
    settings = get_settings()
    print(f"  state       {settings.home}\n  logs        {log_dir(settings)}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    result = stop(timeout=args.timeout)
    if not result.stopped:
        print("evertune stack: nothing was running")
        return 0
    summary = ", ".join(f"{name} ({count} procs)" for name, count in result.stopped.items())
    forced = f"; SIGKILL needed for {len(result.killed)}" if result.killed else ""
    print(f"evertune stack stopped in {result.seconds:.1f} s: {summary}{forced}")
    return 0


def _cmd_status(_args: argparse.Namespace) -> int:
    print(status_text())
    return 0


def _cmd_env(_args: argparse.Namespace) -> int:
    import shlex

    for key, value in sorted(airflow_env().items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _cmd_password(_args: argparse.Namespace) -> int:
    password = admin_password()
    if not password:
        print("no password yet: run `make up` first", file=sys.stderr)
        return 1
    print(password)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m evertune_airflow.stack``."""
    parser = argparse.ArgumentParser(prog="python -m evertune_airflow.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the stack (idempotent) and wait until healthy")
    up_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for health")
    up_parser.set_defaults(func=_cmd_up)
    down_parser = sub.add_parser("down", help="stop every process of the stack")
    down_parser.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL, per round")
    down_parser.set_defaults(func=_cmd_down)
    sub.add_parser("status", help="what runs, memory, health").set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print the Airflow environment as shell exports").set_defaults(func=_cmd_env)
    sub.add_parser("password", help="print the admin password").set_defaults(func=_cmd_password)
    sub.add_parser("fab-admin", help="create the FAB admin user (EVERTUNE_AUTH_MANAGER=fab; run by `up`)"
                   ).set_defaults(func=_cmd_fab_admin)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EvertuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

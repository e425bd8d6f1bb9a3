"""The embedded stack's configuration: ports, executor and auth choice, secrets, the Airflow environment.

All Airflow configuration of the stack is the environment built by :func:`airflow_env`; the stack, the
demo and the tests share it. No side effects at import time, cheap imports (Airflow processes import
:data:`SQLITE_CONNECT_ARGS` from here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evertune.errors import EvertuneError
from evertune.runtime import OFFLINE_ENV
from evertune.settings import REPO_ROOT, Settings, get_settings

HOST = "127.0.0.1"
ADMIN_USER = "admin"
#: Marker put into the environment of every process the stack starts (inherited by their children),
#: so ``down`` also finds processes that left their session.
STACK_MARKER = "EVERTUNE_STACK"

#: Environment variable -> default port.
PORT_VARS: dict[str, int] = {
    "EVERTUNE_AIRFLOW_PORT": 8080,
    "EVERTUNE_MLFLOW_PORT": 5000,
    "EVERTUNE_WORKER_LOG_PORT": 8793,
    "EVERTUNE_TRIGGERER_LOG_PORT": 8794,
    # The answer service (evertune.serving; its own default is evertune.serving.server.DEFAULT_PORT).
    "EVERTUNE_SERVE_PORT": 8090,
}
#: ``EVERTUNE_SERVE=0`` (or false/no/off) leaves the answer service out of the stack (it is on by default).
SERVE_SWITCH = "EVERTUNE_SERVE"


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
#: ``EVERTUNE_MLFLOW_AUTH``: ``none`` (the embedded default: no accounts, the server listens on 127.0.0.1 only) or
#: ``basic`` (MLflow's basic-auth app as in docker/compose.yaml: the pipeline account writes, people only read).
MLFLOW_AUTH_MODES = ("none", "basic")

#: Modules the LocalExecutor's forkserver imports once (``[scheduler] mp_forkserver_preload``; a Celery worker
#: imports them before forking its pool: :mod:`evertune_airflow.celery_config`). Every task process is forked
#: from a process that has them, so a task starts with its libraries already imported instead of paying
#: ~5-17 s of imports each (docs/benchmarks.md §10b). Override with ``EVERTUNE_TASK_PRELOAD`` (empty: none).
#: LanceDB is left out on purpose: its import starts an async runtime, and it warns that fork support is
#: experimental (a small chance of deadlock); the tasks that write the index import it themselves (~2 s).
TASK_PRELOAD = ("airflow.sdk", "airflow.sdk.execution_time.task_runner", "airflow.executors.local_executor",
                "torch", "transformers", "sentence_transformers", "peft", "trl", "datasets",
                "great_expectations", "mlflow", "pandas", "pyarrow.parquet", "evertune.pipeline",
                "evertune_airflow.tasks")


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


def mlflow_auth() -> str:
    """``none`` or ``basic`` (``EVERTUNE_MLFLOW_AUTH``, default none): authentication of the stack's MLflow server."""
    value = (os.environ.get("EVERTUNE_MLFLOW_AUTH") or "none").strip().lower()
    if value not in MLFLOW_AUTH_MODES:
        raise StackError(f"EVERTUNE_MLFLOW_AUTH must be one of {', '.join(MLFLOW_AUTH_MODES)}, got {value!r}")
    return value


def mlflow_accounts(settings: Settings | None = None):
    """The MLflow admin, pipeline and reader accounts of the stack's basic-auth server.

    Names and passwords come from the variables ``evertune mlflow-access`` reads where they are set
    (``MLFLOW_AUTH_ADMIN_PASSWORD``, ``EVERTUNE_MLFLOW_PIPELINE_PASSWORD``, ...); a password that is not set is
    generated once into ``$AIRFLOW_HOME/evertune-secrets.json`` (0600), like the stack's other keys.

    Returns:
        :class:`evertune.tuning.mlflow_access.Accounts`.
    """
    from evertune.tuning.mlflow_access import accounts_from_env

    keys = _stack_secrets(settings or get_settings())
    generated = {"MLFLOW_AUTH_ADMIN_PASSWORD": keys["mlflow_admin_password"],
                 "EVERTUNE_MLFLOW_PIPELINE_PASSWORD": keys["mlflow_pipeline_password"],
                 "EVERTUNE_MLFLOW_READER_PASSWORD": keys["mlflow_reader_password"]}
    return accounts_from_env({**generated, **{key: value for key, value in os.environ.items() if value}})


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




@dataclass(frozen=True)
class StackPorts:
    """TCP ports of the embedded stack (all bound to 127.0.0.1)."""

    airflow: int
    mlflow: int
    worker_log: int
    triggerer_log: int
    serve: int

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
                "triggerer-log": self.triggerer_log, "serve": self.serve}


def serve_enabled() -> bool:
    """Whether the stack runs the answer service (``EVERTUNE_SERVE``, default on)."""
    return (os.environ.get(SERVE_SWITCH) or "1").strip().lower() not in {"0", "false", "no", "off"}


def serve_url(ports: StackPorts | None = None) -> str:
    """Base URL of the stack's answer service."""
    return f"http://{HOST}:{(ports or StackPorts.from_env()).serve}"


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
        # EVERTUNE_MLFLOW_AUTH=basic: the MLflow server's CSRF key and its accounts (see mlflow_accounts).
        "mlflow_flask_secret_key": lambda: secrets.token_urlsafe(32),
        "mlflow_admin_password": lambda: secrets.token_urlsafe(18),
        "mlflow_pipeline_password": lambda: secrets.token_urlsafe(18),
        "mlflow_reader_password": lambda: secrets.token_urlsafe(18),
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


#: The caller's MLflow session (``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID``; a run exports its id):
#: not the stack's. A task that inherited them would look that experiment up in the stack's own tracking server.
CALLER_MLFLOW_SESSION = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def stack_process_env(settings: Settings | None = None) -> dict[str, str]:
    """The whole environment of the stack's processes: this one's, minus the caller's MLflow session, plus
    :func:`airflow_env` and the stack marker."""
    settings = settings or get_settings()
    inherited = {key: value for key, value in os.environ.items() if key not in CALLER_MLFLOW_SESSION}
    return {**inherited, **airflow_env(settings), STACK_MARKER: str(settings.home)}


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment for every Airflow process of the embedded stack (the only place it is configured).

    Returns only the variables to add to ``os.environ``; :func:`stack_process_env` merges them into the
    environment the stack's processes get. Offline variables already set by the operator win,
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
                                                             ports.triggerer_log, ports.serve), strict=True)},
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
    if env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor":
        env.update(_local_executor_env())
    if auth_manager() == "simple":
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{ADMIN_USER}:admin"
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords_file(settings))
    env.update(_database_env(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], env["AIRFLOW__CORE__EXECUTOR"]))
    if env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor":
        env.update(_celery_env(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                               env["AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME"]))
    keys = _stack_secrets(settings)
    for variable, key in (("AIRFLOW__API_AUTH__JWT_SECRET", "jwt_secret"), ("AIRFLOW__CORE__FERNET_KEY", "fernet_key"),
                          ("AIRFLOW__API__SECRET_KEY", "api_secret_key")):
        env[variable] = os.environ.get(variable) or keys[key]
    if mlflow_backend_uri(settings, ports) is not None:
        env["MLFLOW_TRACKING_URI"] = mlflow_url(ports)
        if mlflow_auth() == "basic":  # every task writes to MLflow as the pipeline account
            env.update(mlflow_accounts(settings).pipeline.env())
    else:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    return env



def _database_env(sql_alchemy_conn: str, executor_name: str) -> dict[str, str]:
    """SQLite driver settings for the stack's database (none for a database server).

    Raises:
        StackError: SQLite with an executor other than LocalExecutor (SQLite allows one writer process).
    """
    if not sql_alchemy_conn.startswith("sqlite"):
        return {}
    if executor_name != "LocalExecutor":
        raise StackError("CeleryExecutor needs a database server: set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "
                         "to a PostgreSQL URL (SQLite allows one writer process)")
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "evertune_airflow.stack_env.SQLITE_CONNECT_ARGS",
        # Each retry already waits up to 30 s for the lock; Airflow's 3 retries let a starved scheduler exit.
        "AIRFLOW__DATABASE__MAX_DB_RETRIES": "10",
    }


def task_preload() -> list[str]:
    """The modules to preload for tasks: ``EVERTUNE_TASK_PRELOAD`` (comma-separated, empty: none), else
    :data:`TASK_PRELOAD`. The one reading of that variable, for the forkserver and for Celery workers."""
    preload = os.environ.get("EVERTUNE_TASK_PRELOAD")
    return [*TASK_PRELOAD] if preload is None else [name.strip() for name in preload.split(",") if name.strip()]


def _local_executor_env() -> dict[str, str]:
    """The scheduler's LocalExecutor starts its workers from a forkserver that has imported :data:`TASK_PRELOAD`.

    Airflow forks each task process from its worker (``supervise``), so the task inherits those modules
    copy-on-write. The forkserver only imports: no library has started a thread pool yet when it forks.
    Whatever the list, :mod:`evertune_airflow.loopback_preload` comes first: the log server is forked from the
    forkserver too, and must bind 127.0.0.1 as it does under ``fork``.
    """
    return {"AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": ",".join(["evertune_airflow.loopback_preload",
                                                                   *task_preload()])}


def _celery_env(sql_alchemy_conn: str, task_token_ttl: str) -> dict[str, str]:
    """CeleryExecutor settings: the operator's broker, a result backend, late acknowledgement.

    Args:
        sql_alchemy_conn: The metadata database (the default result backend).
        task_token_ttl: Seconds a task token lives (the broker's visibility timeout must outlast a task).

    Raises:
        StackError: ``AIRFLOW__CELERY__BROKER_URL`` is not set.
    """
    broker = os.environ.get("AIRFLOW__CELERY__BROKER_URL")
    if not broker:
        raise StackError("CeleryExecutor needs a broker: set AIRFLOW__CELERY__BROKER_URL (e.g. redis://host:6379/0)")
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": os.environ.get("AIRFLOW__CELERY__RESULT_BACKEND")
        or _result_backend(sql_alchemy_conn),
        # A task the worker has taken is acknowledged only when it ends, so a crashed worker's task is
        # redelivered; the visibility timeout must outlast the longest task (training: hours).
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        # Airflow's defaults plus the task libraries imported once per worker, before its pool forks.
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "evertune_airflow.celery_config.CELERY_CONFIG",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": task_token_ttl,
    }


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


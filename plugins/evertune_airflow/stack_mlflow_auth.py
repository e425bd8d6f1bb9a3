"""The stack's MLflow server with basic auth (``EVERTUNE_MLFLOW_AUTH=basic``): its config and its accounts.

What docker/compose.yaml runs, on one machine: ``mlflow server --app-name basic-auth`` with
``default_permission = READ`` (:func:`server_env` writes MLflow's auth config, ``basic_auth.ini``, and hands the
server its admin and CSRF key through the environment); once the server is healthy, ``up`` calls
:func:`ensure_accounts`, which creates the pipeline account the Airflow components use, the reader account the
answer service uses, and the pipeline's grants (:func:`evertune.tuning.mlflow_access.setup_access`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evertune.settings import Settings
from evertune_airflow.stack_env import _stack_secrets, mlflow_accounts, mlflow_url

#: Seconds a server worker trusts a password it has checked (``auth_cache_ttl_seconds``; MLflow's default is 0).
AUTH_CACHE_SECONDS = 60


def auth_config_path(settings: Settings) -> Path:
    """The server's ``basic_auth.ini`` (``MLFLOW_AUTH_CONFIG_PATH``), beside the SQLite store."""
    return settings.home / "mlflow" / "basic_auth.ini"


def auth_database_uri(settings: Settings, backend_uri: str) -> str:
    """Where the server keeps users and grants: a database server's own database (MLflow's auth tables have
    their own migration table, ``alembic_version_auth``), or a SQLite file of its own next to a SQLite store."""
    if backend_uri.startswith("sqlite"):
        return f"sqlite:///{settings.home / 'mlflow' / 'basic_auth.db'}"
    return backend_uri


def auth_config_text(database_uri: str) -> str:
    """MLflow's auth config: signed-in users read everything, write nothing without a grant.

    A successful password check is cached for :data:`AUTH_CACHE_SECONDS` per server worker: MLflow stores
    scrypt hashes, and checking one on every request of a task (each metric batch, each artifact file) costs
    0.1-1 s of CPU. The price: a changed password or deleted user still works for up to that long.
    """
    # configparser interpolates "%": a URL-encoded password must reach MLflow unchanged.
    return ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {database_uri.replace('%', '%%')}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n")


def server_env(settings: Settings, backend_uri: str) -> dict[str, str]:
    """Write the auth config (mode 0600: it may hold a database password) and return the server's variables.

    Args:
        settings: Deployment settings (where the config goes).
        backend_uri: The store the server serves (its auth tables go with it).

    Returns:
        ``MLFLOW_AUTH_CONFIG_PATH``, the admin the server creates on its first start, the CSRF key.
    """
    path = auth_config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(auth_config_text(auth_database_uri(settings, backend_uri)))
    tmp.replace(path)
    admin = mlflow_accounts(settings).admin
    return {"MLFLOW_AUTH_CONFIG_PATH": str(path), "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": _stack_secrets(settings)["mlflow_flask_secret_key"]}


def ensure_accounts(settings: Settings) -> dict[str, Any]:
    """Create or update the pipeline and reader accounts and the pipeline's grants (idempotent).

    Returns:
        :func:`evertune.tuning.mlflow_access.setup_access`'s summary.
    """
    from evertune.tuning.mlflow_access import setup_for_params

    return setup_for_params(mlflow_url(), mlflow_accounts(settings), artifact_root=settings.mlflow_artifact_root)

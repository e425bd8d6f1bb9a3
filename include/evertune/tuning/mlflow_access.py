"""Only the pipeline moves ``champion``: the accounts and grants of an MLflow server that runs basic auth.

``mlflow server --app-name basic-auth`` with ``default_permission = READ`` answers no anonymous request (401), lets
every signed-in user read, and refuses a write on a resource the user holds no grant for (403): setting or deleting
an alias needs ``MANAGE`` on the registered model. :func:`setup_access` (``evertune mlflow-access``) makes, as the
MLflow admin and idempotently:

* the pipeline account (``MANAGE`` on the registered model ``register.model_name`` and on the experiments
  ``register.experiment_name`` and ``freshness.experiment_name``), the one Airflow's tasks use;
* read-only accounts for people (no grant: the ``READ`` default);
* the registered model and the experiments themselves, before anyone else can claim their names (MLflow gives
  the creator of a resource ``MANAGE`` on it).

An experiment on an artifact-proxy root (``mlflow-artifacts:``) is created at the server's default location,
``mlflow-artifacts:/<experiment id>``: the proxy authorizes an upload by the experiment id at the start of its
path, and refuses one under a name-based location (``mlflow-artifacts:///evertune/<name>``) to everyone but the
admin. Passwords are set to the given ones on every run, so the secret store stays the source of truth.

``mlflow`` is a heavy import: every function imports it when called.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evertune.errors import ConfigError

log = logging.getLogger(__name__)

#: Default user names (the passwords have no default).
PIPELINE_USER = "evertune-pipeline"
READER_USER = "evertune-reader"
ADMIN_USER = "admin"
#: What the pipeline account holds on its registered model and experiments (aliases: set and delete).
PIPELINE_PERMISSION = "MANAGE"
#: The variables MLflow's own client reads for HTTP basic auth.
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
#: MLflow refuses shorter passwords (mlflow.utils.validation._validate_password).
MIN_PASSWORD_LENGTH = 12
_PROXY_SCHEME = "mlflow-artifacts:"


@dataclass(frozen=True)
class Account:
    """One MLflow user: name and password (never shown by ``repr``)."""

    username: str
    password: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """The client variables that make MLflow's client authenticate as this account."""
        return dict(zip(CREDENTIAL_VARS, (self.username, self.password), strict=True))


@dataclass(frozen=True)
class Accounts:
    """Who the setup signs in as (the admin), who writes (the pipeline) and who only reads."""

    admin: Account
    pipeline: Account
    readers: tuple[Account, ...] = ()


def _account(environ: Mapping[str, str], user_var: str, password_var: str, default_user: str) -> Account:
    password = environ.get(password_var) or ""
    if not password:
        raise ConfigError(f"{password_var} is not set: the MLflow account setup needs it")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"{password_var} is shorter than {MIN_PASSWORD_LENGTH} characters (MLflow refuses it)")
    return Account(environ.get(user_var) or default_user, password)


def accounts_from_env(environ: Mapping[str, str] | None = None) -> Accounts:
    """The accounts from the environment (secrets injected by compose, Kubernetes or a shell).

    ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD`` (the variables the server bootstraps its
    admin from), ``EVERTUNE_MLFLOW_PIPELINE_USERNAME`` / ``..._PASSWORD`` and, when its password is set,
    ``EVERTUNE_MLFLOW_READER_USERNAME`` / ``..._PASSWORD``.

    Raises:
        ConfigError: A required password is missing or too short for MLflow, or an account reuses the admin's name.
    """
    environ = os.environ if environ is None else environ
    admin = _account(environ, "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_USER)
    pipeline = _account(environ, "EVERTUNE_MLFLOW_PIPELINE_USERNAME", "EVERTUNE_MLFLOW_PIPELINE_PASSWORD",
                        PIPELINE_USER)
    readers = ()
    if environ.get("EVERTUNE_MLFLOW_READER_PASSWORD"):
        readers = (_account(environ, "EVERTUNE_MLFLOW_READER_USERNAME", "EVERTUNE_MLFLOW_READER_PASSWORD",
                            READER_USER),)
    names = [a.username for a in (pipeline, *readers)]
    if admin.username in names or len(set(names)) != len(names):
        raise ConfigError(f"the MLflow admin, pipeline and reader accounts need distinct names, got "
                          f"{[admin.username, *names]}")
    return Accounts(admin, pipeline, readers)


@contextlib.contextmanager
def signed_in_as(account: Account | None) -> Iterator[None]:
    """MLflow clients made inside authenticate as ``account`` (anonymously for ``None``); restored afterwards."""
    saved = {name: os.environ.get(name) for name in CREDENTIAL_VARS}
    for name in CREDENTIAL_VARS:
        os.environ.pop(name, None)
    os.environ.update(account.env() if account else {})
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _ensure_user(auth: Any, account: Account) -> str:
    """Create ``account`` or set its password; never an admin. Returns ``created`` or ``updated``."""
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(account.username)
    except MlflowException:
        auth.create_user(account.username, account.password)
        return "created"
    auth.update_user_password(account.username, account.password)
    auth.update_user_admin(account.username, False)
    return "updated"


def _grant(auth: Any, username: str, resource_type: str, resource_id: str) -> None:
    """Give ``username`` :data:`PIPELINE_PERMISSION` on one resource; an existing grant of another level is replaced."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, PIPELINE_PERMISSION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if auth.get_user_permission(username, resource_type, resource_id).permission != PIPELINE_PERMISSION:
            auth.revoke_user_permission(username, resource_type, resource_id)
            auth.grant_user_permission(username, resource_type, resource_id, PIPELINE_PERMISSION)


def _ensure_experiment(client: Any, name: str, artifact_root: str) -> str:
    """The id of experiment ``name``, created (or restored) by the admin. On a proxy root the server picks the
    id-based location its upload check reads; elsewhere the pipeline's own layout (tracking.artifact_location)."""
    from evertune.tuning.tracking import ensure_experiment

    if not artifact_root.startswith(_PROXY_SCHEME):
        return ensure_experiment(client, name, artifact_root)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    location = experiment.artifact_location.removeprefix(_PROXY_SCHEME).lstrip("/")
    if location.split("/", 1)[0] != experiment.experiment_id:
        log.warning("experiment %s stores artifacts at %s: the proxy refuses the pipeline's uploads there "
                    "(it authorizes by a leading experiment id); recreate it under another name",
                    name, experiment.artifact_location)
    return experiment.experiment_id


def setup_access(tracking_uri: str, accounts: Accounts, model_name: str, experiments: Sequence[str],
                 artifact_root: str) -> dict[str, Any]:
    """Create or update the accounts, the registered model, the experiments and the pipeline's grants.

    Idempotent: a second run changes nothing but the passwords (set to the given ones).

    Args:
        tracking_uri: The MLflow server (``http(s)://``), running ``--app-name basic-auth``.
        accounts: The admin to sign in as, the pipeline account, the read-only accounts.
        model_name: The registered model the pipeline owns (``register.model_name``).
        experiments: The experiments the pipeline writes to.
        artifact_root: The pipeline's artifact root (``EVERTUNE_MLFLOW_ARTIFACT_ROOT``).

    Returns:
        What was done: users (created/updated), the model, experiment ids, the pipeline's grants.

    Raises:
        ConfigError: The URI is not a server (database and file stores have no accounts).
    """
    if not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLflow accounts need an MLflow server URL, got {tracking_uri.split('://')[0]}://...")
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    with signed_in_as(accounts.admin):
        auth = AuthServiceClient(tracking_uri)
        users = {a.username: _ensure_user(auth, a) for a in (accounts.pipeline, *accounts.readers)}
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            client.get_registered_model(model_name)
        except MlflowException:
            client.create_registered_model(model_name, description="evertune RAG assistant (merged LoRA fine-tunes)")
        grants = [("registered_model", model_name)]
        experiment_ids = {name: _ensure_experiment(client, name, artifact_root) for name in dict.fromkeys(experiments)}
        grants += [("experiment", experiment_id) for experiment_id in experiment_ids.values()]
        for resource_type, resource_id in grants:
            _grant(auth, accounts.pipeline.username, resource_type, resource_id)
    return {"users": users, "registered_model": model_name, "experiments": experiment_ids,
            "pipeline_grants": [f"{kind}:{rid}={PIPELINE_PERMISSION}" for kind, rid in grants]}


def setup_for_params(tracking_uri: str, accounts: Accounts, params_path: str | None = None,
                     artifact_root: str | None = None) -> dict[str, Any]:
    """:func:`setup_access` for the registered model and experiments named in ``params.yaml``."""
    from evertune.config import load_params
    from evertune.settings import get_settings

    params = load_params(params_path)
    return setup_access(tracking_uri, accounts, params.registry.model_name,
                        [params.registry.experiment_name, params.freshness.experiment_name],
                        artifact_root or get_settings().mlflow_artifact_root)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mlflow-access`` command to the ``evertune`` CLI."""
    command = subparsers.add_parser(
        "mlflow-access", help="create the MLflow pipeline and reader accounts and their grants (basic auth)")
    command.add_argument("--params", default=None, help="params file (default: $EVERTUNE_PARAMS or ./params.yaml)")
    command.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from evertune.settings import get_settings

    summary = setup_for_params(get_settings().mlflow_tracking_uri, accounts_from_env(), args.params)
    print(json.dumps(summary, indent=2))
    return 0

"""MLflow basic auth: the account settings and the stack's switch (no server started; the distributed test
checks a real basic-auth server refusing anonymous and read-only alias moves)."""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

import pytest

from evertune.errors import ConfigError
from evertune.settings import get_settings
from evertune.tuning.mlflow_access import (
    PIPELINE_USER,
    READER_USER,
    Account,
    Accounts,
    accounts_from_env,
    setup_access,
    signed_in_as,
)
from evertune_airflow import stack_env, stack_mlflow_auth, stack_processes

PASSWORDS = {"MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-0123",
             "EVERTUNE_MLFLOW_PIPELINE_PASSWORD": "pipeline-password-0123"}


def test_accounts_come_from_the_environment_with_default_names() -> None:
    accounts = accounts_from_env({**PASSWORDS, "EVERTUNE_MLFLOW_READER_PASSWORD": "reader-password-0123"})
    assert accounts.admin == Account("admin", "admin-password-0123")
    assert accounts.pipeline == Account(PIPELINE_USER, "pipeline-password-0123")
    assert accounts.readers == (Account(READER_USER, "reader-password-0123"),)
    assert accounts_from_env(PASSWORDS).readers == ()  # no reader password: no reader account
    assert "pipeline-password-0123" not in repr(accounts)
    assert accounts.pipeline.env() == {"MLFLOW_TRACKING_USERNAME": PIPELINE_USER,
                                       "MLFLOW_TRACKING_PASSWORD": "pipeline-password-0123"}


@pytest.mark.parametrize(("environ", "message"), [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-0123"}, "EVERTUNE_MLFLOW_PIPELINE_PASSWORD is not set"),
    ({**PASSWORDS, "EVERTUNE_MLFLOW_PIPELINE_PASSWORD": "short"}, "shorter than 12"),
    ({**PASSWORDS, "EVERTUNE_MLFLOW_PIPELINE_USERNAME": "admin"}, "distinct names"),
])
def test_missing_short_or_clashing_credentials_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        accounts_from_env(environ)


def test_signed_in_as_sets_and_restores_the_client_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with signed_in_as(Account("evertune-pipeline", "pipeline-password-0123")):
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "evertune-pipeline"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pipeline-password-0123"
    with signed_in_as(None):
        assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "someone" and "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_accounts_need_a_server() -> None:
    accounts = Accounts(Account("admin", "x" * 12), Account("p", "y" * 12))
    with pytest.raises(ConfigError, match="MLflow server URL"):
        setup_access("postgresql://u:secret@h/db", accounts, "m", ["e"], "/tmp/a")


# ------------------------------------------------------------------------------------------ the stack


def _components(settings) -> dict:
    return {c.name: c for c in stack_processes.stack_components(settings)}


def test_embedded_default_has_no_mlflow_auth(evertune_home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVERTUNE_MLFLOW_AUTH", raising=False)
    settings = get_settings()
    assert stack_env.mlflow_auth() == "none"
    env = stack_env.airflow_env(settings)
    assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    components = _components(settings)
    assert "--app-name" not in components["mlflow"].argv
    assert components["mlflow"].argv[components["mlflow"].argv.index("--host") + 1] == "127.0.0.1"
    assert components["serve"].argv[components["serve"].argv.index("--host") + 1] == "127.0.0.1"
    assert components["serve"].env == ()
    monkeypatch.setenv("EVERTUNE_MLFLOW_AUTH", "oauth")
    with pytest.raises(stack_env.StackError, match="EVERTUNE_MLFLOW_AUTH"):
        stack_env.mlflow_auth()


def test_basic_mode_runs_the_auth_app_and_hands_out_the_accounts(evertune_home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVERTUNE_MLFLOW_AUTH", "basic")
    settings = get_settings()
    accounts = stack_env.mlflow_accounts(settings)
    assert accounts == stack_env.mlflow_accounts(settings), "generated once, then reused"
    assert {accounts.admin.username, accounts.pipeline.username} == {"admin", PIPELINE_USER}
    # Airflow's components (every task) write as the pipeline; the answer service reads as the reader.
    env = stack_env.airflow_env(settings)
    assert env["MLFLOW_TRACKING_USERNAME"] == PIPELINE_USER
    assert env["MLFLOW_TRACKING_PASSWORD"] == accounts.pipeline.password
    components = _components(settings)
    argv = components["mlflow"].argv
    assert argv[argv.index("server") + 1: argv.index("server") + 3] == ("--app-name", "basic-auth")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert dict(components["serve"].env) == accounts.readers[0].env()
    assert not any(accounts.admin.password in " ".join(c.argv) for c in components.values())


def test_server_env_writes_a_private_read_default_config(evertune_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVERTUNE_MLFLOW_AUTH", "basic")
    settings = get_settings()
    backend = "postgresql+psycopg2://mlflow:p%40ss-word@127.0.0.1:5432/mlflow"
    env = stack_mlflow_auth.server_env(settings, backend)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = configparser.ConfigParser()  # what mlflow.server.auth.config.read_auth_config does
    config.read(path)
    assert config["mlflow"]["default_permission"] == "READ"
    assert config["mlflow"]["database_uri"] == backend  # auth tables beside the registry, "%" intact
    assert int(config["mlflow"]["auth_cache_ttl_seconds"]) > 0
    assert "admin_password" not in config["mlflow"]  # the admin comes from the environment
    accounts = stack_env.mlflow_accounts(settings)
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (
        accounts.admin.username, accounts.admin.password)
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    sqlite_store = f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"
    assert stack_mlflow_auth.auth_database_uri(settings, sqlite_store).endswith("/mlflow/basic_auth.db")

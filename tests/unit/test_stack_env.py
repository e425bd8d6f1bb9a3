"""The embedded stack's environment helpers (no processes started)."""

from __future__ import annotations

import importlib

import pytest

from evertune_airflow.stack_env import StackError, _celery_env, _database_env


def test_sqlite_gets_the_long_lock_wait_and_more_retries() -> None:
    env = _database_env("sqlite:////tmp/airflow.db", "LocalExecutor")
    assert env["AIRFLOW__DATABASE__MAX_DB_RETRIES"] == "10"
    # Airflow imports the connect arguments by dotted path: the path must name the real dict.
    module, _, name = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"].rpartition(".")
    assert getattr(importlib.import_module(module), name) == {"timeout": 30}


def test_a_database_server_needs_no_driver_settings() -> None:
    assert _database_env("postgresql+psycopg2://u@h/db", "CeleryExecutor") == {}


def test_celery_on_sqlite_is_refused() -> None:
    with pytest.raises(StackError, match="needs a database server"):
        _database_env("sqlite:////tmp/airflow.db", "CeleryExecutor")


def test_celery_settings_take_the_broker_and_default_the_result_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://h:6379/1")
    monkeypatch.delenv("AIRFLOW__CELERY__RESULT_BACKEND", raising=False)
    env = _celery_env("postgresql+psycopg2://u@h/db", "14400")
    assert env == {
        "AIRFLOW__CELERY__BROKER_URL": "redis://h:6379/1",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql+psycopg2://u@h/db",
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "14400",
    }
    monkeypatch.setenv("AIRFLOW__CELERY__RESULT_BACKEND", "redis://h:6379/2")
    assert _celery_env("postgresql://u@h/db", "60")["AIRFLOW__CELERY__RESULT_BACKEND"] == "redis://h:6379/2"


def test_celery_without_a_broker_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__CELERY__BROKER_URL", raising=False)
    with pytest.raises(StackError, match="needs a broker"):
        _celery_env("postgresql://u@h/db", "60")


def test_local_executor_workers_come_from_a_forkserver_that_preloads_importable_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from evertune_airflow.stack_env import TASK_PRELOAD, _local_executor_env

    monkeypatch.delenv("EVERTUNE_TASK_PRELOAD", raising=False)
    env = _local_executor_env()
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",") == list(TASK_PRELOAD)
    # multiprocessing skips a preload module it cannot import without a word: a typo would cost only speed.
    assert [name for name in TASK_PRELOAD if importlib.util.find_spec(name) is None] == []
    monkeypatch.setenv("EVERTUNE_TASK_PRELOAD", "")
    assert _local_executor_env() == {"AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver"}
    monkeypatch.setenv("EVERTUNE_TASK_PRELOAD", "pandas")
    assert _local_executor_env()["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] == "pandas"

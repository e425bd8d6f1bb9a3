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
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "evertune_airflow.celery_config.CELERY_CONFIG",
    }
    # The dotted path names the real settings (Airflow imports it in the scheduler and in every worker).
    module, _, name = env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"].rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), dict)
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
    loopback = "evertune_airflow.loopback_preload"
    assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",") == [loopback, *TASK_PRELOAD]
    # multiprocessing skips a preload module it cannot import without a word: a typo would cost only speed.
    assert [name for name in (loopback, *TASK_PRELOAD) if importlib.util.find_spec(name) is None] == []
    # The log server is forked from the forkserver as well: the loopback wrapper is preloaded whatever the list.
    monkeypatch.setenv("EVERTUNE_TASK_PRELOAD", "")
    assert _local_executor_env()["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] == loopback
    monkeypatch.setenv("EVERTUNE_TASK_PRELOAD", "pandas, json")
    assert _local_executor_env()["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] == f"{loopback},pandas,json"


def test_celery_workers_preload_the_same_modules_before_forking_their_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.signals import worker_init

    from evertune_airflow import celery_config
    from evertune_airflow.stack_env import TASK_PRELOAD

    monkeypatch.delenv("EVERTUNE_TASK_PRELOAD", raising=False)
    assert celery_config.preload_modules() == [m for m in TASK_PRELOAD if m != "airflow.executors.local_executor"]
    # Airflow's own Celery settings are kept as they are.
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    assert celery_config.CELERY_CONFIG == DEFAULT_CELERY_CONFIG
    monkeypatch.setenv("EVERTUNE_TASK_PRELOAD", "json, no_such_module_for_evertune")
    assert celery_config.preload_modules() == ["json", "no_such_module_for_evertune"]
    results = worker_init.send(sender=None)  # the missing module is skipped, not raised
    assert (celery_config._preload_task_libraries, None) in [(receiver, value) for receiver, value in results]


def test_the_stack_does_not_inherit_the_callers_mlflow_session(evertune_home, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID`` of the caller's store; the stack's tasks would
    look that id up in the stack's own tracking server and fail."""
    from evertune.settings import get_settings
    from evertune_airflow.stack_env import CALLER_MLFLOW_SESSION, STACK_MARKER, stack_process_env

    for name in CALLER_MLFLOW_SESSION:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("EVERTUNE_TEST_KEPT", "yes")
    env = stack_process_env(get_settings())
    assert [name for name in CALLER_MLFLOW_SESSION if name in env] == []
    assert env["EVERTUNE_TEST_KEPT"] == "yes" and env[STACK_MARKER] == str(evertune_home)
    assert env["AIRFLOW_HOME"] == str(get_settings().airflow_home)

"""Celery configuration for the stack's CeleryExecutor: Airflow's defaults, plus the task libraries preloaded.

``[celery] celery_config_options`` points here (:func:`evertune_airflow.stack_env.airflow_env`). The settings are
Airflow's own ``DEFAULT_CELERY_CONFIG``; the one addition is a ``worker_init`` handler. It imports
:func:`~evertune_airflow.stack_env.task_preload` in the worker's main process before Celery forks its pool, and
Airflow forks every task process from a pool process, so each task starts with them imported (the
LocalExecutor gets the same from its forkserver). The scheduler imports this module too; the signal never fires
there, so the scheduler stays light.
"""

from __future__ import annotations

import importlib
import logging

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from evertune_airflow.stack_env import task_preload

log = logging.getLogger(__name__)

CELERY_CONFIG = dict(DEFAULT_CELERY_CONFIG)

#: LocalExecutor internals are no use in a Celery worker.
_NOT_FOR_CELERY = ("airflow.executors.local_executor",)


def preload_modules() -> list[str]:
    """The modules a worker imports before it forks its pool: :func:`~evertune_airflow.stack_env.task_preload`."""
    return [name for name in task_preload() if name not in _NOT_FOR_CELERY]


@worker_init.connect
def _preload_task_libraries(**_: object) -> None:
    """Import the task libraries once; a module that fails to import is logged and skipped (tasks import it)."""
    for name in preload_modules():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("preload of %s skipped: %s", name, exc)

"""Map evertune's domain exceptions to Airflow task states.

:func:`evertune_airflow.tasks.evertune_task` wraps every step call in :func:`task_states`; a hand-written task
body does the same::

    with task_states():
        return call_step(step, context, upstream)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


@contextlib.contextmanager
def task_states() -> Iterator[None]:
    """Mask deployment secrets, then map domain errors to task states.

    Nothing to do -> skip; unusable or poisoned input, or a failed gate -> fail, no retry. Transient errors and
    anything unexpected propagate unchanged, so Airflow's retries apply.
    """
    from evertune.errors import (
        ConfigError,
        CriticalValidationError,
        NothingToDo,
        QualityGateFailed,
    )
    from evertune_airflow.masking import mask_deployment_secrets

    # Every task enters here first: register the environment's secrets before anything can log them.
    mask_deployment_secrets()
    try:
        yield
    except NothingToDo as exc:
        raise AirflowSkipException(str(exc)) from exc
    # CriticalValidationError includes PoisonedDataError: a retry would read the same data.
    except (ConfigError, CriticalValidationError, QualityGateFailed) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def interval_of(data_interval_start) -> str:
    """The data interval's date as ``YYYY-MM-DD`` (the landing partition and data-version key).

    Raises:
        AirflowFailException: The run has no data interval (e.g. an asset-triggered run of a timetable-less DAG).
    """
    if data_interval_start is None:
        raise AirflowFailException("this task needs a data interval; trigger the DAG with a logical date")
    return data_interval_start.strftime("%Y-%m-%d")

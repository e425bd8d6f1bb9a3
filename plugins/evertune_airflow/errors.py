"""Map evertune's domain exceptions to Airflow task states.

Used inside task bodies::

    with task_states():
        return refresh.ingest_documents(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


@contextlib.contextmanager
def task_states() -> Iterator[None]:
    """Translate domain errors: nothing to do -> skip; unusable input or failed gate -> fail, no retry.

    Transient errors and anything unexpected propagate unchanged, so Airflow's retries apply.
    """
    from evertune.errors import ConfigError, CriticalValidationError, NothingToDo, QualityGateFailed

    try:
        yield
    except NothingToDo as exc:
        raise AirflowSkipException(str(exc)) from exc
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

"""MLflow tracking in one place: where the store is, the client, runs, and batch logging.

Tracking and registry share one URI, ``settings.mlflow_tracking_uri`` (SQLite by default, an MLflow server or a
database URL in deployments). :func:`configure_mlflow` also makes sure the experiment exists;
:func:`mlflow_client` is the client every reader and writer uses. The ``log_*`` helpers send params, metrics and
tags with ``log_batch``, chunked to MLflow's per-request limits, and skip what MLflow would reject (a param that
is already set, a non-finite metric); :func:`log_figure` and :func:`log_table` add matplotlib figures and
browsable tables as run artifacts.

``mlflow`` is a heavy import: every function imports it when called.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.config import Params, load_params
from evertune.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

#: MLflow's ``log_batch`` limits per request.
_BATCH_PARAMS = 100
_BATCH_TAGS = 100
_BATCH_METRICS = 1000
#: Longest param value MLflow accepts.
_PARAM_LIMIT = 6000


def _settings(settings: Settings | None) -> Settings:
    return get_settings() if settings is None else settings


def use_tracking_uri(settings: Settings | None = None) -> str:
    """Point the process-wide MLflow tracking and registry URI at ``settings.mlflow_tracking_uri``.

    ``models:/`` URIs and the fluent API (``mlflow.start_run``, ``mlflow.pyfunc.log_model``) resolve through
    it. The parent folder of a SQLite database is created.

    Returns:
        The URI.
    """
    import mlflow

    uri = _settings(settings).mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def mlflow_client(settings: Settings | None = None) -> MlflowClient:
    """A client of the configured tracking and registry store (does not touch process-wide MLflow state)."""
    from mlflow.tracking import MlflowClient

    uri = _settings(settings).mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure_mlflow(params: Params | None = None, settings: Settings | None = None) -> tuple[MlflowClient, str]:
    """Point MLflow at the configured store and make sure the experiment exists.

    Tracking and registry URI come from ``settings.mlflow_tracking_uri``; a missing experiment
    (``register.experiment_name``) is created with its artifacts under ``settings.mlflow_artifact_root``, a
    deleted one is restored. The process-wide MLflow tracking URI and active experiment are set too.

    Returns:
        ``(client, experiment_id)``.
    """
    import mlflow

    params = load_params() if params is None else params
    settings = _settings(settings)
    use_tracking_uri(settings)
    client = mlflow_client(settings)
    experiment_id = _ensure_experiment(client, params.registry.experiment_name, settings.mlflow_artifact_root)
    mlflow.set_experiment(experiment_id=experiment_id)
    return client, experiment_id


def _ensure_experiment(client: MlflowClient, name: str, artifact_root: str) -> str:
    """The id of experiment ``name``: restored if deleted, created under ``artifact_root`` if missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(artifact_root, name))
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str) -> str:
    """The id of experiment ``name`` (restored if deleted, created under ``artifact_root`` if missing), without
    touching the process-wide active experiment (unlike :func:`configure_mlflow`)."""
    return _ensure_experiment(client, name, artifact_root)


def artifact_location(artifact_root: str, experiment_name: str) -> str:
    """Where a new experiment keeps its artifacts: ``<root>/<name>``; a local root is created and made a
    ``file://`` URI, a URI root (``s3://``, ``mlflow-artifacts:/``) is used as it is."""
    if "://" not in artifact_root:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        return Path(artifact_root).resolve().joinpath(experiment_name).as_uri()
    return f"{artifact_root.rstrip('/')}/{experiment_name}"


def open_run(
    client: MlflowClient,
    experiment_id: str,
    run_id: str | None,
    *,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    remembered: bool = False,
) -> str:
    """The given run (set back to ``RUNNING`` if it ended), or a new one in ``experiment_id``.

    Args:
        client: The tracking client.
        experiment_id: Where a new run is created.
        run_id: A run to log into again, or ``None`` for a new run.
        run_name: Name of a new run.
        tags: Tags of a new run.
        remembered: ``run_id`` comes from an earlier attempt's state: when the store no longer knows it, a new
            run replaces it (an explicitly requested run must exist).

    Returns:
        The run id.

    Raises:
        MlflowException: An explicitly requested run does not exist.
    """
    from mlflow.exceptions import MlflowException

    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            if not remembered:
                raise
            log.warning("MLflow run %s of an earlier attempt is gone; starting a new run", run_id)
        else:
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            return run_id
    return client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id


def log_params_once(client: MlflowClient, run_id: str, values: Mapping[str, Any]) -> int:
    """Log params in batches; keys already on the run are left alone (MLflow params are immutable).

    Values are logged as strings, cut to MLflow's 6000-character limit.

    Returns:
        How many params were logged.
    """
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)[:_PARAM_LIMIT]) for k, v in values.items() if k not in existing]
    for start in range(0, len(fresh), _BATCH_PARAMS):
        client.log_batch(run_id, params=fresh[start : start + _BATCH_PARAMS])
    return len(fresh)


def log_metrics(
    client: MlflowClient, run_id: str, values: Mapping[str, float], *, step: int = 0, timestamp_ms: int | None = None
) -> int:
    """Log metrics at one step in batches; non-finite values (NaN, inf) are skipped.

    Args:
        client: The tracking client.
        run_id: The run.
        values: Metric name to value.
        step: The step of every value.
        timestamp_ms: Their timestamp; default now.

    Returns:
        How many metrics were logged.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    metrics = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
    for start in range(0, len(metrics), _BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH_METRICS])
    return len(metrics)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set run tags in batches (values become strings)."""
    from mlflow.entities import RunTag

    items = [RunTag(str(k), str(v)) for k, v in tags.items()]
    for start in range(0, len(items), _BATCH_TAGS):
        client.log_batch(run_id, tags=items[start : start + _BATCH_TAGS])


def log_figure(client: MlflowClient, run_id: str, figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a run artifact (the format follows ``artifact_file``'s suffix, e.g. ``.png``).

    The figures of :mod:`evertune.tuning.figures` are standalone ``Figure`` objects (no pyplot state to close).
    MLflow errors propagate: the figures are part of the run's record, and a failed task is retried.
    """
    client.log_figure(run_id, figure, artifact_file)


def log_table(client: MlflowClient, run_id: str, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
    """Log equal-length columns as an MLflow table artifact (``.json``; browsable in the run's Evaluation view).

    Idempotent: ``MlflowClient.log_table`` appends to a table that already exists, so when the run already
    holds ``artifact_file`` (a retried task) it is replaced instead, in the same split-orient JSON.

    Raises:
        ValueError: The columns differ in length.
    """
    import posixpath

    import pandas as pd

    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"table columns differ in length: {sorted(lengths)}")
    frame = pd.DataFrame({name: list(values) for name, values in columns.items()})
    folder = posixpath.dirname(artifact_file) or None
    if artifact_file in {f.path for f in client.list_artifacts(run_id, folder)}:
        client.log_text(run_id, frame.to_json(orient="split", index=False, date_format="iso"), artifact_file)
    else:
        client.log_table(run_id, data=frame, artifact_file=artifact_file)


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client.set_terminated(run_id, status=status)


__all__ = [
    "artifact_location",
    "configure_mlflow",
    "end_run",
    "ensure_experiment",
    "log_figure",
    "log_metrics",
    "log_params_once",
    "log_table",
    "mlflow_client",
    "open_run",
    "set_tags",
    "use_tracking_uri",
]

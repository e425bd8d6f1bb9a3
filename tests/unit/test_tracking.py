"""MLflow tracking helpers against a real SQLite store (one per module: creating it is the slow part)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.settings import Settings, get_settings
from evertune.tuning.tracking import (
    artifact_location,
    configure_mlflow,
    end_run,
    log_metrics,
    log_params_once,
    mlflow_client,
    open_run,
    set_tags,
    use_tracking_uri,
)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = tmp_path_factory.mktemp("mlflow")
    return replace(get_settings(), mlflow_tracking_uri=f"sqlite:///{folder / 'db' / 'mlflow.db'}",
                   mlflow_artifact_root=str(folder / "artifacts"))  # fmt: skip


@pytest.fixture(scope="module")
def store(settings: Settings):
    return configure_mlflow(load_params(), settings)


def test_configure_creates_and_restores_the_experiment(store, settings: Settings) -> None:
    import mlflow

    client, experiment_id = store
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == load_params().registry.experiment_name
    assert experiment.artifact_location == Path(settings.mlflow_artifact_root, experiment.name).as_uri()
    assert mlflow.get_tracking_uri() == settings.mlflow_tracking_uri
    assert configure_mlflow(load_params(), settings)[1] == experiment_id
    client.delete_experiment(experiment_id)
    assert configure_mlflow(load_params(), settings)[1] == experiment_id
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_client_and_process_uri_point_at_the_settings(settings: Settings) -> None:
    import mlflow

    uri = settings.mlflow_tracking_uri
    assert use_tracking_uri(settings) == uri and mlflow.get_registry_uri() == uri
    assert mlflow_client(settings).tracking_uri == uri


def test_artifact_location_of_local_and_remote_roots(tmp_path: Path) -> None:
    assert artifact_location(str(tmp_path / "art"), "exp") == (tmp_path / "art" / "exp").resolve().as_uri()
    assert (tmp_path / "art").is_dir()
    assert artifact_location("s3://bucket/", "exp") == "s3://bucket/exp"
    assert artifact_location("mlflow-artifacts:///evertune", "exp") == "mlflow-artifacts:///evertune/exp"


def test_open_run_reopens_creates_and_replaces_only_remembered_ids(store) -> None:
    from mlflow.exceptions import MlflowException

    client, experiment_id = store
    run_id = open_run(client, experiment_id, None, run_name="train-1", tags={"evertune.stage": "train"})
    run = client.get_run(run_id)
    assert run.info.run_name == "train-1" and run.data.tags["evertune.stage"] == "train"
    end_run(client, run_id, "FAILED")
    assert open_run(client, experiment_id, run_id, run_name="ignored") == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    with pytest.raises(MlflowException):
        open_run(client, experiment_id, "0" * 32, run_name="x")
    replaced = open_run(client, experiment_id, "0" * 32, run_name="x", remembered=True)
    assert replaced not in {run_id, "0" * 32}


def test_batch_logging_chunks_and_skips_what_mlflow_rejects(store) -> None:
    client, experiment_id = store
    run_id = client.create_run(experiment_id).info.run_id
    assert log_params_once(client, run_id, {f"p{i}": i for i in range(150)} | {"long": "x" * 7000}) == 151
    assert log_params_once(client, run_id, {"p0": "changed", "new": 1}) == 1
    params = client.get_run(run_id).data.params
    assert params["p0"] == "0" and params["p149"] == "149" and len(params["long"]) == 6000
    values = {f"m{i}": float(i) for i in range(1200)} | {"nan": math.nan, "inf": math.inf}
    assert log_metrics(client, run_id, values, step=3) == 1200
    history = client.get_metric_history(run_id, "m1199")
    assert [(m.value, m.step) for m in history] == [(1199.0, 3)]
    assert "nan" not in client.get_run(run_id).data.metrics
    set_tags(client, run_id, {f"t{i}": i for i in range(130)})
    assert client.get_run(run_id).data.tags["t129"] == "129"
    end_run(client, run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"

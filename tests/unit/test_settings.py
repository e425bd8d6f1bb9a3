"""The location variables: one list, and clearing it leaves every location under EVERTUNE_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from evertune.settings import ENV_VARS, LOCATION_ENV_VARS, get_settings

#: Settings variables deliberately kept by isolated processes (see LOCATION_ENV_VARS).
NOT_LOCATIONS = {"EVERTUNE_HOME", "EVERTUNE_PARAMS", "EVERTUNE_MODELS_DIR", "AIRFLOW_HOME"}


def test_every_settings_variable_is_a_location_or_a_known_exception():
    assert set(LOCATION_ENV_VARS) | NOT_LOCATIONS == set(ENV_VARS)
    assert not set(LOCATION_ENV_VARS) & NOT_LOCATIONS


def test_clearing_the_locations_derives_them_from_home(evertune_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.delenv("EVERTUNE_MODELS_DIR", raising=False)
    settings = get_settings()
    home = str(evertune_home.resolve())
    for name in ("landing_uri", "lancedb_uri", "data_repo", "dvc_remote", "models_dir", "work_dir",
                 "mlflow_artifact_root", "airflow_home"):
        assert str(getattr(settings, name)).startswith(home), name
    assert settings.mlflow_tracking_uri == f"sqlite:///{home}/mlflow/mlflow.db"

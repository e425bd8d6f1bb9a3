"""Shared fixtures. Every test gets its own state folder; nothing touches the developer's .evertune/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evertune.runtime import OFFLINE_ENV
from evertune.settings import LOCATION_ENV_VARS

REPO_ROOT = Path(__file__).resolve().parents[1]

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(autouse=True)
def no_leaked_mlflow_session(monkeypatch: pytest.MonkeyPatch):
    """``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID`` process-wide: no test (nor a process it starts)
    inherits another test's."""
    from evertune_airflow.stack_env import CALLER_MLFLOW_SESSION

    for name in CALLER_MLFLOW_SESSION:
        monkeypatch.delenv(name, raising=False)
    yield
    for name in CALLER_MLFLOW_SESSION:
        os.environ.pop(name, None)


@pytest.fixture
def evertune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated EVERTUNE_HOME with every location derived from it (env vars cleared)."""
    home = tmp_path / "evertune-home"
    home.mkdir()
    monkeypatch.setenv("EVERTUNE_HOME", str(home))
    for var in LOCATION_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    # Shared read-only caches (bootstrapped models) stay where EVERTUNE_MODELS_DIR points, if set.
    return home


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model checkpoints built once per test session (bootstrap is slow-ish; reuse it)."""
    env = os.environ.get("EVERTUNE_MODELS_DIR")
    if env:
        return Path(env)
    return tmp_path_factory.mktemp("models")

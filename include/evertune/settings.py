"""Deployment settings: where state lives. Environment variables, with embedded defaults.

Everything the embedded stack writes sits under one git-ignored state folder, ``.evertune/`` in the
repository (``EVERTUNE_HOME`` overrides it). Production points each location elsewhere (Postgres,
an MLflow server, object storage) through the variables below; nothing here is a pipeline knob
(those live in ``params.yaml``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Environment variable -> (attribute, description). The single list documented in docs/configuration.md.
ENV_VARS: dict[str, str] = {
    "EVERTUNE_HOME": "state folder for the embedded stack (default: <repo>/.evertune)",
    "EVERTUNE_PARAMS": "path of params.yaml (default: <repo>/params.yaml)",
    "EVERTUNE_LANDING_URI": "landing zone, a folder or any fsspec URL (default: $EVERTUNE_HOME/landing)",
    "EVERTUNE_LANCEDB_URI": "LanceDB database URI (default: $EVERTUNE_HOME/lancedb)",
    "EVERTUNE_DATA_REPO": "git+DVC repository that versions validated data (default: $EVERTUNE_HOME/data-repo)",
    "EVERTUNE_DVC_REMOTE": "DVC remote URL (default: $EVERTUNE_HOME/dvc-remote)",
    "EVERTUNE_MODELS_DIR": "bootstrapped model checkpoints (default: $EVERTUNE_HOME/models)",
    "EVERTUNE_WORK_DIR": "scratch space for tasks: checkpoints, reports (default: $EVERTUNE_HOME/work)",
    "MLFLOW_TRACKING_URI": "MLflow tracking/registry URI (default: sqlite:///$EVERTUNE_HOME/mlflow/mlflow.db)",
    "EVERTUNE_MLFLOW_ARTIFACT_ROOT": "artifact root for new MLflow experiments (default: $EVERTUNE_HOME/mlflow/artifacts)",
    "AIRFLOW_HOME": "Airflow home (default: $EVERTUNE_HOME/airflow)",
}

#: The location variables an isolated process (a test, a benchmark) clears so that every location derives from
#: its own ``EVERTUNE_HOME``: they could point at a real deployment. Not in it: ``EVERTUNE_MODELS_DIR`` (a shared,
#: read-only checkpoint cache that isolated processes reuse), ``AIRFLOW_HOME``, ``EVERTUNE_HOME`` and
#: ``EVERTUNE_PARAMS``.
LOCATION_ENV_VARS: tuple[str, ...] = (
    "EVERTUNE_LANDING_URI",
    "EVERTUNE_LANCEDB_URI",
    "EVERTUNE_DATA_REPO",
    "EVERTUNE_DVC_REMOTE",
    "EVERTUNE_WORK_DIR",
    "MLFLOW_TRACKING_URI",
    "EVERTUNE_MLFLOW_ARTIFACT_ROOT",
)


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


@dataclass(frozen=True)
class Settings:
    """Resolved locations of every stateful component."""

    home: Path
    landing_uri: str
    lancedb_uri: str
    data_repo: Path
    dvc_remote: str
    models_dir: Path
    work_dir: Path
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    airflow_home: Path

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from the environment, falling back to the embedded defaults."""
        home = _env_path("EVERTUNE_HOME", REPO_ROOT / ".evertune").resolve()
        mlflow_dir = home / "mlflow"
        return cls(
            home=home,
            landing_uri=os.environ.get("EVERTUNE_LANDING_URI") or str(home / "landing"),
            lancedb_uri=os.environ.get("EVERTUNE_LANCEDB_URI") or str(home / "lancedb"),
            data_repo=_env_path("EVERTUNE_DATA_REPO", home / "data-repo"),
            dvc_remote=os.environ.get("EVERTUNE_DVC_REMOTE") or str(home / "dvc-remote"),
            models_dir=_env_path("EVERTUNE_MODELS_DIR", home / "models"),
            work_dir=_env_path("EVERTUNE_WORK_DIR", home / "work"),
            mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            mlflow_artifact_root=os.environ.get("EVERTUNE_MLFLOW_ARTIFACT_ROOT") or str(mlflow_dir / "artifacts"),
            airflow_home=_env_path("AIRFLOW_HOME", home / "airflow"),
        )

    def ensure_local_dirs(self) -> None:
        """Create the local folders among the configured locations (URLs are left alone)."""
        for location in (self.home, self.data_repo, self.models_dir, self.work_dir, self.airflow_home):
            location.mkdir(parents=True, exist_ok=True)
        for uri in (self.landing_uri, self.lancedb_uri, self.dvc_remote, self.mlflow_artifact_root):
            if "://" not in uri:
                Path(uri).mkdir(parents=True, exist_ok=True)
        if self.mlflow_tracking_uri.startswith("sqlite:///"):
            Path(self.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    """Return the settings for this process (read fresh from the environment each call)."""
    return Settings.from_env()

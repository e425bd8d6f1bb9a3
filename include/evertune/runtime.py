"""Process environment for offline, quiet, reproducible runs.

Nothing may reach a model hub at run time and no tool may phone home. Every entry point (CLI, DAG task,
test) applies this once; values already set by the operator win.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}


def apply_offline_env() -> None:
    """Set the offline defaults in ``os.environ`` without overriding explicit settings."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)

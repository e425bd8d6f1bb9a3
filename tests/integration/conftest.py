"""Session-scoped model fixtures: the base model is converted (and the tiny model built) once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.models.bootstrap import DEFAULT_BOOTSTRAP, ensure_bootstrapped
from evertune.models.tiny import ensure_tiny_model


@pytest.fixture(scope="session")
def base_model_dir(shared_models_dir: Path) -> Path:
    """The converted SmolLM2 checkpoint (first use converts the GGUF: ~20-40 s on 2 cores)."""
    return ensure_bootstrapped(DEFAULT_BOOTSTRAP, shared_models_dir, expected_sha256=load_params().base_model.sha256)


@pytest.fixture(scope="session")
def tiny_model_dir(shared_models_dir: Path) -> Path:
    """The tiny random Llama sharing the base tokenizer (a few seconds to build)."""
    return ensure_tiny_model(shared_models_dir)

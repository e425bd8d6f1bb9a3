"""A module-scoped isolated EVERTUNE_HOME for tests that share one MLflow store per module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from evertune.settings import LOCATION_ENV_VARS


@contextlib.contextmanager
def module_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[object, pytest.MonkeyPatch]]:
    """For a module-scoped fixture: an isolated EVERTUNE_HOME (an MLflow SQLite store costs seconds to create, so
    a module shares one), its local folders made; yields ``(settings, monkeypatch)``."""
    from evertune.settings import get_settings

    home = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVERTUNE_HOME", str(home))
        for var in LOCATION_ENV_VARS:
            patch.delenv(var, raising=False)
        settings = get_settings()
        settings.ensure_local_dirs()
        yield settings, patch

"""The answer service as a component of the embedded stack: on by default, started as ``python -m evertune serve``
on its loopback port, left out with ``EVERTUNE_SERVE=0`` (the stack end to end: tests/integration/test_stack.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from evertune.serving.server import DEFAULT_PORT, PORT_VAR, default_port
from evertune.settings import get_settings
from evertune_airflow import stack_env, stack_processes


def _serve(components):
    return next((c for c in components if c.name == "serve"), None)


def test_serve_is_a_stack_component_on_its_own_port(evertune_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stack_env.SERVE_SWITCH, raising=False)
    monkeypatch.delenv(PORT_VAR, raising=False)
    assert stack_env.PORT_VARS[PORT_VAR] == DEFAULT_PORT == default_port() == stack_env.StackPorts.from_env().serve
    monkeypatch.setenv(PORT_VAR, "18123")
    component = _serve(stack_processes.stack_components(get_settings()))
    assert component is not None and component.port == 18123
    # No console script: the interpreter itself runs the CLI, which runs uvicorn in-process.
    assert component.argv[-8:] == (sys.executable, "-m", "evertune", "serve", "--host", "127.0.0.1", "--port",
                                   "18123")
    assert stack_env.airflow_env(get_settings())[PORT_VAR] == "18123"
    assert stack_env.StackPorts.from_env().all()["serve"] == 18123


@pytest.mark.parametrize("value", ["0", "false", "off", "No"])
def test_serve_can_be_left_out(evertune_home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(stack_env.SERVE_SWITCH, value)
    assert _serve(stack_processes.stack_components(get_settings())) is None


def test_a_bad_port_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from evertune.errors import ConfigError

    monkeypatch.setenv(PORT_VAR, "eighty")
    with pytest.raises(ConfigError, match=PORT_VAR):
        default_port()

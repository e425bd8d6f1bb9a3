"""Session-scoped model fixtures: the base model is converted (and the tiny model built) once per test session."""

from __future__ import annotations

import contextlib
import socket
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


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1.

    All sockets stay open until every port is chosen, so the kernel cannot hand out the same port twice
    (closing each socket before asking for the next one can return a port already given out).
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture
def stack_ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Move every port of the embedded stack to distinct free ports for this test."""
    from evertune_airflow import stack

    ports = dict(zip(stack.PORT_VARS, free_ports(len(stack.PORT_VARS)), strict=True))
    for variable, port in ports.items():
        monkeypatch.setenv(variable, str(port))
    return ports


@pytest.fixture(scope="session")
def port_picker():
    """:func:`free_ports` for module-scoped fixtures (function-scoped ``stack_ports`` cannot serve them)."""
    return free_ports

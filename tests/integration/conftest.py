"""Integration fixtures: models built once per session, free ports, the tiny-model params for DAG runs."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
import yaml

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
    from evertune_airflow import stack_env

    ports = dict(zip(stack_env.PORT_VARS, free_ports(len(stack_env.PORT_VARS)), strict=True))
    for variable, port in ports.items():
        monkeypatch.setenv(variable, str(port))
    return ports


@pytest.fixture(scope="session")
def port_picker():
    """:func:`free_ports` for module-scoped fixtures (function-scoped ``stack_ports`` cannot serve them)."""
    return free_ports


def write_tiny_dag_params(home: Path, tiny_model_dir: Path) -> Path:
    """``params.yaml`` for running the DAGs with the tiny model: a few training steps, short answers.

    Returns:
        The file's path (for ``EVERTUNE_PARAMS``).
    """
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["base_model"] = {"name_or_path": str(tiny_model_dir)}
    params["train"].update({"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2})
    params["evaluate"].update({"max_new_tokens": 8, "bootstrap_samples": 100})
    # The tiny random model answers nonsense: the floors would (rightly) reject it, and four training steps do
    # not beat the untuned tiny model by a margin (the base model is still scored: the rule only stops judging).
    params["gate"]["floors"] = {"token_f1": 0.0}
    params["gate"]["min_improvement_over_base"] = None
    path = home / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def isolated_env(home: Path, params_file: Path) -> dict[str, str]:
    """This process's environment minus every Airflow, evertune and MLflow setting, pointed at ``home``.

    A shared ``EVERTUNE_MODELS_DIR`` (bootstrapped checkpoints) is kept.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "EVERTUNE_", "MLFLOW_"))}
    env.update({"EVERTUNE_HOME": str(home), "EVERTUNE_PARAMS": str(params_file)})
    if "EVERTUNE_MODELS_DIR" in os.environ:
        env["EVERTUNE_MODELS_DIR"] = os.environ["EVERTUNE_MODELS_DIR"]
    return env


@pytest.fixture(scope="session")
def tiny_dag_env(tiny_model_dir: Path):
    """``make(home) -> env``: writes the tiny-model params into ``home`` and returns :func:`isolated_env` for it.

    Session-scoped so module-scoped fixtures can use it.
    """
    def make(home: Path) -> dict[str, str]:
        return isolated_env(home, write_tiny_dag_params(home, tiny_model_dir))

    return make


@pytest.fixture
def tiny_eval_params(evertune_home: Path, tiny_model_dir: Path):
    """The repository's params with the tiny random model as base model and 4-token answers."""
    params = load_params()
    return params.model_copy(update={
        "base_model": params.base_model.model_copy(update={"name_or_path": str(tiny_model_dir), "sha256": None}),
        "evaluate": params.evaluate.model_copy(update={"max_new_tokens": 4}),
    })

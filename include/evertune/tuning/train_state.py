"""The training folder: what a run produced, how a retry recognises its own work, and atomic saves.

Layout of a training ``output_dir`` (key it by the candidate, e.g. ``work_dir/tune/<candidate_key>``, so a retried
task finds it)::

    checkpoints/checkpoint-<step>/   Trainer checkpoints every ``train.save_steps``; a retry resumes from the last
    adapter/                         the trained LoRA adapter (also logged to MLflow as run artifact ``adapter``)
    merged/                          base + adapter merged (``merge_and_unload``): a plain HF checkpoint
    evertune-train.json              resume key + MLflow run id (written before training starts)
    train_result.json                the :class:`TrainResult`, written last; a finished run is not repeated

The *resume key* hashes everything that shapes training (data files, warm-start adapter, base model, ``lora``,
``dataset`` and the ``train`` params except :data:`RESUMABLE_CHANGES`): checkpoints under another key are refused.
The *result key* adds those cadence params, so a finished run is returned only for exactly the same request.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError

if TYPE_CHECKING:
    from evertune.config import Params

STATE_FILE = "evertune-train.json"
RESULT_FILE = "train_result.json"
#: Train params that may change between an interrupted attempt and its retry without invalidating checkpoints.
RESUMABLE_CHANGES = frozenset({"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps"})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`~evertune.tuning.train.train_adapter` produced.

    Attributes:
        adapter_dir: The LoRA adapter (``PeftModel.from_pretrained(base, adapter_dir)``).
        merged_dir: Base + adapter merged; loads with ``AutoModelForCausalLM.from_pretrained``.
        output_dir: The training folder (checkpoints, state).
        run_id: The MLflow run that recorded the training.
        base_model: The base model's identity for lineage: ``base_model.name_or_path`` (e.g.
            ``bootstrap:smollm2-135m-instruct``, a hub id) or the ``base_model`` argument; machine-independent
            for bootstrap and hub models. ``base_model_revision``: its hub revision.
        base_model_path: What was actually loaded (the resolved folder or hub id).
        params_hash: :func:`evertune.config.training_params_hash`.
        device: ``cpu`` or ``cuda``; ``precision``: ``fp32`` or ``bf16``.
        global_step: Optimizer steps done in total.
        resumed_from_step: Step of the checkpoint this call resumed from (0: fresh start).
        metrics: ``train_loss``, ``eval_loss``, ``train_runtime``, ... of this call.
        tokens_per_second: Input tokens (padding excluded) per second of training in this call.
        tokens_seen: Input tokens processed in this call.
        peak_memory_mb: Peak RSS (CPU) or peak ``torch.cuda.max_memory_allocated`` (GPU) during training.
        wall_time_s: Wall time of this call (load, train, merge, save).
        loss_history: ``[{"step": s, "loss": l}, ...]`` over the whole run (resumed steps included).
        n_train_examples / n_replay_examples / n_eval_examples: Dataset sizes after mixing.
        warm_start_adapter: The adapter training started from, if any.
        cost: :class:`~evertune.tuning.cost.TrainingCost` of this call plus the projection it was admitted with
            (``projected_tokens``, ``projected_seconds``); empty in results recorded before cost accounting.
    """

    adapter_dir: str
    merged_dir: str
    output_dir: str
    run_id: str | None
    base_model: str
    base_model_revision: str | None
    base_model_path: str
    params_hash: str
    device: str
    precision: str
    global_step: int
    resumed_from_step: int
    metrics: dict[str, float]
    tokens_per_second: float
    tokens_seen: int
    peak_memory_mb: float
    wall_time_s: float
    loss_history: list[dict[str, float]] = field(default_factory=list)
    n_train_examples: int = 0
    n_replay_examples: int = 0
    n_eval_examples: int = 0
    warm_start_adapter: str | None = None
    cost: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (XCom, ``train_result.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingIdentity:
    """Who a training folder belongs to.

    Attributes:
        setup: What the resume key hashes (recorded in the state file for inspection).
        resume_key: sha256 of ``setup``: checkpoints are reused only under the same key.
        result_key: sha256 of the resume key and every ``train`` param: a finished result is reused only under it.
    """

    setup: dict[str, Any]
    resume_key: str
    result_key: str


def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes (``None`` for no file)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(path: str | Path | None) -> str | None:
    """sha256 over a folder's relative file names and file digests, in sorted order (``None`` for no folder)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_digest(file).encode())
    return digest.hexdigest()


def training_identity(
    params: Params,
    *,
    base_model_path: str,
    train_path: str | Path,
    eval_path: str | Path | None,
    replay_path: str | Path | None,
    warm_start_adapter: str | Path | None,
) -> TrainingIdentity:
    """Hash the inputs of a training run into its resume and result keys (see the module docstring)."""
    train_values = params.train.model_dump(mode="json")
    setup = {
        "train_sha256": file_digest(train_path),
        "eval_sha256": file_digest(eval_path),
        "replay_sha256": file_digest(replay_path),
        "warm_start_sha256": folder_digest(warm_start_adapter),
        "base_model": str(base_model_path),
        "base_model_revision": params.base_model.revision,
        "lora": params.lora.model_dump(mode="json"),
        "train": {k: v for k, v in train_values.items() if k not in RESUMABLE_CHANGES},
        "dataset": params.dataset.model_dump(mode="json"),
    }
    resume_key = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()
    result_key = hashlib.sha256(f"{resume_key}:{json.dumps(train_values, sort_keys=True)}".encode()).hexdigest()
    return TrainingIdentity(setup, resume_key, result_key)


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete ``checkpoint-<step>`` under ``folder``, oldest first.

    ``trainer_state.json`` is written last, so a checkpoint without it was cut off mid-save and is left out.
    """
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            name = entry.name
            if entry.is_dir() and name.startswith("checkpoint-") and name.removeprefix("checkpoint-").isdigit():
                if (entry / "trainer_state.json").is_file():
                    found.append((int(name.removeprefix("checkpoint-")), entry))
    return sorted(found)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints`` (``None`` if there is none)."""
    found = complete_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1][1] if found else None


def remembered_run_id(output_dir: Path, identity: TrainingIdentity) -> str | None:
    """The MLflow run an earlier attempt of the same setup recorded in ``output_dir`` (``None``: none).

    Raises:
        ConfigError: ``output_dir`` holds checkpoints of a different setup.
    """
    state_path = output_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    same = state.get("resume_key") == identity.resume_key
    if state and not same and complete_checkpoints(output_dir / "checkpoints"):
        raise ConfigError(
            f"{output_dir} holds checkpoints of a different training setup (data, base model or params changed); "
            "use a folder keyed by the candidate or remove it"
        )
    return state.get("run_id") if same else None


def write_state(output_dir: Path, identity: TrainingIdentity, run_id: str | None) -> None:
    """Record the resume key and MLflow run before training starts, so a retry resumes into the same run."""
    state = {"resume_key": identity.resume_key, "run_id": run_id, "setup": identity.setup}
    (output_dir / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))


def finished_result(output_dir: Path, result_key: str) -> TrainResult | None:
    """The recorded result of a finished run with this result key whose adapter and merged model still exist."""
    path = output_dir / RESULT_FILE
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    if recorded.get("result_key") != result_key:
        return None
    result = TrainResult(**recorded["result"])
    if not (
        Path(result.merged_dir, "config.json").is_file() and Path(result.adapter_dir, "adapter_config.json").is_file()
    ):
        return None
    return result


def write_result(output_dir: Path, result_key: str, result: TrainResult) -> None:
    """Record a finished run (read back by :func:`finished_result`)."""
    payload = {"result_key": result_key, "result": result.to_dict()}
    (output_dir / RESULT_FILE).write_text(json.dumps(payload, indent=2))


def atomic_save(target: Path, save: Callable[[Path], object]) -> None:
    """Run ``save(folder)`` into a hidden sibling, then swap it into ``target``."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    save(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


__all__ = [
    "RESULT_FILE",
    "RESUMABLE_CHANGES",
    "STATE_FILE",
    "TrainResult",
    "TrainingIdentity",
    "atomic_save",
    "complete_checkpoints",
    "file_digest",
    "finished_result",
    "folder_digest",
    "last_checkpoint",
    "remembered_run_id",
    "training_identity",
    "write_result",
    "write_state",
]

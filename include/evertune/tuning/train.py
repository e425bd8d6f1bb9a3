"""LoRA supervised fine-tuning with TRL ``SFTTrainer`` + PEFT, resumable and tracked in MLflow.

:func:`train_adapter` is what the ``tune_model`` DAG's train task (and ``evertune`` users) call. It reads the
examples (:mod:`~evertune.tuning.train_data`), keys the training folder by its inputs so a retry resumes or
returns the recorded result (:mod:`~evertune.tuning.train_state`, which also describes the folder layout),
trains and merges (:mod:`~evertune.tuning.trainer`, device policy and packing there), and records the run
(:mod:`~evertune.tuning.callbacks` per step, :mod:`~evertune.tuning.tracking` for MLflow).

The MLflow run (``register.experiment_name``) gets every ``train``/``lora`` param plus ``params_hash``, per-step
``train/loss`` (and learning rate, grad norm), ``eval/loss``, ``perf/tokens_per_second``, ``perf/peak_memory_mb``,
``perf/wall_time_s``, the ``cost/*`` metrics (:mod:`~evertune.tuning.cost`: device-seconds, tokens, peak memory,
estimated cost, and the projection the run was admitted with), the ``adapter`` artifact, the loss curve
``train/loss_curve.png`` and the tags ``data_version``, ``kb_version``, ``git_sha``, ``base_model``.

Before the model loads, the run's tokens and time are projected and checked against the ``cost`` budget
(:func:`~evertune.tuning.cost.check_budget`): a run over budget is refused with ``BudgetExceeded``.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.config import training_params_hash
from evertune.settings import REPO_ROOT, get_settings
from evertune.tuning.callbacks import make_callbacks
from evertune.tuning.cost import TrainingProjection, admit, cost_metrics, training_cost
from evertune.tuning.tracking import (
    configure_mlflow,
    end_run,
    log_figure,
    log_metrics,
    log_params_once,
    open_run,
    set_tags,
)
from evertune.tuning.train_data import TrainingExamples, load_examples
from evertune.tuning.train_state import (
    TrainingIdentity,
    TrainResult,
    finished_result,
    last_checkpoint,
    remembered_run_id,
    training_identity,
    write_result,
    write_state,
)
from evertune.tuning.trainer import (
    LoadedModel,
    build_trainer,
    checkpoint_step,
    evaluation_metrics,
    full_loss_history,
    load_model,
    run_training,
    save_outputs,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from transformers import TrainerCallback

    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseModelRef:
    """The base model of a run.

    Attributes:
        path: What is loaded: a resolved folder or hub id.
        identity: Its machine-independent name for lineage (``base_model.name_or_path`` or the ``base_model``
            argument).
        revision: Its hub revision.
    """

    path: str
    identity: str
    revision: str | None


@dataclass(frozen=True)
class TrainingPlan:
    """Everything :func:`train_adapter` decides before the model loads.

    Attributes:
        output_dir: The training folder (absolute).
        examples: The mixed training and evaluation examples.
        base: The base model.
        params_hash: :func:`evertune.config.training_params_hash` of the params.
        identity: Resume and result keys of the folder.
        warm_start_adapter: The adapter training starts from, if any.
        data_version: Lineage tag: the training data version.
        kb_version: Lineage tag: the KB version the data was built against.
        tags: Extra run tags.
    """

    output_dir: Path
    examples: TrainingExamples
    base: BaseModelRef
    params_hash: str
    identity: TrainingIdentity
    warm_start_adapter: str | None = None
    data_version: str | None = None
    kb_version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a training logs into, with the client that reaches it."""

    client: MlflowClient
    run_id: str


def git_sha(repo: Path | None = None) -> str:
    """The product repository's commit (``-dirty`` when the work tree has changes); ``unknown`` without git."""
    where = str(repo or REPO_ROOT)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha or "unknown"


def train_adapter(
    train_path: str | Path,
    eval_path: str | Path | None,
    params: Params,
    settings: Settings | None = None,
    *,
    output_dir: str | Path,
    base_model: str | None = None,
    warm_start_adapter: str | Path | None = None,
    replay_path: str | Path | None = None,
    mlflow_run_id: str | None = None,
    data_version: str | None = None,
    kb_version: str | None = None,
    tags: Mapping[str, str] | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    log_to_mlflow: bool = True,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``train_path`` and merge it into the base model.

    Idempotent per ``output_dir``: a finished run with the same inputs returns its recorded result; an
    interrupted one resumes from its last complete checkpoint (``max_steps`` and the save/log cadence may change
    between attempts, anything else that shapes training must not).

    Args:
        train_path: ``train.jsonl`` in chat ``messages`` format (or ``prompt``/``completion``).
        eval_path: ``validation.jsonl``, same format; ``None`` skips the eval loss.
        params: Pipeline params (``train``, ``lora``, ``base_model``, ``register.experiment_name``).
        settings: Deployment settings; default :func:`evertune.settings.get_settings`.
        output_dir: Training folder (see :mod:`evertune.tuning.train_state`).
        base_model: A resolved model folder or hub id; default ``resolve_base_model(params.base_model)``.
        warm_start_adapter: A LoRA adapter folder (e.g. the champion's) to continue training from; its weights
            are loaded trainable and its LoRA config (rank, targets) is kept.
        replay_path: Reference examples to replay (``train.replay_fraction`` of the mix), e.g. the champion's
            training set, to limit forgetting on a warm start.
        mlflow_run_id: Log into this run; default a new run (its id is kept in ``output_dir`` so a retry logs
            into the same run).
        data_version: Tag: the DVC/git version of the training data.
        kb_version: Tag: the LanceDB table version/tag the data was built against.
        tags: Extra run tags (e.g. Airflow ``dag_id``/``run_id``).
        callbacks: Extra ``TrainerCallback`` objects.
        log_to_mlflow: ``False`` trains without MLflow (quick experiments).

    Returns:
        The :class:`~evertune.tuning.train_state.TrainResult`.

    Raises:
        ConfigError: ``output_dir`` holds checkpoints of a different training setup, or bad input rows.
        BudgetExceeded: The projected tokens or time exceed ``cost.max_train_tokens`` / ``cost.max_train_seconds``
            (raised before the model loads; the refusal is recorded on ``mlflow_run_id`` when given).
        NothingToDo: The training set is empty.
    """
    started = time.perf_counter()
    settings = settings or get_settings()
    plan = plan_training(
        params, settings, train_path=train_path, eval_path=eval_path, replay_path=replay_path,
        output_dir=output_dir, base_model=base_model, warm_start_adapter=warm_start_adapter,
        data_version=data_version, kb_version=kb_version, tags=tags,
    )  # fmt: skip
    remembered = remembered_run_id(plan.output_dir, plan.identity)  # refuses another setup's checkpoints
    finished = finished_result(plan.output_dir, plan.identity.result_key)
    if finished is not None:
        log.info("training in %s already finished (step %d); returning the recorded result", plan.output_dir,
                 finished.global_step)  # fmt: skip
        return finished
    projection = admit(plan.examples.train, plan.base.path, plan.base.revision, params,
                       run_id=mlflow_run_id if log_to_mlflow else None, settings=settings)  # fmt: skip
    run, run_id = None, mlflow_run_id or remembered
    if log_to_mlflow:
        run = _open_training_run(params, settings, run_id, plan.params_hash, remembered=mlflow_run_id is None)
        run_id = run.run_id
    write_state(plan.output_dir, plan.identity, run_id)
    result = _train_and_save(plan, params, run, run_id, list(callbacks), started, projection)
    if run is not None:
        _log_end(run, result)
    write_result(plan.output_dir, plan.identity.result_key, result)
    if run is not None:
        end_run(run.client, run.run_id, "FINISHED")
    return result


def plan_training(
    params: Params,
    settings: Settings,
    *,
    train_path: str | Path,
    eval_path: str | Path | None,
    replay_path: str | Path | None,
    output_dir: str | Path,
    base_model: str | None = None,
    warm_start_adapter: str | Path | None = None,
    data_version: str | None = None,
    kb_version: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainingPlan:
    """Create the training folder, read the examples, resolve the base model and key the folder by all of it.

    Arguments are those of :func:`train_adapter`.

    Raises:
        ConfigError: Bad input rows, or a base model that cannot be resolved.
        NothingToDo: The training set is empty.
    """
    folder = Path(output_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tp = params.train
    examples = load_examples(
        train_path, eval_path, replay_path,
        replay_fraction=tp.replay_fraction, seed=tp.seed, completion_only=tp.completion_only_loss,
    )  # fmt: skip
    if base_model is None:
        from evertune.models.bootstrap import resolve_base_model

        base_model_path = resolve_base_model(params.base_model, settings)
    else:
        base_model_path = base_model
    base = BaseModelRef(str(base_model_path), str(base_model or params.base_model.name_or_path),
                        params.base_model.revision)  # fmt: skip
    identity = training_identity(
        params, base_model_path=base.path, train_path=train_path, eval_path=eval_path, replay_path=replay_path,
        warm_start_adapter=warm_start_adapter,
    )  # fmt: skip
    return TrainingPlan(
        output_dir=folder,
        examples=examples,
        base=base,
        params_hash=training_params_hash(params),
        identity=identity,
        warm_start_adapter=str(warm_start_adapter) if warm_start_adapter else None,
        data_version=data_version,
        kb_version=kb_version,
        tags={str(k): str(v) for k, v in (tags or {}).items()},
    )


def _open_training_run(
    params: Params, settings: Settings, run_id: str | None, params_hash: str, *, remembered: bool
) -> TrackedRun:
    """The run to log into: ``run_id`` (re-opened if it ended) or a new ``train-<hash>`` run."""
    client, experiment_id = configure_mlflow(params, settings)
    run_id = open_run(
        client, experiment_id, run_id, run_name=f"train-{params_hash[:8]}", tags={"evertune.stage": "train"},
        remembered=remembered,
    )  # fmt: skip
    return TrackedRun(client, run_id)


def _train_and_save(
    plan: TrainingPlan,
    params: Params,
    run: TrackedRun | None,
    run_id: str | None,
    callbacks: list[Any],
    started: float,
    projection: TrainingProjection,
) -> TrainResult:
    """Load the model, train (resuming from the last checkpoint), save adapter and merged model; the result.

    A failing training marks ``run`` ``FAILED`` before the error propagates.
    """
    tp = params.train
    loaded = load_model(plan.base.path, plan.base.revision, params.lora, seed=tp.seed,
                        warm_start_adapter=plan.warm_start_adapter, bf16=tp.bf16)  # fmt: skip
    own = make_callbacks(run.client if run else None, run_id, loaded.device)
    trainer = build_trainer(loaded, plan.examples, tp, plan.output_dir, [*own.as_list(), *callbacks])
    resume_from = last_checkpoint(plan.output_dir)
    if run is not None:
        _log_start(run, params, plan, loaded)
    try:
        outcome = run_training(trainer, resume_from, loaded.device)
    except BaseException:
        if run is not None:
            end_run(run.client, run.run_id, "FAILED")
        raise
    metrics = {**outcome.metrics, **(evaluation_metrics(trainer) if plan.examples.eval else {})}
    adapter_dir, merged_dir = save_outputs(trainer, loaded.tokenizer, plan.output_dir)
    wall_time_s, peak_memory_mb = time.perf_counter() - started, own.peak_memory.peak_bytes / 2**20
    cost = training_cost(
        device=loaded.device, n_devices=max(1, int(trainer.args.n_gpu)) if loaded.device == "cuda" else 1,
        wall_time_s=wall_time_s, tokens=outcome.tokens_seen, peak_memory_mb=peak_memory_mb, cost=params.cost,
    )  # fmt: skip
    return TrainResult(
        adapter_dir=str(adapter_dir),
        merged_dir=str(merged_dir),
        output_dir=str(plan.output_dir),
        run_id=run_id,
        base_model=plan.base.identity,
        base_model_revision=plan.base.revision,
        base_model_path=plan.base.path,
        params_hash=plan.params_hash,
        device=loaded.device,
        precision=loaded.precision,
        global_step=outcome.global_step,
        resumed_from_step=checkpoint_step(resume_from),
        metrics=metrics,
        tokens_per_second=outcome.tokens_per_second,
        tokens_seen=outcome.tokens_seen,
        peak_memory_mb=peak_memory_mb,
        wall_time_s=wall_time_s,
        loss_history=full_loss_history(trainer.state.log_history, own.step_logger.history),
        n_train_examples=len(plan.examples.train),
        n_replay_examples=plan.examples.n_replay,
        n_eval_examples=len(plan.examples.eval),
        warm_start_adapter=plan.warm_start_adapter,
        cost={**cost.to_dict(), "projected_tokens": projection.tokens, "projected_seconds": projection.seconds},
    )


def run_params(params: Params, plan: TrainingPlan) -> dict[str, Any]:
    """The params a training run logs: every ``train.*`` and ``lora.*`` value, the hash, base and sizes."""
    values: dict[str, Any] = {f"train.{k}": v for k, v in params.train.model_dump(mode="json").items()}
    values.update({f"lora.{k}": v for k, v in params.lora.model_dump(mode="json").items()})
    values.update(
        {
            "params_hash": plan.params_hash,
            "base_model": plan.base.identity,
            "n_train_examples": len(plan.examples.train),
            "n_replay_examples": plan.examples.n_replay,
            "n_eval_examples": len(plan.examples.eval),
        }
    )
    return values


def run_tags(plan: TrainingPlan, device: str, precision: str) -> dict[str, str]:
    """The lineage tags a training run sets (the caller's ``tags`` last, so they may override)."""
    return {
        "params_hash": plan.params_hash,
        "base_model": plan.base.identity,
        "base_model_path": plan.base.path,
        "base_model_revision": plan.base.revision or "",
        "data_version": plan.data_version or "unknown",
        "kb_version": plan.kb_version or "unknown",
        "git_sha": git_sha(),
        "device": device,
        "precision": precision,
        "warm_start_adapter": plan.warm_start_adapter or "",
        **plan.tags,
    }


def _log_start(run: TrackedRun, params: Params, plan: TrainingPlan, loaded: LoadedModel) -> None:
    log_params_once(run.client, run.run_id, run_params(params, plan))
    set_tags(run.client, run.run_id, run_tags(plan, loaded.device, loaded.precision))


def final_metrics(result: TrainResult) -> dict[str, float]:
    """The ``perf/*`` metrics logged at the end of a run (loss curves were logged step by step)."""
    memory_kind = "cuda" if result.device == "cuda" else "rss"
    return {
        "perf/tokens_per_second": result.tokens_per_second,
        "perf/tokens_seen": float(result.tokens_seen),
        f"perf/peak_memory_mb_{memory_kind}": result.peak_memory_mb,
        "perf/peak_memory_mb": result.peak_memory_mb,
        "perf/wall_time_s": result.wall_time_s,
        "perf/global_step": float(result.global_step),
        "perf/resumed_from_step": float(result.resumed_from_step),
    }


def _log_end(run: TrackedRun, result: TrainResult) -> None:
    from evertune.tuning.figures import loss_curve

    log_metrics(run.client, run.run_id, {**final_metrics(result), **cost_metrics(result.cost)}, step=result.global_step)
    eval_loss = result.metrics.get("eval_loss")
    evals = [(result.global_step, eval_loss)] if eval_loss is not None else []
    curve = loss_curve([(h["step"], h["loss"]) for h in result.loss_history], evals)
    log_figure(run.client, run.run_id, curve, "train/loss_curve.png")
    run.client.log_artifacts(run.run_id, result.adapter_dir, artifact_path="adapter")
    run.client.log_dict(run.run_id, result.to_dict(), "train/train_result.json")


__all__ = [
    "BaseModelRef",
    "TrackedRun",
    "TrainingPlan",
    "final_metrics",
    "git_sha",
    "plan_training",
    "run_params",
    "run_tags",
    "train_adapter",
]

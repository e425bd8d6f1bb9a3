"""The optional DPO stage after SFT: TRL ``DPOTrainer`` on the same LoRA adapter, the base model as reference.

:func:`run_dpo` loads the base model with the SFT adapter trainable (``PeftModel.from_pretrained``) and trains it
on preference pairs (:mod:`evertune.tuning.preferences`) with ``ref_model=None``. Given a PeftModel, TRL 1.16
adds a frozen ``"ref"`` copy of the adapter as the reference; it is deleted before training, so TRL computes the
reference log-probs with the adapter disabled: the untuned base model is the reference, as the issue asks, and
no second copy of the weights is held. ``dpo.*`` params use ``DPOConfig`` names (``beta``, ``max_length``,
``loss_type``, ``learning_rate``, ``max_steps``); ``bf16`` follows ``train.bf16`` like SFT does
(:func:`~evertune.tuning.trainer.choose_device`; ``DPOConfig`` defaults it to True, which fails on CPU) and gradient checkpointing follows ``train.gradient_checkpointing``.

The reported **reward margin** is TRL's ``rewards/margins`` (mean over pairs of ``beta`` times the log-ratio
policy/reference of chosen minus that of rejected), measured on the pairs after training
(``trainer.evaluate``). Output: ``<output_dir>/dpo/adapter`` and ``<output_dir>/dpo/merged``, the candidate that
is then evaluated and gated like any other (:func:`dpo_stage`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.config_ops import DpoParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpoResult:
    """What the DPO stage produced: output folders, the pair count and the metrics (``dpo/*``)."""

    adapter_dir: str
    merged_dir: str
    n_pairs: int
    metrics: dict[str, float]


def dpo_config(dpo: DpoParams, params: Params, output_dir: Path, device: str, precision: str) -> Any:
    """The ``DPOConfig`` of the stage (``dpo`` params; seed, logging cadence from ``train``)."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir / "checkpoints"),
        beta=dpo.beta,
        max_length=dpo.max_length,
        loss_type=dpo.loss_type,
        learning_rate=dpo.learning_rate,
        max_steps=dpo.max_steps,
        per_device_train_batch_size=dpo.per_device_train_batch_size,
        per_device_eval_batch_size=dpo.per_device_train_batch_size,
        gradient_checkpointing=params.train.gradient_checkpointing,
        seed=params.train.seed,
        data_seed=params.train.seed,
        bf16=precision == "bf16",
        fp16=False,
        use_cpu=device == "cpu",
        logging_steps=params.train.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _dataset(pairs: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                              for p in pairs])


def build_dpo_trainer(adapter_dir: str | Path, base_model_path: str, revision: str | None,
                      pairs: list[dict[str, Any]], params: Params, output_dir: Path) -> Any:
    """A ``DPOTrainer`` over ``pairs`` for the SFT adapter, whose reference is the adapter-disabled base model."""
    from peft import PeftModel
    from transformers import PrinterCallback, set_seed
    from trl import DPOTrainer

    from evertune.models.bootstrap import load_causal_lm
    from evertune.tuning.trainer import choose_device, weights_dtype

    device, precision = choose_device(params.train.bf16)
    set_seed(params.train.seed)
    model, tokenizer = load_causal_lm(base_model_path, revision, dtype=weights_dtype(device, precision), device=device)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(params.dpo, params, output_dir, device, precision),
                         train_dataset=_dataset(pairs), processing_class=tokenizer)
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in peft_model.peft_config:
        peft_model.delete_adapter("ref")  # reference = adapter disabled (see the module docstring)
    peft_model.set_adapter("default")
    trainer.remove_callback(PrinterCallback)
    trainer.evertune_tokenizer = tokenizer
    return trainer


def reward_margin(trainer: Any, pairs: list[dict[str, Any]]) -> dict[str, float]:
    """TRL's evaluation metrics on ``pairs`` (``rewards/margins``, ``rewards/accuracies``, loss), ``eval_`` removed."""
    metrics = trainer.evaluate(eval_dataset=_dataset(pairs))
    return {key.removeprefix("eval_"): float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and key.startswith("eval_")}


def run_dpo(adapter_dir: str | Path, base_model_path: str, revision: str | None, pairs: list[dict[str, Any]],
            params: Params, output_dir: str | Path) -> DpoResult:
    """Train the SFT adapter at ``adapter_dir`` on ``pairs``; save adapter and merged model under ``output_dir/dpo``.

    Returns:
        The :class:`DpoResult`; ``metrics`` has ``dpo/reward_margin_before`` and ``dpo/reward_margin`` (after),
        ``dpo/reward_accuracy``, ``dpo/train_loss``, ``dpo/n_pairs`` and ``dpo/wall_time_s``.
    """
    from evertune.tuning.trainer import save_outputs

    started = time.perf_counter()
    folder = Path(output_dir) / "dpo"
    trainer = build_dpo_trainer(adapter_dir, base_model_path, revision, pairs, params, folder)
    before = reward_margin(trainer, pairs)
    outcome = trainer.train()
    after = reward_margin(trainer, pairs)
    adapter, merged = save_outputs(trainer, trainer.evertune_tokenizer, folder)
    metrics = {
        "dpo/reward_margin_before": before.get("rewards/margins", 0.0),
        "dpo/reward_margin": after.get("rewards/margins", 0.0),
        "dpo/reward_accuracy": after.get("rewards/accuracies", 0.0),
        "dpo/train_loss": float(outcome.training_loss),
        "dpo/n_pairs": float(len(pairs)),
        "dpo/wall_time_s": time.perf_counter() - started,
    }
    log.info("DPO on %d pairs: reward margin %.4f -> %.4f", len(pairs), metrics["dpo/reward_margin_before"],
             metrics["dpo/reward_margin"])
    return DpoResult(str(adapter), str(merged), len(pairs), metrics)


def _stage_identity(trained: dict[str, Any], pairs: list[dict[str, Any]], params: Params) -> str:
    """What a finished stage's result is keyed on: the SFT result key, the pairs and the ``dpo`` params."""
    import hashlib
    import json

    payload = json.dumps([trained.get("params_hash"), trained.get("global_step"), trained["adapter_dir"], pairs,
                          params.dpo.model_dump(mode="json")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _recorded(output_dir: str | Path, identity: str) -> DpoResult | None:
    """The recorded result of a finished stage with this identity (a retry returns it), or ``None``."""
    import json

    path = Path(output_dir) / "dpo" / "result.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("identity") != identity or not Path(data["merged_dir"], "config.json").is_file():
        return None
    return DpoResult(data["adapter_dir"], data["merged_dir"], data["n_pairs"], data["metrics"])


def _record(output_dir: str | Path, identity: str, result: DpoResult) -> None:
    import json
    from dataclasses import asdict

    path = Path(output_dir) / "dpo" / "result.json"
    path.write_text(json.dumps({"identity": identity, **asdict(result)}, sort_keys=True, indent=1))


def dpo_stage(trained: dict[str, Any], pairs: list[dict[str, Any]], params: Params, *, client: Any = None,
              run_id: str | None = None) -> dict[str, Any]:
    """The train step's DPO hook: ``trained`` (a ``TrainResult`` dict) with the DPO adapter and merged model.

    Skipped (``trained`` returned with ``dpo: {"skipped": reason}``) when ``dpo.enabled`` is off or there are
    fewer than ``dpo.min_pairs`` pairs. Otherwise the SFT adapter is trained further (:func:`run_dpo`), the
    ``dpo/*`` metrics, ``dpo.*`` params and the ``dpo/adapter`` artifact are logged to ``run_id``, and
    ``adapter_dir``/``merged_dir`` point at the DPO output: what evaluation, the gate and registration read.
    A retry with the same SFT adapter, pairs and ``dpo`` params returns the recorded result
    (``<output_dir>/dpo/result.json``) instead of training again.
    """
    if not params.dpo.enabled:
        return {**trained, "dpo": {"skipped": "dpo.enabled is false"}}
    if len(pairs) < params.dpo.min_pairs:
        return {**trained, "dpo": {"skipped": f"{len(pairs)} preference pairs, dpo.min_pairs is {params.dpo.min_pairs}"}}
    identity = _stage_identity(trained, pairs, params)
    result = _recorded(trained["output_dir"], identity)
    if result is not None:
        log.info("DPO stage in %s already finished; returning the recorded result", trained["output_dir"])
    else:
        result = run_dpo(trained["adapter_dir"], trained["base_model_path"], trained.get("base_model_revision"),
                         pairs, params, trained["output_dir"])
        if client is not None and run_id is not None:
            from evertune.tuning.tracking import log_metrics, log_params_once

            log_params_once(client, run_id, {f"dpo.{k}": v for k, v in params.dpo.model_dump(mode="json").items()})
            log_metrics(client, run_id, result.metrics, step=0)
            client.log_artifacts(run_id, result.adapter_dir, artifact_path="dpo/adapter")
        _record(trained["output_dir"], identity, result)  # after logging: a crash in between trains again
    return {**trained, "sft_adapter_dir": trained["adapter_dir"], "sft_merged_dir": trained["merged_dir"],
            "adapter_dir": result.adapter_dir, "merged_dir": result.merged_dir,
            "dpo": {"n_pairs": result.n_pairs, "metrics": result.metrics}}


__all__ = ["DpoResult", "build_dpo_trainer", "dpo_config", "dpo_stage", "reward_margin", "run_dpo"]

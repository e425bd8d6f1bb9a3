"""What a training run costs, and the budget that refuses one before it starts (``cost`` in ``params.yaml``).

Before training, :func:`project_training` projects the tokens a run will process and the time it will take:

* ``dataset tokens``: every training example through the base tokenizer's chat template, each capped at
  ``train.max_length`` (:func:`example_token_counts`);
* ``epochs``: ``train.num_train_epochs``, or with ``train.max_steps > 0`` the share of the dataset those steps
  cover (``max_steps * sequences per step / sequences``; a packed run counts ``ceil(dataset tokens /
  max_length)`` sequences), as the Trainer does;
* ``tokens = dataset tokens * epochs``; ``seconds = tokens / (cost.expected_tokens_per_second[device] *
  devices)``.

:func:`check_budget` raises :class:`~evertune.errors.BudgetExceeded` when either exceeds
``cost.max_train_tokens`` / ``cost.max_train_seconds``; :func:`admit` (what ``train_adapter`` calls before the
model loads) does both and records a refusal on the tuning run (:func:`record_refusal`). After training, :func:`training_cost` turns the measured
wall time, tokens and peak memory into device-seconds and an estimated cost (``cost.rates``, per device-hour).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evertune.errors import BudgetExceeded

if TYPE_CHECKING:
    from evertune.config import CostParams, Params, TrainParams
    from evertune.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingProjection:
    """What a training run is expected to process, before it starts.

    Attributes:
        device: ``cpu`` or ``cuda``; ``n_devices``: how many of them train (data parallel).
        dataset_tokens: Tokens of one pass over the training examples (each capped at ``max_length``).
        sequences: Sequences of one pass (examples, or packed sequences when packing).
        epochs: Planned passes over the dataset (fractional when ``max_steps`` ends mid-epoch).
        steps: Planned optimizer steps.
        tokens: Projected tokens processed (``dataset_tokens * epochs``).
        seconds: Projected training time at ``cost.expected_tokens_per_second``.
        tokens_per_second: The throughput assumed for all devices together.
    """

    device: str
    n_devices: int
    dataset_tokens: int
    sequences: int
    epochs: float
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data (XCom, MLflow)."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingCost:
    """What a training call used, and its estimated price.

    Attributes:
        device: ``cpu`` or ``cuda``; ``n_devices``: how many trained.
        wall_time_s: Wall time of the call (load, train, merge, save).
        device_seconds: ``wall_time_s * n_devices``.
        tokens: Input tokens processed (the Trainer's ``num_input_tokens_seen`` of this call).
        peak_memory_mb: Peak memory of training (CUDA allocator on GPU, RSS on CPU).
        rate_per_hour: The ``cost.rates`` entry of the device kind.
        estimated_cost: ``device_seconds / 3600 * rate_per_hour``, in ``currency``.
        currency: ``cost.currency``.
    """

    device: str
    n_devices: int
    wall_time_s: float
    device_seconds: float
    tokens: int
    peak_memory_mb: float
    rate_per_hour: float
    estimated_cost: float
    currency: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data (XCom, MLflow)."""
        return asdict(self)


def rate_key(device: str) -> str:
    """The ``cost.rates`` key of a device kind: ``gpu_hour`` for ``cuda``, else ``cpu_hour``."""
    return "gpu_hour" if device == "cuda" else "cpu_hour"


def device_count(device: str) -> int:
    """Devices a run on ``device`` trains on: every visible GPU (the Trainer's data parallelism), else 1."""
    if device != "cuda":
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def example_token_counts(examples: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int) -> list[int]:
    """Tokens of each ``SFTTrainer`` example (prompt and completion together), capped at ``max_length``.

    Conversational examples (``messages``, or ``prompt``/``completion`` message lists) go through the chat
    template; plain ``prompt``/``completion`` strings are concatenated.
    """
    counts = []
    for example in examples:
        if "messages" in example:
            messages = list(example["messages"])
        elif isinstance(example.get("prompt"), list):
            messages = [*example["prompt"], *example["completion"]]
        else:
            messages = None
        if messages is not None:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = f"{example['prompt']}{example['completion']}"
        counts.append(min(len(tokenizer(text, add_special_tokens=False)["input_ids"]), max_length))
    return counts


def project_training(
    token_counts: Sequence[int],
    train: TrainParams,
    cost: CostParams,
    *,
    device: str,
    n_devices: int,
    packing: bool,
) -> TrainingProjection:
    """Project a run's tokens and time from its examples' token counts (the rule of the module docstring)."""
    dataset_tokens = int(sum(token_counts))
    sequences = math.ceil(dataset_tokens / train.max_length) if packing else len(token_counts)
    sequences = max(1, sequences)
    per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps * n_devices
    if train.max_steps > 0:
        steps = train.max_steps
        epochs = steps * per_step / sequences
    else:
        epochs = float(train.num_train_epochs)
        steps = math.ceil(math.ceil(sequences / per_step) * epochs)
    tokens = round(dataset_tokens * epochs)
    throughput = cost.expected_tokens_per_second.get(device, cost.expected_tokens_per_second.get("cpu", 400.0))
    throughput *= n_devices
    return TrainingProjection(
        device=device, n_devices=n_devices, dataset_tokens=dataset_tokens, sequences=sequences, epochs=epochs,
        steps=steps, tokens=tokens, seconds=tokens / throughput, tokens_per_second=throughput,
    )  # fmt: skip


def project_examples(
    examples: Sequence[Mapping[str, Any]], base_model_path: str, revision: str | None, params: Params
) -> TrainingProjection:
    """Project a planned run over ``examples`` on this machine's device (:func:`project_training`).

    Loads only the base model's tokenizer (to count tokens), never the model.
    """
    from transformers import AutoTokenizer

    from evertune.tuning.trainer import choose_device, resolve_packing

    device, _ = choose_device()
    tokenizer = AutoTokenizer.from_pretrained(base_model_path, revision=revision)
    counts = example_token_counts(examples, tokenizer, params.train.max_length)
    return project_training(counts, params.train, params.cost, device=device, n_devices=device_count(device),
                            packing=resolve_packing(params.train.packing, device))  # fmt: skip


def check_budget(projection: TrainingProjection, cost: CostParams) -> None:
    """Refuse a run whose projection exceeds ``cost.max_train_tokens`` or ``cost.max_train_seconds``.

    Raises:
        BudgetExceeded: A limit is exceeded; the message names each one, the projection and how it was made.
    """
    over = []
    if cost.max_train_tokens is not None and projection.tokens > cost.max_train_tokens:
        over.append(f"projected {projection.tokens} tokens > cost.max_train_tokens={cost.max_train_tokens}")
    if cost.max_train_seconds is not None and projection.seconds > cost.max_train_seconds:
        over.append(f"projected {projection.seconds:.0f} s > cost.max_train_seconds={cost.max_train_seconds:g}")
    if not over:
        return
    raise BudgetExceeded(
        "training refused before it started: " + "; ".join(over)
        + f" ({projection.dataset_tokens} dataset tokens x {projection.epochs:.3g} epochs over {projection.steps} "
        f"steps on {projection.n_devices} {projection.device} device(s) at {projection.tokens_per_second:g} "
        "tokens/s). Raise the budget in params.yaml (cost.*) or shrink the run (train.max_steps, dataset window).",
        {**projection.to_dict(), "max_train_tokens": cost.max_train_tokens,
         "max_train_seconds": cost.max_train_seconds},
    )  # fmt: skip


def training_cost(
    *, device: str, n_devices: int, wall_time_s: float, tokens: int, peak_memory_mb: float, cost: CostParams
) -> TrainingCost:
    """Device-seconds and the estimated cost of a training call (see :class:`TrainingCost`)."""
    device_seconds = float(wall_time_s) * n_devices
    rate = float(cost.rates.get(rate_key(device), 0.0))
    return TrainingCost(
        device=device, n_devices=n_devices, wall_time_s=float(wall_time_s), device_seconds=device_seconds,
        tokens=int(tokens), peak_memory_mb=float(peak_memory_mb), rate_per_hour=rate,
        estimated_cost=device_seconds / 3600.0 * rate, currency=cost.currency,
    )  # fmt: skip


def record_refusal(run_id: str, exc: BudgetExceeded, settings: Settings | None = None) -> None:
    """Record a budget refusal on the tuning run: tags ``budget_refused`` and ``budget_reason``, and the
    projection with its limits as ``train/budget_refusal.json`` (in the store of ``settings``)."""
    from evertune.tuning.tracking import mlflow_client, set_tags

    client = mlflow_client(settings)

    set_tags(client, run_id, {"budget_refused": "true", "budget_reason": str(exc)[:5000]})
    client.log_dict(run_id, exc.projection, "train/budget_refusal.json")
    log.error("%s", exc)


def admit(
    examples: Sequence[Mapping[str, Any]],
    base_model_path: str,
    revision: str | None,
    params: Params,
    *,
    run_id: str | None = None,
    settings: Settings | None = None,
) -> TrainingProjection:
    """Project a planned run (:func:`project_examples`) and check it against the budget (:func:`check_budget`).

    Args:
        examples: The run's training examples.
        base_model_path: The resolved base model (its tokenizer counts the tokens).
        revision: Its hub revision.
        params: Pipeline params (``train``, ``cost``).
        run_id: An MLflow run to record a refusal on (:func:`record_refusal`); ``None``: not recorded.
        settings: Deployment settings (the MLflow store).

    Returns:
        The projection of an admitted run.

    Raises:
        BudgetExceeded: The projection exceeds ``cost.max_train_tokens`` or ``cost.max_train_seconds``.
    """
    projection = project_examples(examples, base_model_path, revision, params)
    try:
        check_budget(projection, params.cost)
    except BudgetExceeded as exc:
        if run_id is not None:
            record_refusal(run_id, exc, settings)
        raise
    return projection


def cost_metrics(recorded: Mapping[str, Any]) -> dict[str, float]:
    """The ``cost/*`` metrics of a run from ``TrainResult.cost`` (a :class:`TrainingCost` dict plus
    ``projected_tokens`` and ``projected_seconds``); missing entries are left out."""
    names = {
        "device_seconds": "cost/device_seconds",
        "n_devices": "cost/n_devices",
        "tokens": "cost/tokens",
        "peak_memory_mb": "cost/peak_memory_mb",
        "estimated_cost": "cost/estimated",
        "projected_tokens": "cost/projected_tokens",
        "projected_seconds": "cost/projected_seconds",
    }
    return {metric: float(recorded[key]) for key, metric in names.items() if recorded.get(key) is not None}


__all__ = [
    "admit",
    "TrainingCost",
    "TrainingProjection",
    "check_budget",
    "cost_metrics",
    "device_count",
    "example_token_counts",
    "project_examples",
    "project_training",
    "record_refusal",
    "rate_key",
    "training_cost",
]

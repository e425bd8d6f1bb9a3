"""The model and the TRL ``SFTTrainer`` of a training run: device, precision, LoRA, packing, run, save.

Device policy: CUDA when available, otherwise CPU, with deterministic kernels while training on CPU, where the LM
head also scores the labelled positions only. Precision follows ``train.bf16`` (:func:`choose_device`): ``auto`` is
bf16 on a CUDA device that supports it and on a CPU with AMX-BF16 tiles, fp32 elsewhere. ``train.packing`` uses
TRL's best-fit-decreasing packing, which is padding-free (sequence boundaries travel as ``position_ids``;
transformers turns them into a block-diagonal mask for SDPA, or uses varlen FlashAttention when installed).

torch, transformers, peft, trl and datasets are heavy imports: every function imports them when called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.tuning.train_data import TrainingExamples
from evertune.tuning.train_state import atomic_save

if TYPE_CHECKING:
    from evertune.config import LoraParams, TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A base model ready for LoRA training.

    Attributes:
        model: The causal LM (a trainable ``PeftModel`` on a warm start).
        tokenizer: Its tokenizer.
        peft_config: The ``LoraConfig`` of a fresh adapter; ``None`` on a warm start (the adapter's own is kept).
        device: ``cpu`` or ``cuda``.
        precision: ``fp32`` or ``bf16``.
    """

    model: Any
    tokenizer: Any
    peft_config: Any
    device: str
    precision: str


@dataclass(frozen=True)
class TrainingOutcome:
    """What ``trainer.train`` of this call measured.

    Attributes:
        metrics: ``train_loss``, ``train_runtime``, ... (numbers only).
        tokens_seen: Input tokens processed in this call (a resumed run counts from its checkpoint).
        tokens_per_second: ``tokens_seen / train_runtime`` (0 without a runtime).
        global_step: Optimizer steps done in total.
    """

    metrics: dict[str, float]
    tokens_seen: int
    tokens_per_second: float
    global_step: int


def choose_device(bf16: bool | str = "auto") -> tuple[str, str]:
    """``(device, precision)``: ``cuda`` when a GPU is usable, else ``cpu``; precision ``bf16`` or ``fp32``.

    Args:
        bf16: ``train.bf16``. ``True``/``False`` force the precision; ``auto`` picks bf16 on a CUDA device that
            supports it, and on a CPU whose matrix units multiply bf16 (``amx_bf16``: Intel Sapphire Rapids and
            later). Measured on 2 such cores (SmolLM2-135M + LoRA, RAG examples, batch 4): 1.27x tokens/s through
            the trainer, 0.79x peak memory (docs/benchmarks.md section 4b).
            CPUs with AVX-512 BF16 instructions but no AMX (AMD Zen 4) stay fp32: not measured there, and an
            earlier AMX host measured 0.9x (docs/benchmarks.md section 9), so ``false`` is the knob where it does
            not pay. On CPU, bf16 is autocast over fp32 weights (:func:`load_model`).
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(bf16, bool):
        return device, "bf16" if bf16 else "fp32"
    if device == "cuda":
        return device, "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return device, "bf16" if cpu_has_bf16_matrix_units() else "fp32"


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU has AMX-BF16 tiles (``torch.cpu.get_capabilities()``; ``False`` where torch cannot tell)."""
    import torch

    try:
        return bool(torch.cpu.get_capabilities().get("amx_bf16"))
    except (AttributeError, RuntimeError):  # older torch: no capability query
        return False


def weights_dtype(device: str, precision: str) -> Any:
    """The dtype to load the base model in: bf16 on CUDA in bf16; else fp32. CPU bf16 keeps fp32 weights and
    autocasts (bf16 matmuls, fp32 master weights and optimizer state), so the adapter is the same fp32 artifact."""
    import torch

    return torch.bfloat16 if precision == "bf16" and device == "cuda" else torch.float32


def resolve_packing(setting: bool | str, device: str) -> bool:
    """``train.packing``: ``auto`` packs on CUDA only.

    Measured on 2 CPU cores (tiny model, batch 8): packing ran at 328 tokens/s and 4.9 GB peak RSS against 467
    tokens/s and 1.1 GB unpacked, because without FlashAttention a packed batch attends over all its tokens.
    """
    return setting if isinstance(setting, bool) else device == "cuda"


def maybe_use_flash_attention(model: Any, device: str) -> None:
    """Switch to ``flash_attention_2`` on CUDA when ``flash_attn`` is installed (else keep SDPA).

    Padding-free packing is exact with SDPA too (block-diagonal mask from ``position_ids``); varlen FA2 is faster.
    """
    import importlib.util

    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        try:
            model.set_attn_implementation("flash_attention_2")
        except (ImportError, ValueError) as exc:
            log.warning("flash_attention_2 not usable, keeping %s: %s", model.config._attn_implementation, exc)


def cpu_determinism(device: str) -> Callable[[], None]:
    """Use deterministic kernels on CPU (cheap there); return a function that restores the previous mode."""
    import torch

    if device != "cpu":
        return lambda: None
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    return lambda: torch.use_deterministic_algorithms(previous)


def score_label_positions_only(device: str) -> Callable[[], None]:
    """On CPU, make TRL's fused LM head score only the labelled positions; return a function that restores it.

    TRL 1.16's fused head (``add_fused_lm_head``) projects through the LM head only the positions whose next token
    carries a label when Triton runs the kernel (CUDA, XPU), and every position elsewhere, so that compiled backends
    (Neuron) keep fixed tile shapes. Eager CPU has nothing to recompile, and with ``completion_only_loss`` the answer
    is a small share of a RAG prompt's tokens, so the other positions are pure waste. Measured on SmolLM2-135M + LoRA
    (2 CPU cores, batch 4 x ~400 tokens, two interleaved pairs): 26.3 -> 16.8 s and 25.8 -> 16.3 s per step
    (1.57x, 1.59x), the same losses to 6 decimals (docs/benchmarks.md section 9b).

    The switch is TRL's own compact branch, which reads ``trl.trainer.utils._use_triton`` (the kernel itself reads
    its own module's copy, so it still folds the tiles in torch). If a TRL release drops that name, training stays
    exact and only slower; a warning says so and ``tests/integration/test_label_positions.py`` fails.
    """
    if device != "cpu":
        return lambda: None
    import trl.trainer.utils as trl_utils

    previous = getattr(trl_utils, "_use_triton", None)
    if previous is None:
        log.warning("trl.trainer.utils._use_triton is gone: the LM head scores every position on CPU (slower)")
        return lambda: None

    def compact_on_cpu(target: Any) -> bool:
        return target.type == "cpu" or previous(target)

    trl_utils._use_triton = compact_on_cpu

    def restore() -> None:
        trl_utils._use_triton = previous

    return restore


def load_model(
    base_model_path: str,
    revision: str | None,
    lora: LoraParams,
    *,
    seed: int,
    warm_start_adapter: str | Path | None = None,
    bf16: bool | str = "auto",
) -> LoadedModel:
    """Seed, load the base model on the chosen device and precision, and prepare the LoRA adapter.

    Args:
        base_model_path: A resolved model folder or hub id.
        revision: Its hub revision.
        lora: The ``lora`` params of a fresh adapter.
        seed: ``train.seed`` (seeds the adapter's initialisation too).
        warm_start_adapter: An adapter folder to continue training (its weights load trainable, its config stays).
        bf16: ``train.bf16`` (:func:`choose_device`).
    """
    from transformers import set_seed

    from evertune.models.bootstrap import load_causal_lm

    device, precision = choose_device(bf16)
    set_seed(seed)
    model, tokenizer = load_causal_lm(base_model_path, revision, dtype=weights_dtype(device, precision), device=device)
    maybe_use_flash_attention(model, device)
    if warm_start_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(warm_start_adapter), is_trainable=True)
        return LoadedModel(model, tokenizer, None, device, precision)
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return LoadedModel(model, tokenizer, peft_config, device, precision)


def sft_config(train: TrainParams, output_dir: Path, device: str, precision: str) -> Any:
    """The ``SFTConfig`` of a run: ``train`` params, checkpoints under ``output_dir/checkpoints``, no reporting
    integrations (our callbacks log), no tqdm, no dataloader workers."""
    from trl import SFTConfig

    packing = resolve_packing(train.packing, device)
    return SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        max_length=train.max_length,
        packing=packing,
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        gradient_checkpointing=train.gradient_checkpointing,
        completion_only_loss=train.completion_only_loss,
        seed=train.seed,
        data_seed=train.seed,
        bf16=precision == "bf16",
        fp16=False,
        use_cpu=device == "cpu",
        logging_steps=train.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Packed (padding-free) batches carry no padding: count every token; else count the attention mask.
        include_num_input_tokens_seen="all" if packing else "non_padding",
        dataset_num_proc=None,
    )


def build_trainer(
    loaded: LoadedModel, examples: TrainingExamples, train: TrainParams, output_dir: Path, callbacks: Sequence[Any]
) -> Any:
    """An ``SFTTrainer`` over ``examples`` with ``callbacks``; Transformers' printer callback is removed (the
    step logger logs each line through :mod:`logging` instead of ``print``)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=loaded.model,
        args=sft_config(train, output_dir, loaded.device, loaded.precision),
        train_dataset=Dataset.from_list(examples.train),
        eval_dataset=Dataset.from_list(examples.eval) if examples.eval else None,
        processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def checkpoint_step(checkpoint: Path | None) -> int:
    """The step of a ``checkpoint-<step>`` folder (0 for none)."""
    return int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0


def run_training(trainer: Any, resume_from: Path | None, device: str) -> TrainingOutcome:
    """Train (resuming from ``resume_from`` when given) and measure the call; on CPU with deterministic kernels and
    the LM head scoring the labelled positions only (:func:`score_label_positions_only`)."""
    restores = (cpu_determinism(device), score_label_positions_only(device))
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        for restore in restores:
            restore()
    tokens_seen = int(trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen)
    runtime = float(output.metrics.get("train_runtime") or 0.0)
    return TrainingOutcome(
        metrics={k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)},
        tokens_seen=tokens_seen,
        tokens_per_second=tokens_seen / runtime if runtime > 0 else 0.0,
        global_step=int(trainer.state.global_step),
    )


def evaluation_metrics(trainer: Any) -> dict[str, float]:
    """``trainer.evaluate()`` on the eval set, numbers only (``eval_loss``, ``eval_runtime``, ...); on CPU the LM
    head scores the labelled positions only, as in training."""
    restore = score_label_positions_only(trainer.args.device.type)
    try:
        return {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)}
    finally:
        restore()


def full_loss_history(log_history: Sequence[dict[str, Any]], fallback: list[dict[str, float]]) -> list[dict[str, float]]:
    """``[{"step", "loss"}]`` from the Trainer's ``state.log_history``, which comes back from the checkpoint on
    resume and so spans the interrupted attempt too; ``fallback`` (this call's own record) when it has none."""
    history = [
        {"step": int(entry["step"]), "loss": float(entry["loss"])}
        for entry in log_history
        if "loss" in entry and "step" in entry
    ]
    return history or fallback


def save_outputs(trainer: Any, tokenizer: Any, output_dir: Path) -> tuple[Path, Path]:
    """Save the adapter to ``output_dir/adapter`` and base + adapter merged to ``output_dir/merged``, each
    atomically.

    Returns:
        ``(adapter_dir, merged_dir)``.
    """
    adapter_dir = output_dir / "adapter"
    merged_dir = output_dir / "merged"
    peft_model = trainer.model
    atomic_save(adapter_dir, lambda d: (peft_model.save_pretrained(d), tokenizer.save_pretrained(d)))
    merged = peft_model.merge_and_unload()
    merged.eval()
    atomic_save(merged_dir, lambda d: (merged.save_pretrained(d), tokenizer.save_pretrained(d)))
    return adapter_dir, merged_dir


__all__ = [
    "LoadedModel",
    "TrainingOutcome",
    "build_trainer",
    "checkpoint_step",
    "choose_device",
    "cpu_determinism",
    "evaluation_metrics",
    "full_loss_history",
    "load_model",
    "maybe_use_flash_attention",
    "resolve_packing",
    "run_training",
    "save_outputs",
    "score_label_positions_only",
    "sft_config",
]

"""Trainer callbacks of a training run: step metrics into MLflow, and peak memory.

``transformers`` is a heavy import, so the callback classes are built by :func:`make_callbacks` when training
starts. What they compute is in plain functions (:func:`trainer_log_metrics`, :func:`rss_high_water_mark`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.tuning.tracking import log_metrics

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingCallbacks:
    """The callbacks a training run installs.

    Attributes:
        step_logger: Records ``history`` (``[{"step", "loss"}]`` of this call) and logs every Trainer log line.
        peak_memory: Holds ``peak_bytes`` of training.
    """

    step_logger: Any
    peak_memory: Any

    def as_list(self) -> list[Any]:
        """Both, in the order the Trainer should run them."""
        return [self.step_logger, self.peak_memory]


def trainer_log_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metric names and values of a Trainer log line: ``eval_loss`` -> ``eval/loss``, ``loss`` ->
    ``train/loss``; booleans, non-numbers and non-finite numbers are left out."""
    import math

    metrics = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        name = key.replace("eval_", "eval/", 1) if key.startswith("eval_") else f"train/{key}"
        metrics[name] = float(value)
    return metrics


def reset_rss_high_water_mark() -> None:
    """Reset the kernel's peak-RSS counter (Linux: writing 5 to ``clear_refs`` sets ``VmHWM`` to the current RSS).

    Elsewhere this does nothing, and :func:`rss_high_water_mark` reports the lifetime peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_high_water_mark() -> int:
    """Peak RSS in bytes since the last reset (``VmHWM``), else the lifetime peak from ``getrusage``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def make_callbacks(client: MlflowClient | None, run_id: str | None, device: str) -> TrainingCallbacks:
    """Callbacks that log every Trainer log line into OUR MLflow run and sample peak memory.

    Args:
        client: The tracking client; ``None`` logs through :mod:`logging` only.
        run_id: The run to log into (with ``client``).
        device: ``cuda`` measures the CUDA allocator's peak, anything else the process RSS.
    """
    from transformers import TrainerCallback

    class MlflowStepLogger(TrainerCallback):
        """Logs numeric Trainer logs (loss, learning rate, grad norm, eval loss) with their step."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            step = int(state.global_step)
            if "loss" in logs:
                self.history.append({"step": step, "loss": float(logs["loss"])})
            log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float)))
            if client is not None and run_id is not None:
                log_metrics(client, run_id, trainer_log_metrics(logs), step=step)

    return TrainingCallbacks(MlflowStepLogger(), _peak_memory_callback(TrainerCallback, device))


def _peak_memory_callback(base: type, device: str) -> Any:
    import psutil
    import torch

    class PeakMemory(base):
        """Peak memory of training: the CUDA allocator's peak on GPU; on CPU the kernel's RSS high-water mark
        (``VmHWM``, reset at train start through ``/proc/self/clear_refs``; step-end RSS samples would miss the
        transient logits peak inside forward/backward). Without /proc, the process's lifetime peak is used."""

        def __init__(self) -> None:
            self.peak_bytes = 0
            self._process = psutil.Process(os.getpid())

        def _sample(self) -> None:
            if device == "cuda":
                self.peak_bytes = max(self.peak_bytes, int(torch.cuda.max_memory_allocated()))
                return
            self.peak_bytes = max(self.peak_bytes, int(self._process.memory_info().rss), rss_high_water_mark())

        def on_train_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                reset_rss_high_water_mark()
            self._sample()

        def on_step_end(self, args, state, control, **kwargs):
            self._sample()

        def on_train_end(self, args, state, control, **kwargs):
            self._sample()

    return PeakMemory()


__all__ = ["TrainingCallbacks", "make_callbacks", "reset_rss_high_water_mark", "rss_high_water_mark",
           "trainer_log_metrics"]

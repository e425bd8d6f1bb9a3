"""LoRA SFT training throughput and peak memory: evertune's settings vs TRL ``SFTTrainer`` defaults.

Targets (issue): on a GPU, evertune's configuration trains >= 1.5x the tokens/s of TRL's defaults. This
benchmark runs wherever it is started: on CUDA it measures the target; on CPU it reports the same figures
for the CPU configuration (where ``train.packing: auto`` resolves to off), which is not the target's setting.

Variants, each in its own subprocess (clean peak memory, no shared allocator or autograd state), run in an
ABBA order so a slow phase of the shared machine does not favour one side:

* ``evertune``: :func:`evertune.tuning.train.train_adapter` with ``params.yaml``'s ``train`` and ``lora``
  sections, only ``train.max_steps`` shortened; no MLflow. The device is picked like the trainer does.
* ``trl_defaults``: ``SFTConfig(output_dir, max_steps, report_to="none")`` and nothing else, plus
  ``use_cpu=True`` on CPU (TRL defaults to bf16, which it refuses on CPU without it), with the same LoRA config
  (``params.yaml``'s ``lora``), the same examples (already split into prompt/completion as evertune does),
  the same checkpoint loaded the same way.

Measured identically in both by a callback: tokens = non-padding tokens fed to the model (a forward pre-hook,
counting the attention mask, or every token for padding-free batches), time = ``on_train_begin`` to
``on_train_end``; steady-state tokens/s excludes the first step. Peak memory: on CPU the kernel's RSS
high-water mark over the training window (``VmHWM`` reset at train begin through ``/proc/self/clear_refs``,
cross-checked by a 10 ms RSS sampler thread) and over the whole process (``getrusage``); on CUDA
``torch.cuda.max_memory_allocated`` over the training window.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

#: On 2 shared CPU cores one SmolLM2-135M step (batch 8) takes ~50 s, so the CPU run is 3 steps per variant
#: (ABBA: 12 steps in all, ~10 min); on CUDA steps are fast and 30 per run leave warm-up effects behind.
FULL_CPU = {"model": "smollm2-135m-instruct", "steps": 3, "n_examples": 64, "rounds": 2}
FULL_CUDA = {"model": "smollm2-135m-instruct", "steps": 30, "n_examples": 400, "rounds": 2}
QUICK = {"model": "tiny-random-llama", "steps": 3, "n_examples": 48, "rounds": 1}
VARIANTS = ("evertune", "trl_defaults")
#: Diagnostics, not part of the comparison: TRL defaults with one default undone (``--child`` or
#: EVERTUNE_BENCH_TRAIN_VARIANTS=evertune,trl_defaults,trl_defaults_fp32 to add them to the run).
DIAGNOSTIC_VARIANTS = {"trl_defaults_fp32": {"bf16": False}, "trl_defaults_no_gc": {"gradient_checkpointing": False},
                       # evertune with one of its train params changed (the rest of params.yaml as is)
                       "evertune_fp32": {"bf16": False}, "evertune_bf16": {"bf16": True}}
TARGET_GPU = 1.5


# ----------------------------------------------------------------------------- measurement (child side)


def _rss_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def probe_report(tokens: int, begin: float, end: float, step_marks: list[tuple[int, float, int]], *, device: str,
                 sampled_peak: int, hwm_peak: int | None, cuda_peak: int | None) -> dict[str, Any]:
    """The figures of one training window, from what the probe recorded.

    Args:
        tokens: Tokens fed to the model.
        begin: ``perf_counter`` at ``on_train_begin``.
        end: ``perf_counter`` at ``on_train_end``.
        step_marks: ``(step, time, tokens so far)`` at each step end; steady state starts after the first.
        device: ``cuda`` or a CPU device (RSS figures are reported off CUDA only).
        sampled_peak: Highest RSS the sampler thread saw, in bytes.
        hwm_peak: ``VmHWM`` at train end, in bytes (``None``: unreadable).
        cuda_peak: ``torch.cuda.max_memory_allocated`` over the window (``None`` off CUDA).
    """
    seconds = end - begin
    first_step_time = step_marks[0][1] if step_marks else begin
    first_step_tokens = step_marks[0][2] if step_marks else 0
    steady_s = end - first_step_time
    steps = [b[1] - a[1] for a, b in zip(step_marks, step_marks[1:], strict=False)]
    mib = 2**20
    return {
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "steady_tokens_per_s": (tokens - first_step_tokens) / steady_s if steady_s > 0 else None,
        "first_step_s": first_step_time - begin,
        "step_seconds": steps,
        "peak_train_rss_mb": (max(hwm_peak or 0, sampled_peak) / mib) if device != "cuda" else None,
        "peak_train_rss_sampled_mb": sampled_peak / mib if device != "cuda" else None,
        "peak_cuda_allocated_mb": cuda_peak / mib if cuda_peak is not None else None,
    }


def _make_probe(device: str) -> Any:
    import psutil
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Counts tokens reaching the model and samples time and memory over the training window."""

        def __init__(self) -> None:
            self.tokens = 0
            self.step_marks: list[tuple[int, float, int]] = []  # (step, time, tokens so far)
            self.begin = self.end = 0.0
            self.sampled_peak = 0
            self.hwm_peak: int | None = None
            self.cuda_peak: int | None = None
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None
            self._process = psutil.Process(os.getpid())

        def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            if mask is not None:
                self.tokens += int(mask.sum().item())
            elif ids is not None:
                self.tokens += int(ids.numel())  # padding-free (packed) batches carry no padding

        def _sample(self) -> None:
            while not self._stop.is_set():
                self.sampled_peak = max(self.sampled_peak, self._process.memory_info().rss)
                self._stop.wait(0.01)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self._count, with_kwargs=True)
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                try:
                    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                except OSError:
                    pass
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.step_marks.append((int(state.global_step), time.perf_counter(), self.tokens))

        def on_train_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
                self.cuda_peak = int(torch.cuda.max_memory_allocated())
            self.end = time.perf_counter()
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.hwm_peak = _rss_hwm_bytes()

        def report(self) -> dict[str, Any]:
            return probe_report(self.tokens, self.begin, self.end, self.step_marks, device=device,
                                sampled_peak=self.sampled_peak, hwm_peak=self.hwm_peak, cuda_peak=self.cuda_peak)

    return Probe()


def _child(variant: str, model_path: str, data_path: str, steps: int, out_dir: str) -> dict[str, Any]:
    common.prepare_env()
    import torch

    from evertune.tuning.train_data import read_jsonl, to_sft_example
    from evertune.tuning.trainer import choose_device, resolve_packing

    if os.environ.get("EVERTUNE_BENCH_TORCH_THREADS"):
        # Same for every variant; on an oversubscribed machine 1 thread avoids stalls at thread barriers.
        torch.set_num_threads(int(os.environ["EVERTUNE_BENCH_TORCH_THREADS"]))
    overrides = DIAGNOSTIC_VARIANTS.get(variant, {}) if variant.startswith("evertune") else {}
    params = common.load_bench_params(train={"max_steps": steps, **overrides})
    device, _ = choose_device(params.train.bf16)
    probe = _make_probe(device)
    record: dict[str, Any] = {"variant": variant, "device": device, "torch_threads": torch.get_num_threads()}
    started = time.perf_counter()
    if variant.startswith("evertune"):
        from evertune.tuning.train import train_adapter

        result = train_adapter(data_path, None, params, output_dir=out_dir, base_model=model_path,
                               callbacks=[probe], log_to_mlflow=False)  # fmt: skip
        tp = params.train
        record["config"] = {
            "precision": result.precision,
            "packing": resolve_packing(tp.packing, device),
            "per_device_train_batch_size": tp.per_device_train_batch_size,
            "gradient_accumulation_steps": tp.gradient_accumulation_steps,
            "gradient_checkpointing": tp.gradient_checkpointing,
            "max_length": tp.max_length,
            "learning_rate": tp.learning_rate,
            "deterministic_algorithms_on_cpu": device == "cpu",
        }
        record["trainer_reported"] = {"tokens_per_second": result.tokens_per_second,
                                      "peak_memory_mb": result.peak_memory_mb,
                                      "train_runtime": result.metrics.get("train_runtime")}  # fmt: skip
        record["final_loss"] = result.loss_history[-1]["loss"] if result.loss_history else None
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        from evertune.models.bootstrap import load_causal_lm

        lp = params.lora
        examples = [to_sft_example(row, completion_only=True) for row in read_jsonl(data_path)]
        model, tokenizer = load_causal_lm(model_path, device=device)
        extra = {"use_cpu": True} if device == "cpu" else {}  # TRL's bf16 default is refused on CPU without it
        extra.update(DIAGNOSTIC_VARIANTS.get(variant, {}))
        config = SFTConfig(output_dir=out_dir, max_steps=steps, report_to="none", **extra)
        lora = LoraConfig(r=lp.r, lora_alpha=lp.lora_alpha, lora_dropout=lp.lora_dropout,
                          target_modules=lp.target_modules, task_type="CAUSAL_LM")  # fmt: skip
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=lora, callbacks=[probe])  # fmt: skip
        output = trainer.train()
        record["config"] = {
            "precision": "bf16" if config.bf16 else ("fp16" if config.fp16 else "fp32"),
            "packing": config.packing,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "gradient_checkpointing": config.gradient_checkpointing,
            "max_length": config.max_length,
            "learning_rate": config.learning_rate,
            "extra_overrides": extra,
        }
        record["trainer_reported"] = {"train_runtime": output.metrics.get("train_runtime")}
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record["final_loss"] = losses[-1] if losses else None
    record.update(probe.report())
    record["process_wall_s"] = time.perf_counter() - started
    record["peak_process_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


# ----------------------------------------------------------------------------- orchestration (parent side)


def _run_variant(variant: str, model_path: Path, data_path: Path, steps: int, out_dir: Path) -> dict[str, Any]:
    result_file = out_dir.with_suffix(".json")
    command = [sys.executable, "-m", "bench.train", "--child", variant, "--model", str(model_path),
               "--data", str(data_path), "--steps", str(steps), "--out", str(out_dir),
               "--result", str(result_file)]  # fmt: skip
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=common.REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-3000:] + completed.stderr[-6000:])
        raise RuntimeError(f"train variant {variant} failed with exit code {completed.returncode}")
    record = json.loads(result_file.read_text())
    record["subprocess_wall_s"] = time.perf_counter() - started
    return record


def _config(quick: bool, cuda: bool) -> dict[str, Any]:
    """The run's sizes: ``QUICK``, ``FULL_CUDA`` or ``FULL_CPU``, with ``EVERTUNE_BENCH_TRAIN_STEPS`` applied."""
    cfg = dict(QUICK if quick else (FULL_CUDA if cuda else FULL_CPU))
    if os.environ.get("EVERTUNE_BENCH_TRAIN_STEPS"):
        cfg["steps"] = int(os.environ["EVERTUNE_BENCH_TRAIN_STEPS"])  # e.g. 10 on a quiet machine
        cfg["n_examples"] = max(cfg["n_examples"], 8 * cfg["steps"] + 8)
    return cfg


def chosen_variants(value: str) -> tuple[str, ...]:
    """The variants to run, from ``EVERTUNE_BENCH_TRAIN_VARIANTS`` (comma-separated; default: :data:`VARIANTS`).

    Raises:
        SystemExit: An unknown name, or one of :data:`VARIANTS` left out.
    """
    chosen = tuple(value.split(","))
    unknown = set(chosen) - set(VARIANTS) - set(DIAGNOSTIC_VARIANTS)
    if unknown or not set(VARIANTS) <= set(chosen):
        raise SystemExit(f"EVERTUNE_BENCH_TRAIN_VARIANTS must include {VARIANTS}; unknown: {sorted(unknown)}")
    return chosen


def _rounds(chosen: tuple[str, ...], cfg: dict[str, Any], root: Path, model_path: Path,
            data_path: Path) -> list[dict[str, Any]]:
    """Run every variant ``cfg["rounds"]`` times in ABBA order; one record per run."""
    import shutil

    runs: list[dict[str, Any]] = []
    for round_number in range(cfg["rounds"]):
        order = chosen if round_number % 2 == 0 else chosen[::-1]  # ABBA
        for variant in order:
            out_dir = root / f"{variant}-r{round_number}"
            load_before = common.load_average()
            record = _run_variant(variant, model_path, data_path, cfg["steps"], out_dir)
            record.update({"round": round_number, "load_before": load_before, "load_after": common.load_average()})
            runs.append(record)
            memory = record["peak_train_rss_mb"] or record["peak_cuda_allocated_mb"]
            print(
                f"round {round_number} {variant:13s}: {record['tokens_per_s']:8.1f} tokens/s "
                f"(steady {record['steady_tokens_per_s'] or 0:8.1f}), {record['tokens']} tokens in "
                f"{record['train_seconds']:.1f} s, peak train memory {memory:.0f} MiB, process peak "
                f"{record['peak_process_rss_mb']:.0f} MiB, load {load_before}->{record['load_after']}",
                flush=True,
            )
            shutil.rmtree(out_dir, ignore_errors=True)
    return runs


def summarize(runs: list[dict[str, Any]], chosen: tuple[str, ...], model: str) -> dict[str, Any]:
    """Medians per variant and the evertune / TRL-defaults ratios (speed, steady speed, peak memory)."""
    by_variant = {v: [r for r in runs if r["variant"] == v] for v in chosen}

    def med(variant: str, key: str) -> float:
        return common.median([r[key] for r in by_variant[variant] if r.get(key) is not None])

    device = runs[0]["device"]
    memory_key = "peak_cuda_allocated_mb" if device == "cuda" else "peak_train_rss_mb"
    ratio = med("evertune", "tokens_per_s") / med("trl_defaults", "tokens_per_s")
    return {
        "device": device,
        "model": model,
        "tokens_per_s": {v: med(v, "tokens_per_s") for v in chosen},
        "steady_tokens_per_s": {v: med(v, "steady_tokens_per_s") for v in chosen},
        "peak_train_memory_mb": {v: med(v, memory_key) for v in chosen},
        "peak_process_rss_mb": {v: med(v, "peak_process_rss_mb") for v in chosen},
        "speed_ratio": ratio,
        "steady_speed_ratio": med("evertune", "steady_tokens_per_s") / med("trl_defaults", "steady_tokens_per_s"),
        "memory_ratio": med("evertune", memory_key) / med("trl_defaults", memory_key),
        "configs": {v: by_variant[v][0]["config"] for v in chosen},
        "target_gpu": TARGET_GPU,
        "target_applies": device == "cuda",
        "meets_target": (ratio >= TARGET_GPU) if device == "cuda" else None,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    device, ratio = summary["device"], summary["speed_ratio"]
    target_text = (
        f"target >= {TARGET_GPU}x on GPU: {common.verdict(ratio >= TARGET_GPU)}"
        if device == "cuda"
        else f"GPU target (>= {TARGET_GPU}x) not measurable on {device}"
    )
    print(
        f"RESULT train ({device}, {summary['model']}): evertune {summary['tokens_per_s']['evertune']:.1f} tokens/s "
        f"vs TRL defaults {summary['tokens_per_s']['trl_defaults']:.1f} -> {ratio:.2f}x (steady state "
        f"{summary['steady_speed_ratio']:.2f}x); peak train memory {summary['peak_train_memory_mb']['evertune']:.0f} "
        f"vs {summary['peak_train_memory_mb']['trl_defaults']:.0f} MiB ({summary['memory_ratio']:.2f}x); "
        f"{target_text}"
    )


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print the figures and return the record."""
    import shutil

    common.prepare_env()
    import torch

    from bench.corpus import make_sft_examples
    from evertune.settings import get_settings

    cfg = _config(quick, torch.cuda.is_available())
    params = common.load_bench_params()
    model_path = get_settings().models_dir / cfg["model"]
    if not (model_path / "config.json").is_file():
        raise SystemExit(f"model checkpoint not found: {model_path} (run `make bootstrap` or set EVERTUNE_MODELS_DIR)")
    common.banner(
        f"train ({'quick' if quick else 'full'}): {cfg['model']}, {cfg['steps']} steps per run, "
        f"{cfg['rounds']} round(s) of {' / '.join(VARIANTS)}"
    )
    info = common.machine_info()
    root = common.work_root() / ("train-quick" if quick else "train")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data_path = root / "train.jsonl"
    # RAG prompts with as many excerpts as the training set carries (EVERTUNE_BENCH_TRAIN_CONTEXT_CHUNKS=0: bare
    # questions, as runs before 2026-12-03 measured).
    chunks = int(os.environ.get("EVERTUNE_BENCH_TRAIN_CONTEXT_CHUNKS", params.dataset.context.k or params.retrieval.k))
    rows = make_sft_examples(cfg["n_examples"], params, context_chunks=chunks)
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    chosen = chosen_variants(os.environ.get("EVERTUNE_BENCH_TRAIN_VARIANTS", ",".join(VARIANTS)))
    runs = _rounds(chosen, cfg, root, model_path, data_path)
    summary = summarize(runs, chosen, cfg["model"])
    _print_summary(summary)
    record = {"benchmark": "train", "quick": quick, "config": {**cfg, "context_chunks": chunks}, "machine": info,
              "runs": runs, "summary": summary}
    common.save_result("train", quick, record)
    return record


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``--child`` runs one variant and writes its JSON; otherwise the whole benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.train")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=[*VARIANTS, *DIAGNOSTIC_VARIANTS])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out")
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    if args.child:
        record = _child(args.child, args.model, args.data, args.steps, args.out)
        Path(args.result).write_text(json.dumps(record, indent=2, default=str))
        return
    run(quick=args.quick)


if __name__ == "__main__":
    main()

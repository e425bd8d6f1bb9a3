"""LoRA SFT on the tiny model: loss curves land in MLflow and fall, checkpoints resume, warm starts replay.

Real TRL/PEFT training on CPU and a real MLflow SQLite store inside the isolated EVERTUNE_HOME.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evertune.config import Params, load_params, training_params_hash
from evertune.errors import ConfigError
from evertune.settings import get_settings
from evertune.tuning.train import train_adapter
from evertune.tuning.train_data import filter_replay, mix_replay, to_sft_example
from evertune.tuning.train_state import STATE_FILE, last_checkpoint
from evertune.tuning.trainer import choose_device
from tiny_params import tiny_training_params

FACTS = [
    ("How do I export a notebook?", "Open the notebook menu and choose Export."),
    ("How do I reset my password?", "Use the Forgot password link on the sign-in page."),
    ("Can I sync offline?", "Yes, changes sync when you reconnect."),
]


def write_sft(path: Path, facts: list[tuple[str, str]], repeats: int) -> Path:
    system = load_params().dataset.system_prompt
    rows = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for _ in range(repeats)
        for q, a in facts
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_params(model_dir: Path, **train: object) -> Params:
    """The shared tiny params (``tests/tiny_params.py``) at 8 steps, ``train`` fields on top."""
    return tiny_training_params(model_dir, train={"max_steps": 8, **train})


def crash_after_save(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise RuntimeError(f"simulated worker crash after checkpoint {step}")

    return Crash()


def adapter_tensors(folder: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_sft_examples_train_on_the_answer_only() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert to_sft_example(row, completion_only=True) == {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    assert to_sft_example(row, completion_only=False) == {"messages": row["messages"]}
    with pytest.raises(ConfigError, match="assistant"):
        to_sft_example({"messages": row["messages"][:2]}, completion_only=True)


def test_replay_mix_has_the_configured_share_and_is_seeded() -> None:
    new = [{"id": f"new-{i}"} for i in range(40)]
    old = [{"id": f"old-{i}"} for i in range(100)] + [{"id": "new-0"}]  # an overlapping row is never replayed twice
    mixed, n_replay = mix_replay(new, old, 0.2, seed=5)
    assert n_replay == 10 and len(mixed) == 50
    assert sum(row["id"].startswith("old-") for row in mixed) / len(mixed) == pytest.approx(0.2)
    assert mix_replay(new, old, 0.2, seed=5) == (mixed, n_replay)
    assert mix_replay(new, old, 0.2, seed=6)[0] != mixed
    assert mix_replay(new, old, 0.0, seed=5) == (new, 0)
    assert mix_replay(new, old[:3], 0.5, seed=5)[1] == 3  # capped by what the replay set has


def test_replay_filter_drops_golden_items_and_rows_the_new_data_supersedes() -> None:
    def row(row_id: str, question: str) -> dict:
        return {"id": row_id, "question": question, "answer": "a"}

    old = [row("q1", "How do I export?"), row("q2", "Where are invoices?"), row("q3", "Can I sync offline?"),
           row("q4", "How much is Pro?"), row("q5", "How do I reset my password?"),
           {**row("q7", "What was the legacy sync?"), "doc_id": "legacy-sync"},
           {"id": "q6", "messages": [{"role": "user", "content": "What is two-factor login?"},
                                     {"role": "assistant", "content": "a"}]}]
    new = [row("q3", "Can I sync when offline?"), row("n1", "how much is PRO")]
    kept, counts = filter_replay(old, new, golden_ids={"q1"},
                                 golden_questions={"Where are the invoices?", "WHAT is two-factor login"},
                                 deleted_doc_ids={"legacy-sync"})
    # Golden: q1 by id, q2 and q6 (its user turn) by normalised question; q7 cites a deleted document;
    # superseded: q3 by id, q4 by normalised question.
    assert [r["id"] for r in kept] == ["q5"]
    assert counts == {"replay_rows": 7, "replay_kept": 1, "replay_dropped_golden": 3,
                      "replay_dropped_deleted_doc": 1, "replay_dropped_superseded": 2}
    assert filter_replay(old, [], golden_ids=(), golden_questions=())[0] == old


@pytest.mark.slow
def test_lora_training_logs_falling_loss_to_mlflow_and_warm_starts(
    evertune_home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from peft import PeftModel

    from evertune.models.bootstrap import load_causal_lm
    from evertune.tuning.answer import no_retrieval
    from evertune.tuning.answer_scoring import answer_logprob_losses

    settings = get_settings()
    params = tiny_params(tiny_model_dir)
    train = write_sft(tmp_path / "train.jsonl", FACTS, repeats=4)
    val = write_sft(tmp_path / "validation.jsonl", FACTS[:2], repeats=1)
    result = train_adapter(
        train,
        val,
        params,
        settings,
        output_dir=tmp_path / "run",
        data_version="data-v1",
        kb_version="7",
        tags={"airflow.dag_id": "tune_model"},
    )

    assert result.global_step == 8 and result.resumed_from_step == 0
    assert result.device == "cpu" and result.precision == choose_device(params.train.bf16)[1]
    assert result.tokens_seen > 0 and result.tokens_per_second > 0 and result.peak_memory_mb > 100

    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(Path(settings.mlflow_artifact_root).resolve().as_uri())
    curve = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "train/loss"))
    assert [step for step, _ in curve] == list(range(1, 9))
    first, last = [v for _, v in curve[:3]], [v for _, v in curve[-3:]]
    assert sum(last) / 3 < sum(first) / 3 - 0.2, curve
    assert "eval/loss" in run.data.metrics
    for key in ("perf/tokens_per_second", "perf/peak_memory_mb", "perf/wall_time_s"):
        assert run.data.metrics[key] > 0
    assert run.data.params["train.learning_rate"] == "0.01" and run.data.params["lora.r"] == "8"
    assert run.data.params["params_hash"] == training_params_hash(params) == result.params_hash
    tags = run.data.tags
    assert (tags["data_version"], tags["kb_version"], tags["airflow.dag_id"]) == ("data-v1", "7", "tune_model")
    assert tags["base_model"] == result.base_model == str(tiny_model_dir) and tags["git_sha"]
    assert tags["base_model_path"] == result.base_model_path == str(tiny_model_dir.resolve())
    assert "adapter_model.safetensors" in {Path(f.path).name for f in client.list_artifacts(result.run_id, "adapter")}

    # The merged checkpoint is base + adapter, and it learned the answers (lower NLL through the answer path).
    base, tokenizer = load_causal_lm(tiny_model_dir, device="cpu")
    merged, _ = load_causal_lm(result.merged_dir, device="cpu")
    questions, answers = [q for q, _ in FACTS], [a for _, a in FACTS]
    nll_base = answer_logprob_losses(base, tokenizer, questions, answers, no_retrieval, params)
    nll_tuned = answer_logprob_losses(merged, tokenizer, questions, answers, no_retrieval, params)
    assert sum(nll_tuned) < sum(nll_base) - 0.5
    import torch

    probe = tokenizer("Can I sync offline?", return_tensors="pt")
    with torch.no_grad():
        via_adapter = PeftModel.from_pretrained(base, result.adapter_dir)(**probe).logits
        via_merged = merged(**probe).logits
    assert torch.allclose(via_adapter, via_merged, atol=1e-4)

    # Warm start from that adapter with replay: training continues from the learned weights.
    new = write_sft(tmp_path / "new.jsonl", FACTS[2:], repeats=4)
    warm = train_adapter(
        new,
        None,
        tiny_params(tiny_model_dir, max_steps=2, replay_fraction=0.5),
        settings,
        output_dir=tmp_path / "warm",
        warm_start_adapter=result.adapter_dir,
        replay_path=train,
    )
    assert warm.n_replay_examples == 4 and warm.n_train_examples == 8  # 4 new + 4 replayed (fraction 0.5)
    assert warm.warm_start_adapter == result.adapter_dir
    # It starts where the first run left off (its loss is near that run's end), not from scratch.
    assert warm.loss_history[0]["loss"] < (curve[0][1] + curve[-1][1]) / 2, (warm.loss_history, curve)
    before, after = adapter_tensors(result.adapter_dir), adapter_tensors(warm.adapter_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the loaded adapter was trainable


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_last_checkpoint(
    evertune_home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    settings = get_settings()
    params = tiny_params(tiny_model_dir, max_steps=4, save_steps=2)
    train = write_sft(tmp_path / "train.jsonl", FACTS, repeats=3)
    out = tmp_path / "run"

    with pytest.raises(RuntimeError, match="simulated worker crash"):
        train_adapter(train, None, params, settings, output_dir=out, callbacks=[crash_after_save(2)])
    assert last_checkpoint(out).name == "checkpoint-2"
    crashed_run = json.loads((out / STATE_FILE).read_text())["run_id"]
    client = MlflowClient(settings.mlflow_tracking_uri)
    assert client.get_run(crashed_run).info.status == "FAILED"

    # The retry resumes at step 2 and logs into the same MLflow run.
    resumed = train_adapter(train, None, params, settings, output_dir=out)
    assert (resumed.resumed_from_step, resumed.global_step, resumed.run_id) == (2, 4, crashed_run)
    assert [h["step"] for h in resumed.loss_history] == [1, 2, 3, 4]
    assert resumed.tokens_seen > 0  # tokens of this attempt only (steps 3-4)
    assert client.get_run(crashed_run).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(crashed_run, "train/loss")) == [1, 2, 3, 4]

    # Resuming is exact: the same adapter as an uninterrupted run.
    straight = train_adapter(train, None, params, settings, output_dir=tmp_path / "straight", log_to_mlflow=False)
    resumed_w, straight_w = adapter_tensors(resumed.adapter_dir), adapter_tensors(straight.adapter_dir)
    assert all(torch.allclose(resumed_w[k], straight_w[k], atol=1e-6) for k in straight_w)
    assert resumed.tokens_seen < straight.tokens_seen

    # A finished run is not repeated; a larger max_steps continues from the last checkpoint.
    assert train_adapter(train, None, params, settings, output_dir=out) == resumed
    longer = train_adapter(
        train, None, tiny_params(tiny_model_dir, max_steps=6, save_steps=2), settings, output_dir=out
    )
    assert (longer.resumed_from_step, longer.global_step, longer.run_id) == (4, 6, crashed_run)


def test_checkpoints_of_another_setup_are_refused(evertune_home: Path, tmp_path: Path) -> None:
    # A fake model folder is enough: the check runs before anything is loaded.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    out = tmp_path / "run"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (out / STATE_FILE).write_text(json.dumps({"resume_key": "another-setup", "run_id": None}))
    train = write_sft(tmp_path / "train.jsonl", FACTS, repeats=1)
    with pytest.raises(ConfigError, match="different training setup"):
        train_adapter(train, None, tiny_params(model_dir), get_settings(), output_dir=out)


def autocast_probe():
    """A callback that records, at every forward pass of the model's first linear layer, whether its matmul ran in
    bf16 (the Trainer enters autocast inside the model's patched ``forward``, so the layer is where it shows)."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[bool] = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            layer.register_forward_hook(lambda module, inputs, output: self.seen.append(output.dtype == torch.bfloat16))

    return Probe()


@pytest.mark.parametrize("bf16", [True, False])
def test_cpu_training_precision_follows_train_bf16_and_saves_an_fp32_adapter(
    evertune_home: Path, tiny_model_dir: Path, tmp_path: Path, bf16: bool
) -> None:
    """``train.bf16: true`` on CPU autocasts every forward pass to bf16 over fp32 weights (AMX machines get it from
    ``auto``); the adapter it saves is fp32 either way, and the loss still falls."""
    import torch

    params = tiny_params(tiny_model_dir, bf16=bf16, max_steps=6)
    probe = autocast_probe()
    result = train_adapter(write_sft(tmp_path / "train.jsonl", FACTS, repeats=6), None, params,
                           output_dir=tmp_path / "run", callbacks=[probe], log_to_mlflow=False)  # fmt: skip

    assert result.device == "cpu" and result.precision == ("bf16" if bf16 else "fp32")
    assert probe.seen and set(probe.seen) == {bf16}
    assert {tensor.dtype for tensor in adapter_tensors(result.adapter_dir).values()} == {torch.float32}
    losses = [entry["loss"] for entry in result.loss_history]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses

"""The pieces of a training run that need no model: examples, the folder's keys and state, callbacks' maths,
trainer settings, and what a run logs. (Real training: tests/integration/test_train.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evertune.config import TRAINING_SECTIONS, load_params, parse_params, training_params_hash
from evertune.errors import ConfigError, NothingToDo
from evertune.tuning.callbacks import rss_high_water_mark, trainer_log_metrics
from evertune.tuning.train import BaseModelRef, TrainingPlan, final_metrics, run_params, run_tags
from evertune.tuning.train_data import TrainingExamples, load_examples, read_jsonl
from evertune.tuning.train_state import (
    STATE_FILE,
    TrainResult,
    atomic_save,
    complete_checkpoints,
    finished_result,
    last_checkpoint,
    remembered_run_id,
    training_identity,
    write_result,
    write_state,
)
from evertune.tuning.trainer import checkpoint_step, choose_device, full_loss_history, resolve_packing


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def with_train(**train: object):
    data = load_params().to_dict()
    data["train"].update(train)
    return parse_params(data)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_rows(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(8)]),
        "eval": write_rows(tmp_path / "eval.jsonl", [chat("e", "f")]),
        "replay": write_rows(tmp_path / "replay.jsonl", [chat(f"old{i}", "x") for i in range(10)] + [chat("q0", "a0")]),
    }


def test_training_params_hash_covers_exactly_the_training_sections() -> None:
    params = load_params()
    assert training_params_hash(params) == params.section_hash(*TRAINING_SECTIONS)
    assert training_params_hash(with_train(learning_rate=0.5)) != training_params_hash(params)
    data = params.to_dict()
    data["gate"]["min_improvement"] = 0.3
    assert training_params_hash(parse_params(data)) == training_params_hash(params)


def test_load_examples_mixes_replay_and_splits_prompt_from_completion(files: dict[str, Path]) -> None:
    examples = load_examples(files["train"], files["eval"], files["replay"], replay_fraction=0.2, seed=3,
                             completion_only=True)  # fmt: skip
    assert examples.n_replay == 2  # 0.2 / 0.8 * 8 new rows; the replayed copy of q0 is never picked
    assert len(examples.train) == 10 and len(examples.eval) == 1
    assert sum(example["prompt"][0]["content"] == "q0" for example in examples.train) == 1
    assert examples.eval[0] == {"prompt": [{"role": "user", "content": "e"}],
                                "completion": [{"role": "assistant", "content": "f"}]}  # fmt: skip
    again = load_examples(files["train"], files["eval"], files["replay"], replay_fraction=0.2, seed=3,
                          completion_only=True)  # fmt: skip
    assert again == examples
    plain = load_examples(files["train"], None, None, replay_fraction=0.2, seed=3, completion_only=False)
    assert plain.n_replay == 0 and plain.eval == [] and plain.train[0] == chat("q0", "a0")


def test_read_jsonl_rejects_bad_rows_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1]\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(NothingToDo):
        read_jsonl(tmp_path / "empty.jsonl")


def test_resume_key_ignores_cadence_but_result_key_does_not(files: dict[str, Path]) -> None:
    def identity(params, **paths):
        kwargs = {"train_path": files["train"], "eval_path": None, "replay_path": None, "warm_start_adapter": None}
        return training_identity(params, base_model_path="/models/base", **{**kwargs, **paths})

    base = identity(load_params())
    assert identity(load_params()) == base
    longer = identity(with_train(max_steps=500, save_steps=7))
    assert longer.resume_key == base.resume_key and longer.result_key != base.result_key
    assert identity(with_train(learning_rate=0.5)).resume_key != base.resume_key
    assert identity(load_params(), eval_path=files["eval"]).resume_key != base.resume_key
    assert base.setup["base_model"] == "/models/base"


def make_checkpoint(output_dir: Path, step: int, complete: bool = True) -> Path:
    folder = output_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_checkpoints_cut_off_mid_save_are_ignored(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path) is None and checkpoint_step(None) == 0
    make_checkpoint(tmp_path, 5)
    newest = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, complete=False)
    (tmp_path / "checkpoints" / "checkpoint-x").mkdir()
    assert [step for step, _ in complete_checkpoints(tmp_path / "checkpoints")] == [5, 10]
    assert last_checkpoint(tmp_path) == newest and checkpoint_step(newest) == 10


def test_state_remembers_the_run_of_the_same_setup_only(tmp_path: Path, files: dict[str, Path]) -> None:
    kwargs = {"base_model_path": "b", "train_path": files["train"], "eval_path": None, "replay_path": None,
              "warm_start_adapter": None}  # fmt: skip
    mine = training_identity(load_params(), **kwargs)
    other = training_identity(with_train(learning_rate=0.5), **kwargs)
    assert remembered_run_id(tmp_path, mine) is None
    write_state(tmp_path, mine, "run-1")
    assert json.loads((tmp_path / STATE_FILE).read_text())["resume_key"] == mine.resume_key
    assert remembered_run_id(tmp_path, mine) == "run-1"
    assert remembered_run_id(tmp_path, other) is None  # no checkpoints yet: the folder may be reused
    make_checkpoint(tmp_path, 2)
    with pytest.raises(ConfigError, match="different training setup"):
        remembered_run_id(tmp_path, other)


def result_in(folder: Path) -> TrainResult:
    return TrainResult(
        adapter_dir=str(folder / "adapter"), merged_dir=str(folder / "merged"), output_dir=str(folder), run_id="r",
        base_model="b", base_model_revision=None, base_model_path="b", params_hash="h", device="cpu",
        precision="fp32", global_step=4, resumed_from_step=0, metrics={"train_loss": 1.5}, tokens_per_second=10.0,
        tokens_seen=40, peak_memory_mb=12.0, wall_time_s=2.0, loss_history=[{"step": 1, "loss": 2.0}],
    )  # fmt: skip


def test_a_finished_result_is_returned_only_for_its_key_and_with_its_models(tmp_path: Path) -> None:
    result = result_in(tmp_path)
    write_result(tmp_path, "key-1", result)
    assert finished_result(tmp_path, "key-1") is None  # the adapter and merged model are missing
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    assert finished_result(tmp_path, "key-1") == result
    assert finished_result(tmp_path, "key-2") is None


def test_atomic_save_replaces_only_after_a_complete_save(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    atomic_save(target, lambda d: (d.mkdir(), (d / "w").write_text("1")))
    assert (target / "w").read_text() == "1"

    def broken(folder: Path) -> None:
        folder.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save(target, broken)
    assert (target / "w").read_text() == "1"
    atomic_save(target, lambda d: (d.mkdir(), (d / "w").write_text("2")))
    assert (target / "w").read_text() == "2" and not (tmp_path / ".adapter.partial").exists()


def test_trainer_logs_become_mlflow_metrics() -> None:
    logs = {"loss": 1.25, "eval_loss": 2, "grad_norm": math.nan, "epoch": 0.5, "done": True, "note": "x"}
    assert trainer_log_metrics(logs) == {"train/loss": 1.25, "eval/loss": 2.0, "train/epoch": 0.5}


def test_rss_high_water_mark_is_a_plausible_byte_count() -> None:
    assert 1 << 20 < rss_high_water_mark() < 1 << 40


def test_packing_auto_means_cuda_only() -> None:
    assert resolve_packing("auto", "cuda") and not resolve_packing("auto", "cpu")
    assert resolve_packing(True, "cpu") and not resolve_packing(False, "cuda")


def test_loss_history_prefers_the_trainer_state_spanning_resumes() -> None:
    state = [{"step": 1, "loss": 3.0}, {"step": 2, "eval_loss": 2.0}, {"step": 3, "loss": 1.0}, {"train_loss": 2}]
    own = [{"step": 3, "loss": 1.0}]
    assert full_loss_history(state, own) == [{"step": 1, "loss": 3.0}, {"step": 3, "loss": 1.0}]
    assert full_loss_history([{"step": 2, "eval_loss": 2.0}], own) == own


def test_a_run_logs_its_params_lineage_and_perf(tmp_path: Path, files: dict[str, Path]) -> None:
    params = load_params()
    plan = TrainingPlan(
        output_dir=tmp_path, examples=TrainingExamples([{"x": 1}] * 3, [{"x": 2}], 1),
        base=BaseModelRef("/models/base", "bootstrap:tiny", "main"), params_hash="abc",
        identity=training_identity(params, base_model_path="/models/base", train_path=files["train"],
                                   eval_path=None, replay_path=None, warm_start_adapter=None),
        data_version="d1", tags={"airflow.dag_id": "tune_model", "device": "overridden"},
    )  # fmt: skip
    values = run_params(params, plan)
    assert values["train.learning_rate"] == params.train.learning_rate and values["lora.r"] == params.lora.r
    assert (values["n_train_examples"], values["n_replay_examples"], values["n_eval_examples"]) == (3, 1, 1)
    tags = run_tags(plan, "cpu", "fp32")
    assert tags["base_model"] == "bootstrap:tiny" and tags["base_model_path"] == "/models/base"
    assert tags["data_version"] == "d1" and tags["kb_version"] == "unknown" and tags["warm_start_adapter"] == ""
    assert tags["airflow.dag_id"] == "tune_model" and tags["device"] == "overridden"  # the caller's tags win
    perf = final_metrics(result_in(tmp_path))
    assert perf["perf/peak_memory_mb_rss"] == perf["perf/peak_memory_mb"] == 12.0
    assert perf["perf/global_step"] == 4.0 and "perf/peak_memory_mb_cuda" not in perf


@pytest.mark.parametrize(
    ("setting", "capabilities", "expected"),
    [
        ("auto", {"amx_bf16": True, "avx512_bf16": True}, "bf16"),   # Sapphire Rapids and later: AMX tiles
        ("auto", {"amx_bf16": False, "avx512_bf16": True}, "fp32"),  # Zen 4: bf16 instructions, no matrix units
        ("auto", {"avx2": True}, "fp32"),
        (False, {"amx_bf16": True}, "fp32"),
        (True, {"avx2": True}, "bf16"),
    ],
)
def test_cpu_precision_is_bf16_where_the_cpu_has_amx_or_where_asked(monkeypatch, setting, capabilities, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert choose_device(setting) == ("cpu", expected)


def test_cpu_precision_is_fp32_where_torch_cannot_say_what_the_cpu_has(monkeypatch):
    import torch

    def no_query():
        raise AttributeError("get_capabilities")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", no_query)
    assert choose_device("auto") == ("cpu", "fp32")

"""What a tuning run records besides metrics: the loss curve, cost figures and the budget refusal of training,
and the evaluation table, metric bars and drift histograms, as artifacts of one MLflow run.

Real TRL training of the tiny model on CPU, real MLflow (SQLite) inside the isolated EVERTUNE_HOME.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from evertune.config import Params, load_params
from evertune.errors import BudgetExceeded
from evertune.settings import get_settings
from evertune.tuning.train import train_adapter
from tiny_params import tiny_training_params

FACTS = [
    ("How do I export a notebook?", "Open the notebook menu and choose Export."),
    ("How do I reset my password?", "Use the Forgot password link on the sign-in page."),
    ("Can I sync offline?", "Yes, changes sync when you reconnect."),
]


def write_sft(path: Path, repeats: int) -> Path:
    system = load_params().dataset.system_prompt
    rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]}
            for _ in range(repeats) for q, a in FACTS]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_params(model_dir: Path, **cost: object) -> Params:
    return tiny_training_params(model_dir, train={"max_steps": 4}, evaluate={"max_new_tokens": 6, "bootstrap_samples": 100},
                                cost=cost)  # fmt: skip


def test_a_run_over_budget_is_refused_before_the_model_loads(
    evertune_home: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evertune.tuning.train as train_module
    from evertune.tuning.tracking import configure_mlflow

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded or a trainer built for a refused run")

    monkeypatch.setattr(train_module, "load_model", never)
    monkeypatch.setattr(train_module, "build_trainer", never)
    params = tiny_params(tiny_model_dir, max_train_tokens=1)
    train = write_sft(tmp_path / "train.jsonl", repeats=1)
    out = tmp_path / "run"
    client, experiment_id = configure_mlflow(params)
    run_id = client.create_run(experiment_id, run_name="tune as_of=test").info.run_id  # the tuning attempt
    with pytest.raises(BudgetExceeded, match=r"refused before it started: projected \d+ tokens > "
                                             r"cost.max_train_tokens=1") as caught:
        train_adapter(train, None, params, get_settings(), output_dir=out, mlflow_run_id=run_id)
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists()
    assert caught.value.projection["tokens"] > 1 and caught.value.projection["max_train_tokens"] == 1

    # The refusal is on the tuning run (tag, reason, projection); no training run was opened.
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.data.tags["budget_refused"] == "true" and "max_train_tokens=1" in run.data.tags["budget_reason"]
    assert "train/budget_refusal.json" in {f.path for f in client.list_artifacts(run_id, "train")}


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic 8-d vectors from a hash of each text (no embedder to load)."""
    return np.array([[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts])


@pytest.mark.slow
def test_a_tuning_run_records_its_figures_table_and_cost(
    evertune_home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from evertune.models.bootstrap import load_causal_lm
    from evertune.tuning.answer import answer_questions, no_retrieval
    from evertune.tuning.drift import check_drift
    from evertune.tuning.figures import log_drift_histograms, log_evaluation
    from evertune.tuning.metrics import bootstrap_cis, score_generations
    from evertune.tuning.tracking import configure_mlflow

    params = tiny_params(tiny_model_dir, max_train_tokens=10**9, max_train_seconds=3600)
    client, experiment_id = configure_mlflow(params)
    run_id = client.create_run(experiment_id, run_name="tune as_of=test").info.run_id  # the tuning attempt
    train = write_sft(tmp_path / "train.jsonl", repeats=4)
    val = write_sft(tmp_path / "validation.jsonl", repeats=1)
    result = train_adapter(train, val, params, get_settings(), output_dir=tmp_path / "run", mlflow_run_id=run_id)
    assert result.run_id == run_id

    # Cost: measured device-seconds, tokens and peak memory, the estimate, and the admitted projection.
    cost = result.cost
    assert cost["device"] == "cpu" and cost["n_devices"] == 1
    assert cost["device_seconds"] == pytest.approx(result.wall_time_s) and cost["tokens"] == result.tokens_seen > 0
    assert cost["estimated_cost"] == pytest.approx(result.wall_time_s / 3600 * params.cost.rates["cpu_hour"])
    # 4 steps x 3 of 12 examples = one epoch: the projection is the dataset's tokens, near what was counted.
    assert 0.5 * result.tokens_seen <= cost["projected_tokens"] <= 2 * result.tokens_seen
    metrics = client.get_run(run_id).data.metrics
    for key in ("cost/device_seconds", "cost/tokens", "cost/peak_memory_mb", "cost/estimated",
                "cost/projected_tokens", "cost/projected_seconds"):
        assert metrics[key] > 0, key

    # Evaluation of challenger vs champion (the base model stands in for it), logged as a table and bars.
    questions, references = [q for q, _ in FACTS], [a for _, a in FACTS]
    per_model = {}
    for name, folder in (("challenger", result.merged_dir), ("champion", tiny_model_dir)):
        model, tokenizer = load_causal_lm(folder, device="cpu")
        answers = answer_questions(model, tokenizer, questions, no_retrieval, params)
        per_model[name] = (answers, score_generations(answers, references))
    challenger, champion = per_model["challenger"], per_model["champion"]
    items = [{"qa_id": f"q{i}", "question": q, "reference": r, "challenger": challenger[0][i],
              "champion": champion[0][i], "challenger_token_f1": challenger[1].per_item["token_f1"][i],
              "champion_token_f1": champion[1].per_item["token_f1"][i]}
             for i, (q, r) in enumerate(zip(questions, references, strict=True))]  # fmt: skip
    cis = bootstrap_cis(challenger[1].per_item, champion[1].per_item, 100, 17)
    log_evaluation(client, run_id, items, {"challenger": challenger[1].aggregate, "champion": champion[1].aggregate},
                   {k: list(v) for k, v in cis.items()}, 0.95)

    # Drift of the new training texts against a reference set, logged as histograms.
    ref_texts = [f"{q} {a}" for q, a in FACTS] * 8 + [f"old question {i} about notes" for i in range(24)]
    cur_texts = [f"a much longer new question number {i} about syncing notebooks offline" for i in range(30)]
    report = check_drift(ref_texts, cur_texts, fake_embed, params.drift, 17,
                         reference_categories={"topic": ["a", "b"] * 24}, current_categories={"topic": ["b"] * 30})
    log_drift_histograms(client, run_id, (ref_texts, {"topic": ["a", "b"] * 24}), (cur_texts, {"topic": ["b"] * 30}),
                         report.to_dict())

    artifacts = {f.path for folder in ("train", "eval", "drift") for f in client.list_artifacts(run_id, folder)}
    assert {"train/loss_curve.png", "eval/items.json", "eval/metric_bars.png", "drift/histograms.png"} <= artifacts
    for path in ("train/loss_curve.png", "eval/metric_bars.png", "drift/histograms.png"):
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                         dst_path=str(tmp_path / "dl")))
        assert local.read_bytes().startswith(b"\x89PNG"), path
    table = mlflow.load_table("eval/items.json", run_ids=[run_id])
    assert list(table["question"]) == questions and list(table["challenger_answer"]) == challenger[0]
    assert {"reference", "champion_answer", "challenger_token_f1", "champion_token_f1"} <= set(table.columns)
    assert {"path": "eval/items.json", "type": "table"} in json.loads(
        client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])  # what the UI's Evaluation view lists

    # A retried evaluation replaces the table (MLflow's log_table alone would append the rows again).
    log_evaluation(client, run_id, items, {"challenger": challenger[1].aggregate, "champion": None}, {}, 0.95)
    again = mlflow.load_table("eval/items.json", run_ids=[run_id])
    assert len(again) == len(questions) and list(again["question"]) == questions

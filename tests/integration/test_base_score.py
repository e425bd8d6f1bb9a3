"""The base model's score: generated once per input key, then reused from a real MLflow (SQLite) store.

The tiny random model answers through the real evaluation answerer; a counting wrapper tells generations apart
from cache hits. The key moves with the contexts, the prompt/evaluate settings and the base model's weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval_inputs import CONTEXTS, QUESTIONS, REFERENCES


def test_second_evaluation_with_the_same_key_reuses_the_mlflow_score(tiny_eval_params) -> None:
    from evertune.settings import get_settings
    from evertune.tuning.base_score import KEY_TAG, base_score
    from evertune.tuning.evaluation import _answers
    from evertune.tuning.tracking import mlflow_client

    settings = get_settings()
    calls: list[str] = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return _answers(*args, **kwargs)

    def score(contexts=CONTEXTS, params=tiny_eval_params):
        return base_score(params, settings, counting, questions=QUESTIONS, references=REFERENCES,
                          contexts=contexts, golden_version="g1", kb_version="kb@v3")

    first = score()
    assert not first["cached"] and len(calls) == 1
    assert Path(calls[0]).is_dir()  # the resolved checkpoint folder, loaded as training loads it
    assert set(first["aggregate"]) >= {"token_f1", "exact_match", "rougeL", "perplexity"}
    assert len(first["per_item"]["token_f1"]) == len(QUESTIONS) and len(first["answers"]) == len(QUESTIONS)

    second = score()
    assert second["cached"] and len(calls) == 1, "the same key must not generate again"
    assert second["key"] == first["key"] and second["run_id"] == first["run_id"]
    assert second["aggregate"] == first["aggregate"] and second["per_item"] == first["per_item"]

    run = mlflow_client(settings).get_run(first["run_id"])
    assert run.data.tags[KEY_TAG] == first["key"] and run.info.status == "FINISHED"
    assert run.data.tags["kb_version"] == "kb@v3" and run.data.tags["golden_version"] == "g1"
    assert run.data.metrics["base_token_f1"] == pytest.approx(first["aggregate"]["token_f1"])

    # Other contexts, another prompt budget: other keys, generated again (once each).
    other = score(contexts=[[], *CONTEXTS[1:]])
    assert not other["cached"] and other["key"] != first["key"] and len(calls) == 2
    longer = tiny_eval_params.model_copy(update={"evaluate": tiny_eval_params.evaluate.model_copy(update={"max_new_tokens": 5})})
    assert not score(params=longer)["cached"] and len(calls) == 3
    assert score(params=longer)["cached"] and len(calls) == 3


def test_the_key_follows_the_base_model_weights(tiny_eval_params, tiny_model_dir: Path, tmp_path: Path) -> None:
    from evertune.settings import get_settings
    from evertune.tuning.base_score import base_model_identity, base_score_key

    settings = get_settings()
    inputs = {"questions": QUESTIONS, "references": REFERENCES, "contexts": CONTEXTS, "golden_version": "g1",
              "kb_version": "kb@v3"}
    path, identity = base_model_identity(tiny_eval_params, settings)
    assert Path(path).is_dir() and len(identity["weights_sha256"]) == 64
    key = base_score_key(identity, tiny_eval_params, **inputs)
    assert key == base_score_key(base_model_identity(tiny_eval_params, settings)[1], tiny_eval_params, **inputs)
    assert key != base_score_key(identity, tiny_eval_params, **{**inputs, "golden_version": "g2"})
    assert key != base_score_key(identity, tiny_eval_params, **{**inputs, "references": [*REFERENCES[:2], "No."]})
    # The same checkpoint in another folder is the same base model; with one weight file changed it is another.
    copy = shutil.copytree(tiny_model_dir, tmp_path / "tiny-copy")
    moved = tiny_eval_params.model_copy(update={"base_model": tiny_eval_params.base_model.model_copy(
        update={"name_or_path": str(copy)})})
    assert base_model_identity(moved, settings)[1] == identity
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert base_model_identity(moved, settings)[1]["weights_sha256"] != identity["weights_sha256"]

"""The answer memo: a model answers an item once; unchanged items come back from a real MLflow (SQLite) store.

The tiny random model answers through the real evaluation answerer. Wrappers around the model loader and the
generator tell what was computed from what was remembered.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval_inputs import CONTEXTS, QUESTIONS, REFERENCES


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record every model load (its folder) and every generation batch set (its questions)."""
    import evertune.models.bootstrap as bootstrap
    import evertune.tuning.answer as answer

    calls: dict[str, list] = {"loads": [], "generated": []}
    load, generate = bootstrap.load_causal_lm, answer.generate_for_questions

    def counting_load(path, *args, **kwargs):
        calls["loads"].append(str(path))
        return load(path, *args, **kwargs)

    def counting_generate(model, tokenizer, questions, *args, **kwargs):
        calls["generated"].append(list(questions))
        return generate(model, tokenizer, questions, *args, **kwargs)

    monkeypatch.setattr(bootstrap, "load_causal_lm", counting_load)
    monkeypatch.setattr(answer, "generate_for_questions", counting_generate)
    return calls


def test_unchanged_items_are_not_answered_again(tiny_eval_params, tiny_model_dir: Path, counted) -> None:
    from evertune.tuning.evaluation import _answers

    first = _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params, label="test")
    assert counted["loads"] == [str(tiny_model_dir)] and counted["generated"] == [QUESTIONS]
    assert first["memo_hits"] == 0

    # The same items again: the model is not even loaded, and the result is the same.
    again = _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params, label="test")
    assert len(counted["loads"]) == 1 and len(counted["generated"]) == 1
    assert again["memo_hits"] == 3
    assert again["answers"] == first["answers"] and again["aggregate"] == first["aggregate"]
    assert again["per_item"] == first["per_item"]

    # One item's retrieved chunk changed, and a question was added: only those two are answered.
    changed = [[{**CONTEXTS[0][0], "text": "Doc 0\n\nThe Pro plan costs $10 per user per month."}], *CONTEXTS[1:]]
    more = _answers(str(tiny_model_dir), [*QUESTIONS, "Is there a free plan?"], [*REFERENCES, "Yes."],
                    [*changed, []], tiny_eval_params, label="test")
    assert counted["generated"][1] == [QUESTIONS[0], "Is there a free plan?"]
    assert more["memo_hits"] == 2 and more["answers"][1:3] == first["answers"][1:3]

    # Another reference for the same prompt: the answers are remembered, its losses are computed.
    other_ref = _answers(str(tiny_model_dir), QUESTIONS, ["No.", *REFERENCES[1:]], CONTEXTS, tiny_eval_params,
                         label="test")
    assert len(counted["generated"]) == 2 and len(counted["loads"]) == 3
    assert other_ref["answers"] == first["answers"]
    assert other_ref["aggregate"]["perplexity"] != first["aggregate"]["perplexity"]


def test_the_memo_follows_the_checkpoint_files_not_the_folder(tiny_eval_params, tiny_model_dir: Path, counted,
                                                              tmp_path: Path) -> None:
    from evertune.tuning.evaluation import _answers

    first = _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params)
    copy = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    moved = _answers(str(copy), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params)
    assert len(counted["loads"]) == 1 and moved["answers"] == first["answers"]

    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # another model now
    _answers(str(copy), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params)
    assert counted["loads"][-1] == str(copy) and len(counted["generated"]) == 2

    # A longer generation budget is another answer spec: nothing carries over.
    longer = tiny_eval_params.model_copy(
        update={"evaluate": tiny_eval_params.evaluate.model_copy(update={"max_new_tokens": 7})})
    _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, longer)
    assert len(counted["generated"]) == 3


def test_switched_off_every_item_is_answered(tiny_eval_params, tiny_model_dir: Path, counted) -> None:
    from evertune.tuning.answer_memo import MODEL_TAG
    from evertune.tuning.evaluation import _answers
    from evertune.tuning.tracking import configure_mlflow

    off = tiny_eval_params.model_copy(update={"evaluate": tiny_eval_params.evaluate.model_copy(update={"answer_memo": False})})
    for _ in range(2):
        _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, off)
    assert len(counted["loads"]) == 2 and len(counted["generated"]) == 2
    client, experiment_id = configure_mlflow(off)
    assert not client.search_runs([experiment_id], filter_string=f"tags.{MODEL_TAG} != ''")


def test_freshness_probes_share_the_memo(tiny_eval_params, tiny_model_dir: Path, counted) -> None:
    from evertune.tuning.answer_memo import MODEL_TAG
    from evertune.tuning.freshness import measure_freshness
    from evertune.tuning.probes import FreshnessProbe
    from evertune.tuning.tracking import configure_mlflow

    probes = [FreshnessProbe(probe_id=f"p{i}", question=q, doc_id=f"doc-{i}", fact_key=f"fact-{i}", old_value="8",
                             new_value="10", answer=ref, changed_on="2026-11-04")
              for i, (q, ref) in enumerate(zip(QUESTIONS, REFERENCES, strict=True))]
    first = measure_freshness(str(tiny_model_dir), probes, CONTEXTS, tiny_eval_params)
    second = measure_freshness(str(tiny_model_dir), probes, CONTEXTS, tiny_eval_params)
    assert len(counted["loads"]) == 1 and second["answers"] == first["answers"]
    assert second["fresh_share"] == first["fresh_share"]
    client, experiment_id = configure_mlflow(tiny_eval_params)
    runs = client.search_runs([experiment_id], filter_string=f"tags.{MODEL_TAG} != ''")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the second measurement added nothing


def test_an_unreadable_memo_run_is_answered_again_not_failed(tiny_eval_params, tiny_model_dir: Path, counted) -> None:
    from evertune.tuning.answer_memo import ARTIFACT, MODEL_TAG
    from evertune.tuning.evaluation import _answers
    from evertune.tuning.tracking import configure_mlflow

    first = _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params)
    client, experiment_id = configure_mlflow(tiny_eval_params)
    (run,) = client.search_runs([experiment_id], filter_string=f"tags.{MODEL_TAG} != ''")
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / ARTIFACT  # the local artifact store's file
    assert stored.is_file()
    stored.write_text("{not json")
    again = _answers(str(tiny_model_dir), QUESTIONS, REFERENCES, CONTEXTS, tiny_eval_params)
    assert len(counted["generated"]) == 2 and again["memo_hits"] == 0
    assert again["answers"] == first["answers"]

"""The MLflow registry: the registered pyfunc answers offline like the in-memory model, candidates are
idempotent, promotion moves ``champion`` only for passing decisions, rollback restores the previous one.

Real MLflow with SQLite and a local artifact folder inside the isolated EVERTUNE_HOME.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from evertune.cli import main as cli_main
from evertune.config import Params, load_params
from evertune.errors import NothingToDo
from evertune.settings import get_settings
from evertune.tuning.gate import GateDecision
from evertune.tuning.promotion import promote, rollback
from evertune.tuning.prompt_registry import ensure_registered
from evertune.tuning.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    candidate_key,
    download_champion_adapter,
    download_model_checkpoint,
    model_status,
    register_candidate,
)
from evertune.tuning.tracking import configure_mlflow, mlflow_client
from evertune.tuning.train import train_adapter
from tiny_params import tiny_training_params

FACTS = [
    ("How do I export a notebook?", "Open the notebook menu and choose Export."),
    ("How do I reset my password?", "Use the Forgot password link on the sign-in page."),
    ("Can I sync offline?", "Yes, changes sync when you reconnect."),
]
QUESTIONS = [q for q, _ in FACTS]
CHUNKS = [
    [{"doc_id": "export", "title": "Export", "text": "Open the notebook menu and choose Export."}],
    [],
    [
        {"doc_id": "sync", "title": "Sync", "text": "Changes sync when you reconnect."},
        {"title": "Plans", "text": "Pro."},
    ],
]


def write_sft(path: Path, repeats: int) -> Path:
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
        for q, a in FACTS
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_params(model_dir: Path) -> Params:
    return tiny_training_params(model_dir, train={"max_steps": 16}, evaluate={"max_new_tokens": 12})


PASS = GateDecision(passed=True, action="promote", reasons=("token_f1 0.41 >= floor 0.05",))
FAIL = {"passed": False, "action": "reject", "reasons": ["token_f1 0.01 < floor 0.05"]}


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A merged tiny fine-tune (no MLflow), shared by the tests of this module.

    The tiny model's final norm is scaled up first: its random logits are nearly flat, so a few LoRA steps
    could not change a greedy answer; sharpened, 16 steps give question-dependent, partly learned answers.
    """
    import torch

    from evertune.models.bootstrap import load_causal_lm

    folder = tmp_path_factory.mktemp("trained")
    base_dir = folder / "sharp-tiny"
    model, tokenizer = load_causal_lm(tiny_model_dir, device="cpu")
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVERTUNE_HOME", str(folder / "home"))
        params = tiny_params(base_dir)
        train = write_sft(folder / "train.jsonl", repeats=4)
        result = train_adapter(train, None, params, get_settings(), output_dir=folder / "run", log_to_mlflow=False)
    return params, result


def _register(params, result, data_version: str = "data-v1", kb: int = 7, with_adapter: bool = False):
    client, experiment_id = configure_mlflow(params)
    run_id = client.create_run(experiment_id).info.run_id
    if with_adapter:  # as train_adapter does
        client.log_artifacts(run_id, result.adapter_dir, artifact_path="adapter")
    return register_candidate(
        result.merged_dir,
        params,
        run_id=run_id,
        data_version=data_version,
        kb_table_version=kb,
        base_model=result.base_model,
        dag_id="tune_model",
        dag_run_id=f"scheduled__{data_version}",
    )


def _aliases(name: str) -> dict[str, int]:
    return model_status(name)["aliases"]


@pytest.mark.slow
def test_registered_champion_answers_offline_exactly_like_the_in_memory_model(evertune_home: Path, trained) -> None:
    import mlflow
    import pandas as pd

    from evertune.models.bootstrap import load_causal_lm
    from evertune.tuning.answer import answer_questions, answer_spec, no_retrieval

    params, result = trained
    name = params.registry.model_name
    candidate = _register(params, result, with_adapter=True)
    assert candidate.created and candidate.version == 1
    assert promote(name, candidate.version, PASS).promoted

    model, tokenizer = load_causal_lm(result.merged_dir, device="cpu")
    expected = answer_questions(model, tokenizer, QUESTIONS, no_retrieval, params)
    expected_ctx = answer_questions(model, tokenizer, QUESTIONS, None, params, contexts=CHUNKS)
    assert all(expected) and len(set(expected)) > 1 and expected != expected_ctx  # answers depend on the input

    served = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert served.predict(QUESTIONS, params={"retrieval": "none"}) == expected
    assert served.predict(pd.DataFrame({"question": QUESTIONS}), params={"retrieval": "none"}) == expected
    assert served.predict(pd.DataFrame({"question": QUESTIONS, "contexts": CHUNKS})) == expected_ctx
    short = served.predict(QUESTIONS[:1], params={"retrieval": "none", "max_new_tokens": 2})
    assert short == answer_questions(
        model, tokenizer, QUESTIONS[:1], no_retrieval, replace(answer_spec(params), max_new_tokens=2)
    )
    assert expected[0].startswith(short[0]) and len(short[0]) < len(expected[0])

    # The model carries its weights, the frozen prompt spec and explicit requirements (no torchvision).
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(evertune_home / "dl")))
    spec = json.loads(next(local.rglob("answer_spec.json")).read_text())
    assert spec["template_name"] == "rag-v1" and "Question: {{ question }}" in spec["template_text"]
    requirements = (local / "requirements.txt").read_text()
    assert "transformers==" in requirements and "torchvision" not in requirements
    # What the next cycle needs: the champion's checkpoint (to evaluate against) and adapter (to warm-start).
    checkpoint = download_model_checkpoint(name, CHAMPION, evertune_home / "champion")
    champion, _ = load_causal_lm(checkpoint, device="cpu")
    assert answer_questions(champion, tokenizer, QUESTIONS, no_retrieval, params) == expected
    adapter = download_champion_adapter(name, evertune_home / "adapter")
    assert (adapter / "adapter_config.json").is_file()
    tags = model_status(name)["versions"][0]["tags"]
    prompt = ensure_registered(params)  # the version registered with the candidate: part of its key, linked
    assert tags["candidate_key"] == candidate_key("data-v1", 7, result.params_hash, result.base_model, prompt.uri)
    assert (tags["prompt.name"], tags["prompt.version"]) == (prompt.name, str(prompt.version))
    assert (spec["prompt_name"], spec["prompt_version"]) == (prompt.name, prompt.version)
    linked = json.loads(mlflow_client().get_run(candidate.run_id).data.tags["mlflow.linkedPrompts"])
    assert linked == [{"name": prompt.name, "version": str(prompt.version)}]
    assert (tags["data_version"], tags["kb_table_version"], tags["airflow.dag_id"]) == ("data-v1", "7", "tune_model")
    assert tags["params_hash"] == result.params_hash and tags["base_model"] == result.base_model


@pytest.mark.slow
def test_same_candidate_key_is_registered_once(evertune_home: Path, trained) -> None:
    from mlflow.tracking import MlflowClient

    params, result = trained
    name = params.registry.model_name
    first = _register(params, result)
    again = _register(params, result)
    assert (again.version, again.created, again.candidate_key) == (first.version, False, first.candidate_key)
    client = MlflowClient(get_settings().mlflow_tracking_uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    other = _register(params, result, kb=8)  # a new KB version is a new candidate
    assert other.created and other.version == first.version + 1
    assert _aliases(name) == {CHALLENGER: other.version}


def test_the_downloaded_champion_is_the_evaluated_challenger_to_the_answer_memo(evertune_home: Path, trained) -> None:
    """Evaluation reuses the champion's answers from when it was the challenger: the keys must be equal."""
    from evertune.tuning.answer_memo import model_key
    from evertune.tuning.registry import cached_model_checkpoint

    params, result = trained
    version = _register(params, result).version
    downloaded = cached_model_checkpoint(params.registry.model_name, version)
    assert Path(downloaded).resolve() != Path(result.merged_dir).resolve()
    assert model_key(downloaded) == model_key(result.merged_dir) is not None


@pytest.mark.slow
def test_promote_rollback_and_gate_decisions(evertune_home: Path, trained, capsys: pytest.CaptureFixture) -> None:
    params, result = trained
    name = params.registry.model_name
    v1, v2, v3 = (_register(params, result, data_version=f"data-v{i}").version for i in (1, 2, 3))

    assert promote(name, v1, PASS).changed
    second = promote(name, v2, PASS)
    assert (second.promoted, second.previous_champion) == (True, v1)
    assert _aliases(name) == {CHAMPION: v2, PREVIOUS_CHAMPION: v1, CHALLENGER: v3}

    # A failing decision is recorded on the version and leaves the champion alone.
    rejected = promote(name, v3, FAIL)
    assert not rejected.promoted and not rejected.changed
    assert _aliases(name)[CHAMPION] == v2
    v3_tags = model_status(name)["versions"][2]["tags"]
    assert (v3_tags["gate.passed"], v3_tags["gate.action"]) == ("false", "reject")
    assert json.loads(v3_tags["gate.reasons"]) == FAIL["reasons"]
    # ... and a manual promotion of a rejected version is refused without --force.
    assert cli_main(["model", "promote", "--version", str(v3), "--approved-by", "alice"]) == 2
    assert _aliases(name)[CHAMPION] == v2

    # Rollback restores the previous champion in one call; nothing earlier than v1 -> NothingToDo, no change.
    back = rollback(name)
    assert (back.from_version, back.to_version) == (v2, v1)
    assert _aliases(name) == {CHAMPION: v1, CHALLENGER: v3}
    assert model_status(name)["versions"][1]["tags"]["rolled_back"] == "true"
    with pytest.raises(NothingToDo):
        rollback(name)
    assert _aliases(name)[CHAMPION] == v1

    # require_approval: not promoted by the gate, promoted by a human through the CLI.
    waiting = promote(name, v3, {"passed": False, "action": "require_approval", "reasons": ["severe drift"]})
    assert not waiting.promoted
    capsys.readouterr()
    assert cli_main(["model", "promote", "--version", str(v3), "--approved-by", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["previous_champion"] == v1
    assert cli_main(["model", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["aliases"] == {CHAMPION: v3, PREVIOUS_CHAMPION: v1}
    assert status["champion_history"] == [v1, v3]
    assert status["versions"][2]["tags"]["approved_by"] == "alice"
    assert cli_main(["model", "rollback"]) == 0
    assert _aliases(name)[CHAMPION] == v1

"""Answer quality of the served system: tuned vs base, with and without retrieval; freshness; answer endings.

Runs against a finished demo state, not a scratch one: ``EVERTUNE_HOME`` must point at it (``make demo`` leaves
``.evertune/`` and a running stack behind; the MLflow server of that stack is read for the champion). Nothing is
written there except the champion's checkpoint download (where evaluation caches it).

Measured, in the same run and on the same retrieved contexts (``production`` KB, ``retrieval.k``):

* token-F1 on the carried golden QA set for four systems: champion + RAG, champion without retrieval, base + RAG,
  base without retrieval (the base is ``base_model`` untuned, through the same answer path and prompt);
* freshness on the changed-fact probes carried to the newest interval (all of them: ``since=None``): the share of
  answers carrying the new value and not the old one, with its Wilson interval, for champion + RAG and base + RAG;
* answer endings, per system: the share of answers whose raw ``generate`` output holds an EOS / end-of-turn id
  before ``evaluate.max_new_tokens`` (no post-hoc cutting), and how many contain a second turn.

``python -m bench answer_quality`` (``--quick``: 8 questions per set).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import machine_info, save_result

SECOND_TURN_MARKERS = ("question:", "user:", "assistant:", "<|im_start|>")


def _settings_and_params() -> tuple[Any, Any]:
    from evertune.config import load_params
    from evertune.runtime import apply_offline_env
    from evertune.settings import get_settings

    if "EVERTUNE_HOME" not in os.environ:
        raise SystemExit("answer_quality reads a finished demo: set EVERTUNE_HOME (e.g. $PWD/.evertune)")
    apply_offline_env()
    if "MLFLOW_TRACKING_URI" not in os.environ:
        from evertune_airflow.stack_env import mlflow_url

        os.environ["MLFLOW_TRACKING_URI"] = mlflow_url()
    return get_settings(), load_params()


def _score(model: Any, tokenizer: Any, questions: list[str], references: list[str], contexts: list,
           params: Any) -> dict[str, Any]:
    """token-F1 of the served answers, and how many ended on their own (raw ``generate`` ids) or ran into a
    second turn."""
    from evertune.tuning.answer import answer_spec, generate_for_questions
    from evertune.tuning.metrics import score_generations

    started = time.perf_counter()
    generations = generate_for_questions(model, tokenizer, questions, answer_spec(params), contexts)
    scores = score_generations(generations.answers, references)
    second_turns = sum(any(m in a.lower() for m in SECOND_TURN_MARKERS) for a in generations.answers)
    return {"answers": generations.answers, "token_f1": float(scores.aggregate["token_f1"]),
            "ended_share": generations.ended_share, "second_turns": second_turns,
            "seconds": round(time.perf_counter() - started, 1)}


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; writes ``bench/results/answer_quality.json``."""
    from evertune.kb.golden import QA
    from evertune.kb.golden_carry import carried_golden
    from evertune.models.bootstrap import load_causal_lm, resolve_base_model
    from evertune.tuning.answer import kb_retriever, retrieve_contexts
    from evertune.tuning.freshness import freshness_probes, score_freshness
    from evertune.tuning.registry import cached_model_checkpoint, champion_version
    from evertune.tuning.steps import validated_intervals

    settings, params = _settings_and_params()
    info = machine_info()
    newest = validated_intervals(settings)[-1]
    golden = list(carried_golden(settings.data_repo / "validated", newest, QA).fitted.items)
    probes = freshness_probes(settings.data_repo / "validated", newest, None)
    limit = 8 if quick else None
    golden, probes = golden[:limit], probes[:limit]
    questions, references = [g["question"] for g in golden], [g["answer"] for g in golden]
    retrieve = kb_retriever(params, settings)
    rag = retrieve_contexts(questions, retrieve, params)
    probe_rag = retrieve_contexts([p.question for p in probes], retrieve, params)
    bare = [[] for _ in questions]
    champion_dir = cached_model_checkpoint(params.registry.model_name,
                                           champion_version(params.registry.model_name, settings=settings),
                                           settings=settings)
    systems = {"champion": str(champion_dir), "base": resolve_base_model(params.base_model, settings)}
    result: dict[str, Any] = {"machine": info, "as_of": newest, "n_golden": len(golden), "n_probes": len(probes)}
    for name, folder in systems.items():
        model, tokenizer = load_causal_lm(folder, device="cpu")
        result[f"{name}_rag"] = _score(model, tokenizer, questions, references, rag, params)
        result[f"{name}_bare"] = _score(model, tokenizer, questions, references, bare, params)
        probe_answers = _score(model, tokenizer, [p.question for p in probes], [p.answer for p in probes],
                               probe_rag, params)["answers"]
        fresh = score_freshness(probe_answers, probes, params.evaluate.ci_alpha)
        result[f"{name}_freshness"] = {k: v for k, v in fresh.items() if k != "per_item"}
        result[f"{name}_freshness_examples"] = [
            {"question": p.question, "new": p.new_value, "old": p.old_value, "answer": a}
            for p, a in list(zip(probes, probe_answers, strict=True))[:6]]
        del model
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _print(result)
    save_result("answer_quality", quick, result)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"answer_quality on {result['as_of']}: {result['n_golden']} golden QA, {result['n_probes']} probes")
    base_rag = result["base_rag"]["token_f1"] or float("nan")
    for key in ("champion_rag", "champion_bare", "base_rag", "base_bare"):
        f1 = result[key]["token_f1"]
        print(f"  {key:14s} token-F1 {f1:.4f}  ({f1 / base_rag:.2f}x base+RAG, {result[key]['seconds']} s)")
    for key in ("champion_freshness", "base_freshness"):
        fresh = result[key]
        print(f"  {key:18s} fresh {fresh['fresh']}/{fresh['n']} = {fresh['fresh_share']}  CI {fresh['ci']}  "
              f"both {fresh['both_values']}  old-only {fresh['old_only']}  token-F1 {fresh['token_f1']}")
    for key in ("champion_rag", "base_rag"):
        print(f"  {key} endings: EOS before max_new_tokens in {result[key]['ended_share']:.1%} of "
              f"{result['n_golden']}, second turns {result[key]['second_turns']}")

"""The evaluation and gate steps of ``tune_model`` (``evaluate_candidate``, ``gate_candidate``).

* ``evaluate_candidate``: challenger, champion and the untuned base model answer the frozen golden set through
  the served answer path (retrieval from the KB version pinned for the run, versioned prompt, generation), all
  three with the same retrieved contexts; token-F1, exact match, ROUGE-L, BLEU, perplexity and paired bootstrap
  CIs of challenger - champion (``ci``) and challenger - base (``ci_base``). The base model's score is computed
  once per input identity and shared through MLflow (:mod:`evertune.tuning.base_score`). Every model's answers
  and reference losses are remembered item by item (:mod:`evertune.tuning.answer_memo`): the champion, already
  evaluated as the challenger it was, and the base model generate only for questions or contexts that changed.
  With a champion,
  challenger and champion also answer the changed-fact probes (:mod:`evertune.tuning.freshness`) of facts that
  changed after the champion's training data (its registered ``as_of``).
* ``gate_candidate``: the pure gate decision (:func:`evertune.tuning.gate.decide`) over that result, recorded in
  MLflow and printed.

Both are step targets of :data:`evertune.pipeline.STEPS`; ``evertune.tuning.steps`` re-exports them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from evertune.config import Params, apply_overrides, load_params
from evertune.data import snapshot
from evertune.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _context(overrides: dict[str, Any] | None) -> tuple[Params, Settings]:
    settings = get_settings()
    settings.ensure_local_dirs()
    return apply_overrides(load_params(), overrides), settings


def _answers(model_dir: str, questions: list[str], references: list[str], contexts: list, params: Params,
             revision: str | None = None, *, identity: dict[str, Any] | None = None, label: str = "model") -> dict:
    """Answer the questions with the given contexts and score the answers (and the references' perplexity).

    Items the model already answered with the same prompt and contexts come from its answer memo
    (:mod:`evertune.tuning.answer_memo`; keyed on ``identity`` when given, else on the checkpoint's files); the
    model is loaded only when some item is new.
    """
    from evertune.tuning.answer_memo import AnswerMemo, LazyModel, model_key
    from evertune.tuning.metrics import perplexity, score_generations
    from evertune.tuning.prompt_registry import registered_spec

    settings = get_settings()
    spec = registered_spec(params)  # the registered prompt version's template, for answers and losses alike
    memo = AnswerMemo.open(params, settings, model_key(model_dir, identity) if params.evaluate.answer_memo else None)
    model = LazyModel(model_dir, revision)
    generations = memo.generations(spec, questions, contexts, model)
    losses = memo.losses(spec, questions, references, contexts, model)
    model.release()
    memo.save(label)
    scores = score_generations(generations.answers, references)
    aggregate = {k: float(v) for k, v in scores.aggregate.items() if k != "n"}
    aggregate["perplexity"] = float(perplexity(losses))
    # Answers whose raw generate output ended (EOS / end of turn) before max_new_tokens: nothing cut after the fact.
    aggregate["ended_share"] = float(generations.ended_share)
    return {"answers": generations.answers, "aggregate": aggregate, "per_item": scores.per_item,
            "memo_hits": memo.hits["answers"]}


def _champion(params: Params, settings: Settings) -> tuple[int | None, str | None, str | None]:
    """``(version, checkpoint folder, as_of)`` of the champion (downloaded once per version); all ``None`` without."""
    from evertune.tuning.registry import cached_model_checkpoint, champion_with_tags

    champion = champion_with_tags(params.registry.model_name, settings=settings)
    if champion is None:
        return None, None, None
    version, tags = champion
    checkpoint = cached_model_checkpoint(params.registry.model_name, version, settings=settings)
    return version, str(checkpoint), tags.get("as_of") or None


def _freshness(params: Params, settings: Settings, as_of: str, retrieve: Any, challenger_dir: str,
               champion: tuple[int | None, str | None, str | None]) -> dict[str, Any]:
    """Challenger and champion on the changed-fact probes since the champion's training data (``as_of`` tag).

    Without a champion there is nothing to compare: ``{"challenger": None, "champion": None, "n": 0}``. A
    champion registered without an ``as_of`` tag is compared on every probe (``since=None``).
    """
    _, champion_dir, since = champion
    result: dict[str, Any] = {"challenger": None, "champion": None, "n": 0, "since": since, "ci_diff": None}
    if champion_dir is None:
        return result
    from evertune.tuning.answer import retrieve_contexts
    from evertune.tuning.freshness import freshness_probes, measure_freshness

    probes = freshness_probes(settings.data_repo / "validated", as_of, since)[: params.freshness.max_probes]
    if not probes:
        log.info("freshness: no changed-fact probe since %s; not measured", since)
        return result
    contexts = retrieve_contexts([probe.question for probe in probes], retrieve, params)
    result["challenger"] = measure_freshness(challenger_dir, probes, contexts, params)
    result["champion"] = measure_freshness(champion_dir, probes, contexts, params)
    result["n"] = len(probes)
    result["ci_diff"] = _fresh_ci(params, result["challenger"], result["champion"])
    return result


def _fresh_ci(params: Params, challenger: dict[str, Any], champion: dict[str, Any]) -> list[float] | None:
    """The paired-bootstrap CI of the fresh share's difference, challenger - champion, probe by probe.

    ``None`` when the scores carry no aligned per-probe results (nothing to pair).
    """
    from evertune.tuning.metrics import paired_bootstrap_ci

    def flags(score: dict[str, Any]) -> list[float]:
        return [1.0 if item["fresh"] else 0.0 for item in score.get("per_item") or []]

    new, old = flags(challenger), flags(champion)
    if not new or len(new) != len(old):
        return None
    return list(paired_bootstrap_ci(new, old, n=params.evaluate.bootstrap_samples, seed=params.project.seed,
                                    alpha=params.evaluate.ci_alpha))


def _cis(params: Params, a: dict | None, b: dict | None) -> dict[str, list[float]]:
    from evertune.tuning.metrics import bootstrap_cis

    if a is None or b is None:
        return {}
    return {k: list(v) for k, v in bootstrap_cis(a["per_item"], b["per_item"], params.evaluate.bootstrap_samples,
                                                 params.project.seed, params.evaluate.ci_alpha).items()}


def _items(golden: list[dict], references: list[str], models: dict[str, dict | None]) -> list[dict[str, Any]]:
    """One row per golden question: answers and per-item scores of every evaluated model."""
    rows = []
    for i, (item, reference) in enumerate(zip(golden, references, strict=True)):
        row = {"qa_id": item.get("qa_id"), "question": item["question"], "reference": reference}
        for name, result in models.items():
            row[name] = result["answers"][i] if result else None
            if result:
                row.update({f"{name}_{m}": result["per_item"][m][i] for m in result["per_item"]})
        rows.append(row)
    return rows


def _log(params: Params, run_id: str, items: list[dict], models: dict[str, dict | None], result: dict) -> None:
    """Metrics (``eval_*``, ``champion_*``, ``base_*``, freshness shares), the per-item dict, table and bars."""
    import mlflow

    from evertune.tuning.figures import log_evaluation
    from evertune.tuning.tracking import log_metrics

    client = mlflow.tracking.MlflowClient()
    metrics = {f"{prefix}_{name}": value for prefix, key in (("eval", "challenger"), ("champion", "champion"),
                                                               ("base", "base"))
               for name, value in (result[key] or {}).items()}  # fmt: skip
    fresh = result["freshness"]
    for prefix, key in (("eval", "challenger"), ("champion", "champion")):
        if fresh[key] is not None and fresh[key].get("fresh_share") is not None:
            metrics[f"{prefix}_freshness_share"] = float(fresh[key]["fresh_share"])
    log_metrics(client, run_id, {**metrics, "freshness_n": float(fresh["n"])})
    if models["base"] is not None:
        client.set_tag(run_id, "base_score_run_id", models["base"].get("run_id", ""))
    client.log_dict(run_id, {"items": items, "ci": result["ci"], "ci_base": result["ci_base"]}, "eval/per_item.json")
    if fresh["challenger"] is not None:
        client.log_dict(run_id, fresh, "eval/freshness.json")
    aggregates = {name: model["aggregate"] if model else None for name, model in models.items()}
    log_evaluation(client, run_id, items, aggregates, result["ci"], 1 - params.evaluate.ci_alpha)


def _summary(score: dict[str, Any] | None) -> dict[str, Any] | None:
    """A freshness score without its per-item list (that goes to MLflow, not to XCom)."""
    return None if score is None else {k: v for k, v in score.items() if k != "per_item"}


def evaluate_candidate(
    dataset: dict[str, Any], trained: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Challenger, champion and untuned base model answer the frozen golden set through the served answer path.

    Returns:
        ``challenger``, ``champion`` (``None`` without one) and ``base`` aggregates, ``champion_version``,
        ``ci`` (challenger - champion) and ``ci_base`` (challenger - base) paired-bootstrap intervals per metric,
        ``n`` (golden questions), ``base_cached`` (the base score was reused from MLflow) and ``freshness``:
        ``{"challenger", "champion"}`` freshness scores (``None`` when not measured), ``n`` probes, ``since`` and
        ``ci_diff``, the paired-bootstrap CI of the fresh-share difference (``None`` when not measured).
    """
    from evertune.tuning.answer import kb_retriever, retrieve_contexts
    from evertune.tuning.base_score import base_score
    from evertune.tuning.tracking import configure_mlflow

    params, settings = _context(overrides)
    configure_mlflow(params, settings)
    golden = snapshot.read_records(dataset["path"], snapshot.GOLDEN_QA)
    questions = [item["question"] for item in golden]
    references = [item["answer"] for item in golden]
    # Every model sees the same retrieved contexts, from the KB version pinned at training time.
    retrieve = kb_retriever(params, settings, version_or_tag=int(trained["kb_version"].rsplit("@v", 1)[1]))
    contexts = retrieve_contexts(questions, retrieve, params)
    challenger = _answers(trained["merged_dir"], questions, references, contexts, params, label="challenger")
    champion_ref = _champion(params, settings)
    champion = (_answers(champion_ref[1], questions, references, contexts, params, label=f"champion v{champion_ref[0]}")
                if champion_ref[1] else None)
    base = base_score(params, settings, _answers, questions=questions, references=references, contexts=contexts,
                      golden_version=(dataset.get("golden_qa") or {}).get("version"),
                      kb_version=trained["kb_version"])
    fresh = _freshness(params, settings, dataset["as_of"], retrieve, trained["merged_dir"], champion_ref)
    fresh = {**fresh, "challenger": _summary(fresh["challenger"]), "champion": _summary(fresh["champion"])}
    result = {"challenger": challenger["aggregate"], "champion": champion["aggregate"] if champion else None,
              "base": base["aggregate"], "champion_version": champion_ref[0], "ci": _cis(params, challenger, champion),
              "ci_base": _cis(params, challenger, base), "n": len(golden), "base_cached": base["cached"],
              "freshness": fresh}
    models = {"challenger": challenger, "champion": champion, "base": base}
    _log(params, trained["run_id"], _items(golden, references, models), models, result)
    log.info("challenger %s", challenger["aggregate"])
    log.info("champion v%s %s", champion_ref[0], result["champion"])
    log.info("base model %s (%s)", base["aggregate"], "reused" if base["cached"] else "computed")
    log.info("answer memo hits (items of %d): challenger %s, champion %s, base %s", len(golden),
             challenger["memo_hits"], (champion or {}).get("memo_hits"), base.get("memo_hits", "whole set"))
    log.info("freshness on %d changed-fact probes since %s: challenger %s, champion %s", fresh["n"], fresh["since"],
             (fresh["challenger"] or {}).get("fresh_share"), (fresh["champion"] or {}).get("fresh_share"))
    return result


def gate_candidate(
    evaluation: dict[str, Any], drift: dict[str, Any], trained: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Apply the gate (base model and freshness inputs included); record the decision and every reason."""
    import mlflow

    from evertune.tuning.gate import decide
    from evertune.tuning.tracking import configure_mlflow

    params, settings = _context(overrides)
    fresh = evaluation.get("freshness") or {}
    decision = decide(evaluation["challenger"], evaluation["champion"], evaluation["ci"] or None,
                      drift["report"], params.gate, params.drift, base=evaluation.get("base"),
                      ci_base=evaluation.get("ci_base") or None, freshness_new=fresh.get("challenger"),
                      freshness_old=fresh.get("champion"), ci_freshness=fresh.get("ci_diff"))  # fmt: skip
    configure_mlflow(params, settings)
    client = mlflow.tracking.MlflowClient()
    result = decision.to_dict()
    client.set_tag(trained["run_id"], "gate_decision", result["action"])
    client.set_tag(trained["run_id"], "gate_passed", str(result["passed"]).lower())
    client.set_tag(trained["run_id"], "gate_reasons", json.dumps(list(result["reasons"]))[:5000])
    client.log_dict(trained["run_id"], result, "gate/decision.json")
    log.info("gate decision: %s", result["action"])
    for reason in result["reasons"]:
        log.info("  %s", reason)
    return result

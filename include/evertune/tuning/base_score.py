"""The untuned base model's score on the golden set: computed once per input identity, shared through MLflow.

The gate's base rule compares a challenger with the system it replaces when nothing was tuned: the base model
(``base_model``, resolved and loaded the way training loads it) answering the golden questions through the same
``answer_questions`` path, the same :class:`~evertune.tuning.answer.AnswerSpec` and the same retrieved contexts.

That score depends only on its inputs, so it is computed once and reused. :func:`base_score_key` hashes them:

* the base model's identity: ``revision``, ``sha256`` and the weights' digest (the conversion marker's
  ``weights_sha256`` of a bootstrapped checkpoint, else the sha256 of the checkpoint folder's weight, config and
  tokenizer files), plus the name of a ``bootstrap:`` spec or hub id (a local folder is its files, wherever it
  lies). A hub id is identified by its name and ``revision`` only: pin ``base_model.revision`` for a hub model
  that moves;
* the golden set (its version and the exact questions and reference answers scored);
* the KB version and the retrieved contexts themselves (chunk id, document, title and text per question);
* the answer spec (prompt template name and text, system prompt, budgets) and every ``evaluate.*`` setting.

:func:`base_score` looks the key up in the tuning experiment (a finished run tagged ``base_score_key=<key>``,
holding the aggregate as ``base_<metric>`` metrics and ``base/score.json`` with the per-item scores and
answers), so every worker of a deployment (Celery workers included) shares one computation; only on a miss
does it load the base model and generate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.config import Params
from evertune.settings import Settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

#: Run tag that carries the key; also the tag a reader filters on.
KEY_TAG = "base_score_key"
#: Artifact of the cached score: ``{"key", "identity", "aggregate", "per_item", "answers"}``.
ARTIFACT = "base/score.json"

#: ``(model_dir, questions, references, contexts, params, revision, *, identity, label) -> {"answers", "aggregate",
#: "per_item"}``; ``identity`` keys the base model's answer memo (:mod:`evertune.tuning.answer_memo`).
Answerer = Callable[..., dict[str, Any]]


def base_model_identity(params: Params, settings: Settings) -> tuple[str, dict[str, Any]]:
    """Resolve ``base_model`` as training does and describe what it is, machine-independently.

    Returns:
        ``(path, identity)``: what ``load_causal_lm`` loads (a folder or hub id) and the identity dict that goes
        into the key: ``name_or_path`` (``None`` for a local folder, which is identified by its files wherever
        it lies), ``revision``, ``sha256`` and ``weights_sha256`` for a checkpoint folder.
    """
    from evertune.models.bootstrap import BOOTSTRAP_PREFIX, resolve_base_model
    from evertune.models.folders import read_marker
    from evertune.models.hashing import checkpoint_digest

    path = resolve_base_model(params.base_model, settings)
    spec = params.base_model.name_or_path
    folder = Path(path)
    local = folder.is_dir() and not spec.startswith(BOOTSTRAP_PREFIX)
    # A local folder is its files, wherever it lies; a bootstrap name or hub id is also named.
    identity: dict[str, Any] = {"name_or_path": None if local else spec, "revision": params.base_model.revision,
                                "sha256": params.base_model.sha256}
    if folder.is_dir():
        marker = read_marker(folder) or {}
        if marker.get("weights_sha256"):
            identity["weights_sha256"] = marker["weights_sha256"]
        else:
            identity["weights_sha256"] = checkpoint_digest(folder)
    return path, identity


def base_score_key(
    identity: Mapping[str, Any],
    params: Params,
    *,
    questions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[Sequence[Mapping[str, Any]]],
    golden_version: str | None,
    kb_version: str,
) -> str:
    """The sha256 of everything the base model's score depends on (see the module docstring)."""
    from evertune.tuning.answer import answer_spec
    from evertune.tuning.answer_memo import context_view

    inputs = {
        "base_model": dict(identity),
        "golden_version": golden_version,
        "golden": [list(pair) for pair in zip(questions, references, strict=True)],
        "kb_version": kb_version,
        "contexts": context_view(contexts),
        "answer_spec": answer_spec(params).to_dict(),
        "evaluate": params.evaluate.model_dump(mode="json", exclude={"answer_memo"}),  # a switch, not an input
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def find_base_score(client: MlflowClient, experiment_id: str, key: str) -> dict[str, Any] | None:
    """The cached score of ``key``: the newest finished run of the experiment tagged with it, else ``None``."""
    import mlflow

    runs = client.search_runs([experiment_id], filter_string=f"tags.{KEY_TAG} = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1)  # fmt: skip
    if not runs:
        return None
    score = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri.rstrip('/')}/{ARTIFACT}")
    return {**score, "run_id": runs[0].info.run_id}


def _record(client: MlflowClient, experiment_id: str, key: str, score: dict[str, Any], tags: Mapping[str, Any]) -> str:
    """Log a computed score as a finished run tagged with its key; returns the run id."""
    from evertune.tuning.tracking import log_metrics, set_tags

    run = client.create_run(experiment_id, run_name=f"base model score {key[:12]}", tags={KEY_TAG: key})
    run_id = run.info.run_id
    try:
        set_tags(client, run_id, {"evertune_kind": "base_score", **tags})
        log_metrics(client, run_id, {f"base_{name}": value for name, value in score["aggregate"].items()})
        client.log_dict(run_id, score, ARTIFACT)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")  # only now can a reader find it
    return run_id


def base_score(
    params: Params,
    settings: Settings,
    answer: Answerer,
    *,
    questions: Sequence[str],
    references: Sequence[str],
    contexts: Sequence[Sequence[Mapping[str, Any]]],
    golden_version: str | None,
    kb_version: str,
) -> dict[str, Any]:
    """The base model's score on the golden set with these contexts: from MLflow if computed before, else now.

    Args:
        params: Pipeline params (``base_model``, ``evaluate``, the answer spec's sections, ``register``).
        settings: Deployment settings (MLflow store, models folder).
        answer: The evaluation's answerer (the same function that scores the challenger).
        questions: The golden questions, in order.
        references: Their reference answers.
        contexts: The chunks retrieved for each question (those the challenger sees).
        golden_version: The golden set's version (for the key and the run's tags).
        kb_version: ``<table>@v<N>``, the KB version the contexts come from.

    Returns:
        ``key``, ``identity``, ``aggregate``, ``per_item``, ``answers``, ``run_id`` (the run holding it) and
        ``cached`` (whether it was reused).
    """
    from evertune.tuning.tracking import configure_mlflow

    path, identity = base_model_identity(params, settings)
    key = base_score_key(identity, params, questions=questions, references=references, contexts=contexts,
                         golden_version=golden_version, kb_version=kb_version)
    client, experiment_id = configure_mlflow(params, settings)
    found = find_base_score(client, experiment_id, key)
    if found is not None:
        log.info("base model score %s reused from MLflow run %s", key[:12], found["run_id"])
        return {**found, "cached": True}
    result = answer(path, list(questions), list(references), contexts, params, params.base_model.revision,
                    identity=identity, label="base model")
    score = {"key": key, "identity": identity, "aggregate": result["aggregate"], "per_item": result["per_item"],
             "answers": result["answers"]}
    tags = {"base_model": params.base_model.name_or_path, "base_model_revision": params.base_model.revision or "",
            "golden_version": golden_version or "", "kb_version": kb_version,
            "prompt_template": params.evaluate.prompt_template}
    run_id = _record(client, experiment_id, key, score, tags)
    log.info("base model score %s computed (run %s): %s", key[:12], run_id, result["aggregate"])
    return {**score, "run_id": run_id, "cached": False}

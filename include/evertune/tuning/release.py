"""The last two steps of continuous tuning: ``register`` the evaluated candidate, then ``promote`` it.

* :func:`register_candidate` (task ``register``): every evaluated candidate becomes a registered version with
  alias ``challenger``, its gate decision as tags (``gate.action``...), a link to the prompt version it was
  evaluated with, and its immutable release manifest (:mod:`evertune.tuning.manifest`, written once).
  ``champion`` does not move here. For a
  held candidate (``require_approval``) the summary carries ``review``: the subject and Markdown body of the
  approval request (:func:`evertune.tuning.approval.approval_request`), which the ``approval`` task shows.
* :func:`promote_candidate` (task ``promote``): moves ``champion`` to the candidate, compare-and-set
  (``expected_champion`` is the champion it was evaluated against), for a passing decision or an approved hold.
  It **returns only when the champion moved**; any other outcome raises ``NothingToDo`` (the task is skipped,
  so the ``champion_model`` asset event is emitted exactly when ``champion`` moves) or ``PromotionConflict``
  (the task fails: the champion or the challenger moved while the run waited).

On the command line (``evertune tune``) there is no approval task: a held candidate stays ``challenger`` and
``evertune model promote --version N --approved-by NAME`` approves it.
"""

from __future__ import annotations

import logging
from typing import Any

from evertune.config import Params, apply_overrides, load_params
from evertune.errors import NothingToDo
from evertune.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _context(overrides: dict[str, Any] | None) -> tuple[Params, Settings]:
    settings = get_settings()
    settings.ensure_local_dirs()
    return apply_overrides(load_params(), overrides), settings


def register_candidate(
    dataset: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    decision: dict[str, Any],
    drift: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """Register the evaluated candidate (alias ``challenger``) and record its gate decision; never promote.

    Returns:
        ``candidate`` (``CandidateVersion.to_dict()``), ``decision`` (the action), ``reasons``,
        ``expected_champion`` (the champion version the candidate was evaluated against, ``None`` if none),
        ``review`` (``{"subject", "body"}`` of the approval request when the action is ``require_approval``,
        else ``None``), ``prompt`` (the prompt version it was evaluated with), ``manifest`` (the release
        manifest, :mod:`evertune.tuning.manifest`; the stored one when the version already had it) and
        ``manifest_sha256``.
    """
    from evertune.tuning.approval import approval_request
    from evertune.tuning.deletions import record_training_docs
    from evertune.tuning.promotion import record_decision
    from evertune.tuning.prompt_registry import ensure_registered
    from evertune.tuning.registry import register_candidate as register
    from evertune.tuning.tracking import mlflow_client

    params, settings = _context(overrides)
    prompt = ensure_registered(params, settings)
    headline = {f"eval_{k}": round(v, 4) for k, v in evaluation["challenger"].items()}
    candidate = register(
        trained["merged_dir"], params, run_id=trained["run_id"], data_version=dataset["data_version"],
        kb_table_version=trained["kb_version"], base_model=params.base_model.name_or_path,
        dag_id=dag_id, dag_run_id=dag_run_id, settings=settings, prompt=prompt,
        key=trained.get("candidate_key"),  # the key train looked up: same candidate, same key (warm start, DPO)
        extra_tags={"as_of": dataset["as_of"], "data_git_rev": dataset["data_git_rev"],
                    "data_folder": dataset["folder"], **headline},
    )
    client = mlflow_client(settings)
    record_decision(client, candidate.model_name, candidate.version, decision)
    record_training_docs(candidate.model_name, candidate.version, dataset["path"],
                         warm_start_from=(trained.get("warm_start") or {}).get("from_version"), settings=settings)
    stored = store_manifest(client, params, candidate.to_dict(), prompt, dataset=dataset, trained=trained,
                            evaluation=evaluation, decision=decision, dag_id=dag_id, dag_run_id=dag_run_id)
    review = None
    if decision["action"] == "require_approval":
        review = approval_request(decision, evaluation, drift, candidate.to_dict(), settings.mlflow_tracking_uri,
                                  params.approval.response_timeout_hours, params.approval.timeout_answer)
    log.info("registered %s v%s (%s) as challenger; decision %s", candidate.model_name, candidate.version,
             "new" if candidate.created else "existing", decision["action"])
    return {"candidate": candidate.to_dict(), "decision": decision["action"], "reasons": list(decision["reasons"]),
            "expected_champion": evaluation.get("champion_version"), "review": review, "prompt": prompt.to_dict(),
            "manifest": stored.manifest, "manifest_sha256": stored.sha256}


def store_manifest(client: Any, params: Params, candidate: dict[str, Any], prompt: Any, *,
                   dataset: dict[str, Any], trained: dict[str, Any], evaluation: dict[str, Any],
                   decision: dict[str, Any], dag_id: str | None, dag_run_id: str | None) -> Any:
    """Build the candidate's release manifest and store it once (:func:`evertune.tuning.manifest.write_manifest`).

    The git sha is the training run's ``git_sha`` tag (the code that trained), the merged model URI the version's
    logged model. Returns the :class:`~evertune.tuning.manifest.StoredManifest`.
    """
    from evertune.tuning.manifest import build_manifest, write_manifest
    from evertune.tuning.promotion import decision_fields

    passed, action, reasons = decision_fields(decision)
    name, version = candidate["model_name"], int(candidate["version"])
    model_version = client.get_model_version(name, str(version))
    run_id = trained.get("run_id")
    run = client.get_run(run_id) if run_id else None
    manifest = build_manifest(
        params=params, model={"name": name, "version": version}, dataset=dataset, trained=trained,
        evaluation=evaluation, gate={"passed": passed, "action": action, "reasons": reasons}, prompt=prompt,
        merged_model_uri=model_version.source,
        git_sha=run.data.tags.get("git_sha") if run is not None else None, dag_id=dag_id, dag_run_id=dag_run_id,
    )
    return write_manifest(client, manifest, run_id, run.info.experiment_id if run is not None else None)


def promote_candidate(
    outcome: dict[str, Any],
    review: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move ``champion`` to the registered candidate, compare-and-set; return only when it moved.

    Args:
        outcome: The ``register`` summary.
        review: The approval task's answer (``chosen_options``, ``responded_by_user``...), ``None`` when the
            gate did not hold the candidate (or on the command line).
        overrides: Per-run overrides of ``params.yaml``.

    Returns:
        ``candidate``, ``promotion`` (``PromotionResult.to_dict()``, ``changed`` is true; its ``prompt`` is the
        prompt version ``production`` now points at), ``decision``, ``approved_by`` (the reviewer, or ``gate``
        for a passing decision; recorded as the version's ``approved_by`` tag), and the candidate's
        ``manifest_sha256`` and ``prompt``.

    Raises:
        NothingToDo: The gate rejected the candidate, a held candidate has no approval, the reviewer rejected
            it, or it already is the champion; ``champion`` did not move.
        PromotionConflict: ``champion`` is no longer the version the candidate was evaluated against, or a newer
            candidate took ``challenger`` (superseded) while the run waited.
    """
    from evertune.tuning.approval import review_of
    from evertune.tuning.promotion import promote

    params, settings = _context(overrides)
    candidate, action = outcome["candidate"], outcome["decision"]
    name, version = candidate["model_name"], int(candidate["version"])
    answer = review_of(review)
    if action == "reject":
        raise NothingToDo(f"gate rejected {name} v{version}: champion unchanged")
    if action == "require_approval" and answer is None:
        raise NothingToDo(f"{name} v{version} waits for approval (evertune model promote --version {version} "
                          "--approved-by NAME); champion unchanged")
    if answer is not None and not answer.approved:
        raise NothingToDo(f"{answer.by or 'the timeout'} rejected {name} v{version}: champion unchanged")
    approved_by = (answer.by or "timeout-default") if answer is not None else None
    decision = {"passed": action == "promote", "action": action, "reasons": outcome["reasons"]}
    result = promote(name, version, decision, approved_by=approved_by,
                     expected_champion=outcome.get("expected_champion"), settings=settings, params=params)
    if not result.changed:
        raise NothingToDo(f"{name} v{version} is already the champion" if result.promoted
                          else f"{name} v{version} was not promoted ({action})")
    log.info("champion %s v%s -> v%s (%s, approved by %s)", name, result.previous_champion, version, action,
             approved_by or "gate")
    return {"candidate": candidate, "promotion": result.to_dict(), "decision": action,
            "approved_by": approved_by or "gate", "manifest_sha256": outcome.get("manifest_sha256"),
            "prompt": outcome.get("prompt")}


def record_review(outcome: dict[str, Any], review: dict[str, Any] | None,
                  overrides: dict[str, Any] | None = None) -> dict[str, str] | None:
    """Record a person's answer to a held candidate on its model version (tags ``review.*``).

    Approvals and rejections alike: ``review.answer`` (``Approve`` / ``Reject``), ``review.by`` (the responding
    user, or ``timeout-default`` when nobody answered in time) and ``review.at``. An approval is also recorded by
    ``promote`` as ``approved_by``; a rejection is recorded only here.

    Returns:
        The tags written, or ``None`` when there was no answer (the gate did not hold the candidate).
    """
    from evertune.tuning.approval import APPROVE, REJECT, review_of
    from evertune.tuning.tracking import mlflow_client

    answer = review_of(review)
    if answer is None:
        return None
    settings = _context(overrides)[1]
    candidate = outcome["candidate"]
    tags = {"review.answer": APPROVE if answer.approved else REJECT, "review.by": answer.by or "timeout-default",
            "review.at": answer.at or ""}
    client = mlflow_client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(candidate["model_name"], str(candidate["version"]), key, value)
    log.info("review of %s v%s: %s by %s", candidate["model_name"], candidate["version"], tags["review.answer"],
             tags["review.by"])
    return tags

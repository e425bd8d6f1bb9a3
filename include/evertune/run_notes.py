"""The one-line verdict of a DAG run, written as the Airflow run note (``note_run`` task, see
``plugins/evertune_airflow/run_notes.py``).

Both functions are pure: they read what the run's tasks returned (``results``: task id -> return value) and the
task states (``states``: task id -> state) and say, in one line of at most :data:`MAX_NOTE_CHARS` characters, what
the run decided. They never raise on a partial run (a task that did not return is read as missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Airflow's limit for a run note.
MAX_NOTE_CHARS = 1000


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _clip(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_NOTE_CHARS else line[: MAX_NOTE_CHARS - 1] + "…"


def _failed_task(states: Mapping[str, str], order: tuple[str, ...]) -> str | None:
    """The first task of ``order`` that failed, else any failed task, else ``None``."""
    failed = [task for task, state in states.items() if state == "failed"]
    return next((task for task in order if task in failed), failed[0] if failed else None)


def _first_failure(reasons: list[Any]) -> str:
    """The first reason that is a FAIL or HOLD (what decided), else the first reason."""
    for prefix in ("FAIL", "HOLD"):
        found = next((str(r) for r in reasons if str(r).startswith(prefix)), None)
        if found:
            return found
    return str(reasons[0]) if reasons else "no reason recorded"


TUNE_ORDER = ("build_dataset", "check_drift", "train", "evaluate", "gate", "register", "approval", "promote")


def tune_note(results: Mapping[str, Any], states: Mapping[str, str],
              rejection: Mapping[str, Any] | None = None) -> str:
    """The verdict of a ``tune_model`` run.

    Args:
        results: Task id -> return value (``register``, ``promote``, ``evaluate``, ``approval``...).
        states: Task id -> state.
        rejection: The run's entry of the tuning rejections log when ``build_dataset`` rejected the data
            (``error``, ``ungrounded``, ``checked``, ``ungrounded_fraction``), else ``None``.

    Returns:
        For example ``promoted v3 to champion (token_f1 0.354 vs v2 0.31), approved by admin``.
    """
    failed = _failed_task(states, TUNE_ORDER)
    if states.get("build_dataset") == "skipped":
        return "nothing to tune on: no validated data or no published knowledge base yet (build_dataset skipped)"
    if failed == "build_dataset":
        if rejection:
            return _clip(f"data rejected before training ({rejection.get('error')}): {rejection.get('ungrounded')} of "
                         f"{rejection.get('checked')} QA rows not grounded in their article; nothing trained")
        return "failed at build_dataset: no training dataset; nothing trained, champion unchanged"
    register, promoted = _dict(results.get("register")), _dict(results.get("promote"))
    if not register:
        if failed:
            return f"failed at {failed}; champion unchanged"
        if states.get("register") == "skipped" or results.get("train") is not None:
            return "no new candidate: an identical candidate is already registered (training skipped)"
        return "not evaluated yet"
    candidate = _dict(register.get("candidate"))
    version = candidate.get("version")
    evaluation = _dict(results.get("evaluate"))
    primary = _primary(evaluation)
    if promoted:
        by = promoted.get("approved_by") or "gate"
        return _clip(f"promoted v{version} to champion{primary}, "
                     f"{'by the gate' if by == 'gate' else f'approved by {by}'}")
    action, reasons = register.get("decision"), list(register.get("reasons") or [])
    review = _dict(results.get("approval"))
    if action == "require_approval":
        chosen = list(review.get("chosen_options") or [])
        user = review.get("responded_by_user")
        who = (user.get("name") or user.get("id")) if isinstance(user, Mapping) else user
        if not chosen:
            state = states.get("approval")
            return _clip(f"v{version} held for approval ({state or 'waiting'}): {_first_failure(reasons)}")
        if failed == "promote":
            return _clip(f"v{version} approved by {who or 'timeout'} but not promoted: champion or challenger moved "
                         "while it waited (see the promote log)")
        verb = {"Approve": "approved", "Reject": "rejected"}.get(str(chosen[0]), f"answered {chosen[0]}")
        return _clip(f"v{version} held ({_first_failure(reasons)}) and {verb} by {who or 'the timeout default'}; "
                     "champion unchanged")
    if failed:
        return _clip(f"v{version} registered, then {failed} failed; champion unchanged")
    return _clip(f"gate {action}: v{version} stays challenger{primary}; {_first_failure(reasons)}")


def _primary(evaluation: Mapping[str, Any]) -> str:
    """`` (token_f1 0.354 vs v2 0.31)`` from the evaluation summary; empty when it has no metric."""
    challenger, champion = _dict(evaluation.get("challenger")), _dict(evaluation.get("champion"))
    metric = evaluation.get("primary_metric") or ("token_f1" if "token_f1" in challenger else None)
    if not metric or metric not in challenger:
        return ""
    against = (f" vs v{evaluation.get('champion_version')} {_num(champion[metric])}" if metric in champion
               else " (no champion before)")
    return f" ({metric} {_num(challenger[metric])}{against})"


REFRESH_ORDER = ("ingest_documents", "validate_documents", "version_snapshot", "sync_index", "evaluate_retrieval",
                 "publish_index", "check_freshness", "apply_deletions")


def refresh_note(results: Mapping[str, Any], states: Mapping[str, str]) -> str:
    """The verdict of a ``refresh_knowledge_base`` run.

    Returns:
        For example ``published kb_chunks_x v12 (recall@5 0.91, MRR 0.8); 40 docs, 3 quarantined; 120 chunks
        embedded, 2 deleted; champion fresh share 0.43``.
    """
    ingest, validate = _dict(results.get("ingest_documents")), _dict(results.get("validate_documents"))
    if ingest and ingest.get("partition_found") is False:
        return "no landing partition for this interval: nothing ingested, production unchanged"
    synced, evaluation = _dict(results.get("sync_index")), _dict(results.get("evaluate_retrieval"))
    published, fresh = _dict(results.get("publish_index")), _dict(results.get("check_freshness"))
    counts = (f"{ingest.get('documents', '?')} docs, {ingest.get('tombstones', 0)} tombstones, "
              f"{sum(_dict(validate.get('quarantine_by_reason')).values()) or ingest.get('quarantined', 0)} quarantined")
    if synced:
        counts += (f"; {synced.get('chunks_embedded', 0)} chunks embedded, {synced.get('chunks_updated', 0)} updated, "
                   f"{synced.get('chunks_deleted', 0)} deleted")
    candidate = _dict(evaluation.get("candidate"))
    quality = (f"recall@{evaluation.get('k')} {_num(candidate.get('recall_at_k'))}, MRR {_num(candidate.get('mrr'))}"
               if candidate else "retrieval not evaluated")
    failed = _failed_task(states, REFRESH_ORDER)
    if published:
        moved = "published" if published.get("changed") else "production already at"
        line = f"{moved} {published.get('table')} v{published.get('table_version')} ({quality}); {counts}"
        share = _dict(fresh.get("freshness")).get("fresh_share", fresh.get("fresh_share"))
        if isinstance(share, int | float):
            line += f"; champion fresh share {_num(share)}"
        changed = _dict(_dict(results.get("apply_deletions")).get("models")).get("changed")
        if changed:
            line += f"; {len(changed) if isinstance(changed, list | tuple) else changed} model version(s) newly " \
                    "tagged with deleted documents"
        return _clip(line + (f"; then {failed} failed" if failed else ""))
    if failed == "publish_index":
        return _clip(f"not published: the retrieval gate refused the candidate ({quality}); {counts}")
    if failed:
        return _clip(f"failed at {failed}; production unchanged; {counts}")
    return _clip(f"not published yet ({quality}); {counts}")


__all__ = ["MAX_NOTE_CHARS", "refresh_note", "tune_note"]

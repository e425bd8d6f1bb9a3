"""Deletion reaches the models: registered versions trained on a now-tombstoned document are tagged, and the
``deletion.model_policy`` says whether they may still become champion (docs/runbook.md, "Deletion").

What a version was trained on: at register time (:func:`record_training_docs`, from
:func:`evertune.tuning.release.register_candidate`) its dataset's doc ids go to the artifact
``training_docs/v<N>.json`` of its MLflow run: every row's ``doc_id`` and ``context_doc_ids`` (the articles in its
prompt) of ``train.jsonl`` and ``validation.jsonl``. A warm-started version continues the champion's adapter, so
that version's set is unioned in (its replay rows are a subset of it). Tags: ``training_docs`` (``recorded``,
``restored`` or ``unknown``), ``training_docs_count``, ``training_docs_sha256``. A version registered before
this is restored once from DVC at its ``data_git_rev``/``data_folder`` tags (``restored``), else ``unknown``
(sticky: delete the tag to retry; reported by ``model status``, never blocks).

Tagging (:func:`tag_versions_with_deleted_docs`; the refresh step :func:`apply_deletions` after
``publish_index``): a version whose training docs meet the deleted set gets ``deleted_docs`` (comma list, or
``<n> documents, see deletions/v<N>.json`` past MLflow's 5000-character tag limit), ``deleted_docs_count`` and
``deleted_docs_since`` (the earliest interval whose tombstone deleted one of them). Tags only grow (a union), so
a re-run or a backfill writes nothing new; a document that comes back does not untag a version; versions without
a deleted document are not touched.

Policy (:func:`refuse_if_blocked`, from :func:`evertune.tuning.promotion.promote` and ``rollback``): ``flag``
only reports; ``block`` refuses such a version (``QualityGateFailed`` with the reason, also with ``force``). A
champion that becomes blocked is not moved (no alias moves by itself): it keeps serving, ``model status``
reports it ``blocked``, and the next warm start does not continue it (:func:`carries_deleted_docs`): the
retrain starts cold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.tuning.registry import CHAMPION, TAG_LIMIT, alias_version
from evertune.tuning.tracking import mlflow_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

TRAINING_DOCS = "training_docs"
TRAINING_DOCS_COUNT = "training_docs_count"
TRAINING_DOCS_SHA = "training_docs_sha256"
DELETED_DOCS = "deleted_docs"
DELETED_DOCS_COUNT = "deleted_docs_count"
DELETED_DOCS_SINCE = "deleted_docs_since"
#: ``training_docs`` tag values: how the version's set is known.
RECORDED, RESTORED, UNKNOWN = "recorded", "restored", "unknown"
_DATASET_FILES = ("train.jsonl", "validation.jsonl")


def row_doc_ids(row: Mapping[str, Any]) -> set[str]:
    """The documents one SFT row carries: its ``doc_id`` and its prompt's ``context_doc_ids``."""
    ids = {str(row["doc_id"])} if row.get("doc_id") else set()
    ids.update(str(doc) for doc in row.get("context_doc_ids") or () if doc and doc != "None")
    return ids


def dataset_doc_ids(folder: str | Path) -> set[str]:
    """The documents of an SFT dataset folder (``train.jsonl`` and ``validation.jsonl``, when present)."""
    ids: set[str] = set()
    for name in _DATASET_FILES:
        path = Path(folder) / name
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        ids |= row_doc_ids(json.loads(line))
    return ids


def docs_sha256(doc_ids: Iterable[str]) -> str:
    """sha256 of the sorted doc ids, one per line: the identity of a training-docs set."""
    return hashlib.sha256("\n".join(sorted(set(doc_ids))).encode("utf-8")).hexdigest()


def _artifact(version: int | str, kind: str) -> str:
    return f"{kind}/v{version}.json"


def _load_artifact(client: MlflowClient, run_id: str, path: str) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text(encoding="utf-8"))


def _write_training_docs(client: MlflowClient, mv: ModelVersion, doc_ids: set[str], source: str,
                         inherited_from: int | None) -> None:
    ordered = sorted(doc_ids)
    digest = docs_sha256(ordered)
    payload = {"model_name": mv.name, "version": int(mv.version), "doc_ids": ordered, "sha256": digest,
               "source": source, "inherited_from": inherited_from}
    client.log_dict(mv.run_id, payload, _artifact(mv.version, TRAINING_DOCS))
    for key, value in {TRAINING_DOCS: source, TRAINING_DOCS_COUNT: str(len(ordered)), TRAINING_DOCS_SHA: digest}.items():
        client.set_model_version_tag(mv.name, mv.version, key, value)


def record_training_docs(
    model_name: str,
    version: int | str,
    dataset_path: str | Path,
    *,
    warm_start_from: int | None = None,
    settings: Settings | None = None,
) -> set[str] | None:
    """Record the doc ids a version was trained on (artifact + tags, see the module docstring); idempotent.

    Args:
        model_name: Registered model.
        version: The version just registered.
        dataset_path: Its SFT dataset folder.
        warm_start_from: The champion version it continued (its documents are unioned in), ``None`` for a
            cold start.
        settings: Deployment settings.

    Returns:
        The recorded set; ``None`` when the version has no run to hold the artifact (tagged ``unknown``).
    """
    client = mlflow_client(settings)
    mv = client.get_model_version(model_name, str(version))
    if mv.tags.get(TRAINING_DOCS_SHA):
        return training_docs(client, mv, settings)
    if not mv.run_id:
        client.set_model_version_tag(model_name, str(version), TRAINING_DOCS, UNKNOWN)
        return None
    docs = dataset_doc_ids(dataset_path)
    if warm_start_from is not None:
        parent = training_docs(client, client.get_model_version(model_name, str(warm_start_from)), settings)
        if parent is None:
            client.set_model_version_tag(model_name, str(version), TRAINING_DOCS, UNKNOWN)
            return None
        docs |= parent
    _write_training_docs(client, mv, docs, RECORDED, warm_start_from)
    log.info("%s v%s: %d training documents recorded", model_name, version, len(docs))
    return docs


def training_docs(client: MlflowClient, mv: ModelVersion, settings: Settings | None = None,
                  _seen: frozenset[int] = frozenset()) -> set[str] | None:
    """The doc ids version ``mv`` was trained on, ``None`` when unknown.

    Read from the recorded artifact (checked against ``training_docs_sha256``); for a version registered before
    recording, restored once from DVC and recorded (``restored``); tagged ``unknown`` when that fails.
    """
    tags = mv.tags or {}
    if tags.get(TRAINING_DOCS) == UNKNOWN:
        return None
    if tags.get(TRAINING_DOCS_SHA) and mv.run_id:
        payload = _load_artifact(client, mv.run_id, _artifact(mv.version, TRAINING_DOCS))
        if payload is not None and docs_sha256(payload["doc_ids"]) == tags[TRAINING_DOCS_SHA]:
            return set(payload["doc_ids"])
        log.warning("%s v%s: training_docs artifact missing or altered", mv.name, mv.version)
        return None  # a record was made and is gone: say unknown, do not guess
    return _restore_training_docs(client, mv, settings, _seen | {int(mv.version)})


def _restore_training_docs(client: MlflowClient, mv: ModelVersion, settings: Settings | None,
                           seen: frozenset[int]) -> set[str] | None:
    """Backfill of a version registered before recording: its dataset restored from DVC at its lineage tags."""
    from evertune.data.versioning import DataRepo
    from evertune.settings import get_settings

    tags, settings = mv.tags or {}, settings or get_settings()
    rev, folder = tags.get("data_git_rev"), tags.get("data_folder")
    docs: set[str] | None = None
    if rev and folder and mv.run_id:
        restored = settings.work_dir / "deletions" / "restored" / rev[:12]
        try:
            if not any((restored / name).is_file() for name in _DATASET_FILES):
                shutil.rmtree(restored, ignore_errors=True)
                restored.parent.mkdir(parents=True, exist_ok=True)
                DataRepo(settings).restore(rev, folder, restored)
            docs = dataset_doc_ids(restored)
        except Exception as exc:  # noqa: BLE001 -- any restore failure means "unknown", reported
            log.warning("%s v%s: training data not restorable from DVC at %s (%s)", mv.name, mv.version, rev[:12], exc)
    parent = _warm_parent(client, mv)
    if docs is not None and parent is not None:
        inherited = None if int(parent.version) in seen else training_docs(client, parent, settings, seen)
        docs = None if inherited is None else docs | inherited
    if docs is None:
        client.set_model_version_tag(mv.name, mv.version, TRAINING_DOCS, UNKNOWN)
        return None
    _write_training_docs(client, mv, docs, RESTORED, int(parent.version) if parent is not None else None)
    return docs


def _warm_parent(client: MlflowClient, mv: ModelVersion) -> ModelVersion | None:
    """The version ``mv``'s training run warm-started from (run tag ``warm_start_from`` ``v<N>``), if any."""
    from mlflow.exceptions import MlflowException

    try:
        started = client.get_run(mv.run_id).data.tags.get("warm_start_from", "")
        return client.get_model_version(mv.name, started.removeprefix("v")) if started else None
    except MlflowException:
        return None


def recorded_deleted_docs(client: MlflowClient, mv: ModelVersion) -> set[str]:
    """The deleted doc ids already tagged on ``mv`` (from the tag, or its artifact when the list is long)."""
    tags = mv.tags or {}
    if not int(tags.get(DELETED_DOCS_COUNT, "0") or 0):
        return set()
    value = tags.get(DELETED_DOCS, "")
    if value.endswith(".json") and mv.run_id:
        payload = _load_artifact(client, mv.run_id, _artifact(mv.version, "deletions")) or {}
        return set(payload.get("doc_ids", []))
    return {doc for doc in value.split(",") if doc}


def _write_deleted_docs(client: MlflowClient, mv: ModelVersion, doc_ids: set[str], since: str) -> None:
    ordered = sorted(doc_ids)
    value = ",".join(ordered)
    if len(value) > TAG_LIMIT:
        path = _artifact(mv.version, "deletions")
        client.log_dict(mv.run_id, {"doc_ids": ordered, "since": since}, path)
        value = f"{len(ordered)} documents, see {path}"
    for key, tag in {DELETED_DOCS: value, DELETED_DOCS_COUNT: str(len(ordered)), DELETED_DOCS_SINCE: since}.items():
        client.set_model_version_tag(mv.name, mv.version, key, tag)


def tag_versions_with_deleted_docs(
    doc_ids: Mapping[str, str] | Iterable[str],
    settings: Settings | None,
    params: Params,
    interval: str | None = None,
    *,
    versions: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Tag every version of ``register.model_name`` whose training data held one of ``doc_ids``.

    Args:
        doc_ids: The deleted documents: a mapping doc id -> interval of its tombstone, or ids (then ``interval``
            is their deletion interval).
        settings: Deployment settings.
        params: Pipeline params (model name, policy).
        interval: The deletion interval of ids given without one.
        versions: Only these versions (default: all).

    Returns:
        ``policy``, ``tagged`` (``{"<version>": [doc ids of this call]}``, every version that carries one, also
        when already tagged), ``changed`` (versions whose tags changed now), ``unknown`` (versions whose
        training documents are unknown), ``champion`` and ``champion_blocked``.
    """
    from mlflow.exceptions import MlflowException

    deleted = dict(doc_ids) if isinstance(doc_ids, Mapping) else dict.fromkeys(doc_ids, interval or "")
    client, name = mlflow_client(settings), params.registry.model_name
    policy = params.deletion.model_policy
    summary: dict[str, Any] = {"policy": policy, "deleted_docs": len(deleted), "tagged": {}, "changed": [],
                               "unknown": [], "champion": None, "champion_blocked": False}
    try:
        found = client.search_model_versions(f"name = '{name}'") if deleted else []
        summary["champion"] = alias_version(client, name, CHAMPION)
    except MlflowException:
        return summary  # no such model yet
    only = None if versions is None else {int(v) for v in versions}
    for mv in sorted(found, key=lambda v: int(v.version)):
        if only is not None and int(mv.version) not in only:
            continue
        docs = training_docs(client, mv, settings)
        if docs is None:
            summary["unknown"].append(int(mv.version))
            continue
        hits = set(deleted) & docs
        if not hits:
            continue
        summary["tagged"][str(mv.version)] = sorted(hits)
        recorded, before = recorded_deleted_docs(client, mv), mv.tags.get(DELETED_DOCS_SINCE, "")
        known = [deleted[doc] for doc in hits if deleted[doc]] + ([before] if before else [])
        since = min(known) if known else ""
        if hits <= recorded and since == before:
            continue
        _write_deleted_docs(client, mv, recorded | hits, since)
        summary["changed"].append(int(mv.version))
    champion = str(summary["champion"])
    summary["champion_blocked"] = policy == "block" and champion in summary["tagged"]
    if champion in summary["tagged"]:
        log.warning("champion %s v%s was trained on deleted documents %s (policy %s)%s", name, champion,
                    summary["tagged"][champion], policy,
                    ": blocked, it keeps serving until a retrained version is promoted" if policy == "block" else "")
    return summary


def carries_deleted_docs(tags: Mapping[str, str]) -> bool:
    """Whether a version's tags say its training data held a deleted document."""
    return int(tags.get(DELETED_DOCS_COUNT, "0") or 0) > 0


def deletion_state(tags: Mapping[str, str], policy: str) -> str:
    """``blocked`` / ``flagged`` (trained on deleted documents, by policy), ``clean`` (recorded, none deleted) or
    ``unknown`` (its training documents are not recorded and could not be restored, or not scanned yet)."""
    if carries_deleted_docs(tags):
        return "blocked" if policy == "block" else "flagged"
    return "clean" if tags.get(TRAINING_DOCS_SHA) else "unknown"


def model_status_with_deletions(model_name: str, settings: Settings | None, policy: str) -> dict[str, Any]:
    """:func:`evertune.tuning.registry.model_status` with each version's ``deletion`` (:func:`deletion_state`
    under ``policy``; the deleted doc ids are its ``deleted_docs`` tag) and a ``deletion`` summary: ``policy``,
    the ``flagged``, ``blocked`` and ``unknown`` versions and ``champion_blocked`` (what ``evertune model status``
    prints).

    Raises:
        NothingToDo: No model of that name is registered.
    """
    from evertune.tuning.registry import model_status

    status = model_status(model_name, settings=settings)
    for version in status["versions"]:
        version["deletion"] = deletion_state(version["tags"], policy)
    states = {state: [v["version"] for v in status["versions"] if v["deletion"] == state]
              for state in ("flagged", "blocked", "unknown")}
    champion_blocked = status["aliases"].get(CHAMPION) in states["blocked"]
    status["deletion"] = {"policy": policy, **states, "champion_blocked": champion_blocked}
    return status


def blocked_reason(model_name: str, version: int | str, settings: Settings | None, params: Params) -> str | None:
    """Why ``version`` may not become champion under ``deletion.model_policy``, ``None`` when it may.

    Only ``block`` blocks, and only a version tagged with deleted documents (an ``unknown`` one does not).
    """
    if params.deletion.model_policy != "block":
        return None
    tags = mlflow_client(settings).get_model_version(model_name, str(version)).tags or {}
    if not carries_deleted_docs(tags):
        return None
    shown = tags.get(DELETED_DOCS, "")
    return (f"{model_name} v{version} was trained on {tags[DELETED_DOCS_COUNT]} deleted document(s) ({shown[:200]}), "
            f"tombstoned since {tags.get(DELETED_DOCS_SINCE) or '?'}; deletion.model_policy is block: retrain "
            "without them (a cold start) before it can be champion")


def refuse_if_blocked(model_name: str, version: int | str, settings: Settings | None,
                      params: Params | None = None) -> None:
    """Raise when :func:`blocked_reason` blocks ``version`` from becoming champion (tagged ``promotion.refused``).

    Under ``block`` the version is first tagged against every document deleted in the validated history so far
    (what the next ``apply_deletions`` would tag), so a tombstone that landed after the last refresh run counts.

    Args:
        model_name: Registered model.
        version: The version about to become champion.
        settings: Deployment settings.
        params: Pipeline params; default ``params.yaml``.

    Raises:
        QualityGateFailed: With the reason; nothing else changes.
    """
    from evertune.config import load_params
    from evertune.errors import QualityGateFailed

    params = params or load_params()
    if params.deletion.model_policy == "block":  # tag it now: apply_deletions may not have run since a tombstone
        tag_versions_with_deleted_docs(deleted_documents(settings), settings, params, versions=[int(version)])
    reason = blocked_reason(model_name, version, settings, params)
    if reason is not None:
        mlflow_client(settings).set_model_version_tag(model_name, str(version), "promotion.refused", reason)
        log.warning("%s: %s", model_name, reason)
        raise QualityGateFailed(reason, [reason])


def apply_deletions(interval: str, overrides: dict[str, Any] | None = None,
                    published: dict[str, Any] | None = None) -> dict[str, Any]:
    """The refresh step after ``publish_index``: tag the model versions trained on documents deleted up to
    ``interval`` (the whole validated history's tombstones, so a backfill or a re-run gives the same tags) and
    invalidate the cached answers that cite them.

    Args:
        interval: The data interval.
        overrides: Per-run overrides of ``params.yaml``.
        published: The publish summary (only orders the step after the KB publish).

    Returns:
        ``interval``, ``deleted_docs`` (count), :func:`tag_versions_with_deleted_docs`'s summary under ``models``
        and ``cache`` (what the answer cache did).
    """
    from evertune.config import apply_overrides, load_params
    from evertune.settings import get_settings

    del published
    params, settings = apply_overrides(load_params(), overrides), get_settings()
    settings.ensure_local_dirs()
    deleted = deleted_documents(settings, interval)
    models = tag_versions_with_deleted_docs(deleted, settings, params, interval)
    cache = _invalidate_cache(deleted, params, settings)
    log.info("deletions as of %s: %d documents; versions tagged %s (changed now %s), unknown %s; cache %s",
             interval, len(deleted), sorted(models["tagged"]), models["changed"], models["unknown"], cache)
    return {"interval": interval, "deleted_docs": len(deleted), "models": models, "cache": cache}


def deleted_documents(settings: Settings | None, up_to: str | None = None) -> dict[str, str]:
    """Every document deleted in the validated history up to ``up_to`` (default: all of it), with the interval of
    the tombstone that deleted it (:func:`evertune.tuning.history.deleted_doc_intervals`)."""
    from evertune.settings import get_settings
    from evertune.tuning.history import current_documents, deleted_doc_intervals, select_interval_dirs

    history = select_interval_dirs((settings or get_settings()).data_repo / "validated", up_to or "9999-12-31", None)
    return deleted_doc_intervals(history, current_documents(history))


def _invalidate_cache(deleted: Mapping[str, str], params: Params, settings: Settings) -> dict[str, Any]:
    """Delete the cached answers citing any deleted document (:func:`evertune.serving.cache.invalidate_doc_ids`)."""
    from evertune.serving.cache import invalidate_doc_ids

    if not deleted:
        return {"status": "nothing to invalidate"}
    return {"status": "invalidated", "answers": invalidate_doc_ids(sorted(deleted), params, settings)}


__all__ = [
    "apply_deletions",
    "blocked_reason",
    "carries_deleted_docs",
    "dataset_doc_ids",
    "deleted_documents",
    "deletion_state",
    "model_status_with_deletions",
    "record_training_docs",
    "refuse_if_blocked",
    "tag_versions_with_deleted_docs",
    "training_docs",
]

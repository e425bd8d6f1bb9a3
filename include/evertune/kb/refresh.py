"""The steps of the nightly knowledge-base refresh, one function per Airflow task and DVC stage.

Each step takes the data interval (``YYYY-MM-DD``) and optional per-run overrides of ``params.yaml``, reads
its inputs from where the previous step left them, and returns a small JSON-able summary (XCom). Steps are
idempotent: re-running one, or a whole day, gives the same state.

Where the data sits between steps:

* ``ingest_documents`` -> ``$EVERTUNE_WORK_DIR/refresh/ds=<interval>/ingested/`` (staging in the snapshot layout,
  not versioned); it returns an :class:`~evertune.kb.staging.IngestRef` (path + counts) as a dict;
* ``validate_documents`` -> ``<data-repo>/validated/ds=<interval>/`` (byte-deterministic files);
* ``version_snapshot`` -> DVC md5 + git tag ``validated/<interval>`` in the data repo, pushed to the remote;
* ``plan_shards`` -> the texts that need a vector, split by content hash into ``index.embed_shards`` shards under
  ``$EVERTUNE_WORK_DIR/refresh/ds=<interval>/shards/`` (:mod:`evertune.kb.shards`);
* ``embed_shard`` -> each shard's vectors next to its texts (Airflow: one mapped task per shard);
* ``sync_index`` -> one writer merges them: a new LanceDB table version (the candidate);
* ``evaluate_retrieval`` -> metrics of the candidate and of the published version on the carried golden set;
* ``publish_index`` -> the ``production`` tag moves, or ``QualityGateFailed`` leaves it where it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evertune.config import Params, apply_overrides, load_params
from evertune.data.versioning import DataRepo, validated_folder, validated_key
from evertune.errors import NothingToDo
from evertune.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _context(overrides: dict[str, Any] | None) -> tuple[Params, Settings]:
    settings = get_settings()
    settings.ensure_local_dirs()
    return apply_overrides(load_params(), overrides), settings


def staging_dir(settings: Settings, interval: str) -> Path:
    """Scratch folder of one interval's refresh."""
    return settings.work_dir / "refresh" / f"ds={interval}"


def validated_dir(settings: Settings, interval: str) -> Path:
    """The validated snapshot of one interval, inside the data repository."""
    return settings.data_repo / validated_folder(interval)


def staged_ingest_dir(settings: Settings, interval: str) -> Path:
    """Where :func:`ingest_documents` stages one interval's ingest result."""
    return staging_dir(settings, interval) / "ingested"


def ingest_documents(interval: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the interval's landing partition into staging (the snapshot layout, see :mod:`evertune.kb.staging`).

    Args:
        interval: The data interval date.
        overrides: Per-run overrides of ``params.yaml`` (dotted keys).

    Returns:
        The :class:`~evertune.kb.staging.IngestRef` as a dict: ``interval``, ``path`` of the staged folder,
        ``partition_found`` and the counts of documents, tombstones, QA pairs, quarantined inputs, records and
        files read.

    Raises:
        NothingToDo: No partition landed for the interval and ``ingest.missing_partition`` is ``skip``.
    """
    from evertune.kb.ingest import ingest_partition
    from evertune.kb.staging import stage_ingest

    params, settings = _context(overrides)
    result = ingest_partition(settings.landing_uri, interval, params)
    if not result.partition_found and params.ingest.missing_partition == "skip":
        raise NothingToDo(f"no landing partition for ds={interval} under {settings.landing_uri}: nothing to refresh")
    summary = stage_ingest(result, staged_ingest_dir(settings, interval)).to_dict()
    log.info("ingested %s", summary)
    return summary


def validate_documents(
    interval: str, overrides: dict[str, Any] | None = None, ingested: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Validate the staged drop with Great Expectations and write the validated snapshot.

    Args:
        interval: The data interval date.
        overrides: Per-run overrides of ``params.yaml``.
        ingested: What :func:`ingest_documents` returned (its ``path`` is read); default the interval's
            staging folder.

    Raises:
        CriticalValidationError: Wrong schema, an empty drop, or too large a quarantined share.
        NothingToDo: Ingestion has not run for this interval.
    """
    from evertune.kb.staging import IngestRef, load_ingest
    from evertune.kb.validation import validate_documents as run_suite
    from evertune.kb.validation import write_validated

    params, settings = _context(overrides)
    folder = Path(IngestRef.from_dict(ingested).path) if ingested else staged_ingest_dir(settings, interval)
    result = run_suite(load_ingest(folder, interval), interval, params, settings)
    out = validated_dir(settings, interval)
    write_validated(result, out)
    reasons = result.report.get("quarantine_by_reason") or result.report.get("counts_by_reason") or {}
    log.info("validated %s: counts=%s quarantined by reason=%s data docs=%s", interval, result.counts, reasons,
             result.data_docs)
    return {"interval": interval, "counts": result.counts, "quarantine_by_reason": reasons,
            "data_docs": result.data_docs, "path": str(out)}


def version_snapshot(interval: str) -> dict[str, Any]:
    """Version the validated snapshot with DVC (content-keyed), push it and tag it in the data repo.

    Raises:
        NothingToDo: The interval has not been validated.
    """
    settings = get_settings()
    if not validated_dir(settings, interval).is_dir():
        raise NothingToDo(f"no validated snapshot for {interval}: run validate_documents first")
    repo = DataRepo(settings)
    version = repo.version_folder(validated_folder(interval), validated_key(interval), f"Validated data for {interval}")
    log.info("data version %s (new commit: %s)", version.data_version, version.created)
    return version.to_dict()


def shard_staging_dir(settings: Settings, interval: str) -> Path:
    """Where :func:`plan_shards` stages one interval's embedding shards (every worker must see it)."""
    return staging_dir(settings, interval) / "shards"


def plan_shards(interval: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Split the interval's texts that need a vector into ``index.embed_shards`` content-hash shards (no writes).

    Returns:
        One :class:`~evertune.kb.shards.ShardRef` dict per shard (the list ``embed_shard`` is mapped over).
    """
    from evertune.kb.index import prepare_sync
    from evertune.kb.shards import plan_shards as split

    params, settings = _context(overrides)
    prepared = prepare_sync(validated_dir(settings, interval), interval, params, settings)
    return [ref.to_dict() for ref in split(prepared, params.index.embed_shards, shard_staging_dir(settings, interval))]


def embed_shards(interval: str, plan: list[dict[str, Any]], overrides: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Embed the given shards of the plan in this process (Airflow maps this step: one shard per task).

    Returns:
        Per shard: its reference plus ``embedded``, ``reused`` and ``seconds``.
    """
    from evertune.kb.embedding import load_checked_embedder
    from evertune.kb.shards import ShardRef, embed_shard

    params, _ = _context(overrides)
    model, _ = load_checked_embedder(params)
    return [embed_shard(ShardRef.from_dict(shard), model, params) for shard in plan]


def sync_index(
    interval: str, overrides: dict[str, Any] | None = None, embedded: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Merge the interval's new or changed chunks into the LanceDB table: one writer, one data commit.

    Args:
        interval: The data interval date.
        overrides: Per-run overrides of ``params.yaml``.
        embedded: What ``embed_shard`` returned for every shard; ``None`` embeds in this process (an
            unsharded sync, as before the sharded refresh).
    """
    from evertune.kb.index import sync_interval
    from evertune.kb.shards import merge_shards

    params, settings = _context(overrides)
    folder = validated_dir(settings, interval)
    if embedded is None:
        result = sync_interval(folder, interval, params, settings)
    else:
        result = merge_shards(folder, interval, list(embedded), params, settings)
    log.info("synced %s", result.to_dict())
    return result.to_dict()


def evaluate_retrieval(interval: str, overrides: dict[str, Any] | None, synced: dict[str, Any]) -> dict[str, Any]:
    """Score the candidate table version (and the published one) on the golden retrieval set carried to the interval.

    The set is every validated golden drop up to and including ``interval`` folded in date order, fitted to the
    documents as of ``interval`` (:func:`evertune.kb.golden_carry.carried_golden`): a day without a golden file is
    scored against the carried set. Its size and versions are logged with every evaluation.

    Returns:
        :func:`evertune.kb.retrieval.evaluate_retrieval`'s dict (``golden_sha256`` is the scored set's version),
        plus ``golden_version`` (the folded set's version) and ``golden`` (the set's summary: size, versions,
        retired, auto-retired, pruned and quarantined items, unreviewed drafts).

    Raises:
        NoGoldenSetError: No golden retrieval item is left to score (none was ever dropped, or all are retired or
            quarantined); the message says how to add a golden set.
    """
    from evertune.kb.golden import RETRIEVAL, require_golden
    from evertune.kb.golden_carry import carried_golden, log_golden
    from evertune.kb.retrieval import evaluate_retrieval as score

    params, settings = _context(overrides)
    carried = carried_golden(validated_dir(settings, interval).parent, interval, RETRIEVAL)
    summary = log_golden(carried, log)
    fitted = require_golden(carried.fitted)
    evaluation = score(synced["table_name"], synced["version"], fitted, params, settings)
    evaluation.update(golden_version=carried.golden.version, golden=summary)
    log.info("retrieval candidate=%s published=%s", evaluation.get("candidate"), evaluation.get("published"))
    return evaluation


def _golden_extra(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The golden set a publish was evaluated on, for the ``kb_index`` asset extra (warns on unreviewed drafts)."""
    golden = evaluation.get("golden") or {}
    keys = ("kind", "interval", "golden_version", "version", "size", "golden_size", "drafts", "retired",
            "auto_retired", "pruned", "quarantined")
    extra = {"golden_version": evaluation.get("golden_version"), "golden_sha256": evaluation.get("golden_sha256"),
             "golden": {key: golden[key] for key in keys if key in golden},
             "golden_unreviewed_drafts": bool(golden.get("unreviewed_drafts"))}
    if extra["golden_unreviewed_drafts"]:
        log.warning("published on a golden set with %d unreviewed drafts (golden version %s): review "
                    "golden/retrieval.jsonl and drop it without \"draft\": true (docs/golden-sets.md)",
                    golden.get("drafts", 0), str(evaluation.get("golden_version"))[:12])
    return extra


def publish_index(
    interval: str,
    overrides: dict[str, Any] | None,
    synced: dict[str, Any],
    evaluation: dict[str, Any],
    version: dict[str, Any],
) -> dict[str, Any]:
    """Move the ``production`` tag to the candidate when retrieval quality holds.

    Raises:
        QualityGateFailed: The candidate is worse than allowed; ``production`` did not move.
    """
    from evertune.kb.publish import publish
    from evertune.serving.cache import invalidate_tombstoned

    params, settings = _context(overrides)
    published = publish(
        synced["table_name"], synced["version"], evaluation, params, settings,
        data_version=version.get("data_version"), interval=interval,
    )
    invalidate_tombstoned(validated_dir(settings, interval), params, settings)  # cached answers citing them
    return {
        "table": synced["table_name"],
        "table_version": synced["version"],
        "previous_version": published.get("previous_version"),
        "changed": published.get("changed"),
        "data_version": version.get("data_version"),
        "metrics": published.get("metrics"),
        **_golden_extra(evaluation),
        "counts": {k: synced.get(k) for k in ("chunks_embedded", "chunks_inserted", "chunks_updated",
                                               "chunks_deleted", "rows_total")},
    }

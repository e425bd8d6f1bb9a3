"""Nightly knowledge-base refresh: ingest, validate, version, sync, evaluate, publish, check freshness, deletions.

Each run handles one day of documents: its data interval ``[D, D+1)`` selects the landing partition
``ds=D``. Backfills (``airflow backfill create --dag-id refresh_knowledge_base ...``) give the same state as
on-time runs: every step is keyed on content or on the interval, and the index sync is last-writer-wins per
document, so days may run in any order.

* ``version_snapshot`` takes the one-slot ``dvc_repo`` pool (DVC has a repository lock).
* ``plan_shards`` splits the texts that need a vector into ``index.embed_shards`` content-hash shards (no
  writes); ``embed_shard`` is mapped over them (``.expand()``: one task per shard, on any worker), each staging
  its vectors; ``sync_index`` merges every shard into LanceDB in one commit (``evertune.kb.shards``).
* ``sync_index`` and ``publish_index`` take the ``lancedb_writer`` pool (one writer per table).
* ``publish_index`` moves the LanceDB tag ``production`` only when retrieval quality holds; a failing candidate
  stays in the table for inspection. A candidate that a later sync already superseded (days run concurrently
  or out of order) is skipped: the run that wrote the newest version decides, and the tag never moves backwards.
* ``check_freshness`` then has the champion (if any) answer the changed-fact probes from the KB version just
  published, logs the fresh share to MLflow (``freshness.experiment_name``) and emits the ``kb_index`` asset
  event: its extra is the publish summary plus ``freshness``. No champion or no probes: it says so, no error.
* ``apply_deletions`` tags the registered model versions whose training data held a document deleted up to the
  interval (``deleted_docs``; ``deletion.model_policy`` flags or blocks them, see docs/runbook.md "Deletion").

A manual run (trigger, ``airflow dags test``) refreshes the interval that ended at its logical date, as Airflow
infers for data-interval timetables: trigger ``2026-11-04`` to refresh ``ds=2026-11-03``; backfills name days
directly.

Per-run overrides of ``params.yaml`` go in the ``overrides`` Param as dotted keys, e.g.
``{"retrieval.min_recall_at_k": 0.8}``. Rollback: ``evertune kb rollback``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag
from airflow.timetables.interval import CronDataIntervalTimetable

from evertune_airflow.assets import KB_INDEX, VALIDATED_DATA
from evertune_airflow.defaults import DEFAULT_ARGS, DVC_POOL, LANCEDB_WRITER_POOL
from evertune_airflow.notifiers import failure_notifier
from evertune_airflow.run_notes import note_task
from evertune_airflow.tasks import evertune_mapped_task, evertune_task, kb_index_extra, validated_data_extra


@dag(
    # A real one-day data interval: Airflow 3's default cron timetable would give zero-length intervals.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    # The knowledge base is a fold over days: one run at a time, in logical-date order (backfills too).
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=failure_notifier(),
    params={
        "overrides": Param(
            {},
            type="object",
            description="Per-run overrides of params.yaml as dotted keys, e.g. {\"retrieval.k\": 10}.",
        ),
    },
    tags=["knowledge-base", "nightly", "evertune"],
    doc_md=__doc__,
)
def refresh_knowledge_base():
    # Each task is one registry step (evertune.pipeline); context values are read when the task runs.
    ingested = evertune_task("ingest_documents")()
    # Critical validation failures raise AirflowFailException (never retried); row-level ones are quarantined.
    validated = evertune_task("validate_documents", retries=0)(ingested)
    version = evertune_task("version_snapshot", pool=DVC_POOL, outlets={VALIDATED_DATA: validated_data_extra})(
        validated
    )
    # The sync, scaled out: the plan splits the texts that need a vector into index.embed_shards content-hash
    # shards, one mapped task per shard embeds (on any Celery worker), one writer merges them in one commit.
    plan = evertune_task("plan_shards")(version)
    embedded = evertune_mapped_task("embed_shard").expand(shard=plan)
    synced = evertune_task("sync_index", pool=LANCEDB_WRITER_POOL)(embedded)
    evaluation = evertune_task("evaluate_retrieval")(synced)
    # A failed quality gate is a decision, not a glitch: no retries.
    published = evertune_task("publish_index", pool=LANCEDB_WRITER_POOL, retries=0)(synced, evaluation, version)
    # How fresh the served champion is on the KB just published; the kb_index event carries both summaries.
    checked = evertune_task("check_freshness", outlets={KB_INDEX: kb_index_extra})(published)
    # Model versions trained on documents deleted up to the interval are tagged (deletion.model_policy).
    deletions = evertune_task("apply_deletions")(published)
    # The run note (one line: published or not, and why); a teardown, so it never changes the run's state.
    [checked, deletions] >> note_task()


refresh_knowledge_base()

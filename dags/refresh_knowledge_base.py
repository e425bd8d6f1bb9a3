"""Nightly knowledge-base refresh: ingest, validate, version, sync, evaluate, publish.

Each run handles one day of documents: its data interval ``[D, D+1)`` selects the landing partition
``ds=D``. Backfills (``airflow backfill create --dag-id refresh_knowledge_base ...``) give the same state as
on-time runs: every step is keyed on content or on the interval, and the index sync is last-writer-wins per
document, so days may run in any order.

* ``version_snapshot`` takes the one-slot ``dvc_repo`` pool (DVC has a repository lock).
* ``sync_index`` and ``publish_index`` take the ``lancedb_writer`` pool (one writer per table).
* ``publish_index`` moves the LanceDB tag ``production`` only when retrieval quality holds, and emits the
  ``kb_index`` asset event; a failing candidate stays in the table for inspection. A candidate that a later
  sync already superseded (days run concurrently or out of order) is skipped: the run that wrote the newest
  version decides, and the tag never moves backwards.

A manual run (trigger, ``airflow dags test``) refreshes the interval that ended at its logical date, as Airflow
infers for data-interval timetables: trigger ``2026-11-04`` to refresh ``ds=2026-11-03``; backfills name days
directly.

Per-run overrides of ``params.yaml`` go in the ``overrides`` Param as dotted keys, e.g.
``{"retrieval.min_recall_at_k": 0.8}``. Rollback: ``evertune kb rollback``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from evertune_airflow.assets import KB_INDEX, VALIDATED_DATA
from evertune_airflow.defaults import DEFAULT_ARGS, DVC_POOL, LANCEDB_WRITER_POOL
from evertune_airflow.errors import interval_of, task_states
from evertune_airflow.notifiers import failure_notifier


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
    # Context values (data_interval_start, params) are injected by name; nothing is read at parse time.
    @task
    def ingest_documents(data_interval_start=None, params=None) -> dict:
        """Read the interval's landing partition; unreadable input becomes quarantine records."""
        from evertune.kb import refresh

        with task_states():
            return refresh.ingest_documents(interval_of(data_interval_start), params["overrides"])

    # Critical validation failures raise AirflowFailException (never retried); row-level ones are quarantined.
    @task(retries=0)
    def validate_documents(ingested: dict, data_interval_start=None, params=None) -> dict:
        """Run the Great Expectations suite, quarantine bad rows, write the validated snapshot."""
        from evertune.kb import refresh

        with task_states():
            return refresh.validate_documents(interval_of(data_interval_start), params["overrides"])

    @task(pool=DVC_POOL, outlets=[VALIDATED_DATA])
    def version_snapshot(validated: dict, data_interval_start=None, outlet_events=None) -> dict:
        """Version the validated snapshot with DVC and push it to the remote."""
        from evertune.kb import refresh

        interval = interval_of(data_interval_start)
        with task_states():
            version = refresh.version_snapshot(interval)
        outlet_events[VALIDATED_DATA].extra = {"interval": interval, **version, "counts": validated.get("counts", {})}
        return version

    @task(pool=LANCEDB_WRITER_POOL)
    def sync_index(version: dict, data_interval_start=None, params=None) -> dict:
        """Embed only new or changed chunks and merge them into the LanceDB table."""
        from evertune.kb import refresh

        with task_states():
            return refresh.sync_index(interval_of(data_interval_start), params["overrides"])

    @task
    def evaluate_retrieval(synced: dict, data_interval_start=None, params=None) -> dict:
        """Score the candidate table version on the golden queries, next to the published one."""
        from evertune.kb import refresh

        with task_states():
            return refresh.evaluate_retrieval(interval_of(data_interval_start), params["overrides"], synced)

    # A failed quality gate is a decision, not a glitch: no retries.
    @task(pool=LANCEDB_WRITER_POOL, outlets=[KB_INDEX], retries=0)
    def publish_index(
        synced: dict, evaluation: dict, version: dict, data_interval_start=None, params=None, outlet_events=None
    ) -> dict:
        """Move the ``production`` tag to the candidate if retrieval quality holds."""
        from evertune.kb import refresh

        with task_states():
            published = refresh.publish_index(
                interval_of(data_interval_start), params["overrides"], synced, evaluation, version
            )
        outlet_events[KB_INDEX].extra = published
        return published

    validated = validate_documents(ingest_documents())
    version = version_snapshot(validated)
    synced = sync_index(version)
    publish_index(synced, evaluate_retrieval(synced), version)


refresh_knowledge_base()

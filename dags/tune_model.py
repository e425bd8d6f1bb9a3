"""Continuous tuning: build the dataset, check drift, fine-tune, evaluate, gate, register, notify.

Runs when validated training data is updated (the ``validated_data`` asset, emitted by
``refresh_knowledge_base``) or weekly, whichever comes first. One run at a time. Training takes a slot of the
``gpu`` pool on the ``gpu`` queue (Celery GPU workers; it falls back to CPU where there is no GPU).

A window whose QA answers too often contradict the articles they cite is rejected by ``build_dataset``
(``PoisonedDataError``: the run fails, the failure notifier reports it, nothing is trained or registered).
Every evaluated candidate becomes a registered version with alias ``challenger``; ``champion`` moves only
when the gate passes. Re-running with the same inputs (data version, KB version, params, base model) skips
training and registers nothing new. Rollback: ``evertune model rollback``.

Params: ``as_of`` picks the last interval of the training window (default: the newest validated interval);
``overrides`` holds per-run overrides of ``params.yaml`` as dotted keys.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from evertune_airflow.assets import CHAMPION_MODEL, VALIDATED_DATA
from evertune_airflow.defaults import DEFAULT_ARGS, GPU_POOL, GPU_QUEUE
from evertune_airflow.notifiers import EvertuneNotifier, failure_notifier
from evertune_airflow.tasks import champion_model_extra, evertune_task, notify_outcome


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
        assets=VALIDATED_DATA,
    ),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=failure_notifier("tune_model failed"),
    params={
        "as_of": Param(None, type=["null", "string"], format="date",
                       description="Last interval of the training window (default: newest validated interval)."),
        "overrides": Param({}, type="object",
                           description="Per-run overrides of params.yaml as dotted keys, e.g. {\"train.max_steps\": 10}."),
    },
    tags=["tuning", "llm", "evertune"],
    doc_md=__doc__,
)
def tune_model():
    # A poisoned window (answers contradicting their articles) fails here, before any training. The task-level
    # notifier gets the exception, so the alert names the share and the rows (the DAG-level one only the run).
    dataset = evertune_task("build_dataset", on_failure_callback=EvertuneNotifier(
        title="tune_model: no training dataset; nothing trained, champion unchanged"))()
    drift = evertune_task("check_drift")(dataset)
    # Long task: checkpoints make a retry resume instead of restarting.
    trained = evertune_task("train", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=pendulum.duration(hours=8))(
        dataset, drift
    )
    evaluation = evertune_task("evaluate")(dataset, trained)
    decision = evertune_task("gate", retries=0)(evaluation, drift, trained)
    outcome = evertune_task("register", outlets={CHAMPION_MODEL: champion_model_extra})(
        dataset, trained, evaluation, decision
    )

    # Failures reach the notifier through the DAG's on_failure_callback; this task reports the decision.
    @task(retries=0)
    def notify(outcome: dict, **context) -> str:
        """Send a gate rejection (or a hold for approval) through the notifier; log a promotion."""
        return notify_outcome(outcome, context)

    notify(outcome)


tune_model()

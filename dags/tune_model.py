"""Continuous tuning: build the dataset, check drift, fine-tune, evaluate, gate, register, promote, notify.

Runs when validated training data is updated (the ``validated_data`` asset, emitted by
``refresh_knowledge_base``) or weekly, whichever comes first. One run at a time. Training takes a slot of the
``gpu`` pool on the ``gpu`` queue (Celery GPU workers; it falls back to CPU where there is no GPU).

A window whose QA answers too often contradict the articles they cite is rejected by ``build_dataset``
(``PoisonedDataError``: the run fails, the failure notifier reports it, nothing is trained or registered).
Every evaluated candidate becomes a registered version with alias ``challenger`` (``register``); ``promote``
moves ``champion`` when the gate passes, or when a person approves a candidate the gate held
(``require_approval``: severe drift under ``drift.policy: require_approval``). A held run waits at the
``approval`` task (Required Actions in the UI, or the REST API) for at most ``approval.response_timeout_hours``,
then takes ``approval.timeout_answer`` (Reject). Promotion is compare-and-set: an approval for a candidate whose
champion or challenger moved while it waited fails ``promote`` with the reason. ``promote`` succeeds (and
emits ``champion_model``) only when ``champion`` moved; otherwise it is skipped. Re-running with the same inputs (data version, KB version, params, base model) skips
training and registers nothing new. Rollback: ``evertune model rollback``.

Params: ``as_of`` picks the last interval of the training window (default: the newest validated interval);
``overrides`` holds per-run overrides of ``params.yaml`` as dotted keys.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from evertune_airflow.approval import approval_task, needs_approval
from evertune_airflow.assets import CHAMPION_MODEL, VALIDATED_DATA
from evertune_airflow.defaults import DEFAULT_ARGS, GPU_POOL, GPU_QUEUE
from evertune_airflow.notifiers import EvertuneNotifier, failure_notifier
from evertune_airflow.run_notes import approval_answer, note_task
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
    outcome = evertune_task("register")(dataset, trained, evaluation, decision, drift)

    # Only a held candidate waits: for any other decision the short-circuit skips `approval` (and nothing else).
    held = task.short_circuit(task_id="needs_approval", ignore_downstream_trigger_rules=False)(needs_approval)(outcome)
    approval = approval_task()
    # Runs after a skipped approval (gate settled it) or an Approve; Reject skips it. Success == champion moved.
    promoted = evertune_task("promote", outlets={CHAMPION_MODEL: champion_model_extra}, retries=0,
                             xcom_context={"review": approval.task_id},
                             trigger_rule="none_failed_min_one_success")(outcome)
    held >> approval >> promoted

    # Failures reach the notifier through the DAG's on_failure_callback; this task reports the decision.
    # Not wired to `approval` (its Reject would skip this task too): its answer is read instead (XCom, or the
    # request through the REST API after a Reject, which pushes no XCom).
    @task(retries=0, trigger_rule="none_failed")
    def notify(outcome: dict | None, promotion: dict | None, **context) -> str:
        """Send a candidate that did not take champion (rejected, held and rejected) through the notifier."""
        review = approval_answer(context["ti"], context["dag"].dag_id, context["run_id"], approval.task_id)
        return notify_outcome(outcome, promotion, review, context)

    # A teardown: runs after everything, failed runs included, without changing the run's state.
    notify(outcome, promoted) >> note_task()


tune_model()

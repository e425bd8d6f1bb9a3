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
from evertune_airflow.errors import task_states
from evertune_airflow.notifiers import EvertuneNotifier, failure_notifier


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
    @task(on_failure_callback=EvertuneNotifier(
        title="tune_model: no training dataset; nothing trained, champion unchanged"))
    def build_dataset(params=None, run_id=None) -> dict:
        """Assemble, dedupe, ground-check and version the SFT dataset of the window; freeze the golden set."""
        from evertune.tuning import steps

        with task_states():
            return steps.build_dataset(params["as_of"], params["overrides"], run_id)

    @task
    def check_drift(dataset: dict, params=None, run_id=None) -> dict:
        """Compare the new training data with the champion's; log statistics to MLflow."""
        from evertune.tuning import steps

        with task_states():
            return steps.check_drift(dataset, params["overrides"], run_id)

    # Long task: checkpoints make a retry resume instead of restarting.
    @task(queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=pendulum.duration(hours=8))
    def train(dataset: dict, drift: dict, params=None) -> dict:
        """LoRA SFT with TRL; skipped when this exact candidate is already registered."""
        from evertune.tuning import steps

        with task_states():
            return steps.train_candidate(dataset, drift, params["overrides"])

    @task
    def evaluate(dataset: dict, trained: dict, params=None) -> dict:
        """Challenger vs champion on the golden set, through the served answer path."""
        from evertune.tuning import steps

        with task_states():
            return steps.evaluate_candidate(dataset, trained, params["overrides"])

    @task(retries=0)
    def gate(evaluation: dict, drift: dict, trained: dict, params=None) -> dict:
        """The promotion decision with every reason (a pure function of the metrics)."""
        from evertune.tuning import steps

        with task_states():
            return steps.gate_candidate(evaluation, drift, trained, params["overrides"])

    @task(outlets=[CHAMPION_MODEL])
    def register(
        dataset: dict, trained: dict, evaluation: dict, decision: dict, params=None, dag_run=None, outlet_events=None
    ) -> dict:
        """Register the candidate as ``challenger``; move ``champion`` only on a passing decision."""
        from evertune.tuning import steps

        with task_states():
            result = steps.register_candidate(
                dataset, trained, evaluation, decision, params["overrides"], dag_run.dag_id, dag_run.run_id
            )
        promotion = result["promotion"]
        outlet_events[CHAMPION_MODEL].extra = {
            "model_name": promotion["model_name"], "version": promotion["version"],
            "promoted": promotion["promoted"], "previous_version": promotion["previous_champion"],
        }
        return result

    # Failures reach the notifier through the DAG's on_failure_callback; this task reports the decision.
    @task(retries=0)
    def notify(outcome: dict, **context) -> str:
        """Send a gate rejection (or a hold for approval) through the notifier; log a promotion."""
        version = outcome["candidate"]["version"]
        if outcome["decision"] != "promote":
            EvertuneNotifier(
                title=f"gate {outcome['decision']}: challenger v{version} did not take champion",
                details=outcome["reasons"],
            ).notify(context)
            return f"{outcome['decision']} notified for v{version}"
        return f"promoted v{version}"

    dataset = build_dataset()
    drift = check_drift(dataset)
    trained = train(dataset, drift)
    evaluation = evaluate(dataset, trained)
    decision = gate(evaluation, drift, trained)
    notify(register(dataset, trained, evaluation, decision))


tune_model()

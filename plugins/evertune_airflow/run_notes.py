"""The ``note_run`` task: every run of both DAGs ends with a one-line run note saying its verdict.

The note is written through Airflow's REST API (``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}?update_mask=note``):
the Task SDK has no call for notes. Credentials, in this order:

* the Airflow connection ``evertune_airflow_api`` (``AIRFLOW_CONN_EVERTUNE_AIRFLOW_API``, type http: host, port,
  login and password of a user allowed to edit the DAG's runs), for a deployment;
* otherwise the embedded stack's own admin account (``evertune_airflow.stack_client.AirflowClient.connect``).

The task is a **teardown**: it runs when everything upstream is done, failed runs included (a rejected dataset
gets its note too), and its own state never changes the run's state. It never fails: without credentials or an
api-server it logs why and returns the note it would have written. The text comes from
:mod:`evertune.run_notes` (what the run's tasks returned, their states).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import task, teardown

log = logging.getLogger(__name__)

API_CONN_ID = "evertune_airflow_api"
TUNE_TASKS = ("build_dataset", "check_drift", "train", "evaluate", "gate", "register", "approval", "promote")
REFRESH_TASKS = ("ingest_documents", "validate_documents", "version_snapshot", "sync_index", "evaluate_retrieval",
                 "publish_index", "check_freshness", "apply_deletions")


def _client() -> Any:
    """A REST client from the ``evertune_airflow_api`` connection, else the embedded stack's."""
    from airflow.sdk import Connection

    from evertune_airflow.stack_client import AirflowClient

    try:
        conn = Connection.get(API_CONN_ID)
    except Exception:  # noqa: BLE001 - an undefined connection raises a provider-specific error
        conn = None
    if conn is not None and conn.host:
        scheme = conn.schema or "http"
        host = conn.host if "://" in conn.host else f"{scheme}://{conn.host}"
        url = f"{host}:{conn.port}" if conn.port else host
        return AirflowClient(url, conn.password or "", username=conn.login or "admin")
    return AirflowClient.connect()


def _results(ti: Any, task_ids: Iterable[str]) -> dict[str, Any]:
    """Each task's return value (``None`` when it returned nothing or did not run)."""
    return {task_id: ti.xcom_pull(task_ids=task_id) for task_id in task_ids}


def _rejection(run_id: str) -> Mapping[str, Any] | None:
    """The tuning-rejections entry of this run, if ``build_dataset`` rejected its data."""
    from evertune.settings import get_settings
    from evertune.tuning.rejections import read_rejections

    entries = [e for e in read_rejections(get_settings()) if e.get("dag_run_id") == run_id]
    return entries[-1] if entries else None


def approval_answer(ti: Any, dag_id: str, run_id: str, task_id: str = "approval") -> dict[str, Any] | None:
    """The answer to the run's approval request, shaped like the approval task's XCom.

    The XCom exists only for Approve: on Reject the operator skips its downstream tasks by raising before it
    returns, so nothing is pushed. The answer is then read from the request itself through the REST API
    (``GET .../taskInstances/approval/-1/hitlDetails``). ``None``: no request (the gate did not hold), no
    answer yet, or no API to ask.
    """
    from evertune_airflow.stack_env import StackError

    answer = ti.xcom_pull(task_ids=task_id)
    if answer:
        return answer
    try:
        with _client() as client:
            detail = client.get_or_none(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails")
    except StackError as exc:
        log.warning("could not read the approval answer of %s %s: %s", dag_id, run_id, exc)
        return None
    if not detail or not detail.get("response_received"):
        return None
    return {"chosen_options": detail.get("chosen_options") or [], "params_input": detail.get("params_input") or {},
            "responded_by_user": detail.get("responded_by_user") or detail.get("responded_by"),
            "responded_at": detail.get("responded_at")}


def write_note(dag_id: str, run_id: str, ti: Any) -> str:
    """Compute the run's verdict line and write it as the run note; return the line.

    Failures to reach the API are logged (warning), never raised: the note is a convenience, the run's
    state and its task results are the record.
    """
    from evertune.run_notes import refresh_note, tune_note
    from evertune_airflow.stack_env import StackError

    tune = dag_id.startswith("tune")
    try:
        client = _client()
    except StackError as exc:
        log.warning("no run note for %s %s: %s", dag_id, run_id, exc)
        client = None
    states: dict[str, str] = {}
    if client is not None:
        try:
            states = {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id) if t.get("state")}
        except StackError as exc:
            log.warning("could not read task states of %s %s: %s", dag_id, run_id, exc)
    if tune:
        results = _results(ti, TUNE_TASKS)
        if states.get("approval") not in (None, "skipped"):
            results["approval"] = approval_answer(ti, dag_id, run_id)
        note = tune_note(results, states, _rejection(run_id))
    else:
        note = refresh_note(_results(ti, REFRESH_TASKS), states)
    log.info("run note: %s", note)
    if client is None:
        return note
    try:
        with client:
            client.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": "note"},
                           json={"note": note})
    except StackError as exc:
        log.warning("could not write the run note of %s %s: %s", dag_id, run_id, exc)
    return note


def note_task() -> Any:
    """The ``note_run`` teardown task (put it after the DAG's last tasks)."""

    @teardown
    @task(task_id="note_run", retries=0)
    def note_run(**context: Any) -> str:
        """Write the run's one-line verdict as its Airflow run note."""
        return write_note(context["dag"].dag_id, context["run_id"], context["ti"])

    return note_run()

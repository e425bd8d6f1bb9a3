"""Approval requests through Airflow's REST API: find a run's waiting approval and answer it.

What the demo and the tests call (a person uses the UI's Required Actions)::

    with AirflowClient.connect() as client:
        [request] = wait_for_approval(client, "tune_model", run_id)
        respond(client, "tune_model", run_id, "Approve")

The answer is ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails`` with
``{"chosen_options": [...], "params_input": {}}``; Airflow records the calling user as the responder.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from evertune_airflow.stack_env import StackError

if TYPE_CHECKING:
    from evertune_airflow.stack_client import AirflowClient

#: The approval task of ``tune_model`` (``evertune_airflow.approval.APPROVAL_TASK``; not imported: that module
#: imports the Airflow SDK).
APPROVAL_TASK = "approval"


def _run_path(dag_id: str, run_id: str) -> str:
    # Run ids (``manual__2026-11-03T00:00:00+00:00``) hold only characters a path may carry as they are.
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"


def pending_approvals(client: AirflowClient, dag_id: str = "tune_model", run_id: str = "~") -> list[dict]:
    """Approval requests nobody has answered yet (``~``: of every DAG or run), oldest first.

    Each is the API's HITL detail: ``task_instance`` (``dag_id``, ``dag_run_id``, ``task_id``, ``state``),
    ``subject``, ``body``, ``options``, ``defaults``, ``created_at``.
    """
    answer = client.request("GET", f"{_run_path(dag_id, run_id)}/hitlDetails",
                            params={"response_received": "false", "limit": 100, "order_by": "created_at"})
    return [d for d in answer["hitl_details"] if not d.get("response_received")]


def wait_for_approval(client: AirflowClient, dag_id: str, run_id: str, timeout: float = 600.0,
                      poll: float = 2.0, settle: float = 10.0) -> list[dict]:
    """Wait until the run has a waiting approval request (its task in ``awaiting_input``), then ``settle`` more.

    Why the settle time: the task instance turns ``awaiting_input`` before its worker process has exited and the
    scheduler has processed that exit. An answer given inside that gap resumes the task (``queued``) before the
    executor's "success" event for the parked process arrives, and the scheduler then fails the task ("finished
    with state success, but the task instance's state attribute is queued"; seen here with LocalExecutor under
    load, 0.6 s after parking). A person never answers that fast; a script must wait.

    Raises:
        StackError: The run finished, or ``timeout`` passed, without one; the message lists the task states.
    """
    deadline = time.monotonic() + timeout
    while True:
        waiting = [d for d in pending_approvals(client, dag_id, run_id)
                   if (d.get("task_instance") or {}).get("state") == "awaiting_input"]
        if waiting and settle > 0:
            time.sleep(settle)
            settle = 0.0
            continue  # read it again: still waiting after the scheduler caught up
        if waiting:
            return waiting
        run = client.dag_run(dag_id, run_id)
        if run["state"] in ("success", "failed") or time.monotonic() > deadline:
            states = {ti["task_id"]: ti["state"] for ti in client.task_instances(dag_id, run_id)}
            raise StackError(f"{dag_id} {run_id} ({run['state']}) has no waiting approval: {states}")
        time.sleep(poll)


def respond(client: AirflowClient, dag_id: str, run_id: str, option: str, task_id: str = APPROVAL_TASK,
            map_index: int = -1) -> dict[str, Any]:
    """Answer a waiting approval with ``option`` (``Approve`` or ``Reject``) as the client's user.

    Returns:
        The answer as recorded: ``chosen_options``, ``params_input``, ``responded_by`` (``id``, ``name``),
        ``responded_at``.

    Raises:
        StackError: 404 (the task has not parked yet: :func:`wait_for_approval` first), 409 (already answered),
            403 (the user is not an assigned respondent) or 400 (not an option).
    """
    path = f"{_run_path(dag_id, run_id)}/taskInstances/{task_id}/{map_index}/hitlDetails"
    # Not retried on 500/503: a repeat of an applied answer would be a 409.
    return client.request("PATCH", path, retry=False, json={"chosen_options": [option], "params_input": {}})

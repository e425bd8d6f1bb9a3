"""The approval step of ``tune_model``: a human decides on a candidate the gate held (``require_approval``).

Wiring (``dags/tune_model.py``)::

    register -> needs_approval (short-circuit) -> approval (ApprovalOperator) -> promote -> notify

* ``needs_approval`` is true only for ``require_approval``; otherwise it skips ``approval`` (its direct
  downstream only), and ``promote`` (trigger rule ``none_failed_min_one_success``) runs at once: it moves
  ``champion`` for a passing decision and skips itself for a rejected one. A run the gate settles never waits.
* ``approval`` shows the request that ``register`` wrote (subject and Markdown body: every gate reason, the
  metric table with CIs, drift, MLflow links), waits in ``awaiting_input`` for ``approval.response_timeout_hours``
  and then takes ``approval.timeout_answer`` (default Reject). Reject skips ``promote``; Approve runs it with
  the reviewer's name (``review``, pulled from this task's XCom).

Answer it in the UI (the task's Required Actions tab) or through the REST API
(:func:`evertune_airflow.stack_approvals.respond`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

#: Task id of the approval task (the REST path names it).
APPROVAL_TASK = "approval"
#: The task whose result carries the request (``review``: ``subject``, ``body``).
REQUEST_TASK = "register"


def needs_approval(outcome: dict[str, Any]) -> bool:
    """Whether the gate held the candidate for a human (the short-circuit condition)."""
    return outcome.get("decision") == "require_approval" and bool(outcome.get("review"))


def approval_task(task_id: str = APPROVAL_TASK, request_task: str = REQUEST_TASK) -> ApprovalOperator:
    """The ``ApprovalOperator`` of ``tune_model``, its timeout and timeout answer from ``params.yaml``.

    Subject and body are templates over ``request_task``'s result, rendered when the task runs.

    Raises:
        ConfigError: ``params.yaml`` is invalid (the DAG then fails to parse, naming the key).
    """
    from evertune.config import load_params

    params = load_params().approval
    review = f"ti.xcom_pull(task_ids='{request_task}')['review']"
    return ApprovalOperator(
        task_id=task_id,
        subject="{{ " + review + "['subject'] }}",
        body="{{ " + review + "['body'] }}",
        defaults=params.timeout_answer,
        response_timeout=dt.timedelta(hours=params.response_timeout_hours),
        retries=0,
        doc_md="Approve moves `champion` to the held candidate; Reject (or no answer in time: "
               f"{params.timeout_answer}) leaves it. The body lists every gate reason.",
    )

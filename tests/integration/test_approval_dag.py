"""Approvals end to end: the real ``tune_model`` on the embedded stack (tiny model), answered through the REST API.

Days 1-3 of the demo make a first champion (the gate passes: the ``approval`` task is skipped, nothing waits).
Day 4 is the demo's drift day: with ``drift.policy: require_approval`` the gate holds its candidate for a human,
a real gate outcome (severe drift against the champion's training data), not a flag. One held run is rejected,
another (a different training seed, so a new candidate) is approved, both through
``PATCH .../hitlDetails``. ``champion`` moves only on Approve, the approver is recorded on the version, and
``champion_model`` asset events exist only for the runs that moved ``champion``.

The gate's regression and improvement rules are relaxed for the held runs (``overrides``): the tiny random
model's metrics are noise, and the point here is the approval path, not the model's quality.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from evertune.settings import get_settings
from evertune_airflow.stack_approvals import pending_approvals, respond, wait_for_approval
from evertune_airflow.stack_client import AirflowClient
from evertune_airflow.stack_control import up
from evertune_airflow.stack_env import ADMIN_USER
from evertune_airflow.stack_processes import stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

DAG = "tune_model"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]  # day 4: the demo's drift day
NAME = "evertune-assistant"
#: Severe drift holds instead of blocking; the noise of the tiny model's metrics cannot reject the candidate.
HOLD = {"drift.policy": "require_approval", "gate.tolerances": {}, "gate.min_improvement": -1.0}


@pytest.fixture
def approval_stack(evertune_home: Path, monkeypatch: pytest.MonkeyPatch, stack_ports: dict[str, int],
                   tiny_dag_env) -> Path:
    """The tiny-model params, four refreshed demo days (CLI), no scheduled runs (only the test's own)."""
    env = tiny_dag_env(evertune_home)
    monkeypatch.setenv("EVERTUNE_PARAMS", env["EVERTUNE_PARAMS"])
    monkeypatch.delenv("EVERTUNE_DAGS_FOLDER", raising=False)
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")  # no cron run between the test's runs
    run = {"check": True, "capture_output": True, "text": True, "timeout": 900}
    subprocess.run([sys.executable, "-m", "evertune", "demo-data", "--days", str(len(DAYS))], **run)
    subprocess.run([sys.executable, "-m", "evertune", "refresh", "all", "--interval", *DAYS], **run)
    return evertune_home


def registry():
    from evertune.tuning.tracking import mlflow_client

    return mlflow_client(get_settings())


def champion() -> int:
    return int(registry().get_model_version_by_alias(NAME, "champion").version)


def finish(client: AirflowClient, run_id: str) -> dict[str, str]:
    [run] = client.wait_for_runs(DAG, [run_id], timeout=900, poll=3)
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(DAG, run_id)}
    assert run["state"] == "success", states
    return states


def held_run(client: AirflowClient, run_id: str, overrides: dict, answer: str) -> tuple[dict, dict[str, str]]:
    client.trigger(DAG, conf={"as_of": DAYS[3], "overrides": overrides}, run_id=run_id)
    [request] = wait_for_approval(client, DAG, run_id, timeout=900, poll=3)
    assert request["task_instance"]["task_id"] == "approval" and request["defaults"] == ["Reject"]
    assert [r["task_instance"]["dag_run_id"] for r in pending_approvals(client, DAG)] == [run_id]
    answered = respond(client, DAG, run_id, answer)
    assert answered["chosen_options"] == [answer] and answered["responded_by"]["name"] == ADMIN_USER
    return request, finish(client, run_id)


def test_held_candidates_wait_for_an_answer_through_the_api(approval_stack: Path) -> None:
    settings = get_settings()
    started = time.monotonic()
    try:
        up(settings, timeout=400)
        with AirflowClient.connect(settings) as client:
            client.wait_for_dag(DAG, timeout=300)
            client.unpause(DAG)

            client.trigger(DAG, conf={"as_of": DAYS[2], "overrides": {}}, run_id="first")
            states = finish(client, "first")
            assert states["needs_approval"] == "success" and states["approval"] == "skipped"
            assert states["promote"] == "success" and states["notify"] == "success"
            first = champion()
            # Every run ends with its one-line verdict as the run note (teardown `note_run`, through the REST API).
            assert states["note_run"] == "success"
            assert client.dag_run(DAG, "first")["note"].startswith(f"promoted v{first} to champion"), \
                client.dag_run(DAG, "first")
            tick = time.monotonic()

            request, states = held_run(client, "held_rejected", HOLD, "Reject")
            body = request["body"]
            assert "HOLD drift: severe training-data drift" in body, body
            assert "| token_f1 |" in body and f"champion v{first}" in body and "Severity **severe**" in body
            assert "/#/models/evertune-assistant/versions/" in body and "/#/runs/" in body
            assert states["approval"] == "success" and states["promote"] == "skipped"
            assert states["notify"] == "success"
            assert champion() == first, "Reject must leave champion"
            rejected = int(registry().get_model_version_by_alias(NAME, "challenger").version)
            note = client.dag_run(DAG, "held_rejected")["note"]
            assert note.startswith(f"v{rejected} held (HOLD drift") and f"rejected by {ADMIN_USER}" in note, note
            assert registry().get_model_version(NAME, str(rejected)).tags["review.by"] == ADMIN_USER

            _, states = held_run(client, "held_approved", {**HOLD, "train.seed": 18}, "Approve")
            assert states["promote"] == "success"
            approved = champion()
            assert approved not in (first, rejected)
            tags = registry().get_model_version(NAME, str(approved)).tags
            assert tags["approved_by"] == ADMIN_USER and tags["gate.action"] == "require_approval"
            assert tags["review.answer"] == "Approve"
            assert client.dag_run(DAG, "held_approved")["note"].endswith(f"approved by {ADMIN_USER}")
            print(f"\n[approval] two held runs (reject, approve) in {time.monotonic() - tick:.0f} s")

            events = client.request("GET", "/api/v2/assets/events",
                                    params={"source_dag_id": DAG, "limit": 100})["asset_events"]
            moved = sorted(e["source_run_id"] for e in events if e["uri"] == "evertune://models/champion")
            assert moved == ["first", "held_approved"], events
    finally:
        stop(settings)
    print(f"[approval] stack up, three tune_model runs and down in {time.monotonic() - started:.0f} s")

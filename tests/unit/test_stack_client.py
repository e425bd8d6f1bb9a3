"""AirflowClient's waiting logic against a scripted API (the client's own logic, not Airflow's)."""

from __future__ import annotations

import json

import httpx
import pytest

from evertune_airflow.stack import AirflowClient, StackError


def scripted_client(states: list[str], other_running: bool = False) -> AirflowClient:
    """A client whose API answers one run in each of ``states`` in turn (the last one repeats);
    ``other_running``: another run of the DAG is running the whole time."""
    answers = iter(states)
    last = {"state": states[0]}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        if path.endswith("/dagRuns/r1"):
            last["state"] = next(answers, last["state"])
            return httpx.Response(200, json={"dag_run_id": "r1", "state": last["state"],
                                             "run_after": "2026-11-03T00:00:00Z"})
        if path == "/api/v2/dags/d/dagRuns":
            running = [{"dag_run_id": "r0", "state": "running"}] if other_running else []
            return httpx.Response(200, json={"dag_runs": running, "total_entries": len(running)})
        if path == "/api/v2/dags/d":
            return httpx.Response(200, json={"dag_id": "d", "is_paused": False, "is_stale": False,
                                             "max_active_runs": 1})
        if path == "/api/v2/monitor/health":
            return httpx.Response(200, text=json.dumps({"scheduler": {"status": "unhealthy"}}),
                                  headers={"date": "Sun, 22 Nov 2026 17:00:00 GMT"})
        if path == "/api/v2/backfills":
            return httpx.Response(200, json={"backfills": [{"id": 7, "is_paused": False, "completed_at": None,
                                                            "max_active_runs": 1}]})
        return httpx.Response(404)

    client = AirflowClient("http://airflow.test", "pw")
    client._http = httpx.Client(base_url="http://airflow.test", transport=httpx.MockTransport(handler))
    return client


def test_runs_that_stay_queued_fail_early_with_a_diagnosis() -> None:
    client = scripted_client(["queued"])
    with pytest.raises(StackError) as caught:
        client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    message = str(caught.value)
    assert "queued and not started" in message
    assert "run_after=2026-11-03T00:00:00Z" in message
    assert "is_paused=False is_stale=False" in message
    assert '"unhealthy"' in message and "server clock" in message
    assert "backfill 7: is_paused=False" in message


def test_progressing_runs_are_not_called_stalled() -> None:
    client = scripted_client(["queued", "queued", "running", "running", "running", "success"])
    [run] = client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    assert run["state"] == "success"


def test_runs_queued_behind_a_running_run_are_not_called_stalled() -> None:
    """max_active_runs=1: a triggered run waits while another run of the DAG trains for longer than the stall limit."""
    client = scripted_client(["queued"] * 15 + ["running", "success"], other_running=True)
    [run] = client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    assert run["state"] == "success"

"""The evertune run page served by the real api-server of the embedded stack: the plugin is loaded (the
DAG-run tab is registered), the page of a finished run shows the gate's reasons and the metrics read from
the run's XComs, a queued run is "not evaluated yet", an unknown run is a clear 404, and no token is 401.

The DAGs folder holds a synthetic ``tune_model`` (two pure-Python tasks returning what ``evaluate`` and
``gate`` return), so real task XComs exist within seconds, without models or MLflow runs.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import httpx
import pytest

from evertune.settings import get_settings
from evertune_airflow.run_pages import run_page_path
from evertune_airflow.run_sections import NOT_EVALUATED
from evertune_airflow.stack_client import AirflowClient
from evertune_airflow.stack_control import up
from evertune_airflow.stack_env import airflow_url
from evertune_airflow.stack_processes import stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SYNTHETIC_TUNE_DAG = '''
import pendulum
from airflow.sdk import dag, task


@dag(dag_id="tune_model", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC"), catchup=False)
def synthetic_tune_model():
    @task
    def evaluate() -> dict:
        return {"challenger": {"token_f1": 0.52, "rougeL": 0.4}, "champion": {"token_f1": 0.47, "rougeL": 0.41},
                "champion_version": 2, "ci": {"token_f1": [0.01, 0.09], "rougeL": [-0.03, 0.01]}, "n": 24}

    @task
    def gate(evaluation: dict) -> dict:
        return {"passed": True, "action": "promote",
                "reasons": ["token_f1 0.52 beats champion 0.47 (CI [0.01, 0.09] above 0)",
                            "rougeL within tolerance <of> the champion"],
                "checks": [{"check": "beats_champion", "passed": True, "reason": "token_f1 up"}]}

    gate(evaluate())


synthetic_tune_model()
'''


@pytest.fixture
def page_stack(evertune_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               stack_ports: dict[str, int]) -> Path:
    """An isolated state folder, a DAGs folder with the synthetic tune_model, and free ports."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "tune_model.py").write_text(SYNTHETIC_TUNE_DAG)
    monkeypatch.setenv("EVERTUNE_DAGS_FOLDER", str(dags))
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    return evertune_home


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_run_page_on_the_real_api_server(page_stack: Path) -> None:
    settings = get_settings()
    started = time.monotonic()
    try:
        up(settings, timeout=240)
        base = airflow_url()
        with AirflowClient.connect(settings) as client, httpx.Client(base_url=base, timeout=30) as http:
            plugins = client.request("GET", "/api/v2/plugins")["plugins"]
            [plugin] = [p for p in plugins if p["name"] == "evertune"]
            [view] = plugin["external_views"]
            assert view["destination"] == "dag_run" and view["url_route"] == "evertune"
            assert view["href"] == "/evertune/runs/{DAG_ID}/{RUN_ID}"
            assert client.request("GET", "/api/v2/plugins/importErrors")["import_errors"] == []

            assert client.wait_for_dag("tune_model", timeout=120)["is_paused"] is True
            queued = client.trigger("tune_model")  # paused: stays queued, nothing has run
            auth = {"Authorization": f"Bearer {client.token()}"}
            answer = http.get(run_page_path("tune_model", queued), headers=auth)
            assert answer.status_code == 200, answer.text
            assert NOT_EVALUATED in text_of(answer.text)

            client.unpause("tune_model")
            [run] = client.wait_for_runs("tune_model", [queued], timeout=120, poll=1)
            assert run["state"] == "success", client.task_instances("tune_model", queued)

            answer = http.get(run_page_path("tune_model", queued), headers=auth)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("text/html")
            text = text_of(answer.text)
            assert "promote" in text and NOT_EVALUATED not in text
            assert "token_f1 0.52 beats champion 0.47 (CI [0.01, 0.09] above 0)" in text
            assert "rougeL within tolerance <of> the champion" in text
            assert "&lt;of&gt;" in answer.text  # escaped in the served HTML
            assert "champion v2" in text and "[0.01, 0.09]" in text and "0.05" in text  # the delta

            missing = http.get(run_page_path("tune_model", "no_such_run"), headers=auth)
            assert missing.status_code == 404 and "No run 'no_such_run'" in text_of(missing.text)
            assert "Traceback" not in missing.text

            assert http.get(run_page_path("tune_model", queued)).status_code == 401
            assert http.get(run_page_path("tune_model", queued),
                            headers={"Authorization": "Bearer not.a.token"}).status_code in (401, 403)
            http.cookies.set("_token", auth["Authorization"].split()[1])
            assert http.get(run_page_path("tune_model", queued)).status_code == 200  # the UI's cookie works
    finally:
        stop(settings)
    print(f"\n[run page] stack up, two checks and down in {time.monotonic() - started:.0f} s")

"""AirflowClient's waiting logic and error handling against a scripted API on a local port (the client's own
logic through the real generated client and urllib3, not Airflow's)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from evertune_airflow import stack_client
from evertune_airflow.stack_client import AirflowClient
from evertune_airflow.stack_env import StackError

#: (method, path, query, JSON body) -> (status, body: dict for JSON or str for text, extra headers)
Handler = Callable[[str, str, dict, object], tuple[int, object, dict]]


class ScriptedApi:
    """A local HTTP server answering with ``handler``; records every request as (method, path, query, body)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, dict, object]] = []
        api = self

        class Answer(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = parse_qs(url.query)
                api.requests.append((self.command, url.path, query, body))
                public = url.path in ("/auth/token", "/api/v2/monitor/health")  # as in Airflow
                if not public and self.headers.get("authorization", "") not in api.tokens:
                    status, payload, headers = 401, {"detail": "Not authenticated"}, {}
                else:
                    status, payload, headers = api.handler(self.command, url.path, query, body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *_args: object) -> None:
                pass

        self.tokens = {"Bearer t"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def calls(self, method: str, path: str) -> int:
        return sum(1 for m, p, _q, _b in self.requests if (m, p) == (method, path))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Handler], tuple[ScriptedApi, AirflowClient]]]:
    """Start a scripted API and a client of it; retries wait no time."""
    monkeypatch.setattr(stack_client, "RETRY_WAITS", (0.0,) * len(stack_client.RETRY_WAITS))
    monkeypatch.setattr(stack_client, "BACKFILL_WAITS", (0.0,) * len(stack_client.BACKFILL_WAITS))
    started: list[tuple[ScriptedApi, AirflowClient]] = []

    def start(handler: Handler) -> tuple[ScriptedApi, AirflowClient]:
        def with_token(method: str, path: str, query: dict, body: object) -> tuple[int, object, dict]:
            if path == "/auth/token":
                return 201, {"access_token": "t"}, {}
            return handler(method, path, query, body)

        api = ScriptedApi(with_token)
        client = AirflowClient(api.url, "pw", timeout=10)
        started.append((api, client))
        return api, client

    yield start
    for api, client in started:
        client.close()
        api.close()


def scripted_runs(states: list[str], other_running: bool = False) -> Handler:
    """An API that answers one run in each of ``states`` in turn (the last one repeats);
    ``other_running``: another run of the DAG is running the whole time."""
    answers = iter(states)
    last = {"state": states[0]}

    def handler(method: str, path: str, query: dict, body: object) -> tuple[int, object, dict]:
        if path.endswith("/dagRuns/r1"):
            last["state"] = next(answers, last["state"])
            return 200, {"dag_run_id": "r1", "state": last["state"], "run_after": "2026-11-03T00:00:00Z"}, {}
        if path == "/api/v2/dags/d/dagRuns":
            running = [{"dag_run_id": "r0", "state": "running"}] if other_running else []
            return 200, {"dag_runs": running, "total_entries": len(running)}, {}
        if path == "/api/v2/dags/d":
            return 200, {"dag_id": "d", "is_paused": False, "is_stale": False, "max_active_runs": 1}, {}
        if path == "/api/v2/monitor/health":
            return 200, json.dumps({"scheduler": {"status": "unhealthy"}}), {"date": "Sun, 22 Nov 2026 17:00:00 GMT"}
        if path == "/api/v2/backfills":
            return 200, {"backfills": [{"id": 7, "is_paused": False, "completed_at": None, "max_active_runs": 1}]}, {}
        return 404, {"detail": "not found"}, {}

    return handler


def test_runs_that_stay_queued_fail_early_with_a_diagnosis(serve) -> None:
    _api, client = serve(scripted_runs(["queued"]))
    with pytest.raises(StackError) as caught:
        client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    message = str(caught.value)
    assert "queued and not started" in message
    assert "run_after=2026-11-03T00:00:00Z" in message
    assert "is_paused=False is_stale=False" in message
    assert '"unhealthy"' in message and "server clock" in message
    assert "backfill 7: is_paused=False" in message


def test_progressing_runs_are_not_called_stalled(serve) -> None:
    _api, client = serve(scripted_runs(["queued", "queued", "running", "running", "running", "success"]))
    [run] = client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    assert run["state"] == "success"


def test_runs_queued_behind_a_running_run_are_not_called_stalled(serve) -> None:
    """max_active_runs=1: a triggered run waits while another run of the DAG trains for longer than the stall limit."""
    api, client = serve(scripted_runs(["queued"] * 15 + ["running", "success"], other_running=True))
    [run] = client.wait_for_runs("d", ["r1"], timeout=60, poll=0.05, stall_timeout=0.3)
    assert run["state"] == "success"
    # The "is another run running?" question reaches the API as its typed filter.
    assert any(q.get("state") == ["running"] for m, p, q, _b in api.requests if p == "/api/v2/dags/d/dagRuns")


def test_an_expired_token_is_renewed_once(serve) -> None:
    api, client = serve(lambda m, p, q, b: (200, {"pools": [{"name": "gpu", "slots": 1}], "total_entries": 1}, {}))
    assert client.pools() == {"gpu": 1}
    client._token = "stale"  # an expired token: the API answers 401 to it
    assert client.pools() == {"gpu": 1}
    assert api.calls("POST", "/auth/token") == 2


def test_locked_database_answers_are_retried_for_reads_only(serve) -> None:
    answers = iter([(503, "database is locked", {}), (500, "database is locked", {})])

    def handler(method: str, path: str, query: dict, body: object) -> tuple[int, object, dict]:
        if method == "GET":
            return next(answers, (200, {"dag_id": "d", "is_paused": True}, {}))
        return 500, "boom", {}

    api, client = serve(handler)
    assert client.dag("d") == {"dag_id": "d", "is_paused": True}
    assert api.calls("GET", "/api/v2/dags/d") == 3
    with pytest.raises(StackError, match=r"POST /api/v2/x -> 500: boom"):
        client.request("POST", "/api/v2/x", json={})
    assert api.calls("POST", "/api/v2/x") == 1, "a plain POST is not retried"


def test_an_error_answer_names_the_call_and_the_status(serve) -> None:
    _api, client = serve(lambda m, p, q, b: (403, {"detail": "Forbidden"}, {}))
    with pytest.raises(StackError, match=r"GET /api/v2/dags/d/dagRuns/r1 -> 403: .*Forbidden"):
        client.dag_run("d", "r1")


def test_a_missing_dag_is_none(serve) -> None:
    _api, client = serve(lambda m, p, q, b: (404, {"detail": "not found"}, {}))
    assert client.dag("nope") is None


def test_an_unreachable_server_is_a_stack_error() -> None:
    client = AirflowClient("http://127.0.0.1:9", "pw", timeout=2)
    with pytest.raises(StackError, match="no answer from http://127.0.0.1:9"):
        client.pools()


def test_a_repeated_trigger_returns_the_existing_run(serve) -> None:
    def handler(method: str, path: str, query: dict, body: object) -> tuple[int, object, dict]:
        if method == "POST":
            return 409, {"detail": "exists"}, {}
        return 200, {"dag_run_id": "demo__1", "state": "queued"}, {}

    api, client = serve(handler)
    assert client.trigger("d", conf={"n": 1}, run_id="demo__1") == "demo__1"
    [(_m, _p, _q, sent)] = [r for r in api.requests if r[0] == "POST" and r[1] != "/auth/token"]
    assert sent == {"conf": {"n": 1}, "dag_run_id": "demo__1", "logical_date": None}


def test_a_busy_backfill_is_posted_again(serve) -> None:
    busy = iter([(503, "Database is locked", {}), (409, "There is already a running backfill for dag d", {})])

    def handler(method: str, path: str, query: dict, body: object) -> tuple[int, object, dict]:
        if method == "POST":
            return next(busy, (200, {"id": 3}, {}))
        runs = [{"dag_run_id": "b2", "logical_date": "2025-01-02T00:00:00Z"},
                {"dag_run_id": "b1", "logical_date": "2025-01-01T00:00:00Z"}]
        return 200, {"dag_runs": runs, "total_entries": 2}, {}

    api, client = serve(handler)
    created = client.backfill("d", "2025-01-01", "2025-01-02", max_active_runs=2)
    assert created == {"id": 3, "run_ids": ["b1", "b2"]}
    assert api.calls("POST", "/api/v2/backfills") == 3
    [(_m, _p, _q, sent)] = [r for r in api.requests if r[:2] == ("POST", "/api/v2/backfills")][-1:]
    assert sent["from_date"].startswith("2025-01-01T00:00:00") and sent["max_active_runs"] == 2
    [(_m, _p, query, _b)] = [r for r in api.requests if r[1] == "/api/v2/dags/d/dagRuns"]
    assert query["run_type"] == ["backfill"] and query["logical_date_gte"][0].startswith("2025-01-01T00:00:00")


def test_a_backfill_refused_for_good_raises(serve) -> None:
    _api, client = serve(lambda m, p, q, b: (400, {"detail": "bad dates"}, {}))
    with pytest.raises(StackError, match=r"POST /api/v2/backfills -> 400"):
        client.backfill("d", "2025-01-02", "2025-01-01")

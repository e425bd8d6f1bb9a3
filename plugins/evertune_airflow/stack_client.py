"""A client of Airflow's REST API v2 for the demo, the stack and the tests, with the stall diagnosis.

Requests go through ``apache-airflow-client`` (the generated client of this Airflow version: typed bodies,
paths and query parameters, bearer auth, urllib3 pooling), retries through ``tenacity``. Answers are the
API's JSON (dicts), exactly as the server sent them, as the demo, the tests and the reports read them; a
partial answer never fails a client-side model check. The token comes from ``POST /auth/token``, which the
generated client lacks (its ``login`` is the browser redirect), through the same connection pool."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Self

from evertune.settings import Settings, get_settings
from evertune_airflow.stack_env import ADMIN_USER, StackError, admin_password, airflow_url, passwords_file

if TYPE_CHECKING:
    import urllib3

#: Terminal DAG run states.
FINISHED_RUN_STATES = frozenset({"success", "failed"})
#: Seconds between the attempts of an idempotent call that Airflow answered 500 or 503 (on SQLite:
#: "database is locked" while the scheduler holds the write lock).
RETRY_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Seconds between the attempts to create a backfill that Airflow refused as busy (see :meth:`backfill`).
BACKFILL_WAITS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0)


def _utc(value: dt.date | dt.datetime | str | None) -> dt.datetime | None:
    """A timezone-aware datetime (UTC when naive); a bare date means its midnight."""
    if value is None:
        return None
    if isinstance(value, str):
        # Airflow answers 500 to naive datetimes in filters; always send an offset.
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _iso(value: dt.date | dt.datetime | str | None) -> str | None:
    """ISO-8601 with an offset (UTC when naive); a bare date means its midnight."""
    moment = _utc(value)
    return None if moment is None else moment.isoformat()


def _locked(answer: urllib3.BaseHTTPResponse) -> bool:
    """Whether an answer is one that an idempotent call may retry (500/503: SQLite's lock, a restart)."""
    return answer.status in (500, 503)


def _backfill_busy(answer: urllib3.BaseHTTPResponse) -> bool:
    """Whether ``POST /backfills`` was refused for a passing reason (see :meth:`AirflowClient.backfill`)."""
    text = answer.data.decode(errors="replace").lower()
    return (answer.status == 503 and "locked" in text) or (
        answer.status == 409 and "already a running backfill" in text)


def _retrying(waits: Sequence[float], should_retry: Callable[[Any], bool]):
    """A tenacity policy: retry while ``should_retry(answer)``, waiting ``waits`` in turn, then hand back the
    last answer (the caller turns it into an error)."""
    import tenacity

    return tenacity.Retrying(
        retry=tenacity.retry_if_result(should_retry),
        wait=tenacity.wait_chain(*(tenacity.wait_fixed(w) for w in waits)) if waits else tenacity.wait_none(),
        stop=tenacity.stop_after_attempt(len(waits) + 1),
        retry_error_callback=lambda state: state.outcome.result(),
        sleep=time.sleep,
    )


def _text(answer: urllib3.BaseHTTPResponse, limit: int) -> str:
    return answer.data.decode(errors="replace")[:limit]  # for error messages


def _json(answer: urllib3.BaseHTTPResponse) -> Any:
    """The decoded JSON body (``None`` when empty or 204)."""
    if answer.status == 204 or not answer.data:
        return None
    return json.loads(answer.data)


class AirflowClient:
    """Client of Airflow's REST API v2 with a JWT from ``POST /auth/token``.

    Every call re-authenticates once on 401 (an expired token). Idempotent calls (GET, PATCH, and the
    trigger, whose client-chosen run id makes a repeat harmless) are retried on 500/503 after
    :data:`RETRY_WAITS`. Any other status outside the accepted ones, and a failed connection, raise
    :class:`~evertune_airflow.stack_env.StackError` naming the call and the answer.
    """

    def __init__(self, base_url: str, password: str, username: str = ADMIN_USER, timeout: float = 30.0) -> None:
        from airflow_client.client import ApiClient, Configuration

        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        # urllib3 retries nothing on its own: tenacity is the one retry policy.
        self._api = ApiClient(Configuration(host=self.base_url, retries=False))
        self._token: str | None = None

    @classmethod
    def connect(cls, settings: Settings | None = None) -> AirflowClient:
        """Client for the embedded stack (URL from the ports, password from the generated file)."""
        password = admin_password(settings)
        if not password:
            raise StackError(f"no admin password in {passwords_file(settings or get_settings())}; is the stack up?")
        return cls(airflow_url(), password)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._api.rest_client.pool_manager.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _api_of(self, name: str) -> Any:
        """One of the generated API classes (``DagRunApi``...) bound to this client's connection pool."""
        from airflow_client.client import api

        return getattr(api, name)(self._api)

    def _raw(self, method: str, path: str, *, auth: bool, query: dict[str, Any] | None = None,
             body: Any = None) -> urllib3.BaseHTTPResponse:
        """One request to any path (``/auth/token``, or a call the generated client has no method for)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        serialized = self._api.param_serialize(
            method, path, query_params=list((query or {}).items()) or None, header_params=headers, body=body,
            auth_settings=["HTTPBearer"] if auth else [])
        return self._api.call_api(*serialized, _request_timeout=self.timeout).response

    def token(self) -> str:
        """A fresh access token for the configured user."""
        answer = self._connected("POST /auth/token", lambda: self._raw(
            "POST", "/auth/token", auth=False, body={"username": self.username, "password": self.password}))
        if answer.status not in (200, 201):
            raise StackError(f"POST /auth/token -> {answer.status}: {_text(answer, 300)}")
        self._token = _json(answer)["access_token"]
        return self._token

    def _connected(self, label: str, send: Callable[[], urllib3.BaseHTTPResponse]) -> urllib3.BaseHTTPResponse:
        """``send()``, with a failed connection or timeout turned into a :class:`StackError`."""
        import urllib3

        try:
            return send()
        except urllib3.exceptions.HTTPError as exc:
            raise StackError(f"{label}: no answer from {self.base_url} ({exc})") from exc

    def _authorized(self, label: str, send: Callable[[], urllib3.BaseHTTPResponse]) -> urllib3.BaseHTTPResponse:
        """``send()`` with the bearer token; on 401 (an expired token) fetch a new one and send once more."""
        self._api.configuration.access_token = self._token or self.token()
        answer = self._connected(label, send)
        if answer.status == 401:
            self._api.configuration.access_token = self.token()
            answer = self._connected(label, send)
        return answer

    def _send(self, label: str, send: Callable[[], urllib3.BaseHTTPResponse], retry: bool,
              ok: Sequence[int] = (200, 201, 204)) -> urllib3.BaseHTTPResponse:
        """Authorize, retry 500/503 when ``retry``; raise unless the final status is in ``ok``."""
        policy = _retrying(RETRY_WAITS if retry else (), _locked)
        answer = policy(self._authorized, label, send)
        if answer.status not in ok:
            raise StackError(f"{label} -> {answer.status}: {_text(answer, 500)}")
        return answer

    def _get(self, label: str, send: Callable[[], urllib3.BaseHTTPResponse]) -> Any:
        """An idempotent read: the decoded JSON."""
        return _json(self._send(label, send, retry=True))

    def request(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 204), retry: bool | None = None,
                params: dict[str, Any] | None = None, json: Any = None) -> Any:
        """Call any path of the API and return the decoded JSON body (``None`` when empty).

        SQLite serializes writers, so "database is locked" answers (500/503) are retried for idempotent
        calls: GET, PUT, PATCH, DELETE, and POST only with ``retry=True``.

        Raises:
            StackError: The final status code is not in ``ok``, or the server is unreachable.
        """
        retry = method.upper() != "POST" if retry is None else retry
        answer = self._send(f"{method} {path}", lambda: self._raw(method, path, auth=True, query=params, body=json),
                            retry, ok)
        return _json(answer)

    def get_or_none(self, path: str, **params: Any) -> Any:
        """GET ``path``; ``None`` on 404."""
        answer = self._send(f"GET {path}", lambda: self._raw("GET", path, auth=True, query=params), True,
                            ok=(200, 404))
        return None if answer.status == 404 else _json(answer)

    # -- pools -----------------------------------------------------------------------------

    def ensure_pools(self, pools: dict[str, tuple[int, str]]) -> None:
        """Create or update pools (name -> (slots, description)) in one bulk call."""
        from airflow_client.client.models import (
            ActionsInner3,
            BulkActionOnExistence,
            BulkBodyPoolBody,
            BulkCreateActionPoolBody,
            PoolBody,
        )

        if not pools:
            return
        entities = [PoolBody(name=name, slots=slots, description=description, include_deferred=False)
                    for name, (slots, description) in pools.items()]
        create = BulkCreateActionPoolBody(action="create", entities=entities,
                                          action_on_existence=BulkActionOnExistence.OVERWRITE)
        body = BulkBodyPoolBody(actions=[ActionsInner3(create)])
        pool_api = self._api_of("PoolApi")
        result = _json(self._send("PATCH /api/v2/pools", lambda: pool_api.bulk_pools_without_preload_content(
            body, _request_timeout=self.timeout), retry=True))
        errors = (result or {}).get("create", {}).get("errors") or []
        if errors:
            raise StackError(f"creating pools failed: {errors}")

    def pools(self) -> dict[str, int]:
        """Pool name -> slots."""
        pool_api = self._api_of("PoolApi")
        body = self._get("GET /api/v2/pools", lambda: pool_api.get_pools_without_preload_content(
            limit=100, _request_timeout=self.timeout))
        return {pool["name"]: pool["slots"] for pool in body["pools"]}

    # -- DAGs ------------------------------------------------------------------------------

    def import_errors(self) -> list[dict]:
        """Current DAG import errors (``filename``, ``stack_trace``...)."""
        errors_api = self._api_of("ImportErrorApi")
        return self._get("GET /api/v2/importErrors", lambda: errors_api.get_import_errors_without_preload_content(
            limit=100, _request_timeout=self.timeout))["import_errors"]

    def dag(self, dag_id: str) -> dict | None:
        """The DAG's details, or ``None`` when it has not been parsed (yet)."""
        dag_api = self._api_of("DAGApi")
        answer = self._send(f"GET /api/v2/dags/{dag_id}", lambda: dag_api.get_dag_without_preload_content(
            dag_id, _request_timeout=self.timeout), retry=True, ok=(200, 404))
        return None if answer.status == 404 else _json(answer)

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0, poll: float = 2.0) -> dict:
        """Wait until the DAG processor has parsed ``dag_id``.

        Raises:
            StackError: Timed out, or an import error names the DAG; the message lists the import errors.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.dag(dag_id)
            if found is not None and not found.get("is_stale"):
                return found
            errors = self.import_errors()
            mine = [e for e in errors if dag_id in e.get("filename", "") or dag_id in e.get("stack_trace", "")]
            if mine or time.monotonic() > deadline:
                listing = "\n".join(f"--- {e['filename']}\n{e['stack_trace'][-1500:]}" for e in (mine or errors))
                reason = "has import errors" if mine else f"not parsed after {timeout:.0f} s"
                raise StackError(f"DAG {dag_id} {reason}; import errors:\n{listing or '(none)'}")
            time.sleep(poll)

    def unpause(self, dag_id: str, paused: bool = False) -> dict:
        """Unpause a DAG (``paused=True``: pause it)."""
        from airflow_client.client.models import DAGPatchBody

        dag_api = self._api_of("DAGApi")
        return _json(self._send(f"PATCH /api/v2/dags/{dag_id}", lambda: dag_api.patch_dag_without_preload_content(
            dag_id, DAGPatchBody(is_paused=paused), update_mask=["is_paused"], _request_timeout=self.timeout),
            retry=True))

    # -- runs ------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: dict | None = None,
                logical_date: dt.date | dt.datetime | str | None = None, run_id: str | None = None) -> str:
        """Trigger a run and return its run id.

        Args:
            dag_id: The DAG.
            conf: Run configuration (the DAG's Params).
            logical_date: ``None`` makes a run without a logical date (Airflow 3 default for manual runs).
            run_id: Explicit run id; triggering an existing one again returns it without a new run.

        Raises:
            StackError: The API refused the run (e.g. another run already has this logical date).
        """
        from airflow_client.client.models import TriggerDAGRunPostBody

        # A client-chosen run id makes the POST safe to retry: a repeat answers 409 instead of a second run.
        run_id = run_id or f"manual__{dt.datetime.now(dt.UTC).isoformat()}"
        body = TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=_utc(logical_date), conf=conf or {})
        runs_api = self._api_of("DagRunApi")
        answer = _json(self._send(f"POST /api/v2/dags/{dag_id}/dagRuns", lambda: runs_api.
                                  trigger_dag_run_without_preload_content(dag_id, body, _request_timeout=self.timeout),
                                  retry=True, ok=(200, 201, 409)))
        if answer.get("dag_run_id") != run_id and self.get_or_none(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}") is None:
            raise StackError(f"triggering {dag_id} failed: {answer}")
        return run_id

    def backfill(self, dag_id: str, from_date: dt.date | dt.datetime | str, to_date: dt.date | dt.datetime | str,
                 max_active_runs: int = 1, conf: dict | None = None, reprocess_behavior: str = "none",
                 run_backwards: bool = False) -> dict:
        """Create a backfill through ``POST /api/v2/backfills``; the running scheduler executes it.

        Both dates are inclusive logical dates. Returns the backfill (``id``...) plus ``run_ids``: the
        backfill runs it created, oldest first.
        """
        from airflow_client.client.models import BackfillPostBody, ReprocessBehavior

        body = BackfillPostBody(dag_id=dag_id, from_date=_utc(from_date), to_date=_utc(to_date),
                                max_active_runs=max_active_runs, dag_run_conf=conf or {},
                                reprocess_behavior=ReprocessBehavior(reprocess_behavior), run_backwards=run_backwards)
        backfill_api = self._api_of("BackfillApi")

        def post() -> urllib3.BaseHTTPResponse:
            return self._authorized("POST /api/v2/backfills", lambda: backfill_api.
                                    create_backfill_without_preload_content(body, _request_timeout=self.timeout))

        # On SQLite, Airflow refuses backfill creation while the scheduler holds the write lock (503 "Database is
        # locked"); nothing was created then, so waiting and posting again is safe.
        # Likewise a 409 "already a running backfill": the scheduler marks a finished backfill completed on its
        # next loop, a few seconds after its last run ends.
        answer = _retrying(BACKFILL_WAITS, _backfill_busy)(post)
        if answer.status not in (200, 201):
            raise StackError(f"POST /api/v2/backfills -> {answer.status}: {_text(answer, 500)}")
        created = _json(answer)
        runs = self.dag_runs(dag_id, run_type="backfill", logical_date_gte=_iso(from_date),
                             logical_date_lte=_iso(to_date))
        created["run_ids"] = [r["dag_run_id"] for r in sorted(runs, key=lambda r: r["logical_date"] or "")]
        return created

    def dag_runs(self, dag_id: str, run_type: str | None = None, **filters: Any) -> list[dict]:
        """Runs of a DAG (``~`` for all DAGs), newest first, optionally filtered.

        Args:
            dag_id: The DAG, or ``~``.
            run_type: Only runs of this type (``backfill``, ``manual``, ``scheduled``...).
            **filters: Query parameters of ``GET /dags/{dag_id}/dagRuns`` (``state``, ``logical_date_gte``...);
                ``None`` values are left out.
        """
        runs_api = self._api_of("DagRunApi")
        params = {key: _query_value(key, value) for key, value in filters.items() if value is not None}
        if run_type:
            params["run_type"] = [run_type]
        runs: list[dict] = []
        while True:
            body = self._get(f"GET /api/v2/dags/{dag_id}/dagRuns", lambda: runs_api.
                             get_dag_runs_without_preload_content(dag_id, limit=100, offset=len(runs),
                                                                  order_by=["-run_after"],
                                                                  _request_timeout=self.timeout, **params))
            runs.extend(body["dag_runs"])
            if not body["dag_runs"] or len(runs) >= body["total_entries"]:
                return runs

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        """One run."""
        runs_api = self._api_of("DagRunApi")
        return self._get(f"GET /api/v2/dags/{dag_id}/dagRuns/{run_id}", lambda: runs_api.
                         get_dag_run_without_preload_content(dag_id, run_id, _request_timeout=self.timeout))

    def wait_for_runs(self, dag_id: str, run_ids: Sequence[str] | None = None, run_type: str | None = None,
                      timeout: float = 900.0, poll: float = 3.0, min_runs: int = 1,
                      stall_timeout: float = 600.0) -> list[dict]:
        """Wait until the given runs (or all runs of ``run_type``, at least ``min_runs``) have finished.

        Returns:
            The final run dicts (``state`` is ``success`` or ``failed``; check it).

        Raises:
            StackError: Timed out, or every unfinished run stayed queued for ``stall_timeout`` seconds while no
                run of the DAG was running; the message lists the unfinished runs and what :meth:`diagnose` found.
        """
        if run_ids is None and run_type is None:
            raise ValueError("give run_ids or run_type")
        deadline = time.monotonic() + timeout
        last_change, last_states = time.monotonic(), None
        while True:
            if run_ids is not None:
                runs = [self.dag_run(dag_id, run_id) for run_id in run_ids]
            else:
                runs = self.dag_runs(dag_id, run_type=run_type)
            pending = [r for r in runs if r["state"] not in FINISHED_RUN_STATES]
            if not pending and len(runs) >= (len(run_ids) if run_ids is not None else min_runs):
                return runs
            states = [(r["dag_run_id"], r["state"]) for r in runs]
            if states != last_states:
                last_change, last_states = time.monotonic(), states
            elif pending and all(r["state"] == "queued" for r in pending) and self.dag_runs(dag_id, state="running"):
                # Queued behind another run of the DAG (max_active_runs): waiting, not stalled.
                last_change = time.monotonic()
            listing = ", ".join(f"{r['dag_run_id']}={r['state']}" for r in pending) or f"{len(runs)} runs"
            # Queued runs that nobody starts for minutes while no run of the DAG runs mean the scheduler is not
            # scheduling: fail with what explains it instead of waiting out the whole timeout.
            stalled = pending and all(r["state"] == "queued" for r in pending) and (
                time.monotonic() - last_change > stall_timeout)
            if stalled or time.monotonic() > deadline:
                why = f"queued and not started for {stall_timeout:.0f} s" if stalled else f"not finished after {timeout:.0f} s"
                # The scheduler starts a queued run only once its run_after has passed (by the DB's clock).
                after = ", ".join(f"{r['dag_run_id']} run_after={r.get('run_after')}" for r in pending)
                raise StackError(f"runs of {dag_id} {why}: {listing}\n{after}\n{self.diagnose(dag_id)}")
            time.sleep(poll)

    def diagnose(self, dag_id: str) -> str:
        """What the API says about why a DAG's runs may not progress: DAG flags, health, backfills."""
        lines = []
        try:
            dag = self.dag(dag_id) or {}
            lines.append(f"dag {dag_id}: is_paused={dag.get('is_paused')} is_stale={dag.get('is_stale')} "
                         f"max_active_runs={dag.get('max_active_runs')}")
            monitor_api = self._api_of("MonitorApi")
            answer = self._send("GET /api/v2/monitor/health", lambda: monitor_api.get_health_without_preload_content(
                _request_timeout=self.timeout), retry=True, ok=range(100, 600))
            lines.append(f"health: {_text(answer, 1000)}")
            lines.append(f"server clock (Date header): {answer.headers.get('date')}; "
                         f"this process: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
            backfill_api = self._api_of("BackfillApi")
            backfills = self._get("GET /api/v2/backfills", lambda: backfill_api.
                                  list_backfills_without_preload_content(dag_id, _request_timeout=self.timeout))
            for item in backfills.get("backfills", []):
                lines.append(f"backfill {item.get('id')}: is_paused={item.get('is_paused')} "
                             f"completed_at={item.get('completed_at')} max_active_runs={item.get('max_active_runs')}")
        except StackError as exc:  # the diagnosis must not hide the original problem
            lines.append(f"(API unavailable while diagnosing: {exc})")
        return "\n".join(lines)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Task instances of one run (``task_id``, ``state``, ``try_number``, ``duration``...)."""
        ti_api = self._api_of("TaskInstanceApi")
        return self._get(f"GET /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", lambda: ti_api.
                         get_task_instances_without_preload_content(dag_id, run_id, limit=1000,
                                                                    _request_timeout=self.timeout))["task_instances"]


def _query_value(key: str, value: Any) -> Any:
    """A ``dagRuns`` filter in the generated client's types: lists for ``state``, datetimes for dates."""
    if key in ("state", "run_type") and isinstance(value, str):
        return [value]
    return _utc(value) if key.startswith(("logical_date_", "run_after_", "start_date_", "end_date_")) else value

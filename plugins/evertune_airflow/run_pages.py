"""The FastAPI app the evertune plugin mounts in the api-server (under :data:`URL_PREFIX`).

Routes:
    ``GET /runs/{dag_id}/{run_id}``: the run page (the "Evertune" tab on the DAG-run page).
    ``GET /data-docs/{dag_id}/{run_id}/{path}``: a file of the Great Expectations Data Docs site that the
    run's ``validate_documents`` task reported, served from that site's folder only.

Every route first enforces Airflow's own auth (:mod:`evertune_airflow.ui_auth`). Errors are short HTML
pages with a clear message (401/403/404), never a stack trace. A run whose verdict task has not returned
yet answers 200 with a "Not evaluated yet" banner.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures, whose types are imported
# inside create_app (lazily), at definition time.
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from evertune_airflow.run_data import RunRecord, load_run
from evertune_airflow.run_html import esc, page
from evertune_airflow.run_sections import run_body

URL_PREFIX = "/evertune"
#: ``href`` of the DAG-run tab (Airflow substitutes the placeholders).
RUN_PAGE_HREF = URL_PREFIX + "/runs/{DAG_ID}/{RUN_ID}"


def run_page_path(dag_id: str, run_id: str) -> str:
    """The server path of one run's page."""
    return f"{URL_PREFIX}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def data_docs_site(record: RunRecord) -> Path | None:
    """The local folder of the Data Docs site named by the run's ``validate_documents`` result, if any.

    Only ``file:`` URLs (or plain paths) to an existing folder count; anything else is ``None``.
    """
    validated = record.results.get("validate_documents")
    url = validated.get("data_docs") if isinstance(validated, dict) else None
    if not url or not isinstance(url, str):
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path))
    folder = path.parent if path.suffix == ".html" else path
    return folder if folder.is_dir() else None


def validation_page(site: Path, interval: str | None) -> Path | None:
    """The newest validation result page of ``interval`` in a Data Docs site (``validations/**/*.html``).

    GX names result folders after the run; ours carry the interval (``2026-11-02`` or ``20261102``).
    """
    pages = sorted(site.glob("validations/**/*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
    if interval:
        marks = (interval, interval.replace("-", ""))
        pages = [p for p in pages if any(mark in str(p.relative_to(site)) for mark in marks)]
    return pages[0] if pages else None


def data_docs_href(record: RunRecord) -> str | None:
    """Link to the interval's own validation result (else the site index), served by this app."""
    site = data_docs_site(record)
    if site is None:
        return None
    validated = record.results.get("validate_documents") or {}
    found = validation_page(site, validated.get("interval"))
    target = found.relative_to(site).as_posix() if found else "index.html"
    return (f"{URL_PREFIX}/data-docs/{quote(record.dag_id, safe='')}/{quote(record.run_id, safe='')}/"
            f"{quote(target)}")


def _message(status_code: int, title: str, text: str) -> Any:
    from fastapi.responses import HTMLResponse

    body = f"<h1>{esc(title)}</h1><p>{esc(text)}</p>"
    return HTMLResponse(page(title, body), status_code=status_code)


def render_run(record: RunRecord) -> str:
    """The full HTML of one run's page."""
    body = run_body(record, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"), data_docs_href=data_docs_href(record))
    return page(f"evertune: {record.dag_id} {record.run_id}", body)


def create_app() -> Any:
    """Build the FastAPI app (called once when the plugin module is imported by the api-server)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse
    from starlette.concurrency import run_in_threadpool

    from evertune_airflow.ui_auth import authorize_run_page

    app = FastAPI(title="evertune run pages", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> HTMLResponse:
        titles = {401: "Not authenticated", 403: "Forbidden", 404: "Not found"}
        response = _message(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))
        if exc.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def authorized_run(request: Request, dag_id: str, run_id: str) -> RunRecord:
        await authorize_run_page(request, dag_id)
        record = await run_in_threadpool(load_run, dag_id, run_id)
        if record is None:
            raise HTTPException(404, f"No run {run_id!r} of DAG {dag_id!r}: check the DAG id and the run id.")
        return record

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        record = await authorized_run(request, dag_id, run_id)
        return HTMLResponse(await run_in_threadpool(render_run, record))

    @app.get("/data-docs/{dag_id}/{run_id}/{path:path}")
    async def data_docs(request: Request, dag_id: str, run_id: str, path: str) -> FileResponse:
        record = await authorized_run(request, dag_id, run_id)
        site = data_docs_site(record)
        if site is None:
            raise HTTPException(404, "This run reported no Great Expectations Data Docs.")
        root = site.resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"No file {path!r} in this run's Data Docs.")
        return FileResponse(target)

    return app

"""Read-only summaries of the pipeline's state: knowledge-base tables, registered models, DAG runs.

Used by the demo and ``make status``-style reports. Nothing here writes: LanceDB tables are opened and
checked out by tag in memory only, the MLflow registry is only queried, and a store that does not exist
yet is reported as absent instead of being created.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from evertune.config import Params
from evertune.settings import Settings


def _local_path(uri: str) -> Path | None:
    """The filesystem path of a local URI, ``None`` for remote ones."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def _iso_time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, int | float):  # MLflow: milliseconds since the epoch
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC).isoformat(timespec="seconds")
    return str(value)


def kb_summary(params: Params, settings: Settings) -> dict[str, Any]:
    """Knowledge-base tables in LanceDB: versions, row counts and where each tag points.

    Args:
        params: Pipeline parameters (``index.table_prefix``, ``index.publish_tag``).
        settings: Deployment settings (``lancedb_uri``).

    Returns:
        ``{"available", "uri", "reason", "publish_tag", "tables": [...]}``; each table has ``name``,
        ``version``, ``rows``, ``n_versions``, ``updated``, ``tags`` (tag -> version) and, when the
        publish tag exists, ``published_version`` and ``published_rows``. ``available`` is false (with a
        ``reason``) when there is no database yet.
    """
    uri = settings.lancedb_uri
    summary: dict[str, Any] = {"available": False, "uri": uri, "reason": None,
                               "publish_tag": params.index.publish_tag, "tables": []}
    path = _local_path(uri)
    if path is not None and not path.is_dir():
        summary["reason"] = f"no LanceDB database at {path}"
        return summary
    import lancedb

    db = lancedb.connect(uri)
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names += list(page.tables)
        token = page.page_token
        if not token:
            break
    summary["available"] = True
    for name in sorted(n for n in names if n.startswith(params.index.table_prefix)):
        summary["tables"].append(_table_summary(db, name, params.index.publish_tag))
    if not summary["tables"]:
        summary["reason"] = f"no table named {params.index.table_prefix}* yet"
    return summary


def _table_summary(db: Any, name: str, publish_tag: str) -> dict[str, Any]:
    table = db.open_table(name)
    versions = table.list_versions()
    tags = {tag: int(info["version"]) for tag, info in sorted(table.tags.list().items())}
    entry: dict[str, Any] = {
        "name": name,
        "version": int(table.version),
        "rows": int(table.count_rows()),
        "n_versions": len(versions),
        "updated": _iso_time(versions[-1]["timestamp"]) if versions else None,
        "tags": tags,
        "published_version": tags.get(publish_tag),
        "published_rows": None,
    }
    if publish_tag in tags:
        # checkout() only moves this in-memory handle; the table on disk is untouched.
        table.checkout(tags[publish_tag])
        entry["published_rows"] = int(table.count_rows())
    return entry


def _mlflow_reachable(uri: str, timeout: float = 3.0) -> str | None:
    """``None`` when the MLflow server answers ``/health``, else the reason (avoids minutes of client retries)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            return None if answer.status == 200 else f"MLflow server answered {answer.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"MLflow server {uri} unreachable: {exc}"


def _decode_tag(value: str) -> Any:
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def model_summary(params: Params, settings: Settings) -> dict[str, Any]:
    """Registered versions of ``register.model_name``: aliases, gate tags, metrics of their runs.

    Args:
        params: Pipeline parameters (``registry.model_name``).
        settings: Deployment settings (``mlflow_tracking_uri``).

    Returns:
        ``{"available", "tracking_uri", "reason", "model_name", "aliases": {alias: version},
        "versions": [...]}``; each version has ``version``, ``aliases``, ``status``, ``run_id``,
        ``created``, ``tags``, ``gate`` (the ``gate*`` tags, JSON decoded) and ``metrics`` of its run.
        ``available`` is false (with a ``reason``) when the store or server is not there.
    """
    uri = settings.mlflow_tracking_uri
    name = params.registry.model_name
    summary: dict[str, Any] = {"available": False, "tracking_uri": uri, "reason": None, "model_name": name,
                               "aliases": {}, "versions": []}
    if uri.startswith("sqlite:///"):
        db_file = Path(uri.removeprefix("sqlite:///"))
        if not db_file.is_file():
            summary["reason"] = f"no MLflow database at {db_file}"
            return summary
    elif uri.startswith(("http://", "https://")):
        summary["reason"] = _mlflow_reachable(uri)
        if summary["reason"]:
            return summary
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        summary["available"] = True
        summary["reason"] = f"model {name} not registered yet"
        return summary
    summary["available"] = True
    summary["aliases"] = {alias: str(version) for alias, version in sorted(registered.aliases.items())}
    versions = client.search_model_versions(f"name='{name}'")
    for mv in sorted(versions, key=lambda v: int(v.version)):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(client.get_run(mv.run_id).data.metrics)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        tags = dict(mv.tags or {})
        summary["versions"].append({
            "version": str(mv.version),
            "aliases": sorted(a for a, v in summary["aliases"].items() if v == str(mv.version)),
            "status": mv.status,
            "run_id": mv.run_id,
            "created": _iso_time(mv.creation_timestamp),
            "tags": tags,
            "gate": {key: _decode_tag(value) for key, value in sorted(tags.items()) if key.startswith("gate")},
            "metrics": metrics,
        })
    return summary


def _duration(run: dict[str, Any]) -> str:
    seconds = run.get("duration")
    if seconds is None and run.get("start_date") and run.get("end_date"):
        start = dt.datetime.fromisoformat(run["start_date"])
        end = dt.datetime.fromisoformat(run["end_date"])
        seconds = (end - start).total_seconds()
    return "-" if seconds is None else f"{float(seconds):.0f}s"


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_summary(runs: list[dict[str, Any]], kb: dict[str, Any], models: dict[str, Any],
                   urls: dict[str, str], primary_metric: str | None = None) -> str:
    """Render runs, knowledge base and registry as a readable text block.

    Args:
        runs: DAG runs as returned by Airflow's REST API (``dag_id``, ``dag_run_id``, ``run_type``,
            ``logical_date``, ``state``, ``duration`` / ``start_date`` + ``end_date``).
        kb: :func:`kb_summary` output.
        models: :func:`model_summary` output.
        urls: Label -> URL (or any text), printed last.
        primary_metric: Metric shown per model version (default: every metric, shortened).

    Returns:
        The text, without a trailing newline.
    """
    lines = ["== Airflow runs =="]
    if runs:
        lines.append(f"  {'dag':<24} {'type':<10} {'logical date':<12} {'state':<8} {'took':>6}")
        ordered = sorted(runs, key=lambda r: (r.get("dag_id", ""), r.get("logical_date") or r.get("run_after") or ""))
        for run in ordered:
            date = (run.get("logical_date") or run.get("run_after") or "-")[:10]
            lines.append(f"  {run.get('dag_id', '?'):<24} {run.get('run_type', '?'):<10} {date:<12} "
                         f"{run.get('state', '?'):<8} {_duration(run):>6}")
        states: dict[str, int] = {}
        for run in runs:
            states[run.get("state", "?")] = states.get(run.get("state", "?"), 0) + 1
        lines.append("  " + ", ".join(f"{count} {state}" for state, count in sorted(states.items())))
    else:
        lines.append("  (no runs)")

    lines.append(f"== Knowledge base ({kb.get('uri')}) ==")
    if not kb.get("tables"):
        lines.append(f"  {kb.get('reason') or 'no tables'}")
    for table in kb.get("tables", []):
        tags = ", ".join(f"{tag}->v{version}" for tag, version in table["tags"].items()) or "no tags"
        lines.append(f"  {table['name']}: v{table['version']}, {table['rows']} rows, "
                     f"{table['n_versions']} versions; {tags}")
        if table.get("published_version") is not None:
            lines.append(f"    published ({kb.get('publish_tag')}): v{table['published_version']}, "
                         f"{table['published_rows']} rows")

    lines.append(f"== Model registry: {models.get('model_name')} ({models.get('tracking_uri')}) ==")
    if not models.get("versions"):
        lines.append(f"  {models.get('reason') or 'no versions'}")
    for version in models.get("versions", []):
        aliases = ",".join(version["aliases"]) or "-"
        if primary_metric and primary_metric in version["metrics"]:
            metric = f"{primary_metric}={version['metrics'][primary_metric]:.4f}"
        else:
            metric = " ".join(f"{k}={v:.3g}" for k, v in sorted(version["metrics"].items())[:4])
        lines.append(f"  v{version['version']:<4} {aliases:<22} {metric}")
        for key, value in version["gate"].items():
            lines.append(f"        {key}: {_short(value, 100)}")

    if urls:
        lines.append("== Open ==")
        width = max(len(label) for label in urls)
        lines += [f"  {label:<{width}}  {url}" for label, url in urls.items()]
    return "\n".join(lines)

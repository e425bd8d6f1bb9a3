"""The content of the evertune run pages: the gate verdict of a ``tune_model`` run, the counts and retrieval
quality of a ``refresh_knowledge_base`` run. Pure functions of a :class:`~evertune_airflow.run_data.RunRecord`
(no database, no Airflow imports), so they are unit-tested on plain dicts.

The task ids and XCom keys read here are those the two DAGs and their steps return
(``evertune.tuning.steps`` and ``evertune.kb.refresh``); anything else a task returned is still shown,
folded, under "All task results".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from evertune_airflow.run_data import RunRecord
from evertune_airflow.run_html import (
    badge,
    bullet_list,
    esc,
    fmt,
    key_values,
    link,
    raw_results,
    section,
    table,
    task_state_table,
)

TUNE_DAG = "tune_model"
REFRESH_DAG = "refresh_knowledge_base"
#: The task whose result marks a run as evaluated, per DAG.
VERDICT_TASK = {TUNE_DAG: "gate", REFRESH_DAG: "evaluate_retrieval"}
NOT_EVALUATED = "Not evaluated yet"


def evaluated(record: RunRecord) -> bool:
    """Whether the run's verdict task has returned (for DAGs without one: always)."""
    task = VERDICT_TASK.get(record.dag_id)
    return task is None or task in record.results


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def header(record: RunRecord) -> str:
    """Title, run id, state and note; the "not evaluated yet" banner when the verdict task has not returned."""
    parts = [f"<h1>{esc(record.dag_id)} <span class='muted'>/ {esc(record.run_id)}</span></h1>",
             f"<p>Run state: <b>{esc(record.state or 'unknown')}</b></p>"]
    if record.note:
        parts.append(f"<p>Note: {esc(record.note)}</p>")
    if not evaluated(record):
        task = VERDICT_TASK[record.dag_id]
        state = record.task_states.get(task) or "not started"
        parts.append(f'<div class="banner"><b>{NOT_EVALUATED}</b>: task <code>{esc(task)}</code> has not returned a '
                     f"result (its state: {esc(state)}). What the run has produced so far is shown below.</div>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- tune_model


def decision_section(gate: Mapping[str, Any]) -> str:
    """The gate decision (GateDecision.to_dict()): action, passed, every reason and every check."""
    action = str(gate.get("action", "unknown"))
    passed = bool(gate.get("passed"))
    kind = "ok" if passed else ("warn" if action == "hold" else "bad")
    checks = [c for c in gate.get("checks") or [] if isinstance(c, Mapping)]
    columns = sorted({key for check in checks for key in check} - {"passed"})
    rows = [[badge("pass", "ok") if c.get("passed") else badge("fail", "bad"), *(c.get(k) for k in columns)]
            for c in checks]
    body = (f"<p>Decision: {badge(action, kind)} (passed: {fmt(passed)})</p><h3>Reasons</h3>"
            f"{bullet_list(gate.get('reasons') or [])}<h3>Checks</h3>{table(['', *columns], rows, raw_columns=[0])}")
    return section("Gate decision", body, anchor="decision")


def _interval(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return "n/a"


def metrics_section(evaluation: Mapping[str, Any]) -> str:
    """Challenger against champion (and base model, when evaluated) with the paired bootstrap CIs."""
    challenger = _dict(evaluation.get("challenger"))
    champion = _dict(evaluation.get("champion"))
    base = _dict(evaluation.get("base"))
    cis = _dict(evaluation.get("ci"))
    base_cis = _dict(evaluation.get("ci_base"))
    rows = []
    for name in sorted(set(challenger) | set(champion) | set(base)):
        mine, theirs = challenger.get(name), champion.get(name)
        delta = mine - theirs if isinstance(mine, int | float) and isinstance(theirs, int | float) else None
        row = [name, mine, theirs, delta, _interval(cis.get(name))]
        rows.append([*row, base.get(name), _interval(base_cis.get(name))] if base else row)
    headers = ["metric", "challenger", f"champion v{evaluation.get('champion_version')}"
               if evaluation.get("champion_version") is not None else "champion (none)",
               "challenger - champion", "95% CI of the difference"]
    if base:
        headers += ["base model (untuned)", "95% CI of challenger - base"]
    note = f"<p class='muted'>{esc(evaluation.get('n'))} golden questions.</p>"
    if not champion:
        note += "<p class='muted'>No champion yet: there is nothing to compare against.</p>"
    fresh = _dict(evaluation.get("freshness"))
    if fresh.get("n"):
        shares = {k: _dict(fresh.get(k)).get("fresh_share") for k in ("challenger", "champion")}
        note += (f"<p>Freshness on {esc(fresh['n'])} changed-fact probes since {esc(fresh.get('since'))}: "
                 f"challenger {esc(fmt(shares['challenger']))}, champion {esc(fmt(shares['champion']))}.</p>")
    return section("Metrics against the champion", note + table(headers, rows), anchor="metrics")


def drift_section(drift: Mapping[str, Any]) -> str:
    """Drift severity, its reasons, the reference (champion data) and the report's other fields."""
    report = _dict(drift.get("report"))
    severity = str(report.get("severity", "unknown"))
    kind = {"none": "ok", "low": "ok", "moderate": "warn", "warn": "warn"}.get(severity, "bad")
    reference = drift.get("reference")
    others = {k: v for k, v in report.items() if k not in ("severity", "reasons")}
    body = (f"<p>Severity: {badge(severity, kind)}</p>{bullet_list(report.get('reasons') or [])}"
            f"<p>Reference: {fmt(reference) if reference else 'none (no champion with recorded data)'}</p>"
            f"{key_values(others) if others else ''}")
    return section("Drift", body, anchor="drift")


def mlflow_links(record: RunRecord, tracking_uri: str | None) -> str:
    """Links to the MLflow run and the registered model version (when the tracking URI is http(s))."""
    base = (tracking_uri or "").rstrip("/")
    web = base if base.startswith(("http://", "https://")) else None
    run_id = _dict(record.results.get("train")).get("run_id") or _dict(record.results.get("check_drift")).get("run_id")
    candidate = _dict(_dict(record.results.get("register")).get("candidate"))
    items = []
    if run_id:
        items.append(link(f"{web}/#/runs/{quote(str(run_id))}" if web else None, f"MLflow run {run_id}"))
    if candidate.get("model_name") and candidate.get("version") is not None:
        name, version = str(candidate["model_name"]), str(candidate["version"])
        url = f"{web}/#/models/{quote(name, safe='')}/versions/{quote(version)}" if web else None
        items.append(link(url, f"model {name} v{version}"))
    if not items:
        return section("MLflow", '<p class="muted">no MLflow run recorded yet</p>', anchor="mlflow")
    where = f"<p class='muted'>Tracking server: {esc(base or 'not configured')}</p>"
    return section("MLflow", where + "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>", anchor="mlflow")


def registered_section(register: Mapping[str, Any], record: RunRecord | None = None) -> str:
    """The registered candidate and what happened to the ``champion`` alias (the ``promote`` task's result, or
    the states of ``approval`` and ``promote`` when it did not move)."""
    promoted = _dict(record.results.get("promote")) if record is not None else {}
    promotion = promoted.get("promotion") or register.get("promotion")
    body = f"<h3>Candidate</h3>{key_values(_dict(register.get('candidate')))}"
    if promotion:
        body += f"<h3>Promotion</h3>{key_values({**_dict(promotion), 'approved_by': promoted.get('approved_by')})}"
    elif record is not None:
        states = {task: record.task_states.get(task) or "not started" for task in ("approval", "promote")}
        body += (f"<h3>Promotion</h3><p><code>champion</code> did not move in this run "
                 f"(approval {esc(states['approval'])}, promote {esc(states['promote'])}).</p>")
    return section("Registered", body, anchor="registered")


def tune_body(record: RunRecord, tracking_uri: str | None) -> str:
    """Every section of a ``tune_model`` run page, in reading order, for what the run has produced."""
    results = record.results
    parts = []
    if isinstance(results.get("gate"), Mapping):
        parts.append(decision_section(results["gate"]))
    if isinstance(results.get("evaluate"), Mapping):
        parts.append(metrics_section(results["evaluate"]))
    for key in ("freshness", "manifest"):
        found = {t: {**({f"{key}_sha256": v[f"{key}_sha256"]} if v.get(f"{key}_sha256") else {}), **v[key]}
                 for t, v in results.items() if isinstance(v, Mapping) and isinstance(v.get(key), Mapping)}
        for task_id, value in found.items():
            parts.append(section(f"{key.capitalize()} ({task_id})", key_values(value), anchor=key))
    if isinstance(results.get("check_drift"), Mapping):
        parts.append(drift_section(results["check_drift"]))
    if isinstance(results.get("register"), Mapping):
        parts.append(registered_section(results["register"], record))
    parts.append(mlflow_links(record, tracking_uri))
    return "".join(parts)


# ----------------------------------------------------------------------------------- refresh_knowledge_base


INGEST_KEYS = ("partition_found", "records_read", "documents", "tombstones", "qa", "quarantined")
CHUNK_KEYS = ("docs_upserted", "docs_deleted", "docs_unchanged", "chunks_embedded", "chunks_inserted",
              "chunks_updated", "chunks_deleted", "chunks_unchanged", "rows_total", "version", "previous_version")


def counts_section(results: Mapping[str, Any], data_docs_href: str | None) -> str:
    """Ingested, quarantined by reason (with the interval's validation result), and what the index sync did."""
    ingest = _dict(results.get("ingest_documents"))
    validate = _dict(results.get("validate_documents"))
    synced = _dict(results.get("sync_index"))
    by_reason = _dict(validate.get("quarantine_by_reason"))
    body = f"<h3>Ingested</h3>{key_values(ingest, INGEST_KEYS)}"
    body += "<h3>Quarantined by reason</h3>" + table(("reason", "count"), sorted(by_reason.items()))
    if validate.get("counts"):
        body += f"<h3>Validation counts</h3>{key_values(_dict(validate['counts']))}"
    if data_docs_href:
        body += f"<p>Great Expectations: {link(data_docs_href, 'validation result of this interval')}</p>"
    body += f"<h3>Chunks</h3>{key_values(synced, CHUNK_KEYS)}"
    return section("Counts", body, anchor="counts")


def retrieval_section(evaluation: Mapping[str, Any]) -> str:
    """recall@k and MRR of the candidate table version against the published one, and the candidate's misses."""
    candidate = _dict(evaluation.get("candidate"))
    published = _dict(evaluation.get("published"))
    k = evaluation.get("k")
    rows = [[f"recall@{k}", candidate.get("recall_at_k"), published.get("recall_at_k") if published else None],
            ["MRR", candidate.get("mrr"), published.get("mrr") if published else None],
            ["queries", candidate.get("n_queries"), published.get("n_queries") if published else None]]
    headers = ("", f"candidate v{candidate.get('version')}",
               f"published v{published.get('version')}" if published else "published (none yet)")
    misses = [m for m in candidate.get("misses") or [] if isinstance(m, Mapping)]
    body = (f"<p class='muted'>Table {esc(evaluation.get('table'))}, mode {esc(evaluation.get('mode'))}, k={esc(k)}.</p>"
            f"{table(headers, rows)}<h3>Misses of the candidate ({len(misses)})</h3>"
            + table(("query", "recall", "retrieved documents"),
                    ((m.get("query_id"), m.get("recall"), ", ".join(map(str, m.get("retrieved") or []))) for m in misses)))
    return section("Retrieval quality", body, anchor="retrieval")


def production_section(record: RunRecord) -> str:
    """Where ``production`` points after this run (or that it did not move, and why that is)."""
    published = record.results.get("publish_index")
    if isinstance(published, Mapping):
        moved = "moved to" if published.get("changed") else "stays at"
        body = (f"<p><code>production</code> {moved} version <b>{esc(published.get('table_version'))}</b> of "
                f"{esc(published.get('table'))} (previously {esc(published.get('previous_version'))}).</p>"
                + key_values(published, ("data_version",)))
    else:
        state = record.task_states.get("publish_index") or "not started"
        body = (f"<p><code>production</code> was not moved by this run: publish_index {esc(state)} "
                "(a failed publish means the quality gate refused the candidate).</p>")
    return section("Production tag", body, anchor="production")


def refresh_body(record: RunRecord, data_docs_href: str | None) -> str:
    """Every section of a ``refresh_knowledge_base`` run page."""
    parts = [counts_section(record.results, data_docs_href)]
    if isinstance(record.results.get("evaluate_retrieval"), Mapping):
        parts.append(retrieval_section(record.results["evaluate_retrieval"]))
    parts.append(production_section(record))
    return "".join(parts)


def run_body(record: RunRecord, *, tracking_uri: str | None, data_docs_href: str | None) -> str:
    """The whole page body for any DAG run: the DAG's own sections, task states and all raw results."""
    if record.dag_id == TUNE_DAG:
        content = tune_body(record, tracking_uri)
    elif record.dag_id == REFRESH_DAG:
        content = refresh_body(record, data_docs_href)
    else:
        content = '<p class="muted">evertune has no summary for this DAG; its task results are listed below.</p>'
    return (header(record) + content + section("Task states", task_state_table(record.task_states))
            + section("All task results", raw_results(record.results)))

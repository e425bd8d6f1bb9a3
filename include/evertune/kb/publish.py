"""Publish a candidate index version behind the ``production`` tag, only when retrieval quality holds.

Readers open the tag (``index.publish_tag``), never the latest version, so publishing is one tag move.
LanceDB (0.40, Lance refs) stores a tag as ``_refs/tags/<name>.json``; ``tags.update`` checks that the tag
and the target version exist and then replaces that file with a single object-store ``put``. A local
``put`` writes a temporary file and renames it over the old one, and S3/GCS/Azure replace objects
whole, so a reader resolving the tag sees either the old or the new version, never a missing or torn
tag (unlike delete + create). It is not a compare-and-swap: two publishers racing both succeed and the
last one wins, so run publishes of one table serially (one DAG run at a time, or an Airflow pool).

The publish log (``<table>__publish_log``) is an append-only event list: ``publish``, ``rollback`` and
``rejected`` events with version, previous version, interval, data version and metrics. Retrying a
publish of the version already live appends nothing, so the log stays one entry per real change.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError, NothingToDo, QualityGateFailed
from evertune.kb.table import SYNCS_SUFFIX, connect, open_table, published_version, read_table_rows, table_name_for

if TYPE_CHECKING:
    import pyarrow as pa

    from evertune.config import Params
    from evertune.settings import Settings

LOG_SUFFIX = "__publish_log"


def _log_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("action", pa.string()),
            pa.field("version", pa.int64()),
            pa.field("previous_version", pa.int64()),
            pa.field("interval", pa.string()),
            pa.field("data_version", pa.string()),
            pa.field("metrics", pa.string()),
            pa.field("reasons", pa.string()),
            pa.field("recorded_at", pa.string()),  # informational only; nothing is keyed on it
        ]
    )


def _open_table_or_fail(db: Any, name: str) -> Any:
    table = open_table(db, name)
    if table is None:
        raise NothingToDo(f"knowledge-base table {name!r} does not exist yet (nothing synced)")
    return table


def _read_log(db: Any, table_name: str) -> list[dict[str, Any]]:
    log_table = open_table(db, table_name + LOG_SUFFIX)
    if log_table is None:
        return []
    rows = read_table_rows(log_table, _log_schema().names)
    return sorted(rows, key=lambda row: row["seq"])


def _append_log(db: Any, table_name: str, event: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa

    name = table_name + LOG_SUFFIX
    log_table = open_table(db, name)
    if log_table is None:
        log_table = db.create_table(name, schema=_log_schema(), exist_ok=True)
    existing = _read_log(db, table_name)
    row = {
        "seq": (existing[-1]["seq"] + 1) if existing else 1,
        "action": event["action"],
        "version": event["version"],
        "previous_version": event.get("previous_version"),
        "interval": event.get("interval"),
        "data_version": event.get("data_version"),
        "metrics": json.dumps(event.get("metrics") or {}, sort_keys=True),
        "reasons": json.dumps(event.get("reasons") or []),
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    # Keyed on seq: a retry that computed the same seq cannot add a duplicate row.
    log_table.merge_insert("seq").when_not_matched_insert_all().execute(
        pa.Table.from_pylist([row], schema=_log_schema())
    )
    return row


def _published_stack(events: list[dict[str, Any]]) -> list[int]:
    """Versions that were live, oldest first; the last one is live now. Rolled-back versions are popped."""
    stack: list[int] = []
    for event in events:
        version = int(event["version"])
        if event["action"] == "publish":
            if not stack or stack[-1] != version:
                stack.append(version)
        elif event["action"] == "rollback":
            if version in stack:
                del stack[len(stack) - stack[::-1].index(version) :]
            else:
                stack = [v for v in stack if v < version] + [version]
    return stack


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "metrics": json.loads(row["metrics"] or "{}"), "reasons": json.loads(row["reasons"] or "[]")}


def _interval_of(db: Any, table_name: str, version: int) -> str | None:
    """The interval whose sync produced ``version`` (the latest sync at or before it)."""
    syncs = open_table(db, table_name + SYNCS_SUFFIX)
    if syncs is None:
        return None
    rows = [row for row in read_table_rows(syncs, ["interval", "table_version"]) if row["table_version"] <= version]
    return max(rows, key=lambda row: row["table_version"])["interval"] if rows else None


def gate_reasons(evaluation: dict[str, Any], params: Params) -> list[str]:
    """Why a candidate must not be published (empty when it passes).

    Absolute floors (``retrieval.min_recall_at_k``, ``retrieval.min_mrr``) always apply; drops against the
    published version (``max_recall_drop``, ``max_mrr_drop``) apply when something is published.
    """
    rules = params.retrieval
    candidate = evaluation["candidate"]
    if not candidate.get("n_queries"):
        return ["no golden queries with relevant documents: refusing to publish an unevaluated index"]
    reasons = []
    recall, mrr = candidate["recall_at_k"], candidate["mrr"]
    k = evaluation.get("k", rules.k)
    if recall < rules.min_recall_at_k:
        reasons.append(f"recall@{k} {recall:.3f} < floor {rules.min_recall_at_k:.3f}")
    if mrr < rules.min_mrr:
        reasons.append(f"MRR {mrr:.3f} < floor {rules.min_mrr:.3f}")
    live = evaluation.get("published")
    if live and live.get("n_queries") and live["version"] != candidate["version"]:
        if live["recall_at_k"] - recall > rules.max_recall_drop:
            reasons.append(
                f"recall@{k} dropped {live['recall_at_k'] - recall:.3f} vs published v{live['version']} "
                f"({live['recall_at_k']:.3f} -> {recall:.3f}) > max_recall_drop {rules.max_recall_drop:.3f}"
            )
        if live["mrr"] - mrr > rules.max_mrr_drop:
            reasons.append(
                f"MRR dropped {live['mrr'] - mrr:.3f} vs published v{live['version']} "
                f"({live['mrr']:.3f} -> {mrr:.3f}) > max_mrr_drop {rules.max_mrr_drop:.3f}"
            )
    return reasons


def _metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    candidate, live = evaluation["candidate"], evaluation.get("published") or {}
    return {
        "k": evaluation.get("k"),
        "mode": evaluation.get("mode"),
        "n_queries": candidate.get("n_queries"),
        "recall_at_k": candidate.get("recall_at_k"),
        "mrr": candidate.get("mrr"),
        "published_version": live.get("version"),
        "published_recall_at_k": live.get("recall_at_k"),
        "published_mrr": live.get("mrr"),
        "golden_sha256": evaluation.get("golden_sha256"),
        "golden_version": evaluation.get("golden_version"),
        "golden_unreviewed_drafts": bool((evaluation.get("golden") or {}).get("unreviewed_drafts")),
    }


def _move_tag(table: Any, tag: str, version: int) -> None:
    if published_version(table, tag) is None:
        table.tags.create(tag, version)
    else:
        table.tags.update(tag, version)  # one atomic object replace; see the module docstring


def _check_evaluation_of(evaluation: dict[str, Any], table_name: str, version: int) -> None:
    """Refuse an evaluation of another table or version.

    Raises:
        ConfigError: The evaluation's table or candidate version differs.
    """
    candidate = evaluation.get("candidate") or {}
    if evaluation.get("table") != table_name or candidate.get("version") != version:
        raise ConfigError(
            f"evaluation is of {evaluation.get('table')}@v{candidate.get('version')}, not {table_name}@v{version}"
        )


def _log_rejection(db: Any, table_name: str, events: list[dict[str, Any]], rejection: dict[str, Any]) -> None:
    """Append a ``rejected`` event unless the last event already rejected the same version (a retry)."""
    last = events[-1] if events else None
    if not (last and last["action"] == "rejected" and last["version"] == rejection["version"]):
        _append_log(db, table_name, rejection)


def _refuse_superseded(table: Any, version: int, tag: str, live: int | None) -> None:
    """Refuse a candidate older than the table's latest version.

    Days refreshed concurrently or out of order: a later sync already built on this version. Its own run judges
    the newer state; an intermediate one (a later day synced before an earlier one) may lack documents, and
    publishing it could move the tag backwards. A sync's index steps (full-text rebuild, compaction) come before
    it reports its candidate, so a candidate is the latest version until the next sync writes.

    Raises:
        NothingToDo: ``version`` is older than the latest version.
    """
    head = table.version
    if version < head:
        raise NothingToDo(
            f"index {table.name}@v{version} is superseded by v{head} (a later sync); its run decides what is "
            f"published ({tag} is at v{live})"
        )


def publish(
    table_name: str,
    version: int,
    evaluation: dict[str, Any],
    params: Params,
    settings: Settings,
    *,
    data_version: str | None = None,
    interval: str | None = None,
) -> dict[str, Any]:
    """Move the publish tag to ``version`` if its evaluation passes the retrieval gate.

    Args:
        table_name: The chunk table (``SyncResult.table_name``).
        version: The candidate version (``SyncResult.version``).
        evaluation: :func:`evertune.kb.retrieval.evaluate_retrieval` of exactly this table and version.
        params: Pipeline params (``retrieval`` gate, ``index.publish_tag``).
        settings: Deployment settings.
        data_version: The data version (e.g. the DVC/git revision of the validated data), recorded.
        interval: The data interval, recorded; looked up from the sync ledger when omitted.

    Returns:
        ``{"published": True, "table", "version", "previous_version", "changed", "metrics", "event"}``;
        ``changed`` is False when the tag already pointed at ``version`` (an idempotent retry).

    Raises:
        ConfigError: The evaluation is of another table or version.
        NothingToDo: A later sync has already written a newer version: this candidate is superseded, and the run
            that wrote the newest version publishes (or rejects) it. The tag never moves backwards here.
        QualityGateFailed: A floor or a drop limit is violated. The tag stays where it was and the candidate
            version is kept (nothing restored or deleted); the rejection is logged.
    """
    _check_evaluation_of(evaluation, table_name, version)
    db = connect(settings)
    table = _open_table_or_fail(db, table_name)
    tag = params.index.publish_tag
    live = published_version(table, tag)
    _refuse_superseded(table, version, tag, live)
    interval = interval or _interval_of(db, table_name, version)
    metrics = _metrics(evaluation)
    events = _read_log(db, table_name)

    reasons = gate_reasons(evaluation, params)
    if reasons:
        rejection = {"action": "rejected", "version": version, "previous_version": live, "interval": interval,
                     "data_version": data_version, "metrics": metrics, "reasons": reasons}  # fmt: skip
        _log_rejection(db, table_name, events, rejection)
        raise QualityGateFailed(
            f"index {table_name}@v{version} not published ({tag} stays at v{live}): " + "; ".join(reasons), reasons
        )

    stack = _published_stack(events)
    changed = live != version
    if changed:
        _move_tag(table, tag, version)
    event = None
    if changed or not stack or stack[-1] != version:
        # Also repairs a crash between the tag move and the log write.
        event = _append_log(
            db,
            table_name,
            {"action": "publish", "version": version, "previous_version": live, "interval": interval,
             "data_version": data_version, "metrics": metrics},
        )  # fmt: skip
    return {
        "published": True,
        "table": table_name,
        "tag": tag,
        "version": version,
        "previous_version": live,
        "changed": changed,
        "metrics": metrics,
        "event": _decode(event) if event else None,
    }


def rollback(params: Params, settings: Settings, *, to_version: int | None = None) -> dict[str, Any]:
    """Point the publish tag back at the previously published version (or ``to_version``) and log it.

    Without ``to_version`` each call steps one publish further back. Versions are never pruned by the
    nightly sync, so every published version stays restorable.

    Returns:
        ``{"table", "tag", "version", "previous_version", "changed", "event"}``.

    Raises:
        NothingToDo: Nothing is published, or there is no earlier published version.
        ConfigError: ``to_version`` does not exist in the table.
    """
    db = connect(settings)
    table_name = table_name_for(params)
    table = _open_table_or_fail(db, table_name)
    tag = params.index.publish_tag
    live = published_version(table, tag)
    if live is None:
        raise NothingToDo(f"nothing is published in {table_name!r} (no {tag!r} tag)")
    stack = _published_stack(_read_log(db, table_name))
    if not stack or stack[-1] != live:
        stack.append(live)  # the tag is the truth if the log lags behind it
    if to_version is None:
        if len(stack) < 2:
            raise NothingToDo(f"{table_name}: no earlier published version to roll back to (live v{live})")
        target = stack[-2]
    else:
        target = int(to_version)
        known = {int(entry["version"]) for entry in table.list_versions()}
        if target not in known:
            raise ConfigError(f"{table_name} has no version {target} (known: {min(known)}..{max(known)})")
    if target == live:
        return {"table": table_name, "tag": tag, "version": live, "previous_version": live, "changed": False,
                "event": None}  # fmt: skip
    _move_tag(table, tag, target)
    event = _append_log(
        db, table_name, {"action": "rollback", "version": target, "previous_version": live, "interval": None}
    )
    return {"table": table_name, "tag": tag, "version": target, "previous_version": live, "changed": True,
            "event": _decode(event)}  # fmt: skip


def publish_history(params: Params, settings: Settings) -> list[dict[str, Any]]:
    """All publish, rollback and rejection events of the configured table, oldest first.

    Returns:
        Dicts with seq, action, version, previous_version, interval, data_version, metrics, reasons,
        recorded_at; plus ``live`` (True on the event whose version the tag points at now, the latest one).
    """
    db = connect(settings)
    table_name = table_name_for(params)
    table = open_table(db, table_name)
    if table is None:
        return []
    events = [_decode(row) for row in _read_log(db, table_name)]
    live = published_version(table, params.index.publish_tag)
    live_seq = max((e["seq"] for e in events if e["action"] != "rejected" and e["version"] == live), default=None)
    return [{**event, "table": table_name, "live": event["seq"] == live_seq} for event in events]

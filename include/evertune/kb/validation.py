"""Validate an ingested drop with a Great Expectations suite (step 2 of the nightly refresh).

Two tiers:

* **critical** (the drop as a whole is unusable) -> :class:`~evertune.errors.CriticalValidationError` with a
  report: wrong schema, an empty drop, or too large a quarantined share;
* **row level** -> the row goes to quarantine with a reason code and the run continues with the good rows.

The checks are in :mod:`evertune.kb.expectations`; they run through a file Data Context under ``<work_dir>/gx``
(created once, then re-used, :mod:`evertune.kb.gx_suite`) whose checkpoints update the Data Docs. Validation
runs are keyed on the data interval, not the clock, so a re-run replaces the interval's results instead of
adding new ones. :func:`write_validated` writes byte-identical files for the same input (through
:mod:`evertune.data.snapshot`), because the data version (DVC) is keyed on their md5.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.data.snapshot import DOC_COLUMNS, QA_COLUMNS, TOMBSTONE_COLUMNS
from evertune.errors import CriticalValidationError
from evertune.kb import quarantine as q
from evertune.kb.expectations import (
    doc_failure_detail,
    document_checks,
    qa_checks,
    qa_failure_detail,
    safety_codes,
    text_ratios,
)
from evertune.kb.gx_suite import DOCS_SUITE, QA_SUITE, data_docs_url, gx_context, gx_lock, run_suite
from evertune.kb.ingest import IngestResult
from evertune.kb.quarantine import QUARANTINE_COLUMNS, QuarantineRecord, count_by_reason, quarantine_frame

if TYPE_CHECKING:
    import pandas as pd

    from evertune.config import Params, ValidateParams
    from evertune.settings import Settings

log = logging.getLogger(__name__)

#: Report keys that depend on the machine, not on the data; kept out of the stored report.
VOLATILE_REPORT_KEYS = frozenset({"data_docs"})

#: Helper columns with the codes of the safety detectors (``""`` when clean), for documents and QA pairs.
SAFETY_COLUMNS = ("injection", "pii")
DOC_HELPER_COLUMNS = ("alpha_ratio", "stopword_ratio", *SAFETY_COLUMNS)
QA_HELPER_COLUMNS = SAFETY_COLUMNS


@dataclass
class ValidationResult:
    """The validated drop.

    Attributes:
        interval: The data interval date.
        documents: Good documents (``snapshot.DOC_COLUMNS``, all strings), sorted by (doc_id, record_ref).
        tombstones: Deletions (``snapshot.TOMBSTONE_COLUMNS``).
        qa: Good training QA pairs (``snapshot.QA_COLUMNS``).
        golden_retrieval: Golden retrieval queries.
        golden_qa: Golden QA pairs.
        golden_freshness: Changed-fact probes (golden freshness lines).
        quarantine: Every quarantined row, ingest and validate stage (``quarantine.QUARANTINE_COLUMNS``).
        report: JSON-able report: counts, counts per reason, per-expectation outcome, Data Docs location.
        counts: Shortcut to ``report["counts"]``.
        data_docs: URL of the Data Docs index (``None`` when read back from disk).
    """

    interval: str
    documents: pd.DataFrame
    tombstones: pd.DataFrame
    qa: pd.DataFrame
    golden_retrieval: list[dict[str, Any]]
    golden_qa: list[dict[str, Any]]
    quarantine: pd.DataFrame
    report: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    data_docs: str | None = None
    golden_freshness: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- critical checks


def check_schema(ingested: IngestResult) -> list[str]:
    """List schema problems of an ingest result: missing columns, non-string values, duplicate record refs.

    Args:
        ingested: The ingest result.

    Returns:
        Readable problems; empty when the schema is right.
    """
    problems: list[str] = []
    tables = {"documents": (ingested.documents, DOC_COLUMNS), "tombstones": (ingested.tombstones, TOMBSTONE_COLUMNS),
              "qa": (ingested.qa, QA_COLUMNS), "quarantine": (ingested.quarantine, QUARANTINE_COLUMNS)}  # fmt: skip
    for name, (frame, columns) in tables.items():
        if frame is None or not hasattr(frame, "columns"):
            problems.append(f"{name}: not a table")
            continue
        missing = [col for col in columns if col not in frame.columns]
        if missing:
            problems.append(f"{name}: missing columns {missing}")
        for col in columns:
            if col in frame.columns:
                bad = sum(not isinstance(value, str) for value in frame[col].tolist())
                if bad:
                    problems.append(f"{name}.{col}: {bad} value(s) are not strings (dtype {frame[col].dtype})")
        if name != "quarantine" and "record_ref" in frame.columns and frame["record_ref"].duplicated().any():
            problems.append(f"{name}: record_ref is not unique")
    return problems


def _critical(message: str, report: dict[str, Any], problems: list[str]) -> CriticalValidationError:
    report = dict(report, status="critical", critical=problems)
    readable = "\n".join([message, *[f"  - {p}" for p in problems]])
    return CriticalValidationError(readable, report)


# --------------------------------------------------------------------------- row-level mapping


def _collapse_exact_duplicates(
    rows: list[dict[str, str]], key: str, content: tuple[str, ...]
) -> tuple[list[dict[str, str]], list[str]]:
    """Keep one row per (key, content); the newest ``updated_at`` (then the smallest record_ref) wins."""
    # Two stable sorts: record_ref ascending, then updated_at descending (reverse keeps ties in order).
    ordered = sorted(sorted(rows, key=lambda r: r["record_ref"]), key=lambda r: r.get("updated_at", ""), reverse=True)
    best: dict[tuple[str, ...], dict[str, str]] = {}
    dropped: list[str] = []
    for row in ordered:
        group = (row[key], *(row[c] for c in content))
        if group in best:
            dropped.append(row["record_ref"])
        else:
            best[group] = row
    kept = sorted(best.values(), key=lambda r: (r[key], r["record_ref"]))
    return kept, sorted(dropped)


def _rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, str]]:
    return (
        [dict(zip(columns, values, strict=True)) for values in zip(*(frame[c].tolist() for c in columns), strict=True)]
        if len(frame)
        else []
    )


# --------------------------------------------------------------------------- the validator


def _check_drop(ingested: IngestResult, interval: str, vparams: ValidateParams, report: dict[str, Any]) -> None:
    """Raise the critical failures that need no suite: a wrong schema, or an empty drop when that is required."""
    problems = check_schema(ingested)
    if problems:
        raise _critical(f"validation of {interval} failed: the ingested data has the wrong schema", report, problems)
    if not vparams.require_nonempty_drop or (
        ingested.partition_found and (len(ingested.documents) or len(ingested.tombstones))
    ):
        return
    quarantined = len(ingested.quarantine)
    if not ingested.partition_found:
        why = "the landing partition does not exist"
    elif quarantined:
        why = f"the drop holds no readable documents or tombstones ({quarantined} records quarantined)"
    else:
        why = "the drop holds no documents and no tombstones"
    report["counts"] = {"records_read": ingested.records_read, "quarantined_ingest": quarantined}
    report["quarantine_by_reason"] = count_by_reason(ingested.quarantine)
    raise _critical(f"validation of {interval} failed: empty drop", report, [why + " (validate.require_nonempty_drop)"])


def _document_frame(docs: list[dict[str, Any]], vparams: ValidateParams) -> pd.DataFrame:
    """Add the helper columns the document checks read (ratios, safety codes) and build the suite's frame."""
    import pandas as pd

    for row in docs:
        row["alpha_ratio"], row["stopword_ratio"] = text_ratios(row["text"])
        row["injection"], row["pii"] = safety_codes(f"{row['title']}\n{row['text']}", vparams)
    frame = snapshot.text_frame(docs, (*DOC_COLUMNS, *SAFETY_COLUMNS))
    frame.insert(len(DOC_COLUMNS), "alpha_ratio", pd.Series([r["alpha_ratio"] for r in docs], dtype="float64"))
    frame.insert(len(DOC_COLUMNS) + 1, "stopword_ratio",
                 pd.Series([r["stopword_ratio"] for r in docs], dtype="float64"))  # fmt: skip
    return frame


def _qa_frame(qa_rows: list[dict[str, Any]], vparams: ValidateParams) -> pd.DataFrame:
    """Add the safety code columns over question + answer and build the QA suite's frame."""
    for row in qa_rows:
        row["injection"], row["pii"] = safety_codes(f"{row['question']}\n{row['answer']}", vparams)
    return snapshot.text_frame(qa_rows, QA_COLUMNS + QA_HELPER_COLUMNS)


def _failed_checks(row: dict[str, Any], outcomes: list[dict[str, Any]]) -> list[str]:
    return [o["check"] for o in outcomes if row["record_ref"] in o["failed_refs"]]


def _quarantined(interval: str, row: dict[str, Any], failures: list[tuple[str, str]]) -> QuarantineRecord:
    """The quarantine record of a row: its first failure's reason, every failure's detail (once each)."""
    detail = "; ".join(dict.fromkeys(d for _, d in failures))
    return QuarantineRecord(interval, row["record_ref"], row["doc_id"], "validate", failures[0][0], detail)


def _set_metadata(row: dict[str, Any], **fields: Any) -> None:
    metadata = json.loads(row["metadata"])
    metadata.update(fields)
    row["metadata"] = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flaggable_reasons(vparams: ValidateParams) -> frozenset[str]:
    """The document quarantine reasons that ``validate.*_action: flag`` turns into a metadata flag instead."""
    return frozenset(reason for reason, action in ((q.PII_DETECTED, vparams.pii_action),
                                                   (q.PROMPT_INJECTION, vparams.injection_action))
                     if action == "flag")  # fmt: skip


def flag_document(row: dict[str, Any], failed_checks: list[str]) -> None:
    """Record flagged findings in a kept document's metadata.

    PII sets ``pii: true`` and ``pii_kinds`` (from the failed ``pii_<kind>`` checks); injection sets
    ``injection: true`` and ``injection_kinds`` (the detector codes of the row's ``injection`` column).
    """
    fields: dict[str, Any] = {}
    pii_kinds = sorted(c.removeprefix("pii_") for c in failed_checks if c.startswith("pii_"))
    if pii_kinds:
        fields.update(pii=True, pii_kinds=pii_kinds)
    if "injection" in failed_checks:
        fields.update(injection=True, injection_kinds=[c for c in str(row.get("injection", "")).split(",") if c])
    _set_metadata(row, **fields)


def sort_out_documents(
    docs: list[dict[str, Any]], outcomes: list[dict[str, Any]], vparams: ValidateParams, interval: str
) -> tuple[list[dict[str, Any]], list[QuarantineRecord], int]:
    """Split documents into good rows and quarantine records by their failed checks.

    With ``validate.pii_action: flag`` (``validate.injection_action: flag``) a document whose only failures are
    PII (prompt injection, or both when both are flagged) is kept, flagged in its metadata. A quarantined row's
    reason is its first failure that flagging would not have forgiven, so a flagged-only finding never hides a
    real one; the detail lists every failure.

    Returns:
        ``(good rows, quarantine records, number of PII-flagged documents)``; the injection-flagged good rows are
        those whose ``injection`` column is not empty.
    """
    copies = Counter(r["doc_id"] for r in docs)
    flaggable = flaggable_reasons(vparams)
    good, quarantined, pii_flagged = [], [], 0
    for row in docs:
        failed = _failed_checks(row, outcomes)
        failures = [doc_failure_detail(c, row, vparams, copies[row["doc_id"]]) for c in failed]
        if failures and all(reason in flaggable for reason, _ in failures):
            flag_document(row, failed)
            pii_flagged += any(c.startswith("pii_") for c in failed)
            failures = []
        if failures:
            failures.sort(key=lambda failure: failure[0] in flaggable)  # stable: check order otherwise
            quarantined.append(_quarantined(interval, row, failures))
        else:
            good.append(row)
    return good, quarantined, pii_flagged


def sort_out_qa(
    qa_rows: list[dict[str, Any]], outcomes: list[dict[str, Any]], interval: str
) -> tuple[list[dict[str, Any]], list[QuarantineRecord]]:
    """Split QA pairs into good rows and quarantine records (PII or injection in a QA pair: always quarantined)."""
    good, quarantined = [], []
    for row in qa_rows:
        failures = [qa_failure_detail(c, row) for c in _failed_checks(row, outcomes)]
        if failures:
            quarantined.append(_quarantined(interval, row, failures))
        else:
            good.append(row)
    return good, quarantined


@dataclass(frozen=True)
class _Tally:
    """What the validator kept and dropped, for the report's counts."""

    docs: list[dict[str, Any]]
    qa: list[dict[str, Any]]
    dropped_docs: list[str]
    dropped_qa: list[str]
    pii_flagged: int
    injection_flagged: int
    quarantined_ingest: int
    quarantined_validate: int


def _counts(ingested: IngestResult, tally: _Tally) -> dict[str, int]:
    return {
        "records_read": int(ingested.records_read),
        "files_read": int(ingested.files_read),
        "documents_read": len(ingested.documents),
        "documents_valid": len(tally.docs),
        "documents_exact_duplicates_dropped": len(tally.dropped_docs),
        "documents_pii_flagged": tally.pii_flagged,
        "documents_injection_flagged": tally.injection_flagged,
        "tombstones": len(ingested.tombstones),
        "qa_read": len(ingested.qa),
        "qa_valid": len(tally.qa),
        "qa_exact_duplicates_dropped": len(tally.dropped_qa),
        "golden_retrieval": len(ingested.golden_retrieval),
        "golden_qa": len(ingested.golden_qa),
        "golden_freshness": len(ingested.golden_freshness),
        "quarantined": tally.quarantined_ingest + tally.quarantined_validate,
        "quarantined_ingest": tally.quarantined_ingest,
        "quarantined_validate": tally.quarantined_validate,
    }


def _run_suites(
    settings: Settings, vparams: ValidateParams, doc_frame: pd.DataFrame, qa_frame: pd.DataFrame, interval: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Run both suites under the Data Context lock; return document outcomes, QA outcomes and the Data Docs URL."""
    with gx_lock(settings.work_dir):
        context = gx_context(settings.work_dir)
        doc_outcomes = run_suite(context, DOCS_SUITE, document_checks(vparams), doc_frame, interval)
        qa_outcomes = run_suite(context, QA_SUITE, qa_checks(vparams), qa_frame, interval)
        return doc_outcomes, qa_outcomes, data_docs_url(context)


def validate_documents(ingested: IngestResult, interval: str, params: Params, settings: Settings) -> ValidationResult:
    """Validate an ingested drop; quarantine bad rows; fail the drop when it is unusable as a whole.

    Args:
        ingested: What :func:`evertune.kb.ingest.ingest_partition` read.
        interval: The data interval date ``YYYY-MM-DD``.
        params: Pipeline params (``params.validation``).
        settings: Deployment settings; the GX Data Context lives in ``settings.work_dir / "gx"``.

    Returns:
        The :class:`ValidationResult` with the good rows, every quarantine row and the report.

    Raises:
        CriticalValidationError: Wrong schema, an empty drop (with ``validate.require_nonempty_drop``), or a
            quarantined share above ``validate.max_quarantine_fraction``. ``.report`` holds the details.
    """
    from evertune.kb.ingest import check_interval

    vparams = params.validation
    check_interval(interval)
    report: dict[str, Any] = {"interval": interval, "partition_found": bool(ingested.partition_found),
                              "params_hash": params.section_hash("ingest", "validate"), "status": "ok",
                              "critical": []}  # fmt: skip
    _check_drop(ingested, interval, vparams, report)

    # Exact duplicates (same doc_id and content) keep one copy; copies that differ are conflicts (quarantined by GX).
    docs, dropped_docs = _collapse_exact_duplicates(_rows(ingested.documents, DOC_COLUMNS), "doc_id", ("content_hash",))
    qa_rows, dropped_qa = _collapse_exact_duplicates(
        _rows(ingested.qa, QA_COLUMNS), "qa_id", ("question", "answer", "doc_id", "fact_key")
    )
    doc_outcomes, qa_outcomes, data_docs = _run_suites(
        settings, vparams, _document_frame(docs, vparams), _qa_frame(qa_rows, vparams), interval
    )
    # Map failures back to rows: a row's reason is its first failed check in suite order; details list all.
    good_docs, doc_quarantine, pii_flagged = sort_out_documents(docs, doc_outcomes, vparams, interval)
    injection_flagged = sum(bool(row.get("injection")) for row in good_docs)
    good_qa, qa_quarantine = sort_out_qa(qa_rows, qa_outcomes, interval)
    ingest_quarantine = _rows(ingested.quarantine, QUARANTINE_COLUMNS)
    quarantine = quarantine_frame([*ingest_quarantine, *doc_quarantine, *qa_quarantine])
    tally = _Tally(good_docs, good_qa, dropped_docs, dropped_qa, pii_flagged, injection_flagged,
                   len(ingest_quarantine), len(doc_quarantine) + len(qa_quarantine))  # fmt: skip
    counts = _counts(ingested, tally)
    fraction = len(quarantine) / ingested.records_read if ingested.records_read else 0.0
    report.update(
        counts=counts,
        quarantine_fraction=round(fraction, 6),
        max_quarantine_fraction=vparams.max_quarantine_fraction,
        quarantine_by_reason=count_by_reason(quarantine),
        exact_duplicates_dropped=sorted([*dropped_docs, *dropped_qa]),
        expectations=[{k: v for k, v in o.items() if k != "failed_refs"} for o in doc_outcomes + qa_outcomes],
        data_docs=data_docs,
    )
    log.info("validated %s: %d/%d documents good, %d quarantined (%.1f%%), data docs %s",
             interval, len(good_docs), len(docs), len(quarantine), 100 * fraction, data_docs)  # fmt: skip
    if fraction > vparams.max_quarantine_fraction:
        raise _critical(
            f"validation of {interval} failed: too much quarantined",
            report,
            [(f"{len(quarantine)} of {ingested.records_read} records quarantined ({fraction:.1%}) > "
              f"validate.max_quarantine_fraction {vparams.max_quarantine_fraction:.1%}; "
              f"by reason: {report['quarantine_by_reason']}")],
        )  # fmt: skip
    return ValidationResult(
        interval=interval,
        documents=snapshot.text_frame(sorted(good_docs, key=lambda r: (r["doc_id"], r["record_ref"])), DOC_COLUMNS),
        tombstones=snapshot.text_frame(_rows(ingested.tombstones, TOMBSTONE_COLUMNS), TOMBSTONE_COLUMNS),
        qa=snapshot.text_frame(sorted(good_qa, key=lambda r: (r["qa_id"], r["record_ref"])), QA_COLUMNS),
        golden_retrieval=list(ingested.golden_retrieval),
        golden_qa=list(ingested.golden_qa),
        golden_freshness=list(ingested.golden_freshness),
        quarantine=quarantine,
        report=report,
        counts=counts,
        data_docs=data_docs,
    )


# --------------------------------------------------------------------------- files


def write_validated(result: ValidationResult, out_dir: Path) -> dict[str, str]:
    """Write the validated drop through the snapshot contract (same input -> same bytes -> same DVC version).

    Args:
        result: The validation result.
        out_dir: Folder to write into (created if missing); existing files of the same names are replaced.

    Returns:
        ``{key: path}`` for every key of :data:`evertune.data.snapshot.FILES`.
    """
    report = {k: v for k, v in result.report.items() if k not in VOLATILE_REPORT_KEYS}
    return snapshot.write(out_dir, {**snapshot.contents_of(result), snapshot.REPORT: report})


def read_validated(out_dir: Path) -> ValidationResult:
    """Read back what :func:`write_validated` wrote (``data_docs`` is not stored, so it is ``None``).

    Tables come back as all-string DataFrames, timestamps in the ISO form ingestion gives them.

    Args:
        out_dir: The folder written by :func:`write_validated`.

    Returns:
        The :class:`ValidationResult`.

    Raises:
        CriticalValidationError: A file or a column is missing.
    """

    report = snapshot.read_report(out_dir)
    return ValidationResult(interval=str(report.get("interval", "")), **snapshot.read_contents(out_dir), report=report,
                            counts=dict(report.get("counts", {})), data_docs=None)  # fmt: skip

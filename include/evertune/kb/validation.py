"""Validate an ingested drop with a Great Expectations suite (step 2 of the nightly refresh).

Two tiers:

* **critical** (the drop as a whole is unusable) -> :class:`~evertune.errors.CriticalValidationError` with a
  report: wrong schema, an empty drop, or too large a quarantined share;
* **row level** -> the row goes to quarantine with a reason code and the run continues with the good rows.

The suites run through a file Data Context under ``<work_dir>/gx`` (created once, then re-used) whose checkpoints
update the Data Docs. Validation runs are keyed on the data interval, not the clock, so a re-run replaces the
interval's results instead of adding new ones. :func:`write_validated` writes byte-identical files for the same
input (through :mod:`evertune.data.snapshot`), because the data version (DVC) is keyed on their md5.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.data.snapshot import DOC_COLUMNS, QA_COLUMNS, TOMBSTONE_COLUMNS
from evertune.errors import CriticalValidationError
from evertune.kb import quarantine as q
from evertune.kb.ingest import DOC_ID_RE, IngestResult
from evertune.kb.quarantine import QUARANTINE_COLUMNS, QuarantineRecord, count_by_reason, quarantine_frame

if TYPE_CHECKING:
    import pandas as pd

    from evertune.config import Params, ValidateParams
    from evertune.settings import Settings

log = logging.getLogger(__name__)

#: Report keys that depend on the machine, not on the data; kept out of the stored report.
VOLATILE_REPORT_KEYS = frozenset({"data_docs"})

GX_DATASOURCE = "evertune_kb"
DOCS_SUITE = "kb_documents"
QA_SUITE = "kb_qa"
_GX_ROW_KEY = "record_ref"

# A small list of English function words: prose is full of them, word salad and non-language residue is not.
STOPWORDS: frozenset[str] = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with would
    you your yours""".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

# PII patterns use explicit ASCII classes so pandas (RE2 or Python re) and Python agree on what they match.
_PHONE_RE = (
    r"(?<![0-9A-Za-z.])(?:\+[0-9]{1,3}[ .-]?)?"  # optional country code
    r"(?:\([0-9]{2,4}\)|[0-9]{2,4})[ .-][0-9]{3,4}[ .-][0-9]{3,4}(?![0-9A-Za-z]|\.[0-9])"  # area, exchange, line
)
_CARD_RE = r"(?<![0-9])[0-9]{4}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}(?![0-9])"
_EMPTY_RE = r"^\s*$"


def email_regex(allowed_domains: list[str]) -> str:
    """The e-mail PII pattern, skipping addresses at ``allowed_domains`` (and their subdomains)."""
    allowed = "|".join(re.escape(domain.lower().strip(".")) for domain in allowed_domains if domain.strip("."))
    skip = f"(?!(?:[A-Za-z0-9-]+\\.)*(?:{allowed})(?![A-Za-z0-9-]|\\.[A-Za-z0-9]))" if allowed else ""
    return f"[A-Za-z0-9._%+-]+@{skip}[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{{2,}}"


def pii_patterns(vparams: ValidateParams) -> dict[str, str]:
    """PII regexes by kind: ``email``, ``phone``, ``card``."""
    return {"email": email_regex(vparams.pii_allowed_email_domains), "phone": _PHONE_RE, "card": _CARD_RE}


def text_ratios(text: str) -> tuple[float, float]:
    """Share of letters among non-space characters, and share of English stopwords among words.

    Args:
        text: Plain text.

    Returns:
        ``(alpha_ratio, stopword_ratio)``, each in [0, 1] (0 for empty text).
    """
    visible = [ch for ch in text if not ch.isspace()]
    alpha = sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0
    words = _WORD_RE.findall(text.lower())
    stop = sum(word in STOPWORDS for word in words) / len(words) if words else 0.0
    return round(alpha, 6), round(stop, 6)


@dataclass(frozen=True)
class _Check:
    """One expectation and the quarantine reason of the rows it rejects."""

    check: str
    reason: str
    expectation: str
    kwargs: dict[str, Any]


def document_checks(vparams: ValidateParams) -> list[_Check]:
    """The row-level expectations for documents, in priority order (a row's first failure is its reason)."""
    prefixes = "|".join(re.escape(prefix) for prefix in vparams.allowed_url_prefixes)
    checks = [
        _Check("doc_id_format", q.INVALID_DOC_ID, "ExpectColumnValuesToMatchRegex",
               {"column": "doc_id", "regex": f"^{DOC_ID_RE.pattern}$"}),
        _Check("text_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "text", "regex": _EMPTY_RE}),
        _Check("text_length", f"{q.TEXT_TOO_SHORT}|{q.TEXT_TOO_LONG}", "ExpectColumnValueLengthsToBeBetween",
               {"column": "text", "min_value": vparams.min_text_chars, "max_value": vparams.max_text_chars}),
        _Check("alpha_ratio", q.GARBAGE_TEXT, "ExpectColumnValuesToBeBetween",
               {"column": "alpha_ratio", "min_value": vparams.min_alpha_ratio, "max_value": 1.0}),
        _Check("stopword_ratio", q.GARBAGE_TEXT, "ExpectColumnValuesToBeBetween",
               {"column": "stopword_ratio", "min_value": vparams.min_stopword_ratio, "max_value": 1.0}),
        _Check("source_allowed", q.DISALLOWED_SOURCE, "ExpectColumnValuesToBeInSet",
               {"column": "source", "value_set": sorted(vparams.allowed_sources)}),
        _Check("url_allowed", q.DISALLOWED_URL, "ExpectColumnValuesToMatchRegex",
               {"column": "url", "regex": f"^(?:{prefixes})\\S*$" if prefixes else "(?!)"}),
        _Check("doc_id_unique", q.DUPLICATE_DOC_ID, "ExpectColumnValuesToBeUnique", {"column": "doc_id"}),
    ]  # fmt: skip
    for kind, regex in pii_patterns(vparams).items():
        checks.append(_Check(f"pii_{kind}", q.PII_DETECTED, "ExpectColumnValuesToNotMatchRegex",
                             {"column": "pii_scan", "regex": regex}))  # fmt: skip
    return checks


def qa_checks(vparams: ValidateParams) -> list[_Check]:
    """The row-level expectations for training QA pairs, in priority order."""
    checks = [
        _Check("question_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "question", "regex": _EMPTY_RE}),
        _Check("answer_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "answer", "regex": _EMPTY_RE}),
        _Check("doc_id_format", q.INVALID_DOC_ID, "ExpectColumnValuesToMatchRegex",
               {"column": "doc_id", "regex": f"^{DOC_ID_RE.pattern}$"}),
        _Check("qa_id_unique", q.DUPLICATE_QA_ID, "ExpectColumnValuesToBeUnique", {"column": "qa_id"}),
    ]  # fmt: skip
    for kind, regex in pii_patterns(vparams).items():
        checks.append(_Check(f"pii_{kind}", q.PII_DETECTED, "ExpectColumnValuesToNotMatchRegex",
                             {"column": "pii_scan", "regex": regex}))  # fmt: skip
    return checks


DOC_HELPER_COLUMNS = ("alpha_ratio", "stopword_ratio", "pii_scan")
QA_HELPER_COLUMNS = ("pii_scan",)


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


# --------------------------------------------------------------------------- Great Expectations


@contextlib.contextmanager
def _gx_lock(work_dir: Path) -> Iterator[None]:
    # Concurrent runs (backfills) share one Data Context: serialise get-or-create and the Data Docs build.
    import fcntl

    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / "gx.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _gx_context(work_dir: Path):
    import great_expectations as gx

    # GX keeps its project in <project_root_dir>/gx: that is <work_dir>/gx.
    context = gx.get_context(mode="file", project_root_dir=str(work_dir))
    with contextlib.suppress(AttributeError, TypeError):
        if context.variables.progress_bars is None or context.variables.progress_bars.globally:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            context.variables.save()
    return context


def _gx_checkpoint(context: Any, suite_name: str, checks: list[_Check], columns: list[str]):
    """Get-or-create the datasource, asset and batch definition; create or update suite, definition, checkpoint."""
    import great_expectations as gx
    from great_expectations.exceptions import DataContextError

    try:
        source = context.data_sources.get(GX_DATASOURCE)
    except (LookupError, DataContextError):
        source = context.data_sources.add_pandas(GX_DATASOURCE)
    try:
        asset = source.get_asset(suite_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=suite_name)
    try:
        batch_definition = asset.get_batch_definition("whole")
    except LookupError:
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")

    expectations = [gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True,
                                                                 meta={"check": "schema", "reason": ""})]  # fmt: skip
    for check in checks:
        expectation_class = getattr(gx.expectations, check.expectation)
        expectations.append(expectation_class(**check.kwargs, meta={"check": check.check, "reason": check.reason}))
    suite = _get_or_update_suite(context, gx.ExpectationSuite(name=suite_name, expectations=expectations))

    definition_name = f"{suite_name}_whole"
    try:
        definition = context.validation_definitions.get(definition_name)
        reuse = definition.suite.name == suite.name and definition.batch_definition.name == batch_definition.name
    except (LookupError, DataContextError):
        reuse = False
    if not reuse:
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=definition_name, data=batch_definition, suite=suite)
        )
    # COMPLETE + the row key tells which rows failed; the values are left out (they may be PII).
    result_format = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": [_GX_ROW_KEY],
        "exclude_unexpected_values": True,
        "partial_unexpected_count": 0,
    }
    checkpoint_name = f"{suite_name}_checkpoint"
    try:
        checkpoint = context.checkpoints.get(checkpoint_name)
        reuse = (
            [vd.name for vd in checkpoint.validation_definitions] == [definition_name]
            and [type(a).__name__ for a in checkpoint.actions] == ["UpdateDataDocsAction"]
            and checkpoint.result_format == result_format
        )
    except (LookupError, DataContextError):
        reuse = False
    if not reuse:
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=checkpoint_name,
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
                result_format=result_format,
            )
        )
    return checkpoint


def _expectation_key(expectation: Any) -> str:
    config = expectation.configuration.to_json_dict()
    return json.dumps(
        {k: v for k, v in config.items() if k not in ("id", "rendered_content")}, sort_keys=True, default=str
    )


def _get_or_update_suite(context: Any, wanted: Any) -> Any:
    """Return the stored suite when it already holds exactly ``wanted``'s expectations; else store ``wanted``.

    Unchanged expectations keep their stored ids (GX's own ``add_or_update`` compares ids too, so it never
    matches a freshly built expectation).
    """
    from great_expectations.exceptions import DataContextError

    try:
        stored = context.suites.get(wanted.name)
    except (LookupError, DataContextError):
        return context.suites.add(wanted)
    stored_ids = {_expectation_key(e): e.id for e in stored.expectations}
    wanted_keys = [_expectation_key(e) for e in wanted.expectations]
    if wanted_keys == [_expectation_key(e) for e in stored.expectations]:
        return stored
    for expectation, key in zip(wanted.expectations, wanted_keys, strict=True):
        expectation.id = stored_ids.get(key)
    return context.suites.add_or_update(wanted)


def _failed_refs(result: dict[str, Any]) -> set[str]:
    refs: set[str] = set()
    for item in result.get("unexpected_index_list") or []:
        value = item.get(_GX_ROW_KEY) if isinstance(item, dict) else None
        if isinstance(value, list):
            refs.update(str(v) for v in value)
        elif value is not None:
            refs.add(str(value))
    return refs


def _run_suite(
    context: Any, suite_name: str, checks: list[_Check], frame: pd.DataFrame, interval: str
) -> list[dict[str, Any]]:
    """Run one suite on ``frame``; return per-expectation outcomes with the failing record refs."""
    from great_expectations.core.run_identifier import RunIdentifier

    checkpoint = _gx_checkpoint(context, suite_name, checks, list(frame.columns))
    # Keyed on the interval, not the clock: a re-run overwrites the interval's stored results.
    run_time = dt.datetime.combine(dt.date.fromisoformat(interval), dt.time(), tzinfo=dt.UTC)
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(f"kb-{interval}", run_time))
    outcomes: list[dict[str, Any]] = []
    for run_result in outcome.run_results.values():
        for result in run_result.to_json_dict()["results"]:
            config = result["expectation_config"]
            meta = config.get("meta") or {}
            if (result.get("exception_info") or {}).get("raised_exception"):
                message = result["exception_info"].get("exception_message", "unknown error")
                raise CriticalValidationError(
                    f"expectation {meta.get('check')} of suite {suite_name} could not run: {message}",
                    {"suite": suite_name, "check": meta.get("check"), "error": message},
                )
            details = result.get("result") or {}
            failed = _failed_refs(details)
            unexpected = int(details.get("unexpected_count") or 0)
            if unexpected != len(failed) and meta.get("check") != "schema":
                raise RuntimeError(
                    f"GX reported {unexpected} failures of {meta.get('check')} but named {len(failed)} rows"
                )
            outcomes.append({
                "suite": suite_name,
                "check": meta.get("check", ""),
                "reason": meta.get("reason", ""),
                "expectation": config["type"],
                "column": config.get("kwargs", {}).get("column", ""),
                "success": bool(result["success"]),
                "unexpected_count": unexpected,
                "failed_refs": failed,
            })  # fmt: skip
    # GX does not keep the suite's order; the check order is the reason priority, so restore it.
    order = {"schema": -1} | {check.check: i for i, check in enumerate(checks)}
    return sorted(outcomes, key=lambda o: order.get(o["check"], len(order)))


def _data_docs_url(context: Any) -> str | None:
    sites = context.get_docs_sites_urls()
    return str(sites[0]["site_url"]) if sites else None


# --------------------------------------------------------------------------- row-level mapping


def _doc_failure_detail(check: str, row: dict[str, Any], vparams: ValidateParams, copies: int) -> tuple[str, str]:
    """Reason and readable detail of one failed document check (never echoing PII)."""
    text = row["text"]
    if check == "doc_id_format":
        return q.INVALID_DOC_ID, f"doc_id {row['doc_id'][:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}"
    if check == "text_not_empty":
        return q.EMPTY_TEXT, "text is empty"
    if check == "text_length":
        reason = q.TEXT_TOO_SHORT if len(text) < vparams.min_text_chars else q.TEXT_TOO_LONG
        return reason, f"text has {len(text)} characters; allowed {vparams.min_text_chars}..{vparams.max_text_chars}"
    if check == "alpha_ratio":
        return (
            q.GARBAGE_TEXT,
            f"only {row['alpha_ratio']:.0%} of visible characters are letters (min {vparams.min_alpha_ratio:.0%})",
        )
    if check == "stopword_ratio":
        return q.GARBAGE_TEXT, (f"only {row['stopword_ratio']:.0%} of words are common English words "
                                f"(min {vparams.min_stopword_ratio:.0%}): not natural language")  # fmt: skip
    if check == "source_allowed":
        return q.DISALLOWED_SOURCE, f"source {row['source'][:60]!r} is not in validate.allowed_sources"
    if check == "url_allowed":
        return q.DISALLOWED_URL, f"url {row['url'][:100]!r} does not start with one of validate.allowed_url_prefixes"
    if check == "doc_id_unique":
        return (
            q.DUPLICATE_DOC_ID,
            f"doc_id {row['doc_id']!r} appears {copies} times in this drop with different content",
        )
    if check.startswith("pii_"):
        return q.PII_DETECTED, f"possible {check.removeprefix('pii_')} in title or text"
    raise ValueError(f"unknown check {check!r}")


def _qa_failure_detail(check: str, row: dict[str, Any]) -> tuple[str, str]:
    if check in ("question_not_empty", "answer_not_empty"):
        return q.EMPTY_TEXT, f"{check.removesuffix('_not_empty')} is empty"
    if check == "doc_id_format":
        return q.INVALID_DOC_ID, f"doc_id {row['doc_id'][:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}"
    if check == "qa_id_unique":
        return q.DUPLICATE_QA_ID, f"qa_id {row['qa_id'][:90]!r} appears more than once with different content"
    if check.startswith("pii_"):
        return q.PII_DETECTED, f"possible {check.removeprefix('pii_')} in question or answer"
    raise ValueError(f"unknown check {check!r}")


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


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({col: pd.Series([row[col] for row in rows], dtype="str") for col in columns})


def _rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, str]]:
    return (
        [dict(zip(columns, values, strict=True)) for values in zip(*(frame[c].tolist() for c in columns), strict=True)]
        if len(frame)
        else []
    )


# --------------------------------------------------------------------------- the validator


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
    ingest_quarantine = _rows(ingested.quarantine, QUARANTINE_COLUMNS)
    report: dict[str, Any] = {
        "interval": interval,
        "partition_found": bool(ingested.partition_found),
        "params_hash": params.section_hash("ingest", "validate"),
        "status": "ok",
        "critical": [],
    }

    problems = check_schema(ingested)
    if problems:
        raise _critical(f"validation of {interval} failed: the ingested data has the wrong schema", report, problems)
    if vparams.require_nonempty_drop and (
        not ingested.partition_found or (len(ingested.documents) == 0 and len(ingested.tombstones) == 0)
    ):
        if not ingested.partition_found:
            why = "the landing partition does not exist"
        elif ingest_quarantine:
            why = f"the drop holds no readable documents or tombstones ({len(ingest_quarantine)} records quarantined)"
        else:
            why = "the drop holds no documents and no tombstones"
        report["counts"] = {"records_read": ingested.records_read, "quarantined_ingest": len(ingest_quarantine)}
        report["quarantine_by_reason"] = count_by_reason(ingested.quarantine)
        raise _critical(
            f"validation of {interval} failed: empty drop", report, [why + " (validate.require_nonempty_drop)"]
        )

    # Exact duplicates (same doc_id and content) keep one copy; copies that differ are conflicts (quarantined by GX).
    docs, dropped_docs = _collapse_exact_duplicates(_rows(ingested.documents, DOC_COLUMNS), "doc_id", ("content_hash",))
    qa_rows, dropped_qa = _collapse_exact_duplicates(
        _rows(ingested.qa, QA_COLUMNS), "qa_id", ("question", "answer", "doc_id", "fact_key")
    )
    for row in docs:
        row["alpha_ratio"], row["stopword_ratio"] = text_ratios(row["text"])
        row["pii_scan"] = f"{row['title']}\n{row['text']}"
    for row in qa_rows:
        row["pii_scan"] = f"{row['question']}\n{row['answer']}"

    import pandas as pd

    doc_frame = _frame(docs, (*DOC_COLUMNS, "pii_scan"))
    doc_frame.insert(len(DOC_COLUMNS), "alpha_ratio", pd.Series([r["alpha_ratio"] for r in docs], dtype="float64"))
    doc_frame.insert(
        len(DOC_COLUMNS) + 1, "stopword_ratio", pd.Series([r["stopword_ratio"] for r in docs], dtype="float64")
    )
    qa_frame = _frame(qa_rows, QA_COLUMNS + QA_HELPER_COLUMNS)

    with _gx_lock(settings.work_dir):
        context = _gx_context(settings.work_dir)
        doc_outcomes = _run_suite(context, DOCS_SUITE, document_checks(vparams), doc_frame, interval)
        qa_outcomes = _run_suite(context, QA_SUITE, qa_checks(vparams), qa_frame, interval)
        data_docs = _data_docs_url(context)

    # Map failures back to rows: a row's reason is its first failed check in suite order; details list all.
    validate_quarantine: list[QuarantineRecord] = []
    copies = pd.Series([r["doc_id"] for r in docs], dtype="str").value_counts().to_dict() if docs else {}
    good_docs, pii_flagged = [], 0
    for row in docs:
        failed_checks = [o["check"] for o in doc_outcomes if row["record_ref"] in o["failed_refs"]]
        failures = [_doc_failure_detail(c, row, vparams, copies.get(row["doc_id"], 1)) for c in failed_checks]
        if failures and all(reason == q.PII_DETECTED for reason, _ in failures) and vparams.pii_action == "flag":
            metadata = json.loads(row["metadata"])
            metadata.update(pii=True, pii_kinds=sorted(c.removeprefix("pii_") for c in failed_checks))
            row["metadata"] = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            pii_flagged += 1
            failures = []
        if failures:
            detail = "; ".join(dict.fromkeys(d for _, d in failures))
            validate_quarantine.append(
                QuarantineRecord(interval, row["record_ref"], row["doc_id"], "validate", failures[0][0], detail)
            )
        else:
            good_docs.append(row)
    good_qa = []
    for row in qa_rows:
        failures = [_qa_failure_detail(o["check"], row) for o in qa_outcomes if row["record_ref"] in o["failed_refs"]]
        if failures:
            detail = "; ".join(dict.fromkeys(d for _, d in failures))
            validate_quarantine.append(
                QuarantineRecord(interval, row["record_ref"], row["doc_id"], "validate", failures[0][0], detail)
            )
        else:
            good_qa.append(row)

    quarantine = quarantine_frame([*ingest_quarantine, *validate_quarantine])
    total_quarantined = len(quarantine)
    fraction = total_quarantined / ingested.records_read if ingested.records_read else 0.0
    counts = {
        "records_read": int(ingested.records_read),
        "files_read": int(ingested.files_read),
        "documents_read": len(ingested.documents),
        "documents_valid": len(good_docs),
        "documents_exact_duplicates_dropped": len(dropped_docs),
        "documents_pii_flagged": pii_flagged,
        "tombstones": len(ingested.tombstones),
        "qa_read": len(ingested.qa),
        "qa_valid": len(good_qa),
        "qa_exact_duplicates_dropped": len(dropped_qa),
        "golden_retrieval": len(ingested.golden_retrieval),
        "golden_qa": len(ingested.golden_qa),
        "quarantined": total_quarantined,
        "quarantined_ingest": len(ingest_quarantine),
        "quarantined_validate": len(validate_quarantine),
    }
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
             interval, len(good_docs), len(docs), total_quarantined, 100 * fraction, data_docs)  # fmt: skip
    if fraction > vparams.max_quarantine_fraction:
        raise _critical(
            f"validation of {interval} failed: too much quarantined",
            report,
            [(f"{total_quarantined} of {ingested.records_read} records quarantined ({fraction:.1%}) > "
              f"validate.max_quarantine_fraction {vparams.max_quarantine_fraction:.1%}; "
              f"by reason: {report['quarantine_by_reason']}")],
        )  # fmt: skip

    return ValidationResult(
        interval=interval,
        documents=_frame(sorted(good_docs, key=lambda r: (r["doc_id"], r["record_ref"])), DOC_COLUMNS),
        tombstones=_frame(_rows(ingested.tombstones, TOMBSTONE_COLUMNS), TOMBSTONE_COLUMNS),
        qa=_frame(sorted(good_qa, key=lambda r: (r["qa_id"], r["record_ref"])), QA_COLUMNS),
        golden_retrieval=list(ingested.golden_retrieval),
        golden_qa=list(ingested.golden_qa),
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
    return snapshot.write(out_dir, {
        snapshot.DOCUMENTS: result.documents,
        snapshot.TOMBSTONES: result.tombstones,
        snapshot.QA: result.qa,
        snapshot.QUARANTINE: result.quarantine,
        snapshot.GOLDEN_RETRIEVAL: result.golden_retrieval,
        snapshot.GOLDEN_QA: result.golden_qa,
        snapshot.REPORT: report,
    })  # fmt: skip


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
    return ValidationResult(
        interval=str(report.get("interval", "")),
        documents=snapshot.read_text_frame(out_dir, snapshot.DOCUMENTS),
        tombstones=snapshot.read_text_frame(out_dir, snapshot.TOMBSTONES),
        qa=snapshot.read_text_frame(out_dir, snapshot.QA),
        golden_retrieval=snapshot.read_records(out_dir, snapshot.GOLDEN_RETRIEVAL),
        golden_qa=snapshot.read_records(out_dir, snapshot.GOLDEN_QA),
        quarantine=snapshot.read_text_frame(out_dir, snapshot.QUARANTINE),
        report=report,
        counts=dict(report.get("counts", {})),
        data_docs=None,
    )

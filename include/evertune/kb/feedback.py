"""User feedback in the landing zone: append-only daily partitions that close before they are read, and validation.

Layout (``docs/data-format.md``, "feedback.jsonl")::

    <landing_uri>/feedback/ds=YYYY-MM-DD/feedback.jsonl   one self-contained line per POST /feedback
    <landing_uri>/feedback/ds=YYYY-MM-DD/_closed.json     {"day", "bytes", "lines", "sha256"}: the closed content

The feedback tree sits beside the document drops (``<landing_uri>/ds=<interval>/``), not inside them: the
answer service writes it, the refresh's ingest never sees it, and a drop's bytes never change under a writer.

**Closing.** The writer (:func:`append_feedback`) appends to the partition of the UTC day the feedback was
received, unless that partition is closed: then the line goes to the next day that is still open (its
``received_at`` stays true). The first reader of a day (:func:`read_feedback`) closes it: it writes
``_closed.json`` with the byte length and sha256 of ``feedback.jsonl`` at that moment, and every read, on time
or a backfill, reads exactly those bytes (and checks the hash). So a backfill of day D reads what the on-time
run read, whatever arrived later. Closing and appending hold one lock per partition (``.lock``, a file lock:
local landing zones; an object store has no append, so feedback needs a local or mounted landing zone).

**Validation** (:func:`validate_feedback`), as for QA pairs: the line's schema (ingest-stage reasons), PII and
prompt injection in question, answer and correction (:func:`evertune.kb.expectations.safety_codes`), and a
correction must be grounded (:func:`evertune.tuning.grounding.check_grounding`) in an article the answer cited.
Rejected lines become :class:`~evertune.kb.quarantine.QuarantineRecord` rows with a reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evertune.errors import CriticalValidationError
from evertune.kb import quarantine as q
from evertune.kb.ingest import check_interval
from evertune.kb.quarantine import QuarantineRecord
from evertune.kb.records import Reject, decode_bytes, string_field, to_utc_iso

if TYPE_CHECKING:
    from evertune.config import Params

#: Folder of the feedback partitions under the landing zone.
FEEDBACK_ROOT = "feedback"
FEEDBACK_FILE = "feedback.jsonl"
CLOSED_MARKER = "_closed.json"
LOCK_FILE = ".lock"
RATINGS = ("up", "down")
#: Fields of a served chunk kept in a feedback line's ``contexts``.
CONTEXT_FIELDS = ("chunk_id", "doc_id", "title", "url", "text", "body", "metadata")
#: How many days ahead the writer looks for an open partition before giving up.
_MAX_ROLL_DAYS = 400


# --------------------------------------------------------------------------- locations and locking


def feedback_partition(landing_uri: str, day: str) -> str:
    """``<landing_uri>/feedback/ds=<day>`` (no trailing slash)."""
    return f"{landing_uri.rstrip('/')}/{FEEDBACK_ROOT}/ds={check_interval(day)}"


def _fs(landing_uri: str, day: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(feedback_partition(landing_uri, day))


@contextlib.contextmanager
def _locked(fs: Any, folder: str) -> Iterator[None]:
    """Hold the partition's file lock (local file systems; elsewhere there is nothing to lock with)."""
    fs.makedirs(folder, exist_ok=True)
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" not in protocol and "local" not in protocol:
        yield
        return
    from filelock import FileLock

    with FileLock(posixpath.join(folder, LOCK_FILE), timeout=60):
        yield


def _next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


# --------------------------------------------------------------------------- writing and closing


def feedback_id(answer_id: str, rating: str, correction: str | None, received_at: str) -> str:
    """The id of one feedback event: 32 hex digits of the sha256 of what was sent and when it was received."""
    payload = json.dumps([answer_id, rating, correction, received_at], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def append_feedback(landing_uri: str, record: Mapping[str, Any]) -> str:
    """Append one feedback line to the first open partition from the day of ``record["received_at"]`` on.

    Args:
        landing_uri: The landing zone.
        record: The full line (see ``docs/data-format.md``); ``received_at`` is an ISO UTC timestamp.

    Returns:
        The day (``YYYY-MM-DD``) whose partition holds the line.

    Raises:
        CriticalValidationError: No open partition within :data:`_MAX_ROLL_DAYS` days (closed far ahead).
    """
    day = dt.datetime.fromisoformat(str(record["received_at"])).astimezone(dt.UTC).date().isoformat()
    line = (json.dumps(dict(record), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    for _ in range(_MAX_ROLL_DAYS):
        fs, folder = _fs(landing_uri, day)
        with _locked(fs, folder):
            if not fs.exists(posixpath.join(folder, CLOSED_MARKER)):
                with fs.open(posixpath.join(folder, FEEDBACK_FILE), "ab") as handle:
                    handle.write(line)
                return day
        day = _next_day(day)
    raise CriticalValidationError(f"no open feedback partition within {_MAX_ROLL_DAYS} days of {record['received_at']}")


def close_partition(landing_uri: str, day: str) -> dict[str, Any]:
    """Close the feedback partition of ``day`` (idempotent) and return its marker.

    The marker records the byte length, line count and sha256 of ``feedback.jsonl`` when it was first closed
    (0 bytes when the day had no feedback); it holds no clock value, so it is the same whoever closes it.
    """
    fs, folder = _fs(landing_uri, day)
    marker_path = posixpath.join(folder, CLOSED_MARKER)
    with _locked(fs, folder):
        if fs.exists(marker_path):
            return json.loads(fs.cat_file(marker_path))
        path = posixpath.join(folder, FEEDBACK_FILE)
        data = fs.cat_file(path) if fs.exists(path) else b""
        marker = {"day": day, "bytes": len(data), "lines": data.count(b"\n"),
                  "sha256": hashlib.sha256(data).hexdigest()}
        fs.pipe_file(marker_path, json.dumps(marker, sort_keys=True).encode())
    return marker


@dataclass
class FeedbackPartition:
    """One closed day of feedback, read.

    Attributes:
        day: The partition's day.
        rows: Lines that parsed (schema checked), in file order, each with ``record_ref`` and ``ds``.
        quarantine: Lines that did not (ingest-stage reasons).
        marker: The ``_closed.json`` content the read followed.
    """

    day: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    marker: dict[str, Any] = field(default_factory=dict)


def read_feedback(landing_uri: str, day: str) -> FeedbackPartition:
    """Close ``day``'s partition (if open) and read exactly the bytes its marker records.

    Raises:
        CriticalValidationError: The file no longer starts with the closed bytes (rewritten after closing).
    """
    marker = close_partition(landing_uri, day)
    result = FeedbackPartition(day, marker=marker)
    if not marker["bytes"]:
        return result
    fs, folder = _fs(landing_uri, day)
    with fs.open(posixpath.join(folder, FEEDBACK_FILE), "rb") as handle:
        data = handle.read(marker["bytes"])
    if hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise CriticalValidationError(f"feedback partition {day} changed after it was closed (sha256 differs)")
    ref_base = f"{FEEDBACK_ROOT}/ds={day}/{FEEDBACK_FILE}"
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        ref = f"{ref_base}:{number}"
        try:
            row = parse_feedback_line(raw)
        except Reject as exc:
            result.quarantine.append(QuarantineRecord(day, ref, exc.doc_id, "ingest", exc.reason, exc.detail))
            continue
        result.rows.append({**row, "record_ref": ref, "ds": day})
    return result


# --------------------------------------------------------------------------- schema


def _list_of_objects(record: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = record.get(name)
    if value is None:
        raise Reject(q.MISSING_FIELD, f"required field {name!r} is missing")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Reject(q.INVALID_FIELD, f"field {name!r} must be a list of objects")
    return value


def parse_feedback_line(raw: bytes) -> dict[str, Any]:
    """One ``feedback.jsonl`` line, schema-checked.

    Raises:
        Reject: ``malformed_json``, ``missing_field``, ``invalid_field`` or ``invalid_timestamp``.
    """
    try:
        record = json.loads(decode_bytes(raw))
    except ValueError as exc:
        raise Reject(q.MALFORMED_JSON, f"invalid JSON: {str(exc)[:120]}") from None
    if not isinstance(record, dict):
        raise Reject(q.MALFORMED_JSON, f"line is a JSON {type(record).__name__}, not an object")
    rating = record.get("rating")
    if rating not in RATINGS:
        raise Reject(q.INVALID_FIELD, f"rating must be one of {', '.join(RATINGS)}, got {str(rating)[:20]!r}")
    versions = record.get("versions")
    if not isinstance(versions, dict):
        raise Reject(q.INVALID_FIELD if versions is not None else q.MISSING_FIELD, "field 'versions' must be an object")
    correction = string_field(record, "correction", required=False).strip()
    return {
        "feedback_id": string_field(record, "feedback_id", required=True).strip(),
        "answer_id": string_field(record, "answer_id", required=True).strip(),
        "rating": rating,
        "correction": correction or None,
        "received_at": to_utc_iso(string_field(record, "received_at", required=True), "received_at"),
        "question": string_field(record, "question", required=True).strip(),
        "answer": string_field(record, "answer", required=True, allow_empty=True).strip(),
        "citations": _list_of_objects(record, "citations"),
        "contexts": _list_of_objects(record, "contexts"),
        "versions": versions,
    }


# --------------------------------------------------------------------------- validation


def _cited_articles(row: Mapping[str, Any], documents: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Text of each article the answer cited: the document's (title + text), else its shown chunks joined."""
    from evertune.tuning.grounding import as_text

    articles: dict[str, str] = {}
    for citation in row["citations"]:
        doc_id = str(citation.get("doc_id") or "")
        document = documents.get(doc_id)
        if document is not None and as_text(document.get("text")).strip():
            articles[doc_id] = f"{as_text(document.get('title'))}\n{as_text(document.get('text'))}"
            continue
        shown = [as_text(c.get("body") or c.get("text")) for c in row["contexts"] if str(c.get("doc_id")) == doc_id]
        if any(part.strip() for part in shown):
            articles[doc_id] = "\n".join([str(citation.get("title") or ""), *shown])
    return articles


def check_feedback_row(row: Mapping[str, Any], documents: Mapping[str, Mapping[str, Any]],
                       params: Params) -> tuple[str, str] | None:
    """The first problem of a parsed feedback row as ``(reason, detail)``, or ``None`` when it is usable."""
    from evertune.kb.expectations import safety_codes
    from evertune.tuning.grounding import check_grounding

    text = "\n".join(part for part in (row["question"], row["answer"], row["correction"] or "") if part)
    injection, pii = safety_codes(text, params.validation)
    if pii:
        return q.PII_DETECTED, f"personal data in question, answer or correction: {pii}"
    if injection:
        return q.PROMPT_INJECTION, f"instruction-like text aimed at the model: {injection}"
    if row["correction"] is None:
        return None
    articles = _cited_articles(row, documents)
    if not articles:
        return q.CITED_SOURCE_MISSING, "the corrected answer cites no article that can be read"
    best = None
    for article in articles.values():
        grounding = check_grounding(row["correction"], article, question=row["question"],
                                    min_support=params.dataset.min_answer_support)
        if grounding.grounded:
            return None
        best = grounding if best is None or grounding.support > best.support else best
    missing = ", ".join(best.missing_values[:5]) if best and best.missing_values else "none"
    return (q.CORRECTION_NOT_GROUNDED, f"correction not grounded in the cited article(s) {', '.join(sorted(articles))}"
            f" (support {best.support:.2f}, missing values: {missing})")


@dataclass
class FeedbackBatch:
    """Validated feedback of several days.

    Attributes:
        rows: Usable rows, by (ds, record_ref); duplicates of a ``feedback_id`` dropped.
        quarantine: Every quarantined line (ingest and validate stage).
        counts: ``read``, ``kept``, ``quarantined``, ``duplicates`` and ``by_reason``.
        markers: The closed markers read, by day.
    """

    rows: list[dict[str, Any]]
    quarantine: list[QuarantineRecord]
    counts: dict[str, Any]
    markers: dict[str, dict[str, Any]]

    def fingerprint(self) -> str:
        """sha256 of the closed markers: names exactly the feedback bytes read (a candidate-key ingredient)."""
        payload = json.dumps([self.markers[day] for day in sorted(self.markers)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def validate_feedback(partitions: Sequence[FeedbackPartition], documents: Mapping[str, Mapping[str, Any]],
                      params: Params) -> FeedbackBatch:
    """Validate read partitions: schema problems (already found), PII, injection and grounding of corrections."""
    rows, quarantine, seen, duplicates = [], [], set(), 0
    for part in partitions:
        quarantine.extend(part.quarantine)
        for row in part.rows:
            if row["feedback_id"] in seen:
                duplicates += 1
                continue
            seen.add(row["feedback_id"])
            problem = check_feedback_row(row, documents, params)
            if problem is None:
                rows.append(row)
                continue
            doc_id = str((row["citations"][0] if row["citations"] else {}).get("doc_id") or "")
            quarantine.append(QuarantineRecord(part.day, row["record_ref"], doc_id, "validate", *problem))
    reasons: dict[str, int] = {}
    for record in quarantine:
        reasons[record.reason] = reasons.get(record.reason, 0) + 1
    counts = {"read": sum(len(p.rows) + len(p.quarantine) for p in partitions), "kept": len(rows),
              "quarantined": len(quarantine), "duplicates": duplicates, "by_reason": dict(sorted(reasons.items()))}
    return FeedbackBatch(rows, sorted(quarantine), counts, {p.day: p.marker for p in partitions})


def window_days(as_of: str, days: int | None, landing_uri: str) -> list[str]:
    """The feedback days of a training window ending at ``as_of``: ``(as_of - days, as_of]``; with ``days=None``
    from the oldest feedback partition on (only ``as_of`` when there is none)."""
    end = dt.date.fromisoformat(check_interval(as_of))
    if days is not None:
        start = end - dt.timedelta(days=days - 1)
    else:
        start = min([*_existing_days(landing_uri), end.isoformat()])
        start = dt.date.fromisoformat(start)
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _existing_days(landing_uri: str) -> Iterable[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{landing_uri.rstrip('/')}/{FEEDBACK_ROOT}")
    if not fs.isdir(root):
        return []
    names = [posixpath.basename(path.rstrip("/")) for path in fs.ls(root, detail=False)]
    return sorted(name.removeprefix("ds=") for name in names if name.startswith("ds="))


def collect_feedback(landing_uri: str, as_of: str, params: Params,
                     documents: Mapping[str, Mapping[str, Any]]) -> FeedbackBatch:
    """Close, read and validate the feedback days of the window ending at ``as_of`` (``dataset.window_days``)."""
    days = window_days(as_of, params.dataset.window_days, landing_uri)
    return validate_feedback([read_feedback(landing_uri, day) for day in days], documents, params)


__all__ = ["CLOSED_MARKER", "CONTEXT_FIELDS", "FEEDBACK_FILE", "FEEDBACK_ROOT", "RATINGS", "FeedbackBatch",
           "FeedbackPartition", "append_feedback", "check_feedback_row", "close_partition", "collect_feedback",
           "feedback_id", "feedback_partition", "parse_feedback_line", "read_feedback", "validate_feedback",
           "window_days"]
